/**
 * The CPU backend's code paths that the machine running the suite does not pick by itself.
 *
 * - SIMD path: the native side picks it once per process (the widest the CPU has, at most
 *   MOEKIT_CPU_ISA), so the rest of the suite only checks the machine's widest path. Users
 *   without AVX-512 (most desktop CPUs) run the AVX2 path, users without AVX2 the scalar one.
 * - Thread count: work is split by the thread count (more, smaller items and more K slices
 *   for decode on many cores; a single inline loop on one thread), and the CI machine has
 *   two cores.
 *
 * This file runs the grouped-GEMM, layer and runtime tests again in child jest processes with
 * MOEKIT_CPU_ISA=avx2, =scalar, MOEKIT_NUM_THREADS=1 and =13, and checks that every test passed
 * there and that the child really ran the path or thread count it was given.
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

const RUNS: { label: string; env: Record<string, string> }[] = [
  { label: 'MOEKIT_CPU_ISA=avx2', env: { MOEKIT_CPU_ISA: 'avx2' } },
  { label: 'MOEKIT_CPU_ISA=scalar', env: { MOEKIT_CPU_ISA: 'scalar' } },
  { label: 'MOEKIT_NUM_THREADS=1', env: { MOEKIT_NUM_THREADS: '1' } },
  { label: 'MOEKIT_NUM_THREADS=13', env: { MOEKIT_NUM_THREADS: '13' } },
];

describe('the CPU backend on the paths this machine does not pick', () => {
  for (const run of RUNS) {
    test(`${run.label}: the grouped-GEMM, layer and runtime tests pass`, () => {
      const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'moekit-paths-')), 'report.json');
      const env: NodeJS.ProcessEnv = { ...process.env, MOEKIT_CPU_ISA: '', MOEKIT_NUM_THREADS: '', MOEKIT_EXPECT_CPU_ISA: '', ...run.env };
      // The child must report exactly this path when the machine has it (runtime.test.ts).
      const isa = run.env.MOEKIT_CPU_ISA;
      if (isa !== undefined && ORDER.indexOf(runtime().cpuIsa) >= ORDER.indexOf(isa)) env.MOEKIT_EXPECT_CPU_ISA = isa;
      const r = spawnSync(process.execPath, [path.join(root, 'node_modules/jest/bin/jest.js'), '--runInBand', '--ci', '--json', `--outputFile=${out}`, ...FILES], {
        cwd: root,
        env,
        encoding: 'utf8',
        maxBuffer: 64 << 20,
        // A synchronous call cannot be timed out by jest: bound it here (a deadlock in the
        // child's thread pool must fail this test, not hang the suite).
        timeout: 600_000,
        killSignal: 'SIGKILL',
      });
      let report: JestReport;
      try {
        report = JSON.parse(fs.readFileSync(out, 'utf8')) as JestReport;
      } catch {
        throw new Error(`the child jest run (${run.label}) wrote no report; exit ${r.status}, signal ${r.signal}${r.error ? `, ${r.error.message}` : ''}\n${(r.stderr ?? '').slice(-4000)}`);
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
