/**
 * Tiny Hugging Face checkpoints of every MoE family, written in Hub tensor naming with
 * moekit's safetensors writer, together with the float64 weights and the family
 * reference (test/reference/families.ts) of each MoE layer. The reference's config is
 * written here from the same values as config.json, independently of lib/pretrained.ts.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Tensor, writeSafetensors } from '../../lib';
import { FamilyBlockResult, FamilyConfig, GatingOptions, Rng, familyGatingOptions, gptOssMlpBlock, hfSwigluMoeBlock, roundTo } from '../reference';

export type WDtype = 'f32' | 'bf16' | 'f16';
type Family = 'mixtral' | 'qwen2_moe' | 'qwen3_moe' | 'olmoe' | 'deepseek_v2' | 'deepseek_v3' | 'gpt_oss';

/** A tensor to write: float64 values already rounded to `dtype`. */
export interface TensorSpec {
  values: Float64Array;
  shape: number[];
  dtype: WDtype;
}

/** One MoE layer's reference. */
export interface RefLayer {
  /**
   * The family block on x [T, H] (float64), with the weights as written or, given
   * `dtype`, rounded to it (what loading with that dtype does; the DeepSeek-V3
   * correction bias stays f32).
   */
  run(x: ArrayLike<number>, T: number, dtype?: WDtype): FamilyBlockResult;
  /** Generic gating options equivalent to the family routing (for the near-tie margin). */
  gating: GatingOptions;
}

/** A tiny checkpoint before it is written. */
export interface TinyModel {
  family: Family;
  config: Record<string, unknown>;
  hidden: number;
  intermediate: number;
  experts: number;
  k: number;
  sharedIntermediate: number;
  layers: number;
  /** MoE layer index → reference. */
  moe: Map<number, RefLayer>;
  tensors: Record<string, TensorSpec>;
}

/** How to lay the files out. */
export interface Layout {
  /** Number of shard files (default 1: model.safetensors). */
  shards?: number;
  /** Write model.safetensors.index.json (else the directory's files are the checkpoint). */
  index?: boolean;
  /** false: unpadded headers, so tensor data is misaligned. */
  align?: boolean;
}

function randn(rng: Rng, n: number, std: number, dtype: WDtype): Float64Array {
  return roundTo(Float64Array.from({ length: n }, () => rng.normal(0, std)), dtype);
}

/** Rows [from, to) of a row-major [rows, cols] array, as a copy. */
function slice(values: Float64Array, from: number, to: number, cols: number): Float64Array {
  return values.slice(from * cols, to * cols);
}

/** Non-MoE tensors every decoder layer has (norms), plus a dense MLP for dense layers. */
function commonLayerTensors(rng: Rng, t: Record<string, TensorSpec>, layer: number, H: number, dense: number | undefined, dtype: WDtype): void {
  const p = `model.layers.${layer}`;
  t[`${p}.input_layernorm.weight`] = { values: randn(rng, H, 1, dtype), shape: [H], dtype };
  t[`${p}.post_attention_layernorm.weight`] = { values: randn(rng, H, 1, dtype), shape: [H], dtype };
  if (dense !== undefined) {
    t[`${p}.mlp.gate_proj.weight`] = { values: randn(rng, dense * H, 0.2, dtype), shape: [dense, H], dtype };
    t[`${p}.mlp.up_proj.weight`] = { values: randn(rng, dense * H, 0.2, dtype), shape: [dense, H], dtype };
    t[`${p}.mlp.down_proj.weight`] = { values: randn(rng, H * dense, 0.2, dtype), shape: [H, dense], dtype };
  }
}

interface SwigluFamily {
  family: Exclude<Family, 'gpt_oss'>;
  config: Record<string, unknown>;
  H: number;
  I: number;
  E: number;
  k: number;
  layers: number;
  moeLayers: number[];
  /** Block prefix after model.layers.N. */
  block: string;
  /** Expert tensor names: gate, up, down. */
  names: [string, string, string];
  /** Reference spec (without the per-layer correction bias). */
  spec: Exclude<FamilyConfig, { family: 'gpt_oss' }>;
  shared?: { intermediate: number; prefix: string; gated: boolean };
  /** DeepSeek-V3: layers with an e_score_correction_bias. */
  biasLayers?: number[];
  routerDtype: WDtype;
  expertDtype: WDtype;
}

