/** MoELayer.forward against the float64 references: generic configurations and every HF family preset. */
import { MoELayer, Tensor } from '../../lib';
import type { Activation, MoELayerConfig, MoELayerWeights, RoutingOptions } from '../../lib';
import { testSeed } from '../helpers';
import {
  GatingOptions,
  Rng,
  activationIsGlu,
  familyGatingOptions,
  gptOssMlpBlock,
  refGating,
  hfSwigluMoeBlock,
  refMoELayer,
  roundTo,
} from '../reference';

const seed = testSeed('layer');
type WDtype = 'f32' | 'bf16' | 'f16';

function randn(rng: Rng, n: number, std: number, dtype: WDtype): Float64Array {
  return roundTo(Float64Array.from({ length: n }, () => rng.normal(0, std)), dtype === 'f32' ? 'f32' : dtype);
}
const tensor = (v: ArrayLike<number>, shape: number[], dtype: WDtype = 'f32') => Tensor.from(Float32Array.from(v), shape, dtype);

/**
 * Compares a layer output with a reference, row by row: rows whose routing was decided
 * by a near tie (reference margin < 1e-4) are skipped. Error bound: float32 accumulation
 * over H and I relative to the row's magnitude, plus the output dtype's rounding.
 */
function compareOutput(got: Float32Array, want: Float64Array, T: number, H: number, outDtype: WDtype, margin: ArrayLike<number> | undefined, where: string): number {
  const eps = outDtype === 'bf16' ? 2 ** -8 : outDtype === 'f16' ? 2 ** -11 : 0;
  let compared = 0;
  for (let t = 0; t < T; t++) {
    if (margin !== undefined && margin[t] < 1e-4) continue;
    let rowMax = 0;
    for (let h = 0; h < H; h++) rowMax = Math.max(rowMax, Math.abs(want[t * H + h]));
    for (let h = 0; h < H; h++) {
      const i = t * H + h;
      const bound = 3e-5 * (rowMax + 1e-3) + eps * Math.abs(want[i]);
      if (!(Math.abs(got[i] - want[i]) <= bound)) throw new Error(`${where}: y[${t}, ${h}] = ${got[i]}, reference ${want[i]} (seed ${seed})`);
    }
    compared++;
  }
  return compared;
}

interface GenericCase {
  name: string;
  E: number;
  routing: RoutingOptions;
  activation?: Activation;
  separate?: boolean;
  layout?: 'enk' | 'ekn';
  biases?: boolean;
  shared?: { intermediate: number; gated: boolean };
  nullExperts?: number;
  capacity?: number;
  blockSize?: number;
  dtype?: WDtype;
  xDtype?: WDtype;
}

const GENERIC: GenericCase[] = [
  { name: 'softmax top-2, separate gate/up (Mixtral shape), bf16 weights', E: 8, routing: { k: 2, renormalize: true }, separate: true, dtype: 'bf16' },
  { name: 'softmax top-k = E, f32', E: 8, routing: { k: 8 } },
  { name: 'top-1 of 60, fused SwiGLU, f16 weights, bf16 activations', E: 60, routing: { k: 1 }, dtype: 'f16', xDtype: 'bf16' },
  { name: 'grouped sigmoid top-6 of 64 with scaling, shared gated expert', E: 64, routing: { k: 6, scoring: 'sigmoid', nGroup: 8, topkGroup: 3, renormalize: true, routedScaling: 2.5 }, shared: { intermediate: 24, gated: true }, dtype: 'bf16' },
  { name: 'gpt-oss clamped SwiGLU, [E,K,N] weights with biases', E: 8, routing: { k: 4, selection: 'topk-logits-softmax' }, activation: 'gpt-oss-swiglu', layout: 'ekn', biases: true, dtype: 'bf16' },
  { name: 'GeGLU, interleaved SwiGLU and plain GELU/ReLU/SiLU experts', E: 8, routing: { k: 2 }, activation: 'geglu' },
  { name: 'interleaved SwiGLU', E: 8, routing: { k: 3 }, activation: 'swiglu-interleaved' },
  { name: 'plain GELU experts', E: 8, routing: { k: 2 }, activation: 'gelu' },
  { name: 'plain ReLU experts with biases', E: 8, routing: { k: 2 }, activation: 'relu', biases: true },
  { name: 'plain SiLU experts', E: 60, routing: { k: 4 }, activation: 'silu' },
  { name: 'top-p with maxK 4', E: 60, routing: { k: 4, selection: 'top-p', topP: 0.5 } },
  { name: 'null experts', E: 8, routing: { k: 2, nullExperts: 2, renormalize: true }, nullExperts: 2 },
  { name: 'expert-choice', E: 8, routing: { k: 1, selection: 'expert-choice', capacityFactor: 1.5, choiceK: 2 } },
  { name: 'Sinkhorn', E: 64, routing: { k: 4, selection: 'sinkhorn', sinkhornIters: 2 } },
  { name: 'capacity with block padding (tokens dropped)', E: 8, routing: { k: 2 }, capacity: 3, blockSize: 16 },
  { name: '257 experts, k = 1, sqrt-softplus', E: 257, routing: { k: 1, scoring: 'sqrt-softplus' } },
];

