/** End-to-end runs of `moekit bench` on the CPU at a tiny custom shape. */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { runBenchCli } from '../../lib/bench/cli';
import { makeRng, uniformIds } from '../../lib/bench/routing';
import { writeTrace } from '../../lib/cache/trace';
import { main } from '../../lib/cli';
import { testSeed } from '../helpers';

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moekit-bench-cli-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function capture() {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { out: (t: string) => void out.push(t), err: (t: string) => void err.push(t), progress: false }, out, err };
}

interface Timing {
  median: number;
  n: number;
}
interface Row {
  preset: string;
  op: string;
  tokens: number;
  status: string;
  reason: string | null;
  pairs: number;
  touched: number;
  expertRows: number[] | null;
  flops: number;
  bytes: number;
  floorMs: number | null;
  deviceMs: Timing | null;
  timer: string | null;
  wallMs: Timing | null;
  basis: string | null;
  ms: number | null;
  tflops: number | null;
  gbs: number | null;
  efficiency: number | null;
}

const H = 64;
const I = 40;
const E = 8;
const K = 2;
const tiny = ['--preset', 'custom', '--hidden', String(H), '--intermediate', String(I), '--experts', String(E), '--k', String(K), '--device', 'cpu', '--warmup', '1', '--repeats', '3'];

/** Loose SVG check: one root, balanced elements, numeric points inside the canvas. */
function checkSvg(svg: string): { polylines: number; dashed: number } {
  expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
  expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
  const w = Number(/width="(\d+)"/.exec(svg)?.[1]);
  const h = Number(/height="(\d+)"/.exec(svg)?.[1]);
  for (const tag of ['svg', 'text', 'polyline', 'circle', 'title']) {
    const opens = (svg.match(new RegExp(`<${tag}[\\s>]`, 'g')) ?? []).length - (svg.match(new RegExp(`<${tag}[^>]*/>`, 'g')) ?? []).length;
    expect({ tag, balanced: opens === (svg.match(new RegExp(`</${tag}>`, 'g')) ?? []).length }).toEqual({ tag, balanced: true });
  }
  const polylines = [...svg.matchAll(/<polyline[^>]*points="([^"]*)"/g)].map((m) => m[1]);
  for (const pts of polylines)
    for (const p of pts.split(' ')) {
      const [x, y] = p.split(',').map(Number);
      expect(x >= 0 && x <= w && y >= 0 && y <= h).toBe(true);
    }
  return { polylines: polylines.length, dashed: (svg.match(/<polyline[^>]*stroke-dasharray/g) ?? []).length };
}

