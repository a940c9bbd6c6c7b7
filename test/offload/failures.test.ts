/**
 * Failure paths found in review: a failing prefetch copy must not become an unhandled
 * rejection (Node would exit), and native range checks must not overflow.
 */
import { Tensor } from '../../lib';
import { native } from '../../lib/native';
import { ExpertStore, OffloadedMoE } from '../../lib/offload';

describe('offload failure paths', () => {
  test('a failing prefetch copy is reported by the next forward needing it, the process lives', async () => {
    const H = 8, I = 4, E = 4, k = 1;
    const r = (n: number, s: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.7 + s));
    const layerTensors = [0, 1].map((l) => ({ gateUp: Tensor.from(r(E * 2 * I * H, l), [E, 2 * I, H]), down: Tensor.from(r(E * H * I, l + 5), [E, H, I]) }));
    const store = ExpertStore.fromTensors(layerTensors);
    const resident = [0, 1].map((l) => ({ router: Tensor.from(r(E * H, l + 9), [E, H]) }));
    const model = new OffloadedMoE({ hidden: H, intermediate: I, experts: E, routing: { k } }, resident, store, {
      device: 'cpu',
      cache: { capacity: 2, perLayer: true },
      prefetch: { pregating: true, minProbability: 0 },
    });
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    try {
      // Layer 1's experts can no longer be copied: pre-gating after layer 0 tries to.
      layerTensors[1].gateUp.dispose();
      const x = Tensor.from(r(3 * H, 3), [3, H]);
      const y = await model.forward(0, x);
      expect(y.shape).toEqual([3, H]);
      await model.settle();
      await new Promise((res) => setTimeout(res, 50));
      expect(model.stats().total.prefetchesIssued).toBeGreaterThan(0);
      expect(unhandled).toEqual([]);
      await expect(model.forward(1, y)).rejects.toThrow(/disposed/);
    } finally {
      process.off('unhandledRejection', onUnhandled);
      model.dispose();
    }
  });

  test('copyRanges rejects ranges whose end overflows 64 bits instead of copying', () => {
    const a = Tensor.zeros([16]);
    const b = Tensor.zeros([16]);
    const copy = native().copyRanges as (p: object[]) => Promise<number>;
    expect(() => copy([{ dst: a.raw, dstOffset: 2 ** 62, bytes: 2 ** 62, src: b.raw, srcOffset: 2 ** 62 }])).toThrow(/run past/);
    expect(() => copy([{ dst: a.raw, dstOffset: 0, bytes: 2 ** 62, src: b.raw, srcOffset: 2 ** 62 }])).toThrow(/run past/);
  });
});
