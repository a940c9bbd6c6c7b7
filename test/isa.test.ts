/**
 * The CPU grouped GEMM's lower SIMD paths. The native side picks its path once per process
 * (the widest the CPU has, at most MOEKIT_CPU_ISA), so the rest of the suite only checks the
 * widest path of the machine it runs on. Users without AVX-512 (most desktop CPUs) run the
 * AVX2 path and users without AVX2 the scalar one: this file runs the grouped-GEMM, layer and
 * runtime tests again in child jest processes with MOEKIT_CPU_ISA=avx2 and =scalar, and checks
 * that every test passed there and that the child really ran the path it was given.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { runtime } from '../lib';

const root = path.resolve(__dirname, '..');
const FILES = ['test/ops/pipeline.test.ts', 'test/ops/layer.test.ts', 'test/runtime.test.ts'];
const ORDER = ['scalar', 'avx2', 'avx512'];

interface JestReport {
  numPassedTests: number;
  numFailedTests: number;
  numPendingTests: number;
  testResults: { name: string; status: string; message: string; assertionResults: { fullName: string; status: string; failureMessages: string[] }[] }[];
}

describe('the CPU GEMM on its lower SIMD paths', () => {
  for (const isa of ['avx2', 'scalar'] as const) {
    test(`MOEKIT_CPU_ISA=${isa}: the grouped-GEMM, layer and runtime tests pass`, () => {
      const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'moekit-isa-')), 'report.json');
      // The child must report exactly this path when the machine has it (runtime.test.ts).
      const expect_ = ORDER.indexOf(runtime().cpuIsa) >= ORDER.indexOf(isa) ? isa : '';
      const r = spawnSync(process.execPath, [path.join(root, 'node_modules/jest/bin/jest.js'), '--runInBand', '--ci', '--json', `--outputFile=${out}`, ...FILES], {
        cwd: root,
        env: { ...process.env, MOEKIT_CPU_ISA: isa, MOEKIT_EXPECT_CPU_ISA: expect_ },
        encoding: 'utf8',
        maxBuffer: 64 << 20,
      });
      let report: JestReport;
      try {
        report = JSON.parse(fs.readFileSync(out, 'utf8')) as JestReport;
      } catch {
        throw new Error(`the child jest run (MOEKIT_CPU_ISA=${isa}) wrote no report; exit ${r.status}, signal ${r.signal}\n${(r.stderr ?? '').slice(-4000)}`);
      } finally {
        fs.rmSync(path.dirname(out), { recursive: true, force: true });
      }
      const failures = report.testResults.flatMap((s) => [
        ...(s.status === 'failed' && s.assertionResults.every((a) => a.status !== 'failed') ? [`${s.name}: ${s.message.slice(0, 1500)}`] : []),
        ...s.assertionResults.filter((a) => a.status === 'failed').map((a) => `${a.fullName}: ${a.failureMessages.join(' ').slice(0, 1500)}`),
      ]);
      expect(failures).toEqual([]);
      expect(report.numFailedTests).toBe(0);
      expect(report.testResults.map((s) => path.relative(root, s.name)).sort()).toEqual([...FILES].sort());
      expect(report.numPassedTests).toBeGreaterThan(30);
      expect(r.status).toBe(0);
    });
  }
});
