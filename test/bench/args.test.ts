import * as fs from 'fs';
import * as path from 'path';
import { BenchUsageError, parseBenchArgs, runBenchCli } from '../../lib/bench/cli';
import { formatAnchorComparison, parseAnchors } from '../../lib/bench/output';
import { PRESET_NAMES } from '../../lib/bench/shapes';

function capture() {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { out: (t: string) => void out.push(t), err: (t: string) => void err.push(t), progress: false }, out, err };
}

function parseError(argv: string[]): Error {
  let caught: unknown;
  try {
    parseBenchArgs(argv);
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(Error);
  return caught as Error;
}

describe('moekit bench arguments', () => {
  test('defaults', () => {
    const a = parseBenchArgs([]);
    if (a === 'help') throw new Error('help');
    expect(a.presets).toEqual([...PRESET_NAMES]);
    expect(a.presets).toEqual(['mixtral-8x7b', 'qwen3-30b-a3b', 'olmoe-1b-7b', 'deepseek-v3']);
    expect(a.ops).toEqual(['layer']);
    expect(a.dtype).toBe('bf16');
    expect(a.deviceSpec).toBe('auto');
    expect(a.routing).toEqual({ kind: 'uniform' });
    expect([a.warmup, a.repeats, a.graph]).toEqual([3, 20, true]);
    expect(a.tokens).toBeUndefined();
  });

  test('values are parsed, in both --flag value and --flag=value forms', () => {
    const a = parseBenchArgs(['--preset=custom,olmoe-1b-7b', '--hidden', '96', '--intermediate', '40', '--experts', '12', '--k=3', '--shared', '20', '--tokens', '1,7,300', '--op', 'gemm,layer', '--routing', 'zipf:1.5', '--dtype', 'f16', '--no-graph', '--peak-tflops', '2.5', '--memory-limit-gib', '0.5']);
    if (a === 'help') throw new Error('help');
    expect(a.custom).toEqual({ hidden: 96, intermediate: 40, experts: 12, k: 3, sharedIntermediate: 20 });
    expect(a.experts).toBeUndefined(); // with custom, --experts is the custom shape's count
    expect(a.tokens).toEqual([1, 7, 300]);
    expect(a.ops).toEqual(['gemm-up', 'gemm-down', 'layer']);
    expect(a.routing).toEqual({ kind: 'zipf', s: 1.5 });
    expect(a.dtype).toBe('f16');
    expect(a.graph).toBe(false);
    expect(a.peakTflops).toBe(2.5);
    expect(a.memoryLimit).toBe(2 ** 29);
    const all = parseBenchArgs(['--op', 'all', '--experts', '16', '--routing', 'trace:/x/y.u8', '--trace-layer', '2']);
    if (all === 'help') throw new Error('help');
    expect(all.ops).toEqual(['gating', 'dispatch', 'gemm-up', 'gemm-down', 'combine', 'layer']);
    expect(all.experts).toBe(16);
    expect(all.routing).toEqual({ kind: 'trace', file: '/x/y.u8', layer: 2 });
    expect(parseBenchArgs(['--tokens', '5', '--help'])).toBe('help');
  });

  test.each([
    [['--tokens', '1,x,16'], '--tokens: expected a comma-separated list of integers between 1 and 16777216, received "1,x,16"'],
    [['--tokens', '0'], '--tokens: expected a comma-separated list of integers between 1 and 16777216, received "0"'],
    [['--dtype', 'f64'], '--dtype: expected f32, f16, bf16, received "f64"'],
    [['--device', 'gpu'], '--device: expected cpu, cuda, cuda:N or auto, received "gpu"'],
    [['--op', 'gemm,softmax'], '--op: expected a comma-separated list of gating, dispatch, gemm, combine, layer, all, received "gemm,softmax"'],
    [['--routing', 'zipf:abc'], '--routing: expected zipf:S with S a number between 0 and 10, received "zipf:abc"'],
    [['--routing', 'random'], '--routing: expected uniform, zipf:S or trace:FILE, received "random"'],
    [['--preset', 'mixtral'], '--preset: expected a comma-separated list of mixtral-8x7b, qwen3-30b-a3b, olmoe-1b-7b, deepseek-v3, custom, received "mixtral"'],
    [['--preset', 'custom', '--intermediate', '8', '--experts', '4', '--k', '2'], '--hidden: expected a value with --preset custom (custom shapes need --hidden, --intermediate, --experts and --k), received nothing'],
    [['--preset', 'custom', '--hidden', '8', '--intermediate', '8', '--experts', '4', '--k', '5'], '--k: expected an integer between 1 and --experts (4), received "5"'],
    [['--hidden', '64'], '--hidden: expected it only with --preset custom, received "64"'],
    [['--repeats', '0'], '--repeats: expected an integer between 1 and 100000, received "0"'],
    [['--warmup', '-1'], '--warmup: expected an integer between 0 and 100000, received "-1"'],
    [['--peak-tflops', 'fast'], '--peak-tflops: expected a positive number, received "fast"'],
    [['--trace-layer', '1'], '--trace-layer: expected it only with --routing trace:FILE, received "1"'],
  ])('%j is rejected naming the flag', (argv, message) => {
    const e = parseError(argv as string[]);
    expect(e).toBeInstanceOf(BenchUsageError);
    expect(e.message).toBe(message);
  });

  test('unknown options, missing values and repeats are usage errors', () => {
    expect(parseError(['--tokenz', '1']).message).toBe('unknown option --tokenz for bench (see moekit bench --help)');
    expect(parseError(['--tokens']).message).toBe('--tokens needs a value');
    expect(parseError(['--tokens', '--op', 'layer']).message).toBe('--tokens needs a value');
    expect(parseError(['--op', 'layer', '--op', 'gemm']).message).toBe('--op given twice');
    expect(parseError(['--no-graph=1']).message).toBe('--no-graph takes no value');
    expect(parseError(['layer']).message).toMatch(/^unexpected argument "layer"/);
  });

  test('the command exits 2 with the message on stderr, and 0 for --help', async () => {
    const c = capture();
    expect(await runBenchCli(['--dtype', 'int8'], c.io)).toBe(2);
    expect(c.err.join('')).toBe('moekit bench: --dtype: expected f32, f16, bf16, received "int8"\n');
    expect(c.out).toEqual([]);
    const h = capture();
    expect(await runBenchCli(['--help'], h.io)).toBe(0);
    expect(h.out.join('')).toMatch(/^Usage: moekit bench/);
  });

  test('bench offload goes to the offloading benchmark (its own argument errors, exit 2)', async () => {
    const c = capture();
    expect(await runBenchCli(['offload', '--cache-fraction', '7'], c.io)).toBe(2);
    expect(c.err.join('')).toMatch(/^moekit bench offload: .*cache-fraction/);
  });

  test('a bad --anchors file or trace is a bad argument naming the flag', async () => {
    const c = capture();
    expect(await runBenchCli(['--device', 'cpu', '--anchors', '/nonexistent/anchors.json'], c.io)).toBe(2);
    expect(c.err.join('')).toMatch(/^moekit bench: --anchors: expected an anchors JSON file \(format in docs\/BENCHMARKS.md\), received cannot read \/nonexistent\/anchors.json \(ENOENT\)/);
    const j = capture();
    expect(await runBenchCli(['--device', 'cpu', '--json', '/nonexistent/dir/out.json'], j.io)).toBe(2);
    expect(j.err.join('')).toBe('moekit bench: --json: expected a file in a writable directory, received "/nonexistent/dir/out.json" (ENOENT)\n');
    const t = capture();
    expect(await runBenchCli(['--device', 'cpu', '--routing', 'trace:/nonexistent/t'], t.io)).toBe(2);
    expect(t.err.join('')).toMatch(/^moekit bench: --routing: expected trace:FILE naming a readable routing trace/);
  });
});

describe('anchors files', () => {
  test('points give efficiency, or ms and floorMs', () => {
    const a = parseAnchors(JSON.stringify({ series: [{ name: 'x', points: [{ tokens: 3, efficiency: 0.25 }, { tokens: 8, ms: 4, floorMs: 1 }] }] }), 'a.json');
    expect(a.series).toEqual([{ name: 'x', points: [{ tokens: 3, efficiency: 0.25 }, { tokens: 8, efficiency: 0.25, ms: 4, floorMs: 1 }] }]);
  });

  test.each([
    ['[]', 'a.json: (top level): expected an object with "series", received []'],
    ['{"series": {}}', 'a.json: series: expected an array, received {}'],
    ['{"series": [{"name": "x", "points": [{"tokens": 0, "efficiency": 1}]}]}', 'a.json: series[0].points[0].tokens: expected a positive integer, received 0'],
    ['{"series": [{"name": "x", "points": [{"tokens": 2, "ms": 1}]}]}', 'a.json: series[0].points[0].floorMs: expected a positive number (with ms), received undefined'],
  ])('%s is rejected naming the field', (text, message) => {
    expect(() => parseAnchors(text, 'a.json')).toThrow(message);
  });

  test('the layer rows are compared with anchor times, scored against the anchor floor', () => {
    const anchors = parseAnchors(JSON.stringify({ source: 'made up', series: [{ name: 'best', preset: 'p', points: [{ tokens: 1, ms: 2, floorMs: 1.8 }, { tokens: 4, ms: 1, floorMs: 0.5 }, { tokens: 9, efficiency: 0.5 }] }] }), 'a.json');
    const row = (tokens: number, ms: number, op = 'layer') => ({ preset: 'p', op, tokens, status: 'ok', ms, basis: 'device' });
    const report = { rows: [row(1, 2), row(1, 0.5, 'gemm-up'), row(4, 2), row(9, 1), { ...row(16, 1), preset: 'q' }] } as unknown as Parameters<typeof formatAnchorComparison>[0];
    const lines = formatAnchorComparison(report, anchors);
    expect(lines[0]).toBe('against the anchors (made up):');
    // T = 1: 2 ms vs 2 ms (not faster), eff 1.8 / 2; T = 4: 2 ms vs 1 ms, eff 0.5 / 2. T = 9 has no ms, q no series.
    expect(lines.slice(2, 4).map((l) => l.split(/\s+/))).toEqual([
      ['p', '1', '2.000', 'best', '2.000', '1.00x', '0.90'],
      ['p', '4', '2.000', 'best', '1.000', '0.50x', '0.25'],
    ]);
    expect(lines[lines.length - 1]).toBe('moekit faster in 0 of 2 cells; eff* >= 0.80 in 1 of 2');
    expect(formatAnchorComparison({ rows: [row(2, 1)] } as unknown as Parameters<typeof formatAnchorComparison>[0], anchors)).toEqual([]);
  });

  test('the recorded H100 run against the H100 anchors: faster in the 3 decode cells of docs/BENCHMARKS.md', () => {
    const root = path.join(__dirname, '..', '..');
    const anchors = parseAnchors(fs.readFileSync(path.join(root, 'bench', 'anchors-h100.json'), 'utf8'), 'anchors-h100.json');
    const report = JSON.parse(fs.readFileSync(path.join(root, 'bench', 'results', 'h100-layer-7437cb4.json'), 'utf8'));
    const lines = formatAnchorComparison(report, anchors);
    expect(lines).toHaveLength(2 + 24 + 2);
    expect(lines[lines.length - 1]).toBe('moekit faster in 3 of 24 cells; eff* >= 0.80 in 1 of 24');
    expect(lines.filter((l) => /\s(1\.\d\d)x\s/.test(l)).map((l) => l.split(/\s+/).slice(0, 2).join(' '))).toEqual(['mixtral-8x7b 1', 'qwen3-30b-a3b 1', 'olmoe-1b-7b 1']);
  });

  test('the sample H100 anchors parse: four presets, six token counts each', () => {
    const a = parseAnchors(fs.readFileSync(path.join(__dirname, '..', '..', 'bench', 'anchors-h100.json'), 'utf8'), 'bench/anchors-h100.json');
    expect(a.series.map((s) => s.preset)).toEqual(['mixtral-8x7b', 'qwen3-30b-a3b', 'deepseek-v3', 'olmoe-1b-7b']);
    for (const s of a.series) {
      expect(s.points.map((p) => p.tokens)).toEqual([1, 16, 128, 1024, 4096, 16384]);
      for (const p of s.points) expect(p.efficiency > 0 && p.efficiency <= 1).toBe(true);
    }
  });
});
