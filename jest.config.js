/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  setupFiles: ['<rootDir>/test/setup-device.js'],
  // scripts/jest-transform.js: ts-jest, with JavaScript globals bound to module locals
  // (global reads in jest's vm contexts are ~60x slower; see that file).
  transform: { '^.+\\.ts$': ['<rootDir>/scripts/jest-transform.js', { tsconfig: 'tsconfig.json' }] },
  // NOTE: native work is CPU-bound on 2 cores; two workers keep the suite fast
  // without oversubscribing the thread pool.
  maxWorkers: 2,
  // NOTE: generous: the float64 reference tests take ~30 s on an idle 2-core machine and
  // several times that when the machine is shared; a timeout here is not a result.
  testTimeout: 300000,
};
