/**
 * On a GPU: a whole layer forward is captured into one CUDA graph (no host sync inside
 * it), graph replays compute what an eager forward computes, and device timing works.
 */
import { MoELayer, Tensor, profileCopy, profileOp } from '../../lib';
import type { MoELayerWeights } from '../../lib';
import { testSeed } from '../helpers';
import { Rng } from '../reference';
import { GPU_TOKENS, describeGpu } from './gpu';

const seed = testSeed('gpu-profile');

function rand(rng: Rng, n: number, std: number): Float32Array {
  return Float32Array.from({ length: n }, () => rng.normal(0, std));
}

describeGpu('CUDA graphs and device timing', () => {
  const cases = [
    { name: 'mixtral-like', H: 256, I: 512, E: 8, k: 2, family: 'mixtral' as const, shared: 0 },
    { name: 'qwen3-like, 128 experts', H: 256, I: 96, E: 128, k: 8, family: 'qwen3_moe' as const, shared: 0 },
    { name: 'deepseek-v3-like, grouped sigmoid + shared expert', H: 128, I: 64, E: 64, k: 6, family: 'deepseek_v3' as const, shared: 64 },
  ];
  for (const c of cases) {
    test(`${c.name}: graph replay equals eager forward at T = ${GPU_TOKENS.filter((t) => t <= 4096).join(', ')}`, async () => {
      const rng = new Rng(seed ^ c.E);
      const weights: MoELayerWeights = {
        router: Tensor.from(rand(rng, c.E * c.H, 1 / Math.sqrt(c.H)), [c.E, c.H], 'bf16'),
        gateUp: Tensor.from(rand(rng, c.E * 2 * c.I * c.H, 1 / Math.sqrt(c.H)), [c.E, 2 * c.I, c.H], 'bf16'),
        down: Tensor.from(rand(rng, c.E * c.H * c.I, 1 / Math.sqrt(c.I)), [c.E, c.H, c.I], 'bf16'),
      };
      if (c.family === 'deepseek_v3') {
        weights.correctionBias = Tensor.from(rand(rng, c.E, 0.1), [c.E]);
        weights.shared = {
          gateUp: Tensor.from(rand(rng, 2 * c.shared * c.H, 1 / Math.sqrt(c.H)), [2 * c.shared, c.H], 'bf16'),
          down: Tensor.from(rand(rng, c.H * c.shared, 1 / Math.sqrt(c.shared)), [c.H, c.shared], 'bf16'),
        };
      }
      const shape = { hidden: c.H, intermediate: c.I, experts: c.E, ...(c.shared > 0 ? { sharedIntermediate: c.shared } : {}) };
      const routing = c.family === 'deepseek_v3' ? { k: c.k, nGroup: 8, topkGroup: 4 } : { k: c.k };
      const layer = MoELayer.fromPreset(c.family, routing, shape, weights, { device: 'cuda' });
      for (const T of GPU_TOKENS.filter((t) => t <= 4096)) {
        const x = await Tensor.from(rand(rng, T * c.H, 1), [T, c.H], 'bf16').to('cuda');
        const eager = await layer.forward(x, { cudaGraph: false });
        const p = await layer.profile(x, { warmup: 2, repeats: 5, keepOutput: true });
        // The forward has no host synchronisation, so capture must succeed.
        expect(p.graph).toBe(true);
        expect(p.timer).toBe('cuda-event');
        expect(p.device).toBe('cuda:0');
        expect(p.times).toHaveLength(5);
        for (const t of p.times) expect(t).toBeGreaterThan(0);
        const a = new Uint16Array(((await eager.toArray()) as Uint16Array).buffer);
        const b = new Uint16Array(((await (p.output as Tensor).toArray()) as Uint16Array).buffer);
        // Same kernels on the same inputs: bit-identical.
        expect(Buffer.from(b.buffer).equals(Buffer.from(a.buffer))).toBe(true);
        // eslint-disable-next-line no-console
        console.log(`${c.name} T=${T}: graph replay median ${[...p.times].sort((u, v) => u - v)[2].toFixed(4)} ms`);
        const q = await layer.profile(x, { repeats: 3, graph: false });
        expect(q.graph).toBe(false);
        for (const t of [x, eager, p.output as Tensor]) t.dispose();
      }
      layer.dispose();
    }, 300_000);
  }

  test('the layer CUDA-graph cache: repeated forwards replay cached graphs and equal eager forwards', async () => {
    const rng = new Rng(seed ^ 0x77);
    const H = 256, I = 128, E = 64, k = 6;
    const weights: MoELayerWeights = {
      router: Tensor.from(rand(rng, E * H, 1 / Math.sqrt(H)), [E, H], 'bf16'),
      gateUp: Tensor.from(rand(rng, E * 2 * I * H, 1 / Math.sqrt(H)), [E, 2 * I, H], 'bf16'),
      down: Tensor.from(rand(rng, E * H * I, 1 / Math.sqrt(I)), [E, H, I], 'bf16'),
    };
    const layer = MoELayer.fromPreset('qwen3_moe', { k }, { hidden: H, intermediate: I, experts: E }, weights, { device: 'cuda' });
    const bits = async (t: Tensor) => Buffer.from(((await t.toArray()) as Uint16Array).buffer);
    for (const T of [1, 7, 128, 129, 1024]) {
      for (let rep = 0; rep < 3; rep++) {
        const x = await Tensor.from(rand(rng, T * H, 1), [T, H], 'bf16').to('cuda');
        const a = await layer.forward(x, { returnRouting: true });
        const b = await layer.forward(x, { returnRouting: true, cudaGraph: false });
        expect((await bits(a.output)).equals(await bits(b.output))).toBe(true);
        expect(Array.from((await a.routing.ids.toArray()) as Int32Array)).toEqual(Array.from((await b.routing.ids.toArray()) as Int32Array));
        expect(Array.from((await a.routing.load.toArray()) as Int32Array)).toEqual(Array.from((await b.routing.load.toArray()) as Int32Array));
        // Forced routing is an input of the graph too.
        const ids = await Tensor.from(Int32Array.from({ length: T * k }, (_, i) => (i * 7 + rep) % E), [T, k], 'i32').to('cuda');
        const fa = await layer.forward(x, { forcedIds: ids });
        const fb = await layer.forward(x, { forcedIds: ids, cudaGraph: false });
        expect((await bits(fa)).equals(await bits(fb))).toBe(true);
        for (const t of [x, a.output, b.output, a.routing.ids, a.routing.weights, a.routing.load, b.routing.ids, b.routing.weights, b.routing.load, ids, fa, fb]) t.dispose();
      }
    }
    layer.dispose();
  }, 300_000);

  test('ops profile with graphs; device copy bandwidth is measured', async () => {
    const rng = new Rng(seed);
    const logits = await Tensor.from(rand(rng, 4096 * 256, 1), [4096, 256]).to('cuda');
    const p = await profileOp('gate', [logits, { k: 8, scoring: 'sigmoid', nGroup: 8, topkGroup: 4, renormalize: true }], { repeats: 5 });
    expect(p.graph).toBe(true);
    expect(p.times).toHaveLength(5);
    const copy = await profileCopy('cuda', 1 << 28, { repeats: 5 });
    const sorted = [...copy.times].sort((u, v) => u - v);
    // eslint-disable-next-line no-console
    console.log(`device copy 256 MiB: median ${sorted[2].toFixed(3)} ms = ${((2 * 2 ** 28) / (sorted[2] * 1e6)).toFixed(0)} GB/s`);
    expect(copy.graph).toBe(true);
    logits.dispose();
  });
});
