/**
 * ExpertStore (mapped from tiny checkpoints, or over tensors) and the DeviceExpertCache
 * slots: bytes equal to an independent read (pread through Checkpoint.read), sizes,
 * dispose, errors naming file and tensor; slots hold exactly the acquired experts.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Checkpoint, Tensor, resolveDevice } from '../../lib';
import { DeviceExpertCache, ExpertStore } from '../../lib/offload';
import { expectMoekitError, firstMismatch, testSeed } from '../helpers';
import { Rng } from '../reference';
import { tinyModel, writeModel } from '../pretrained/tiny';

const seed = testSeed('offload-store');
let tmp: string;
let n = 0;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moekit-offload-store-'));
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

async function u16OrF32(t: Tensor): Promise<ArrayLike<number>> {
  return (await t.toArray()) as unknown as ArrayLike<number>;
}

/** One expert's bytes copied out of the store into fresh host tensors. */
async function copyOut(store: ExpertStore, layer: number, expert: number): Promise<Tensor[]> {
  const ts = store.specs.map((s) => Tensor.zeros(s.shape, s.dtype));
  await store.copyExpert(layer, expert, ts.map((tensor) => ({ tensor, offset: 0 })));
  return ts;
}

describe('ExpertStore.fromPretrained', () => {
  test('mixtral (per-expert tensors, 2 shards, misaligned data): bytes, sizes, locations', async () => {
    const model = tinyModel('mixtral', seed);
    const dir = path.join(tmp, `m${n++}`);
    await writeModel(dir, model, { shards: 2, index: true, align: false });
    const store = ExpertStore.fromPretrained(dir);
    const cp = Checkpoint.open(dir);
    const { hidden: H, intermediate: I, experts: E } = model;
    expect(store.kind).toBe('mapped');
    expect(store.layers).toBe(2);
    expect(store.experts).toBe(E);
    expect(store.specs.map((s) => [s.role, s.dtype, s.shape])).toEqual([['gate', 'bf16', [I, H]], ['up', 'bf16', [I, H]], ['down', 'bf16', [H, I]]]);
    expect(store.expertBytes).toBe(3 * I * H * 2);
    const names = ['w1', 'w3', 'w2'];
    for (let l = 0; l < 2; l++)
      for (let e = 0; e < E; e++) {
        const loc = store.locate(l, e);
        const got = await copyOut(store, l, e);
        for (let r = 0; r < 3; r++) {
          const name = `model.layers.${l}.block_sparse_moe.experts.${e}.${names[r]}.weight`;
          expect(loc[r].tensor).toBe(name);
          expect(loc[r].file).toBe(cp.entry(name).file);
          expect(loc[r].offset).toBe(cp.entry(name).begin);
          const want = await cp.read(name);
          expect([name, firstMismatch(await u16OrF32(got[r]), await u16OrF32(want))]).toEqual([name, null]);
          want.dispose();
        }
        for (const t of got) t.dispose();
      }
    store.dispose();
    expect(store.disposed).toBe(true);
    store.dispose(); // twice is fine
    await expectMoekitError(() => store.copyExpert(0, 0, []), 'ERR_DISPOSED');
  });

  test('gpt_oss (fused [E, …] tensors): each expert is its slice', async () => {
    const model = tinyModel('gpt_oss', seed + 1);
    const dir = path.join(tmp, `g${n++}`);
    await writeModel(dir, model);
    const store = ExpertStore.fromPretrained(dir, { layers: [1] });
    const cp = Checkpoint.open(dir);
    expect(store.layers).toBe(1);
    expect(store.decoderLayers).toEqual([1]);
    expect(store.specs.map((s) => s.role)).toEqual(['gateUp', 'down', 'gateUpBias', 'downBias']);
    const names = ['gate_up_proj', 'down_proj', 'gate_up_proj_bias', 'down_proj_bias'];
    const full = await Promise.all(names.map((nm) => cp.read(`model.layers.1.mlp.experts.${nm}`)));
    const fullBits = await Promise.all(full.map(u16OrF32));
    for (let e = 0; e < model.experts; e++) {
      const got = await copyOut(store, 0, e);
      for (let r = 0; r < names.length; r++) {
        const per = got[r].numel;
        const want = Array.from(fullBits[r]).slice(e * per, (e + 1) * per);
        expect([names[r], e, firstMismatch(await u16OrF32(got[r]), want)]).toEqual([names[r], e, null]);
      }
      for (const t of got) t.dispose();
    }
    for (const t of full) t.dispose();
    store.dispose();
  });

  test('errors name the file and the tensor', async () => {
    const model = tinyModel('olmoe', seed + 2);
    const missing = path.join(tmp, `x${n++}`);
    const name = 'model.layers.1.mlp.experts.3.up_proj.weight';
    delete model.tensors[name];
    await writeModel(missing, model);
    await expectMoekitError(() => ExpertStore.fromPretrained(missing), 'ERR_CHECKPOINT', new RegExp(`${name.replace(/\./g, '\\.')}.*missing`));

    const mixed = tinyModel('olmoe', seed + 3);
    const bad = 'model.layers.0.mlp.experts.5.gate_proj.weight';
    mixed.tensors[bad] = { ...mixed.tensors[bad], dtype: 'bf16' }; // the others are f16
    const dir = path.join(tmp, `y${n++}`);
    await writeModel(dir, mixed);
    await expectMoekitError(() => ExpertStore.fromPretrained(dir), 'ERR_UNSUPPORTED', new RegExp(`model\\.safetensors: tensor "${bad.replace(/\./g, '\\.')}" is BF16`));

    expect(() => ExpertStore.fromPretrained(dir, { layers: [7] })).toThrow(/Expected one of the MoE layers \(0, 1\) for options\.layers\[0\] but received 7/);
    expect(() => ExpertStore.fromPretrained('')).toThrow(TypeError);
    await expectMoekitError(() => ExpertStore.fromPretrained(path.join(tmp, 'nope')), 'ERR_CHECKPOINT', /config\.json/);
  });
});

