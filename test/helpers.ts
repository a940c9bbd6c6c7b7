/** Shared test helpers (no native code, no moekit internals). */
import { MoekitError } from '../lib';

/** A fresh seed per run, printed so a failure can be replayed with MOEKIT_TEST_SEED. */
export function testSeed(label: string): number {
  const fixed = process.env.MOEKIT_TEST_SEED;
  const seed = fixed !== undefined ? Number(fixed) : (Date.now() ^ (Math.random() * 0x7fffffff)) >>> 0;
  // eslint-disable-next-line no-console
  if (fixed === undefined) process.stdout.write(`[${label}] seed ${seed} (replay with MOEKIT_TEST_SEED=${seed})\n`);
  return seed;
}

/** Asserts that `fn` throws (or rejects with) a MoekitError with `code`. */
export async function expectMoekitError(fn: () => unknown, code: string, message?: RegExp): Promise<MoekitError> {
  let caught: unknown;
  try {
    await fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(MoekitError);
  const err = caught as MoekitError;
  expect(err.code).toBe(code);
  if (message) expect(err.message).toMatch(message);
  return err;
}

/** Where the test is: the first failing index and values, for readable assertion messages. */
export function firstMismatch(a: ArrayLike<number>, b: ArrayLike<number>): string | null {
  if (a.length !== b.length) return `lengths differ: ${a.length} vs ${b.length}`;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return `index ${i}: ${a[i]} vs ${b[i]}`;
  return null;
}

/**
 * Largest |got - want| / (atol + rtol·scale[i]) over all elements; ≤ 1 passes.
 * `scale` is a per-element magnitude (for a dot product, Σ|a||b|), so the bound
 * follows the conditioning of each output instead of one hand-picked tolerance.
 */
export function worstError(got: ArrayLike<number>, want: ArrayLike<number>, scale: ArrayLike<number>, rtol: number, atol = 0): { ratio: number; index: number } {
  let ratio = 0;
  let index = -1;
  for (let i = 0; i < want.length; i++) {
    const r = Math.abs(got[i] - want[i]) / (atol + rtol * scale[i]);
    if (!(r <= ratio)) {
      ratio = Number.isNaN(r) ? Infinity : r;
      index = i;
    }
  }
  return { ratio, index };
}
