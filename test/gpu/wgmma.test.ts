/**
 * The Hopper grouped GEMM (kernels/cuda/grouped_gemm_sm90.cu, wgmma) against the CPU
 * backend. The path is opt-in (MOEKIT_WGMMA=1) until it has passed here on an H100, so
 * this file runs only with MOEKIT_WGMMA=1 or =require on a compute capability 9.0 device
 * (scripts/gpu-check.sh, step "wgmma", uses require: a fallback to the mma.sync kernel
 * is then an error, so a pass is the wgmma kernel's); otherwise it is skipped with the
 * reason printed. With MOEKIT_WGMMA_TMA=1 as well it checks the TMA-fed variant of the same
 * kernel (scripts/gpu-check.sh, step "wgmma-tma"; its kHalves tiles order their columns
 * differently, [128 gate | 128 up], so the halves and two-matrix cases matter there).
 *
 * Shapes aim at the kernel's edges: experts averaging >= 128 rows (the condition for
 * 128-row tiles), row counts that are not multiples of 128, empty experts and decode-sized
 * ones beside them, K a multiple of 8 but not of 64 (a zero-filled K tail), column counts
 * that leave the last 256-column block partly empty, every column mode (plain,
 * interleaved, halves, two matrices), biases and row scales.
 */
import { runtime } from '../../lib';
import { testSeed } from '../helpers';
import { Rng } from '../reference';
import { describeGpu } from './gpu';
import { GEMM_CASES, caseName, compareGroupedGemm } from './gemm-compare';

const seed = testSeed('gpu-wgmma');

function hopperSkipReason(): string | null {
  const mode = process.env.MOEKIT_WGMMA;
  if (mode !== '1' && mode !== 'require') return 'MOEKIT_WGMMA is not 1 or require (the wgmma path is opt-in)';
  const d = runtime().devices[0];
  if (d !== undefined && d.computeCapability !== '9.0') return `device 0 is compute capability ${d.computeCapability}, not 9.0`;
  return null;
}

describeGpu('wgmma grouped GEMM matches the CPU backend', () => {
  // [experts' row counts, K, N]: rows >= 128 * E in every one.
  const shapes: [number[], number, number][] = [
    [[257, 0, 700, 5], 200, 600], // K tail of 8, three column blocks, an empty and a decode-sized expert
    [[128, 384], 64, 256], // exact tiles: one K step, one full column block
    [[300, 129, 1], 1032, 520], // K = 16 * 64 + 8, N past two blocks by 8
    [[1100], 4096, 512], // a long K loop (64 steps) through the 4-stage pipeline
  ];
  for (const dtype of ['bf16', 'f16'] as const)
    GEMM_CASES.forEach((c, ci) =>
      test(caseName(dtype, c), async () => {
        const rng = new Rng(seed ^ (dtype === 'bf16' ? 0x90 : 0x91) ^ (ci << 8));
        // x pre-rounded to the weight dtype (the tensor-core path rounds it); the bound
        // covers f32 accumulation in another order.
        for (const [sizes, K, N] of shapes) expect(await compareGroupedGemm(rng, dtype, c, sizes, K, N, { roundX: true, tol: 1e-4 })).toBeNull();
      }),
    );
}, hopperSkipReason);
