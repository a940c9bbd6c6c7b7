/**
 * `moekit bench`: runs the cells (preset × tokens × op), each timed on the device (when
 * the profiling API is there, see timer.ts) and from JavaScript, with the roofline
 * accounting of accounting.ts beside each time.
 */
import * as os from 'os';
import { RoutingTrace } from '../cache/trace';
import { Device, runtime } from '../device';
import { DType, dtypeSize } from '../dtype';
import { MoekitError } from '../errors';
import { MoELayer, MoELayerWeights } from '../layer';
import { combine, dispatch, gate, groupedGemm } from '../ops';
import { preset as familyPreset } from '../presets';
import { Tensor } from '../tensor';
import { BenchOp, CellShape, Summary, floorSeconds, summarize, work } from './accounting';
import { patterned } from './data';
import { RoutingSpec, makeRng, touchedExperts, traceIds, uniformIds, weightedIds, zipfPopularity } from './routing';
import { BenchShape, CustomShape, benchShape } from './shapes';
import { BenchTimer, DeviceTiming, OpCall, TimingOptions, makeTimer } from './timer';

/** Everything a run needs, validated (see cli.ts for the flags). */
export interface BenchOptions {
  presets: string[];
  custom?: CustomShape;
  /** Replaces every preset's expert count (smoke runs). */
  experts?: number;
  /** Default: 1,16,128,1024,4096,16384 on a GPU, 1,16,128,512 on the CPU. */
  tokens?: number[];
  dtype: DType;
  device: Device;
  ops: BenchOp[];
  routing: RoutingSpec;
  /** The trace of a `trace:` routing, read by the caller. */
  trace?: RoutingTrace;
  warmup: number;
  repeats: number;
  graph: boolean;
  /** Overrides the compute peak (TFLOP/s). */
  peakTflops?: number;
  /** Overrides the measured bandwidth (GB/s). */
  bandwidthGBs?: number;
  /** Memory the run may use, in bytes (default: 90% of free host memory; of device memory on a GPU). */
  memoryLimit?: number;
  seed: number;
}

/** Timing summary in ms (see accounting.summarize). */
export type Timing = Summary;

/** One cell of the table. */
export interface BenchRow {
  preset: string;
  op: BenchOp;
  tokens: number;
  status: 'ok' | 'skipped';
  /** Why the cell was skipped; null when it ran. */
  reason: string | null;
  hidden: number;
  intermediate: number;
  experts: number;
  k: number;
  sharedIntermediate: number;
  /**
   * Routed (token, slot) pairs and the distinct experts they touch (the gating row: of the
   * routing the other ops are given). Skipped rows: T·k and the upper bound min(E, T·k).
   */
  pairs: number;
  touched: number;
  /**
   * Rows each expert got (pairs routed to it, by expert id): the shapes of the cell's grouped
   * GEMMs, so another library can be timed on the same ones (bench/openblas-baseline.py).
   * null when skipped.
   */
  expertRows: number[] | null;
  flops: number;
  bytes: number;
  /** Roofline floor, ms; null when skipped. */
  floorMs: number | null;
  /** Device time per call; null without a device timer or when skipped. */
  deviceMs: Timing | null;
  /** 'cuda-event' / 'steady-clock'; null without a device timer. */
  timer: string | null;
  /** Device repeats replayed a CUDA graph. */
  graph: boolean;
  /** Time per call seen from JavaScript (await of the call, N-API and Promise included); null when skipped. */
  wallMs: Timing | null;
  /** Which time the rates and efficiency use: the device median when there is one, else the wall median. */
  basis: 'device' | 'wall' | null;
  /** The median the rates use, ms. */
  ms: number | null;
  tflops: number | null;
  gbs: number | null;
  /** floor / time. */
  efficiency: number | null;
}

