/**
 * The low-level ops, each usable on its own: gate, dispatch, groupedGemm, combine.
 * Each validates its arguments, then runs the kernel off the JavaScript thread, on the
 * device of its first input (every tensor of a call must be on that device).
 */
import { MoekitError, checkInteger, checkNumber, checkOneOf, checkOptions, rangeError, typeError } from './errors';
import { FLOAT_DTYPES } from './dtype';
import { RawTensor, native } from './native';
import { ResolvedRouting, RoutingOptions, correctionBiasFor, encodeRouting, resolveRouting } from './routing';
import { Tensor, checkTensor, describeTensor } from './tensor';
import { Profile, ProfileOptions, ProfileRequest, checkProfileOptions, runProfile } from './profile';

/** Result of gating. */
export interface Routing {
  /** [tokens, slots] int32 expert ids, -1 for an unused slot. */
  ids: Tensor;
  /** [tokens, slots] float32 routing weights, 0 for an unused slot. */
  weights: Tensor;
  /** [experts] int32 pairs routed to each expert. */
  load: Tensor;
}

/** Options of {@link gate}. */
export interface GateOptions extends RoutingOptions {
  /** Real experts; default: logits columns minus nullExperts. */
  experts?: number;
  /** [experts + nullExperts] float32 bias added to the logits (gpt-oss router bias). */
  logitBias?: Tensor;
  /** [experts] float32 bias added to the scores for selection only (DeepSeek-V3). */
  correctionBias?: Tensor;
}

type NativeFn<A extends unknown[], R> = (...args: A) => Promise<R>;
function op<A extends unknown[], R>(name: string): NativeFn<A, R> {
  return native()[name] as NativeFn<A, R>;
}

/** Checks `t` is on the op's device (that of its first input). */
function checkDevice(name: string, t: Tensor, device: Tensor['device']): void {
  if (t.device.name !== device.name)
    throw new MoekitError(`${name} is on ${t.device.name} but this op runs on ${device.name} (the device of its first input): move it with await t.to('${device.name}')`, 'ERR_INVALID_ARGUMENT');
}

function check2d(name: string, t: Tensor, dtypes: readonly string[]): void {
  if (t.shape.length !== 2) throw rangeError(name, 'a 2-D tensor', describeTensor(t));
  if (!dtypes.includes(t.dtype)) throw rangeError(name, `a tensor of dtype ${dtypes.join(' or ')}`, describeTensor(t));
}

function checkVector(name: string, t: Tensor, length: number, device: Tensor['device']): void {
  if (t.dtype !== 'f32' || t.shape.length !== 1 || t.shape[0] !== length)
    throw rangeError(name, `a f32 tensor of shape [${length}]`, describeTensor(t));
  checkDevice(name, t, device);
}

/**
 * Gating: router logits [tokens, experts + nullExperts] (f32, f16 or bf16) → expert
 * ids, weights and per-expert load. Scores are computed in float32; ties break toward
 * the lower expert id.
 */
export function gate(logits: Tensor, options: GateOptions): Promise<Routing> {
  return gateImpl(logits, options) as Promise<Routing>;
}

async function gateImpl(logits: Tensor, options: GateOptions, profile?: ProfileRequest): Promise<Routing | Profile> {
  checkTensor('logits', logits);
  check2d('logits', logits, FLOAT_DTYPES);
  const o = checkOptions<GateOptions>('options', options);
  const nullExperts = o.nullExperts ?? 0;
  const cols = logits.shape[1];
  const experts = o.experts === undefined ? cols - (typeof nullExperts === 'number' ? nullExperts : 0) : checkInteger('options.experts', o.experts, 1);
  if (experts < 1) throw rangeError('logits', 'at least one expert column', describeTensor(logits));
  const r = resolveRouting('options', experts, o);
  if (r.experts + r.nullExperts !== cols)
    throw rangeError('logits', `${r.experts + r.nullExperts} columns (experts + nullExperts)`, describeTensor(logits));
  if (o.logitBias !== undefined) checkVector('options.logitBias', checkTensor('options.logitBias', o.logitBias), cols, logits.device);
  if (o.correctionBias !== undefined) checkVector('options.correctionBias', checkTensor('options.correctionBias', o.correctionBias), experts, logits.device);
  const made = correctionBiasFor('options', r, o.correctionBias, (n) => Tensor.zeros([n]));
  const correctionBias = made !== undefined && made !== o.correctionBias && logits.device.kind !== 'cpu' ? await made.to(logits.device.name) : made;
  const args = { logits: logits.raw, logitBias: o.logitBias?.raw, correctionBias: correctionBias?.raw, ...encodeRouting(r) };
  if (profile !== undefined) return runProfile('gating', args, profile);
  const [ids, weights, load] = await op<[object], RawTensor[]>('gating')(args);
  return { ids: new Tensor(ids), weights: new Tensor(weights), load: new Tensor(load) };
}

