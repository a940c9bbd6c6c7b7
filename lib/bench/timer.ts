/**
 * Device timing for `moekit bench`: the one place that calls the profiling API
 * (MoELayer#profile, profileOp, profileCopy). Everything else in lib/bench sees only
 * {@link BenchTimer}.
 */
import { MoELayer } from '../layer';
import { CombineOptions, DispatchOptions, GateOptions, GroupedGemmOptions, profileOp } from '../ops';
import { Profile, profileCopy } from '../profile';
import { Tensor } from '../tensor';

/** Device time of each timed repeat, and how it was taken. */
export interface DeviceTiming {
  /** ms per repeat. */
  times: number[];
  /** 'cuda-event', 'steady-clock', or 'js-wall-clock' for the copy fallback. */
  timer: string;
  /** The repeats replayed a captured CUDA graph. */
  graph: boolean;
}

export interface TimingOptions {
  warmup: number;
  repeats: number;
  graph: boolean;
}

/** An op the benchmark times outside the layer, with the arguments of its moekit function. */
export type OpCall =
  | { op: 'gate'; args: [Tensor, GateOptions] }
  | { op: 'dispatch'; args: [Tensor, DispatchOptions] }
  | { op: 'groupedGemm'; args: [Tensor, Tensor, Tensor, GroupedGemmOptions] }
  | { op: 'combine'; args: [Tensor, Tensor, CombineOptions] };

export interface BenchTimer {
  /** What times the device side, for the report. */
  readonly description: string;
  /** Device time of layer.forward(x, { forcedIds }); undefined without a device timer. */
  layer(layer: MoELayer, x: Tensor, forcedIds: Tensor, o: TimingOptions): Promise<DeviceTiming | undefined>;
  /** Device time of one op call; undefined without a device timer. */
  op(call: OpCall, o: TimingOptions): Promise<DeviceTiming | undefined>;
  /** Time of a copy of `bytes` on `device` (device-to-device, or host memory). */
  copy(device: string, bytes: number, o: TimingOptions): Promise<DeviceTiming>;
}

/**
 * The timer of this build. `MOEKIT_BENCH_NO_DEVICE_TIMER=1` leaves device timing out
 * (wall time only, the copy timed by the JavaScript clock), for comparison.
 */
export function makeTimer(): BenchTimer {
  if (process.env.MOEKIT_BENCH_NO_DEVICE_TIMER === '1') {
    return {
      description: 'none (MOEKIT_BENCH_NO_DEVICE_TIMER=1): efficiency uses the wall time seen from JavaScript',
      layer: async () => undefined,
      op: async () => undefined,
      copy: wallClockCopy,
    };
  }
  const timing = (p: Profile): DeviceTiming => ({ times: Array.from(p.times), timer: p.timer, graph: p.graph });
  return {
    description: 'moekit profiling API (CUDA events around CUDA-graph replays on a GPU, steady clock on the CPU)',
    async layer(layer, x, forcedIds, o) {
      return timing(await layer.profile(x, { ...o, forcedIds }));
    },
    async op(call, o) {
      switch (call.op) {
        case 'gate':
          return timing(await profileOp('gate', call.args, o));
        case 'dispatch':
          return timing(await profileOp('dispatch', call.args, o));
        case 'groupedGemm':
          return timing(await profileOp('groupedGemm', call.args, o));
        case 'combine':
          return timing(await profileOp('combine', call.args, o));
      }
    },
    async copy(device, bytes, o) {
      return timing(await profileCopy(device, bytes, o));
    },
  };
}

/**
 * A copy timed by the JavaScript clock: a host Buffer copy on the CPU (one thread, so it
 * understates what several threads stream), a device tensor copy on a GPU.
 */
async function wallClockCopy(device: string, bytes: number, o: TimingOptions): Promise<DeviceTiming> {
  const times: number[] = [];
  if (device === 'cpu') {
    const a = Buffer.alloc(bytes, 1);
    const b = Buffer.allocUnsafe(bytes);
    for (let i = 0; i < o.warmup + o.repeats; i++) {
      const t0 = process.hrtime.bigint();
      a.copy(b);
      if (i >= o.warmup) times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    return { times, timer: 'js-wall-clock', graph: false };
  }
  const src = Tensor.empty([bytes / 4], 'f32', device);
  try {
    for (let i = 0; i < o.warmup + o.repeats; i++) {
      const t0 = process.hrtime.bigint();
      const copy = await src.to(device);
      const dt = Number(process.hrtime.bigint() - t0) / 1e6;
      copy.dispose();
      if (i >= o.warmup) times.push(dt);
    }
  } finally {
    src.dispose();
  }
  return { times, timer: 'js-wall-clock', graph: false };
}
