#!/usr/bin/env node
// Layout diagnosis for the Hopper wgmma grouped GEMM (kernels/cuda/grouped_gemm_sm90.cu),
// written without a GPU: runs it on inputs whose every output names the weight element it
// came from, so a wrong swizzle, descriptor or accumulator mapping shows as a pattern
// rather than as random differences.
//
//   x[r, k] = 1 if k == r % K else 0   (one-hot rows)
//   W[n, k] = 16 * (n % 16) + (k % 16)  (exact in bf16 and f16: integers <= 255)
//   so y[r, n] = W[n, r % K] = 16 * (n % 16) + (r % K) % 16.
//
// A wrong value v decodes as "came from column n' = v >> 4 (mod 16), k' = v & 15 (mod 16)";
// the script prints how often each (n' - n, k' - k) offset (mod 16) occurs, the first few
// differences, and whether whole rows or column blocks are wrong.
// Run on the GPU machine after `npm run prepare`:
//   MOEKIT_WGMMA=require node scripts/gpu-wgmma-diag.js
// (without MOEKIT_WGMMA it checks the mma.sync kernel on the same inputs, as a control).
'use strict';
const m = require('../dist');

async function run(dtype, rows, K, N) {
  const x = new Float32Array(rows * K);
  for (let r = 0; r < rows; r++) x[r * K + (r % K)] = 1;
  const w = new Float32Array(N * K);
  for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) w[n * K + k] = 16 * (n % 16) + (k % 16);
  const xt = await m.Tensor.from(x, [rows, K]).to('cuda');
  const wt = await m.Tensor.from(w, [1, N, K], dtype).to('cuda');
  const offs = await m.Tensor.from(Int32Array.from([0, rows]), [2]).to('cuda');
  const y = await (await m.groupedGemm(xt, offs, wt, { layout: 'enk', activation: 'none' })).toFloat32();
  let bad = 0;
  let zeros = 0;
  const offsets = new Map();
  const badRows = new Set();
  const badBlocks = new Set();
  const first = [];
  for (let r = 0; r < rows; r++)
    for (let n = 0; n < N; n++) {
      const want = 16 * (n % 16) + ((r % K) % 16);
      const v = y[r * N + n];
      if (v === want) continue;
      bad++;
      if (v === 0) zeros++;
      badRows.add(r);
      badBlocks.add(`${Math.floor(r / 64)}x${Math.floor(n / 8)}`);
      if (Number.isInteger(v) && v >= 0 && v < 256) {
        const key = `dn=${(((v >> 4) - (n % 16)) + 16) % 16} dk=${(((v & 15) - ((r % K) % 16)) + 16) % 16}`;
        offsets.set(key, (offsets.get(key) ?? 0) + 1);
      } else {
        offsets.set('not an element', (offsets.get('not an element') ?? 0) + 1);
      }
      if (first.length < 8) first.push(`y[${r},${n}] = ${v}, want ${want}`);
    }
  const total = rows * N;
  console.log(`${dtype} rows=${rows} K=${K} N=${N}: ${bad} of ${total} outputs wrong` + (bad ? ` (${zeros} zero; ${badRows.size} rows; ${badBlocks.size} 64-row x 8-column blocks)` : ''));
  if (bad) {
    console.log('  offsets (mod 16) of the element found instead:', [...offsets.entries()].sort((a, b) => b[1] - a[1]).slice(0, 10).map(([k, c]) => `${k}: ${c}`).join('; '));
    console.log('  first:', first.join('; '));
  }
  for (const t of [xt, wt, offs]) t.dispose();
  return bad;
}

async function main() {
  console.log(`MOEKIT_WGMMA=${process.env.MOEKIT_WGMMA ?? '(unset)'} MOEKIT_WGMMA_TMA=${process.env.MOEKIT_WGMMA_TMA ?? '(unset)'}; device ${JSON.stringify(m.runtime().devices[0] ?? null)}`);
  let bad = 0;
  // One tile; then K tails, several K steps, several row tiles and column blocks.
  for (const [rows, K, N] of [[128, 64, 256], [256, 128, 512], [300, 200, 600], [1024, 1032, 264]])
    for (const dtype of ['bf16', 'f16']) {
      try {
        bad += await run(dtype, rows, K, N);
      } catch (err) {
        bad++;
        console.log(`${dtype} rows=${rows} K=${K} N=${N}: threw ${err.code ?? ''} ${err.message}`);
      }
    }
  console.log(bad === 0 ? 'all outputs exact' : 'layout errors found (see above)');
  process.exitCode = bad === 0 ? 0 : 1;
}
main().catch((err) => {
  console.error(err);
  process.exitCode = 2;
});