/** The whole run. */
export interface BenchReport {
  version: 1;
  date: string;
  device: { name: string; kind: 'cpu' | 'cuda'; description: string; memoryLimitBytes: number };
  dtype: DType;
  routing: string;
  warmup: number;
  repeats: number;
  /** Compute peak used by the floors (0 = unknown: floors are bandwidth-only). */
  peak: { tflops: number; source: string };
  bandwidth: { gbs: number; source: string };
  deviceTimer: string;
  seed: number;
  notes: string[];
  rows: BenchRow[];
}

/** Measured compute peaks, per device and dtype. */
export const COMPUTE_PEAKS: readonly { match: (d: DeviceInfo, dtype: DType) => boolean; tflops: number; source: string }[] = [
  {
    // H100 SXM (80GB HBM3): bf16 only, as measured.
    match: (d, dtype) => d.kind === 'cuda' && /H100/.test(d.name) && !/PCIe/i.test(d.name) && dtype === 'bf16',
    tflops: 715,
    source: 'H100 SXM bf16: a cuBLAS 8192^3 GEMM measured on an H100 80GB HBM3 (../shared/ANCHORS.md)',
  },
  {
    // The CPU backend computes in f32 whatever the weight dtype.
    match: (d) => d.kind === 'cpu' && /^AMD EPYC/.test(d.cpuModel) && d.threads === 2,
    tflops: 0.196,
    source: 'the 2-core AMD EPYC (Zen 4) development machine: OpenBLAS fp32 sgemm 2048^3 measured (docs/BENCHMARKS.md)',
  },
];

export interface DeviceInfo {
  kind: 'cpu' | 'cuda';
  name: string;
  cpuModel: string;
  threads: number;
  memoryBytes: number;
}

export function deviceInfo(device: Device): DeviceInfo {
  const r = runtime();
  const cpuModel = os.cpus()[0]?.model.trim() ?? 'unknown CPU';
  if (device.kind === 'cpu')
    return { kind: 'cpu', name: `cpu (${cpuModel}, ${r.cpuThreads} threads)`, cpuModel, threads: r.cpuThreads, memoryBytes: os.freemem() };
  const d = r.devices[device.index];
  return { kind: 'cuda', name: `${device.name} (${d?.name ?? 'unknown'})`, cpuModel, threads: r.cpuThreads, memoryBytes: d?.memoryBytes ?? 0 };
}

/** The compute peak for `info` and `dtype`: the override, a measured constant, or 0 (unknown). */
export function computePeak(info: DeviceInfo, dtype: DType, override: number | undefined): { tflops: number; source: string } {
  if (override !== undefined) return { tflops: override, source: '--peak-tflops' };
  const known = COMPUTE_PEAKS.find((p) => p.match(info, dtype));
  if (known !== undefined) return { tflops: known.tflops, source: known.source };
  return { tflops: 0, source: `no measured peak for ${info.name} with ${dtype}: floors use bandwidth only (give --peak-tflops)` };
}

/** Bytes the layer's weights take, and the largest host staging array while they are made. */
export function weightBytes(s: BenchShape, dtype: DType): { weights: number; staging: number } {
  const wb = dtypeSize(dtype);
  const { hidden: H, intermediate: I, experts: E, sharedIntermediate: Is } = s;
  const weights = (3 * E * I * H + E * H + 3 * H * Is) * wb + (s.correctionBias ? E * 4 : 0);
  return { weights, staging: E * I * H * wb };
}

/** An upper estimate of one cell's working memory (inputs, outputs, intermediates). */
export function cellBytes(s: BenchShape, tokens: number, pairs: number, dtype: DType): number {
  const ab = dtypeSize(dtype);
  const { hidden: H, intermediate: I, experts: E, sharedIntermediate: Is } = s;
  return tokens * H * (2 * ab + 4) + pairs * (2 * H + 3 * I) * 4 + tokens * E * 4 + tokens * 3 * Is * 4 + tokens * s.k * 16;
}

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

