/** GPU test gate: a test file calls describeGpu(...) and is skipped, with the reason printed, without a usable CUDA device. */
import { runtime } from '../../lib';

/** Why GPU tests cannot run here, or null when they can. */
export function gpuSkipReason(): string | null {
  const r = runtime();
  if (!r.compiledWithCuda) return 'this moekit binary was built without the CUDA backend';
  if (!r.backends.includes('cuda')) return r.cudaUnavailableReason ?? 'no usable CUDA device';
  return null;
}

/** describe() when a CUDA device is usable; describe.skip() with the reason printed otherwise. */
export function describeGpu(name: string, fn: () => void): void {
  const reason = gpuSkipReason();
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
