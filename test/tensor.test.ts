import { MAX_READ_BYTES, MoekitError, Tensor } from '../lib';
import { expectMoekitError, firstMismatch, testSeed } from './helpers';
import { roundBf16, roundF16 } from './reference/precision';
import { Rng } from './reference/rng';

/** bf16 / f16 bits of a float64 value already representable in that format. */
function bf16Bits(v: number): number {
  const f = new Float32Array([v]);
  return new Uint32Array(f.buffer)[0] >>> 16;
}
function f16Bits(v: number): number {
  if (Number.isNaN(v)) return 0x7e00;
  const sign = v < 0 || Object.is(v, -0) ? 0x8000 : 0;
  const a = Math.abs(v);
  if (a === Infinity) return sign | 0x7c00;
  if (a === 0) return sign;
  if (a < 2 ** -14) return sign | Math.round(a / 2 ** -24);
  const e = Math.floor(Math.log2(a));
  const exp = a / 2 ** e >= 2 ? e + 1 : a / 2 ** e < 1 ? e - 1 : e;
  return sign | ((exp + 15) << 10) | Math.round((a / 2 ** exp - 1) * 1024);
}

describe('Tensor', () => {
  test('round-trips every dtype bit-exactly through native memory', async () => {
    const f32 = new Float32Array([1.5, -0, NaN, Infinity, 3.4e38, 1e-45]);
    const t = Tensor.from(f32, [2, 3]);
    expect(t.dtype).toBe('f32');
    expect(t.shape).toEqual([2, 3]);
    expect(t.device.name).toBe('cpu');
    expect(t.byteLength).toBe(24);
    const back = (await t.toArray()) as Float32Array;
    expect(Buffer.from(back.buffer).equals(Buffer.from(f32.buffer))).toBe(true);

    const bits = new Uint16Array([0x3f80, 0x7fc0, 0x8000, 0x0001]);
    for (const dt of ['bf16', 'f16'] as const) {
      const tb = Tensor.from(bits, [4], dt);
      expect(firstMismatch(tb.toArraySync() as Uint16Array, bits)).toBeNull();
    }
    const i32 = new Int32Array([-2147483648, 0, 2147483647]);
    expect(firstMismatch(Tensor.from(i32, [3]).toArraySync() as Int32Array, i32)).toBeNull();
    const i64 = new BigInt64Array([-(2n ** 63n), 0n, 2n ** 63n - 1n]);
    expect(Array.from(Tensor.from(i64, [3]).toArraySync() as BigInt64Array)).toEqual(Array.from(i64));
  });

  test('the copy is the tensor\'s own: later writes to the source do not reach it', () => {
    const src = new Float32Array([1, 2, 3]);
    const t = Tensor.from(src, [3]);
    src[0] = 99;
    expect(Array.from(t.toFloat32Sync())).toEqual([1, 2, 3]);
  });

  test('float32 → bf16 / f16 rounds to nearest, ties to even (random values and edge cases)', () => {
    const rng = new Rng(testSeed('tensor-rounding'));
    const values: number[] = [0, -0, 1, -1, 65504, 65520, 65519.99, 1e-8, 2 ** -24, 2 ** -25, 3 * 2 ** -26, 2 ** -14, Infinity, -Infinity, 3.4e38];
    // Exact ties for bf16: 1 + 2^-8 (tie, even down) and 1 + 3·2^-8 (tie, even up).
    values.push(1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -11, 1 + 3 * 2 ** -11);
    for (let i = 0; i < 4000; i++) values.push(Math.fround(rng.normal(0, 1) * 2 ** Math.round(rng.uniform(-30, 30))));
    const data = new Float32Array(values);
    const bf = Tensor.from(data, [data.length], 'bf16').toArraySync() as Uint16Array;
    const hf = Tensor.from(data, [data.length], 'f16').toArraySync() as Uint16Array;
    for (let i = 0; i < data.length; i++) {
      const x = data[i];
      expect([i, x, bf[i]]).toEqual([i, x, bf16Bits(roundBf16(x))]);
      expect([i, x, hf[i]]).toEqual([i, x, f16Bits(roundF16(x))]);
    }
    // NaN stays NaN in both formats.
    const nan = Tensor.from(new Float32Array([NaN]), [1], 'bf16').toFloat32Sync();
    expect(Number.isNaN(nan[0])).toBe(true);
  });

  test('toFloat32 widens f16 / bf16 / i32 exactly', async () => {
    const t = Tensor.from(new Uint16Array([0x3c00, 0x0001, 0x7bff, 0xfc00]), [4], 'f16');
    expect(Array.from(await t.toFloat32())).toEqual([1, 2 ** -24, 65504, -Infinity]);
    const b = Tensor.from(new Uint16Array([0x3f80, 0xc040]), [2], 'bf16');
    expect(Array.from(b.toFloat32Sync())).toEqual([1, -3]);
    expect(Array.from(Tensor.from(new Int32Array([-7, 1 << 24]), [2]).toFloat32Sync())).toEqual([-7, 16777216]);
  });

  test('zeros, empty, and number[] / Float64Array input', () => {
    expect(Array.from(Tensor.zeros([2, 2], 'bf16').toArraySync() as Uint16Array)).toEqual([0, 0, 0, 0]);
    expect(Tensor.empty([3, 0], 'f32', 'cpu').numel).toBe(0);
    expect(Array.from(Tensor.from([1, 2.5], [2]).toFloat32Sync())).toEqual([1, 2.5]);
    expect(Array.from(Tensor.from(new Float64Array([0.1]), [1]).toFloat32Sync())).toEqual([Math.fround(0.1)]);
    expect(Tensor.from(new Float32Array([4]), []).shape).toEqual([]);
  });

  test('dispose frees at once; using a disposed tensor is ERR_DISPOSED from both layers', async () => {
    const t = Tensor.from(new Float32Array(16), [4, 4]);
    t.dispose();
    expect(t.disposed).toBe(true);
    t.dispose(); // idempotent
    await expectMoekitError(() => t.toArray(), 'ERR_DISPOSED');
    await expectMoekitError(() => t.toFloat32Sync(), 'ERR_DISPOSED');
    await expectMoekitError(() => t.to('cpu'), 'ERR_DISPOSED');
    // The native side checks too (a real MoekitError instance thrown from C++).
    let caught: unknown;
    try {
      t.raw.readSync(false);
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(MoekitError);
    expect((caught as MoekitError).code).toBe('ERR_DISPOSED');
  });

  test('to("cpu") copies; the copy outlives the original', async () => {
    const t = Tensor.from(new Float32Array([1, 2]), [2]);
    const c = await t.to('cpu');
    t.dispose();
    expect(Array.from(c.toFloat32Sync())).toEqual([1, 2]);
  });

  test('sizes that do not fit a JS ArrayBuffer are refused on read-back, never a crash', async () => {
    // NOTE: the allocation is virtual (never written), so this costs no real memory.
    const n = Math.floor(MAX_READ_BYTES / 4) + 16;
    const big = Tensor.empty([n], 'f32', 'cpu');
    await expectMoekitError(() => big.toArray(), 'ERR_TOO_LARGE', /larger than a JavaScript ArrayBuffer/);
    await expectMoekitError(() => big.toFloat32Sync(), 'ERR_TOO_LARGE');
    big.dispose();
    // As float32 an f16 tensor doubles in size: the check uses the size read back.
    const half = Tensor.empty([Math.floor(MAX_READ_BYTES / 4) + 1], 'f16', 'cpu');
    expect(half.byteLength).toBeLessThan(MAX_READ_BYTES);
    await expectMoekitError(() => half.toFloat32(), 'ERR_TOO_LARGE');
    half.dispose();
  });

  test('host allocation beyond memory fails with ERR_OOM and the process stays usable', async () => {
    await expectMoekitError(() => Tensor.empty([2 ** 50], 'f32', 'cpu'), 'ERR_OOM', /out of host memory/);
    expect(Tensor.from([1], [1]).toFloat32Sync()[0]).toBe(1);
  });

  test('argument errors name the argument, the expectation and what was received', () => {
    expect(() => Tensor.from(new Float32Array(3), [2, 2])).toThrow(new RangeError('Expected 4 elements (shape [2, 2]) for data but received a Float32Array of length 3'));
    expect(() => Tensor.from(new Float32Array(1), [1.5])).toThrow(new RangeError('Expected a non-negative integer for shape[0] but received 1.5 of type number'));
    expect(() => Tensor.from(new Float32Array(1), 'x' as unknown as number[])).toThrow(new TypeError('Expected an array of non-negative integers for shape but received "x" of type string'));
    expect(() => Tensor.from(new Uint16Array(1), [1])).toThrow(new RangeError("Expected 'f16' or 'bf16' for Uint16Array bits for dtype but received undefined"));
    expect(() => Tensor.from(new Float32Array(1), [1], 'i32')).toThrow(RangeError);
    expect(() => Tensor.from(new Float32Array(1), [1], 'f8' as never)).toThrow(new RangeError("Expected one of 'f32', 'f16', 'bf16', 'i32', 'i64' for dtype but received \"f8\" of type string"));
    expect(() => Tensor.from({} as never, [1])).toThrow(TypeError);
    expect(() => Tensor.from(new Float32Array(1), [-1])).toThrow(RangeError);
  });
});
