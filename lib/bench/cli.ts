/**
 * `moekit bench`: argument parsing and the command (see {@link BENCH_USAGE}).
 * Exit codes: 0 success (skipped cells included), 1 the work failed, 2 bad arguments.
 */
import * as fs from 'fs';
import * as path from 'path';
import { RoutingTrace, readTrace } from '../cache/trace';
import { Device, resolveDevice } from '../device';
import { DType, FLOAT_DTYPES } from '../dtype';
import { MoekitError } from '../errors';
import { BenchOp } from './accounting';
import { COMPARE_USAGE, CompareInputError, compareReports, formatComparison, readBenchReport } from './compare';
import { Anchors, formatAnchorComparison, formatHeader, formatRow, progressLine, readAnchors, renderSvg } from './output';
import { RoutingSpec } from './routing';
import { BenchOptions, BenchReport, runBench } from './run';
import { CustomShape, PRESET_NAMES } from './shapes';

export const BENCH_USAGE = `Usage: moekit bench [options]

Times MoE layers and their ops at the presets' shapes and prints, per cell (preset x
tokens x op): the device time per call (CUDA events around CUDA-graph replays on a GPU,
a steady clock on the CPU) and the wall time of \`await\` seen from JavaScript, median and
spread (p90 - p10), TFLOP/s, GB/s, the roofline floor and efficiency = floor / time.
Floor = max(FLOPs / compute peak, bytes / bandwidth); bytes count the weights of the
experts the routing touched plus activations (and router, shared expert). docs/BENCHMARKS.md
says how to run it and what each figure counts.

  --preset LIST        comma-separated: ${PRESET_NAMES.join(', ')}, custom
                       (default: all four presets)
  --hidden N --intermediate N --experts N --k N [--shared N]
                       the custom shape (--preset custom); --shared: shared-expert width
  --experts N          with named presets: shrink every preset to N experts (smoke runs)
  --tokens LIST        comma-separated token counts (default 1,16,128,1024,4096,16384 on a
                       GPU, 1,16,128,512 on the CPU)
  --dtype bf16|f16|f32 weights and layer activations (default bf16)
  --device D           cpu, cuda, cuda:N or auto (default auto: CUDA when usable)
  --op LIST            gating, dispatch, gemm, combine, layer or all (default layer);
                       gemm runs gemm-up (gate+up, SwiGLU) and gemm-down
  --routing R          uniform (default), zipf:S (popularity 1/rank^S), or trace:FILE
                       (a routing trace .u8/.json forces the ids; --trace-layer N picks
                       its layer, default 0); the layer is given these ids (forcedIds)
  --warmup N           untimed calls per cell (default 3)
  --repeats N          timed calls per cell (default 20)
  --no-graph           time plain launches instead of CUDA-graph replays
  --peak-tflops X      compute peak for the floor (default: the measured constant for
                       the device, if any)
  --bandwidth-gbs X    bandwidth for the floor (default: measured at start)
  --memory-limit-gib X memory the run may use (default 90% of free host memory; of device
                       memory on a GPU); cells above it are skipped with the reason
  --seed N             routing and data seed (default 1)
  --json FILE          write every row and the run's settings as JSON
  --svg FILE           draw efficiency against tokens (log x), one line per preset
  --anchors FILE       anchor figures to draw in the SVG and, where they give ms, to compare
                       the layer rows with after the run (format in docs/BENCHMARKS.md)

moekit bench offload ... runs a whole MoE layer stack with experts offloaded to host
memory behind a device expert cache (moekit bench offload --help; docs/OFFLOAD.md).
moekit bench compare BASE.json NEW.json compares two --json reports cell by cell
(moekit bench compare --help).
Exit status: 0 on success (skipped cells included), 1 when the work fails, 2 for bad arguments.`;

/** A bad argument: names the flag, what was expected, what was received; exit status 2. */
export class BenchUsageError extends Error {
  /** `received` is the flag's text (quoted), or with `explained`, words about it (as they are). */
  constructor(flag: string, expected: string, received: string, explained = false) {
    super(`${flag}: expected ${expected}, received ${explained ? received : JSON.stringify(received)}`);
    this.name = 'BenchUsageError';
  }
}

/** A free-form usage error (unknown flag, missing value). */
class PlainUsageError extends Error {}

const VALUE_FLAGS = [
  'preset',
  'hidden',
  'intermediate',
  'experts',
  'k',
  'shared',
  'tokens',
  'dtype',
  'device',
  'op',
  'routing',
  'trace-layer',
  'warmup',
  'repeats',
  'peak-tflops',
  'bandwidth-gbs',
  'memory-limit-gib',
  'seed',
  'json',
  'svg',
  'anchors',
];
const SWITCHES = ['no-graph'];
const OPS: Record<string, BenchOp[]> = {
  gating: ['gating'],
  dispatch: ['dispatch'],
  gemm: ['gemm-up', 'gemm-down'],
  combine: ['combine'],
  layer: ['layer'],
  all: ['gating', 'dispatch', 'gemm-up', 'gemm-down', 'combine', 'layer'],
};

