/**
 * Tensors: an element type, a shape and a device, over memory the native side owns.
 * Data given to a tensor is always copied, so no JavaScript buffer is read while
 * asynchronous work runs. Call dispose() to free at once; a finalizer frees tensors
 * that were not disposed.
 */
import { constants as bufferConstants } from 'buffer';
import { Device, deviceCodes, deviceFromName, resolveDevice } from './device';
import { ArrayOf, DType, DTYPES, FLOAT_DTYPES, dtypeCode, dtypeFromCode, dtypeSize } from './dtype';
import { MoekitError, checkOneOf, describe, rangeError, typeError } from './errors';
import { RawTensor, native } from './native';

/** Data a tensor can be made from. */
export type TensorData = Float32Array | Float64Array | Uint16Array | Int32Array | BigInt64Array | number[];

/** Largest byte length a typed array read back into JavaScript may have. */
export const MAX_READ_BYTES: number = bufferConstants.MAX_LENGTH;

/** Validates a shape; returns a copy. */
export function checkShape(name: string, shape: unknown): number[] {
  const expected = 'an array of non-negative integers';
  if (!Array.isArray(shape)) throw typeError(name, expected, shape);
  if (shape.length > 8) throw rangeError(name, 'at most 8 dimensions', shape);
  let numel = 1;
  for (let i = 0; i < shape.length; i++) {
    const d: unknown = shape[i];
    if (typeof d !== 'number') throw typeError(`${name}[${i}]`, 'a non-negative integer', d);
    if (!Number.isInteger(d) || d < 0) throw rangeError(`${name}[${i}]`, 'a non-negative integer', d);
    numel *= d;
  }
  if (!Number.isSafeInteger(numel)) throw rangeError(name, 'a shape whose element count is a safe integer', shape);
  return shape.slice() as number[];
}

function numelOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** A dense row-major tensor on the CPU or a CUDA device. */
export class Tensor {
  /** @internal */
  readonly raw: RawTensor;
  /** Element type. */
  readonly dtype: DType;
  /** Dimensions, outermost first. */
  readonly shape: readonly number[];
  /** Where the data lives. */
  readonly device: Device;

  /** @internal Use Tensor.from / Tensor.zeros or an op's result. */
  constructor(raw: RawTensor) {
    this.raw = raw;
    this.dtype = dtypeFromCode(raw.dtype);
    this.shape = Object.freeze(raw.shape.slice());
    this.device = deviceFromName(raw.device);
  }

  /**
   * A host tensor holding a copy of `data`.
   * - Float32Array / Float64Array / number[]: dtype f32 (default), f16 or bf16; converted
   *   with round-to-nearest-even (Float64Array and number[] go through float32 first).
   * - Uint16Array: raw f16 or bf16 bits; `dtype` must say which.
   * - Int32Array: i32. BigInt64Array: i64.
   */
  static from(data: TensorData, shape: readonly number[], dtype?: DType): Tensor {
    const dims = checkShape('shape', shape);
    if (dtype !== undefined) checkOneOf('dtype', dtype, DTYPES);
    let view: ArrayBufferView;
    let type: DType;
    if (data instanceof Float32Array || data instanceof Float64Array || Array.isArray(data)) {
      type = dtype ?? 'f32';
      if (!FLOAT_DTYPES.includes(type)) throw rangeError('dtype', "'f32', 'f16' or 'bf16' for float data", dtype);
      view = data instanceof Float32Array ? data : Float32Array.from(data as ArrayLike<number>);
    } else if (data instanceof Uint16Array) {
      if (dtype !== 'f16' && dtype !== 'bf16') throw rangeError('dtype', "'f16' or 'bf16' for Uint16Array bits", dtype);
      type = dtype;
      view = data;
    } else if (data instanceof Int32Array) {
      if (dtype !== undefined && dtype !== 'i32') throw rangeError('dtype', "'i32' for Int32Array data", dtype);
      type = 'i32';
      view = data;
    } else if (data instanceof BigInt64Array) {
      if (dtype !== undefined && dtype !== 'i64') throw rangeError('dtype', "'i64' for BigInt64Array data", dtype);
      type = 'i64';
      view = data;
    } else {
      throw typeError('data', 'a Float32Array, Float64Array, Uint16Array, Int32Array, BigInt64Array or number[]', data);
    }
    const length = Array.isArray(data) ? data.length : (view as unknown as { length: number }).length;
    if (length !== numelOf(dims))
      throw rangeError('data', `${numelOf(dims)} elements (shape [${dims.join(', ')}])`, data);
    return new Tensor(native().NativeTensor.fromArray(view, dtypeCode(type), dims));
  }