describe('moekit bench on the CPU', () => {
  test('every op at a tiny custom shape: table, JSON with the documented fields, SVG with anchors', async () => {
    const json = path.join(dir, 'run.json');
    const svg = path.join(dir, 'run.svg');
    const anchors = path.join(dir, 'anchors.json');
    fs.writeFileSync(anchors, JSON.stringify({ source: 'test figures', series: [{ name: 'made up', preset: 'custom', points: [{ tokens: 1, efficiency: 0.5 }, { tokens: 33, ms: 2, floorMs: 1 }] }] }));
    const c = capture();
    const code = await runBenchCli([...tiny, '--tokens', '1,5,33', '--op', 'all', '--json', json, '--svg', svg, '--anchors', anchors, '--seed', String(testSeed('bench e2e'))], c.io);
    expect(c.err.join('')).toBe('');
    expect(code).toBe(0);
    const text = c.out.join('');
    expect(text).toMatch(/^device: cpu \(/);
    expect(text).toMatch(/bandwidth: [\d.]+ GB\/s \(memory copy of 256 MiB/);

    const report = JSON.parse(fs.readFileSync(json, 'utf8'));
    expect(report.version).toBe(1);
    expect(report.device.kind).toBe('cpu');
    expect(report.dtype).toBe('bf16');
    expect([report.warmup, report.repeats, report.routing]).toEqual([1, 3, 'uniform']);
    expect(report.bandwidth.gbs).toBeGreaterThan(0);
    expect(report.peak.tflops).toBeGreaterThanOrEqual(0);
    const rows = report.rows as Row[];
    const ops = ['gating', 'dispatch', 'gemm-up', 'gemm-down', 'combine', 'layer'];
    expect(rows.map((r) => `${r.tokens} ${r.op}`)).toEqual([1, 5, 33].flatMap((T) => ops.map((op) => `${T} ${op}`)));
    for (const r of rows) {
      expect([r.preset, r.status, r.reason, r.pairs]).toEqual(['custom', 'ok', null, r.tokens * K]);
      expect(r.touched).toBeGreaterThanOrEqual(1);
      expect(r.touched).toBeLessThanOrEqual(Math.min(E, r.tokens * K));
      // Rows per expert: E entries, summing to the pairs, non-zero for the touched experts.
      expect(r.expertRows).toHaveLength(E);
      expect(r.expertRows!.reduce((a, b) => a + b, 0)).toBe(r.pairs);
      expect(r.expertRows!.filter((m) => m > 0)).toHaveLength(r.touched);
      // One text line per row in the table.
      expect(text).toContain(`custom         ${r.op.padEnd(9)} ${String(r.tokens).padStart(6)} ${String(r.touched).padStart(7)}`);
      // Device time from the profiling API; wall time from JavaScript; both with `repeats` samples.
      expect(r.timer).toBe('steady-clock');
      expect(r.deviceMs?.n).toBe(3);
      expect(r.wallMs?.n).toBe(3);
      expect(r.basis).toBe('device');
      const ms = r.deviceMs!.median;
      expect(r.ms).toBe(ms);
      const floorMs = Math.max(report.peak.tflops > 0 ? r.flops / (report.peak.tflops * 1e12) : 0, r.bytes / (report.bandwidth.gbs * 1e9)) * 1e3;
      expect(r.floorMs).toBeCloseTo(floorMs, 9);
      expect(r.efficiency).toBeCloseTo(floorMs / ms, 9);
      expect(r.tflops).toBeCloseTo(r.flops / (ms / 1e3) / 1e12, 9);
      expect(r.gbs).toBeCloseTo(r.bytes / (ms / 1e3) / 1e9, 9);
    }
    // The layer's accounting, re-derived: router + both projections; router, touched experts, x and y in bf16.
    for (const r of rows.filter((x) => x.op === 'layer')) {
      expect(r.flops).toBe(2 * r.tokens * H * E + 6 * r.tokens * K * H * I);
      expect(r.bytes).toBe(E * H * 2 + r.touched * 3 * H * I * 2 + 2 * r.tokens * H * 2);
    }
    const s = checkSvg(fs.readFileSync(svg, 'utf8'));
    expect(s).toEqual({ polylines: ops.length + 1, dashed: 1 });
  });

  test('a routing trace forces the ids: the touched experts are those of the trace', async () => {
    const seed = testSeed('bench trace');
    const rng = makeRng(seed);
    const tokens = 23;
    const layers = 2;
    const ids = uniformIds(tokens * layers, 5, K, rng); // 5 of the 8 experts at most
    const stem = path.join(dir, 'trace');
    writeTrace(stem, { ids: Array.from(ids), tokens, layers, topK: K, expertsPerLayer: E });
    const json = path.join(dir, 'trace.json');
    const c = capture();
    expect(await runBenchCli([...tiny, '--tokens', '3,23', '--routing', `trace:${stem}`, '--trace-layer', '1', '--op', 'layer,dispatch', '--json', json], c.io)).toBe(0);
    const rows = JSON.parse(fs.readFileSync(json, 'utf8')).rows as Row[];
    for (const r of rows) {
      const used = new Set<number>();
      const rowsOf = new Array<number>(E).fill(0);
      for (let t = 0; t < r.tokens; t++)
        for (let s = 0; s < K; s++) {
          used.add(ids[(t * layers + 1) * K + s]);
          rowsOf[ids[(t * layers + 1) * K + s]]++;
        }
      expect([r.op, r.tokens, r.touched]).toEqual([r.op, r.tokens, used.size]);
      expect(r.expertRows).toEqual(rowsOf);
    }
  });

  test('cells that do not fit in memory are skipped with the reason; the run still succeeds', async () => {
    const json = path.join(dir, 'skip.json');
    const svg = path.join(dir, 'skip.svg');
    const c = capture();
    expect(await runBenchCli([...tiny, '--tokens', '1,16', '--op', 'gemm', '--memory-limit-gib', '0.0000001', '--json', json, '--svg', svg, '--bandwidth-gbs', '10'], c.io)).toBe(0);
    const text = c.out.join('');
    expect(text).toMatch(/custom +gemm-up +1 +skipped: weights need 0\.0 GiB \(\+0\.0 GiB while made\) of host memory; the limit is 0\.0 GiB \(--memory-limit-gib\); try --experts N/);
    expect(text).toContain('4 of 4 cells skipped');
    const rows = JSON.parse(fs.readFileSync(json, 'utf8')).rows as Row[];
    expect(rows.map((r) => [r.op, r.tokens, r.status, r.deviceMs, r.efficiency, r.expertRows])).toEqual([
      ['gemm-up', 1, 'skipped', null, null, null],
      ['gemm-down', 1, 'skipped', null, null, null],
      ['gemm-up', 16, 'skipped', null, null, null],
      ['gemm-down', 16, 'skipped', null, null, null],
    ]);
    for (const r of rows) expect(r.reason).toMatch(/^weights need/);
    expect(checkSvg(fs.readFileSync(svg, 'utf8')).polylines).toBe(0);
  });

  test('on a terminal a progress bar runs on stderr and is cleared at the end', async () => {
    const c = capture();
    expect(await runBenchCli([...tiny, '--tokens', '2,3', '--op', 'dispatch', '--bandwidth-gbs', '10'], { ...c.io, progress: true })).toBe(0);
    const err = c.err.join('');
    expect(err).toContain('[..............................] 0/2 custom dispatch T=2');
    expect(err).toContain('[###############...............] 1/2 custom dispatch T=3');
    expect(err.endsWith('\r\x1b[2K')).toBe(true);
    expect(c.out.join('')).not.toContain('[');
  });

  test('moekit bench is wired into the moekit command', async () => {
    const err: string[] = [];
    const spy = jest.spyOn(process.stderr, 'write').mockImplementation((t: string | Uint8Array) => (err.push(String(t)), true));
    try {
      expect(await main(['bench', '--repeats', 'many'])).toBe(2);
    } finally {
      spy.mockRestore();
    }
    expect(err.join('')).toBe('moekit bench: --repeats: expected an integer between 1 and 100000, received "many"\n');
  });
});
