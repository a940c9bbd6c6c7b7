import { MoekitError, deviceMemory, resolveDevice, runtime } from '../lib';
import { explainLoadFailure } from '../lib/native';
import { expectMoekitError } from './helpers';

describe('runtime()', () => {
  test('reports the build and the devices with the documented fields', () => {
    const r = runtime();
    expect(typeof r.compiledWithCuda).toBe('boolean');
    expect(r.backends).toContain('cpu');
    expect(Array.isArray(r.devices)).toBe(true);
    expect(typeof r.cudaDriverVersion).toBe('number');
    expect(typeof r.cudaRuntimeVersion).toBe('number');
    expect(r.cpuThreads).toBeGreaterThanOrEqual(1);
    // The CPU GEMM's SIMD path: at most what MOEKIT_CPU_ISA asks for (test/cpu-paths.test.ts sets it).
    const order = ['scalar', 'avx2', 'avx512'];
    expect(order).toContain(r.cpuIsa);
    const cap = process.env.MOEKIT_CPU_ISA;
    if (cap) expect(order.indexOf(r.cpuIsa)).toBeLessThanOrEqual(order.indexOf(cap));
    if (process.env.MOEKIT_EXPECT_CPU_ISA) expect(r.cpuIsa).toBe(process.env.MOEKIT_EXPECT_CPU_ISA);
    // test/cpu-paths.test.ts also sets the thread count.
    if (process.env.MOEKIT_NUM_THREADS) expect(r.cpuThreads).toBe(Number(process.env.MOEKIT_NUM_THREADS));
    if (r.devices.length === 0) {
      expect(r.backends).toEqual(['cpu']);
      expect(typeof r.cudaUnavailableReason).toBe('string');
    } else {
      expect(r.backends).toEqual(['cpu', 'cuda']);
      expect(r.cudaUnavailableReason).toBeNull();
      for (const d of r.devices) {
        expect(d.computeCapability).toMatch(/^\d+\.\d+$/);
        expect(d.memoryBytes).toBeGreaterThan(0);
      }
    }
  });

  test('a CUDA build reports its runtime version; without a driver the reason names error 35 in words', () => {
    const r = runtime();
    if (!r.compiledWithCuda) {
      expect(r.cudaRuntimeVersion).toBe(0);
      expect(r.cudaUnavailableReason).toMatch(/built without the CUDA backend/);
      return;
    }
    expect(r.cudaRuntimeVersion).toBeGreaterThanOrEqual(13000);
    if (r.cudaDriverVersion === 0) expect(r.cudaUnavailableReason).toMatch(/error 35.*no NVIDIA driver.*older than/);
  });
});

describe('device choice', () => {
  const saved = process.env.MOEKIT_DEVICE;
  afterEach(() => {
    if (saved === undefined) delete process.env.MOEKIT_DEVICE;
    else process.env.MOEKIT_DEVICE = saved;
  });

  test("'cpu' is always available", () => {
    expect(resolveDevice('cpu')).toEqual({ kind: 'cpu', index: 0, name: 'cpu' });
  });

  test("'auto' picks CUDA device 0 when usable, else the CPU with the reason kept", () => {
    const r = runtime();
    const d = resolveDevice('auto');
    if (r.backends.includes('cuda')) expect(d.name).toBe('cuda:0');
    else {
      expect(d.name).toBe('cpu');
      expect(runtime().cudaUnavailableReason).toBeTruthy();
    }
  });

  test('asking for CUDA where none is usable throws ERR_CUDA_UNAVAILABLE with the reason', async () => {
    const r = runtime();
    if (r.backends.includes('cuda')) {
      await expectMoekitError(() => resolveDevice(`cuda:${r.devices.length}`), 'ERR_CUDA_UNAVAILABLE', /has \d+ CUDA device/);
      return;
    }
    const err = await expectMoekitError(() => resolveDevice('cuda'), 'ERR_CUDA_UNAVAILABLE');
    expect(err.message).toContain(r.cudaUnavailableReason as string);
    await expectMoekitError(() => resolveDevice('cuda:1'), 'ERR_CUDA_UNAVAILABLE');
  });

  test('MOEKIT_DEVICE overrides the default, and is validated like an argument', () => {
    process.env.MOEKIT_DEVICE = 'cpu';
    expect(resolveDevice(undefined).name).toBe('cpu');
    process.env.MOEKIT_DEVICE = 'gpu0';
    expect(() => resolveDevice(undefined)).toThrow(
      new RangeError(`Expected 'cpu', 'cuda', 'cuda:N' or 'auto' for the MOEKIT_DEVICE environment variable but received "gpu0" of type string`),
    );
    // An explicit argument wins over the environment.
    expect(resolveDevice('cpu').name).toBe('cpu');
  });

  test('malformed device names are argument errors naming the argument', () => {
    expect(() => resolveDevice('cuda:-1')).toThrow(RangeError);
    expect(() => resolveDevice('CPU')).toThrow(/Expected 'cpu', 'cuda', 'cuda:N' or 'auto' for device but received "CPU" of type string/);
    expect(() => resolveDevice(3)).toThrow(new TypeError(`Expected 'cpu', 'cuda', 'cuda:N' or 'auto' for device but received 3 of type number`));
  });
});

describe('loader', () => {
  test('a load failure lists what was tried and concrete fixes', () => {
    const msg = explainLoadFailure(new Error('libfoo.so: cannot open shared object file'));
    expect(msg).toMatch(/could not load its native binary: libfoo\.so/);
    expect(msg).toMatch(/build\/Release\/moekit\.node/);
    expect(msg).toMatch(/prebuilds\/linux-x64/);
    expect(msg).toMatch(/glibc >= 2\.34/);
    expect(msg).toMatch(/npm rebuild moekit/);
  });

  test('MOEKIT_BINARY naming a missing file fails with ERR_LOAD, not a crash', () => {
    const { spawnSync } = require('child_process') as typeof import('child_process');
    // Run the compiled loader logic in a child so this process keeps its loaded binary.
    const r = spawnSync(
      process.execPath,
      [
        '-e',
        `process.env.MOEKIT_BINARY='/nonexistent/moekit.node';
         try { require(${JSON.stringify(require('path').resolve(__dirname, '../dist/index.js'))}).runtime(); console.log('loaded'); }
         catch (e) { console.log(e.name, e.code, e.message.split('\\n')[0]); }`,
      ],
      { encoding: 'utf8' },
    );
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^MoekitError ERR_LOAD Could not load the moekit binary named by MOEKIT_BINARY/);
  });
});

test('MoekitError is a real Error subclass with a code', () => {
  const e = new MoekitError('x', 'ERR_CUDA', 'cudaErrorFoo');
  expect(e).toBeInstanceOf(Error);
  expect(e.code).toBe('ERR_CUDA');
  expect(e.cudaError).toBe('cudaErrorFoo');
  expect(e.name).toBe('MoekitError');
});

describe('deviceMemory', () => {
  test('is for CUDA devices only, and says why CUDA is unusable when it is', () => {
    expect(() => deviceMemory('cpu')).toThrow(expect.objectContaining({ code: 'ERR_UNSUPPORTED' }));
    expect(() => deviceMemory('gpu7')).toThrow(/device/);
    if (!runtime().backends.includes('cuda')) expect(() => deviceMemory('cuda')).toThrow(expect.objectContaining({ code: 'ERR_CUDA_UNAVAILABLE' }));
    else expect(deviceMemory('cuda').totalBytes).toBeGreaterThan(0);
  });
});
