/** Bad options of the offload API: each error names the argument, what was expected and what came. */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Tensor } from '../../lib';
import { OffloadedMoE } from '../../lib/offload';
import { expectMoekitError, testSeed } from '../helpers';
import { tinyModel, writeModel } from '../pretrained/tiny';

const seed = testSeed('offload-options');
let tmp: string;
let dir: string;
beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moekit-offload-opt-'));
  dir = path.join(tmp, 'mixtral');
  await writeModel(dir, tinyModel('mixtral', seed));
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

const cases: [string, object, RegExp, typeof TypeError | typeof RangeError][] = [
  ['no cache', {}, /^Expected cache options \(\{ capacity, perLayer\?, policy\? \}\) for options\.cache but received undefined$/, TypeError],
  ['capacity 0', { cache: { capacity: 0 } }, /^Expected a positive integer for options\.cache\.capacity but received 0 of type number$/, RangeError],
  ['capacity string', { cache: { capacity: '4' } }, /^Expected a positive integer for options\.cache\.capacity but received "4" of type string$/, TypeError],
  ['capacity 1.5', { cache: { capacity: 1.5 } }, /^Expected a positive integer for options\.cache\.capacity but received 1\.5/, RangeError],
  ['bytes below one expert', { cache: { capacity: 100, capacityUnit: 'bytes' } }, /^Expected at least one expert's bytes \(3072\) for options\.cache\.capacity but received 100/, RangeError],
  ['unit', { cache: { capacity: 2, capacityUnit: 'MiB' } }, /^Expected one of 'experts', 'bytes' for options\.cache\.capacityUnit but received "MiB"/, RangeError],
  ['perLayer', { cache: { capacity: 2, perLayer: 'yes' } }, /^Expected a boolean for options\.cache\.perLayer but received "yes"/, TypeError],
  ['policy', { cache: { capacity: 2, policy: 'fifo' } }, /^Expected one of 'lru', .*'static'.* or a policy factory for options\.cache\.policy but received "fifo"/, RangeError],
  ['belady', { cache: { capacity: 2, policy: 'belady' } }, /^Expected an online policy \('lru', .*\): 'belady' needs the future for options\.cache\.policy but received "belady"/, RangeError],
  ['affinity', { cache: { capacity: 2 }, prefetch: { affinity: 1 } }, /^Expected a boolean for options\.prefetch\.affinity but received 1 of type number$/, TypeError],
  ['pregating', { cache: { capacity: 2 }, prefetch: { pregating: 'on' } }, /^Expected a boolean for options\.prefetch\.pregating but received "on"/, TypeError],
  ['maxPerStep', { cache: { capacity: 2 }, prefetch: { affinity: true, maxPerStep: -1 } }, /^Expected a non-negative integer for options\.prefetch\.maxPerStep but received -1/, RangeError],
  ['minProbability', { cache: { capacity: 2 }, prefetch: { affinity: true, minProbability: 2 } }, /^Expected a number between 0 and 1 for options\.prefetch\.minProbability but received 2/, RangeError],
  ['protectProbability', { cache: { capacity: 2 }, prefetch: { layerwise: true, protectProbability: -1 } }, /options\.prefetch\.protectProbability/, RangeError],
  ['layerwise', { cache: { capacity: 2 }, prefetch: { layerwise: 'yes' } }, /options\.prefetch\.layerwise/, TypeError],
  ['layers', { cache: { capacity: 2 }, layers: [3] }, /^Expected one of the MoE layers \(0, 1\) for options\.layers\[0\] but received 3/, RangeError],
  ['device', { cache: { capacity: 2 }, device: 'tpu' }, /options\.device/, RangeError],
];

describe('OffloadedMoE.fromPretrained option errors', () => {
  for (const [label, options, message, type] of cases) {
    test(label, async () => {
      let caught: unknown;
      try {
        (await OffloadedMoE.fromPretrained(dir, options as never)).dispose();
      } catch (e) {
        caught = e;
      }
      expect(caught).toBeInstanceOf(type);
      expect((caught as Error).message).toMatch(message);
    });
  }

  test('forward arguments', async () => {
    const model = await OffloadedMoE.fromPretrained(dir, { cache: { capacity: 2 } });
    const x = Tensor.zeros([2, 32]);
    await expect(model.forward(2, x)).rejects.toThrow(/^Expected an integer between 0 and 1 for layer but received 2/);
    const bad = Tensor.zeros([2, 31]);
    await expect(model.forward(0, bad)).rejects.toThrow(/^Expected a f32, f16 or bf16 tensor of shape \[tokens, 32\] for x but received "a f32 tensor of shape \[2, 31\]"/);
    await expect(model.forward(0, x, { outputDtype: 'i32' as never })).rejects.toThrow(/for options\.outputDtype/);
    const empty = await model.forward(0, Tensor.zeros([0, 32]));
    expect(empty.shape).toEqual([0, 32]);
    model.dispose();
    await expectMoekitError(() => model.forward(0, x), 'ERR_DISPOSED');
    for (const t of [x, bad, empty]) t.dispose();
  });
});
