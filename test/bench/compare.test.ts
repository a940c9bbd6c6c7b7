/** `moekit bench compare`: two bench reports compared cell by cell (lib/bench/compare.ts). */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { runBenchCli } from '../../lib/bench/cli';
import { compareReports, formatComparison } from '../../lib/bench/compare';
import type { BenchReport, BenchRow } from '../../lib/bench/run';

function capture() {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { out: (t: string) => void out.push(t), err: (t: string) => void err.push(t), progress: false }, out, err };
}

const timing = (median: number, spread: number) => ({ median, min: median - spread, max: median + spread, p10: median - spread / 2, p90: median + spread / 2, n: 20 });

function row(preset: string, op: string, tokens: number, dev: number | null, wall: number, spread = 0.01, status: 'ok' | 'skipped' = 'ok'): BenchRow {
  return {
    preset, op: op as BenchRow['op'], tokens, status, reason: status === 'ok' ? null : 'too big',
    hidden: 64, intermediate: 32, experts: 8, k: 2, sharedIntermediate: 0, pairs: tokens * 2, touched: 2, expertRows: null, flops: 1, bytes: 1,
    floorMs: status === 'ok' ? 0.1 : null,
    deviceMs: status === 'ok' && dev !== null ? timing(dev, spread) : null,
    timer: dev === null ? null : 'cuda-event', graph: dev !== null,
    wallMs: status === 'ok' ? timing(wall, spread) : null,
    basis: status === 'ok' ? (dev === null ? 'wall' : 'device') : null,
    ms: status === 'ok' ? (dev ?? wall) : null, tflops: null, gbs: null, efficiency: null,
  };
}

function report(rows: BenchRow[], over: Partial<BenchReport> = {}): BenchReport {
  return {
    version: 1, date: '2026-11-23T00:00:00Z', device: { name: 'cuda:0', kind: 'cuda', description: 'NVIDIA H100 80GB HBM3', memoryLimitBytes: 1 },
    dtype: 'bf16', routing: 'uniform', warmup: 3, repeats: 20, peak: { tflops: 715, source: 'x' }, bandwidth: { gbs: 3000, source: 'x' },
    deviceTimer: 'cuda-event', seed: 1, notes: [], rows, ...over,
  };
}

