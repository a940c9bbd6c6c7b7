/**
 * Independent float64 reference implementation of every moekit MoE op, for
 * checking the native kernels in tests. Plain TypeScript; imports nothing
 * from lib/ or native code.
 *
 * @packageDocumentation
 */

export * from './precision';
export * from './rng';
export * from './gating';
export * from './dispatch';
export * from './gemm';
export * from './combine';
export * from './layer';
export * from './families';