describe('MoELayer.forward matches refMoELayer', () => {
  for (const c of GENERIC) {
    test(c.name, async () => {
      const rng = new Rng(seed ^ (c.name.length * 104729));
      for (const T of [1, 3, 17, 256]) {
        const H = 40 + 8 * rng.int(0, 3); // multiples of 8, never a power of two
        const I = 24 + 2 * rng.int(0, 4);
        const E = c.E;
        const nul = c.nullExperts ?? 0;
        const act = c.activation ?? 'swiglu';
        const dtype = c.dtype ?? 'f32';
        const layout = c.layout ?? 'enk';
        const glu = activationIsGlu(act);
        const n1 = c.separate ? I : glu ? 2 * I : I;
        const x = c.xDtype === 'bf16' ? roundTo(randn(rng, T * H, 1, 'f32'), 'bf16') : randn(rng, T * H, 1, 'f32');
        // Router weights on a coarse grid keep logits well separated (few near ties).
        const router = randn(rng, (E + nul) * H, 1 / Math.sqrt(H), dtype);
        const w1 = randn(rng, E * n1 * H, 1 / Math.sqrt(H), dtype);
        const w1Up = c.separate ? randn(rng, E * n1 * H, 1 / Math.sqrt(H), dtype) : undefined;
        const b1 = c.biases ? randn(rng, E * n1, 0.3, dtype) : undefined;
        const w2 = randn(rng, E * H * I, 1 / Math.sqrt(I), dtype);
        const b2 = c.biases ? randn(rng, E * H, 0.3, dtype) : undefined;
        const sh = c.shared;
        const shGate = sh ? randn(rng, sh.intermediate * H, 1 / Math.sqrt(H), dtype) : undefined;
        const shUp = sh ? randn(rng, sh.intermediate * H, 1 / Math.sqrt(H), dtype) : undefined;
        const shDown = sh ? randn(rng, H * sh.intermediate, 1 / Math.sqrt(sh.intermediate), dtype) : undefined;
        const shOut = sh?.gated ? randn(rng, H, 1 / Math.sqrt(H), dtype) : undefined;

        const gating: GatingOptions = { ...(c.routing as Omit<GatingOptions, 'experts'>), experts: E };
        const ref = refMoELayer(x, T, H, {
          routerWeight: router,
          gating,
          experts: { activation: act, w1, n1, w1Up, b1, w2, b2, layout, downLayout: layout },
          shared: sh ? { intermediate: sh.intermediate, gate: shGate as Float64Array, up: shUp as Float64Array, down: shDown as Float64Array, gateWeight: shOut } : undefined,
          capacity: c.capacity,
        });
        const config: MoELayerConfig = {
          hidden: H,
          intermediate: I,
          experts: E,
          routing: c.routing,
          activation: act,
          layoutIn: layout,
          layoutOut: layout,
          ...(sh ? { sharedIntermediate: sh.intermediate } : {}),
          ...(c.capacity !== undefined ? { capacity: c.capacity } : {}),
          ...(c.blockSize !== undefined ? { blockSize: c.blockSize } : {}),
        };
        const inShape = layout === 'enk' ? [E, n1, H] : [E, H, n1];
        const weights: MoELayerWeights = {
          router: tensor(router, [E + nul, H], dtype),
          ...(c.separate ? { gate: tensor(w1, inShape, dtype), up: tensor(w1Up as Float64Array, inShape, dtype) } : { gateUp: tensor(w1, inShape, dtype) }),
          ...(b1 ? { gateUpBias: tensor(b1, [E, n1], dtype) } : {}),
          down: tensor(w2, layout === 'enk' ? [E, H, I] : [E, I, H], dtype),
          ...(b2 ? { downBias: tensor(b2, [E, H], dtype) } : {}),
          ...(sh
            ? {
                shared: {
                  gate: tensor(shGate as Float64Array, [sh.intermediate, H], dtype),
                  up: tensor(shUp as Float64Array, [sh.intermediate, H], dtype),
                  down: tensor(shDown as Float64Array, [H, sh.intermediate], dtype),
                  ...(shOut ? { outputGate: tensor(shOut, [1, H], dtype) } : {}),
                },
              }
            : {}),
        };
        const layer = new MoELayer(config, weights, { ownsWeights: true });
        const xt = tensor(x, [T, H], c.xDtype ?? 'f32');
        const { output, routing } = await layer.forward(xt, { returnRouting: true, outputDtype: 'f32' });
        const where = `${c.name} T=${T} H=${H} I=${I}`;
        const margin = c.routing.selection === 'expert-choice' ? undefined : ref.gating?.margin;
        if (c.routing.selection === 'expert-choice' && Array.from(ref.gating?.margin ?? []).some((m) => m < 1e-4)) continue;
        const compared = compareOutput(output.toFloat32Sync(), ref.out, T, H, 'f32', margin, where);
        if (T >= 17) expect(compared).toBeGreaterThan(0);
        // Routing: ids exact on the compared rows, load consistent with the ids.
        const ids = routing.ids.toArraySync() as Int32Array;
        for (let t = 0; t < T; t++) {
          if (margin !== undefined && margin[t] < 1e-4) continue;
          for (let s = 0; s < ref.slots; s++) expect([where, t, s, ids[t * ref.slots + s]]).toEqual([where, t, s, ref.ids[t * ref.slots + s]]);
        }
        const dropped = ref.kept.reduce((n, k, p) => n + (ref.ids[p] >= 0 && k === 0 ? 1 : 0), 0);
        if (margin === undefined || Array.from(margin).every((m) => m >= 1e-4)) {
          expect(Array.from(routing.load.toArraySync() as Int32Array)).toEqual(Array.from(ref.load));
          expect(routing.dropped).toBe(dropped);
        }
        expect(routing.stats.routed).toBe(Array.from(routing.load.toArraySync() as Int32Array).reduce((a, b) => a + b, 0));
        for (const t of [xt, output, routing.ids, routing.weights, routing.load]) t.dispose();
        layer.dispose();
      }
    });
  }
});