/** Parsed flags, before the device is resolved and files are read. */
export interface BenchArgs extends Omit<BenchOptions, 'device' | 'trace'> {
  deviceSpec: string;
  json?: string;
  svg?: string;
  anchorsFile?: string;
}

function flagMap(argv: string[]): Map<string, string | true> {
  const flags = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('--')) throw new PlainUsageError(`unexpected argument ${JSON.stringify(arg)} (options start with --; see moekit bench --help)`);
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    if (flags.has(name)) throw new PlainUsageError(`--${name} given twice`);
    if (SWITCHES.includes(name)) {
      if (eq >= 0) throw new PlainUsageError(`--${name} takes no value`);
      flags.set(name, true);
      continue;
    }
    if (!VALUE_FLAGS.includes(name)) throw new PlainUsageError(`unknown option --${name} for bench (see moekit bench --help)`);
    const value = eq >= 0 ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined || value === '' || (eq < 0 && value.startsWith('--'))) throw new PlainUsageError(`--${name} needs a value`);
    flags.set(name, value);
  }
  return flags;
}

function intFlag(flags: Map<string, string | true>, name: string, min: number, max = 2 ** 31 - 1): number | undefined {
  const v = flags.get(name);
  if (v === undefined || v === true) return undefined;
  const expected = max < 2 ** 31 - 1 ? `an integer between ${min} and ${max}` : `an integer >= ${min}`;
  if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) throw new BenchUsageError(`--${name}`, expected, v);
  return Number(v);
}

function numFlag(flags: Map<string, string | true>, name: string): number | undefined {
  const v = flags.get(name);
  if (v === undefined || v === true) return undefined;
  const n = Number(v);
  if (!/^[0-9.eE+]+$/.test(v) || !Number.isFinite(n) || n <= 0) throw new BenchUsageError(`--${name}`, 'a positive number', v);
  return n;
}

function strFlag(flags: Map<string, string | true>, name: string): string | undefined {
  const v = flags.get(name);
  return typeof v === 'string' ? v : undefined;
}

