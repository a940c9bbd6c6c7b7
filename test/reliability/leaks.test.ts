/**
 * 10,000 forwards with dispose() and 10,000 relying on finalizers keep the resident set
 * flat. Runs in a child Node process with --expose-gc so the measurement is its own.
 */
import { spawnSync } from 'child_process';
import * as path from 'path';

const root = path.resolve(__dirname, '../..');
// Growth allowed after warm-up: allocator and V8 heap noise, far below what leaking a
// forward's buffers would cost (10,000 x ~20 KiB of outputs = ~200 MiB).
const BOUND_MIB = 48;

const SCRIPT = `
const { MoELayer, Tensor } = require(${JSON.stringify(path.join(root, 'dist'))});
const H = 64, I = 32, E = 8, T = 16;
const r = (n) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37) * 0.2);
const layer = new MoELayer({ hidden: H, intermediate: I, experts: E, routing: { k: 2 } }, {
  router: Tensor.from(r(E * H), [E, H]),
  gateUp: Tensor.from(r(E * 2 * I * H), [E, 2 * I, H], 'bf16'),
  down: Tensor.from(r(E * H * I), [E, H, I], 'bf16'),
});
const rss = () => { global.gc(); global.gc(); return process.memoryUsage().rss / 2 ** 20; };
async function run(n, dispose) {
  for (let i = 0; i < n; i++) {
    const x = Tensor.from(r(T * H), [T, H]);
    const { output, routing } = await layer.forward(x, { returnRouting: true });
    if (dispose) for (const t of [x, output, routing.ids, routing.weights, routing.load]) t.dispose();
  }
}
(async () => {
  await run(1000, true); await run(1000, false);
  const base = rss();
  await run(10000, true);
  const afterDispose = rss();
  await run(10000, false);
  await new Promise((res) => setImmediate(res));
  const afterFinalizers = rss();
  console.log(JSON.stringify({ base, afterDispose, afterFinalizers }));
})();
`;

test('RSS stays flat over 10,000 disposed and 10,000 finalized forwards', () => {
  const r = spawnSync(process.execPath, ['--expose-gc', '-e', SCRIPT], { encoding: 'utf8', timeout: 300_000, env: { ...process.env, MOEKIT_DEVICE: 'cpu' } });
  if (r.status !== 0) throw new Error(`child failed: ${r.stderr}`);
  const m = JSON.parse(r.stdout.trim());
  // eslint-disable-next-line no-console
  console.log(`RSS MiB: base ${m.base.toFixed(1)}, after 10k disposed ${m.afterDispose.toFixed(1)}, after 10k finalized ${m.afterFinalizers.toFixed(1)}`);
  expect(m.afterDispose - m.base).toBeLessThan(BOUND_MIB);
  expect(m.afterFinalizers - m.base).toBeLessThan(BOUND_MIB);
}, 300_000);