export interface BenchHooks {
  /** Called before each cell, and once at the end with done === total. */
  progress?: (done: number, total: number, label: string) => void;
  /** Called with each row as it is made. */
  row?: (row: BenchRow) => void;
  /** Called once the device, peak and bandwidth are known. */
  header?: (report: BenchReport) => void;
}

/** Expert ids [T, k] of the run's routing for one cell. */
export function routingIds(spec: RoutingSpec, trace: RoutingTrace | undefined, tokens: number, experts: number, k: number, seed: number): { ids: Int32Array; notes: string[] } {
  const rng = makeRng(seed);
  switch (spec.kind) {
    case 'uniform':
      return { ids: uniformIds(tokens, experts, k, rng), notes: [] };
    case 'zipf':
      return { ids: weightedIds(tokens, k, zipfPopularity(experts, spec.s, rng).p, rng), notes: [] };
    case 'trace':
      if (trace === undefined) throw new Error('unreachable: trace routing without its trace');
      return traceIds(trace, spec.layer, tokens, experts, k, rng);
  }
}

function routingName(spec: RoutingSpec): string {
  return spec.kind === 'uniform' ? 'uniform' : spec.kind === 'zipf' ? `zipf:${spec.s}` : `trace:${spec.file} (layer ${spec.layer})`;
}

/** Disposes every tensor of an op's result (a tensor, or an object of tensors). */
function disposeResult(r: unknown): void {
  if (r instanceof Tensor) r.dispose();
  else if (r !== null && typeof r === 'object') for (const v of Object.values(r)) if (v instanceof Tensor) v.dispose();
}

async function wallTimes(call: () => Promise<unknown>, o: TimingOptions): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < o.warmup + o.repeats; i++) {
    const t0 = process.hrtime.bigint();
    const r = await call();
    const dt = Number(process.hrtime.bigint() - t0) / 1e6;
    disposeResult(r);
    if (i >= o.warmup) times.push(dt);
  }
  return times;
}