/** Result of {@link dispatch}. */
export interface Dispatch {
  /** [experts] int32 pairs kept per expert. */
  counts: Tensor;
  /** [experts + 1] int32 first row of each expert's group in the (padded) layout. */
  offsets: Tensor;
  /** [rows] int32 pair index (token · k + slot) of each row, -1 for padding. */
  sortedPairs: Tensor;
  /** [tokens, k] int32 row of each pair, -1 when skipped or dropped (the inverse, for combine). */
  pairToRow: Tensor;
  /** Pairs dropped by the capacity. */
  dropped: number;
}

/** Options of {@link dispatch}. */
export interface DispatchOptions {
  experts: number;
  /** Pad each expert's group to a multiple of this many rows. Default 1. */
  blockSize?: number;
  /** Keep at most this many pairs per expert (later tokens dropped first). Default unlimited. */
  capacity?: number;
}

/** Groups the (token, slot) pairs of a routing by expert; ids is [tokens, k] int32 with -1 = skip. */
export function dispatch(ids: Tensor, options: DispatchOptions): Promise<Dispatch> {
  return dispatchImpl(ids, options) as Promise<Dispatch>;
}

async function dispatchImpl(ids: Tensor, options: DispatchOptions, profile?: ProfileRequest): Promise<Dispatch | Profile> {
  checkTensor('ids', ids);
  check2d('ids', ids, ['i32']);
  const o = checkOptions<DispatchOptions>('options', options);
  const experts = checkInteger('options.experts', o.experts, 1, 2 ** 24);
  const blockSize = o.blockSize === undefined ? 1 : checkInteger('options.blockSize', o.blockSize, 1, 4096);
  const capacity = o.capacity === undefined ? -1 : checkInteger('options.capacity', o.capacity, 0, 2 ** 31 - 1);
  if (ids.shape[1] < 1) throw rangeError('ids', 'at least one slot per token', describeTensor(ids));
  const maxRows = ids.shape[0] * ids.shape[1] + (blockSize > 1 ? experts * (blockSize - 1) : 0);
  if (maxRows > 2 ** 31 - 1) throw rangeError('options', 'a dispatch whose padded rows fit 32-bit row indices', `${maxRows} rows`);
  if (ids.device.kind !== 'cpu') {
    // The CPU kernel checks ids itself; device ids are checked here (a sync, standalone op only).
    const values = (await ids.toArray()) as Int32Array;
    for (let i = 0; i < values.length; i++)
      if (values[i] >= experts) throw rangeError('ids', `expert ids below ${experts} (or -1 to skip)`, `${values[i]} at flat index ${i}`);
  }
  const args = { ids: ids.raw, experts, blockSize, capacity };
  if (profile !== undefined) return runProfile('dispatch', args, profile);
  const [counts, offsets, sortedPairs, pairToRow, dropped] = await op<[object], RawTensor[]>('dispatch')(args);
  const droppedTensor = new Tensor(dropped);
  const droppedCount = Number(((await droppedTensor.toArray()) as BigInt64Array)[0]);
  droppedTensor.dispose();
  return { counts: new Tensor(counts), offsets: new Tensor(offsets), sortedPairs: new Tensor(sortedPairs), pairToRow: new Tensor(pairToRow), dropped: droppedCount };
}

/** Activation fused into a grouped GEMM's output (see kernels/common/grouped_gemm_params.h). */
export type Activation = 'none' | 'swiglu' | 'swiglu-interleaved' | 'gpt-oss-swiglu' | 'geglu' | 'gelu' | 'relu' | 'silu' | 'gelu-tanh';
export const ACTIVATIONS: readonly Activation[] = ['none', 'swiglu', 'swiglu-interleaved', 'gpt-oss-swiglu', 'geglu', 'gelu', 'relu', 'silu', 'gelu-tanh'];
const GLU_ACTIVATIONS: readonly Activation[] = ['swiglu', 'swiglu-interleaved', 'gpt-oss-swiglu', 'geglu'];

/** Expert weight layouts: `'enk'` = [E, N, K] (HF Linear, out × in); `'ekn'` = [E, K, N] (gpt-oss). */
export type WeightLayout = 'enk' | 'ekn';

/** Options of {@link groupedGemm}. */
export interface GroupedGemmOptions {
  /** Layout of w (and wUp). Default 'enk'. */
  layout?: WeightLayout;
  /** Default 'none'. */
  activation?: Activation;
  /** Separate up projection (same layout and dtype as w): gate from w, up from wUp (activation 'swiglu' or 'geglu'). */
  wUp?: Tensor;
  /** [E, N] bias of w (dtype of w). */
  bias?: Tensor;
  /** [E, N] bias of wUp. */
  biasUp?: Tensor;
  /** [rows] float32 scale of each output row (a routing weight). */
  rowScale?: Tensor;
  /** gpt-oss clamped SwiGLU: sigmoid scale, default 1.702. */
  alpha?: number;
  /** gpt-oss clamped SwiGLU: clamp limit, default 7. */
  limit?: number;
}

