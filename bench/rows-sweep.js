#!/usr/bin/env node
/**
 * Grouped GEMM with every expert given exactly m rows, for a list of m: the sweep the
 * CPU kernel's per-path row limits were chosen from (docs/BENCHMARKS.md). Not a test and
 * not in the package.
 *
 *   node bench/rows-sweep.js [--experts 32] [--k 2048] [--n 768] [--act swiglu|none]
 *                            [--rows 1,2,4,6,7,8,12,16,24,32] [--dtype bf16] [--repeats 7]
 *                            [--device cpu] [--layout enk|ekn]
 *
 * W is [E, 2n, K] for a GLU activation (gate and up halves), else [E, n, K]; [E, K, ...]
 * with --layout ekn. Prints the
 * median of the timed calls, GFLOP/s and the weight bytes read per second. Compare two
 * builds by running it with MOEKIT_BINARY pointing at each, alternately.
 */
'use strict';
const { Tensor, groupedGemm } = require('..');

function arg(name, def) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}
function int(name, def) {
  const v = Number(arg(name, String(def)));
  if (!Number.isInteger(v) || v < 1) throw new Error(`--${name}: expected a positive integer, got ${arg(name, def)}`);
  return v;
}

async function onDevice(t, device) {
  if (device === 'cpu') return t;
  const moved = await t.to(device);
  t.dispose();
  return moved;
}

async function main() {
  const E = int('experts', 32);
  const K = int('k', 2048);
  const N = int('n', 768);
  const act = arg('act', 'swiglu');
  const dtype = arg('dtype', 'bf16');
  const device = arg('device', 'cpu');
  const layout = arg('layout', 'enk');
  if (layout !== 'enk' && layout !== 'ekn') throw new Error(`--layout: expected enk or ekn, got ${layout}`);
  const repeats = int('repeats', 7);
  const rowsList = arg('rows', '1,2,4,6,7,8,12,16,24,32').split(',').map(Number);
  if (rowsList.some((r) => !Number.isInteger(r) || r < 1)) throw new Error(`--rows: expected positive integers, got ${arg('rows')}`);
  const wRows = act === 'none' ? N : 2 * N;
  const wData = new Float32Array(E * wRows * K);
  for (let i = 0; i < wData.length; i++) wData[i] = Math.sin(i * 0.37) / Math.sqrt(K);
  const w = await onDevice(Tensor.from(wData, layout === 'enk' ? [E, wRows, K] : [E, K, wRows], dtype), device);
  const bytesPerWeight = dtype === 'f32' ? 4 : 2;
  console.log(`E ${E}, K ${K}, W rows ${wRows} (${act}), ${layout}, ${dtype}, ${device}, median of ${repeats}`);
  for (const m of rowsList) {
    const rows = E * m;
    const xData = new Float32Array(rows * K);
    for (let i = 0; i < xData.length; i++) xData[i] = Math.cos(i * 0.11);
    const offsets = new Int32Array(E + 1);
    for (let e = 0; e <= E; e++) offsets[e] = e * m;
    const x = await onDevice(Tensor.from(xData, [rows, K]), device);
    const off = await onDevice(Tensor.from(offsets, [E + 1]), device);
    const run = async () => (await groupedGemm(x, off, w, { activation: act, layout })).dispose();
    for (let i = 0; i < 2; i++) await run();
    const times = [];
    for (let i = 0; i < repeats; i++) {
      const t0 = process.hrtime.bigint();
      await run();
      times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    times.sort((a, b) => a - b);
    const ms = times[Math.floor(times.length / 2)];
    const gflops = (2 * rows * wRows * K) / ms / 1e6;
    const gbs = (E * wRows * K * bytesPerWeight) / ms / 1e6;
    console.log(`rows/expert ${String(m).padStart(4)}  ${ms.toFixed(2).padStart(9)} ms  ${gflops.toFixed(1).padStart(7)} GFLOP/s  ${gbs.toFixed(1).padStart(6)} GB/s`);
    x.dispose();
    off.dispose();
  }
  w.dispose();
}

main().catch((err) => {
  console.error(err.message);
  process.exitCode = 1;
});
