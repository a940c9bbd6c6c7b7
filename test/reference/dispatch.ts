/**
 * Reference of token dispatch: turns per-token expert ids [T, k] into the
 * expert-grouped row layout that the grouped GEMM consumes.
 *
 * Semantics (fixed):
 * - A pair is p = t * k + s with ids[p] >= 0 (negative ids, i.e. -1, are
 *   skipped). Pairs are grouped by expert ascending and, within an expert, by
 *   p ascending.
 * - With capacity >= 0 an expert keeps its first `capacity` pairs (in that
 *   order) and drops the rest; capacity < 0 means unlimited.
 * - counts[e] = kept pairs of expert e; offsets[0] = 0 and
 *   offsets[e + 1] = offsets[e] + ceil(counts[e] / blockSize) * blockSize, so
 *   every expert's group is padded up to a multiple of blockSize.
 * - sortedPairs[row] = the pair held by that row, or -1 for a padding row;
 *   pairToRow[p] = the row of pair p, or -1 when p was skipped or dropped.
 *
 * @packageDocumentation
 */

/** Output of {@link refDispatch}. */
export interface DispatchResult {
  /** Total rows = offsets[E] (kept pairs plus padding). */
  rows: number;
  /** [E] kept pairs per expert. */
  counts: Int32Array;
  /** [E + 1] first row of each expert's group; offsets[E] = rows. */
  offsets: Int32Array;
  /** [rows] pair index held by each row, -1 for padding rows. */
  sortedPairs: Int32Array;
  /** [T * k] row of each pair, -1 for skipped (id < 0) or dropped pairs. */
  pairToRow: Int32Array;
  /** Number of pairs dropped by the capacity limit (skipped pairs not counted). */
  dropped: number;
  /** [E] pairs dropped per expert. */
  droppedPerExpert: Int32Array;
}

/**
 * Float64-free (integer) reference dispatch.
 *
 * @param ids - [tokens, k] expert ids, -1 = skip; every other id must be in [0, experts).
 * @param tokens - T.
 * @param k - slots per token.
 * @param experts - E.
 * @param blockSize - group padding granularity (>= 1, default 1 = no padding).
 * @param capacity - maximum pairs kept per expert; negative = unlimited (default -1).
 */
export function refDispatch(
  ids: ArrayLike<number>,
  tokens: number,
  k: number,
  experts: number,
  blockSize = 1,
  capacity = -1,
): DispatchResult {
  if (ids.length !== tokens * k) throw new Error(`ids: expected ${tokens * k} values, got ${ids.length}`);
  if (!Number.isInteger(blockSize) || blockSize < 1) throw new Error(`blockSize must be >= 1, got ${blockSize}`);
  // Bucket the pairs by expert; scanning p upward keeps each bucket in p order.
  const buckets: number[][] = [];
  for (let e = 0; e < experts; e++) buckets.push([]);
  for (let p = 0; p < tokens * k; p++) {
    const id = ids[p] as number;
    if (id < 0) continue;
    if (!Number.isInteger(id) || id >= experts) throw new Error(`ids[${p}] = ${id} is not a valid expert id (< ${experts})`);
    (buckets[id] as number[]).push(p);
  }
  const counts = new Int32Array(experts);
  const droppedPerExpert = new Int32Array(experts);
  const offsets = new Int32Array(experts + 1);
  let dropped = 0;
  for (let e = 0; e < experts; e++) {
    const n = (buckets[e] as number[]).length;
    const kept = capacity < 0 ? n : Math.min(n, capacity);
    counts[e] = kept;
    droppedPerExpert[e] = n - kept;
    dropped += n - kept;
    offsets[e + 1] = (offsets[e] as number) + Math.ceil(kept / blockSize) * blockSize;
  }
  const rows = offsets[experts] as number;
  const sortedPairs = new Int32Array(rows).fill(-1);
  const pairToRow = new Int32Array(tokens * k).fill(-1);
  for (let e = 0; e < experts; e++) {
    const bucket = buckets[e] as number[];
    for (let i = 0; i < (counts[e] as number); i++) {
      const p = bucket[i] as number;
      const row = (offsets[e] as number) + i;
      sortedPairs[row] = p;
      pairToRow[p] = row;
    }
  }
  return { rows, counts, offsets, sortedPairs, pairToRow, dropped, droppedPerExpert };
}

/**
 * Gathers the activations of the dispatched rows: xRows[row] = x[token of
 * sortedPairs[row]] (token = floor(p / k)), zeros for padding rows.
 * `x` is [T, hidden]; the result is [rows, hidden].
 */
export function gatherRows(x: ArrayLike<number>, hidden: number, dispatch: DispatchResult, k: number): Float64Array {
  const out = new Float64Array(dispatch.rows * hidden);
  for (let row = 0; row < dispatch.rows; row++) {
    const p = dispatch.sortedPairs[row] as number;
    if (p < 0) continue;
    const t = Math.floor(p / k);
    for (let h = 0; h < hidden; h++) out[row * hidden + h] = x[t * hidden + h] as number;
  }
  return out;
}