/** Parses `moekit bench` flags; throws BenchUsageError / Error for bad ones. Returns 'help' for --help. */
export function parseBenchArgs(argv: string[]): BenchArgs | 'help' {
  if (argv.includes('--help') || argv.includes('-h')) return 'help';
  const flags = flagMap(argv);

  const presetText = strFlag(flags, 'preset');
  const presets = presetText === undefined ? [...PRESET_NAMES] : presetText.split(',');
  for (const p of presets)
    if (p !== 'custom' && !PRESET_NAMES.includes(p)) throw new BenchUsageError('--preset', `a comma-separated list of ${[...PRESET_NAMES, 'custom'].join(', ')}`, presetText as string);
  if (new Set(presets).size !== presets.length) throw new BenchUsageError('--preset', 'each preset once', presetText as string);

  const experts = intFlag(flags, 'experts', 1, 1 << 16);
  let custom: CustomShape | undefined;
  const customFlags = ['hidden', 'intermediate', 'k', 'shared'].filter((f) => flags.has(f));
  if (presets.includes('custom')) {
    for (const f of ['hidden', 'intermediate', 'experts', 'k'])
      if (!flags.has(f)) throw new BenchUsageError(`--${f}`, 'a value with --preset custom (custom shapes need --hidden, --intermediate, --experts and --k)', 'nothing', true);
    const E = experts as number;
    const k = intFlag(flags, 'k', 1, 1 << 16) as number;
    if (k > E) throw new BenchUsageError('--k', `an integer between 1 and --experts (${E})`, String(k));
    custom = {
      hidden: intFlag(flags, 'hidden', 1, 1 << 20) as number,
      intermediate: intFlag(flags, 'intermediate', 1, 1 << 22) as number,
      experts: E,
      k,
      sharedIntermediate: intFlag(flags, 'shared', 0, 1 << 22) ?? 0,
    };
  } else if (customFlags.length > 0) {
    throw new BenchUsageError(`--${customFlags[0]}`, 'it only with --preset custom', strFlag(flags, customFlags[0]) as string);
  }

  const tokensText = strFlag(flags, 'tokens');
  let tokens: number[] | undefined;
  if (tokensText !== undefined) {
    const parts = tokensText.split(',');
    if (!parts.every((t) => /^\d+$/.test(t) && Number(t) >= 1 && Number(t) <= 1 << 24))
      throw new BenchUsageError('--tokens', 'a comma-separated list of integers between 1 and 16777216', tokensText);
    tokens = parts.map(Number);
  }

  const dtype = (strFlag(flags, 'dtype') ?? 'bf16') as DType;
  if (!FLOAT_DTYPES.includes(dtype)) throw new BenchUsageError('--dtype', FLOAT_DTYPES.join(', '), dtype);

  const deviceSpec = strFlag(flags, 'device') ?? 'auto';
  if (!/^(cpu|auto|cuda(:\d+)?)$/.test(deviceSpec)) throw new BenchUsageError('--device', 'cpu, cuda, cuda:N or auto', deviceSpec);

  const opText = strFlag(flags, 'op') ?? 'layer';
  const ops: BenchOp[] = [];
  for (const o of opText.split(',')) {
    const expanded = OPS[o];
    if (expanded === undefined) throw new BenchUsageError('--op', `a comma-separated list of ${Object.keys(OPS).join(', ')}`, opText);
    for (const e of expanded) if (!ops.includes(e)) ops.push(e);
  }

  const routingText = strFlag(flags, 'routing') ?? 'uniform';
  let routing: RoutingSpec;
  const traceLayer = intFlag(flags, 'trace-layer', 0);
  if (routingText === 'uniform') routing = { kind: 'uniform' };
  else if (routingText.startsWith('zipf:')) {
    const sText = routingText.slice(5);
    const s = Number(sText);
    if (!/^[0-9.eE+]+$/.test(sText) || !Number.isFinite(s) || s < 0 || s > 10) throw new BenchUsageError('--routing', 'zipf:S with S a number between 0 and 10', routingText);
    routing = { kind: 'zipf', s };
  } else if (routingText.startsWith('trace:') && routingText.length > 6) routing = { kind: 'trace', file: routingText.slice(6), layer: traceLayer ?? 0 };
  else throw new BenchUsageError('--routing', 'uniform, zipf:S or trace:FILE', routingText);
  if (traceLayer !== undefined && routing.kind !== 'trace') throw new BenchUsageError('--trace-layer', 'it only with --routing trace:FILE', String(traceLayer));

  return {
    presets,
    ...(custom !== undefined ? { custom } : {}),
    ...(experts !== undefined && !presets.includes('custom') ? { experts } : {}),
    ...(tokens !== undefined ? { tokens } : {}),
    dtype,
    deviceSpec,
    ops,
    routing,
    warmup: intFlag(flags, 'warmup', 0, 100000) ?? 3,
    repeats: intFlag(flags, 'repeats', 1, 100000) ?? 20,
    graph: flags.get('no-graph') !== true,
    ...(flags.has('peak-tflops') ? { peakTflops: numFlag(flags, 'peak-tflops') } : {}),
    ...(flags.has('bandwidth-gbs') ? { bandwidthGBs: numFlag(flags, 'bandwidth-gbs') } : {}),
    ...(flags.has('memory-limit-gib') ? { memoryLimit: Math.floor((numFlag(flags, 'memory-limit-gib') as number) * 2 ** 30) } : {}),
    seed: intFlag(flags, 'seed', 0, 2 ** 32 - 1) ?? 1,
    ...(flags.has('json') ? { json: strFlag(flags, 'json') } : {}),
    ...(flags.has('svg') ? { svg: strFlag(flags, 'svg') } : {}),
    ...(flags.has('anchors') ? { anchorsFile: strFlag(flags, 'anchors') } : {}),
  };
}

/** Where the command writes; tests pass their own. */
export interface BenchIo {
  out: (text: string) => void;
  err: (text: string) => void;
  /** Draw the progress bar (default: stderr is a TTY). */
  progress: boolean;
}

const defaultIo = (): BenchIo => ({
  out: (t) => process.stdout.write(t),
  err: (t) => process.stderr.write(t),
  progress: process.stderr.isTTY === true,
});

