/** Many forwards in flight at once give the bits of one at a time; disposal mid-flight is safe. */
import { MoELayer, Tensor } from '../../lib';
import { testSeed } from '../helpers';
import { Rng } from '../reference/rng';

function makeLayer(rng: Rng, H: number, I: number, E: number, k: number): MoELayer {
  const r = (n: number, std: number) => Float32Array.from({ length: n }, () => rng.normal(0, std));
  return new MoELayer({ hidden: H, intermediate: I, experts: E, routing: { k, renormalize: true } }, {
    router: Tensor.from(r(E * H, 0.3), [E, H]),
    gateUp: Tensor.from(r(E * 2 * I * H, 0.2), [E, 2 * I, H], 'bf16'),
    down: Tensor.from(r(E * H * I, 0.2), [E, H, I], 'bf16'),
  }, { ownsWeights: true });
}

test('100 forwards in flight on one layer and across layers equal sequential results bit for bit', async () => {
  const rng = new Rng(testSeed('concurrency'));
  const H = 48;
  const layers = [makeLayer(rng, H, 32, 8, 2), makeLayer(rng, H, 16, 16, 4)];
  const inputs = Array.from({ length: 100 }, (_, i) => Tensor.from(Float32Array.from({ length: (1 + (i % 7)) * H }, () => rng.normal()), [1 + (i % 7), H]));
  const sequential: Float32Array[] = [];
  for (let i = 0; i < 100; i++) sequential.push((await layers[i % 2].forward(inputs[i])).toFloat32Sync());
  const concurrent = await Promise.all(inputs.map((x, i) => layers[i % 2].forward(x)));
  for (let i = 0; i < 100; i++) expect(Buffer.from(concurrent[i].toFloat32Sync().buffer).equals(Buffer.from(sequential[i].buffer))).toBe(true);
});

test('disposing inputs and the layer while forwards are in flight is safe: they finish with the right bits', async () => {
  const rng = new Rng(testSeed('dispose-in-flight'));
  const H = 32;
  const layer = makeLayer(rng, H, 32, 8, 2);
  const xs = Array.from({ length: 20 }, () => Tensor.from(Float32Array.from({ length: 64 * H }, () => rng.normal()), [64, H]));
  const expected: Float32Array[] = [];
  for (const x of xs) expected.push((await layer.forward(x)).toFloat32Sync());
  const pending = xs.map((x) => layer.forward(x));
  for (const x of xs) x.dispose(); // the native side holds the memory until each job ends
  layer.dispose(); // so does every in-flight forward for the weights
  const results = await Promise.all(pending);
  results.forEach((y, i) => expect(Buffer.from(y.toFloat32Sync().buffer).equals(Buffer.from(expected[i].buffer))).toBe(true));
  await expect(layer.forward(Tensor.zeros([1, H]))).rejects.toThrow(/the layer has been disposed/);
});