describe('forced routing (routing replay)', () => {
  test('given ids and weights, the gate is skipped; given ids alone, weights come from the router', async () => {
    const rng = new Rng(seed ^ 0xf0);
    const [T, H, I, E, k] = [17, 48, 32, 8, 2];
    const x = randn(rng, T * H, 1, 'f32');
    const router = randn(rng, E * H, 0.2, 'f32');
    const w1 = randn(rng, E * 2 * I * H, 0.15, 'f32');
    const w2 = randn(rng, E * H * I, 0.15, 'f32');
    const ids = new Int32Array(T * k);
    for (let t = 0; t < T; t++) {
      ids[t * k] = rng.int(0, E);
      ids[t * k + 1] = t % 5 === 0 ? -1 : (ids[t * k] + 1 + rng.int(0, E - 1)) % E;
    }
    const fw = roundTo(Float64Array.from({ length: T * k }, () => rng.uniform()), 'f32');
    const weights = { router: tensor(router, [E, H]), gateUp: tensor(w1, [E, 2 * I, H]), down: tensor(w2, [E, H, I]) };
    const experts = { activation: 'swiglu' as const, w1, n1: 2 * I, w2 };
    // Weights from the router at the forced ids, as each scoring and selection computes them
    // (softmax over the row; sigmoid and sqrt-softplus per id, with and without renormalisation
    // and scaling; softmax over the forced ids' logits).
    const routings: RoutingOptions[] = [
      { k, renormalize: true },
      { k, scoring: 'sigmoid', renormalize: true, routedScaling: 2.5 },
      { k, scoring: 'sigmoid', renormalize: false },
      { k, scoring: 'sqrt-softplus', renormalize: true },
      { k, selection: 'topk-logits-softmax' },
    ];
    const layer = new MoELayer({ hidden: H, intermediate: I, experts: E, routing: routings[0] }, weights);
    for (const routing of routings) {
      const l = routing === routings[0] ? layer : new MoELayer({ hidden: H, intermediate: I, experts: E, routing }, weights);
      const gating = { experts: E, k, scoring: routing.scoring, selection: routing.selection, renormalize: routing.renormalize, routedScaling: routing.routedScaling };
      for (const withWeights of routing === routings[0] ? [true, false] : [false]) {
        const ref = refMoELayer(x, T, H, { routerWeight: router, gating, experts, forced: { ids, k, weights: withWeights ? fw : undefined } });
        const got = await l.forward(tensor(x, [T, H]), {
          returnRouting: true,
          forcedIds: Tensor.from(ids, [T, k]),
          ...(withWeights ? { forcedWeights: tensor(fw, [T, k]) } : {}),
        });
        expect(Array.from(got.routing.ids.toArraySync() as Int32Array)).toEqual(Array.from(ids));
        expect(Array.from(got.routing.load.toArraySync() as Int32Array)).toEqual(Array.from(ref.load));
        compareOutput(got.output.toFloat32Sync(), ref.out, T, H, 'f32', undefined, `forced, ${JSON.stringify(routing)}, weights given: ${withWeights}`);
      }
    }
    await expect(layer.forward(tensor(x, [T, H]), { forcedIds: Tensor.from(new Int32Array(T * k).fill(8), [T, k]) })).rejects.toThrow(
      /Expected expert ids in \[-1, 8\) for options.forcedIds but received "8 at \[0, 0\]"/,
    );
  });
});

