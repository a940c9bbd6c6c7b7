import { MoekitError, Tensor, resolveDevice, runtime } from '../../lib';
import { testSeed } from '../helpers';
import { Rng } from '../reference/rng';
import { describeGpu } from './gpu';

describeGpu('CUDA device basics', () => {
  test('runtime() lists the devices with name, compute capability and memory', () => {
    const r = runtime();
    expect(r.devices.length).toBeGreaterThan(0);
    for (const d of r.devices) {
      // eslint-disable-next-line no-console
      console.log(`cuda:${d.index} ${d.name} cc ${d.computeCapability} ${(d.memoryBytes / 2 ** 30).toFixed(1)} GiB, driver ${r.cudaDriverVersion}, runtime ${r.cudaRuntimeVersion}`);
      expect(Number(d.computeCapability)).toBeGreaterThanOrEqual(8.0);
    }
    expect(resolveDevice('auto').name).toBe('cuda:0');
  });

  test('tensors of every dtype round-trip through device memory bit-exactly', async () => {
    const rng = new Rng(testSeed('gpu-roundtrip'));
    const n = 1_000_003;
    const f32 = Float32Array.from({ length: n }, () => rng.normal());
    f32[0] = NaN;
    f32[1] = -0;
    const cases: [Tensor, ArrayBufferView][] = [
      [Tensor.from(f32, [n]), f32],
      [Tensor.from(new Uint16Array(f32.buffer, 0, n), [n], 'bf16'), new Uint16Array(f32.buffer, 0, n)],
      [Tensor.from(new Int32Array(f32.buffer), [n]), new Int32Array(f32.buffer)],
    ];
    for (const [host, src] of cases) {
      const dev = await host.to('cuda');
      expect(dev.device.name).toBe('cuda:0');
      const direct = await dev.toArray();
      const back = await dev.to('cpu');
      for (const out of [direct, back.toArraySync()] as ArrayBufferView[]) {
        expect(Buffer.from(out.buffer, out.byteOffset, out.byteLength).equals(Buffer.from(src.buffer, src.byteOffset, src.byteLength))).toBe(true);
      }
      expect(() => dev.toArraySync()).toThrow(MoekitError);
      dev.dispose();
      back.dispose();
    }
  });

  test('device out-of-memory is ERR_CUDA_OOM and the device stays usable', async () => {
    let caught: unknown;
    try {
      Tensor.empty([2 ** 46], 'f32', 'cuda');
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(MoekitError);
    expect((caught as MoekitError).code).toBe('ERR_CUDA_OOM');
    const t = await Tensor.from([1, 2, 3], [3]).to('cuda');
    expect(Array.from(await t.toFloat32())).toEqual([1, 2, 3]);
  });
});