/** Runs the benchmark. Cells that do not fit in memory are skipped with a reason. */
export async function runBench(o: BenchOptions, hooks: BenchHooks = {}, timer: BenchTimer = makeTimer()): Promise<BenchReport> {
  const info = deviceInfo(o.device);
  const tokensList = o.tokens ?? (o.device.kind === 'cuda' ? [1, 16, 128, 1024, 4096, 16384] : [1, 16, 128, 512]);
  const timing: TimingOptions = { warmup: o.warmup, repeats: o.repeats, graph: o.graph };
  const peak = computePeak(info, o.dtype, o.peakTflops);
  const hostLimit = o.memoryLimit ?? Math.floor(os.freemem() * 0.9);
  const deviceLimit = o.memoryLimit ?? Math.floor(info.memoryBytes * 0.9);
  const notes: string[] = [];
  // The CUDA grouped GEMM's opt-in kernels are chosen by the environment (read once by the
  // native side): record them so a report says which kernels its rows ran.
  const optIn: [string, string][] = [
    ['MOEKIT_WGMMA', 'wgmma grouped GEMM for 128-row tiles on compute capability 9.0'],
    ['MOEKIT_WGMMA_TMA', 'the wgmma grouped GEMM fed by TMA'],
    ['MOEKIT_SKINNY', 'tensor-core grouped GEMM for experts with 3..16 rows'],
    ['MOEKIT_TC_STAGES', 'weight stages of the 64-row tensor-core tiles'],
    ['MOEKIT_CONCURRENT_SHARED', 'shared experts on a second stream'],
  ];
  for (const [name, what] of optIn) {
    const v = process.env[name];
    if (o.device.kind === 'cuda' && v !== undefined && v !== '') notes.push(`${name}=${v} (${what})`);
  }

  let bandwidth: { gbs: number; source: string };
  if (o.bandwidthGBs !== undefined) bandwidth = { gbs: o.bandwidthGBs, source: '--bandwidth-gbs' };
  else {
    // NOTE: large enough to leave the caches (256 MiB on the CPU, 1 GiB on a GPU).
    const bytes = o.device.kind === 'cuda' ? 2 ** 30 : 2 ** 28;
    const t = await timer.copy(o.device.name, bytes, { warmup: 2, repeats: 10, graph: o.graph });
    const best = Math.min(...t.times);
    bandwidth = { gbs: (2 * bytes) / (best / 1e3) / 1e9, source: `${o.device.kind === 'cuda' ? 'device-to-device' : 'memory'} copy of ${bytes / 2 ** 20} MiB, bytes read + written, best of ${t.times.length} (${t.timer})` };
  }
  const report: BenchReport = {
    version: 1,
    date: new Date().toISOString(),
    device: { name: info.name, kind: info.kind, description: o.device.name, memoryLimitBytes: o.device.kind === 'cuda' ? deviceLimit : hostLimit },
    dtype: o.dtype,
    routing: routingName(o.routing),
    warmup: o.warmup,
    repeats: o.repeats,
    peak,
    bandwidth,
    deviceTimer: timer.description,
    seed: o.seed,
    notes,
    rows: [],
  };
  hooks.header?.(report);

  const total = o.presets.length * tokensList.length * o.ops.length;
  let done = 0;
  const emit = (row: BenchRow) => {
    report.rows.push(row);
    hooks.row?.(row);
  };
  for (let pi = 0; pi < o.presets.length; pi++) {
    const shape = benchShape(o.presets[pi], o.experts, o.custom);
    for (const n of shape.notes) notes.push(`${shape.name}: ${n}`);
    const { weights: wBytes, staging } = weightBytes(shape, o.dtype);
    const skipAll = (reason: string) => {
      for (const T of tokensList)
        for (const op of o.ops) {
          hooks.progress?.(done++, total, `${shape.name} ${op} T=${T}`);
          emit(skippedRow(shape, op, T, o.dtype, reason));
        }
    };
    if (wBytes + staging > hostLimit) {
      skipAll(`weights need ${gib(wBytes)} (+${gib(staging)} while made) of host memory; the limit is ${gib(hostLimit)}${o.memoryLimit === undefined ? ' (90% of free memory)' : ' (--memory-limit-gib)'}; try --experts N`);
      continue;
    }
    if (o.device.kind === 'cuda' && wBytes > deviceLimit) {
      skipAll(`weights need ${gib(wBytes)} of device memory; the limit is ${gib(deviceLimit)}; try --experts N`);
      continue;
    }
    let bench: PresetBench;
    try {
      bench = makePresetBench(shape, o.dtype, o.device, o.seed + 1000 * pi);
    } catch (e) {
      if (e instanceof MoekitError && (e.code === 'ERR_OOM' || e.code === 'ERR_CUDA_OOM')) {
        skipAll(`out of memory making the weights: ${e.message}`);
        continue;
      }
      throw e;
    }
    try {
      for (let ti = 0; ti < tokensList.length; ti++) {
        const T = tokensList[ti];
        const routed = routingIds(o.routing, o.trace, T, shape.experts, shape.k, o.seed + 1000 * pi + ti + 1);
        for (const n of routed.notes) if (!notes.includes(`${shape.name}: ${n}`)) notes.push(`${shape.name}: ${n}`);
        const cell = cellBytes(shape, T, routed.ids.length, o.dtype);
        const limit = o.device.kind === 'cuda' ? deviceLimit : hostLimit;
        const need = wBytes * (o.device.kind === 'cuda' && o.ops.some((op) => op.startsWith('gemm')) ? 2 : 1) + cell;
        if (need > limit) {
          for (const op of o.ops) {
            hooks.progress?.(done++, total, `${shape.name} ${op} T=${T}`);
            emit(skippedRow(shape, op, T, o.dtype, `needs about ${gib(need)} (weights + this cell's activations); the limit is ${gib(limit)}`));
          }
          continue;
        }
        const inputs = new CellInputs(bench, routed.ids, T, o.seed + 7 * ti);
        try {
          for (const op of o.ops) {
            hooks.progress?.(done++, total, `${shape.name} ${op} T=${T}`);
            try {
              emit(await runCell(bench, inputs, op, T, routed.ids, timing, timer, peak.tflops * 1e12, bandwidth.gbs * 1e9, o.dtype));
            } catch (e) {
              if (e instanceof MoekitError && (e.code === 'ERR_OOM' || e.code === 'ERR_CUDA_OOM')) emit(skippedRow(shape, op, T, o.dtype, `out of memory: ${e.message}`));
              else throw e;
            }
          }
        } finally {
          inputs.dispose();
        }
      }
    } finally {
      bench.dispose();
    }
  }
  hooks.progress?.(total, total, 'done');
  return report;
}