describe('HF family presets match the family references (transformers order of operations)', () => {
  test('mixtral, qwen2_moe (shared expert + gate), qwen3_moe, olmoe, deepseek_v2 (grouped), deepseek_v3 (bias, groups, shared)', async () => {
    const rng = new Rng(seed ^ 0xfa);
    for (const T of [1, 17, 256]) {
      const H = 56;
      const cases = [
        { family: 'mixtral' as const, E: 8, I: 40, preset: { k: 2 }, spec: { family: 'mixtral' as const, config: { num_local_experts: 8, num_experts_per_tok: 2 } } },
        { family: 'qwen2_moe' as const, E: 60, I: 16, Is: 48, gated: true, preset: { k: 4 }, spec: { family: 'qwen2_moe' as const, config: { num_experts: 60, num_experts_per_tok: 4, norm_topk_prob: false } } },
        { family: 'qwen3_moe' as const, E: 64, I: 16, preset: { k: 8, normTopkProb: true }, spec: { family: 'qwen3_moe' as const, config: { num_experts: 64, num_experts_per_tok: 8, norm_topk_prob: true } } },
        { family: 'olmoe' as const, E: 64, I: 16, preset: { k: 8 }, spec: { family: 'olmoe' as const, config: { num_experts: 64, num_experts_per_tok: 8, norm_topk_prob: false } } },
        {
          family: 'deepseek_v2' as const,
          E: 64,
          I: 16,
          Is: 32,
          preset: { k: 6, topkMethod: 'group_limited_greedy' as const, nGroup: 8, topkGroup: 3, routedScalingFactor: 16 },
          spec: { family: 'deepseek_v2' as const, config: { n_routed_experts: 64, num_experts_per_tok: 6, topk_method: 'group_limited_greedy' as const, n_group: 8, topk_group: 3, routed_scaling_factor: 16 } },
        },
        {
          family: 'deepseek_v3' as const,
          E: 64,
          I: 16,
          Is: 16,
          bias: true,
          preset: { k: 8, nGroup: 8, topkGroup: 4, routedScalingFactor: 2.5 },
          spec: { family: 'deepseek_v3' as const, config: { n_routed_experts: 64, num_experts_per_tok: 8, n_group: 8, topk_group: 4, routed_scaling_factor: 2.5, norm_topk_prob: true } },
        },
      ];
      for (const c of cases) {
        const { E, I } = c;
        const x = randn(rng, T * H, 1, 'f32');
        const router = randn(rng, E * H, 1 / Math.sqrt(H), 'bf16');
        const gate = randn(rng, E * I * H, 1 / Math.sqrt(H), 'bf16');
        const up = randn(rng, E * I * H, 1 / Math.sqrt(H), 'bf16');
        const down = randn(rng, E * H * I, 1 / Math.sqrt(I), 'bf16');
        // Non-negative biases keep every biased sigmoid score positive, where transformers'
        // 0.0 masking of dropped groups and moekit's -inf agree.
        const bias = c.bias ? roundTo(Float64Array.from({ length: E }, () => Math.round(rng.uniform(0, 0.1) * 256) / 256), 'f32') : undefined;
        const Is = c.Is ?? 0;
        const shared = Is > 0 ? { gate: randn(rng, Is * H, 1 / Math.sqrt(H), 'bf16'), up: randn(rng, Is * H, 1 / Math.sqrt(H), 'bf16'), down: randn(rng, H * Is, 1 / Math.sqrt(Is), 'bf16') } : undefined;
        const sharedGate = c.gated ? randn(rng, H, 1 / Math.sqrt(H), 'bf16') : undefined;
        const spec = c.bias ? { ...c.spec, config: { ...c.spec.config, e_score_correction_bias: bias } } : c.spec;
        const ref = hfSwigluMoeBlock(x, T, H, spec as Parameters<typeof hfSwigluMoeBlock>[3], router, { intermediate: I, gate, up, down }, shared ? { mlp: { intermediate: Is, ...shared }, sharedExpertGate: sharedGate } : undefined);
        const layer = MoELayer.fromPreset(c.family, c.preset, { hidden: H, intermediate: I, experts: E, ...(Is ? { sharedIntermediate: Is } : {}) }, {
          router: tensor(router, [E, H], 'bf16'),
          gate: tensor(gate, [E, I, H], 'bf16'),
          up: tensor(up, [E, I, H], 'bf16'),
          down: tensor(down, [E, H, I], 'bf16'),
          ...(bias ? { correctionBias: tensor(bias, [E]) } : {}),
          ...(shared
            ? { shared: { gate: tensor(shared.gate, [Is, H], 'bf16'), up: tensor(shared.up, [Is, H], 'bf16'), down: tensor(shared.down, [H, Is], 'bf16'), ...(sharedGate ? { outputGate: tensor(sharedGate, [1, H], 'bf16') } : {}) } }
            : {}),
        }, { ownsWeights: true });
        const out = await layer.forward(tensor(x, [T, H]));
        // Near ties of the routing, from the generic reference on the same logits.
        const margin = refGating(ref.routerLogits, T, familyGatingOptions(spec as Parameters<typeof familyGatingOptions>[0])).margin;
        const n = compareOutput(out.toFloat32Sync(), ref.out, T, H, 'f32', margin, `${c.family} T=${T}`);
        if (T >= 17) expect(n).toBeGreaterThan(0);
        layer.dispose();
        out.dispose();
      }
    }
  });

  test('gpt_oss: router bias, top-k over logits then softmax, clamped SwiGLU on interleaved [E,H,2I] with biases', async () => {
    const rng = new Rng(seed ^ 0x99);
    for (const T of [1, 17, 256]) {
      const [H, I, E, k] = [64, 24, 16, 4];
      const x = randn(rng, T * H, 2, 'f32');
      const router = { weight: randn(rng, E * H, 1 / Math.sqrt(H), 'bf16'), bias: randn(rng, E, 0.5, 'bf16') };
      // Large weights so the clamp at 7 is exercised.
      const experts = {
        intermediate: I,
        gate_up_proj: randn(rng, E * H * 2 * I, 4 / Math.sqrt(H), 'bf16'),
        gate_up_proj_bias: randn(rng, E * 2 * I, 1, 'bf16'),
        down_proj: randn(rng, E * I * H, 1 / Math.sqrt(I), 'bf16'),
        down_proj_bias: randn(rng, E * H, 0.5, 'bf16'),
      };
      const ref = gptOssMlpBlock(x, T, H, router, experts, { num_local_experts: E, num_experts_per_tok: k });
      const layer = MoELayer.fromPreset('gpt_oss', { k }, { hidden: H, intermediate: I, experts: E }, {
        router: tensor(router.weight, [E, H], 'bf16'),
        routerBias: tensor(router.bias, [E], 'bf16'),
        gateUp: tensor(experts.gate_up_proj, [E, H, 2 * I], 'bf16'),
        gateUpBias: tensor(experts.gate_up_proj_bias, [E, 2 * I], 'bf16'),
        down: tensor(experts.down_proj, [E, I, H], 'bf16'),
        downBias: tensor(experts.down_proj_bias, [E, H], 'bf16'),
      });
      const out = await layer.forward(tensor(x, [T, H]));
      const margin = refGating(ref.routerLogits, T, familyGatingOptions({ family: 'gpt_oss', config: { num_local_experts: E, num_experts_per_tok: k } })).margin;
      compareOutput(out.toFloat32Sync(), ref.out, T, H, 'f32', margin, `gpt_oss T=${T}`);
    }
  });
});

