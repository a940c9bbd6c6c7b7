#!/usr/bin/env node
// Step-by-step CUDA smoke check with a line per step (printed before the step runs, so a
// hang names its step): every op at small and large sizes against the CPU backend.
// Run on a GPU machine after `npm run prepare`: node scripts/gpu-smoke.js
'use strict';
const m = require('../dist');
const t0 = Date.now();
let step = '';
const say = (s) => { step = s; process.stdout.write(`[${((Date.now() - t0) / 1000).toFixed(2)}s] ${s}\n`); };
const watchdog = setInterval(() => process.stdout.write(`  ... still in: ${step}\n`), 5000);
function maxDiff(a, b) { let d = 0; for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i])); return d; }
function firstIntDiff(a, b) { for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return `[${i}] ${a[i]} vs ${b[i]}`; return a.length === b.length ? 'equal' : 'length differs'; }
let seed = 12345;
const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32) - 0.5;
async function main() {
  say('runtime'); console.log(JSON.stringify(m.runtime()));
  const only = process.env.MOEKIT_SMOKE_ONLY;
  if (!only || only === 'gate') for (const [T, E] of [[1, 8], [7, 64], [128, 128], [4096, 257], [16384, 257]]) {
    say(`gate T=${T} E=${E}: make tensors`);
    const host = m.Tensor.from(Float32Array.from({ length: T * E }, rnd), [T, E], 'bf16');
    say('  host.to(cuda)'); const dev = await host.to('cuda');
    for (const opts of [{}, { renormalize: true }, { selection: 'top-p', topP: 0.7 }, { selection: 'topk-logits-softmax' }, { selection: 'sinkhorn', sinkhornIters: 3 }, { selection: 'expert-choice', capacityFactor: 1.25, choiceK: 2 }, { scoring: 'sigmoid' }]) {
      const k = Math.min(8, E);
      say(`  gate cpu ${JSON.stringify(opts)}`); const c = await m.gate(host, { k, ...opts });
      say('  gate cuda'); const g = await m.gate(dev, { k, ...opts });
      say('  read ids'); const ci = await c.ids.toArray(); const gi = await g.ids.toArray();
      say('  read weights'); const cw = await c.weights.toFloat32(); const gw = await g.weights.toFloat32();
      console.log(`    ids ${firstIntDiff(gi, ci)}; weights max diff ${maxDiff(gw, cw).toExponential(2)}`);
    }
    say(`dispatch T=${T} E=${E}`);
    const ids = m.Tensor.from(Int32Array.from({ length: T * Math.min(8, E) }, (_, i) => (i * 7919) % E), [T, Math.min(8, E)]);
    const dc = await m.dispatch(ids, { experts: E }); const dg = await m.dispatch(await ids.to('cuda'), { experts: E });
    for (const key of ['counts', 'offsets', 'sortedPairs', 'pairToRow']) console.log(`    ${key} ${firstIntDiff(await dg[key].toArray(), await dc[key].toArray())}`);
  }
  if (!only || only === 'gemm') for (const [E, K, N, rows] of [[8, 256, 256, 4], [4, 512, 192, 1200], [8, 4096, 2048, 8192]]) {
    say(`groupedGemm E=${E} K=${K} N=${N} rows=${rows}`);
    const offs = Int32Array.from({ length: E + 1 }, (_, e) => Math.floor((rows * e) / E));
    // x is f32, pre-rounded to bf16 so both backends see the same operands.
    const x = m.Tensor.from(m.Tensor.from(Float32Array.from({ length: rows * K }, rnd), [rows, K], 'bf16').toFloat32Sync(), [rows, K]);
    const w = m.Tensor.from(Float32Array.from({ length: E * N * K }, () => rnd() / 8), [E, N, K], 'bf16');
    const o = m.Tensor.from(offs, [E + 1]);
    for (const activation of ['swiglu', 'none']) {
      say(`  cpu ${activation}`); const c = await (await m.groupedGemm(x, o, w, { activation })).toFloat32();
      say(`  cuda ${activation}`); const g = await (await m.groupedGemm(await x.to('cuda'), await o.to('cuda'), await w.to('cuda'), { activation })).toFloat32();
      let s = 0; for (const v of c) s = Math.max(s, Math.abs(v));
      console.log(`    max diff ${maxDiff(g, c).toExponential(2)} (scale ${s.toExponential(2)})`);
    }
  }
  say('layer');
  if (!only || only === 'layer') for (const [H, I, E, k] of [[256, 512, 8, 2], [256, 96, 128, 8]]) {
    const w = { router: m.Tensor.from(Float32Array.from({ length: E * H }, rnd), [E, H], 'bf16'), gateUp: m.Tensor.from(Float32Array.from({ length: E * 2 * I * H }, () => rnd() / 8), [E, 2 * I, H], 'bf16'), down: m.Tensor.from(Float32Array.from({ length: E * H * I }, () => rnd() / 8), [E, H, I], 'bf16') };
    const cpu = m.MoELayer.fromPreset('mixtral', { k }, { hidden: H, intermediate: I, experts: E }, w, { device: 'cpu' });
    say(`  layer H=${H} E=${E}: construct on cuda`);
    const gpu = m.MoELayer.fromPreset('mixtral', { k }, { hidden: H, intermediate: I, experts: E }, w, { device: 'cuda' });
    for (const T of [1, 7, 128, 4096, 16384]) {
      const x = m.Tensor.from(Float32Array.from({ length: T * H }, rnd), [T, H], 'bf16');
      say(`  T=${T} cpu`); const c = await (await cpu.forward(x, { outputDtype: 'f32' })).toFloat32();
      say(`  T=${T} cuda`); const g = await (await gpu.forward(x, { outputDtype: 'f32' })).toFloat32();
      let s = 0; for (const v of c) s = Math.max(s, Math.abs(v));
      console.log(`    max diff ${maxDiff(g, c).toExponential(2)} (scale ${s.toExponential(2)})`);
    }
  }
  say('done');
}
main().then(() => { clearInterval(watchdog); process.exit(0); }, (e) => { clearInterval(watchdog); console.log('ERROR in', step, e && e.stack); process.exit(1); });
