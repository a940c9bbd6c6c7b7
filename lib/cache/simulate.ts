/**
 * The expert-cache trace simulator: replays a routing trace through the same cache and
 * policy code the GPU cache uses ({@link ExpertCacheCore}), with no weights, on the CPU,
 * and compares with Belady's optimal eviction at the same capacity.
 *
 * `moekit cache-sim --trace FILE --capacity N --policy P [--prefetch affinity|layerwise]
 * [--per-layer] [--reset-per-sequence] [--min-sequence-tokens N] [--json]`
 * (see {@link runCacheSimCli}). Semantics in docs/CACHE.md.
 */
import { checkBoolean, checkInteger, checkNumber, checkOneOf, checkOptions, MoekitError, typeError } from '../errors';
import { CacheStats, ExpertCacheCore } from './expert_cache';
import { LookaheadPolicy, POLICY_NAMES, PolicyName } from './policy';
import { AffinityPrefetchSource, LayerwisePrefetchSource, Prefetcher, PrefetchSource } from './prefetch';
import { readTrace, RoutingTrace, selectSequences } from './trace';

/** Prefetch sources the simulator can run (pre-gating needs hidden states, not a trace). */
export const SIM_PREFETCH = ['none', 'affinity', 'layerwise'] as const;

/** Options of {@link simulate}. */
export interface SimulateOptions {
  /** Capacity in experts: per layer with `perLayer`, else of the one shared cache. */
  capacity: number;
  /** Eviction policy (default 'lru'). */
  policy?: PolicyName;
  /** Prefetch source (default 'none'). */
  prefetch?: (typeof SIM_PREFETCH)[number];
  /** One cache per layer (default false: one cache shared by all layers). */
  perLayer?: boolean;
  /** Empty the cache at each sequence start (default false). */
  resetPerSequence?: boolean;
  /** Only replay sequences with at least this many tokens (default 0: all). */
  minSequenceTokens?: number;
  /** LFRU half-life in tokens (default 32; also the fallback ranking of 'lookahead'). */
  halfLife?: number;
  /** How many tokens ahead the offline 'lookahead' policy sees next uses (default 1). */
  lookahead?: number;
  /** Prefetches per step at most (default 2). */
  prefetchMaxPerStep?: number;
  /** Minimum estimated probability of a prefetched expert (default 0.5). */
  prefetchMinProbability?: number;
  /** Prefetch only by evicting experts the policy ranks below the candidate (default true). */
  prefetchGuard?: boolean;
  /**
   * While prefetching for a layer, keep its resident experts estimated at least this likely
   * (default: off). See {@link Prefetcher}.
   */
  prefetchProtectProbability?: number;
  /** Layers of the current token the layerwise source looks back over (default 3). */
  prefetchDepth?: number;
  /** Also run Belady (demand-only) at the same capacity (default true). */
  belady?: boolean;
}

/** One run's figures. */
export interface RunReport {
  /** Policy name, with `+` and the prefetch source when prefetching. */
  name: string;
  perLayer: CacheStats[];
  total: CacheStats;
  /** Hits not owed to an unused prefetch, over accesses (the cache's own hit rate). */
  hitRate: number;
  /** Accesses whose expert was resident when needed (prefetched or not), over accesses. */
  demandHitRate: number;
  /** Bytes moved over the trace's accesses (experts moved per access when sizes are 1). */
  bytesPerAccess: number;
}

/** Result of {@link simulate}. */
export interface SimulateResult {
  trace: { source?: string; tokens: number; layers: number; topK: number; expertsPerLayer: number; sequences: number };
  options: Required<Omit<SimulateOptions, 'minSequenceTokens' | 'prefetchProtectProbability'>> & { minSequenceTokens: number; prefetchProtectProbability: number | null };
  run: RunReport;
  /** Belady demand-only at the same capacity (absent with `belady: false`). */
  belady?: RunReport;
  /** run bytes moved / Belady bytes moved. */
  bytesRatio?: number;
}

