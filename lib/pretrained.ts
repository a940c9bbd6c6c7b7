/**
 * Hugging Face checkpoints: config.json of each MoE family, which decoder layers are
 * MoE layers, the Hub names and shapes of their tensors, and loading one layer into a
 * {@link MoELayer} (`MoELayer.fromPretrained`).
 *
 * Families (config.json `model_type`) and their tensors, `P` = `model.layers.N`:
 * - mixtral: `P.block_sparse_moe.gate.weight`, `P.block_sparse_moe.experts.E.{w1,w3,w2}.weight`
 *   (w1 gate, w3 up, w2 down).
 * - qwen2_moe: `P.mlp.gate.weight`, `P.mlp.experts.E.{gate,up,down}_proj.weight`,
 *   `P.mlp.shared_expert.{gate,up,down}_proj.weight`, `P.mlp.shared_expert_gate.weight`.
 * - qwen3_moe, olmoe: as qwen2_moe without the shared expert.
 * - deepseek_v2, deepseek_v3: `P.mlp.gate.weight`, `P.mlp.gate.e_score_correction_bias` (V3;
 *   zeros when absent), `P.mlp.experts.E.*`, `P.mlp.shared_experts.*`.
 * - gpt_oss (bf16): `P.mlp.router.{weight,bias}`, `P.mlp.experts.gate_up_proj` [E, H, 2I]
 *   (gate/up interleaved), `gate_up_proj_bias` [E, 2I], `down_proj` [E, I, H], `down_proj_bias` [E, H].
 * The SwiGLU families also load the fused expert layout of newer transformers releases
 * (`….experts.gate_up_proj` [E, 2I, H] = [gate; up], `….experts.down_proj` [E, H, I]).
 *
 * config.json keys are read under each spelling transformers has used; a missing key
 * takes the transformers config class default (save_pretrained leaves out keys that equal
 * their default).
 */
import * as fs from 'fs';
import * as path from 'path';
import { resolveDevice } from './device';
import { DType, FLOAT_DTYPES } from './dtype';
import { MoekitError, checkInteger, checkOneOf, checkOptions, rangeError, typeError } from './errors';
import { MoELayer, MoELayerWeights } from './layer';
import { FAMILIES, Family, Preset, PresetOptions, preset } from './presets';
import { Checkpoint, TensorEntry } from './safetensors';
import { Tensor } from './tensor';

/** One MoE layer of a checkpoint, as {@link listMoELayers} describes it. */
export interface MoELayerInfo {
  /** Decoder layer index (the N of `model.layers.N`). */
  layer: number;
  family: Family;
  hidden: number;
  /** Intermediate size of one routed expert. */
  intermediate: number;
  /** Routed experts. */
  experts: number;
  /** Experts per token. */
  k: number;
  /** Intermediate size of the shared expert(s) together; 0 for none. */
  sharedIntermediate: number;
  /** dtype of the routed expert weights in the files. */
  dtype: DType;
  /** The routing math (see presets.ts). */
  preset: Preset;
}

/** Options of {@link loadMoELayer} / `MoELayer.fromPretrained`. */
export interface PretrainedOptions {
  /** Decoder layer index; must be one of the checkpoint's MoE layers. */
  layer: number;
  /** Convert every weight to this dtype (default: keep each tensor's file dtype). */
  dtype?: DType;
  /** Device of the layer (see MoELayer); weights are read into host memory. */
  device?: string;
}

/** What config.json says about the MoE layers of a model. */
interface ModelConfig {
  configPath: string;
  family: Family;
  hidden: number;
  layers: number;
  experts: number;
  k: number;
  intermediate: number;
  sharedIntermediate: number;
  presetOptions: PresetOptions;
  /** gpt-oss swiglu_alpha, when config.json has it. */
  alpha?: number;
  /** Indices of the MoE decoder layers, ascending. */
  moeLayers: number[];
}

type Json = Record<string, unknown>;

/**
 * transformers config class defaults per family (configuration_<family>.py), used for
 * keys config.json leaves out. `null` marks a key with no default (it must be given).
 */
