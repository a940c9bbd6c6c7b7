/**
 * FLOPs and bytes of each benchmarked op, and the roofline floor.
 *
 * floor = max(FLOPs / compute peak, bytes / bandwidth); efficiency = floor / time.
 * Bytes count what the op must move at least once: the weights of the experts the
 * routing touched (not all E), activations in and out, the router's weights and the
 * shared expert for the layer. A multiply-add is 2 FLOPs; element-wise work
 * (softmax, SwiGLU, sorting) counts 0 FLOPs.
 */

/** The sizes one cell's accounting needs. */
export interface CellShape {
  tokens: number;
  hidden: number;
  intermediate: number;
  experts: number;
  /** Slots per token. */
  k: number;
  /** (token, slot) pairs routed to an expert (slots with id -1 left out). */
  pairs: number;
  /** Experts with at least one pair. */
  touched: number;
  sharedIntermediate: number;
  /** Bytes per weight element (router, experts, shared expert). */
  weightBytes: number;
  /** Bytes per element of the layer's input and output. */
  activationBytes: number;
  /** The layer reads an [E] f32 correction bias. */
  correctionBias: boolean;
}

/** Ops the benchmark runs; `gemm-up` is the first projection (gate + up, SwiGLU), `gemm-down` the second. */
export type BenchOp = 'gating' | 'dispatch' | 'gemm-up' | 'gemm-down' | 'combine' | 'layer';

export interface Work {
  flops: number;
  bytes: number;
}

/**
 * FLOPs and bytes of `op` on `c`. The ops outside the layer take what the moekit ops
 * take: gating reads f32 logits [T, E] and writes ids, weights [T, k] and load [E];
 * dispatch reads ids and writes counts [E], offsets [E+1], sorted pairs [pairs] and
 * pairToRow [T, k]; the grouped GEMMs read and write f32 rows; combine reads f32 rows
 * [pairs, H], pairToRow and weights [T, k] and writes f32 [T, H].
 */
export function work(op: BenchOp, c: CellShape): Work {
  const { tokens: T, hidden: H, intermediate: I, experts: E, k, pairs: P, touched: U, sharedIntermediate: Is, weightBytes: wb, activationBytes: ab } = c;
  switch (op) {
    case 'gating':
      return { flops: 0, bytes: T * E * 4 + T * k * (4 + 4) + E * 4 };
    case 'dispatch':
      return { flops: 0, bytes: T * k * 4 + E * 4 + (E + 1) * 4 + P * 4 + T * k * 4 };
    case 'gemm-up':
      return { flops: 2 * P * H * 2 * I, bytes: U * 2 * I * H * wb + P * H * 4 + P * I * 4 };
    case 'gemm-down':
      return { flops: 2 * P * I * H, bytes: U * H * I * wb + P * I * 4 + P * H * 4 };
    case 'combine':
      return { flops: 2 * P * H, bytes: P * H * 4 + T * k * (4 + 4) + T * H * 4 };
    case 'layer': {
      const flops = 2 * T * H * E + 6 * P * H * I + 6 * T * H * Is;
      const bytes = E * H * wb + (c.correctionBias ? E * 4 : 0) + U * 3 * H * I * wb + 3 * H * Is * wb + 2 * T * H * ab;
      return { flops, bytes };
    }
  }
}

/** The roofline floor in seconds; a peak of 0 (unknown) leaves the compute term out. */
export function floorSeconds(w: Work, peakFlops: number, bandwidth: number): number {
  const compute = peakFlops > 0 ? w.flops / peakFlops : 0;
  return Math.max(compute, w.bytes / bandwidth);
}

/** Median, spread and extremes of a list of times (ms). */
export interface Summary {
  median: number;
  min: number;
  max: number;
  /** 10th and 90th percentiles (linear interpolation). */
  p10: number;
  p90: number;
  n: number;
}

export function summarize(times: readonly number[]): Summary {
  if (times.length === 0) throw new Error('unreachable: no timed repeats');
  const s = [...times].sort((a, b) => a - b);
  const q = (f: number) => {
    const x = f * (s.length - 1);
    const lo = Math.floor(x);
    const hi = Math.min(s.length - 1, lo + 1);
    return s[lo] + (s[hi] - s[lo]) * (x - lo);
  };
  return { median: q(0.5), min: s[0], max: s[s.length - 1], p10: q(0.1), p90: q(0.9), n: s.length };
}