function swigluModel(seed: number, f: SwigluFamily): TinyModel {
  const rng = new Rng(seed);
  const { H, I, E, k } = f;
  const t: Record<string, TensorSpec> = {};
  t['model.embed_tokens.weight'] = { values: randn(rng, 16 * H, 1, f.expertDtype), shape: [16, H], dtype: f.expertDtype };
  const moe = new Map<number, RefLayer>();
  for (let layer = 0; layer < f.layers; layer++) {
    const isMoe = f.moeLayers.includes(layer);
    commonLayerTensors(rng, t, layer, H, isMoe ? undefined : 12, f.expertDtype);
    if (!isMoe) continue;
    const p = `model.layers.${layer}.${f.block}`;
    const router = randn(rng, E * H, 1 / Math.sqrt(H), f.routerDtype);
    const gate = randn(rng, E * I * H, 1 / Math.sqrt(H), f.expertDtype);
    const up = randn(rng, E * I * H, 1 / Math.sqrt(H), f.expertDtype);
    const down = randn(rng, E * H * I, 1 / Math.sqrt(I), f.expertDtype);
    t[`${p}.gate.weight`] = { values: router, shape: [E, H], dtype: f.routerDtype };
    let spec = f.spec;
    if (f.biasLayers?.includes(layer)) {
      // Non-negative biases: every biased sigmoid score stays positive, where transformers'
      // 0.0 masking of dropped groups and moekit's -inf agree (see families.ts).
      const bias = roundTo(Float64Array.from({ length: E }, () => Math.round(rng.uniform(0, 0.2) * 256) / 256), 'f32');
      t[`${p}.gate.e_score_correction_bias`] = { values: bias, shape: [E], dtype: 'f32' };
      spec = { ...spec, config: { ...spec.config, e_score_correction_bias: bias } } as typeof spec;
    }
    for (let e = 0; e < E; e++) {
      t[`${p}.experts.${e}.${f.names[0]}.weight`] = { values: slice(gate, e * I, (e + 1) * I, H), shape: [I, H], dtype: f.expertDtype };
      t[`${p}.experts.${e}.${f.names[1]}.weight`] = { values: slice(up, e * I, (e + 1) * I, H), shape: [I, H], dtype: f.expertDtype };
      t[`${p}.experts.${e}.${f.names[2]}.weight`] = { values: slice(down, e * H, (e + 1) * H, I), shape: [H, I], dtype: f.expertDtype };
    }
    let shared: Parameters<typeof hfSwigluMoeBlock>[6];
    if (f.shared) {
      const Is = f.shared.intermediate;
      const s = { intermediate: Is, gate: randn(rng, Is * H, 1 / Math.sqrt(H), f.expertDtype), up: randn(rng, Is * H, 1 / Math.sqrt(H), f.expertDtype), down: randn(rng, H * Is, 1 / Math.sqrt(Is), f.expertDtype) };
      const sp = `${p}.${f.shared.prefix}`;
      t[`${sp}.gate_proj.weight`] = { values: s.gate, shape: [Is, H], dtype: f.expertDtype };
      t[`${sp}.up_proj.weight`] = { values: s.up, shape: [Is, H], dtype: f.expertDtype };
      t[`${sp}.down_proj.weight`] = { values: s.down, shape: [H, Is], dtype: f.expertDtype };
      let sharedExpertGate: Float64Array | undefined;
      if (f.shared.gated) {
        sharedExpertGate = randn(rng, H, 1 / Math.sqrt(H), f.routerDtype);
        t[`${p}.shared_expert_gate.weight`] = { values: sharedExpertGate, shape: [1, H], dtype: f.routerDtype };
      }
      shared = { mlp: s, sharedExpertGate };
    }
    const layerSpec = spec;
    moe.set(layer, {
      run: (x, T, dtype) => {
        const r = (v: Float64Array): Float64Array => (dtype === undefined ? v : roundTo(v, dtype));
        const sh = shared && {
          mlp: { intermediate: shared.mlp.intermediate, gate: r(shared.mlp.gate as Float64Array), up: r(shared.mlp.up as Float64Array), down: r(shared.mlp.down as Float64Array) },
          sharedExpertGate: shared.sharedExpertGate && r(shared.sharedExpertGate as Float64Array),
        };
        return hfSwigluMoeBlock(x, T, H, layerSpec, r(router), { intermediate: I, gate: r(gate), up: r(up), down: r(down) }, sh);
      },
      gating: familyGatingOptions(layerSpec),
    });
  }
  return { family: f.family, config: f.config, hidden: H, intermediate: I, experts: E, k, sharedIntermediate: f.shared?.intermediate ?? 0, layers: f.layers, moe, tensors: t };
}