const DEFAULTS: Record<Family, Json> = {
  mixtral: { hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 32, num_local_experts: 8, num_experts_per_tok: 2 },
  qwen2_moe: {
    hidden_size: 2048, num_hidden_layers: 24, num_experts: 60, num_experts_per_tok: 4, moe_intermediate_size: 1408,
    shared_expert_intermediate_size: 5632, norm_topk_prob: false, decoder_sparse_step: 1, mlp_only_layers: [],
  },
  qwen3_moe: {
    hidden_size: 2048, num_hidden_layers: 24, num_experts: 128, num_experts_per_tok: 8, moe_intermediate_size: 768,
    norm_topk_prob: false, decoder_sparse_step: 1, mlp_only_layers: [],
  },
  olmoe: { hidden_size: 2048, intermediate_size: 2048, num_hidden_layers: 16, num_experts: 64, num_experts_per_tok: 8, norm_topk_prob: false },
  deepseek_v2: {
    hidden_size: 4096, num_hidden_layers: 30, n_routed_experts: 64, num_experts_per_tok: null, moe_intermediate_size: 1407,
    n_shared_experts: 2, routed_scaling_factor: 1.0, topk_method: 'greedy', n_group: null, topk_group: null,
    first_k_dense_replace: 0, moe_layer_freq: 1, scoring_func: 'softmax',
  },
  deepseek_v3: {
    hidden_size: 7168, num_hidden_layers: 61, n_routed_experts: 256, num_experts_per_tok: 8, moe_intermediate_size: 2048,
    n_shared_experts: 1, routed_scaling_factor: 2.5, n_group: 8, topk_group: 4, norm_topk_prob: true,
    first_k_dense_replace: 3, moe_layer_freq: 1, scoring_func: 'sigmoid',
  },
  gpt_oss: { hidden_size: 2880, intermediate_size: 2880, num_hidden_layers: 36, num_local_experts: 128, num_experts_per_tok: 4, swiglu_limit: 7.0 },
};

/** Spellings of the same setting across transformers versions and families, preferred first. */
const SPELLINGS = {
  experts: ['num_experts', 'num_local_experts', 'n_routed_experts'],
  k: ['num_experts_per_tok', 'num_experts_per_token', 'experts_per_token', 'top_k'],
  /** Routed expert width: a separate key where the family also has a dense MLP width. */
  intermediate: ['moe_intermediate_size', 'intermediate_size'],
};

/** Families whose config has a separate dense `intermediate_size` (so only moe_intermediate_size is the expert width). */
const HAS_DENSE_WIDTH: readonly Family[] = ['qwen2_moe', 'qwen3_moe', 'deepseek_v2', 'deepseek_v3'];

function configError(file: string, what: string): MoekitError {
  return new MoekitError(`${file}: ${what}`, 'ERR_CHECKPOINT');
}

/** Reads one setting from config.json under the first of `keys` it has, else the family default; returns the key too. */
function setting(cfg: Json, family: Family, file: string, keys: readonly string[]): { key: string; value: unknown } {
  for (const key of keys) if (cfg[key] !== undefined && cfg[key] !== null) return { key, value: cfg[key] };
  for (const key of keys) if (DEFAULTS[family][key] !== undefined && DEFAULTS[family][key] !== null) return { key, value: DEFAULTS[family][key] };
  throw configError(file, `has no ${keys.join(' / ')}, which a ${family} config needs`);
}

function intSetting(cfg: Json, family: Family, file: string, keys: readonly string[], min: number): number {
  const { key, value } = setting(cfg, family, file, keys);
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min) throw configError(file, `${key} is ${JSON.stringify(value)}; expected an integer >= ${min}`);
  return value;
}

function numberSetting(cfg: Json, family: Family, file: string, keys: readonly string[]): number {
  const { key, value } = setting(cfg, family, file, keys);
  if (typeof value !== 'number' || !Number.isFinite(value)) throw configError(file, `${key} is ${JSON.stringify(value)}; expected a finite number`);
  return value;
}