function baseRow(s: BenchShape, op: BenchOp, T: number, pairs: number, touched: number, dtype: DType): Omit<BenchRow, 'status' | 'reason' | 'expertRows' | 'floorMs' | 'flops' | 'bytes' | 'deviceMs' | 'timer' | 'graph' | 'wallMs' | 'basis' | 'ms' | 'tflops' | 'gbs' | 'efficiency'> & { cell: CellShape } {
  const cell: CellShape = {
    tokens: T,
    hidden: s.hidden,
    intermediate: s.intermediate,
    experts: s.experts,
    k: s.k,
    pairs,
    touched,
    sharedIntermediate: s.sharedIntermediate,
    weightBytes: dtypeSize(dtype),
    activationBytes: dtypeSize(dtype),
    correctionBias: s.correctionBias,
  };
  return { preset: s.name, op, tokens: T, hidden: s.hidden, intermediate: s.intermediate, experts: s.experts, k: s.k, sharedIntermediate: s.sharedIntermediate, pairs, touched, cell };
}

function skippedRow(s: BenchShape, op: BenchOp, T: number, dtype: DType, reason: string): BenchRow {
  const { cell, ...base } = baseRow(s, op, T, T * s.k, Math.min(s.experts, T * s.k), dtype);
  const w = work(op, cell);
  return { ...base, status: 'skipped', reason, expertRows: null, flops: w.flops, bytes: w.bytes, floorMs: null, deviceMs: null, timer: null, graph: false, wallMs: null, basis: null, ms: null, tflops: null, gbs: null, efficiency: null };
}

/** A preset's layer and weights on the bench device. */
interface PresetBench {
  shape: BenchShape;
  layer: MoELayer;
  weights: MoELayerWeights;
  device: Device;
  dtype: DType;
  /** Expert weights on the device, for the grouped GEMM ops (made on first use). */
  deviceWeights(): Promise<{ gate: Tensor; up: Tensor; down: Tensor }>;
  /** The correction bias on the device, for the gating op. */
  deviceCorrectionBias(): Promise<Tensor | undefined>;
  dispose(): void;
}

