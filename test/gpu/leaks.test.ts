/**
 * On a GPU: 10,000 forwards with dispose() and 10,000 relying on finalizers keep device
 * memory (moekit's pool) and the host RSS flat. A child Node process with --expose-gc.
 */
import { spawnSync } from 'child_process';
import * as path from 'path';
import { describeGpu } from './gpu';

const root = path.resolve(__dirname, '../..');
// Leaking one forward's device outputs (T·H bf16 + routing, ~8 KiB) 10,000 times is ~80 MiB.
const DEVICE_BOUND_MIB = 8;
const RSS_BOUND_MIB = 64;

const SCRIPT = `
const { MoELayer, Tensor, deviceMemory } = require(${JSON.stringify(path.join(root, 'dist'))});
const H = 256, I = 128, E = 16, T = 16;
const r = (n) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37) * 0.2);
const layer = new MoELayer({ hidden: H, intermediate: I, experts: E, routing: { k: 2 } }, {
  router: Tensor.from(r(E * H), [E, H], 'bf16'),
  gateUp: Tensor.from(r(E * 2 * I * H), [E, 2 * I, H], 'bf16'),
  down: Tensor.from(r(E * H * I), [E, H, I], 'bf16'),
}, { device: 'cuda' });
const xHost = Tensor.from(r(T * H), [T, H], 'bf16');
const mib = (b) => b / 2 ** 20;
const measure = async () => {
  global.gc(); global.gc();
  await new Promise((res) => setImmediate(res));
  const m = deviceMemory('cuda');
  return { pool: mib(m.poolUsedBytes + m.graphUsedBytes), rss: mib(process.memoryUsage().rss) };
};
async function run(n, dispose) {
  for (let i = 0; i < n; i++) {
    const x = await xHost.to('cuda');
    const { output, routing } = await layer.forward(x, { returnRouting: true });
    if (dispose) for (const t of [x, output, routing.ids, routing.weights, routing.load]) t.dispose();
  }
}
(async () => {
  await run(500, true); await run(500, false);
  const base = await measure();
  await run(10000, true);
  const afterDispose = await measure();
  await run(10000, false);
  const afterFinalizers = await measure();
  console.log(JSON.stringify({ base, afterDispose, afterFinalizers }));
})().catch((e) => { console.error(e); process.exitCode = 1; });
`;

describeGpu('device memory stays flat', () => {
  test('10,000 disposed and 10,000 finalized forwards on cuda:0', () => {
    const r = spawnSync(process.execPath, ['--expose-gc', '-e', SCRIPT], { encoding: 'utf8', timeout: 540_000 });
    if (r.status !== 0) throw new Error(`child failed: ${r.stderr}`);
    const m = JSON.parse(r.stdout.trim().split('\n').pop() as string);
    // eslint-disable-next-line no-console
    console.log(`device pool + graph MiB: base ${m.base.pool.toFixed(2)}, after 10k disposed ${m.afterDispose.pool.toFixed(2)}, after 10k finalized ${m.afterFinalizers.pool.toFixed(2)}; RSS MiB ${m.base.rss.toFixed(1)} -> ${m.afterDispose.rss.toFixed(1)} -> ${m.afterFinalizers.rss.toFixed(1)}`);
    expect(m.afterDispose.pool - m.base.pool).toBeLessThan(DEVICE_BOUND_MIB);
    expect(m.afterFinalizers.pool - m.base.pool).toBeLessThan(DEVICE_BOUND_MIB);
    expect(m.afterDispose.rss - m.base.rss).toBeLessThan(RSS_BOUND_MIB);
    expect(m.afterFinalizers.rss - m.base.rss).toBeLessThan(RSS_BOUND_MIB);
  }, 600_000);
});