function report(name: string, cache: ExpertCacheCore): RunReport {
  const { perLayer, total } = cache.stats();
  const a = Math.max(1, total.accesses);
  return { name, perLayer, total, hitRate: (total.hits - total.prefetchesUsed) / a, demandHitRate: total.hits / a, bytesPerAccess: total.bytesMoved / a };
}

/**
 * Next use of each access, as a step index (token * layers + layer), or -1 when the
 * expert is not used again. One backward pass.
 */
export function nextUseSteps(trace: RoutingTrace): Int32Array {
  const { ids, tokens, layers: L, topK: K, expertsPerLayer: E } = trace;
  const next = new Int32Array(tokens * L * K);
  const seen = new Int32Array(L * E).fill(-1);
  for (let step = tokens * L - 1; step >= 0; step--) {
    const l = step % L;
    const base = step * K;
    for (let s = 0; s < K; s++) next[base + s] = seen[l * E + ids[base + s]];
    for (let s = 0; s < K; s++) seen[l * E + ids[base + s]] = step;
  }
  return next;
}

function replay(trace: RoutingTrace, o: SimulateResult['options'], policy: PolicyName, prefetch: SimulateResult['options']['prefetch'], next: Int32Array | undefined): RunReport {
  const { ids, layers: L, topK: K, expertsPerLayer: E } = trace;
  const cache = new ExpertCacheCore({ layers: L, expertsPerLayer: E, capacity: o.capacity, perLayer: o.perLayer, policy, policyOptions: { halfLife: o.halfLife, lookahead: o.lookahead } });
  const lookahead = policy === 'lookahead';
  let source: PrefetchSource | undefined;
  if (prefetch === 'affinity') source = new AffinityPrefetchSource(L, E);
  else if (prefetch === 'layerwise') source = new LayerwisePrefetchSource(L, E, { depth: o.prefetchDepth });
  const prefetcher =
    source === undefined
      ? undefined
      : new Prefetcher(cache, [source], {
          maxPerStep: o.prefetchMaxPerStep,
          minProbability: o.prefetchMinProbability,
          guard: o.prefetchGuard,
          protectProbability: o.prefetchProtectProbability ?? undefined,
        });
  const nextUses = new Float64Array(K);
  for (let si = 0; si + 1 < trace.sequences.length; si++) {
    const a = trace.sequences[si];
    const b = trace.sequences[si + 1];
    if (a === b) continue;
    if (o.resetPerSequence) cache.reset();
    prefetcher?.startSequence();
    for (let t = a; t < b; t++) {
      for (let l = 0; l < L; l++) {
        const step = t * L + l;
        const experts = ids.subarray(step * K, step * K + K);
        const time = t + l / L;
        if (next !== undefined) for (let s = 0; s < K; s++) nextUses[s] = next[step * K + s] < 0 ? Infinity : next[step * K + s] / L;
        if (lookahead) (cache.policyOf(l) as LookaheadPolicy).advanceTo(time);
        cache.access(l, experts, time, next === undefined ? undefined : nextUses);
        if (prefetcher !== undefined) {
          prefetcher.observe(l, experts);
          prefetcher.issue(l, experts, time);
        }
        cache.release(l, experts);
      }
    }
  }
  cache.dropUnusedPrefetches();
  return report(prefetch !== 'none' ? `${policy}+${prefetch}` : policy, cache);
}

/**
 * Replays `trace` through an {@link ExpertCacheCore} with the given policy (and prefetch),
 * and through Belady demand-only at the same capacity.
 */