function boolSetting(cfg: Json, family: Family, file: string, key: string): boolean {
  const { value } = setting(cfg, family, file, [key]);
  if (typeof value !== 'boolean') throw configError(file, `${key} is ${JSON.stringify(value)}; expected true or false`);
  return value;
}

/** An optional integer setting (null and absent alike mean none); `fallback` when none. */
function optionalInt(cfg: Json, family: Family, file: string, key: string, min: number, fallback: number): number {
  const v = cfg[key] ?? DEFAULTS[family][key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw configError(file, `${key} is ${JSON.stringify(v)}; expected an integer >= ${min}`);
  return v;
}

/** Parses `dir/config.json`. */
function readModelConfig(dir: string): ModelConfig {
  const file = path.join(dir, 'config.json');
  if (!fs.existsSync(file)) throw new MoekitError(`${dir} has no config.json (a Hugging Face checkpoint directory has one)`, 'ERR_CHECKPOINT');
  let cfg: unknown;
  try {
    cfg = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw configError(file, `is not valid JSON (${(e as Error).message})`);
  }
  if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg)) throw configError(file, 'is not a JSON object');
  const c = cfg as Json;
  if (typeof c.model_type !== 'string') throw configError(file, `has no model_type string (received ${JSON.stringify(c.model_type)})`);
  if (!(FAMILIES as readonly string[]).includes(c.model_type))
    throw new MoekitError(`${file}: model_type ${JSON.stringify(c.model_type)} is not a supported MoE family; supported: ${FAMILIES.join(', ')}`, 'ERR_UNSUPPORTED');
  const family = c.model_type as Family;
  if (c.quantization_config !== undefined && c.quantization_config !== null) {
    const method = (c.quantization_config as Json).quant_method;
    throw new MoekitError(`${file}: quantized checkpoints (quant_method ${JSON.stringify(method)}) are not supported; use a bf16, f16 or f32 checkpoint`, 'ERR_UNSUPPORTED');
  }
  const hidden = intSetting(c, family, file, ['hidden_size'], 1);
  const layers = intSetting(c, family, file, ['num_hidden_layers'], 1);
  const experts = intSetting(c, family, file, SPELLINGS.experts, 1);
  const k = intSetting(c, family, file, SPELLINGS.k, 1);
  if (k > experts) throw configError(file, `${setting(c, family, file, SPELLINGS.k).key} = ${k} is more than the ${experts} experts`);
  const intermediate = intSetting(c, family, file, HAS_DENSE_WIDTH.includes(family) ? ['moe_intermediate_size'] : SPELLINGS.intermediate, 1);

  let sharedIntermediate = 0;
  let moeLayers: number[];
  let presetOptions: PresetOptions = { k };
  let alpha: number | undefined;
  const all = Array.from({ length: layers }, (_, i) => i);
  switch (family) {
    case 'mixtral':
    case 'olmoe':
      moeLayers = all;
      if (family === 'olmoe') presetOptions = { k, normTopkProb: boolSetting(c, family, file, 'norm_topk_prob') };
      break;
    case 'qwen2_moe':
    case 'qwen3_moe': {
      // transformers: MoE where layer not in mlp_only_layers and (layer + 1) % decoder_sparse_step == 0.
      const step = intSetting(c, family, file, ['decoder_sparse_step'], 1);
      const only = setting(c, family, file, ['mlp_only_layers']).value;
      if (!Array.isArray(only) || !only.every((v) => Number.isInteger(v))) throw configError(file, `mlp_only_layers is ${JSON.stringify(only)}; expected a list of layer indices`);
      moeLayers = all.filter((l) => !only.includes(l) && (l + 1) % step === 0);
      presetOptions = { k, normTopkProb: boolSetting(c, family, file, 'norm_topk_prob') };
      if (family === 'qwen2_moe') sharedIntermediate = intSetting(c, family, file, ['shared_expert_intermediate_size'], 0);
      break;
    }
    case 'deepseek_v2':
    case 'deepseek_v3': {
      // DeepSeek: MoE where layer >= first_k_dense_replace and layer % moe_layer_freq == 0.
      const firstDense = intSetting(c, family, file, ['first_k_dense_replace'], 0);
      const freq = intSetting(c, family, file, ['moe_layer_freq'], 1);
      moeLayers = all.filter((l) => l >= firstDense && l % freq === 0);
      sharedIntermediate = intermediate * optionalInt(c, family, file, 'n_shared_experts', 0, 0);
      const scoring = setting(c, family, file, ['scoring_func']).value;
      const wantScoring = family === 'deepseek_v2' ? 'softmax' : 'sigmoid';
      if (scoring !== wantScoring)
        throw new MoekitError(`${file}: scoring_func ${JSON.stringify(scoring)} is not supported for ${family} (transformers uses ${wantScoring})`, 'ERR_UNSUPPORTED');
      const routedScalingFactor = numberSetting(c, family, file, ['routed_scaling_factor']);
      if (family === 'deepseek_v2') {
        // NOTE: transformers' DeepseekV2 ignores norm_topk_prob; so do we (see presets.ts).
        const method = setting(c, family, file, ['topk_method']).value;
        if (method !== 'greedy' && method !== 'group_limited_greedy')
          throw new MoekitError(`${file}: topk_method ${JSON.stringify(method)} is not supported for deepseek_v2 (supported: "greedy", "group_limited_greedy")`, 'ERR_UNSUPPORTED');
        presetOptions = { k, routedScalingFactor, topkMethod: method };
        if (method === 'group_limited_greedy') {
          const nGroup = intSetting(c, family, file, ['n_group'], 1);
          const topkGroup = intSetting(c, family, file, ['topk_group'], 1);
          checkGroups(file, experts, k, nGroup, topkGroup);
          presetOptions = { ...presetOptions, nGroup, topkGroup };
        }
      } else {
        const nGroup = intSetting(c, family, file, ['n_group'], 1);
        const topkGroup = intSetting(c, family, file, ['topk_group'], 1);
        checkGroups(file, experts, k, nGroup, topkGroup);
        presetOptions = { k, routedScalingFactor, nGroup, topkGroup, normTopkProb: boolSetting(c, family, file, 'norm_topk_prob') };
      }
      break;
    }
    case 'gpt_oss': {
      moeLayers = all;
      presetOptions = { k, swigluLimit: numberSetting(c, family, file, ['swiglu_limit']) };
      if (c.swiglu_alpha !== undefined && c.swiglu_alpha !== null) alpha = numberSetting(c, family, file, ['swiglu_alpha']);
      break;
    }
  }
  return { configPath: file, family, hidden, layers, experts, k, intermediate, sharedIntermediate, presetOptions, alpha, moeLayers };
}

