/**
 * Device timing of ops and layer forwards, for benchmarks. The native side allocates the
 * outputs once, then runs the kernels `warmup` + `repeats` times on the device's worker
 * and times each repeat: on a GPU with CUDA events around each replay of a captured CUDA
 * graph (or around each eager launch when `graph` is false or capture fails), on the CPU
 * with the steady clock. This is device time only; the JavaScript wall time of a call
 * (N-API and Promise included) is measured by timing the op itself.
 */
import { checkBoolean, checkInteger, checkOptions } from './errors';
import { resolveDevice } from './device';
import { native } from './native';
import { Tensor } from './tensor';

/** Options of {@link profileOp}, {@link profileCopy} and `MoELayer.profile`. */
export interface ProfileOptions {
  /** Untimed runs first. Default 3. */
  warmup?: number;
  /** Timed runs. Default 20. */
  repeats?: number;
  /** On a GPU, replay a captured CUDA graph (default true); ignored on the CPU. */
  graph?: boolean;
  /** `MoELayer.profile` only: return the output of the last repeat as `Profile.output`. Default false. */
  keepOutput?: boolean;
}

/** What a profile measured. */
export interface Profile {
  /** Device time of each timed repeat, in ms. */
  times: number[];
  /** `'cuda-event'` on a GPU, `'steady-clock'` on the CPU. */
  timer: 'cuda-event' | 'steady-clock';
  /** The repeats replayed a captured CUDA graph. */
  graph: boolean;
  /** The device the work ran on, e.g. `'cpu'` or `'cuda:0'`. */
  device: string;
  /** With `keepOutput` (MoELayer.profile): the forward's output after the last repeat; dispose it. */
  output?: Tensor;
}

/** Checked {@link ProfileOptions}, as the native profile takes them. @internal */
export interface ProfileRequest {
  warmup: number;
  repeats: number;
  graph: boolean;
  keepOutput: boolean;
}

/** @internal */
export function checkProfileOptions(name: string, options: unknown): ProfileRequest {
  const o = checkOptions<ProfileOptions>(name, options ?? {});
  return {
    warmup: o.warmup === undefined ? 3 : checkInteger(`${name}.warmup`, o.warmup, 0, 1e6),
    repeats: o.repeats === undefined ? 20 : checkInteger(`${name}.repeats`, o.repeats, 1, 1e6),
    graph: o.graph === undefined ? true : checkBoolean(`${name}.graph`, o.graph),
    keepOutput: o.keepOutput === undefined ? false : checkBoolean(`${name}.keepOutput`, o.keepOutput),
  };
}

/** Runs the native profile of `op` with already-checked native arguments. @internal */
export function runProfile(op: string, args: object, req: ProfileRequest): Promise<Profile> {
  return (native().profile as (op: string, args: object, o: ProfileRequest) => Promise<Profile>)(op, args, req);
}

/**
 * Times a copy of `bytes` bytes within one device's memory: device to device on a GPU,
 * a memory copy split over the CPU worker threads on the CPU. Bandwidth (bytes read +
 * written per second) = 2 · bytes / time.
 */
export async function profileCopy(device: string, bytes: number, options: ProfileOptions = {}): Promise<Profile> {
  const dev = resolveDevice(device, 'device');
  const n = checkInteger('bytes', bytes, 4, 2 ** 40);
  const req = checkProfileOptions('options', options);
  const src = Tensor.empty([Math.floor(n / 4)], 'f32', dev.name);
  try {
    return await runProfile('copy', { src: src.raw }, req);
  } finally {
    src.dispose();
  }
}
