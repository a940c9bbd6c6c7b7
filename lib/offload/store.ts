/**
 * ExpertStore: the routed experts of a model in host memory, per (layer, expert), with
 * the byte ranges of each of its weights. Either memory-mapped from a checkpoint's
 * safetensors files (read-only; nothing is read until an expert is copied) or built
 * from host tensors. Copies into device slots go through native `copyRanges`: on the
 * host straight from the mapping, on a GPU through the bounded pool of pinned staging
 * buffers (kernels/cuda/host_pinned.h, at most 256 MiB pinned).
 *
 * Layers are numbered by their position among the model's MoE layers (0 … layers-1);
 * `decoderLayers[i]` is the checkpoint's decoder layer index of MoE layer i.
 */
import { DType, dtypeSize } from '../dtype';
import { MoekitError, checkInteger, checkOptions, rangeError, typeError } from '../errors';
import { native } from '../native';
import { listMoELayers, MoELayerInfo } from '../pretrained';
import { Checkpoint, TensorEntry } from '../safetensors';
import { Tensor, checkTensor, describeTensor } from '../tensor';

/** The weights an expert may have, in the roles MoELayerWeights gives them. */
export type ExpertRole = 'gate' | 'up' | 'gateUp' | 'down' | 'gateUpBias' | 'upBias' | 'downBias';
/** Roles in a fixed order (slot tensors and copies follow it). */
export const EXPERT_ROLES: readonly ExpertRole[] = ['gate', 'up', 'gateUp', 'down', 'gateUpBias', 'upBias', 'downBias'];

/** One weight of one expert: the same for every expert of every layer of a store. */
export interface ExpertWeightSpec {
  role: ExpertRole;
  dtype: DType;
  /** Shape of one expert's slice (e.g. [I, H] for a gate). */
  shape: number[];
  /** Bytes of one expert's slice. */
  bytes: number;
}

/** Where one expert's weight lives in host memory. */
export interface ExpertWeightLocation extends ExpertWeightSpec {
  /** The safetensors file (mapped stores). */
  file?: string;
  /** Tensor name in the checkpoint (mapped stores). */
  tensor?: string;
  /** Byte offset in the file (mapped) or in the stacked host tensor (tensor stores). */
  offset: number;
}

/** Host tensors of one layer's routed experts, stacked [E, …] as MoELayerWeights has them. */
export interface ExpertTensors {
  gate?: Tensor;
  up?: Tensor;
  gateUp?: Tensor;
  down: Tensor;
  gateUpBias?: Tensor;
  upBias?: Tensor;
  downBias?: Tensor;
}

/** A copy destination: a tensor and a byte offset in it. */
export interface SlotTarget {
  tensor: Tensor;
  offset: number;
}

/** Where one role's slices live, per expert. */
interface Source {
  /** Tensor stores: the stacked host tensor. */
  tensor?: Tensor;
  /** Mapped stores: index of each expert's mapping. */
  mapping?: Int32Array;
  /** Byte offset of each expert's slice (in its file, or in the tensor). */
  offsets: Float64Array;
  /** Mapped stores: file and tensor name of each expert's slice. */
  files?: string[];
  names?: string[];
}

interface RawMapping {
  handle: unknown;
  bytes: number;
}

const READABLE: Record<string, DType> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };

function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** The routed experts of a model in host memory. */
export class ExpertStore {
  /** MoE layers held. */
  readonly layers: number;
  /** Routed experts per layer. */
  readonly experts: number;
  /** The weights of every expert (the same in every layer). */
  readonly specs: readonly ExpertWeightSpec[];
  /** Bytes of one expert (all its weights). */
  readonly expertBytes: number;
  /** 'mapped' (memory-mapped checkpoint) or 'tensors' (host tensors). */
  readonly kind: 'mapped' | 'tensors';
  /** Checkpoint decoder layer of each MoE layer (mapped stores; 0 … layers-1 otherwise). */
  readonly decoderLayers: readonly number[];
  private sources: Map<ExpertRole, Source>[] | undefined;
  private mappings: RawMapping[];
  private readonly owned: Tensor[];