function checkGroups(file: string, experts: number, k: number, nGroup: number, topkGroup: number): void {
  if (experts % nGroup !== 0) throw configError(file, `n_group = ${nGroup} does not divide the ${experts} experts`);
  if (topkGroup > nGroup) throw configError(file, `topk_group = ${topkGroup} is more than n_group = ${nGroup}`);
  if (k > (experts / nGroup) * topkGroup) throw configError(file, `num_experts_per_tok = ${k} is more than the ${(experts / nGroup) * topkGroup} experts of the topk_group = ${topkGroup} kept groups`);
}

/** Where MoELayerWeights puts a tensor. */
type Role =
  | 'router' | 'routerBias' | 'correctionBias' | 'gate' | 'up' | 'gateUp' | 'gateUpBias' | 'down' | 'downBias'
  | 'shared.gate' | 'shared.up' | 'shared.down' | 'shared.outputGate';

/** One weight of a layer: its tensor name(s) (one per expert when stacked) and the shape of each. */
interface Slot {
  role: Role;
  names: string[];
  /** Shape of each named tensor (stacked: the shape of one expert's). */
  shape: number[];
  stacked: boolean;
  /** Absent is allowed (DeepSeek-V3's correction bias). */
  optional?: boolean;
  /** Read in the dtype this other role was read in (the layer wants the pair to agree). */
  dtypeOf?: Role;
  /** Read in this dtype whatever the options say. */
  fixedDtype?: DType;
}