describe('bench compare', () => {
  test('speed-ups, verdicts from the spreads, the geometric mean, device time preferred', () => {
    const base = report([row('mixtral-8x7b', 'layer', 1, 0.3, 0.7), row('mixtral-8x7b', 'layer', 16, 1.5, 2.1, 0.02), row('qwen3-30b-a3b', 'gemm-up', 128, 0.6, 0.9, 0.2)]);
    const next = report([row('mixtral-8x7b', 'layer', 1, 0.32, 0.69), row('mixtral-8x7b', 'layer', 16, 1.0, 1.6, 0.02), row('qwen3-30b-a3b', 'gemm-up', 128, 0.55, 0.85, 0.2)], {
      notes: ['MOEKIT_SKINNY=1 (tensor-core grouped GEMM for experts with 3..16 rows)'],
    });
    const c = compareReports(base, next);
    expect(c.cells.map((x) => [x.preset, x.op, x.tokens, x.basis, x.verdict])).toEqual([
      ['mixtral-8x7b', 'layer', 1, 'device', 'slower'], // 0.32 +- 0.005 vs 0.3 +- 0.005
      ['mixtral-8x7b', 'layer', 16, 'device', 'faster'],
      ['qwen3-30b-a3b', 'gemm-up', 128, 'device', 'within spread'], // p10..p90 overlap
    ]);
    expect(c.cells[1].speedup).toBeCloseTo(1.5, 12);
    expect(c.geomeanSpeedup).toBeCloseTo(Math.cbrt((0.3 / 0.32) * (1.5 / 1.0) * (0.6 / 0.55)), 12);
    expect(c.sameDevice).toBe(true);
    expect(c.differences).toEqual(['notes: [] -> ["MOEKIT_SKINNY=1 (tensor-core grouped GEMM for experts with 3..16 rows)"]']);
    const text = formatComparison(c, 'off.json', 'on.json').join('\n');
    expect(text).toMatch(/mixtral-8x7b +layer +16 +device +1\.500 +1\.000 +1\.50x +faster/);
    expect(text).toMatch(/3 cells compared: geometric-mean speed-up 1\.\d{3}x; 1 faster, 1 slower, 1 within spread/);
    expect(text).not.toMatch(/WARNING/);
  });

  test('wall time when either run lacks a device timer; unmatched and skipped cells are listed, not compared', () => {
    const base = report([row('olmoe-1b-7b', 'layer', 1, null, 2.0), row('olmoe-1b-7b', 'layer', 16, 1, 1), row('olmoe-1b-7b', 'layer', 128, 1, 1, 0.01, 'skipped')]);
    const next = report([row('olmoe-1b-7b', 'layer', 1, 0.5, 1.0), row('olmoe-1b-7b', 'layer', 128, 1, 1), row('olmoe-1b-7b', 'layer', 512, 1, 1)], {
      device: { name: 'cpu', kind: 'cpu', description: 'AMD EPYC', memoryLimitBytes: 1 },
    });
    const c = compareReports(base, next);
    expect(c.cells).toHaveLength(1);
    expect(c.cells[0]).toMatchObject({ tokens: 1, basis: 'wall', baseMs: 2.0, newMs: 1.0, speedup: 2, verdict: 'faster' });
    expect(c.unmatched).toEqual(['olmoe-1b-7b layer 16', 'olmoe-1b-7b layer 128', 'olmoe-1b-7b layer 512']);
    expect(c.sameDevice).toBe(false);
    const text = formatComparison(c, 'a', 'b').join('\n');
    expect(text).toMatch(/WARNING: the runs are on different devices/);
    expect(text).toMatch(/3 cells not in both runs \(or skipped\): olmoe-1b-7b layer 16, olmoe-1b-7b layer 128, olmoe-1b-7b layer 512/);
    expect(formatComparison(compareReports(report([]), report([])), 'a', 'b')).toContain('no cell ran in both reports');
  });

  test('the command: two report files, exit 0; bad arguments and unusable files exit 2 naming which', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moekit-compare-'));
    try {
      const a = path.join(dir, 'a.json');
      const b = path.join(dir, 'b.json');
      fs.writeFileSync(a, JSON.stringify(report([row('deepseek-v3', 'layer', 1, 0.374, 0.69)])));
      fs.writeFileSync(b, JSON.stringify(report([row('deepseek-v3', 'layer', 1, 0.34, 0.66)])));
      const ok = capture();
      expect(await runBenchCli(['compare', a, b], ok.io)).toBe(0);
      expect(ok.out.join('')).toMatch(/deepseek-v3 +layer +1 +device +0\.374 +0\.340 +1\.10x +faster/);
      expect(ok.err).toEqual([]);

      const help = capture();
      expect(await runBenchCli(['compare', '--help'], help.io)).toBe(0);
      expect(help.out.join('')).toMatch(/^Usage: moekit bench compare BASE\.json NEW\.json/);

      const cases: [string[], RegExp][] = [
        [[a], /expected two report files \(BASE\.json NEW\.json\), received \[".*a\.json"\]/],
        [[a, b, a], /expected two report files/],
        [[path.join(dir, 'missing.json'), b], /BASE: expected a readable moekit bench --json report, received ".*missing\.json" \(ENOENT\)/],
      ];
      const bad = path.join(dir, 'bad.json');
      fs.writeFileSync(bad, '{ not json');
      cases.push([[a, bad], /NEW: expected a moekit bench --json report, received ".*bad\.json", which is not JSON/]);
      const old = path.join(dir, 'old.json');
      fs.writeFileSync(old, JSON.stringify({ version: 2, rows: [] }));
      cases.push([[a, old], /NEW: expected a moekit bench --json report \(version 1, with device and rows\)/]);
      const rowless = path.join(dir, 'rowless.json');
      fs.writeFileSync(rowless, JSON.stringify(report([{ op: 'layer' } as unknown as BenchRow])));
      cases.push([[rowless, b], /BASE: row 0 of ".*rowless\.json" has no preset \/ op \/ tokens/]);
      for (const [args, message] of cases) {
        const c = capture();
        expect(await runBenchCli(['compare', ...args], c.io)).toBe(2);
        expect(c.err.join('')).toMatch(message);
        expect(c.out).toEqual([]);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