  private constructor(kind: 'mapped' | 'tensors', experts: number, specs: ExpertWeightSpec[], sources: Map<ExpertRole, Source>[], mappings: RawMapping[], owned: Tensor[], decoderLayers: number[]) {
    this.kind = kind;
    this.layers = sources.length;
    this.experts = experts;
    this.specs = Object.freeze(specs.map((s) => Object.freeze({ ...s, shape: [...s.shape] })));
    this.expertBytes = specs.reduce((a, s) => a + s.bytes, 0);
    this.sources = sources;
    this.mappings = mappings;
    this.owned = owned;
    this.decoderLayers = Object.freeze([...decoderLayers]);
  }

  /**
   * Maps the routed experts of a Hugging Face checkpoint directory (see
   * MoELayer.fromPretrained for the families). `options.layers`: decoder layer indices
   * to hold (default: every MoE layer). Every tensor is checked against the headers
   * first (listMoELayers); the shards are then mapped read-only. Errors name the file
   * and tensor (ERR_CHECKPOINT / ERR_UNSUPPORTED / ERR_IO).
   */
  static fromPretrained(dir: string, options: { layers?: number[] } = {}): ExpertStore {
    if (typeof dir !== 'string' || dir === '') throw typeError('dir', 'a checkpoint directory path string', dir);
    const o = checkOptions<{ layers?: number[] }>('options', options);
    const infos = listMoELayers(dir);
    const chosen = selectLayers(infos, o.layers, 'options.layers');
    const cp = Checkpoint.open(dir);
    const mapIndex = new Map<string, number>();
    const mappings: RawMapping[] = [];
    const mapOf = (file: string): number => {
      let i = mapIndex.get(file);
      if (i === undefined) {
        const m = (native().mapFile as (p: string) => RawMapping)(file);
        i = mappings.length;
        mappings.push(m);
        mapIndex.set(file, i);
      }
      return i;
    };
    let specs: ExpertWeightSpec[] | undefined;
    const sources: Map<ExpertRole, Source>[] = [];
    try {
      for (const info of chosen) {
        const roles = expertTensorNames(info, cp);
        const layerSpecs: ExpertWeightSpec[] = [];
        const layerSources = new Map<ExpertRole, Source>();
        for (const r of roles) {
          const entries = r.names.map((n) => cp.entry(n));
          const first = entries[0];
          for (const e of entries) {
            if (READABLE[e.dtype] === undefined)
              throw new MoekitError(`${e.file}: tensor ${JSON.stringify(e.name)} has dtype ${e.dtype}; moekit reads F32, F16 and BF16`, 'ERR_UNSUPPORTED');
            if (e.dtype !== first.dtype) throw mixedDtypes(e, first);
          }
          const dtype = READABLE[first.dtype];
          const shape = r.stacked ? first.shape.slice() : first.shape.slice(1);
          const bytes = numel(shape) * dtypeSize(dtype);
          layerSpecs.push({ role: r.role, dtype, shape, bytes });
          const E = info.experts;
          const so: Source = { offsets: new Float64Array(E), mapping: new Int32Array(E), files: [], names: [] };
          for (let e = 0; e < E; e++) {
            const entry = r.stacked ? entries[e] : first;
            so.offsets[e] = r.stacked ? entry.begin : entry.begin + e * bytes;
            (so.mapping as Int32Array)[e] = mapOf(entry.file);
            (so.files as string[]).push(entry.file);
            (so.names as string[]).push(entry.name);
          }
          layerSources.set(r.role, so);
        }
        // The dtype pairs MoELayer needs to agree (it converts; a store copies bytes).
        const dt = (role: ExpertRole) => layerSpecs.find((s) => s.role === role)?.dtype;
        for (const [a, b] of [['up', 'gate'], ['gateUpBias', 'gateUp'], ['downBias', 'down']] as const)
          if (dt(a) !== undefined && dt(b) !== undefined && dt(a) !== dt(b)) {
            const name = roles.find((r) => r.role === a)!.names[0];
            const other = roles.find((r) => r.role === b)!.names[0];
            throw new MoekitError(`${cp.entry(name).file}: tensor ${JSON.stringify(name)} is ${cp.entry(name).dtype} but ${JSON.stringify(other)} is ${cp.entry(other).dtype}; an expert store copies bytes and needs them to agree`, 'ERR_UNSUPPORTED');
          }
        if (specs === undefined) specs = layerSpecs;
        else if (!sameSpecs(specs, layerSpecs))
          throw new MoekitError(`${dir}: MoE layer ${info.layer} has expert weights of other dtypes or shapes than MoE layer ${chosen[0].layer}; one store needs them equal`, 'ERR_UNSUPPORTED');
        sources.push(layerSources);
      }
    } catch (err) {
      for (const m of mappings) (native().unmapFile as (h: unknown) => void)(m.handle);
      throw err;
    }
    return new ExpertStore('mapped', chosen[0].experts, specs as ExpertWeightSpec[], sources, mappings, [], chosen.map((i) => i.layer));
  }

