/**
 * MoELayer on the CUDA backend against the CPU backend and the float64 family
 * references: presets, sizes from decode to prefill, one expert taking most tokens,
 * determinism, and Hub-named checkpoints through fromPretrained.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MoELayer, Tensor } from '../../lib';
import type { MoELayerWeights } from '../../lib';
import { testSeed } from '../helpers';
import { Rng, refGating } from '../reference';
import { tinyModel, writeModel } from '../pretrained/tiny';
import { GPU_TOKENS, describeGpu, mismatches } from './gpu';

const seed = testSeed('gpu-layer');

function randBf16(rng: Rng, n: number, std: number): Float32Array {
  return Float32Array.from({ length: n }, () => rng.normal(0, std));
}

describeGpu('MoELayer on CUDA matches the CPU backend', () => {
  const shapes = [
    { name: 'mixtral-like', H: 256, I: 512, E: 8, k: 2, family: 'mixtral' as const },
    { name: 'qwen3-like', H: 256, I: 96, E: 128, k: 8, family: 'qwen3_moe' as const },
    { name: 'deepseek-like (257 experts, k = 1)', H: 128, I: 64, E: 257, k: 1, family: 'olmoe' as const },
  ];
  for (const s of shapes) {
    test(`${s.name}: T = ${GPU_TOKENS.join(', ')}`, async () => {
      const rng = new Rng(seed ^ s.E);
      const weights: MoELayerWeights = {
        router: Tensor.from(randBf16(rng, s.E * s.H, 1 / Math.sqrt(s.H)), [s.E, s.H], 'bf16'),
        gateUp: Tensor.from(randBf16(rng, s.E * 2 * s.I * s.H, 1 / Math.sqrt(s.H)), [s.E, 2 * s.I, s.H], 'bf16'),
        down: Tensor.from(randBf16(rng, s.E * s.H * s.I, 1 / Math.sqrt(s.I)), [s.E, s.H, s.I], 'bf16'),
      };
      const cpu = MoELayer.fromPreset(s.family, { k: s.k }, { hidden: s.H, intermediate: s.I, experts: s.E }, weights, { device: 'cpu' });
      const gpu = MoELayer.fromPreset(s.family, { k: s.k }, { hidden: s.H, intermediate: s.I, experts: s.E }, weights, { device: 'cuda' });
      for (const T of GPU_TOKENS) {
        // x rounded to bf16 so the tensor-core path sees the CPU's inputs exactly.
        const x = Tensor.from(randBf16(rng, T * s.H, 1), [T, s.H], 'bf16');
        const c = await cpu.forward(x, { returnRouting: true, outputDtype: 'f32' });
        const g = await gpu.forward(x, { returnRouting: true, outputDtype: 'f32' });
        expect(g.output.device.name).toBe('cuda:0');
        const [cy, gy] = [c.output.toFloat32Sync(), await g.output.toFloat32()];
        const [ci, gi] = [c.routing.ids.toArraySync() as Int32Array, (await g.routing.ids.toArray()) as Int32Array];
        // Rows whose routing differs (a near tie resolved differently) are reported, not compared.
        let differing = 0;
        const bad: string[] = [];
        for (let t = 0; t < T; t++) {
          const same = ci.slice(t * s.k, (t + 1) * s.k).join() === gi.slice(t * s.k, (t + 1) * s.k).join();
          if (!same) {
            differing++;
            continue;
          }
          let scale = 0;
          for (let h = 0; h < s.H; h++) scale = Math.max(scale, Math.abs(cy[t * s.H + h]));
          // The tensor-core path rounds the intermediate activations to bf16: bound by bf16 eps.
          const m = mismatches(gy.subarray(t * s.H, (t + 1) * s.H), cy.subarray(t * s.H, (t + 1) * s.H), () => 2 ** -7 * (scale + 1e-3), `T=${T} token ${t}`);
          if (m !== null) bad.push(m);
        }
        expect([bad.length, bad.slice(0, 3)]).toEqual([0, []]);
        expect(differing).toBeLessThanOrEqual(Math.ceil(T * 0.001));
        x.dispose();
      }
    }, 600_000);
  }

  test('one expert receiving most tokens, and five runs give identical bits', async () => {
    const rng = new Rng(seed ^ 0x51);
    const [H, I, E, k, T] = [128, 64, 64, 4, 4096];
    const router = randBf16(rng, E * H, 0.01);
    for (let h = 0; h < H; h++) router[h] = 1; // expert 0 wins for most tokens with positive sums
    const weights: MoELayerWeights = {
      router: Tensor.from(router, [E, H], 'bf16'),
      gateUp: Tensor.from(randBf16(rng, E * 2 * I * H, 0.1), [E, 2 * I, H], 'bf16'),
      down: Tensor.from(randBf16(rng, E * H * I, 0.1), [E, H, I], 'bf16'),
    };
    const gpu = MoELayer.fromPreset('mixtral', { k }, { hidden: H, intermediate: I, experts: E }, weights, { device: 'cuda' });
    const x = await Tensor.from(Float32Array.from({ length: T * H }, () => Math.abs(rng.normal(0.5, 1))), [T, H], 'bf16').to('cuda');
    const runs: Float32Array[] = [];
    for (let r = 0; r < 5; r++) {
      const { output, routing } = await gpu.forward(x, { returnRouting: true });
      if (r === 0) expect(routing.stats.maxOverMean).toBeGreaterThan(5);
      runs.push(await output.toFloat32());
    }
    for (const r of runs) expect(Buffer.from(r.buffer).equals(Buffer.from(runs[0].buffer))).toBe(true);
  });

  test('Hub-named checkpoints of every family load onto the GPU and match the float64 reference', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moekit-gpu-ckpt-'));
    try {
      for (const family of ['mixtral', 'qwen2_moe', 'qwen3_moe', 'olmoe', 'deepseek_v2', 'deepseek_v3', 'gpt_oss'] as const) {
        const model = tinyModel(family, seed ^ family.length);
        const d = path.join(dir, family);
        fs.mkdirSync(d);
        await writeModel(d, model);
        for (const [layerIndex, ref] of model.moe) {
          const layer = await MoELayer.fromPretrained(d, { layer: layerIndex, device: 'cuda' });
          const T = 33;
          const rng = new Rng(seed ^ layerIndex);
          const x = Float64Array.from({ length: T * model.hidden }, () => Math.round(rng.normal() * 64) / 64);
          const want = ref.run(x, T);
          const margin = refGating(want.routerLogits, T, ref.gating).margin;
          const got = await (await layer.forward(Tensor.from(Float32Array.from(x), [T, model.hidden]))).toFloat32();
          for (let t = 0; t < T; t++) {
            if (margin[t] < 1e-3) continue;
            let scale = 0;
            for (let h = 0; h < model.hidden; h++) scale = Math.max(scale, Math.abs(want.out[t * model.hidden + h]));
            const H = model.hidden;
            expect(mismatches(got.subarray(t * H, (t + 1) * H), want.out.subarray(t * H, (t + 1) * H), () => 2 ** -7 * (scale + 1e-3), `${family} layer ${layerIndex} token ${t}`)).toBeNull();
          }
          layer.dispose();
        }
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