  /** A host tensor of zeros. */
  static zeros(shape: readonly number[], dtype: DType = 'f32'): Tensor {
    const dims = checkShape('shape', shape);
    checkOneOf('dtype', dtype, DTYPES);
    const n = numelOf(dims);
    const data =
      dtype === 'f32' ? new Float32Array(n) : dtype === 'i32' ? new Int32Array(n) : dtype === 'i64' ? new BigInt64Array(n) : new Uint16Array(n);
    return Tensor.from(data, dims, dtype);
  }

  /**
   * A tensor of uninitialised memory on `device` (default: MOEKIT_DEVICE, else 'auto'),
   * allocated natively without a JavaScript copy. Fails with ERR_OOM / ERR_CUDA_OOM
   * when the memory is not there.
   */
  static empty(shape: readonly number[], dtype: DType = 'f32', device?: string): Tensor {
    const dims = checkShape('shape', shape);
    checkOneOf('dtype', dtype, DTYPES);
    const [kind, index] = deviceCodes(resolveDevice(device));
    return new Tensor(native().NativeTensor.empty(dtypeCode(dtype), dims, kind, index));
  }

  /** Number of elements. */
  get numel(): number {
    return numelOf(this.shape);
  }

  /** Bytes of data. */
  get byteLength(): number {
    return this.numel * dtypeSize(this.dtype);
  }

  /** True once dispose() has run. */
  get disposed(): boolean {
    return this.raw.disposed;
  }

  /** Frees the memory now. Work already in flight keeps what it needs until it ends. */
  dispose(): void {
    this.raw.dispose();
  }

  /** For `using t = ...` (explicit resource management). */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /** The data as a typed array (f16/bf16 as Uint16Array bits), read from any device. */
  async toArray(): Promise<ArrayOf<DType>> {
    this.checkReadable(dtypeSize(this.dtype));
    return (await this.raw.read(false)) as ArrayOf<DType>;
  }

  /** The data converted to float32, read from any device. */
  async toFloat32(): Promise<Float32Array> {
    this.checkReadable(4);
    return (await this.raw.read(true)) as Float32Array;
  }

  /** toArray() for host tensors, without a Promise. */
  toArraySync(): ArrayOf<DType> {
    this.checkReadable(dtypeSize(this.dtype), true);
    return this.raw.readSync(false) as ArrayOf<DType>;
  }

  /** toFloat32() for host tensors, without a Promise. */
  toFloat32Sync(): Float32Array {
    this.checkReadable(4, true);
    return this.raw.readSync(true) as Float32Array;
  }

  /** A copy of this tensor on `device` ('cpu', 'cuda', 'cuda:N', 'auto'). */
  async to(device: string): Promise<Tensor> {
    const d = resolveDevice(device);
    this.checkLive();
    const [kind, index] = deviceCodes(d);
    return new Tensor(await this.raw.to(kind, index));
  }

  /** @internal Throws ERR_DISPOSED when disposed. */
  checkLive(): void {
    if (this.raw.disposed) throw new MoekitError('the tensor has been disposed', 'ERR_DISPOSED');
  }

  private checkReadable(elementBytes: number, sync = false): void {
    this.checkLive();
    const bytes = this.numel * elementBytes;
    if (bytes > MAX_READ_BYTES)
      throw new MoekitError(
        `the tensor's data (${bytes} bytes) is larger than a JavaScript ArrayBuffer can hold (${MAX_READ_BYTES} bytes); read it in slices or keep it native`,
        'ERR_TOO_LARGE',
      );
    if (sync && this.device.kind !== 'cpu')
      throw new MoekitError(`toArraySync/toFloat32Sync read host tensors; this one is on ${this.device.name}: use await toArray()`, 'ERR_INVALID_ARGUMENT');
  }

  /** Short description for logs. */
  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(', ')}], ${this.device.name}${this.disposed ? ', disposed' : ''})`;
  }
}

/** Checks `value` is a live Tensor; returns it. */
export function checkTensor(name: string, value: unknown): Tensor {
  if (!(value instanceof Tensor)) throw typeError(name, 'a Tensor', value);
  if (value.disposed) throw new MoekitError(`${name} has been disposed`, 'ERR_DISPOSED');
  return value;
}

/** Describes a tensor's dtype and shape for error messages. */
export function describeTensor(t: Tensor): string {
  return `a ${t.dtype} tensor of shape [${t.shape.join(', ')}]`;
}

export { describe };