describe('DeviceExpertCache slots', () => {
  test('after every acquire each acquired expert sits at its index, whatever was evicted', async () => {
    const rng = new Rng(seed ^ 0x99);
    const [L, E, I, H] = [3, 7, 5, 3];
    const mk = (shape: number[], dtype: 'f32' | 'bf16') => Tensor.from(Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rng.normal(0, 1)), shape, dtype);
    const layers = Array.from({ length: L }, () => ({ gateUp: mk([E, 2 * I, H], 'bf16'), down: mk([E, H, I], 'f32'), downBias: mk([E, H], 'f32') }));
    const store = ExpertStore.fromTensors(layers, { ownsTensors: true });
    expect(store.kind).toBe('tensors');
    expect(store.expertBytes).toBe(2 * I * H * 2 + H * I * 4 + H * 4);
    const host = await Promise.all(layers.map(async (l) => [await u16OrF32(l.gateUp), await u16OrF32(l.down), await u16OrF32(l.downBias)]));
    const perLayer = rng.uniform(0, 1) < 0.5;
    const cache = new DeviceExpertCache(store, resolveDevice('cpu'), { capacity: perLayer ? 3 : 4, perLayer, policy: 'lfu' });
    let rejected = 0;
    for (let step = 0; step < 60; step++) {
      const layer = Math.floor(rng.uniform(0, L));
      const count = 1 + Math.floor(rng.uniform(0, 5));
      // Every 10th step asks for 5 distinct experts, more than the 3 or 4 slots: some
      // must be rejected (served from a temporary buffer) whatever the random draws.
      const experts =
        step % 10 === 9
          ? rng.shuffle(Array.from({ length: E }, (_, i) => i)).slice(0, 5).sort((a, b) => a - b)
          : [...new Set(Array.from({ length: count }, () => Math.floor(rng.uniform(0, E))))].sort((a, b) => a - b);
      const acq = await cache.acquire(layer, experts, step);
      rejected += acq.rejected.length;
      const roles = ['gateUp', 'down', 'downBias'] as const;
      for (let r = 0; r < 3; r++) {
        const all = await u16OrF32(acq.weights[roles[r]] as Tensor);
        const per = all.length / acq.count;
        for (const e of experts) {
          const i = acq.indexOf[e];
          expect(i).toBeGreaterThanOrEqual(0);
          const got = Array.from(all).slice(i * per, (i + 1) * per);
          const want = Array.from(host[layer][r]).slice(e * per, (e + 1) * per);
          expect([step, layer, e, roles[r], firstMismatch(got, want)]).toEqual([step, layer, e, roles[r], null]);
        }
      }
      acq.release();
      acq.release(); // idempotent
    }
    expect(rejected).toBeGreaterThan(0); // up to 5 experts into 3 or 4 slots
    const st = cache.stats().total;
    expect(st.hits + st.misses).toBe(st.accesses);
    expect(st.bytesMoved).toBe(st.misses * store.expertBytes);
    cache.dispose();
    store.dispose();
    expect(layers[0].down.disposed).toBe(true);
  });
});
