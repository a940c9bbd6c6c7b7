/**
 * Routing traces: which experts each token used at each MoE layer.
 *
 * File format (the one of ../shared/traces): `NAME.u8` holds raw uint8 expert ids,
 * row-major `[token, layer, k]`, in the router's top-k order; `NAME.json` beside it gives
 * `shape` ([tokens, layers, k]), `experts_per_layer`, `top_k`, optionally `layers` (the
 * model's layer indices, one per trace layer) and `sequences` (offsets: sequence i is
 * tokens `sequences[i]` to `sequences[i+1]`; default one sequence).
 */
import * as fs from 'fs';
import { checkInteger, MoekitError, rangeError, typeError } from '../errors';

/** A routing trace in memory. */
export interface RoutingTrace {
  /** Expert ids, `[tokens, layers, topK]` row-major. */
  ids: Uint8Array;
  tokens: number;
  layers: number;
  topK: number;
  expertsPerLayer: number;
  /** Sequence offsets: `sequences[0] = 0`, last = `tokens`, non-decreasing. */
  sequences: number[];
  /** The model's layer index of each trace layer (default 0..layers-1). */
  layerIds: number[];
  /** Where it was read from, for messages. */
  source?: string;
}

/** Paths of a trace given as `NAME`, `NAME.u8` or `NAME.json`. */
export function tracePaths(file: string): { u8: string; json: string } {
  const stem = file.endsWith('.u8') ? file.slice(0, -3) : file.endsWith('.json') ? file.slice(0, -5) : file;
  return { u8: `${stem}.u8`, json: `${stem}.json` };
}

function bad(file: string, what: string): MoekitError {
  return new MoekitError(`${file}: ${what}`, 'ERR_INVALID_ARGUMENT');
}

function readFile(path: string, what: string): Buffer {
  try {
    return fs.readFileSync(path);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new MoekitError(`${path}: cannot read the trace's ${what} (${err.code ?? err.message})`, 'ERR_IO');
  }
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0;
}

/**
 * Reads a trace (`file` is `NAME`, `NAME.u8` or `NAME.json`) and validates it: shape
 * against the file size, every id below `experts_per_layer`, distinct ids within a step,
 * sequence offsets. Throws MoekitError `ERR_IO` (missing/unreadable file) or
 * `ERR_INVALID_ARGUMENT` (malformed), naming the file.
 */
export function readTrace(file: string): RoutingTrace {
  if (typeof file !== 'string' || file === '') throw typeError('file', 'a trace path', file);
  const { u8, json } = tracePaths(file);
  const metaText = readFile(json, 'metadata').toString('utf8');
  let meta: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(metaText);
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not a JSON object');
    meta = parsed as Record<string, unknown>;
  } catch (e) {
    throw bad(json, `not valid trace metadata (${(e as Error).message})`);
  }
  const shape = meta.shape;
  if (!Array.isArray(shape) || shape.length !== 3 || !shape.every(isCount)) throw bad(json, `"shape" must be [tokens, layers, k] of non-negative integers, got ${JSON.stringify(shape)}`);
  const [tokens, layers, topK] = shape as number[];
  if (layers < 1 || topK < 1) throw bad(json, `"shape" needs at least one layer and k >= 1, got ${JSON.stringify(shape)}`);
  const E = meta.experts_per_layer;
  if (!isCount(E) || E < 1 || E > 256) throw bad(json, `"experts_per_layer" must be an integer between 1 and 256 (ids are uint8), got ${JSON.stringify(E)}`);
  if (meta.top_k !== undefined && meta.top_k !== topK) throw bad(json, `"top_k" ${JSON.stringify(meta.top_k)} does not match shape[2] = ${topK}`);
  if (topK > E) throw bad(json, `k = ${topK} is larger than experts_per_layer = ${E}`);
  let layerIds: number[];
  if (meta.layers === undefined) layerIds = Array.from({ length: layers }, (_, i) => i);
  else {
    const ls = meta.layers;
    if (!Array.isArray(ls) || ls.length !== layers || !ls.every(isCount)) throw bad(json, `"layers" must list ${layers} layer indices (shape[1]), got ${JSON.stringify(ls).slice(0, 80)}`);
    layerIds = ls as number[];
  }
  let sequences: number[];
  if (meta.sequences === undefined) sequences = [0, tokens];
  else {
    const s = meta.sequences;
    if (!Array.isArray(s) || s.length < 2 || !s.every(isCount)) throw bad(json, `"sequences" must be at least two offsets, got ${JSON.stringify(s).slice(0, 80)}`);
    const seq = s as number[];
    if (seq[0] !== 0 || seq[seq.length - 1] !== tokens) throw bad(json, `"sequences" must start at 0 and end at the token count ${tokens}, got ${seq[0]} … ${seq[seq.length - 1]}`);
    for (let i = 1; i < seq.length; i++) if (seq[i] < seq[i - 1]) throw bad(json, `"sequences" must not decrease (offset ${i}: ${seq[i]} after ${seq[i - 1]})`);
    sequences = seq;
  }
  const data = readFile(u8, 'expert ids');
  const expected = tokens * layers * topK;
  if (data.length !== expected)
    throw bad(u8, `has ${data.length} bytes but the shape [${tokens}, ${layers}, ${topK}] in ${json} needs ${expected}`);
  const ids = new Uint8Array(data.buffer, data.byteOffset, data.length);
  for (let step = 0; step < tokens * layers; step++) {
    const base = step * topK;
    for (let s = 0; s < topK; s++) {
      const id = ids[base + s];
      if (id >= E) {
        const t = Math.floor(step / layers);
        throw bad(u8, `expert id ${id} at token ${t}, layer ${step % layers}, slot ${s} is not below experts_per_layer = ${E}`);
      }
      for (let q = 0; q < s; q++)
        if (ids[base + q] === id) throw bad(u8, `expert id ${id} appears twice at token ${Math.floor(step / layers)}, layer ${step % layers}`);
    }
  }
  return { ids, tokens, layers, topK, expertsPerLayer: E, sequences, layerIds, source: u8 };
}

