/**
 * Backend and device choice. A device is named `'cpu'`, `'cuda'` (device 0),
 * `'cuda:N'` or `'auto'`. When a call or object is given no device, the
 * environment variable MOEKIT_DEVICE names it, else `'auto'`. `'auto'` picks
 * CUDA device 0 when a device is usable and the CPU otherwise; the reason CUDA
 * was not usable stays available in {@link runtime}().cudaUnavailableReason.
 */
import { MoekitError, rangeError, typeError } from './errors';
import { native } from './native';

/** A device name as users write it. */
export type DeviceSpec = 'cpu' | 'cuda' | `cuda:${number}` | 'auto';

/** A device after resolution. */
export interface Device {
  readonly kind: 'cpu' | 'cuda';
  readonly index: number;
  /** `'cpu'` or `'cuda:N'`. */
  readonly name: string;
}

/** One CUDA device as the runtime sees it. */
export interface CudaDeviceInfo {
  index: number;
  name: string;
  /** For example `'9.0'` for an H100. */
  computeCapability: string;
  memoryBytes: number;
  multiprocessors: number;
}

/** What this binary was built with and what it can use on this machine. */
export interface Runtime {
  /** The binary contains the CUDA backend. */
  compiledWithCuda: boolean;
  /** Backends usable now: always `'cpu'`, plus `'cuda'` when a CUDA device is usable. */
  backends: ('cpu' | 'cuda')[];
  devices: CudaDeviceInfo[];
  /** CUDA driver version as an integer (13000 = 13.0); 0 without a driver. */
  cudaDriverVersion: number;
  /** CUDA runtime version linked into the binary; 0 when built without CUDA. */
  cudaRuntimeVersion: number;
  /** Why CUDA cannot be used, in words; null when it can. */
  cudaUnavailableReason: string | null;
  /** Threads the CPU backend uses (MOEKIT_NUM_THREADS, else the core count). */
  cpuThreads: number;
  /**
   * SIMD path of the CPU grouped GEMM: the widest this CPU has ('avx512', 'avx2', else
   * 'scalar'), at most MOEKIT_CPU_ISA when that is set.
   */
  cpuIsa: 'avx512' | 'avx2' | 'scalar';
}

/** Reports the binary's build and the devices usable on this machine. */
export function runtime(): Runtime {
  const r = native().runtime();
  return {
    compiledWithCuda: r.compiledWithCuda,
    backends: r.cudaUnavailableReason === null && r.devices.length > 0 ? ['cpu', 'cuda'] : ['cpu'],
    devices: r.devices.map((d) => ({ ...d })),
    cudaDriverVersion: r.cudaDriverVersion,
    cudaRuntimeVersion: r.cudaRuntimeVersion,
    cudaUnavailableReason: r.cudaUnavailableReason,
    cpuThreads: r.cpuThreads,
    cpuIsa: r.cpuIsa as Runtime['cpuIsa'],
  };
}

const CPU: Device = Object.freeze({ kind: 'cpu', index: 0, name: 'cpu' });

/**
 * Resolves a device name (or undefined → MOEKIT_DEVICE → 'auto') to a usable device.
 * Throws RangeError for a malformed name and MoekitError ERR_CUDA_UNAVAILABLE when
 * CUDA is asked for and cannot be used.
 */
export function resolveDevice(spec: unknown, argName = 'device'): Device {
  let name = spec;
  let source = argName;
  if (name === undefined) {
    const env = process.env.MOEKIT_DEVICE;
    if (env !== undefined && env !== '') {
      name = env;
      source = 'the MOEKIT_DEVICE environment variable';
    } else {
      name = 'auto';
    }
  }
  const expected = "'cpu', 'cuda', 'cuda:N' or 'auto'";
  if (typeof name !== 'string') throw typeError(source, expected, name);
  if (name === 'cpu') return CPU;
  if (name === 'auto') {
    const r = native().runtime();
    return r.cudaUnavailableReason === null && r.devices.length > 0 ? cudaDevice(0) : CPU;
  }
  const m = /^cuda(?::(\d+))?$/.exec(name);
  if (m === null) throw rangeError(source, expected, name);
  const index = m[1] === undefined ? 0 : Number(m[1]);
  const r = native().runtime();
  if (r.cudaUnavailableReason !== null)
    throw new MoekitError(`${source} asks for ${name}, but CUDA is not usable: ${r.cudaUnavailableReason}`, 'ERR_CUDA_UNAVAILABLE');
  if (index >= r.devices.length)
    throw new MoekitError(`${source} asks for ${name}, but this machine has ${r.devices.length} CUDA device(s)`, 'ERR_CUDA_UNAVAILABLE');
  return cudaDevice(index);
}

function cudaDevice(index: number): Device {
  return Object.freeze({ kind: 'cuda', index, name: `cuda:${index}` });
}

/** The (kind, index) pair the native interface takes. */
export function deviceCodes(d: Device): [number, number] {
  return [d.kind === 'cuda' ? 1 : 0, d.index];
}

/** Parses a native device name ('cpu' / 'cuda:N'). */
export function deviceFromName(name: string): Device {
  if (name === 'cpu') return CPU;
  return cudaDevice(Number(name.slice(5)));
}

/** Memory of a CUDA device, from the driver and from moekit's stream-ordered pool. */
export interface DeviceMemory {
  /** Free device memory as the driver reports it (cudaMemGetInfo). */
  freeBytes: number;
  totalBytes: number;
  /** Bytes of moekit's allocations alive in the device's pool (tensors, in-flight scratch). */
  poolUsedBytes: number;
  /** Bytes the pool holds from the driver (used + cached for reuse). */
  poolReservedBytes: number;
  /** Bytes of CUDA graphs' own allocations (the layers' graph caches, profiles). */
  graphUsedBytes: number;
  /** Bytes the driver holds for CUDA graphs' allocations. */
  graphReservedBytes: number;
}

/**
 * Reports a CUDA device's memory; waits for work queued on it first, so frees made by
 * dispose() or finalizers are counted. ERR_UNSUPPORTED for the CPU.
 */
export function deviceMemory(device: string = 'cuda'): DeviceMemory {
  const d = resolveDevice(device, 'device');
  if (d.kind !== 'cuda') throw new MoekitError(`deviceMemory reports CUDA device memory; ${d.name} is not a CUDA device`, 'ERR_UNSUPPORTED');
  return native().deviceMemory(d.index);
}
