/**
 * `moekit bench offload`: a preset's whole MoE layer stack with host-resident experts
 * (random weights, an ExpertStore over host tensors) and a device expert cache holding a
 * fraction of them, routing forced from a trace. Reports tokens/s next to two floors:
 * - transfer floor: bytes the cache moved / measured host-to-device bandwidth (on the
 *   CPU: memory-copy bandwidth, the same copy path the cache uses);
 * - HBM floor: expert bytes the forwards read (each used expert once per forward) plus
 *   the resident weights / measured device memory bandwidth (a device-to-device copy;
 *   on the CPU, the same memory-copy bandwidth).
 * The lead wires `runOffloadBenchCli` into `moekit bench offload`.
 */
import { resolveDevice } from '../device';
import { BENCH_PRESETS } from '../bench/shapes';
import { readTrace, RoutingTrace } from '../cache/trace';
import { POLICY_NAMES } from '../cache/policy';
import { preset } from '../presets';
import { Tensor } from '../tensor';
import { ExpertStore, ExpertTensors, copyTensorRanges } from './store';
import { OffloadedMoE, ResidentWeights } from './model';

export const OFFLOAD_BENCH_USAGE = `Usage: moekit bench offload --preset NAME [options]

  --preset NAME           ${Object.keys(BENCH_PRESETS).join(', ')}
  --cache-fraction F      share of each layer's experts the cache holds, in (0, 1] (default 0.25)
  --trace FILE            routing trace (NAME, NAME.u8 or NAME.json); default uniform random routing
  --layers N              MoE layers to run (default: the trace's, else 4)
  --experts-scale S       scale the expert width (intermediate size) by S in (0, 1] (default 1)
  --tokens N              tokens to replay (default: min(trace tokens, 64))
  --batch B               tokens per forward (default 1: decode)
  --policy P              ${POLICY_NAMES.filter((p) => p !== 'belady').join(', ')} (default lru)
  --shared                one cache shared by all layers (default: one per layer)
  --prefetch MODE         none, affinity, layerwise or pregating (default none)
  --device D              cpu, cuda, cuda:N (default cpu)
  --json                  print one JSON object
`;

class UsageError extends Error {}

interface Args {
  preset: string;
  fraction: number;
  trace?: string;
  layers?: number;
  scale: number;
  tokens?: number;
  batch: number;
  policy: string;
  perLayer: boolean;
  prefetch: 'none' | 'affinity' | 'layerwise' | 'pregating';
  device: string;
  json: boolean;
}

