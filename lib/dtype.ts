/** Element types and their codes shared with kernels/common/dtype.h. */

/** Element type of a tensor. f16 and bf16 travel through JavaScript as Uint16Array bits. */
export type DType = 'f32' | 'f16' | 'bf16' | 'i32' | 'i64';

/** All element types, in code order. */
export const DTYPES: readonly DType[] = ['f32', 'f16', 'bf16', 'i32', 'i64'];

/** Float element types. */
export const FLOAT_DTYPES: readonly DType[] = ['f32', 'f16', 'bf16'];

/** Code of a dtype in the native interface. */
export function dtypeCode(d: DType): number {
  return DTYPES.indexOf(d);
}

/** Dtype of a native code. */
export function dtypeFromCode(c: number): DType {
  const d = DTYPES[c];
  if (d === undefined) throw new Error(`unknown dtype code ${c}`);
  return d;
}

/** Bytes per element. */
export function dtypeSize(d: DType): number {
  return d === 'f32' || d === 'i32' ? 4 : d === 'i64' ? 8 : 2;
}

/** The typed array read back for each dtype. */
export type ArrayOf<D extends DType> = D extends 'f32'
  ? Float32Array
  : D extends 'f16' | 'bf16'
    ? Uint16Array
    : D extends 'i32'
      ? Int32Array
      : BigInt64Array;
