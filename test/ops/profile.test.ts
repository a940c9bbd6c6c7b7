/**
 * Device timing (profileOp, MoELayer.profile, profileCopy) on the CPU backend: the shape
 * of what it returns, that the timed work is the op's (its output after the repeats
 * equals a plain call's), and argument errors.
 */
import { MoELayer, MoekitError, Tensor, dispatch, gate, profileCopy, profileOp } from '../../lib';
import { testSeed } from '../helpers';
import { Rng } from '../reference';

const seed = testSeed('profile');

function checkProfile(p: { times: number[]; timer: string; graph: boolean; device: string }, repeats: number): void {
  expect(p.device).toBe('cpu');
  expect(p.timer).toBe('steady-clock');
  expect(p.graph).toBe(false);
  expect(p.times).toHaveLength(repeats);
  for (const t of p.times) {
    expect(Number.isFinite(t)).toBe(true);
    expect(t).toBeGreaterThanOrEqual(0);
  }
}

describe('profileOp', () => {
  const rng = new Rng(seed);
  const T = 37, E = 19, k = 3;
  const logits = Tensor.from(Float32Array.from({ length: T * E }, () => rng.normal(0, 1)), [T, E]);

  test('gate, dispatch, groupedGemm and combine return one time per repeat', async () => {
    checkProfile(await profileOp('gate', [logits, { k, scoring: 'softmax' }], { warmup: 1, repeats: 4 }), 4);
    const r = await gate(logits, { k });
    checkProfile(await profileOp('dispatch', [r.ids, { experts: E }], { warmup: 0, repeats: 2 }), 2);
    const d = await dispatch(r.ids, { experts: E });
    const rows = T * k;
    const x = Tensor.from(Float32Array.from({ length: rows * 24 }, () => rng.normal(0, 1)), [rows, 24]);
    const w = Tensor.from(Float32Array.from({ length: E * 16 * 24 }, () => rng.normal(0, 1)), [E, 16, 24], 'bf16');
    checkProfile(await profileOp('groupedGemm', [x, d.offsets, w, { activation: 'swiglu' }]), 20);
    const y = Tensor.from(Float32Array.from({ length: rows * 8 }, () => rng.normal(0, 1)), [rows, 8]);
    checkProfile(await profileOp('combine', [y, d.pairToRow, { weights: r.weights }], { repeats: 1 }), 1);
  });

  test("checks the op's own arguments and the options", async () => {
    await expect(profileOp('gate', [logits, { k: E + 1 }])).rejects.toThrow(/k/);
    await expect(profileOp('gate', [logits, { k }], { repeats: 0 })).rejects.toThrow(/options\.repeats/);
    await expect(profileOp('gate', [logits, { k }], { warmup: -1 })).rejects.toThrow(/options\.warmup/);
    await expect(profileOp('gate', [logits, { k }], { graph: 'yes' as unknown as boolean })).rejects.toThrow(/options\.graph/);
    await expect(profileOp('softmax' as 'gate', [logits, { k }])).rejects.toThrow(/op/);
    await expect(profileOp('gate', logits as unknown as [Tensor, { k: number }])).rejects.toThrow(/args/);
  });
});

describe('MoELayer.profile', () => {
  const rng = new Rng(seed ^ 0x55);
  const H = 40, I = 24, E = 9, k = 2, T = 13;
  const layer = MoELayer.fromPreset('mixtral', { k }, { hidden: H, intermediate: I, experts: E }, {
    router: Tensor.from(Float32Array.from({ length: E * H }, () => rng.normal(0, 0.3)), [E, H]),
    gateUp: Tensor.from(Float32Array.from({ length: E * 2 * I * H }, () => rng.normal(0, 0.2)), [E, 2 * I, H], 'bf16'),
    down: Tensor.from(Float32Array.from({ length: E * H * I }, () => rng.normal(0, 0.2)), [E, H, I], 'bf16'),
  });
  const x = Tensor.from(Float32Array.from({ length: T * H }, () => rng.normal(0, 1)), [T, H]);

  test('times the forward; with keepOutput its output equals forward()', async () => {
    const p = await layer.profile(x, { warmup: 1, repeats: 3, keepOutput: true });
    checkProfile(p, 3);
    expect(p.output).toBeDefined();
    const expected = await layer.forward(x);
    expect(Array.from(await (p.output as Tensor).toFloat32())).toEqual(Array.from(await expected.toFloat32()));
    p.output?.dispose();
    const q = await layer.profile(x, { repeats: 2 });
    expect(q.output).toBeUndefined();
  });

  test('forced routing is checked and used', async () => {
    const ids = Tensor.from(Int32Array.from({ length: T * k }, (_, i) => (i * 5) % E), [T, k], 'i32');
    const p = await layer.profile(x, { repeats: 1, forcedIds: ids, keepOutput: true });
    const expected = await layer.forward(x, { forcedIds: ids });
    expect(Array.from(await (p.output as Tensor).toFloat32())).toEqual(Array.from(await expected.toFloat32()));
    const bad = Tensor.from(Int32Array.from({ length: T * k }, () => E), [T, k], 'i32');
    await expect(layer.profile(x, { forcedIds: bad })).rejects.toThrow(/forcedIds/);
    await expect(layer.profile(x, { repeats: 1.5 })).rejects.toThrow(/options\.repeats/);
  });

  test('cudaGraphs / cudaGraph options are checked (and change nothing on the CPU)', async () => {
    const w = {
      router: Tensor.zeros([E, H]),
      gateUp: Tensor.zeros([E, 2 * I, H]),
      down: Tensor.zeros([E, H, I]),
    };
    expect(() => new MoELayer({ hidden: H, intermediate: I, experts: E, routing: { k } }, w, { cudaGraphs: 'yes' as unknown as boolean })).toThrow(/options\.cudaGraphs/);
    await expect(layer.forward(x, { cudaGraph: 1 as unknown as boolean })).rejects.toThrow(/options\.cudaGraph/);
    const a = await layer.forward(x, { cudaGraph: false });
    const b = await layer.forward(x, { cudaGraph: true });
    expect(Array.from(await a.toFloat32())).toEqual(Array.from(await b.toFloat32()));
  });

  test('a disposed layer rejects with ERR_DISPOSED', async () => {
    const l2 = MoELayer.fromPreset('mixtral', { k: 1 }, { hidden: 8, intermediate: 8, experts: 2 }, {
      router: Tensor.zeros([2, 8]),
      gateUp: Tensor.zeros([2, 16, 8]),
      down: Tensor.zeros([2, 8, 8]),
    });
    l2.dispose();
    await expect(l2.profile(Tensor.zeros([1, 8]))).rejects.toMatchObject({ code: 'ERR_DISPOSED' });
    await expect(l2.profile(Tensor.zeros([1, 8]))).rejects.toBeInstanceOf(MoekitError);
  });
});

describe('profileCopy', () => {
  test('copies on the CPU and reports a positive time', async () => {
    const p = await profileCopy('cpu', 1 << 22, { warmup: 1, repeats: 3 });
    checkProfile(p, 3);
    expect(Math.max(...p.times)).toBeGreaterThan(0);
  });
  test('bad arguments', async () => {
    await expect(profileCopy('cpu', 2)).rejects.toThrow(/bytes/);
    await expect(profileCopy('tpu', 1024)).rejects.toThrow(/device/);
  });
});
