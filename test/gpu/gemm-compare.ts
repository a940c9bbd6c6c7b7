/**
 * Shared by the opt-in grouped GEMM kernel tests (wgmma.test.ts, skinny.test.ts): one
 * grouped GEMM on the CPU backend and on the GPU with the same inputs, compared
 * elementwise. Not a test file itself.
 */
import { Tensor, groupedGemm } from '../../lib';
import type { Activation, GroupedGemmOptions } from '../../lib';
import { Rng, roundTo } from '../reference';
import { mismatches } from './gpu';

/** Column modes, biases and row scales the kernels' epilogues must all get right. */
export interface GemmCase {
  act: Activation;
  two?: boolean;
  bias?: boolean;
  scale?: boolean;
}

export const GEMM_CASES: readonly GemmCase[] = [
  { act: 'none', bias: true, scale: true },
  { act: 'swiglu' },
  { act: 'swiglu', two: true, bias: true },
  { act: 'swiglu-interleaved', scale: true },
  { act: 'gpt-oss-swiglu', bias: true },
  { act: 'geglu', two: true },
  { act: 'gelu' },
];

export function caseName(dtype: string, c: GemmCase): string {
  return `${dtype} ${c.act}${c.two ? ' (two matrices)' : ''}${c.bias ? ' + bias' : ''}${c.scale ? ' + row scale' : ''}`;
}

/**
 * Runs experts with `sizes` rows, [E, N, K] weights, on both backends and returns
 * mismatches(...) of the outputs (null when all agree). With roundX, x is pre-rounded
 * to the weight dtype (the tiled tensor-core paths round it; the CPU does not); x is
 * drawn from N(0, xScale²) (default 1). The bound is tol * (max |output| + tolFloor)
 * (tolFloor default 1; 0 makes it purely relative, for small outputs).
 */
export async function compareGroupedGemm(
  rng: Rng,
  dtype: 'bf16' | 'f16',
  c: GemmCase,
  sizes: readonly number[],
  K: number,
  N: number,
  o: { roundX: boolean; tol: number; xScale?: number; tolFloor?: number },
): Promise<string | null> {
  const E = sizes.length;
  const offsets = new Int32Array(E + 1);
  for (let e = 0; e < E; e++) offsets[e + 1] = offsets[e] + sizes[e];
  const rows = offsets[E];
  const xs = Float64Array.from({ length: rows * K }, () => rng.normal(0, o.xScale ?? 1));
  const x = Tensor.from(Float32Array.from(o.roundX ? roundTo(xs, dtype) : xs), [rows, K]);
  const mat = () => Tensor.from(Float32Array.from({ length: E * N * K }, () => rng.normal(0, 1 / Math.sqrt(K))), [E, N, K], dtype);
  const vec = () => Tensor.from(Float32Array.from({ length: E * N }, () => rng.normal(0, 0.5)), [E, N], dtype);
  const opts: GroupedGemmOptions = { layout: 'enk', activation: c.act };
  const w = mat();
  if (c.two) opts.wUp = mat();
  if (c.bias) {
    opts.bias = vec();
    if (c.two) opts.biasUp = vec();
  }
  if (c.scale) opts.rowScale = Tensor.from(Float32Array.from({ length: rows }, () => rng.uniform(-2, 2)), [rows]);
  const offs = Tensor.from(offsets, [E + 1]);
  const owned: Tensor[] = [x, w, offs, ...Object.values(opts).filter((v): v is Tensor => v instanceof Tensor)];
  try {
    const cpu = await groupedGemm(x, offs, w, opts);
    owned.push(cpu);
    const onGpu: GroupedGemmOptions = { ...opts };
    for (const key of ['wUp', 'bias', 'biasUp', 'rowScale'] as const) {
      const t = opts[key];
      if (t !== undefined) owned.push((onGpu[key] = await t.to('cuda')));
    }
    const args = [await x.to('cuda'), await offs.to('cuda'), await w.to('cuda')] as const;
    owned.push(...args);
    const gpu = await groupedGemm(args[0], args[1], args[2], onGpu);
    owned.push(gpu);
    const [cy, gy] = [await cpu.toFloat32(), await gpu.toFloat32()];
    let scale = 0;
    for (const v of cy) scale = Math.max(scale, Math.abs(v));
    const bound = o.tol * (scale + (o.tolFloor ?? 1));
    return mismatches(gy, cy, () => bound, `${caseName(dtype, c)} sizes=${sizes} K=${K} N=${N}${o.xScale !== undefined ? ` xScale=${o.xScale}` : ''}`);
  } finally {
    for (const t of owned) if (!t.disposed) t.dispose();
  }
}
