#!/usr/bin/env node
/**
 * The `moekit` command (package.json "bin" → dist/cli.js):
 * - `moekit run-layer --model DIR --layer N --input IN.safetensors --output OUT.safetensors
 *   [--device cpu|cuda] [--dtype f32|bf16|f16]` runs one MoE layer of a checkpoint on the
 *   input's tensor `x` [T, hidden] and writes `y` [T, hidden], `ids` and `weights` [T, k].
 * - `moekit layers --model DIR [--json]` lists a checkpoint's MoE layers.
 * - `moekit bench [options]` times layers and ops (lib/bench/cli.ts).
 * Exit codes: 0 success, 1 failure (a MoekitError's message), 2 bad arguments.
 */
import * as path from 'path';
import { DType, FLOAT_DTYPES } from './dtype';
import { MoekitError } from './errors';
import { MoELayer } from './layer';
import { listMoELayers } from './pretrained';
import { SafetensorsFile, writeSafetensors } from './safetensors';
import { Tensor } from './tensor';

const USAGE = `Usage:
  moekit run-layer --model DIR --layer N --input IN.safetensors --output OUT.safetensors
                   [--device cpu|cuda] [--dtype f32|bf16|f16]
  moekit layers --model DIR [--json]
  moekit cache-sim --trace FILE --capacity N --policy lru|lfu|lfru|static|belady|lookahead
                   [--prefetch affinity|layerwise] [--per-layer] [--reset-per-sequence] [--json] …
  moekit bench [--preset LIST] [--tokens LIST] [--op LIST] [--device D] [--json FILE] …
  moekit --help

run-layer  Runs MoE layer N of the Hugging Face checkpoint in DIR (config.json and
           *.safetensors) on tensor "x" [T, hidden] of IN.safetensors (F32, F16 or BF16)
           and writes OUT.safetensors with:
             y        [T, hidden]  the layer output, in --dtype (default: x's dtype)
             ids      [T, k]       chosen experts, slots in descending weight order,
                                   stored as F32 (small integers, exactly representable)
             weights  [T, k]       F32 routing weights
           --device picks where the layer runs (default: MOEKIT_DEVICE, else auto).
layers     Lists the checkpoint's MoE layers: shapes, experts per token, routing.
           --json prints the listing as JSON.
cache-sim  Replays an expert-routing trace (.u8 + .json) through an expert-cache policy
           and reports hit rate and experts moved beside Belady's bound (docs/CACHE.md;
           \`moekit cache-sim --help\` lists every option).
bench      Times MoE layers and ops at the presets' shapes (device and JavaScript wall
           time, TFLOP/s, GB/s, roofline floor, efficiency); \`moekit bench --help\`
           lists every option (docs/BENCHMARKS.md).

Exit status: 0 on success, 1 when the work fails, 2 for bad arguments.`;

/** A command-line mistake: printed as one line, exit status 2. */
class UsageError extends Error {}

interface Parsed {
  command: string;
  flags: Map<string, string | true>;
}

const COMMANDS: Record<string, { values: string[]; switches: string[]; required: string[] }> = {
  'run-layer': { values: ['model', 'layer', 'input', 'output', 'device', 'dtype'], switches: [], required: ['model', 'layer', 'input', 'output'] },
  layers: { values: ['model'], switches: ['json'], required: ['model'] },
};

function parse(argv: string[]): Parsed | 'help' {
  if (argv.length === 0) throw new UsageError('no command given (run-layer, layers, cache-sim or bench; see moekit --help)');
  if (argv.includes('--help') || argv.includes('-h') || argv[0] === 'help') return 'help';
  const [command, ...rest] = argv;
  const spec = COMMANDS[command];
  if (spec === undefined) throw new UsageError(`unknown command ${JSON.stringify(command)} (commands: ${[...Object.keys(COMMANDS), 'cache-sim', 'bench'].join(', ')}; see moekit --help)`);
  const flags = new Map<string, string | true>();
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i];
    if (!arg.startsWith('--')) throw new UsageError(`unexpected argument ${JSON.stringify(arg)} for ${command}`);
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    if (spec.switches.includes(name)) {
      if (eq >= 0) throw new UsageError(`--${name} takes no value`);
      flags.set(name, true);
      continue;
    }
    if (!spec.values.includes(name)) throw new UsageError(`unknown option --${name} for ${command} (options: ${[...spec.values, ...spec.switches].map((v) => `--${v}`).join(', ')})`);
    if (flags.has(name)) throw new UsageError(`--${name} given twice`);
    let value: string | undefined;
    if (eq >= 0) value = arg.slice(eq + 1);
    else {
      value = rest[i + 1];
      i++;
    }
    if (value === undefined || value === '' || (eq < 0 && value.startsWith('--'))) throw new UsageError(`--${name} needs a value`);
    flags.set(name, value);
  }
  const missing = spec.required.filter((r) => !flags.has(r));
  if (missing.length > 0) throw new UsageError(`${command} needs ${missing.map((m) => `--${m}`).join(', ')} (see moekit --help)`);
  return { command, flags };
}

function str(flags: Parsed['flags'], name: string): string | undefined {
  const v = flags.get(name);
  return typeof v === 'string' ? v : undefined;
}