describe('MoELayer argument checks', () => {
  const H = 16;
  const E = 4;
  const I = 8;
  const ok = () => ({ router: Tensor.zeros([E, H]), gateUp: Tensor.zeros([E, 2 * I, H]), down: Tensor.zeros([E, H, I]) });
  test('shapes, dtypes, devices and options are checked with the argument named', async () => {
    expect(() => new MoELayer({ hidden: H, intermediate: I, experts: E, routing: { k: 2 } }, { ...ok(), down: Tensor.zeros([E, I, H]) })).toThrow(
      new RangeError('Expected a f32/f16/bf16 tensor of shape [4, 16, 8] for weights.down but received "a f32 tensor of shape [4, 8, 16]" of type string'),
    );
    expect(() => new MoELayer({ hidden: H, intermediate: I, experts: E, routing: { k: 5 } }, ok())).toThrow(/Expected an integer between 1 and 4 for config.routing.k but received 5/);
    expect(() => new MoELayer({ hidden: 0, intermediate: I, experts: E, routing: { k: 1 } }, ok())).toThrow(/config.hidden/);
    expect(() => new MoELayer({ hidden: H, intermediate: I, experts: E, routing: { k: 1 } }, ok(), { device: 'tpu' })).toThrow(/options.device/);
    const layer = new MoELayer({ hidden: H, intermediate: I, experts: E, routing: { k: 1 } }, ok());
    await expect(layer.forward(Tensor.zeros([2, H + 1]))).rejects.toThrow(/Expected a f32, f16 or bf16 tensor of shape \[tokens, 16\] for x/);
    await expect(layer.forward(Tensor.zeros([2, H]), { outputDtype: 'i32' as never })).rejects.toThrow(/options.outputDtype/);
    layer.dispose();
    await expect(layer.forward(Tensor.zeros([2, H]))).rejects.toThrow(/the layer has been disposed/);
  });

  test('zero tokens give an empty output', async () => {
    const layer = new MoELayer({ hidden: H, intermediate: I, experts: E, routing: { k: 2 } }, ok());
    const { output, routing } = await layer.forward(Tensor.zeros([0, H]), { returnRouting: true });
    expect(output.shape).toEqual([0, H]);
    expect(Array.from(routing.load.toArraySync() as Int32Array)).toEqual([0, 0, 0, 0]);
  });
});