  /**
   * A store over host tensors, one {@link ExpertTensors} per layer, stacked [E, …] as
   * MoELayerWeights has them (same roles, dtypes and shapes in every layer). The store
   * keeps references; with `ownsTensors` it disposes them with itself.
   */
  static fromTensors(layers: ExpertTensors[], options: { ownsTensors?: boolean } = {}): ExpertStore {
    if (!Array.isArray(layers) || layers.length === 0) throw typeError('layers', 'a non-empty array of expert tensors per layer', layers);
    const o = checkOptions<{ ownsTensors?: boolean }>('options', options);
    let specs: ExpertWeightSpec[] | undefined;
    let experts = 0;
    const sources: Map<ExpertRole, Source>[] = [];
    layers.forEach((l, i) => {
      const lt = checkOptions<ExpertTensors>(`layers[${i}]`, l) as ExpertTensors;
      const layerSpecs: ExpertWeightSpec[] = [];
      const src = new Map<ExpertRole, Source>();
      for (const role of EXPERT_ROLES) {
        const t = lt[role];
        if (t === undefined) continue;
        const name = `layers[${i}].${role}`;
        checkTensor(name, t);
        if (t.device.kind !== 'cpu') throw rangeError(name, 'a host tensor', t.toString());
        if (t.shape.length < 2 || !['f32', 'f16', 'bf16'].includes(t.dtype)) throw rangeError(name, 'a f32, f16 or bf16 tensor [experts, …]', describeTensor(t));
        if (experts === 0) experts = t.shape[0];
        if (t.shape[0] !== experts) throw rangeError(name, `${experts} experts in dimension 0`, describeTensor(t));
        const shape = t.shape.slice(1);
        const bytes = numel(shape) * dtypeSize(t.dtype);
        layerSpecs.push({ role, dtype: t.dtype, shape, bytes });
        src.set(role, { tensor: t, offsets: Float64Array.from({ length: t.shape[0] }, (_, e) => e * bytes) });
      }
      if (lt.down === undefined) throw typeError(`layers[${i}].down`, 'a Tensor', undefined);
      if (lt.gateUp === undefined && lt.gate === undefined) throw typeError(`layers[${i}].gateUp`, 'a Tensor (or gate + up)', undefined);
      if (specs === undefined) specs = layerSpecs;
      else if (!sameSpecs(specs, layerSpecs)) throw rangeError(`layers[${i}]`, 'the same weights, dtypes and shapes as layers[0]', l);
      sources.push(src);
    });
    const owned = o.ownsTensors ? layers.flatMap((l) => EXPERT_ROLES.map((r) => l[r]).filter((t): t is Tensor => t !== undefined)) : [];
    return new ExpertStore('tensors', experts, specs as ExpertWeightSpec[], sources, [], owned, layers.map((_, i) => i));
  }

