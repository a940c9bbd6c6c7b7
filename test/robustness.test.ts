/** Inputs that once reached the native side with sizes that overflow: each must fail cleanly. */
import { MoekitError, Tensor, combine, dispatch, gate } from '../lib';

test('an output whose element count overflows 64 bits is refused, not allocated', async () => {
  // y [0, 2^44] is empty, but the combine output [2^20, 2^44] would wrap around.
  let caught: unknown;
  try {
    await combine(Tensor.zeros([0, 2 ** 44]), Tensor.from(new Int32Array(1 << 20).fill(-1), [1 << 20, 1]));
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(MoekitError);
  expect((caught as MoekitError).code).toBe('ERR_INVALID_ARGUMENT');
  expect((caught as MoekitError).message).toMatch(/has too many elements/);
});

test('a dispatch that 32-bit row indices cannot address is refused before allocating', async () => {
  await expect(dispatch(Tensor.from(new Int32Array(2), [1, 2]), { experts: 2 ** 24, blockSize: 4096 })).rejects.toThrow(
    /Expected a dispatch whose padded rows fit 32-bit row indices for options/,
  );
});

test('the native side checks shapes even when lib/ is bypassed', async () => {
  const logits = Tensor.from(new Float32Array(8), [2, 4]);
  // Raw binding call with a column count that contradicts the logits.
  const raw = (require('../lib/native') as typeof import('../lib/native')).native();
  let caught: unknown;
  try {
    await (raw.gating as (o: object) => Promise<unknown>)({ logits: logits.raw, experts: 5, k: 1 });
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(MoekitError);
  expect((caught as MoekitError).message).toMatch(/logits must have experts \+ nullExperts = 5 columns, got 4/);
  // And the typed path still works afterwards.
  expect((await gate(logits, { k: 1 })).ids.shape).toEqual([2, 1]);
});
