/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.json' }] },
  // NOTE: native work is CPU-bound on 2 cores; two workers keep the suite fast
  // without oversubscribing the thread pool.
  maxWorkers: 2,
  testTimeout: 60000,
};
