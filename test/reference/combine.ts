/**
 * Reference of the combine op: the weighted sum of each token's expert
 * outputs, plus an optional shared-expert output.
 *
 *   out[t] = sum_s weights[t, s] * y[pairToRow[t * k + s]]   (kept pairs only)
 *            + gate_t * shared[t]
 *
 * where gate_t = sigmoid(x[t] . sharedGateWeight) when a shared gate is given
 * (Qwen2-MoE's shared_expert_gate) and 1 otherwise.
 *
 * @packageDocumentation
 */

import { sigmoid } from './gating';

/** Options of {@link refCombine}. */
export interface CombineOptions {
  /** [rows, hidden] expert outputs in dispatched row order. */
  y: ArrayLike<number>;
  /** [tokens * k] row of each (token, slot) pair, -1 for skipped or dropped pairs. */
  pairToRow: ArrayLike<number>;
  /** [tokens * k] routing weights. */
  weights: ArrayLike<number>;
  /** Tokens T. */
  tokens: number;
  /** Slots per token k. */
  k: number;
  /** Hidden size H (columns of y and of the output). */
  hidden: number;
  /** [tokens, hidden] shared-expert output to add, if any. */
  shared?: ArrayLike<number> | undefined;
  /** [tokens, hidden] layer input, needed only with `sharedGateWeight`. */
  x?: ArrayLike<number> | undefined;
  /** [hidden] weight of the sigmoid shared-expert gate (Qwen2-MoE), if any. */
  sharedGateWeight?: ArrayLike<number> | undefined;
}

/** Float64 reference combine; returns [tokens, hidden]. */
export function refCombine(opts: CombineOptions): Float64Array {
  const { y, pairToRow, weights, tokens, k, hidden } = opts;
  if (pairToRow.length !== tokens * k) throw new Error(`pairToRow: expected ${tokens * k} values, got ${pairToRow.length}`);
  if (weights.length !== tokens * k) throw new Error(`weights: expected ${tokens * k} values, got ${weights.length}`);
  const out = new Float64Array(tokens * hidden);
  for (let t = 0; t < tokens; t++) {
    for (let s = 0; s < k; s++) {
      const row = pairToRow[t * k + s] as number;
      if (row < 0) continue;
      const w = weights[t * k + s] as number;
      for (let h = 0; h < hidden; h++) {
        out[t * hidden + h] = (out[t * hidden + h] as number) + w * (y[row * hidden + h] as number);
      }
    }
    if (opts.shared !== undefined) {
      let gate = 1;
      if (opts.sharedGateWeight !== undefined) {
        if (opts.x === undefined) throw new Error('refCombine: sharedGateWeight needs x');
        let dot = 0;
        for (let h = 0; h < hidden; h++) dot += (opts.x[t * hidden + h] as number) * (opts.sharedGateWeight[h] as number);
        gate = sigmoid(dot);
      }
      for (let h = 0; h < hidden; h++) {
        out[t * hidden + h] = (out[t * hidden + h] as number) + gate * (opts.shared[t * hidden + h] as number);
      }
    }
  }
  return out;
}
