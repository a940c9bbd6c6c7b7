/** `runOffloadBenchCli` on a synthetic trace at a tiny scale: report fields agree with each other; bad arguments exit 2. */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { writeTrace } from '../../lib/cache/trace';
import { runOffloadBenchCli } from '../../lib/offload/bench';
import { testSeed } from '../helpers';
import { Rng } from '../reference';

const seed = testSeed('offload-bench');
let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moekit-offload-bench-'));
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await runOffloadBenchCli(argv, { out: (s) => (out += s), err: (s) => (err += s) });
  return { code, out, err };
}

test('replays a synthetic olmoe trace through 3 layers', async () => {
  const rng = new Rng(seed);
  const [tokens, layers, k, E] = [9, 3, 8, 64];
  const ids: number[][][] = [];
  for (let t = 0; t < tokens; t++) {
    const tok: number[][] = [];
    for (let l = 0; l < layers; l++) {
      const s = new Set<number>();
      while (s.size < k) s.add(Math.floor(rng.uniform(0, 16))); // 16 hot experts: hits happen
      tok.push([...s]);
    }
    ids.push(tok);
  }
  const stem = path.join(tmp, 'synthetic');
  writeTrace(stem, { ids, expertsPerLayer: E });
  const r = await run(['--preset', 'olmoe-1b-7b', '--trace', stem, '--cache-fraction', '0.25', '--experts-scale', '0.01', '--batch', '2', '--json']);
  expect([r.code, r.err]).toEqual([0, '']);
  const rep = JSON.parse(r.out);
  expect(rep.layers).toBe(layers);
  expect(rep.tokens).toBe(tokens);
  expect(rep.cache.capacity).toBe(16);
  const st = rep.stats;
  expect(st.hits + st.misses).toBe(st.accesses);
  expect(st.bytesMoved).toBe(st.misses * rep.expertBytes);
  // One access per forward: the distinct experts of each batch at each layer.
  let accesses = 0;
  for (let t = 0; t < tokens; t += 2)
    for (let l = 0; l < layers; l++) accesses += new Set(ids.slice(t, t + 2).flatMap((tok) => tok[l])).size;
  expect(st.accesses).toBe(accesses);
  expect(rep.tokensPerSecond).toBeGreaterThan(0);
  expect(rep.transferFloorTokensPerSecond).toBeGreaterThan(0);
  expect(rep.hbmFloorTokensPerSecond).toBeGreaterThan(0);
  // With a prefetch source the byte count includes the prefetches.
  const p = await run(['--preset', 'olmoe-1b-7b', '--trace', stem, '--cache-fraction', '0.25', '--experts-scale', '0.01', '--prefetch', 'layerwise', '--json']);
  expect([p.code, p.err]).toEqual([0, '']);
  const ps = JSON.parse(p.out).stats;
  expect(ps.hits + ps.misses).toBe(ps.accesses);
  expect(ps.bytesMoved).toBe(ps.misses * rep.expertBytes + ps.prefetchBytes);
});

test('bad arguments exit 2 naming the flag', async () => {
  for (const [argv, msg] of [
    [['--preset', 'gpt-5'], /for --preset but received "gpt-5"/],
    [['--preset', 'mixtral-8x7b', '--cache-fraction', '0'], /Expected a number in \(0, 1\] for --cache-fraction but received "0"/],
    [['--preset', 'mixtral-8x7b', '--policy', 'belady'], /for --policy but received "belady"/],
    [['--preset', 'mixtral-8x7b', '--prefetch', 'oracle'], /Expected none, affinity, layerwise or pregating for --prefetch but received "oracle"/],
    [['--preset', 'mixtral-8x7b', '--layers', '2.5'], /Expected an integer in \[1, 1024\] for --layers/],
    [['--preset', 'mixtral-8x7b', '--trace', path.join(tmp, 'missing')], /cannot read/],
  ] as [string[], RegExp][]) {
    const r = await run(argv);
    expect([argv.join(' '), r.code === 0]).toEqual([argv.join(' '), false]);
    expect(r.err).toMatch(msg);
  }
});