function makePresetBench(shape: BenchShape, dtype: DType, device: Device, seed: number): PresetBench {
  const { hidden: H, intermediate: I, experts: E, sharedIntermediate: Is } = shape;
  const scale = 0.02;
  // One pattern array serves gate, up and down (same element count): Tensor.from copies it.
  let expertData: Float32Array | Uint16Array | undefined = patterned(E * I * H, dtype, scale, seed);
  const made: Tensor[] = [];
  const keep = (t: Tensor) => (made.push(t), t);
  try {
    const weights: MoELayerWeights = {
      router: keep(Tensor.from(patterned(E * H, dtype, 1 / Math.sqrt(H), seed + 1), [E, H], dtype)),
      gate: keep(Tensor.from(expertData, [E, I, H], dtype)),
      up: keep(Tensor.from(expertData, [E, I, H], dtype)),
      down: keep(Tensor.from(expertData, [E, H, I], dtype)),
    };
    expertData = undefined;
    if (shape.correctionBias) weights.correctionBias = keep(Tensor.from(patterned(E, 'f32', 0.01, seed + 2) as Float32Array, [E]));
    if (Is > 0) {
      const sharedData = patterned(Is * H, dtype, scale, seed + 3);
      weights.shared = { gate: keep(Tensor.from(sharedData, [Is, H], dtype)), up: keep(Tensor.from(sharedData, [Is, H], dtype)), down: keep(Tensor.from(sharedData, [H, Is], dtype)) };
    }
    const layer = MoELayer.fromPreset(shape.family, shape.presetOptions, { hidden: H, intermediate: I, experts: E, sharedIntermediate: Is }, weights, { device: device.name, ownsWeights: true });
    const onDevice = new Map<Tensor, Promise<Tensor>>();
    const moved: Tensor[] = [];
    // One device copy per weight, made on first use (the layer keeps its own copies).
    const deviceCopy = (t: Tensor): Promise<Tensor> => {
      if (device.kind === 'cpu') return Promise.resolve(t);
      let p = onDevice.get(t);
      if (p === undefined) {
        p = t.to(device.name).then((m) => (moved.push(m), m));
        onDevice.set(t, p);
      }
      return p;
    };
    return {
      shape,
      layer,
      weights,
      device,
      dtype,
      async deviceWeights() {
        return { gate: await deviceCopy(weights.gate as Tensor), up: await deviceCopy(weights.up as Tensor), down: await deviceCopy(weights.down) };
      },
      async deviceCorrectionBias() {
        return weights.correctionBias === undefined ? undefined : deviceCopy(weights.correctionBias);
      },
      dispose() {
        layer.dispose();
        for (const t of moved) t.dispose();
      },
    };
  } catch (e) {
    for (const t of made) t.dispose();
    throw e;
  }
}

/** The inputs of one cell's ops, made on the device on first use. */
class CellInputs {
  private readonly made: Tensor[] = [];
  private readonly cache = new Map<string, Promise<Tensor>>();
  readonly offsets: Int32Array;
  readonly pairToRow: Int32Array;
  readonly pairs: number;

  constructor(
    private readonly bench: PresetBench,
    readonly ids: Int32Array,
    readonly tokens: number,
    private readonly seed: number,
  ) {
    // Expert-sorted layout (the one dispatch makes with blockSize 1): offsets and each pair's row.
    const E = bench.shape.experts;
    const counts = new Int32Array(E);
    for (const e of ids) if (e >= 0) counts[e]++;
    this.offsets = new Int32Array(E + 1);
    for (let e = 0; e < E; e++) this.offsets[e + 1] = this.offsets[e] + counts[e];
    const cursor = this.offsets.slice(0, E);
    this.pairToRow = new Int32Array(ids.length);
    for (let i = 0; i < ids.length; i++) this.pairToRow[i] = ids[i] >= 0 ? cursor[ids[i]]++ : -1;
    this.pairs = this.offsets[E];
  }

  /** A tensor on the device, made once per cell. */
  get(name: string, make: () => Tensor): Promise<Tensor> {
    let p = this.cache.get(name);
    if (p === undefined) {
      p = (async () => {
        const host = make();
        if (this.bench.device.kind === 'cpu') {
          this.made.push(host);
          return host;
        }
        try {
          const t = await host.to(this.bench.device.name);
          this.made.push(t);
          return t;
        } finally {
          host.dispose();
        }
      })();
      this.cache.set(name, p);
    }
    return p;
  }

  random(name: string, shape: number[], dtype: DType, scale: number): Promise<Tensor> {
    return this.get(name, () => Tensor.from(patterned(shape.reduce((a, b) => a * b, 1), dtype, scale, this.seed + name.length), shape, dtype));
  }

  dispose(): void {
    for (const t of this.made) t.dispose();
    // Tensors still being made are disposed when they land.
    for (const p of this.cache.values()) p.then((t) => t.dispose(), () => undefined);
    this.cache.clear();
  }
}