function gptOssModel(seed: number, options: { limit: number }): TinyModel {
  const rng = new Rng(seed);
  const [H, I, E, k, layers] = [32, 8, 4, 2, 2];
  const dtype: WDtype = 'bf16';
  const config = {
    model_type: 'gpt_oss', architectures: ['GptOssForCausalLM'], hidden_size: H, intermediate_size: I, num_hidden_layers: layers,
    num_local_experts: E, num_experts_per_tok: k, experts_per_token: k, swiglu_limit: options.limit, torch_dtype: 'bfloat16',
  };
  const t: Record<string, TensorSpec> = {};
  const moe = new Map<number, RefLayer>();
  for (let layer = 0; layer < layers; layer++) {
    commonLayerTensors(rng, t, layer, H, undefined, dtype);
    const p = `model.layers.${layer}.mlp`;
    const router = { weight: randn(rng, E * H, 1 / Math.sqrt(H), dtype), bias: randn(rng, E, 0.5, dtype) };
    // Large gate/up weights so the clamp at swiglu_limit is exercised.
    const experts = {
      intermediate: I,
      gate_up_proj: randn(rng, E * H * 2 * I, 4 / Math.sqrt(H), dtype),
      gate_up_proj_bias: randn(rng, E * 2 * I, 1, dtype),
      down_proj: randn(rng, E * I * H, 1 / Math.sqrt(I), dtype),
      down_proj_bias: randn(rng, E * H, 0.5, dtype),
    };
    t[`${p}.router.weight`] = { values: router.weight, shape: [E, H], dtype };
    t[`${p}.router.bias`] = { values: router.bias, shape: [E], dtype };
    t[`${p}.experts.gate_up_proj`] = { values: experts.gate_up_proj, shape: [E, H, 2 * I], dtype };
    t[`${p}.experts.gate_up_proj_bias`] = { values: experts.gate_up_proj_bias, shape: [E, 2 * I], dtype };
    t[`${p}.experts.down_proj`] = { values: experts.down_proj, shape: [E, I, H], dtype };
    t[`${p}.experts.down_proj_bias`] = { values: experts.down_proj_bias, shape: [E, H], dtype };
    const cfg = { num_local_experts: E, num_experts_per_tok: k, swiglu_limit: options.limit };
    moe.set(layer, {
      run: (x, T, dtype) => {
        const r = (v: Float64Array): Float64Array => (dtype === undefined ? v : roundTo(v, dtype));
        const w = { intermediate: I, gate_up_proj: r(experts.gate_up_proj), gate_up_proj_bias: r(experts.gate_up_proj_bias), down_proj: r(experts.down_proj), down_proj_bias: r(experts.down_proj_bias) };
        return gptOssMlpBlock(x, T, H, { weight: r(router.weight), bias: r(router.bias) }, w, cfg);
      }, gating: familyGatingOptions({ family: 'gpt_oss', config: cfg }) });
  }
  return { family: 'gpt_oss', config, hidden: H, intermediate: I, experts: E, k, sharedIntermediate: 0, layers, moe, tensors: t };
}