  /** True once dispose() has run. */
  get disposed(): boolean {
    return this.sources === undefined;
  }

  /** Releases the mappings (and owned tensors). Copies in flight finish normally. */
  dispose(): void {
    if (this.sources === undefined) return;
    for (const m of this.mappings) (native().unmapFile as (h: unknown) => void)(m.handle);
    this.mappings = [];
    for (const t of this.owned) t.dispose();
    this.sources = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** The spec of `role`, or undefined when experts have no such weight. */
  spec(role: ExpertRole): ExpertWeightSpec | undefined {
    return this.specs.find((s) => s.role === role);
  }

  private live(): Map<ExpertRole, Source>[] {
    if (this.sources === undefined) throw new MoekitError('the expert store has been disposed', 'ERR_DISPOSED');
    return this.sources;
  }

  private check(layer: number, expert: number): void {
    checkInteger('layer', layer, 0, this.layers - 1);
    checkInteger('expert', expert, 0, this.experts - 1);
  }

  /** Where each weight of `expert` of `layer` lives (file and offset, or tensor offset). */
  locate(layer: number, expert: number): ExpertWeightLocation[] {
    const src = this.live();
    this.check(layer, expert);
    return this.specs.map((s) => {
      const so = src[layer].get(s.role) as Source;
      const loc: ExpertWeightLocation = { ...s, shape: [...s.shape], offset: so.offsets[expert] };
      if (so.files !== undefined) {
        loc.file = so.files[expert];
        loc.tensor = (so.names as string[])[expert];
      }
      return loc;
    });
  }

  /**
   * Copies every weight of `expert` of `layer` into `targets` (one per spec, in spec
   * order: a tensor and a byte offset). Resolves to the ms the copy took natively.
   * @internal used by the device cache.
   */
  copyExpert(layer: number, expert: number, targets: SlotTarget[]): Promise<number> {
    const src = this.live();
    this.check(layer, expert);
    if (targets.length !== this.specs.length) throw rangeError('targets', `${this.specs.length} targets`, targets);
    const parts = this.specs.map((s, i) => {
      const so = src[layer].get(s.role) as Source;
      const t = targets[i];
      const offset = so.offsets[expert];
      if (t.offset < 0 || t.offset + s.bytes > t.tensor.byteLength) throw rangeError(`targets[${i}].offset`, `a slice of ${s.bytes} bytes inside the target`, t.offset);
      if (so.tensor !== undefined) return { dst: t.tensor.raw, dstOffset: t.offset, bytes: s.bytes, src: so.tensor.raw, srcOffset: offset };
      const m = this.mappings[(so.mapping as Int32Array)[expert]];
      return { dst: t.tensor.raw, dstOffset: t.offset, bytes: s.bytes, mapping: m.handle, srcOffset: offset };
    });
    return (native().copyRanges as (p: object[]) => Promise<number>)(parts);
  }
}

/** Copies byte ranges between tensors (device to device, or host to device). @internal */
export function copyTensorRanges(parts: { dst: Tensor; dstOffset: number; src: Tensor; srcOffset: number; bytes: number }[]): Promise<number> {
  return (native().copyRanges as (p: object[]) => Promise<number>)(
    parts.map((p) => ({ dst: p.dst.raw, dstOffset: p.dstOffset, src: p.src.raw, srcOffset: p.srcOffset, bytes: p.bytes })),
  );
}

function sameSpecs(a: ExpertWeightSpec[], b: ExpertWeightSpec[]): boolean {
  return a.length === b.length && a.every((s, i) => s.role === b[i].role && s.dtype === b[i].dtype && s.shape.join() === b[i].shape.join());
}

function mixedDtypes(e: TensorEntry, first: TensorEntry): MoekitError {
  return new MoekitError(`${e.file}: tensor ${JSON.stringify(e.name)} is ${e.dtype} but ${JSON.stringify(first.name)} is ${first.dtype}; an expert store needs every expert in one dtype`, 'ERR_UNSUPPORTED');
}

/** The MoE layers to hold: all, or the decoder layers listed (each must be a MoE layer). */
export function selectLayers(infos: MoELayerInfo[], layers: unknown, name: string): MoELayerInfo[] {
  if (layers === undefined) return infos;
  if (!Array.isArray(layers) || layers.length === 0) throw typeError(name, 'a non-empty array of MoE decoder layer indices', layers);
  const moe = infos.map((i) => i.layer);
  return layers.map((l, i) => {
    const v = checkInteger(`${name}[${i}]`, l, 0);
    const info = infos.find((x) => x.layer === v);
    if (info === undefined) throw rangeError(`${name}[${i}]`, `one of the MoE layers (${moe.join(', ')})`, v);
    if (layers.indexOf(l) !== i) throw rangeError(`${name}[${i}]`, 'distinct layer indices', v);
    return info;
  });
}

/**
 * Hub names of the routed-expert tensors of one MoE layer (the same naming as
 * lib/pretrained.ts, which reads them stacked; here each expert is a byte range).
 * `stacked`: one tensor per expert (names[e]); else one [E, …] tensor (names[0]).
 */
export function expertTensorNames(info: MoELayerInfo, cp: Checkpoint): { role: ExpertRole; names: string[]; stacked: boolean }[] {
  const base = `model.layers.${info.layer}`;
  const E = info.experts;
  if (info.family === 'gpt_oss') {
    const p = `${base}.mlp.experts`;
    return [
      { role: 'gateUp', names: [`${p}.gate_up_proj`], stacked: false },
      { role: 'down', names: [`${p}.down_proj`], stacked: false },
      { role: 'gateUpBias', names: [`${p}.gate_up_proj_bias`], stacked: false },
      { role: 'downBias', names: [`${p}.down_proj_bias`], stacked: false },
    ].sort((a, b) => EXPERT_ROLES.indexOf(a.role as ExpertRole) - EXPERT_ROLES.indexOf(b.role as ExpertRole)) as { role: ExpertRole; names: string[]; stacked: boolean }[];
  }
  const p = blockPrefix(info, cp);
  if (cp.has(`${p}.experts.gate_up_proj`))
    return [
      { role: 'gateUp', names: [`${p}.experts.gate_up_proj`], stacked: false },
      { role: 'down', names: [`${p}.experts.down_proj`], stacked: false },
    ];
  const [g, u, d] = info.family === 'mixtral' ? ['w1', 'w3', 'w2'] : ['gate_proj', 'up_proj', 'down_proj'];
  const range = Array.from({ length: E }, (_, e) => e);
  return [
    { role: 'gate', names: range.map((e) => `${p}.experts.${e}.${g}.weight`), stacked: true },
    { role: 'up', names: range.map((e) => `${p}.experts.${e}.${u}.weight`), stacked: true },
    { role: 'down', names: range.map((e) => `${p}.experts.${e}.${d}.weight`), stacked: true },
  ];
}

/** The MoE block's tensor prefix (`model.layers.N.mlp` or Mixtral's `block_sparse_moe`). */
export function blockPrefix(info: MoELayerInfo, cp: Checkpoint): string {
  const base = `model.layers.${info.layer}`;
  if (info.family === 'gpt_oss') return `${base}.mlp`;
  // NOTE: newer transformers name Mixtral's block `mlp`; Hub checkpoints use block_sparse_moe.
  if (info.family === 'mixtral') return !cp.has(`${base}.block_sparse_moe.gate.weight`) && cp.has(`${base}.mlp.gate.weight`) ? `${base}.mlp` : `${base}.block_sparse_moe`;
  return `${base}.mlp`;
}

