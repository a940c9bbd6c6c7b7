#!/usr/bin/env node
/**
 * CPU microbenchmarks: grouped GEMM and whole-layer forward at the presets' shapes,
 * with the roofline floor beside each time.
 *
 *   node bench/cpu.js [--tokens 1,16,128,512] [--presets olmoe-1b-7b,qwen3-30b-a3b] [--repeats 5]
 *                     [--peak-gflops G] [--bandwidth-gbs B]
 *
 * Floor = max(FLOPs / peak, bytes / bandwidth): FLOPs = 6·T·k·H·I (both projections),
 * bytes = the bf16 weights of the experts the routing touched + activations in and out.
 * Bandwidth: --bandwidth-gbs when given (e.g. a multi-threaded streaming-read figure
 * measured outside Node), else a 256 MiB memory copy measured here at start (one
 * thread, bytes read + written), which understates what all cores can read.
 * The compute peak defaults to PEAK_GFLOPS below; override it with --peak-gflops.
 */
'use strict';
const { MoELayer, Tensor, runtime } = require('..');

// NOTE: OpenBLAS sgemm (numpy 2.4, fp32 2048^3, best of 7) measured 196 GFLOP/s on the
// development machine (2 cores, AMD EPYC Zen 4, AVX-512): see docs/BENCHMARKS.md.
const PEAK_GFLOPS = 196;

const PRESETS = {
  'olmoe-1b-7b': { H: 2048, I: 1024, E: 64, k: 8 },
  'qwen3-30b-a3b': { H: 2048, I: 768, E: 128, k: 8 },
  'mixtral-8x7b': { H: 4096, I: 14336, E: 8, k: 2 },
};

function arg(name, def) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
}

function measureBandwidth() {
  const bytes = 256 * 2 ** 20;
  const a = Buffer.alloc(bytes, 1);
  const b = Buffer.alloc(bytes);
  let best = Infinity;
  for (let i = 0; i < 5; i++) {
    const t0 = process.hrtime.bigint();
    a.copy(b);
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return (2 * bytes) / best; // read + write
}

function randomBf16(n, std, seed) {
  const out = new Uint16Array(n);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (s * 1664525 + 1013904223) >>> 0;
    f[0] = ((s / 4294967296) * 2 - 1) * std;
    out[i] = u[0] >>> 16;
  }
  return out;
}

async function main() {
  const tokens = arg('tokens', '1,16,128,512').split(',').map(Number);
  const presets = arg('presets', 'olmoe-1b-7b,qwen3-30b-a3b').split(',');
  const repeats = Number(arg('repeats', '5'));
  const peak = Number(arg('peak-gflops', String(PEAK_GFLOPS))) * 1e9;
  const givenBw = arg('bandwidth-gbs', undefined);
  const bw = givenBw !== undefined ? Number(givenBw) * 1e9 : measureBandwidth();
  if (!(bw > 0)) throw new Error(`--bandwidth-gbs must be a positive number, got ${givenBw}`);
  const bwLabel = givenBw !== undefined ? 'bandwidth (given)' : 'memory copy';
  const r = runtime();
  console.log(`device: cpu (${r.cpuThreads} threads) | ${bwLabel} ${(bw / 1e9).toFixed(1)} GB/s | compute peak ${(peak / 1e9).toFixed(0)} GFLOP/s`);
  console.log('preset          T      median ms  spread ms  GFLOP/s  GB/s    floor ms  eff');
  for (const name of presets) {
    const p = PRESETS[name];
    if (!p) throw new Error(`unknown preset ${name}`);
    const { H, I, E, k } = p;
    const layer = MoELayer.fromPreset('mixtral', { k }, { hidden: H, intermediate: I, experts: E }, {
      router: Tensor.from(randomBf16(E * H, 0.05, 1), [E, H], 'bf16'),
      gateUp: Tensor.from(randomBf16(E * 2 * I * H, 0.02, 2), [E, 2 * I, H], 'bf16'),
      down: Tensor.from(randomBf16(E * H * I, 0.02, 3), [E, H, I], 'bf16'),
    }, { ownsWeights: true, device: 'cpu' });
    for (const T of tokens) {
      const x = Tensor.from(randomBf16(T * H, 1, 4 + T), [T, H], 'bf16');
      const times = [];
      let touched = 0;
      for (let i = 0; i < repeats + 1; i++) {
        const t0 = process.hrtime.bigint();
        const { output, routing } = await layer.forward(x, { returnRouting: true });
        const dt = Number(process.hrtime.bigint() - t0) / 1e6;
        if (i > 0) times.push(dt); // first run is warm-up
        touched = Array.from(routing.load.toArraySync()).filter((n) => n > 0).length;
        for (const t of [output, routing.ids, routing.weights, routing.load]) t.dispose();
      }
      times.sort((a, b) => a - b);
      const median = times[Math.floor(times.length / 2)];
      const flops = 6 * T * k * H * I + 2 * T * H * E;
      const bytes = touched * 3 * H * I * 2 + E * H * 2 + 2 * T * H * 2;
      const floor = Math.max(flops / peak, bytes / bw) * 1e3;
      console.log(
        `${name.padEnd(15)} ${String(T).padStart(5)}  ${median.toFixed(2).padStart(9)}  ${(times[times.length - 1] - times[0]).toFixed(2).padStart(9)}  ${(flops / median / 1e6).toFixed(1).padStart(7)}  ${(bytes / median / 1e6).toFixed(1).padStart(6)}  ${floor.toFixed(2).padStart(8)}  ${(floor / median).toFixed(2)}`,
      );
      x.dispose();
    }
    layer.dispose();
  }
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
