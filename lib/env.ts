/**
 * The environment variables the native side reads, checked before the addon loads.
 *
 * The native code reads each of these once per process and would otherwise take a value it
 * does not know as "off" (or, for MOEKIT_CPU_ISA, as the scalar path): a typo would silently
 * change which kernels run. docs/ARCHITECTURE.md lists them.
 */
import { MoekitError, describe } from './errors';

interface EnvRule {
  /** What the message says is expected. */
  expected: string;
  ok: (value: string) => boolean;
}

const oneOf = (...choices: string[]): EnvRule => ({
  expected: `one of ${choices.map((c) => `'${c}'`).join(', ')} (or unset)`,
  ok: (v) => choices.includes(v),
});

/** Every variable the native side reads, with the values it understands. */
export const ENV_RULES: Readonly<Record<string, EnvRule>> = {
  MOEKIT_NUM_THREADS: {
    // As the native reader: 0 = the core count, above 1024 = 1024.
    expected: 'a whole number of threads (0 or unset: the core count; at most 1024 are used)',
    ok: (v) => /^[0-9]+$/.test(v.trim()),
  },
  MOEKIT_CPU_ISA: oneOf('avx512', 'avx2', 'scalar'),
  MOEKIT_WGMMA: oneOf('0', '1', 'require'),
  MOEKIT_WGMMA_TMA: oneOf('0', '1', 'ws'),
  MOEKIT_SKINNY: oneOf('0', '1', 'require'),
  MOEKIT_TC_STAGES: oneOf('2', '3'),
  MOEKIT_CONCURRENT_SHARED: oneOf('0', '1'),
};

/**
 * Throws MoekitError ERR_INVALID_ARGUMENT naming the first variable of `env` whose value
 * the native side would not understand. An empty value counts as unset.
 */
export function checkEnvironment(env: NodeJS.ProcessEnv = process.env): void {
  for (const [name, rule] of Object.entries(ENV_RULES)) {
    const value = env[name];
    if (value === undefined || value === '' || rule.ok(value)) continue;
    throw new MoekitError(`Expected ${rule.expected} for environment variable ${name} but received ${describe(value)}`, 'ERR_INVALID_ARGUMENT');
  }
}
