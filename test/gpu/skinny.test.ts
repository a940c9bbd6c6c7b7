/**
 * The skinny grouped GEMM (kernels/cuda/grouped_gemm_skinny.cu: experts with 3..16 rows
 * of bf16/f16 [E, N, K] weights, tensor cores fed straight from global memory) against
 * the CPU backend. The path is opt-in (MOEKIT_SKINNY=1) until it has passed here on a GPU,
 * so this file runs only with MOEKIT_SKINNY=1 or =require (scripts/gpu-check.sh, step
 * "optin", uses require: a decline is then an error, so a pass is the skinny kernel's);
 * otherwise it is skipped with the reason printed.
 *
 * Two parts. With x as drawn (not rounded to 16 bits) and experts of at most 16 rows, the
 * outputs must match the CPU's f32-x results to a bound 20x tighter than x's bf16 rounding
 * (4-10x tighter than f16's) would allow: that checks the hi + lo split of x, not only the
 * fragment layout; once more with |x| ~ 1e-3 and a purely relative bound. With x
 * pre-rounded, experts of every size side by side (0, 1..2 rows for the GEMV kernel,
 * 3..16 for this one, 17 and more for the tiled kernels, which then start at 17 rows).
 * scripts/gpu-check.sh runs this file with MOEKIT_TC_STAGES=3 as well, so its 64-row
 * tiles (the mixed shapes) check that opt-in's 3-stage pipeline too.
 * Shapes aim at the kernel's edges: K = 8 (one chunk: three of a lane quad's chunks past
 * K), K = 40 (a partial second k-step), an odd number of k-steps (the two k-slices get
 * different counts), a long K loop, column counts that leave the last 128-column block
 * partly empty, every column mode, biases and row scales.
 */
import { testSeed } from '../helpers';
import { Rng } from '../reference';
import { describeGpu } from './gpu';
import { GEMM_CASES, caseName, compareGroupedGemm } from './gemm-compare';

const seed = testSeed('gpu-skinny');

function optInSkipReason(): string | null {
  const mode = process.env.MOEKIT_SKINNY;
  return mode === '1' || mode === 'require' ? null : 'MOEKIT_SKINNY is not 1 or require (the skinny path is opt-in)';
}

describeGpu('skinny grouped GEMM matches the CPU backend', () => {
  // [experts' row counts, K, N]
  const exact: [number[], number, number][] = [
    [[3, 0, 16, 1, 9, 2, 8], 40, 136], // every bucket edge up to 16; K = 32 + 8; one full block + 8 columns
    [[16, 16, 3], 8, 264], // K = 8: a single chunk
    [[5, 12], 1032, 520], // 33 k-steps (slice 0 gets 17, slice 1 gets 16); N past four blocks by 8
    [[7, 11, 4], 4096, 256], // a long K loop
  ];
  const mixed: [number[], number, number][] = [
    [[3, 17, 0, 40, 2, 16, 200], 200, 264], // every kernel of a call at once (GEMV, skinny, tiled 64-row tiles)
    [[9, 600, 16, 1], 520, 136], // rows >= 128 E: 128-row tiles (or wgmma) beside skinny experts
    [[20, 3], 24, 136], // a single k-tile in the 64-row tiles (fewer tiles than MOEKIT_TC_STAGES=3's prologue requests)
  ];
  for (const dtype of ['bf16', 'f16'] as const)
    GEMM_CASES.forEach((c, ci) =>
      test(caseName(dtype, c), async () => {
        const rng = new Rng(seed ^ (dtype === 'bf16' ? 0x5a : 0x5b) ^ (ci << 8));
        for (const [sizes, K, N] of exact) expect(await compareGroupedGemm(rng, dtype, c, sizes, K, N, { roundX: false, tol: 5e-5 })).toBeNull();
        // Small x (|x| ~ 1e-3; f16's lo part is scaled to stay out of its subnormals), bound
        // relative to the outputs' own magnitude.
        expect(await compareGroupedGemm(rng, dtype, c, [4, 13], 1032, 136, { roundX: false, tol: 5e-5, xScale: 1e-3, tolFloor: 0 })).toBeNull();
        for (const [sizes, K, N] of mixed) expect(await compareGroupedGemm(rng, dtype, c, sizes, K, N, { roundX: true, tol: 1e-4 })).toBeNull();
      }),
    );
}, optInSkipReason);
