/** GPU test gate: a test file calls describeGpu(...) and is skipped, with the reason printed, without a usable CUDA device. */
import { runtime } from '../../lib';

/** Why GPU tests cannot run here, or null when they can. */
export function gpuSkipReason(): string | null {
  const r = runtime();
  if (!r.compiledWithCuda) return 'this moekit binary was built without the CUDA backend';
  if (!r.backends.includes('cuda')) return r.cudaUnavailableReason ?? 'no usable CUDA device';
  return null;
}

/**
 * describe() when a CUDA device is usable; describe.skip() with the reason printed otherwise.
 * `extraSkipReason` (checked after the device) skips for a further reason of the caller's.
 */
export function describeGpu(name: string, fn: () => void, extraSkipReason: () => string | null = () => null): void {
  const reason = gpuSkipReason() ?? extraSkipReason();
  if (reason === null) {
    describe(name, fn);
    return;
  }
  process.stdout.write(`[test/gpu] skipping "${name}": ${reason}\n`);
  describe.skip(`${name} (skipped: ${reason})`, fn);
}

/**
 * Token counts the GPU tests sweep. MOEKIT_GPU_QUICK=1 keeps the small ones, for runs
 * under compute-sanitizer (scripts/gpu-check.sh), which are ~100x slower.
 */
export const GPU_TOKENS: readonly number[] = process.env.MOEKIT_GPU_QUICK ? [1, 7, 128] : [1, 7, 128, 4096, 16384];

/**
 * Elementwise check in one assertion (a per-element expect() costs microseconds, and the
 * GPU tests compare millions of elements): null when |got[i] - want[i]| <= tol(i) for every
 * i, else the count of failures and the first few, for `expect(...).toBeNull()`. NaN fails.
 */
export function mismatches(got: ArrayLike<number>, want: ArrayLike<number>, tol: (i: number) => number, label = ''): string | null {
  if (got.length !== want.length) return `${label}: length ${got.length}, expected ${want.length}`;
  let count = 0;
  const first: string[] = [];
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i] - want[i]);
    if (err <= tol(i)) continue;
    if (count++ < 5) first.push(`[${i}] got ${got[i]}, want ${want[i]} (tol ${tol(i)})`);
  }
  return count === 0 ? null : `${label}: ${count} of ${want.length} elements differ; first: ${first.join('; ')}`;
}

/** Exact comparison of integer arrays in one assertion: null when equal, else the first difference. */
export function intMismatch(got: ArrayLike<number>, want: ArrayLike<number>, label = ''): string | null {
  if (got.length !== want.length) return `${label}: length ${got.length}, expected ${want.length}`;
  for (let i = 0; i < want.length; i++) if (got[i] !== want[i]) return `${label}: [${i}] got ${got[i]}, want ${want[i]}`;
  return null;
}
