/**
 * The one error type of moekit, and the formatter every argument error uses.
 *
 * Native code throws real `MoekitError` instances: the class is handed to the addon
 * at load (see native.ts). Argument validation throws `TypeError` (wrong type) or
 * `RangeError` (wrong value), always in the form
 * `Expected <what> for <argument> but received <value>`.
 */

/** Error codes carried by {@link MoekitError.code}. */
export type MoekitErrorCode =
  | 'ERR_INVALID_ARGUMENT'
  | 'ERR_OOM'
  | 'ERR_CUDA_OOM'
  | 'ERR_CUDA'
  | 'ERR_CUDA_UNAVAILABLE'
  | 'ERR_DISPOSED'
  | 'ERR_UNSUPPORTED'
  | 'ERR_TOO_LARGE'
  | 'ERR_LOAD'
  | 'ERR_IO'
  | 'ERR_CHECKPOINT'
  | 'ERR_INTERNAL';

/** Every failure moekit reports that is not an argument error. */
export class MoekitError extends Error {
  /** Machine-readable kind of failure. */
  readonly code: MoekitErrorCode;
  /** For CUDA failures, the CUDA error name (for example `cudaErrorMemoryAllocation`). */
  readonly cudaError?: string;

  constructor(message: string, code: MoekitErrorCode, cudaError?: string) {
    super(message);
    this.name = 'MoekitError';
    this.code = code;
    if (cudaError !== undefined) this.cudaError = cudaError;
  }
}

/** Short, readable description of a received value for error messages. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (typeof value === 'string') return `${JSON.stringify(value.length > 40 ? value.slice(0, 40) + '…' : value)} of type string`;
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') return `${String(value)} of type ${typeof value}`;
  if (typeof value === 'function') return 'a function';
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  if (ArrayBuffer.isView(value)) return `a ${value.constructor.name} of length ${(value as unknown as { length?: number }).length ?? value.byteLength}`;
  const ctor = (value as object).constructor;
  return ctor && ctor.name && ctor.name !== 'Object' ? `an instance of ${ctor.name}` : 'an object';
}

/** `TypeError: Expected <expected> for <name> but received <value>`. */
export function typeError(name: string, expected: string, received: unknown): TypeError {
  return new TypeError(`Expected ${expected} for ${name} but received ${describe(received)}`);
}

/** `RangeError: Expected <expected> for <name> but received <value>`. */
export function rangeError(name: string, expected: string, received: unknown): RangeError {
  return new RangeError(`Expected ${expected} for ${name} but received ${describe(received)}`);
}

/** Checks `value` is an integer in [min, max]; returns it. */
export function checkInteger(name: string, value: unknown, min = -Infinity, max = Infinity): number {
  if (typeof value !== 'number') throw typeError(name, integerDescription(min, max), value);
  if (!Number.isInteger(value) || value < min || value > max) throw rangeError(name, integerDescription(min, max), value);
  return value;
}

function integerDescription(min: number, max: number): string {
  if (min === 0 && max === Infinity) return 'a non-negative integer';
  if (min === 1 && max === Infinity) return 'a positive integer';
  if (max === Infinity) return `an integer >= ${min}`;
  if (min === -Infinity) return `an integer <= ${max}`;
  return `an integer between ${min} and ${max}`;
}

/** Checks `value` is a finite number in [min, max] (bounds inclusive); returns it. */
export function checkNumber(name: string, value: unknown, min = -Infinity, max = Infinity): number {
  const expected =
    min === -Infinity && max === Infinity ? 'a finite number' : max === Infinity ? `a finite number >= ${min}` : min === -Infinity ? `a finite number <= ${max}` : `a number between ${min} and ${max}`;
  if (typeof value !== 'number') throw typeError(name, expected, value);
  if (!Number.isFinite(value) || value < min || value > max) throw rangeError(name, expected, value);
  return value;
}

/** Checks `value` is a boolean; returns it. */
export function checkBoolean(name: string, value: unknown): boolean {
  if (typeof value !== 'boolean') throw typeError(name, 'a boolean', value);
  return value;
}

/** Checks `value` is one of `choices`; returns it. */
export function checkOneOf<T extends string>(name: string, value: unknown, choices: readonly T[]): T {
  const expected = `one of ${choices.map((c) => `'${c}'`).join(', ')}`;
  if (typeof value !== 'string') throw typeError(name, expected, value);
  if (!(choices as readonly string[]).includes(value)) throw rangeError(name, expected, value);
  return value as T;
}

/** Checks `value` is a plain options object (or undefined → {}). */
export function checkOptions<T extends object>(name: string, value: unknown): Partial<T> {
  if (value === undefined) return {};
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw typeError(name, 'an options object', value);
  return value as Partial<T>;
}