async function runLayer(flags: Parsed['flags']): Promise<void> {
  const model = str(flags, 'model') as string;
  const layerText = str(flags, 'layer') as string;
  if (!/^\d+$/.test(layerText)) throw new UsageError(`--layer takes a layer index (a non-negative integer), not ${JSON.stringify(layerText)}`);
  const layerIndex = Number(layerText);
  const dtypeText = str(flags, 'dtype');
  if (dtypeText !== undefined && !FLOAT_DTYPES.includes(dtypeText as DType)) throw new UsageError(`--dtype takes ${FLOAT_DTYPES.join(', ')}, not ${JSON.stringify(dtypeText)}`);
  const device = str(flags, 'device');
  if (device !== undefined && !/^(cpu|auto|cuda(:\d+)?)$/.test(device)) throw new UsageError(`--device takes cpu, cuda, cuda:N or auto, not ${JSON.stringify(device)}`);
  const input = str(flags, 'input') as string;
  const output = str(flags, 'output') as string;

  const file = SafetensorsFile.open(input);
  const entry = file.entry('x');
  const layer = await MoELayer.fromPretrained(model, { layer: layerIndex, ...(device !== undefined ? { device } : {}) });
  const tensors: Tensor[] = [];
  try {
    const H = layer.config.hidden;
    if (entry.shape.length !== 2 || entry.shape[1] !== H)
      throw new MoekitError(`${input}: tensor "x" has shape [${entry.shape.join(', ')}] but layer ${layerIndex} of ${model} takes [tokens, ${H}]`, 'ERR_CHECKPOINT');
    const x = await file.read('x');
    tensors.push(x);
    const outDtype = (dtypeText as DType | undefined) ?? x.dtype;
    const started = process.hrtime.bigint();
    const { output: y, routing } = await layer.forward(x, { returnRouting: true, outputDtype: outDtype });
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    tensors.push(y, routing.ids, routing.weights, routing.load);
    const ids = Tensor.from(Float32Array.from((await routing.ids.toArray()) as Int32Array), routing.ids.shape);
    tensors.push(ids);
    await writeSafetensors(
      output,
      { y, ids, weights: routing.weights },
      { metadata: { format: 'pt', producer: 'moekit run-layer', model: path.resolve(model), layer: String(layerIndex), ids: 'expert ids stored as F32' } },
    );
    const [T, k] = routing.ids.shape;
    process.stdout.write(
      `layer ${layerIndex} (${layer.routing.experts} experts, k ${k}): ${T} tokens in ${ms.toFixed(1)} ms; wrote ${output} (y ${outDtype} [${T}, ${H}], ids [${T}, ${k}], weights [${T}, ${k}])\n`,
    );
  } finally {
    for (const t of tensors) t.dispose();
    layer.dispose();
  }
}

function listLayers(flags: Parsed['flags']): void {
  const model = str(flags, 'model') as string;
  const layers = listMoELayers(model);
  if (flags.get('json') === true) {
    process.stdout.write(JSON.stringify(layers, null, 2) + '\n');
    return;
  }
  if (layers.length === 0) {
    process.stdout.write(`${model}: no MoE layers\n`);
    return;
  }
  const f = layers[0];
  process.stdout.write(`${model}: ${f.family}, ${layers.length} MoE layer(s)\n`);
  process.stdout.write('layer  hidden  intermediate  experts  k  shared  dtype  routing\n');
  for (const l of layers) {
    const r = l.preset.routing;
    const routing = [r.selection ?? 'topk', r.scoring ?? '', r.renormalize ? 'renormalize' : '', r.routedScaling !== undefined && r.routedScaling !== 1 ? `scaling ${r.routedScaling}` : '', r.nGroup !== undefined && r.nGroup > 1 ? `groups ${r.topkGroup}/${r.nGroup}` : '']
      .filter((s) => s !== '')
      .join(', ');
    process.stdout.write(
      `${String(l.layer).padStart(5)}  ${String(l.hidden).padStart(6)}  ${String(l.intermediate).padStart(12)}  ${String(l.experts).padStart(7)}  ${String(l.k).padStart(1)}  ${String(l.sharedIntermediate).padStart(6)}  ${l.dtype.padEnd(5)}  ${routing}\n`,
    );
  }
}

/** Runs the CLI on `argv` (without node and the script); resolves to the exit status. */
export async function main(argv: string[]): Promise<number> {
  if (argv[0] === 'cache-sim') {
    // The simulator parses its own options (lib/cache/simulate.ts).
    const { runCacheSimCli } = await import('./cache/simulate');
    return runCacheSimCli(argv.slice(1));
  }
  if (argv[0] === 'bench') {
    // The benchmark parses its own options (lib/bench/cli.ts).
    const { runBenchCli } = await import('./bench/cli');
    return runBenchCli(argv.slice(1));
  }
  try {
    const parsed = parse(argv);
    if (parsed === 'help') {
      process.stdout.write(USAGE + '\n');
      return 0;
    }
    if (parsed.command === 'run-layer') await runLayer(parsed.flags);
    else listLayers(parsed.flags);
    return 0;
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`moekit: ${err.message}\n`);
      return 2;
    }
    if (err instanceof MoekitError) {
      process.stderr.write(`moekit: ${err.message}\n`);
      return 1;
    }
    if (err instanceof RangeError || err instanceof TypeError) {
      // moekit's argument errors name the API argument; say which flag it came from.
      const message = err.message.replace(/\boptions\.layer\b/g, '--layer').replace(/\boptions\.device\b/g, '--device');
      process.stderr.write(`moekit: ${message}\n`);
      return 2;
    }
    const sys = err as NodeJS.ErrnoException;
    if (err instanceof Error && typeof sys.code === 'string' && typeof sys.syscall === 'string') {
      // A file system failure (no such directory for --output, permissions, …).
      process.stderr.write(`moekit: ${err.message}\n`);
      return 1;
    }
    process.stderr.write(`moekit: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    return 1;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