function parseArgs(argv: string[]): Args | 'help' {
  const a: Args = { preset: '', fraction: 0.25, scale: 1, batch: 1, policy: 'lru', perLayer: true, prefetch: 'none', device: 'cpu', json: false };
  const num = (flag: string, v: string | undefined, min: number, max: number, integer: boolean): number => {
    const n = Number(v);
    if (v === undefined || v === '' || !Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n)))
      throw new UsageError(`Expected ${integer ? 'an integer' : 'a number'} in ${min === Number.MIN_VALUE ? '(0' : `[${min}`}, ${max}] for ${flag} but received ${v === undefined ? 'nothing' : JSON.stringify(v)}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const f = argv[i];
    const v = () => argv[++i];
    switch (f) {
      case '-h':
      case '--help':
        return 'help';
      case '--preset': a.preset = v() ?? ''; break;
      case '--cache-fraction': a.fraction = num(f, v(), Number.MIN_VALUE, 1, false); break;
      case '--trace': a.trace = v(); if (!a.trace) throw new UsageError('Expected a trace path for --trace but received nothing'); break;
      case '--layers': a.layers = num(f, v(), 1, 1024, true); break;
      case '--experts-scale': a.scale = num(f, v(), Number.MIN_VALUE, 1, false); break;
      case '--tokens': a.tokens = num(f, v(), 1, 1 << 24, true); break;
      case '--batch': a.batch = num(f, v(), 1, 1 << 16, true); break;
      case '--policy': {
        const p = v();
        if (p === undefined || p === 'belady' || !(POLICY_NAMES as readonly string[]).includes(p)) throw new UsageError(`Expected one of ${POLICY_NAMES.filter((x) => x !== 'belady').join(', ')} for --policy but received ${JSON.stringify(p)}`);
        a.policy = p;
        break;
      }
      case '--shared': a.perLayer = false; break;
      case '--prefetch': {
        const p = v();
        if (p !== 'none' && p !== 'affinity' && p !== 'layerwise' && p !== 'pregating')
          throw new UsageError(`Expected none, affinity, layerwise or pregating for --prefetch but received ${JSON.stringify(p)}`);
        a.prefetch = p;
        break;
      }
      case '--device': a.device = v() ?? ''; break;
      case '--json': a.json = true; break;
      default:
        throw new UsageError(`Unknown option ${JSON.stringify(f)}`);
    }
  }
  if (!(a.preset in BENCH_PRESETS)) throw new UsageError(`Expected one of ${Object.keys(BENCH_PRESETS).join(', ')} for --preset but received ${JSON.stringify(a.preset)}`);
  return a;
}

/**
 * Bytes per second of copying `bytes` from `src` to `dst` (best of 3). `traffic` = bytes of
 * memory traffic per byte copied: 1 for host → device (what crosses the link), 2 within
 * one memory (read + written), as `moekit bench` counts bandwidth.
 */
async function bandwidth(dst: Tensor, src: Tensor, bytes: number, traffic: 1 | 2): Promise<number> {
  let best = Infinity;
  for (let i = 0; i < 3; i++) best = Math.min(best, await copyTensorRanges([{ dst, dstOffset: 0, src, srcOffset: 0, bytes }]));
  return (traffic * bytes) / (best / 1e3);
}

/** One pattern slice per role, replicated into [E, …] host tensors natively. */
async function randomExperts(E: number, H: number, I: number, seed: number): Promise<ExpertTensors> {
  const make = async (shape: number[], scale: number, s: number): Promise<Tensor> => {
    const per = shape[0] * shape[1];
    let x = (s * 2654435761) >>> 0;
    const v = new Float32Array(per);
    for (let i = 0; i < per; i++) {
      x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
      v[i] = ((x >>> 8) / 16777216 - 0.5) * scale;
    }
    const one = Tensor.from(v, shape, 'bf16');
    const all = Tensor.empty([E, ...shape], 'bf16', 'cpu');
    await copyTensorRanges(Array.from({ length: E }, (_, e) => ({ dst: all, dstOffset: e * one.byteLength, src: one, srcOffset: 0, bytes: one.byteLength })));
    one.dispose();
    return all;
  };
  return { gate: await make([I, H], 2 / Math.sqrt(H), seed), up: await make([I, H], 2 / Math.sqrt(H), seed + 1), down: await make([H, I], 2 / Math.sqrt(I), seed + 2) };
}

/** Runs `moekit bench offload`; resolves to the exit status (0 ok, 1 failure, 2 bad arguments). */
export async function runOffloadBenchCli(argv: string[], io: { out: (s: string) => void; err: (s: string) => void } = { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) }): Promise<number> {
  let args: Args | 'help';
  try {
    args = parseArgs(argv);
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`moekit bench offload: ${e.message}\n\n${OFFLOAD_BENCH_USAGE}`);
      return 2;
    }
    throw e;
  }
  if (args === 'help') {
    io.out(OFFLOAD_BENCH_USAGE);
    return 0;
  }
  const made: Tensor[] = [];
  let model: OffloadedMoE | undefined;
  try {
    const p = BENCH_PRESETS[args.preset];
    const device = resolveDevice(args.device, '--device');
    let trace: RoutingTrace | undefined;
    if (args.trace !== undefined) {
      trace = readTrace(args.trace);
      if (trace.expertsPerLayer !== p.experts || trace.topK !== p.k)
        throw new UsageError(`the trace has ${trace.expertsPerLayer} experts, top-${trace.topK}; preset ${args.preset} has ${p.experts}, top-${p.k}`);
    }
    const L = args.layers ?? (trace ? trace.layers : 4);
    if (trace && L > trace.layers) throw new UsageError(`Expected at most the trace's ${trace.layers} layers for --layers but received ${L}`);
    const tokens = args.tokens ?? (trace ? Math.min(trace.tokens, 64) : 64);
    if (trace && tokens > trace.tokens) throw new UsageError(`Expected at most the trace's ${trace.tokens} tokens for --tokens but received ${tokens}`);
    const H = p.hidden;
    const I = Math.max(8, Math.round(p.intermediate * args.scale));
    const E = p.experts;
    const k = p.k;
    const layers: ExpertTensors[] = [];
    for (let l = 0; l < L; l++) layers.push(await randomExperts(E, H, I, 17 + 3 * l));
    const store = ExpertStore.fromTensors(layers, { ownsTensors: true });
    const resident: ResidentWeights[] = [];
    for (let l = 0; l < L; l++) {
      const r: ResidentWeights = { router: Tensor.zeros([E, H], 'bf16') };
      made.push(r.router);
      if (p.sharedIntermediate > 0) {
        const Is = p.sharedIntermediate;
        r.shared = { gate: Tensor.zeros([Is, H], 'bf16'), up: Tensor.zeros([Is, H], 'bf16'), down: Tensor.zeros([H, Is], 'bf16') };
        made.push(r.shared.gate as Tensor, r.shared.up as Tensor, r.shared.down);
      }
      if (p.correctionBias) {
        r.correctionBias = Tensor.zeros([E]);
        made.push(r.correctionBias);
      }
      resident.push(r);
    }
    const pr = preset(p.family, { k, ...(p.nGroup ? { nGroup: p.nGroup, topkGroup: p.topkGroup } : {}), ...(p.routedScalingFactor ? { routedScalingFactor: p.routedScalingFactor } : {}) });
    const capacity = Math.max(1, Math.round(args.fraction * (args.perLayer ? E : E * L)));
    model = new OffloadedMoE(
      { hidden: H, intermediate: I, experts: E, sharedIntermediate: p.sharedIntermediate, routing: pr.routing, activation: pr.activation, layoutIn: pr.layoutIn, layoutOut: pr.layoutOut },
      resident,
      store,
      { device: args.device, cache: { capacity, perLayer: args.perLayer, policy: args.policy as never }, prefetch: args.prefetch === 'none' ? {} : { [args.prefetch]: true } },
      { ownsStore: true },
    );
    // Bandwidths: host → device (the cache's copy path) and device memory.
    const probeBytes = Math.min(256 << 20, Math.ceil(store.expertBytes / 4) * 8);
    const hostBuf = Tensor.empty([probeBytes / 4], 'i32', 'cpu');
    made.push(hostBuf);
    const devA = Tensor.empty([probeBytes / 4], 'i32', device.name);
    const devB = Tensor.empty([probeBytes / 4], 'i32', device.name);
    made.push(devA, devB);
    const h2d = await bandwidth(devA, hostBuf, probeBytes, 1);
    const dev = await bandwidth(devB, devA, probeBytes, 2);
    // Routing per (token, layer): the trace's ids, else uniform random distinct ids.
    let rs = 12345;
    const rand = () => ((rs = (Math.imul(rs, 1664525) + 1013904223) >>> 0) / 4294967296);
    const idsAt = (t: number, l: number, out: Int32Array, at: number) => {
      if (trace) for (let q = 0; q < k; q++) out[at + q] = trace.ids[(t * trace.layers + l) * trace.topK + q];
      else {
        const chosen = new Set<number>();
        while (chosen.size < k) chosen.add(Math.floor(rand() * E));
        [...chosen].forEach((e, q) => (out[at + q] = e));
      }
    };
    const x = Tensor.zeros([args.batch, H], 'bf16');
    made.push(x);
    let expertBytesRead = 0;
    const start = performance.now();
    let done = 0;
    while (done < tokens) {
      const T = Math.min(args.batch, tokens - done);
      const xin = T === args.batch ? x : Tensor.zeros([T, H], 'bf16');
      let h = xin;
      for (let l = 0; l < L; l++) {
        const ids = new Int32Array(T * k);
        for (let t = 0; t < T; t++) idsAt(done + t, l, ids, t * k);
        expertBytesRead += new Set(ids).size * store.expertBytes;
        const y = await model.forward(l, h, { forcedIds: ids, time: done });
        if (h !== x) h.dispose();
        h = y;
      }
      if (h !== x) h.dispose();
      done += T;
    }
    await model.settle();
    const seconds = (performance.now() - start) / 1e3;
    const st = model.stats().total;
    const residentBytes = L * (E * H * 2 + (p.sharedIntermediate > 0 ? 3 * p.sharedIntermediate * H * 2 : 0));
    const transferFloor = st.bytesMoved / h2d;
    const hbmFloor = (expertBytesRead + residentBytes * Math.ceil(tokens / args.batch)) / dev;
    const report = {
      preset: args.preset,
      device: device.name,
      layers: L,
      experts: E,
      k,
      hidden: H,
      intermediate: I,
      expertBytes: store.expertBytes,
      cache: { capacity, perLayer: args.perLayer, policy: args.policy, prefetch: args.prefetch, slotBytes: model.cache.slotBytes },
      tokens,
      batch: args.batch,
      routing: args.trace ?? 'uniform',
      seconds,
      tokensPerSecond: tokens / seconds,
      hostToDeviceBytesPerSecond: h2d,
      deviceMemoryBytesPerSecond: dev,
      transferFloorTokensPerSecond: transferFloor > 0 ? tokens / transferFloor : Infinity,
      hbmFloorTokensPerSecond: tokens / hbmFloor,
      stats: st,
      demandHitRate: st.accesses > 0 ? st.hits / st.accesses : 0,
    };
    if (args.json) io.out(`${JSON.stringify(report)}\n`);
    else {
      const gb = (b: number) => (b / 1e9).toFixed(2);
      io.out(
        [
          `offload bench: ${args.preset} on ${device.name}: ${L} layers × ${E} experts (k ${k}), H ${H}, I ${I}${I !== p.intermediate ? ` (scaled from ${p.intermediate})` : ''}, expert ${(store.expertBytes / 2 ** 20).toFixed(1)} MiB`,
          `cache: ${capacity} experts ${args.perLayer ? 'per layer' : 'shared'} (${args.policy}, prefetch ${args.prefetch}), ${(model.cache.slotBytes / 2 ** 20).toFixed(1)} MiB of slots; routing: ${report.routing}; ${tokens} tokens in batches of ${args.batch}`,
          `tokens/s ${report.tokensPerSecond.toFixed(2)} | transfer floor ${report.transferFloorTokensPerSecond.toFixed(2)} tokens/s (${gb(st.bytesMoved)} GB moved at ${gb(h2d)} GB/s) | HBM floor ${report.hbmFloorTokensPerSecond.toFixed(2)} tokens/s (${gb(expertBytesRead)} GB of experts read at ${gb(dev)} GB/s)`,
          `hits ${st.hits} misses ${st.misses} (demand hit rate ${(100 * report.demandHitRate).toFixed(2)}%), rejected ${st.rejected}, prefetches ${st.prefetchesIssued} used ${st.prefetchesUsed} wasted ${st.prefetchesWasted}, transfer ${st.transferMs.toFixed(1)} ms, stall ${st.stallMs.toFixed(1)} ms`,
        ].join('\n') + '\n',
      );
    }
    return 0;
  } catch (e) {
    if (e instanceof UsageError || e instanceof RangeError || e instanceof TypeError) {
      io.err(`moekit bench offload: ${(e as Error).message}\n`);
      return 2;
    }
    io.err(`moekit bench offload: ${(e as Error).message}\n`);
    return 1;
  } finally {
    model?.dispose();
    for (const t of made) t.dispose();
  }
}
