/** The MOEKIT_* environment variables the native side reads are checked before it loads (lib/env.ts). */
import { MoekitError } from '../lib';
import { ENV_RULES, checkEnvironment } from '../lib/env';

const GOOD: Record<string, string[]> = {
  MOEKIT_NUM_THREADS: ['0', '1', '2', '08', ' 4', '64', '1024', '5000'],
  MOEKIT_CPU_ISA: ['avx512', 'avx2', 'scalar'],
  MOEKIT_WGMMA: ['0', '1', 'require'],
  MOEKIT_WGMMA_TMA: ['0', '1', 'ws'],
  MOEKIT_SKINNY: ['0', '1', 'require'],
  MOEKIT_TC_STAGES: ['2', '3'],
  MOEKIT_CONCURRENT_SHARED: ['0', '1'],
};
const BAD: Record<string, string[]> = {
  MOEKIT_NUM_THREADS: ['-1', '2.5', '8abc', 'four', '1e3', '+4'],
  MOEKIT_CPU_ISA: ['avx512f', 'AVX2', 'sse4', 'none'],
  MOEKIT_WGMMA: ['yes', 'true', 'on', 'required', '2'],
  MOEKIT_WGMMA_TMA: ['WS', 'warp', '2', 'true'],
  MOEKIT_SKINNY: ['yes', 'Require'],
  MOEKIT_TC_STAGES: ['4', '1', 'three'],
  MOEKIT_CONCURRENT_SHARED: ['true', 'yes', '2'],
};

describe('checkEnvironment()', () => {
  test('every variable of the table is covered here', () => {
    expect(Object.keys(ENV_RULES).sort()).toEqual(Object.keys(GOOD).sort());
    expect(Object.keys(BAD).sort()).toEqual(Object.keys(GOOD).sort());
  });

  test('accepts the values the native side understands, unset and empty', () => {
    expect(() => checkEnvironment({})).not.toThrow();
    for (const [name, values] of Object.entries(GOOD)) {
      expect(() => checkEnvironment({ [name]: '' })).not.toThrow();
      for (const v of values) expect(() => checkEnvironment({ [name]: v })).not.toThrow();
    }
    // Variables it does not own are not its business.
    expect(() => checkEnvironment({ MOEKIT_TEST_SEED: 'x', MOEKIT_GPU_QUICK: 'maybe' })).not.toThrow();
  });

  test('refuses anything else with ERR_INVALID_ARGUMENT naming the variable, what it expects and what it got', () => {
    for (const [name, values] of Object.entries(BAD)) {
      for (const v of values) {
        let err: unknown;
        try {
          checkEnvironment({ [name]: v });
        } catch (e) {
          err = e;
        }
        expect(err).toBeInstanceOf(MoekitError);
        expect((err as MoekitError).code).toBe('ERR_INVALID_ARGUMENT');
        expect((err as MoekitError).message).toBe(`Expected ${ENV_RULES[name].expected} for environment variable ${name} but received ${JSON.stringify(v)} of type string`);
      }
    }
  });

  test('runs before the addon loads: the first call that needs it throws, and works once the variable is fixed', () => {
    const saved = process.env.MOEKIT_WGMMA;
    try {
      process.env.MOEKIT_WGMMA = 'yes';
      jest.isolateModules(() => {
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        const lib = require('../lib') as typeof import('../lib');
        expect(() => lib.runtime()).toThrow(/for environment variable MOEKIT_WGMMA but received "yes"/);
        process.env.MOEKIT_WGMMA = '0';
        expect(lib.runtime().cpuThreads).toBeGreaterThanOrEqual(1);
      });
    } finally {
      if (saved === undefined) delete process.env.MOEKIT_WGMMA;
      else process.env.MOEKIT_WGMMA = saved;
      // The isolated copy of lib handed the (process-wide) addon its own MoekitError class:
      // hand it this file's again, so native errors of later tests are instances of it.
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      (require('../lib/native') as typeof import('../lib/native')).native().setErrorClass(MoekitError);
    }
  });
});
