/**
 * The layer shapes `moekit bench` runs: the named presets of the benchmark issue and
 * custom shapes, each with its family's routing math.
 */
import type { Family, PresetOptions } from '../presets';

/** One benchmarked layer shape. */
export interface BenchShape {
  /** Preset name ('custom' for a custom shape). */
  name: string;
  family: Family;
  hidden: number;
  intermediate: number;
  experts: number;
  k: number;
  /** Intermediate size of the shared expert(s) together; 0 for none. */
  sharedIntermediate: number;
  presetOptions: PresetOptions;
  /** The layer takes a DeepSeek-V3 e_score_correction_bias [E] f32. */
  correctionBias: boolean;
  /** How the shape differs from the named model (a shrunk expert count, ungrouped routing). */
  notes: string[];
}

interface PresetSpec {
  family: Family;
  hidden: number;
  intermediate: number;
  experts: number;
  k: number;
  sharedIntermediate: number;
  nGroup?: number;
  topkGroup?: number;
  routedScalingFactor?: number;
  correctionBias?: boolean;
}

/** The named presets (Hugging Face config values). */
export const BENCH_PRESETS: Readonly<Record<string, PresetSpec>> = Object.freeze({
  'mixtral-8x7b': { family: 'mixtral', hidden: 4096, intermediate: 14336, experts: 8, k: 2, sharedIntermediate: 0 },
  'qwen3-30b-a3b': { family: 'qwen3_moe', hidden: 2048, intermediate: 768, experts: 128, k: 8, sharedIntermediate: 0 },
  'olmoe-1b-7b': { family: 'olmoe', hidden: 2048, intermediate: 1024, experts: 64, k: 8, sharedIntermediate: 0 },
  // One shared expert of moe_intermediate_size; grouped sigmoid routing with correction bias.
  'deepseek-v3': {
    family: 'deepseek_v3',
    hidden: 7168,
    intermediate: 2048,
    experts: 256,
    k: 8,
    sharedIntermediate: 2048,
    nGroup: 8,
    topkGroup: 4,
    routedScalingFactor: 2.5,
    correctionBias: true,
  },
});

export const PRESET_NAMES: readonly string[] = Object.keys(BENCH_PRESETS);

/** Custom shape flags (`--preset custom`). */
export interface CustomShape {
  hidden: number;
  intermediate: number;
  experts: number;
  k: number;
  sharedIntermediate: number;
}

/**
 * The shape of preset `name`, with the expert count replaced by `experts` when given
 * (smoke runs). k is capped at the expert count; DeepSeek-V3's groups are kept when 8
 * still divides the expert count and 4 groups still hold k experts, else routing is
 * ungrouped (said in `notes`). `custom` takes its sizes from `custom` with Mixtral's
 * routing (softmax top-k, renormalised).
 */
export function benchShape(name: string, experts: number | undefined, custom: CustomShape | undefined): BenchShape {
  if (name === 'custom') {
    if (custom === undefined) throw new Error('unreachable: custom shape without its sizes');
    const E = experts ?? custom.experts;
    return {
      name,
      family: 'mixtral',
      hidden: custom.hidden,
      intermediate: custom.intermediate,
      experts: E,
      k: Math.min(custom.k, E),
      sharedIntermediate: custom.sharedIntermediate,
      presetOptions: { k: Math.min(custom.k, E) },
      correctionBias: false,
      notes: custom.k > E ? [`k capped at ${E} experts`] : [],
    };
  }
  const p = BENCH_PRESETS[name];
  if (p === undefined) throw new Error(`unreachable: unknown preset ${name}`);
  const E = experts ?? p.experts;
  const k = Math.min(p.k, E);
  const notes: string[] = [];
  if (E !== p.experts) notes.push(`experts shrunk from ${p.experts} to ${E} (--experts)`);
  if (k !== p.k) notes.push(`k capped at ${E} experts`);
  const presetOptions: PresetOptions = { k };
  if (p.routedScalingFactor !== undefined) presetOptions.routedScalingFactor = p.routedScalingFactor;
  if (p.nGroup !== undefined && p.topkGroup !== undefined) {
    if (E % p.nGroup === 0 && (p.topkGroup * E) / p.nGroup >= k) {
      presetOptions.nGroup = p.nGroup;
      presetOptions.topkGroup = p.topkGroup;
    } else {
      notes.push(`routing ungrouped: ${p.nGroup} groups (keeping ${p.topkGroup}) do not fit ${E} experts with k ${k}`);
    }
  }
  return {
    name,
    family: p.family,
    hidden: p.hidden,
    intermediate: p.intermediate,
    experts: E,
    k,
    sharedIntermediate: p.sharedIntermediate,
    presetOptions,
    correctionBias: p.correctionBias === true,
    notes,
  };
}