const SWIGLU_NAMES: Record<string, [string, string, string]> = {
  mixtral: ['w1', 'w3', 'w2'],
  hf: ['gate_proj', 'up_proj', 'down_proj'],
};

/** The tensors of MoE layer `layer`, in Hub naming. */
function layerSlots(cfg: ModelConfig, cp: Checkpoint, layer: number): Slot[] {
  const { family, hidden: H, intermediate: I, experts: E } = cfg;
  const base = `model.layers.${layer}`;
  const range = Array.from({ length: E }, (_, e) => e);
  if (family === 'gpt_oss') {
    const p = `${base}.mlp`;
    if (cp.has(`${p}.experts.gate_up_proj_blocks`))
      throw new MoekitError(`${cp.dir}: tensor "${p}.experts.gate_up_proj_blocks" is MXFP4-quantized; moekit reads bf16 gpt-oss checkpoints (dequantize first)`, 'ERR_UNSUPPORTED');
    return [
      { role: 'router', names: [`${p}.router.weight`], shape: [E, H], stacked: false },
      { role: 'routerBias', names: [`${p}.router.bias`], shape: [E], stacked: false, dtypeOf: 'router' },
      { role: 'gateUp', names: [`${p}.experts.gate_up_proj`], shape: [E, H, 2 * I], stacked: false },
      { role: 'gateUpBias', names: [`${p}.experts.gate_up_proj_bias`], shape: [E, 2 * I], stacked: false, dtypeOf: 'gateUp' },
      { role: 'down', names: [`${p}.experts.down_proj`], shape: [E, I, H], stacked: false },
      { role: 'downBias', names: [`${p}.experts.down_proj_bias`], shape: [E, H], stacked: false, dtypeOf: 'down' },
    ];
  }
  // NOTE: newer transformers name Mixtral's block `mlp`; Hub checkpoints use block_sparse_moe.
  const p = family === 'mixtral' && !cp.has(`${base}.block_sparse_moe.gate.weight`) && cp.has(`${base}.mlp.gate.weight`) ? `${base}.mlp` : family === 'mixtral' ? `${base}.block_sparse_moe` : `${base}.mlp`;
  const slots: Slot[] = [{ role: 'router', names: [`${p}.gate.weight`], shape: [E, H], stacked: false }];
  if (family === 'deepseek_v3')
    slots.push({ role: 'correctionBias', names: [`${p}.gate.e_score_correction_bias`], shape: [E], stacked: false, optional: true, fixedDtype: 'f32' });
  if (cp.has(`${p}.experts.gate_up_proj`)) {
    slots.push(
      { role: 'gateUp', names: [`${p}.experts.gate_up_proj`], shape: [E, 2 * I, H], stacked: false },
      { role: 'down', names: [`${p}.experts.down_proj`], shape: [E, H, I], stacked: false },
    );
  } else {
    const [g, u, d] = SWIGLU_NAMES[family === 'mixtral' ? 'mixtral' : 'hf'];
    slots.push(
      { role: 'gate', names: range.map((e) => `${p}.experts.${e}.${g}.weight`), shape: [I, H], stacked: true },
      { role: 'up', names: range.map((e) => `${p}.experts.${e}.${u}.weight`), shape: [I, H], stacked: true, dtypeOf: 'gate' },
      { role: 'down', names: range.map((e) => `${p}.experts.${e}.${d}.weight`), shape: [H, I], stacked: true },
    );
  }
  const Is = cfg.sharedIntermediate;
  if (Is > 0) {
    const s = family === 'qwen2_moe' ? `${p}.shared_expert` : `${p}.shared_experts`;
    slots.push(
      { role: 'shared.gate', names: [`${s}.gate_proj.weight`], shape: [Is, H], stacked: false },
      { role: 'shared.up', names: [`${s}.up_proj.weight`], shape: [Is, H], stacked: false, dtypeOf: 'shared.gate' },
      { role: 'shared.down', names: [`${s}.down_proj.weight`], shape: [H, Is], stacked: false },
    );
    if (family === 'qwen2_moe') slots.push({ role: 'shared.outputGate', names: [`${p}.shared_expert_gate.weight`], shape: [1, H], stacked: false });
  }
  return slots;
}