export function simulate(trace: RoutingTrace, options: SimulateOptions): SimulateResult {
  const o = checkOptions<SimulateOptions>('options', options);
  if (trace === null || typeof trace !== 'object' || !(trace.ids instanceof Uint8Array)) throw typeError('trace', 'a RoutingTrace (see readTrace)', trace);
  const opts: SimulateResult['options'] = {
    capacity: checkInteger('options.capacity', o.capacity, 1),
    policy: o.policy === undefined ? 'lru' : checkOneOf('options.policy', o.policy, POLICY_NAMES),
    prefetch: o.prefetch === undefined ? 'none' : checkOneOf('options.prefetch', o.prefetch, SIM_PREFETCH),
    perLayer: o.perLayer === undefined ? false : checkBoolean('options.perLayer', o.perLayer),
    resetPerSequence: o.resetPerSequence === undefined ? false : checkBoolean('options.resetPerSequence', o.resetPerSequence),
    minSequenceTokens: o.minSequenceTokens === undefined ? 0 : checkInteger('options.minSequenceTokens', o.minSequenceTokens, 0),
    halfLife: o.halfLife === undefined ? 32 : checkNumber('options.halfLife', o.halfLife, 1e-9),
    lookahead: o.lookahead === undefined ? 1 : checkNumber('options.lookahead', o.lookahead, 0),
    prefetchMaxPerStep: o.prefetchMaxPerStep === undefined ? 2 : checkInteger('options.prefetchMaxPerStep', o.prefetchMaxPerStep, 0),
    prefetchMinProbability: o.prefetchMinProbability === undefined ? 0.5 : checkNumber('options.prefetchMinProbability', o.prefetchMinProbability, 0, 1),
    prefetchGuard: o.prefetchGuard === undefined ? true : checkBoolean('options.prefetchGuard', o.prefetchGuard),
    prefetchProtectProbability: o.prefetchProtectProbability === undefined ? null : checkNumber('options.prefetchProtectProbability', o.prefetchProtectProbability, 0, 1),
    prefetchDepth: o.prefetchDepth === undefined ? 3 : checkInteger('options.prefetchDepth', o.prefetchDepth, 1, 64),
    belady: o.belady === undefined ? true : checkBoolean('options.belady', o.belady),
  };
  const cap = opts.perLayer ? trace.expertsPerLayer : trace.layers * trace.expertsPerLayer;
  if (opts.capacity < trace.topK) throw new MoekitError(`capacity ${opts.capacity} is below top_k = ${trace.topK}: the experts of one step would not fit`, 'ERR_INVALID_ARGUMENT');
  if (opts.capacity > cap) opts.capacity = Math.min(opts.capacity, cap);
  const t = selectSequences(trace, opts.minSequenceTokens);
  const offline = opts.policy === 'belady' || opts.policy === 'lookahead';
  const needNext = opts.belady || offline;
  const next = needNext ? nextUseSteps(t) : undefined;
  const run = replay(t, opts, opts.policy, opts.prefetch, offline ? next : undefined);
  const result: SimulateResult = {
    trace: { source: trace.source, tokens: t.tokens, layers: t.layers, topK: t.topK, expertsPerLayer: t.expertsPerLayer, sequences: t.sequences.length - 1 },
    options: opts,
    run,
  };
  if (opts.belady) {
    result.belady = opts.policy === 'belady' && opts.prefetch === 'none' ? run : replay(t, opts, 'belady', 'none', next);
    result.bytesRatio = result.belady.total.bytesMoved > 0 ? run.total.bytesMoved / result.belady.total.bytesMoved : run.total.bytesMoved === 0 ? 1 : Infinity;
  }
  return result;
}

const CLI_USAGE = `Usage: moekit cache-sim --trace FILE --capacity N --policy lru|lfu|lfru|static|belady|lookahead
                      [--prefetch none|affinity|layerwise] [--per-layer] [--reset-per-sequence]
                      [--min-sequence-tokens N] [--half-life T] [--prefetch-max M]
                      [--prefetch-min-probability P] [--no-prefetch-guard]
                      [--prefetch-protect P] [--prefetch-depth D] [--lookahead W] [--json]

Replays a routing trace (FILE.u8 + FILE.json) through the expert-cache policy code and
prints hit rates and bytes moved next to Belady's optimal eviction at the same capacity.
--capacity is per layer with --per-layer, else of one cache shared by all layers.
belady and lookahead are offline bounds: lookahead sees next uses up to W tokens ahead.`;

class SimUsageError extends Error {}

const VALUE_FLAGS = ['trace', 'capacity', 'policy', 'prefetch', 'min-sequence-tokens', 'half-life', 'prefetch-max', 'prefetch-min-probability', 'prefetch-protect', 'prefetch-depth', 'lookahead'];
const SWITCHES = ['per-layer', 'reset-per-sequence', 'json', 'no-prefetch-guard'];

