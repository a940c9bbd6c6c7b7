import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { runCacheSimCli } from '../../lib/cache/simulate';
import { makeTrace, readTrace, selectSequences, writeTrace } from '../../lib/cache/trace';
import { MoekitError } from '../../lib/errors';
import { zipfTrace } from './synthetic';

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moekit-cache-'));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function expectError(fn: () => unknown, code: string, message: RegExp): void {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(MoekitError);
  expect((caught as MoekitError).code).toBe(code);
  expect((caught as MoekitError).message).toMatch(message);
}

describe('trace files', () => {
  test('write then read round-trips; NAME, NAME.u8 and NAME.json all work', () => {
    const t = zipfTrace({ tokens: 30, layers: 3, experts: 10, k: 2, seed: 5, sequences: [0, 10, 30] });
    const stem = path.join(dir, 'rt');
    writeTrace(stem, t);
    for (const p of [stem, `${stem}.u8`, `${stem}.json`]) {
      const r = readTrace(p);
      expect(Array.from(r.ids)).toEqual(Array.from(t.ids));
      expect([r.tokens, r.layers, r.topK, r.expertsPerLayer]).toEqual([30, 3, 2, 10]);
      expect(r.sequences).toEqual([0, 10, 30]);
    }
    const nested = makeTrace({ ids: [[[1, 2]], [[3, 0]]], expertsPerLayer: 4 });
    expect(Array.from(nested.ids)).toEqual([1, 2, 3, 0]);
    const sel = selectSequences(t, 15);
    expect(sel.tokens).toBe(20);
    expect(Array.from(sel.ids)).toEqual(Array.from(t.ids.subarray(10 * 6)));
  });

  function broken(name: string, meta: object, bytes: number[]): string {
    const stem = path.join(dir, name);
    fs.writeFileSync(`${stem}.json`, JSON.stringify(meta));
    fs.writeFileSync(`${stem}.u8`, Uint8Array.from(bytes));
    return stem;
  }
  const good = { shape: [2, 1, 2], experts_per_layer: 4, top_k: 2, layers: [0], sequences: [0, 2] };

  test('missing files are ERR_IO naming the file', () => {
    expectError(() => readTrace(path.join(dir, 'nope')), 'ERR_IO', /nope\.json: cannot read the trace's metadata \(ENOENT\)/);
    const stem = broken('nou8', good, []);
    fs.rmSync(`${stem}.u8`);
    expectError(() => readTrace(stem), 'ERR_IO', /nou8\.u8: cannot read the trace's expert ids/);
  });
  test('malformed traces are ERR_INVALID_ARGUMENT naming the file', () => {
    expectError(() => readTrace(broken('size', good, [0, 1, 2])), 'ERR_INVALID_ARGUMENT', /size\.u8: has 3 bytes but the shape \[2, 1, 2\].* needs 4/);
    expectError(() => readTrace(broken('id', good, [0, 1, 2, 4])), 'ERR_INVALID_ARGUMENT', /id\.u8: expert id 4 at token 1, layer 0, slot 1 is not below experts_per_layer = 4/);
    expectError(() => readTrace(broken('dup', good, [0, 1, 2, 2])), 'ERR_INVALID_ARGUMENT', /dup\.u8: expert id 2 appears twice/);
    expectError(() => readTrace(broken('seq', { ...good, sequences: [0, 3] }, [0, 1, 2, 3])), 'ERR_INVALID_ARGUMENT', /seq\.json: "sequences" must start at 0 and end at the token count 2/);
    expectError(() => readTrace(broken('dec', { ...good, shape: [3, 1, 2], sequences: [0, 2, 1, 3] }, [0, 1, 2, 3, 0, 1])), 'ERR_INVALID_ARGUMENT', /must not decrease/);
    expectError(() => readTrace(broken('topk', { ...good, top_k: 3 }, [0, 1, 2, 3])), 'ERR_INVALID_ARGUMENT', /"top_k" 3 does not match shape\[2\] = 2/);
    expectError(() => readTrace(broken('shape', { ...good, shape: [2, 2] }, [0, 1, 2, 3])), 'ERR_INVALID_ARGUMENT', /shape\.json: "shape" must be \[tokens, layers, k\]/);
    expectError(() => readTrace(broken('layers', { ...good, layers: [0, 1] }, [0, 1, 2, 3])), 'ERR_INVALID_ARGUMENT', /"layers" must list 1 layer indices/);
    expectError(() => readTrace(broken('e', { ...good, experts_per_layer: 300 }, [0, 1, 2, 3])), 'ERR_INVALID_ARGUMENT', /"experts_per_layer" must be an integer between 1 and 256/);
    const stem = path.join(dir, 'json');
    fs.writeFileSync(`${stem}.json`, '{not json');
    expectError(() => readTrace(stem), 'ERR_INVALID_ARGUMENT', /json\.json: not valid trace metadata/);
    expect(() => readTrace(42 as never)).toThrow(/Expected a trace path for file but received 42 of type number/);
  });
});

describe('cache-sim CLI', () => {
  let out: string;
  let err: string;
  let spies: jest.SpyInstance[];
  beforeEach(() => {
    out = '';
    err = '';
    spies = [
      jest.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => ((out += String(s)), true)),
      jest.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => ((err += String(s)), true)),
    ];
  });
  afterEach(() => spies.forEach((s) => s.mockRestore()));

  function traceFile(): string {
    const stem = path.join(dir, 'cli');
    writeTrace(stem, zipfTrace({ tokens: 200, layers: 4, experts: 16, k: 2, seed: 21, sequences: [0, 50, 200] }));
    return stem;
  }

  test('prints policy vs Belady', async () => {
    const stem = traceFile();
    const code = await runCacheSimCli(['--trace', `${stem}.u8`, '--capacity', '4', '--policy', 'lru', '--per-layer', '--reset-per-sequence', '--prefetch', 'affinity']);
    expect(err).toBe('');
    expect(code).toBe(0);
    expect(out).toMatch(/200 tokens in 2 sequences, 4 layers, top-2 of 16/);
    expect(out).toMatch(/4 experts per layer, emptied at each sequence start, policy lru/);
    expect(out).toMatch(/^lru\+affinity +\d+\.\d\d% +\d+\.\d\d% +\d+ +\d\.\d{3}x +\d+\/\d+\/\d+$/m);
    expect(out).toMatch(/^belady \(demand-only\) +\d+\.\d\d% +\d+\.\d\d% +\d+ +1\.000x/m);
    expect(out).toMatch(/^bar \(demand hit rate >= Belady's/m);
  });

  test('layerwise prefetch with protection, and the lookahead bound', async () => {
    const stem = traceFile();
    const argv = ['--trace', stem, '--capacity', '4', '--policy', 'lfru', '--per-layer', '--reset-per-sequence'];
    expect(await runCacheSimCli([...argv, '--prefetch', 'layerwise', '--prefetch-depth', '2', '--prefetch-protect', '0.25', '--prefetch-min-probability', '0.2'])).toBe(0);
    expect(err).toBe('');
    expect(out).toMatch(/layerwise prefetch \(depth 2, <= 2\/step, p >= 0\.2, guarded, protecting p >= 0\.25\)/);
    expect(out).toMatch(/^lfru\+layerwise +\d+\.\d\d% +\d+\.\d\d% +\d+ +\d\.\d{3}x +\d+\/\d+\/\d+$/m);
    out = '';
    expect(await runCacheSimCli(['--trace', stem, '--capacity', '4', '--policy', 'lookahead', '--lookahead', '3', '--per-layer', '--json'])).toBe(0);
    const r = JSON.parse(out);
    expect(r.options.lookahead).toBe(3);
    expect(r.run.name).toBe('lookahead');
    expect(r.belady.total.hits).toBeGreaterThanOrEqual(r.run.total.hits);
  });

  test('--json, --min-sequence-tokens and a shared cache', async () => {
    const stem = traceFile();
    expect(await runCacheSimCli([`--trace=${stem}`, '--capacity=12', '--policy=lfu', '--min-sequence-tokens', '100', '--json'])).toBe(0);
    const r = JSON.parse(out);
    expect(r.trace.tokens).toBe(150);
    expect(r.options.perLayer).toBe(false);
    expect(r.run.total.accesses).toBe(150 * 4 * 2);
    expect(r.belady.total.hits).toBeGreaterThanOrEqual(r.run.total.hits);
  });

  test.each([
    [[], /needs --trace/],
    [['--trace', 'x', '--capacity', '4'], /needs --policy/],
    [['--trace', 'x', '--capacity', 'four', '--policy', 'lru'], /--capacity takes an integer >= 1, not "four"/],
    [['--trace', 'x', '--capacity', '4', '--policy', 'fifo'], /--policy takes lru, lfu, lfru, static, belady, lookahead, not "fifo"/],
    [['--trace', 'x', '--capacity', '4', '--policy', 'lru', '--prefetch-protect', '1.5'], /--prefetch-protect takes a number between 0 and 1, not "1.5"/],
    [['--trace', 'x', '--capacity', '4', '--policy', 'lru', '--prefetch-depth', '0'], /--prefetch-depth takes an integer >= 1, not "0"/],
    [['--trace', 'x', '--capacity', '4', '--policy', 'lookahead', '--lookahead', 'far'], /--lookahead takes a number between 0 and/],
    [['--trace', 'x', '--capacity', '4', '--policy', 'lru', '--prefetch', 'pregate'], /--prefetch takes none, affinity/],
    [['--trace', 'x', '--capacity', '4', '--policy', 'lru', '--bogus'], /unknown option --bogus/],
    [['--trace', 'x', '--capacity', '4', '--policy', 'lru', '--per-layer=1'], /--per-layer takes no value/],
    [['--trace'], /--trace needs a value/],
  ])('bad arguments %j → one line, status 2', async (argv, message) => {
    expect(await runCacheSimCli(argv as string[])).toBe(2);
    expect(err).toMatch(message);
    expect(err.trim().split('\n')).toHaveLength(1);
  });

  test('capacity out of range for the trace → 2; unreadable trace → 1', async () => {
    const stem = traceFile();
    expect(await runCacheSimCli(['--trace', stem, '--capacity', '17', '--policy', 'lru', '--per-layer'])).toBe(2);
    expect(err).toMatch(/--capacity takes 2 \(top_k\) to 16 \(experts per layer\) for this trace, not 17/);
    err = '';
    expect(await runCacheSimCli(['--trace', path.join(dir, 'missing'), '--capacity', '4', '--policy', 'lru'])).toBe(1);
    expect(err).toMatch(/missing\.json: cannot read/);
  });

  test('--help', async () => {
    expect(await runCacheSimCli(['--help'])).toBe(0);
    expect(out).toMatch(/Usage: moekit cache-sim --trace FILE --capacity N --policy/);
  });
});