const READABLE: Record<string, DType> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };

/** The files a missing tensor was looked for in, for messages. */
function searchedFiles(cp: Checkpoint): string {
  const index = path.join(cp.dir, 'model.safetensors.index.json');
  if (fs.existsSync(index)) return index;
  return [...new Set(cp.weightMap.values())].map((f) => path.join(cp.dir, f)).join(', ');
}

/**
 * Checks every tensor of a slot list against the checkpoint: present, a readable dtype,
 * the shape config.json implies. Returns the entries (undefined for an absent optional one).
 */
function checkSlots(cfg: ModelConfig, cp: Checkpoint, layer: number, slots: Slot[]): (TensorEntry[] | undefined)[] {
  return slots.map((slot) => {
    if (slot.optional && !slot.names.every((n) => cp.has(n))) return undefined;
    return slot.names.map((name) => {
      if (!cp.has(name))
        throw new MoekitError(`${cp.dir}: tensor ${JSON.stringify(name)} of ${cfg.family} MoE layer ${layer} is missing (looked in ${searchedFiles(cp)})`, 'ERR_CHECKPOINT');
      const e = cp.entry(name);
      if (READABLE[e.dtype] === undefined)
        throw new MoekitError(`${e.file}: tensor ${JSON.stringify(name)} has dtype ${e.dtype}; moekit reads F32, F16 and BF16`, 'ERR_UNSUPPORTED');
      if (e.shape.join() !== slot.shape.join())
        throw new MoekitError(
          `${e.file}: tensor ${JSON.stringify(name)} has shape [${e.shape.join(', ')}] but ${cfg.configPath} implies [${slot.shape.join(', ')}] ` +
            `(hidden ${cfg.hidden}, intermediate ${cfg.intermediate}, experts ${cfg.experts}${cfg.sharedIntermediate ? `, shared intermediate ${cfg.sharedIntermediate}` : ''})`,
          'ERR_CHECKPOINT',
        );
      return e;
    });
  });
}

function infoOf(cfg: ModelConfig, layer: number, expertDtype: DType): MoELayerInfo {
  return {
    layer,
    family: cfg.family,
    hidden: cfg.hidden,
    intermediate: cfg.intermediate,
    experts: cfg.experts,
    k: cfg.k,
    sharedIntermediate: cfg.sharedIntermediate,
    dtype: expertDtype,
    preset: preset(cfg.family, cfg.presetOptions),
  };
}

function checkDir(dir: unknown): string {
  if (typeof dir !== 'string' || dir === '') throw typeError('dir', 'a checkpoint directory path string', dir);
  return dir;
}

/**
 * The MoE layers of a Hugging Face checkpoint directory (config.json + safetensors), with
 * their shapes and routing preset. Every tensor of every listed layer is checked against
 * the headers (present, F32/F16/BF16, the shape config.json implies); nothing is read.
 * Throws MoekitError ERR_CHECKPOINT (bad or missing content, naming file and tensor) or
 * ERR_UNSUPPORTED (unknown model_type, quantized or non-float weights).
 */
export function listMoELayers(dir: string): MoELayerInfo[] {
  const d = checkDir(dir);
  const cfg = readModelConfig(d);
  const cp = Checkpoint.open(d);
  return cfg.moeLayers.map((layer) => {
    const slots = layerSlots(cfg, cp, layer);
    const entries = checkSlots(cfg, cp, layer, slots);
    const expert = entries[slots.findIndex((s) => s.role === 'gate' || s.role === 'gateUp')] as TensorEntry[];
    return infoOf(cfg, layer, READABLE[expert[0].dtype]);
  });
}

/**
 * Loads MoE layer `options.layer` of a Hugging Face checkpoint directory into a new
 * {@link MoELayer} that owns its weights (per-expert tensors are stacked into [E, …] as
 * they are read). Non-MoE layer → RangeError naming `options.layer` and listing the MoE
 * layers; see {@link listMoELayers} for the checkpoint errors.
 */