function parseArgs(argv: string[]): Map<string, string | true> | 'help' {
  if (argv.includes('--help') || argv.includes('-h')) return 'help';
  const flags = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('--')) throw new SimUsageError(`unexpected argument ${JSON.stringify(arg)}`);
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    if (flags.has(name)) throw new SimUsageError(`--${name} given twice`);
    if (SWITCHES.includes(name)) {
      if (eq >= 0) throw new SimUsageError(`--${name} takes no value`);
      flags.set(name, true);
      continue;
    }
    if (!VALUE_FLAGS.includes(name)) throw new SimUsageError(`unknown option --${name} (options: ${[...VALUE_FLAGS, ...SWITCHES].map((f) => `--${f}`).join(', ')})`);
    const value = eq >= 0 ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined || value === '' || (eq < 0 && value.startsWith('--'))) throw new SimUsageError(`--${name} needs a value`);
    flags.set(name, value);
  }
  for (const r of ['trace', 'capacity', 'policy']) if (!flags.has(r)) throw new SimUsageError(`cache-sim needs --${r} (see moekit cache-sim --help)`);
  return flags;
}

function intFlag(flags: Map<string, string | true>, name: string, min: number): number | undefined {
  const v = flags.get(name);
  if (typeof v !== 'string') return undefined;
  if (!/^\d+$/.test(v) || Number(v) < min) throw new SimUsageError(`--${name} takes an integer >= ${min}, not ${JSON.stringify(v)}`);
  return Number(v);
}

function numFlag(flags: Map<string, string | true>, name: string, min: number, max: number): number | undefined {
  const v = flags.get(name);
  if (typeof v !== 'string') return undefined;
  const n = Number(v);
  if (!/^[0-9.eE+-]+$/.test(v) || !Number.isFinite(n) || n < min || n > max) throw new SimUsageError(`--${name} takes a number between ${min} and ${max}, not ${JSON.stringify(v)}`);
  return n;
}

function pct(x: number): string {
  return `${(100 * x).toFixed(2)}%`;
}

/** The table {@link runCacheSimCli} prints. */
export function formatSimulation(r: SimulateResult): string {
  const o = r.options;
  const lines: string[] = [];
  lines.push(
    `trace ${r.trace.source ?? '(memory)'}: ${r.trace.tokens} tokens in ${r.trace.sequences} sequences, ${r.trace.layers} layers, top-${r.trace.topK} of ${r.trace.expertsPerLayer}` +
      (o.minSequenceTokens > 0 ? ` (sequences >= ${o.minSequenceTokens} tokens)` : ''),
  );
  lines.push(
    `cache: ${o.capacity} experts ${o.perLayer ? 'per layer' : 'shared by all layers'}, ${o.resetPerSequence ? 'emptied at each sequence start' : 'kept across sequences'}, policy ${o.policy}` +
      (o.policy === 'lfru' ? ` (half-life ${o.halfLife} tokens)` : '') +
      (o.policy === 'lookahead' ? ` (sees ${o.lookahead} tokens ahead, else LFRU with half-life ${o.halfLife})` : '') +
      (o.prefetch !== 'none'
        ? `, ${o.prefetch} prefetch (${o.prefetch === 'layerwise' ? `depth ${o.prefetchDepth}, ` : ''}<= ${o.prefetchMaxPerStep}/step, p >= ${o.prefetchMinProbability}${o.prefetchGuard ? ', guarded' : ''}` +
          `${o.prefetchProtectProbability !== null ? `, protecting p >= ${o.prefetchProtectProbability}` : ''})`
        : ''),
  );
  const rows: RunReport[] = [r.run];
  if (r.belady !== undefined && r.belady !== r.run) rows.push(r.belady);
  const bel = r.belady;
  lines.push('run                 hit rate  demand hit rate  experts moved  vs Belady  prefetches issued/used/wasted');
  for (const row of rows) {
    const t = row.total;
    const ratio = bel !== undefined && bel.total.bytesMoved > 0 ? (t.bytesMoved / bel.total.bytesMoved).toFixed(3) + 'x' : '-';
    const name = row === bel && row !== r.run ? 'belady (demand-only)' : row.name;
    lines.push(
      `${name.padEnd(20)}${pct(row.hitRate).padStart(8)}  ${pct(row.demandHitRate).padStart(15)}  ${String(t.bytesMoved).padStart(13)}  ${ratio.padStart(9)}  ${t.prefetchesIssued}/${t.prefetchesUsed}/${t.prefetchesWasted}`,
    );
  }
  if (bel !== undefined && r.run !== bel) {
    const met = r.run.demandHitRate >= bel.demandHitRate && r.run.total.bytesMoved <= 1.3 * bel.total.bytesMoved;
    lines.push(
      `bar (demand hit rate >= Belady's ${pct(bel.demandHitRate)} with bytes <= 1.3x Belady's): ${met ? 'met' : 'not met'} ` +
        `(${pct(r.run.demandHitRate)}, ${(r.run.total.bytesMoved / Math.max(1, bel.total.bytesMoved)).toFixed(3)}x)`,
    );
  }
  return lines.join('\n');
}