async function runCell(
  b: PresetBench,
  inp: CellInputs,
  op: BenchOp,
  T: number,
  ids: Int32Array,
  timing: TimingOptions,
  timer: BenchTimer,
  peakFlops: number,
  bandwidth: number,
  dtype: DType,
): Promise<BenchRow> {
  const s = b.shape;
  const { hidden: H, intermediate: I, experts: E, k } = s;
  const P = inp.pairs;
  const idsT = () => inp.get('ids', () => Tensor.from(ids, [T, k]));
  let wall: number[];
  let dev: DeviceTiming | undefined;
  switch (op) {
    case 'layer': {
      const x = await inp.random('x', [T, H], dtype, 1);
      const forcedIds = await idsT();
      wall = await wallTimes(() => b.layer.forward(x, { forcedIds }), timing);
      dev = await timer.layer(b.layer, x, forcedIds, timing);
      break;
    }
    case 'gating': {
      const logits = await inp.random('logits', [T, E], 'f32', 2);
      const correctionBias = await b.deviceCorrectionBias();
      const options = { ...familyPreset(s.family, s.presetOptions).routing, experts: E, ...(correctionBias !== undefined ? { correctionBias } : {}) };
      wall = await wallTimes(() => gate(logits, options), timing);
      dev = await timer.op({ op: 'gate', args: [logits, options] }, timing);
      break;
    }
    case 'dispatch': {
      const t = await idsT();
      const options = { experts: E };
      wall = await wallTimes(() => dispatch(t, options), timing);
      dev = await timer.op({ op: 'dispatch', args: [t, options] }, timing);
      break;
    }
    case 'gemm-up':
    case 'gemm-down': {
      const w = await b.deviceWeights();
      const offsets = await inp.get('offsets', () => Tensor.from(inp.offsets, [E + 1]));
      const up = op === 'gemm-up';
      const x = up ? await inp.random('rowsH', [P, H], 'f32', 1) : await inp.random('rowsI', [P, I], 'f32', 1);
      const weight = up ? w.gate : w.down;
      const options = up ? { activation: 'swiglu' as const, wUp: w.up } : {};
      wall = await wallTimes(() => groupedGemm(x, offsets, weight, options), timing);
      dev = await timer.op({ op: 'groupedGemm', args: [x, offsets, weight, options] }, timing);
      break;
    }
    case 'combine': {
      const y = await inp.random('rowsH', [P, H], 'f32', 1);
      const p2r = await inp.get('pairToRow', () => Tensor.from(inp.pairToRow, [T, k]));
      const weights = await inp.random('weights', [T, k], 'f32', 1);
      const options = { weights };
      wall = await wallTimes(() => combine(y, p2r, options), timing);
      dev = await timer.op({ op: 'combine', args: [y, p2r, options] }, timing);
      break;
    }
  }
  const { cell, ...base } = baseRow(s, op, T, P, touchedExperts(ids, E), dtype);
  const w = work(op, cell);
  const floorMs = floorSeconds(w, peakFlops, bandwidth) * 1e3;
  const wallMs = summarize(wall);
  const deviceMs = dev === undefined ? null : summarize(dev.times);
  const ms = deviceMs?.median ?? wallMs.median;
  return {
    ...base,
    status: 'ok',
    reason: null,
    expertRows: Array.from(inp.offsets.subarray(1), (end, e) => end - inp.offsets[e]),
    flops: w.flops,
    bytes: w.bytes,
    floorMs,
    deviceMs,
    timer: dev?.timer ?? null,
    graph: dev?.graph ?? false,
    wallMs,
    basis: deviceMs === null ? 'wall' : 'device',
    ms,
    tflops: w.flops / (ms / 1e3) / 1e12,
    gbs: w.bytes / (ms / 1e3) / 1e9,
    efficiency: floorMs / ms,
  };
}