/** What {@link writeTrace} writes. */
export interface TraceInput {
  /** Expert ids `[tokens, layers, topK]` row-major (or nested arrays [token][layer][slot]). */
  ids: ArrayLike<number> | number[][][];
  tokens?: number;
  layers?: number;
  topK?: number;
  expertsPerLayer: number;
  /** Sequence offsets (default one sequence). */
  sequences?: number[];
  /** Extra metadata fields for the JSON. */
  extra?: Record<string, unknown>;
}

/** A {@link RoutingTrace} from ids in memory (validated like a file). */
export function makeTrace(input: TraceInput): RoutingTrace {
  let flat: Uint8Array;
  let tokens: number;
  let layers: number;
  let topK: number;
  const ids = input.ids;
  if (Array.isArray(ids) && ids.length > 0 && Array.isArray(ids[0])) {
    const nested = ids as number[][][];
    tokens = nested.length;
    layers = nested[0].length;
    topK = nested[0][0]?.length ?? 0;
    flat = new Uint8Array(tokens * layers * topK);
    let i = 0;
    for (const tok of nested) {
      if (tok.length !== layers) throw rangeError('input.ids', `${layers} layers per token`, tok);
      for (const step of tok) {
        if (step.length !== topK) throw rangeError('input.ids', `${topK} experts per step`, step);
        for (const e of step) flat[i++] = checkInteger('expert id', e, 0, input.expertsPerLayer - 1);
      }
    }
  } else {
    tokens = checkInteger('input.tokens', input.tokens, 0);
    layers = checkInteger('input.layers', input.layers, 1);
    topK = checkInteger('input.topK', input.topK, 1);
    const a = ids as ArrayLike<number>;
    if (a.length !== tokens * layers * topK) throw rangeError('input.ids', `${tokens * layers * topK} ids (tokens × layers × topK)`, a);
    flat = new Uint8Array(a.length);
    for (let i = 0; i < a.length; i++) flat[i] = checkInteger('expert id', a[i], 0, input.expertsPerLayer - 1);
  }
  const sequences = input.sequences ?? [0, tokens];
  if (sequences[0] !== 0 || sequences[sequences.length - 1] !== tokens || sequences.some((v, i) => i > 0 && v < sequences[i - 1]))
    throw rangeError('input.sequences', `non-decreasing offsets from 0 to ${tokens}`, sequences);
  return { ids: flat, tokens, layers, topK, expertsPerLayer: input.expertsPerLayer, sequences: [...sequences], layerIds: Array.from({ length: layers }, (_, i) => i) };
}

/**
 * Writes a trace as `stem.u8` + `stem.json` (the format {@link readTrace} reads); used by
 * tests to make synthetic traces. Returns the two paths.
 */
export function writeTrace(stem: string, trace: RoutingTrace | TraceInput, extra: Record<string, unknown> = {}): { u8: string; json: string } {
  const t: RoutingTrace = 'layerIds' in trace && trace.ids instanceof Uint8Array ? (trace as RoutingTrace) : makeTrace(trace as TraceInput);
  const { u8, json } = tracePaths(stem);
  const meta = {
    shape: [t.tokens, t.layers, t.topK],
    dtype: 'uint8',
    layout: '[token, layer, k] row-major',
    experts_per_layer: t.expertsPerLayer,
    top_k: t.topK,
    layers: t.layerIds,
    sequences: t.sequences,
    ...extra,
    ...('extra' in trace && trace.extra ? trace.extra : {}),
  };
  try {
    fs.writeFileSync(u8, t.ids);
    fs.writeFileSync(json, JSON.stringify(meta));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new MoekitError(`${u8}: cannot write the trace (${err.code ?? err.message})`, 'ERR_IO');
  }
  return { u8, json };
}

/** The sub-trace of the sequences with at least `minTokens` tokens (concatenated in order). */
export function selectSequences(trace: RoutingTrace, minTokens: number): RoutingTrace {
  checkInteger('minTokens', minTokens, 0);
  if (minTokens === 0) return trace;
  const step = trace.layers * trace.topK;
  const keep: [number, number][] = [];
  let total = 0;
  for (let i = 0; i + 1 < trace.sequences.length; i++) {
    const a = trace.sequences[i];
    const b = trace.sequences[i + 1];
    if (b - a >= minTokens) {
      keep.push([a, b]);
      total += b - a;
    }
  }
  const ids = new Uint8Array(total * step);
  const sequences = [0];
  let at = 0;
  for (const [a, b] of keep) {
    ids.set(trace.ids.subarray(a * step, b * step), at * step);
    at += b - a;
    sequences.push(at);
  }
  return { ...trace, ids, tokens: total, sequences };
}