/**
 * `moekit cache-sim`: parses `argv` (the arguments after `cache-sim`), runs
 * {@link simulate} and prints a table (or JSON with `--json`). Resolves to the exit
 * status: 0 success, 1 failure (unreadable or malformed trace), 2 bad arguments.
 */
export async function runCacheSimCli(argv: string[]): Promise<number> {
  try {
    const flags = parseArgs(argv);
    if (flags === 'help') {
      process.stdout.write(CLI_USAGE + '\n');
      return 0;
    }
    const policy = flags.get('policy') as string;
    if (!(POLICY_NAMES as readonly string[]).includes(policy)) throw new SimUsageError(`--policy takes ${POLICY_NAMES.join(', ')}, not ${JSON.stringify(policy)}`);
    const prefetch = (flags.get('prefetch') as string | undefined) ?? 'none';
    if (!(SIM_PREFETCH as readonly string[]).includes(prefetch))
      throw new SimUsageError(`--prefetch takes ${SIM_PREFETCH.join(', ')}, not ${JSON.stringify(prefetch)} (pre-gating needs hidden states, so only the GPU cache has it)`);
    const capacity = intFlag(flags, 'capacity', 1) as number;
    const opts: SimulateOptions = {
      capacity,
      policy: policy as PolicyName,
      prefetch: prefetch as SimulateOptions['prefetch'],
      perLayer: flags.get('per-layer') === true,
      resetPerSequence: flags.get('reset-per-sequence') === true,
      minSequenceTokens: intFlag(flags, 'min-sequence-tokens', 0),
      halfLife: numFlag(flags, 'half-life', 1e-6, 1e12),
      prefetchMaxPerStep: intFlag(flags, 'prefetch-max', 0),
      prefetchMinProbability: numFlag(flags, 'prefetch-min-probability', 0, 1),
      prefetchGuard: flags.get('no-prefetch-guard') !== true,
      prefetchProtectProbability: numFlag(flags, 'prefetch-protect', 0, 1),
      prefetchDepth: intFlag(flags, 'prefetch-depth', 1),
      lookahead: numFlag(flags, 'lookahead', 0, 1e12),
    };
    const trace = readTrace(flags.get('trace') as string);
    const perPartition = opts.perLayer ? trace.expertsPerLayer : trace.layers * trace.expertsPerLayer;
    if (capacity < trace.topK || capacity > perPartition)
      throw new SimUsageError(`--capacity takes ${trace.topK} (top_k) to ${perPartition} (${opts.perLayer ? 'experts per layer' : 'all experts'}) for this trace, not ${capacity}`);
    const result = simulate(trace, opts);
    if (flags.get('json') === true) process.stdout.write(JSON.stringify(result, null, 2) + '\n');
    else process.stdout.write(formatSimulation(result) + '\n');
    return 0;
  } catch (err) {
    if (err instanceof SimUsageError || err instanceof RangeError || err instanceof TypeError) {
      process.stderr.write(`moekit cache-sim: ${err.message}\n`);
      return 2;
    }
    if (err instanceof MoekitError) {
      process.stderr.write(`moekit cache-sim: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
}
