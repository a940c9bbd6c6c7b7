/**
 * The Hopper grouped GEMM (kernels/cuda/grouped_gemm_sm90.cu, wgmma) against the CPU
 * backend. The path is opt-in (MOEKIT_WGMMA=1) until it has passed here on an H100, so
 * this file runs only with MOEKIT_WGMMA=1 or =require on a compute capability 9.0 device
 * (scripts/gpu-check.sh, step "wgmma", uses require: a fallback to the mma.sync kernel
 * is then an error, so a pass is the wgmma kernel's); otherwise it is skipped with the
 * reason printed.
 *
 * Shapes aim at the kernel's edges: experts averaging >= 128 rows (the condition for
 * 128-row tiles), row counts that are not multiples of 128, empty experts and decode-sized
 * ones beside them, K a multiple of 8 but not of 64 (a zero-filled K tail), column counts
 * that leave the last 256-column block partly empty, every column mode (plain,
 * interleaved, halves, two matrices), biases and row scales.
 */
import { Tensor, groupedGemm, runtime } from '../../lib';
import type { Activation, GroupedGemmOptions } from '../../lib';
import { testSeed } from '../helpers';
import { Rng, roundTo } from '../reference';
import { describeGpu, mismatches } from './gpu';

const seed = testSeed('gpu-wgmma');

function hopperSkipReason(): string | null {
  const mode = process.env.MOEKIT_WGMMA;
  if (mode !== '1' && mode !== 'require') return 'MOEKIT_WGMMA is not 1 or require (the wgmma path is opt-in)';
  const d = runtime().devices[0];
  if (d !== undefined && d.computeCapability !== '9.0') return `device 0 is compute capability ${d.computeCapability}, not 9.0`;
  return null;
}

describeGpu('wgmma grouped GEMM matches the CPU backend', () => {
  const cases: { act: Activation; two?: boolean; bias?: boolean; scale?: boolean }[] = [
    { act: 'none', bias: true, scale: true },
    { act: 'swiglu' },
    { act: 'swiglu', two: true, bias: true },
    { act: 'swiglu-interleaved', scale: true },
    { act: 'gpt-oss-swiglu', bias: true },
    { act: 'geglu', two: true },
    { act: 'gelu' },
  ];
  // [experts' row counts, K, N]: rows >= 128 * E in every one.
  const shapes: [number[], number, number][] = [
    [[257, 0, 700, 5], 200, 600], // K tail of 8, three column blocks, an empty and a decode-sized expert
    [[128, 384], 64, 256], // exact tiles: one K step, one full column block
    [[300, 129, 1], 1032, 520], // K = 16 * 64 + 8, N past two blocks by 8
    [[1100], 4096, 512], // a long K loop (64 steps) through the 4-stage pipeline
  ];
  for (const dtype of ['bf16', 'f16'] as const)
    for (const c of cases)
      test(`${dtype} ${c.act}${c.two ? ' (two matrices)' : ''}${c.bias ? ' + bias' : ''}${c.scale ? ' + row scale' : ''}`, async () => {
        const rng = new Rng(seed ^ (dtype === 'bf16' ? 0x90 : 0x91) ^ (cases.indexOf(c) << 8));
        for (const [sizes, K, N] of shapes) {
          const E = sizes.length;
          const offsets = new Int32Array(E + 1);
          for (let e = 0; e < E; e++) offsets[e + 1] = offsets[e] + sizes[e];
          const rows = offsets[E];
          // x pre-rounded to the weight dtype: the tensor-core path rounds it, the CPU does not.
          const x = Tensor.from(Float32Array.from(roundTo(Float64Array.from({ length: rows * K }, () => rng.normal()), dtype)), [rows, K]);
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
          const cpu = await groupedGemm(x, offs, w, opts);
          const onGpu: GroupedGemmOptions = { ...opts };
          for (const key of ['wUp', 'bias', 'biasUp', 'rowScale'] as const) {
            const t = opts[key];
            if (t !== undefined) onGpu[key] = await t.to('cuda');
          }
          const gpu = await groupedGemm(await x.to('cuda'), await offs.to('cuda'), await w.to('cuda'), onGpu);
          const [cy, gy] = [await cpu.toFloat32(), await gpu.toFloat32()];
          let scale = 0;
          for (const v of cy) scale = Math.max(scale, Math.abs(v));
          // Same inputs on both sides; the bound covers f32 accumulation in another order.
          expect(mismatches(gy, cy, () => 1e-4 * (scale + 1), `${dtype} ${c.act} sizes=${sizes} K=${K} N=${N}`)).toBeNull();
          for (const t of [x, w, offs, cpu, gpu, ...Object.values(opts).filter((v): v is Tensor => v instanceof Tensor), ...Object.values(onGpu).filter((v): v is Tensor => v instanceof Tensor && v.device.kind === 'cuda')])
            if (!t.disposed) t.dispose();
        }
      });
}, hopperSkipReason);