/**
 * One GEMM per expert over its group of rows: y[r] = act(x[r] · W_e^T + b_e) for r in
 * [offsets[e], offsets[e+1]). x is [rows, K] f32; offsets [E + 1] i32; w [E, N, K] or
 * [E, K, N] in f32, f16 or bf16. Returns y [rows, N_out] f32 (N/2 for fused GLUs).
 */
export function groupedGemm(x: Tensor, offsets: Tensor, w: Tensor, options: GroupedGemmOptions = {}): Promise<Tensor> {
  return groupedGemmImpl(x, offsets, w, options) as Promise<Tensor>;
}

async function groupedGemmImpl(x: Tensor, offsets: Tensor, w: Tensor, options: GroupedGemmOptions = {}, profile?: ProfileRequest): Promise<Tensor | Profile> {
  checkTensor('x', x);
  check2d('x', x, ['f32']);
  checkTensor('offsets', offsets);
  checkTensor('w', w);
  const o = checkOptions<GroupedGemmOptions>('options', options);
  if (offsets.dtype !== 'i32' || offsets.shape.length !== 1 || offsets.shape[0] < 2)
    throw rangeError('offsets', 'an i32 tensor of shape [experts + 1]', describeTensor(offsets));
  checkDevice('offsets', offsets, x.device);
  const E = offsets.shape[0] - 1;
  const layout = o.layout === undefined ? 'enk' : checkOneOf('options.layout', o.layout, ['enk', 'ekn'] as const);
  if (w.shape.length !== 3 || w.shape[0] !== E || !FLOAT_DTYPES.includes(w.dtype))
    throw rangeError('w', `a f32, f16 or bf16 tensor of shape [${E}, N, K] or [${E}, K, N]`, describeTensor(w));
  checkDevice('w', w, x.device);
  const [n, k] = layout === 'enk' ? [w.shape[1], w.shape[2]] : [w.shape[2], w.shape[1]];
  if (x.shape[1] !== k) throw rangeError('x', `${k} columns to match w (layout '${layout}')`, describeTensor(x));
  const activation = o.activation === undefined ? 'none' : checkOneOf('options.activation', o.activation, ACTIVATIONS);
  const rows = x.shape[0];
  // NOTE: reading offsets back costs a device sync for CUDA inputs; the layer forward never does this.
  const offs = (await offsets.toArray()) as Int32Array;
  if (offs[0] < 0) throw rangeError('offsets', 'offsets[0] >= 0', offs[0]);
  for (let e = 0; e < E; e++)
    if (offs[e + 1] < offs[e] || offs[e + 1] > rows) throw rangeError('offsets', `non-decreasing values within [0, ${rows}]`, `offsets[${e + 1}] = ${offs[e + 1]}`);
  let nOut = n;
  if (o.wUp !== undefined) {
    checkTensor('options.wUp', o.wUp);
    if (o.wUp.dtype !== w.dtype || o.wUp.shape.join() !== w.shape.join()) throw rangeError('options.wUp', `a ${w.dtype} tensor of shape [${w.shape.join(', ')}]`, describeTensor(o.wUp));
    checkDevice('options.wUp', o.wUp, x.device);
    if (activation !== 'swiglu' && activation !== 'geglu') throw rangeError('options.activation', "'swiglu' or 'geglu' with a separate up projection", activation);
  } else if (GLU_ACTIVATIONS.includes(activation)) {
    if (n % 2 !== 0) throw rangeError('w', `an even output dimension for activation '${activation}'`, describeTensor(w));
    nOut = n / 2;
  }
  for (const [name, b] of [['options.bias', o.bias], ['options.biasUp', o.biasUp]] as const) {
    if (b === undefined) continue;
    checkTensor(name, b);
    if (b.dtype !== w.dtype || b.shape.length !== 2 || b.shape[0] !== E || b.shape[1] !== n) throw rangeError(name, `a ${w.dtype} tensor of shape [${E}, ${n}]`, describeTensor(b));
    checkDevice(name, b, x.device);
  }
  if (o.biasUp !== undefined && o.wUp === undefined) throw rangeError('options.biasUp', 'no biasUp without wUp', 'a Tensor');
  if (o.rowScale !== undefined) checkVector('options.rowScale', checkTensor('options.rowScale', o.rowScale), rows, x.device);
  const args = {
    x: x.raw,
    offsets: offsets.raw,
    w: w.raw,
    wUp: o.wUp?.raw,
    bias: o.bias?.raw,
    biasUp: o.biasUp?.raw,
    rowScale: o.rowScale?.raw,
    layout: layout === 'enk' ? 0 : 1,
    n,
    k,
    nOut,
    activation: ACTIVATIONS.indexOf(activation),
    alpha: o.alpha === undefined ? 1.702 : checkNumber('options.alpha', o.alpha),
    limit: o.limit === undefined ? 7 : checkNumber('options.limit', o.limit, 0),
  };
  if (profile !== undefined) return runProfile('groupedGemm', args, profile);
  return new Tensor(await op<[object], RawTensor>('groupedGemm')(args));
}

