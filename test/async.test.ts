import { Tensor, groupedGemm } from '../lib';

test('a long CPU op runs off the JavaScript thread: the event loop keeps ticking', async () => {
  // One 1536 x 2048 x 2048 GEMM: ~13 GFLOP, tens to hundreds of milliseconds here.
  const rows = 1536;
  const K = 2048;
  const N = 2048;
  const x = Tensor.from(new Float32Array(rows * K).fill(0.5), [rows, K]);
  const w = Tensor.from(new Float32Array(N * K).fill(0.25), [1, N, K]);
  const offsets = Tensor.from(new Int32Array([0, rows]), [2]);
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const started = process.hrtime.bigint();
  const pending = groupedGemm(x, offsets, w);
  // The call returned before the work finished.
  const ticksAtReturn = ticks;
  const y = await pending;
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  clearInterval(timer);
  expect(ticksAtReturn).toBe(0);
  // A blocked loop would see no tick at all; a free one sees many (timers are >= 1 ms).
  expect(ticks).toBeGreaterThanOrEqual(Math.min(5, Math.floor(ms / 4)));
  expect(ms).toBeGreaterThan(5);
  const out = y.toFloat32Sync();
  expect(out[0]).toBe(0.5 * 0.25 * K);
  expect(out[out.length - 1]).toBe(0.5 * 0.25 * K);
});