/** Runs `moekit bench` on `argv` (the arguments after `bench`); resolves to the exit status (never rejects). */
export async function runBenchCli(argv: string[], io: BenchIo = defaultIo()): Promise<number> {
  try {
    return await benchCommand(argv, io);
  } catch (e) {
    io.err(`moekit bench: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    return 1;
  }
}

/** `moekit bench compare BASE.json NEW.json` (lib/bench/compare.ts). */
function compareCommand(argv: string[], io: BenchIo): number {
  if (argv.includes('--help') || argv.includes('-h')) {
    io.out(COMPARE_USAGE + '\n');
    return 0;
  }
  if (argv.length !== 2 || argv.some((a) => a.startsWith('--'))) {
    io.err(`moekit bench compare: expected two report files (BASE.json NEW.json), received ${JSON.stringify(argv)}\n`);
    return 2;
  }
  try {
    const [base, next] = [readBenchReport(argv[0], 'BASE'), readBenchReport(argv[1], 'NEW')];
    for (const l of formatComparison(compareReports(base, next), argv[0], argv[1])) io.out(l + '\n');
    return 0;
  } catch (e) {
    if (!(e instanceof CompareInputError)) throw e;
    io.err(`moekit bench compare: ${e.message}\n`);
    return 2;
  }
}

async function benchCommand(argv: string[], io: BenchIo): Promise<number> {
  if (argv[0] === 'compare') return compareCommand(argv.slice(1), io);
  if (argv[0] === 'offload') {
    // The expert-offloading benchmark parses its own options (lib/offload/bench.ts).
    const { runOffloadBenchCli } = await import('../offload/bench');
    return runOffloadBenchCli(argv.slice(1), io);
  }
  let args: BenchArgs;
  let device: Device;
  let trace: RoutingTrace | undefined;
  let anchors: Anchors | undefined;
  try {
    const parsed = parseBenchArgs(argv);
    if (parsed === 'help') {
      io.out(BENCH_USAGE + '\n');
      return 0;
    }
    args = parsed;
    try {
      device = resolveDevice(args.deviceSpec, '--device');
    } catch (e) {
      // A missing native binary is a failure (exit 1); an unusable device a bad --device.
      if (e instanceof MoekitError && e.code !== 'ERR_CUDA_UNAVAILABLE') throw e;
      throw new BenchUsageError('--device', 'a usable device', `${JSON.stringify(args.deviceSpec)} (${(e as Error).message})`, true);
    }
    if (args.routing.kind === 'trace') {
      try {
        trace = readTrace(args.routing.file);
      } catch (e) {
        throw new BenchUsageError('--routing', 'trace:FILE naming a readable routing trace (.u8 + .json)', (e as Error).message, true);
      }
      if (trace.tokens === 0) throw new BenchUsageError('--routing', 'a trace with at least one token', args.routing.file);
      if (args.routing.layer >= trace.layers) throw new BenchUsageError('--trace-layer', `a trace layer index below ${trace.layers}`, String(args.routing.layer));
    }
    for (const [flag, file] of [['--json', args.json], ['--svg', args.svg]] as const) {
      if (file === undefined) continue;
      // Checked now so that a long run does not end in a failed write.
      try {
        fs.accessSync(path.dirname(path.resolve(file)), fs.constants.W_OK);
      } catch (e) {
        throw new BenchUsageError(flag, 'a file in a writable directory', `${JSON.stringify(file)} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, true);
      }
    }
    if (args.anchorsFile !== undefined) {
      try {
        anchors = readAnchors(args.anchorsFile);
      } catch (e) {
        throw new BenchUsageError('--anchors', 'an anchors JSON file (format in docs/BENCHMARKS.md)', (e as Error).message, true);
      }
    }
  } catch (e) {
    if (e instanceof BenchUsageError || e instanceof PlainUsageError) {
      io.err(`moekit bench: ${e.message}\n`);
      return 2;
    }
    if (e instanceof MoekitError) {
      io.err(`moekit bench: ${e.message}\n`);
      return 1;
    }
    throw e;
  }

  const options: BenchOptions = { ...args, device, ...(trace !== undefined ? { trace } : {}) };
  let barShown = false;
  const clearBar = () => {
    if (barShown) io.err('\r\x1b[2K');
    barShown = false;
  };
  let report: BenchReport;
  try {
    report = await runBench(options, {
      header: (r) => io.out(formatHeader(r) + '\n'),
      row: (row) => {
        clearBar();
        io.out(formatRow(row) + '\n');
      },
      progress: io.progress
        ? (done, total, label) => {
            io.err(`\r\x1b[2K${progressLine(done, total, label)}`);
            barShown = done < total;
            if (!barShown) io.err('\r\x1b[2K');
          }
        : undefined,
    });
  } catch (e) {
    clearBar();
    if (e instanceof MoekitError) {
      io.err(`moekit bench: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
  for (const n of report.notes) io.out(`note: ${n}\n`);
  if (anchors !== undefined) for (const l of formatAnchorComparison(report, anchors)) io.out(l + '\n');
  const skipped = report.rows.filter((r) => r.status === 'skipped').length;
  if (skipped > 0) io.out(`${skipped} of ${report.rows.length} cells skipped (reasons above)\n`);
  try {
    if (args.json !== undefined) {
      fs.writeFileSync(args.json, JSON.stringify(report, null, 2) + '\n');
      io.out(`wrote ${args.json}\n`);
    }
    if (args.svg !== undefined) {
      fs.writeFileSync(args.svg, renderSvg(report, anchors));
      io.out(`wrote ${args.svg}\n`);
    }
  } catch (e) {
    io.err(`moekit bench: ${(e as Error).message}\n`);
    return 1;
  }
  return 0;
}