/** Options of {@link combine}. */
export interface CombineOptions {
  /** [tokens, k] f32 routing weights; omit when they were already applied (rowScale). */
  weights?: Tensor;
  /** [tokens, hidden] f32 added to the result (shared-expert output). */
  shared?: Tensor;
}

/** out[t] = Σ_s weights[t, s] · y[pairToRow[t, s]] (+ shared[t]); float32 accumulation. */
export function combine(y: Tensor, pairToRow: Tensor, options: CombineOptions = {}): Promise<Tensor> {
  return combineImpl(y, pairToRow, options) as Promise<Tensor>;
}

async function combineImpl(y: Tensor, pairToRow: Tensor, options: CombineOptions = {}, profile?: ProfileRequest): Promise<Tensor | Profile> {
  checkTensor('y', y);
  check2d('y', y, ['f32']);
  checkTensor('pairToRow', pairToRow);
  check2d('pairToRow', pairToRow, ['i32']);
  const o = checkOptions<CombineOptions>('options', options);
  const [T, k] = pairToRow.shape;
  const H = y.shape[1];
  if (o.weights !== undefined) {
    checkTensor('options.weights', o.weights);
    if (o.weights.dtype !== 'f32' || o.weights.shape.join() !== `${T},${k}`) throw rangeError('options.weights', `a f32 tensor of shape [${T}, ${k}]`, describeTensor(o.weights));
    checkDevice('options.weights', o.weights, y.device);
  }
  if (o.shared !== undefined) {
    checkTensor('options.shared', o.shared);
    if (o.shared.dtype !== 'f32' || o.shared.shape.join() !== `${T},${H}`) throw rangeError('options.shared', `a f32 tensor of shape [${T}, ${H}]`, describeTensor(o.shared));
    checkDevice('options.shared', o.shared, y.device);
  }
  const rows = y.shape[0];
  checkDevice('pairToRow', pairToRow, y.device);
  const p2r = (await pairToRow.toArray()) as Int32Array;
  for (let i = 0; i < p2r.length; i++)
    if (p2r[i] < -1 || p2r[i] >= rows) throw rangeError('pairToRow', `row indices in [-1, ${rows})`, `${p2r[i]} at flat index ${i}`);
  const args = { y: y.raw, pairToRow: pairToRow.raw, weights: o.weights?.raw, shared: o.shared?.raw };
  if (profile !== undefined) return runProfile('combine', args, profile);
  return new Tensor(await op<[object], RawTensor>('combine')(args));
}

/** The ops {@link profileOp} can time, with their arguments. */
export interface ProfiledOps {
  gate: [logits: Tensor, options: GateOptions];
  dispatch: [ids: Tensor, options: DispatchOptions];
  groupedGemm: [x: Tensor, offsets: Tensor, w: Tensor, options?: GroupedGemmOptions];
  combine: [y: Tensor, pairToRow: Tensor, options?: CombineOptions];
}

/**
 * Times an op on its device: the arguments are checked as by the op itself, the outputs
 * are allocated once, then the kernels run `warmup` + `repeats` times (see {@link Profile}).
 */
export async function profileOp<K extends keyof ProfiledOps>(op: K, args: ProfiledOps[K], options: ProfileOptions = {}): Promise<Profile> {
  const name = checkOneOf('op', op, ['gate', 'dispatch', 'groupedGemm', 'combine'] as const);
  if (!Array.isArray(args)) throw typeError('args', `an array of the arguments of ${name}`, args);
  const req = { ...checkProfileOptions('options', options), keepOutput: false };
  const a = args as unknown[];
  switch (name) {
    case 'gate':
      return (await gateImpl(a[0] as Tensor, a[1] as GateOptions, req)) as Profile;
    case 'dispatch':
      return (await dispatchImpl(a[0] as Tensor, a[1] as DispatchOptions, req)) as Profile;
    case 'groupedGemm':
      return (await groupedGemmImpl(a[0] as Tensor, a[1] as Tensor, a[2] as Tensor, (a[3] ?? {}) as GroupedGemmOptions, req)) as Profile;
    default:
      return (await combineImpl(a[0] as Tensor, a[1] as Tensor, (a[2] ?? {}) as CombineOptions, req)) as Profile;
  }
}

export type { ResolvedRouting };