export async function loadMoELayer(dir: string, options: PretrainedOptions): Promise<MoELayer> {
  const d = checkDir(dir);
  if (options === undefined) throw typeError('options', 'an options object with a layer index', options);
  const o = checkOptions<PretrainedOptions>('options', options);
  const layer = checkInteger('options.layer', o.layer, 0);
  const dtype = o.dtype === undefined ? undefined : checkOneOf('options.dtype', o.dtype, FLOAT_DTYPES);
  // NOTE: checked before reading any weight (an unusable CUDA device fails here).
  if (o.device !== undefined && o.device !== 'auto') resolveDevice(o.device, 'options.device');
  const cfg = readModelConfig(d);
  if (!cfg.moeLayers.includes(layer))
    throw rangeError('options.layer', `one of the MoE layers of ${cfg.configPath} (${describeLayers(cfg)})`, layer);
  const cp = Checkpoint.open(d);
  const slots = layerSlots(cfg, cp, layer);
  const entries = checkSlots(cfg, cp, layer, slots);

  const read = new Map<Role, Tensor>();
  try {
    for (let i = 0; i < slots.length; i++) {
      const slot = slots[i];
      const es = entries[i];
      if (es === undefined) continue;
      const want = slot.fixedDtype ?? dtype ?? (slot.dtypeOf !== undefined ? read.get(slot.dtypeOf)?.dtype : undefined);
      const opts = want === undefined ? {} : { dtype: want };
      read.set(slot.role, slot.stacked ? await cp.readStacked(slot.names, opts) : await cp.read(slot.names[0], opts));
    }
    const w = (r: Role) => read.get(r);
    const weights: MoELayerWeights = {
      router: w('router') as Tensor,
      down: w('down') as Tensor,
      ...(w('routerBias') ? { routerBias: w('routerBias') } : {}),
      ...(w('correctionBias') ? { correctionBias: w('correctionBias') } : {}),
      ...(w('gateUp') ? { gateUp: w('gateUp') } : { gate: w('gate'), up: w('up') }),
      ...(w('gateUpBias') ? { gateUpBias: w('gateUpBias') } : {}),
      ...(w('downBias') ? { downBias: w('downBias') } : {}),
      ...(w('shared.gate')
        ? {
            shared: {
              gate: w('shared.gate'),
              up: w('shared.up'),
              down: w('shared.down') as Tensor,
              ...(w('shared.outputGate') ? { outputGate: w('shared.outputGate') } : {}),
            },
          }
        : {}),
    };
    const p = preset(cfg.family, cfg.presetOptions);
    return new MoELayer(
      {
        hidden: cfg.hidden,
        intermediate: cfg.intermediate,
        experts: cfg.experts,
        sharedIntermediate: cfg.sharedIntermediate,
        routing: p.routing,
        activation: p.activation,
        layoutIn: p.layoutIn,
        layoutOut: p.layoutOut,
        ...(cfg.alpha !== undefined ? { alpha: cfg.alpha } : p.alpha !== undefined ? { alpha: p.alpha } : {}),
        ...(p.limit !== undefined ? { limit: p.limit } : {}),
      },
      weights,
      { ...(o.device !== undefined ? { device: o.device } : {}), ownsWeights: true },
    );
  } catch (err) {
    for (const t of read.values()) t.dispose();
    throw err;
  }
}

function describeLayers(cfg: ModelConfig): string {
  if (cfg.moeLayers.length === 0) return `it has none among its ${cfg.layers} layers`;
  return `${compactRanges(cfg.moeLayers)} of ${cfg.layers} layers`;
}

/** [1, 2, 3, 5] → "1-3, 5". */
function compactRanges(list: number[]): string {
  const parts: string[] = [];
  for (let i = 0; i < list.length; ) {
    let j = i;
    while (j + 1 < list.length && list[j + 1] === list[j] + 1) j++;
    parts.push(j > i ? `${list[i]}-${list[j]}` : `${list[i]}`);
    i = j + 1;
  }
  return parts.join(', ');
}