/** A tiny model of `family` (fixed shapes per family; weights from `seed`). */
export function tinyModel(family: Family, seed: number): TinyModel {
  switch (family) {
    case 'mixtral':
      return swigluModel(seed, {
        family, H: 32, I: 16, E: 4, k: 2, layers: 2, moeLayers: [0, 1], block: 'block_sparse_moe', names: ['w1', 'w3', 'w2'],
        config: { model_type: 'mixtral', hidden_size: 32, intermediate_size: 16, num_hidden_layers: 2, num_local_experts: 4, num_experts_per_tok: 2 },
        spec: { family, config: { num_local_experts: 4, num_experts_per_tok: 2 } },
        routerDtype: 'f32', expertDtype: 'bf16',
      });
    case 'qwen2_moe':
      // Layer 0 is dense through mlp_only_layers.
      return swigluModel(seed, {
        family, H: 40, I: 8, E: 8, k: 4, layers: 3, moeLayers: [1, 2], block: 'mlp', names: ['gate_proj', 'up_proj', 'down_proj'],
        config: {
          model_type: 'qwen2_moe', hidden_size: 40, intermediate_size: 12, moe_intermediate_size: 8, shared_expert_intermediate_size: 24,
          num_hidden_layers: 3, num_experts: 8, num_experts_per_tok: 4, norm_topk_prob: false, decoder_sparse_step: 1, mlp_only_layers: [0],
        },
        spec: { family, config: { num_experts: 8, num_experts_per_tok: 4, norm_topk_prob: false } },
        shared: { intermediate: 24, prefix: 'shared_expert', gated: true },
        routerDtype: 'bf16', expertDtype: 'bf16',
      });
    case 'qwen3_moe':
      // decoder_sparse_step 2: only layer 1 of 3 is MoE. Other spellings of the expert keys.
      return swigluModel(seed, {
        family, H: 24, I: 12, E: 8, k: 2, layers: 3, moeLayers: [1], block: 'mlp', names: ['gate_proj', 'up_proj', 'down_proj'],
        config: {
          model_type: 'qwen3_moe', hidden_size: 24, intermediate_size: 12, moe_intermediate_size: 12, num_hidden_layers: 3,
          num_local_experts: 8, num_experts_per_token: 2, norm_topk_prob: true, decoder_sparse_step: 2,
        },
        spec: { family, config: { num_experts: 8, num_experts_per_tok: 2, norm_topk_prob: true } },
        routerDtype: 'f32', expertDtype: 'f32',
      });
    case 'olmoe':
      // norm_topk_prob left out: the transformers default (false) applies.
      return swigluModel(seed, {
        family, H: 32, I: 16, E: 8, k: 2, layers: 2, moeLayers: [0, 1], block: 'mlp', names: ['gate_proj', 'up_proj', 'down_proj'],
        config: { model_type: 'olmoe', hidden_size: 32, intermediate_size: 16, num_hidden_layers: 2, num_experts: 8, num_experts_per_tok: 2 },
        spec: { family, config: { num_experts: 8, num_experts_per_tok: 2, norm_topk_prob: false } },
        routerDtype: 'f16', expertDtype: 'f16',
      });
    case 'deepseek_v2':
      return swigluModel(seed, {
        family, H: 32, I: 8, E: 8, k: 3, layers: 3, moeLayers: [1, 2], block: 'mlp', names: ['gate_proj', 'up_proj', 'down_proj'],
        config: {
          model_type: 'deepseek_v2', hidden_size: 32, intermediate_size: 20, moe_intermediate_size: 8, num_hidden_layers: 3,
          n_routed_experts: 8, num_experts_per_tok: 3, n_shared_experts: 2, topk_method: 'group_limited_greedy', n_group: 4, topk_group: 2,
          routed_scaling_factor: 2.0, norm_topk_prob: false, first_k_dense_replace: 1, moe_layer_freq: 1, scoring_func: 'softmax',
        },
        spec: { family, config: { n_routed_experts: 8, num_experts_per_tok: 3, topk_method: 'group_limited_greedy', n_group: 4, topk_group: 2, routed_scaling_factor: 2.0 } },
        shared: { intermediate: 16, prefix: 'shared_experts', gated: false },
        routerDtype: 'bf16', expertDtype: 'bf16',
      });
    case 'deepseek_v3':
      // moe_layer_freq 2: layers 0 and 2 are MoE, layer 1 dense; layer 2 has no correction bias.
      // norm_topk_prob left out (default true).
      return swigluModel(seed, {
        family, H: 48, I: 8, E: 8, k: 2, layers: 3, moeLayers: [0, 2], block: 'mlp', names: ['gate_proj', 'up_proj', 'down_proj'],
        config: {
          model_type: 'deepseek_v3', hidden_size: 48, intermediate_size: 24, moe_intermediate_size: 8, num_hidden_layers: 3,
          n_routed_experts: 8, num_experts_per_tok: 2, n_shared_experts: 1, n_group: 4, topk_group: 2, routed_scaling_factor: 2.5,
          first_k_dense_replace: 0, moe_layer_freq: 2, topk_method: 'noaux_tc', scoring_func: 'sigmoid',
        },
        spec: { family, config: { n_routed_experts: 8, num_experts_per_tok: 2, n_group: 4, topk_group: 2, routed_scaling_factor: 2.5, norm_topk_prob: true } },
        shared: { intermediate: 8, prefix: 'shared_experts', gated: false },
        biasLayers: [0],
        routerDtype: 'bf16', expertDtype: 'bf16',
      });
    case 'gpt_oss':
      return gptOssModel(seed, { limit: 7 });
  }
}

/** Writes a model's config.json and safetensors files into `dir` (created). */
export async function writeModel(dir: string, model: TinyModel, layout: Layout = {}, config: Record<string, unknown> = model.config): Promise<void> {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config, null, 2));
  const names = Object.keys(model.tensors);
  const shards = layout.shards ?? 1;
  const per = Math.ceil(names.length / shards);
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (let s = 0; s < shards; s++) {
    const file = shards === 1 ? 'model.safetensors' : `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const tensors: Record<string, Tensor> = {};
    for (const name of names.slice(s * per, (s + 1) * per)) {
      const spec = model.tensors[name];
      tensors[name] = Tensor.from(Float32Array.from(spec.values), spec.shape, spec.dtype);
      weightMap[name] = file;
      total += tensors[name].byteLength;
    }
    await writeSafetensors(path.join(dir, file), tensors, { metadata: { format: 'pt' }, align: layout.align });
    for (const t of Object.values(tensors)) t.dispose();
  }
  if (layout.index) fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2));
}

/**
 * Writes a safetensors file byte by byte from a header object and a data buffer, for
 * files the writer would refuse to make (other dtypes, bad offsets).
 */
export function writeRawSafetensors(file: string, header: Record<string, unknown>, data: Buffer): void {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, json, data]));
}
