/**
 * Expert offload on a CUDA device: slots in device memory, copies from memory-mapped
 * checkpoints through the pinned staging pool, and the offloaded stack against
 * MoELayer on the same device, bit for bit. Skips (with the reason printed) without a GPU.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MoELayer, Tensor, resolveDevice } from '../../lib';
import { DeviceExpertCache, ExpertStore, OffloadedMoE } from '../../lib/offload';
import { firstMismatch, testSeed } from '../helpers';
import { Rng } from '../reference';
import { tinyModel, writeModel } from '../pretrained/tiny';
import { describeGpu } from './gpu';

const seed = testSeed('gpu-offload');

async function bits(t: Tensor): Promise<Uint16Array | Float32Array> {
  return (await t.toArray()) as Uint16Array | Float32Array;
}

describeGpu('expert offload on CUDA', () => {
  let tmp: string;
  beforeAll(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moekit-gpu-offload-'));
  });
  afterAll(() => {
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('slots on the device hold exactly the mapped experts (more than one 8 MiB staging buffer)', async () => {
    // One expert of 3 × 1536 × 1024 bf16 = 9 MiB: the staged copy uses both pinned buffers.
    const rng = new Rng(seed);
    const [E, I, H] = [4, 1536, 1024];
    const gate = Tensor.from(Float32Array.from({ length: E * I * H }, () => rng.normal(0, 1)), [E, I, H], 'bf16');
    const up = Tensor.from(Float32Array.from({ length: E * I * H }, () => rng.normal(0, 1)), [E, I, H], 'bf16');
    const down = Tensor.from(Float32Array.from({ length: E * H * I }, () => rng.normal(0, 1)), [E, H, I], 'bf16');
    const store = ExpertStore.fromTensors([{ gate, up, down }], { ownsTensors: true });
    const cache = new DeviceExpertCache(store, resolveDevice('cuda'), { capacity: 2, perLayer: true });
    const host = [await bits(gate), await bits(up), await bits(down)];
    for (const experts of [[0, 1], [2], [1, 3], [0, 2, 3]]) {
      const acq = await cache.acquire(0, experts, 0);
      const roles = ['gate', 'up', 'down'] as const;
      for (let r = 0; r < 3; r++) {
        const all = await bits(acq.weights[roles[r]] as Tensor);
        const per = all.length / acq.count;
        for (const e of experts) {
          const i = acq.indexOf[e];
          expect([experts.join(), e, r, firstMismatch(all.slice(i * per, (i + 1) * per), host[r].slice(e * per, (e + 1) * per))]).toEqual([experts.join(), e, r, null]);
        }
      }
      acq.release();
    }
    cache.dispose();
    store.dispose();
  });

  test('OffloadedMoE on cuda equals MoELayer on cuda for every family', async () => {
    for (const family of ['mixtral', 'qwen2_moe', 'deepseek_v3', 'gpt_oss'] as const) {
      const rng = new Rng(seed ^ family.length);
      const model = tinyModel(family, seed + family.length);
      const dir = path.join(tmp, family);
      await writeModel(dir, model);
      const layers = [...model.moe.keys()].sort((a, b) => a - b);
      const refs = await Promise.all(layers.map((layer) => MoELayer.fromPretrained(dir, { layer, device: 'cuda' })));
      const off = await OffloadedMoE.fromPretrained(dir, { device: 'cuda', cache: { capacity: model.k, perLayer: true, policy: 'lfru' }, prefetch: { affinity: true, pregating: true } });
      for (let i = 0; i < 10; i++) {
        const l = i % layers.length;
        const T = [1, 3, 17][i % 3];
        const x = await Tensor.from(Float32Array.from({ length: T * model.hidden }, () => rng.normal(0, 1)), [T, model.hidden], 'bf16').to('cuda');
        const got = await off.forward(l, x);
        const want = await refs[l].forward(x);
        expect([family, i, firstMismatch(await bits(got), await bits(want))]).toEqual([family, i, null]);
        for (const t of [x, got, want]) t.dispose();
      }
      await off.settle();
      const st = off.stats().total;
      expect(st.hits + st.misses).toBe(st.accesses);
      off.dispose();
      for (const r of refs) r.dispose();
    }
  });
});
