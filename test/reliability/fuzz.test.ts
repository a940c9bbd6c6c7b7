/**
 * Drives every exported function and method with random, mostly wrong arguments: wrong
 * types, wrong shapes, negative / zero / huge sizes, NaN and ±Infinity, detached and
 * shared buffers, disposed tensors, mismatched dtypes and devices, out-of-range forced
 * ids. Each call must either work or throw MoekitError, TypeError or RangeError, and the
 * process must live. The seed is printed; MOEKIT_TEST_SEED replays a run.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as moekit from '../../lib';
import { MoELayer, MoekitError, Tensor } from '../../lib';
import { testSeed } from '../helpers';
import { Rng } from '../reference/rng';

const CALLS = Number(process.env.MOEKIT_FUZZ_CALLS ?? 10_000);

test(`${CALLS} random calls across the API never crash and only throw the documented error types`, async () => {
  const seed = testSeed('fuzz');
  const rng = new Rng(seed);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moekit-fuzz-'));
  const pick = <T>(xs: readonly T[]): T => xs[rng.int(0, xs.length)];

  const numbers = [0, 1, 2, 3, 4, 7, 8, -1, -7, 0.5, 1.5, NaN, Infinity, -Infinity, 2 ** 31, 2 ** 53, 1e300, -0];
  const dtypes = ['f32', 'f16', 'bf16', 'i32', 'i64', 'f8', '', 3, undefined, null];
  const devices = ['cpu', 'cuda', 'cuda:1', 'cuda:-1', 'auto', 'gpu', '', 7, undefined, null, {}];
  const live: Tensor[] = [];
  const disposed: Tensor[] = [];
  const small = () => rng.int(0, 5);

  function randomTypedArray(): unknown {
    const n = small() * small();
    switch (rng.int(0, 9)) {
      case 0: return new Float32Array(n).map(() => pick([0, 1, -2.5, NaN, Infinity, -Infinity, 1e-40, 3e38]));
      case 1: return new Uint16Array(n).map(() => rng.int(0, 65535));
      case 2: return new Int32Array(n).map(() => rng.int(-10, 10));
      case 3: return new BigInt64Array(n);
      case 4: return new Float64Array(n).fill(0.25);
      case 5: {
        const a = new Float32Array(n + 1);
        structuredClone(a.buffer, { transfer: [a.buffer] }); // detached: length 0 now
        return a;
      }
      case 6: return new Float32Array(new SharedArrayBuffer(4 * n));
      case 7: return Array.from({ length: n }, () => pick(numbers));
      case 8: return new Uint8Array(n);
      default: return pick([null, undefined, 'abc', 42, {}, [[1]]]);
    }
  }
  function randomShape(): unknown {
    switch (rng.int(0, 6)) {
      case 0: return [small(), small()];
      case 1: return [small()];
      case 2: return [small(), small(), small()];
      // NOTE: no valid-but-huge shapes (2^31 x 1 would really be copied on read-back);
      // sizes past every limit (2^53, 1e300) and huge-but-empty ones still come up.
      case 3: return [pick([0, 1, 2, 3, -1, 0.5, NaN, Infinity, -Infinity, 2 ** 53, 1e300, -0]), small()];
      case 4: return pick([[2 ** 40, 0], [2 ** 31, 2 ** 31, 2 ** 31], [2 ** 50]]);
      case 5: return pick([[], 'x', null, [1, 'a'], new Array(9).fill(1)]);
      default: return [rng.int(0, 64), rng.int(0, 64)];
    }
  }
  function randomTensor(): unknown {
    const r = rng.uniform();
    if (r < 0.55 && live.length > 0) return pick(live);
    if (r < 0.65 && disposed.length > 0) return pick(disposed);
    if (r < 0.9) {
      const t = make(() => Tensor.from(randomTypedArray() as Float32Array, randomShape() as number[], pick(dtypes) as moekit.DType));
      return t ?? pick(live.length ? live : [null]);
    }
    return pick([null, undefined, 3, 'tensor', {}, new Float32Array(4)]);
  }
  function make(fn: () => Tensor): Tensor | undefined {
    try {
      const t = fn();
      live.push(t);
      if (live.length > 64) live.shift();
      return t;
    } catch (e) {
      check(e);
      return undefined;
    }
  }
  function randomRouting(): unknown {
    return pick([
      { k: pick(numbers) },
      { k: 2, scoring: pick(['softmax', 'sigmoid', 'sqrt-softplus', 'tanh', 5]) },
      { k: 2, selection: pick(['topk', 'topk-logits-softmax', 'top-p', 'expert-choice', 'sinkhorn', 'x']), topP: pick(numbers) },
      { k: 1, nGroup: pick(numbers), topkGroup: pick(numbers), groupScore: pick(['max', 'top2-sum', 'sum']) },
      { k: 2, nullExperts: pick(numbers), renormalize: pick([true, false, 'yes']), routedScaling: pick(numbers) },
      { k: 1, capacityFactor: pick(numbers), choiceK: pick(numbers), sinkhornIters: pick(numbers) },
      null,
      'routing',
    ]);
  }

  const unexpected: string[] = [];
  function check(e: unknown): void {
    if (e instanceof MoekitError || e instanceof TypeError || e instanceof RangeError) return;
    unexpected.push(`${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
  }

  // A small valid layer to call with random inputs.
  const H = 8;
  const layer = new MoELayer({ hidden: H, intermediate: 4, experts: 4, routing: { k: 2 } }, {
    router: Tensor.from(new Float32Array(4 * H).map((_, i) => Math.sin(i)), [4, H]),
    gateUp: Tensor.from(new Float32Array(4 * 8 * H).map((_, i) => Math.cos(i)), [4, 8, H], 'bf16'),
    down: Tensor.from(new Float32Array(4 * H * 4).map((_, i) => Math.sin(i * 3)), [4, H, 4], 'bf16'),
  });

  // A small valid offloaded stack (one cache slot per layer: evictions all the time).
  const r = (n: number, k: number) => new Float32Array(n).map((_, i) => Math.sin(i * k));
  const offloaded = new moekit.OffloadedMoE(
    { hidden: H, intermediate: 4, experts: 4, routing: { k: 2 } },
    [0, 1].map((l) => ({ router: Tensor.from(r(4 * H, l + 1), [4, H]) })),
    moekit.ExpertStore.fromTensors([0, 1].map((l) => ({ gateUp: Tensor.from(r(4 * 8 * H, l + 2), [4, 8, H]), down: Tensor.from(r(4 * H * 4, l + 3), [4, H, 4]) }))),
    { device: 'cpu', cache: { capacity: 2, perLayer: true }, prefetch: { affinity: true, layerwise: true } },
  );

  const ops: (() => unknown)[] = [
    () => make(() => Tensor.from(randomTypedArray() as Float32Array, randomShape() as number[], pick(dtypes) as moekit.DType)),
    () => make(() => Tensor.zeros(randomShape() as number[], pick(dtypes) as moekit.DType)),
    () => make(() => Tensor.empty(randomShape() as number[], pick(dtypes) as moekit.DType, pick(devices) as string)),
    async () => (randomTensor() as Tensor).toArray(),
    async () => (randomTensor() as Tensor).toFloat32(),
    () => (randomTensor() as Tensor).toArraySync(),
    async () => live.push(await (randomTensor() as Tensor).to(pick(devices) as string)),
    () => {
      const t = randomTensor() as Tensor;
      t.dispose();
      disposed.push(t);
      const i = live.indexOf(t);
      if (i >= 0) live.splice(i, 1);
    },
    async () => moekit.gate(randomTensor() as Tensor, randomRouting() as moekit.GateOptions),
    async () => moekit.dispatch(randomTensor() as Tensor, { experts: pick(numbers), blockSize: pick(numbers), capacity: pick([...numbers, undefined]) } as moekit.DispatchOptions),
    async () => moekit.groupedGemm(randomTensor() as Tensor, randomTensor() as Tensor, randomTensor() as Tensor, { activation: pick([...moekit.ACTIVATIONS, 'tanh']), layout: pick(['enk', 'ekn', 'nk']) } as moekit.GroupedGemmOptions),
    async () => moekit.combine(randomTensor() as Tensor, randomTensor() as Tensor, { weights: pick([undefined, randomTensor()]) } as moekit.CombineOptions),
    () => new MoELayer({ hidden: pick(numbers), intermediate: pick(numbers), experts: pick(numbers), routing: randomRouting() } as moekit.MoELayerConfig, { router: randomTensor(), down: randomTensor(), gateUp: randomTensor() } as moekit.MoELayerWeights),
    async () => layer.forward(randomTensor() as Tensor, pick([undefined, {}, { returnRouting: true }, { outputDtype: pick(dtypes) }, { device: pick(devices) }, 'opts']) as moekit.ForwardOptions & { returnRouting?: false }),
    async () => {
      const T = rng.int(0, 3);
      const ids = new Int32Array(T * 2).map(() => pick([-2, -1, 0, 3, 4, 2 ** 30, 1]));
      return layer.forward(Tensor.from(new Float32Array(T * H), [T, H]), { forcedIds: Tensor.from(ids, [T, 2]) });
    },
    () => moekit.routingStats(pick([[1, 2], [], [NaN], 'x', null, new Int32Array(3)]) as number[], pick(numbers)),
    () => moekit.preset(pick([...moekit.FAMILIES, 'llama']) as moekit.Family, randomRouting() as moekit.PresetOptions),
    () => moekit.resolveDevice(pick(devices)),
    () => moekit.SafetensorsFile.open(pick([path.join(dir, 'missing.safetensors'), dir, '', 42]) as string),
    async () => {
      const file = path.join(dir, `f${rng.int(0, 3)}.safetensors`);
      await moekit.writeSafetensors(file, { a: randomTensor() as Tensor }, pick([{}, { align: false }, { metadata: { x: '1' } }, 'x']) as moekit.WriteOptions);
      return moekit.SafetensorsFile.open(file).read('a', pick([{}, { dtype: pick(dtypes) }]) as { dtype?: moekit.DType });
    },
    async () => moekit.MoELayer.fromPretrained(pick([dir, '/nonexistent', 5]) as string, { layer: pick(numbers) } as { layer: number }),
    async () => layer.profile(randomTensor() as Tensor, pick([undefined, {}, { repeats: pick(numbers) }, { warmup: pick(numbers), keepOutput: pick([true, 'x']) }, { graph: pick([true, 1]) }, 'opts']) as moekit.ProfileOptions),
    async () => moekit.profileOp(pick(['gate', 'dispatch', 'groupedGemm', 'combine', 'softmax', 3]) as 'gate', pick([[randomTensor(), randomRouting()], [randomTensor(), randomTensor(), randomTensor()], randomTensor(), []]) as never, pick([undefined, { repeats: pick(numbers) }, 'x']) as moekit.ProfileOptions),
    async () => moekit.profileCopy(pick(devices) as string, pick([0, 3, 4, 1024, -1, NaN, 1.5, 'x', 2 ** 41]) as number, { repeats: 1 }),
    () => moekit.deviceMemory(pick(devices) as string),
    () => moekit.ExpertStore.fromTensors(pick([[], [{ down: randomTensor(), gateUp: randomTensor() }], [{ down: randomTensor(), gate: randomTensor(), up: randomTensor() }], 'x', [null]]) as moekit.ExpertTensors[]),
    async () => moekit.OffloadedMoE.fromPretrained(pick([dir, '/nonexistent', 5]) as string, pick([{}, { cache: { capacity: pick(numbers) } }, { cache: { capacity: 2, policy: pick(['lru', 'belady', 'x']) } }, null]) as never),
    async () => offloaded.forward(pick([0, 1, 2, -1, NaN]) as number, randomTensor() as Tensor, pick([undefined, {}, { outputDtype: pick(dtypes) }, 'x']) as never),
    async () => {
      const T = rng.int(0, 4);
      return offloaded.forward(rng.int(0, 2), Tensor.from(new Float32Array(T * H).fill(0.25), [T, H]));
    },
  ];

  for (let i = 0; i < CALLS; i++) {
    const op = pick(ops);
    try {
      await op();
    } catch (e) {
      check(e);
    }
  }
  fs.rmSync(dir, { recursive: true, force: true });
  expect(unexpected.slice(0, 10)).toEqual([]);
  // Still usable afterwards.
  const out = await layer.forward(Tensor.from(new Float32Array(3 * H).fill(0.5), [3, H]));
  expect(out.shape).toEqual([3, H]);
  await offloaded.settle();
  const off = await offloaded.forward(1, Tensor.from(new Float32Array(2 * H).fill(0.5), [2, H]));
  expect(off.shape).toEqual([2, H]);
  const st = offloaded.stats().total;
  expect(st.hits + st.misses).toBe(st.accesses);
  offloaded.dispose();
}, 600_000);
