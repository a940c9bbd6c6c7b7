/**
 * Float64 reference of the grouped GEMM with fused bias and activation, as
 * described by kernels/common/grouped_gemm_params.h:
 *
 *   y[r, :] = act(x[r, :] . W_e^T + b_e)   for r in [offsets[e], offsets[e+1])
 *
 * Weight layouts: 'enk' = [E, N, K] (HF nn.Linear, out x in) and 'ekn' =
 * [E, K, N] (gpt-oss gate_up_proj / down_proj). With `wUp` (same layout and
 * shape as `w`) the GLU's gate comes from `w` and its up projection from
 * `wUp`, and N_out = N; otherwise the GLU activations split the N columns
 * (halves for 'swiglu' / 'geglu', even/odd for the interleaved ones) and
 * N_out = N / 2. The optional row scale multiplies each output row after the
 * activation. Rows outside every expert's range are left at 0.
 *
 * Activations: silu(v) = v * sigmoid(v); erf GELU gelu(v) = v/2 * (1 +
 * erf(v / sqrt 2)); tanh GELU = v/2 * (1 + tanh(sqrt(2/pi) * (v + 0.044715
 * v^3))); gpt-oss clamped SwiGLU with gate = min(gate, limit), up =
 * clamp(up, -limit, limit), out = gate * sigmoid(alpha * gate) * (up + 1).
 * alpha and limit are float32 in the params struct, so they are rounded with
 * Math.fround (1.702 -> 1.70200002193...).
 *
 * @packageDocumentation
 */

import { sigmoid } from './gating';

/** Weight layout of a grouped GEMM operand. */
export type WeightLayout = 'enk' | 'ekn';

/** Activation fused into the grouped GEMM (Activation in grouped_gemm_params.h). */
export type Activation =
  | 'none'
  | 'swiglu'
  | 'swiglu-interleaved'
  | 'gpt-oss-swiglu'
  | 'geglu'
  | 'gelu'
  | 'relu'
  | 'silu'
  | 'gelu-tanh';

/** Default gpt-oss SwiGLU sigmoid scale. */
export const GPT_OSS_ALPHA = 1.702;
/** Default gpt-oss SwiGLU clamp. */
export const GPT_OSS_LIMIT = 7.0;

/** True for the gated (GLU) activations, which combine two columns into one. */
export function activationIsGlu(a: Activation): boolean {
  return a === 'swiglu' || a === 'swiglu-interleaved' || a === 'gpt-oss-swiglu' || a === 'geglu';
}

/** Output columns of the activation: N / 2 for a GLU without a separate up weight, else N. */
export function activationOutputColumns(a: Activation, n: number, hasUpWeight: boolean): number {
  if (hasUpWeight) {
    if (a !== 'swiglu' && a !== 'geglu') throw new Error(`a separate up weight needs 'swiglu' or 'geglu', not '${a}'`);
    return n;
  }
  if (!activationIsGlu(a)) return n;
  if (n % 2 !== 0) throw new Error(`GLU activation '${a}' needs an even N, got ${n}`);
  return n / 2;
}

/**
 * erfc(z) for z >= 0: by the Maclaurin-type series
 * erf(z) = 2/sqrt(pi) * e^(-z^2) * sum_n (2z^2)^n z / (1*3*...*(2n+1))
 * (all terms positive) below z = 2, and by the Laplace continued fraction
 * erfc(z) = e^(-z^2)/sqrt(pi) / (z + (1/2)/(z + 1/(z + (3/2)/(z + ...))))
 * (modified Lentz evaluation) above. erf is accurate to ~1e-15 relative;
 * erfc to ~1e-13 relative just below z = 2 and ~1e-15 above.
 */
function erfcNonNegative(z: number): number {
  if (z < 2) return 1 - erfSeries(z);
  if (z > 27) return 0; // e^(-z^2) underflows
  // Continued fraction: b0 = z, a_n = n/2, b_n = z.
  const tiny = 1e-300;
  let f = z;
  let c = z;
  let d = 0;
  for (let n = 1; n < 5000; n++) {
    const a = n / 2;
    d = z + a * d;
    if (Math.abs(d) < tiny) d = tiny;
    c = z + a / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    const delta = c * d;
    f *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  return Math.exp(-z * z) / Math.sqrt(Math.PI) / f;
}

/** erf(z) for |z| < ~3 by the positive-term series (see {@link erfcNonNegative}). */
function erfSeries(z: number): number {
  const z2 = z * z;
  let term = z;
  let sum = z;
  for (let n = 1; n < 500; n++) {
    term *= (2 * z2) / (2 * n + 1);
    sum += term;
    if (term < sum * 1e-17) break;
  }
  return ((2 / Math.sqrt(Math.PI)) * Math.exp(-z2)) * sum;
}

/** Error function, float64 (~1e-15 relative accuracy). */
export function erf(z: number): number {
  if (Number.isNaN(z)) return z;
  if (z < 0) return -erf(-z);
  if (z < 2) return erfSeries(z);
  return 1 - erfcNonNegative(z);
}

/** Complementary error function 1 - erf(z), accurate also where it is tiny. */
export function erfc(z: number): number {
  if (Number.isNaN(z)) return z;
  if (z < 0) return 2 - erfcNonNegative(-z);
  return erfcNonNegative(z);
}

/** SiLU / swish: v * sigmoid(v). */
export function silu(v: number): number {
  return v * sigmoid(v);
}

/** Exact (erf) GELU: v/2 * (1 + erf(v / sqrt 2)), written as v/2 * erfc(-v / sqrt 2) to keep accuracy for negative v. */
export function gelu(v: number): number {
  return 0.5 * v * erfc(-v / Math.SQRT2);
}

/** tanh-approximated GELU: v/2 * (1 + tanh(sqrt(2/pi) * (v + 0.044715 v^3))). */
export function geluTanh(v: number): number {
  return 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v)));
}

/** ReLU: max(v, 0). */
export function relu(v: number): number {
  return v > 0 ? v : 0;
}

/** gpt-oss clamped SwiGLU of one (gate, up) pair. `alpha` and `limit` are used as given. */
export function gptOssSwiglu(gate: number, up: number, alpha = GPT_OSS_ALPHA, limit = GPT_OSS_LIMIT): number {
  const g = Math.min(gate, limit);
  const u = Math.min(Math.max(up, -limit), limit);
  return g * sigmoid(alpha * g) * (u + 1);
}

/** Options of {@link applyActivation}. */
export interface ActivationOptions {
  /** gpt-oss sigmoid scale (default 1.702, rounded to float32). */
  alpha?: number | undefined;
  /** gpt-oss clamp (default 7, rounded to float32). */
  limit?: number | undefined;
}

/**
 * Applies an activation to one pre-activation row.
 *
 * @param h - pre-activation row of the fused projection (N values).
 * @param up - pre-activation row of the separate up projection (N values), when there is one.
 * @returns the N_out activated values.
 */
export function applyActivation(
  activation: Activation,
  h: ArrayLike<number>,
  up?: ArrayLike<number>,
  options: ActivationOptions = {},
): Float64Array {
  const alpha = Math.fround(options.alpha ?? GPT_OSS_ALPHA);
  const limit = Math.fround(options.limit ?? GPT_OSS_LIMIT);
  const n = h.length;
  const nOut = activationOutputColumns(activation, n, up !== undefined);
  const out = new Float64Array(nOut);
  for (let j = 0; j < nOut; j++) {
    let gate: number;
    let upV: number;
    switch (activation) {
      case 'none':
        out[j] = h[j] as number;
        continue;
      case 'gelu':
        out[j] = gelu(h[j] as number);
        continue;
      case 'gelu-tanh':
        out[j] = geluTanh(h[j] as number);
        continue;
      case 'relu':
        out[j] = relu(h[j] as number);
        continue;
      case 'silu':
        out[j] = silu(h[j] as number);
        continue;
      case 'swiglu':
      case 'geglu':
        gate = h[j] as number;
        upV = up !== undefined ? (up[j] as number) : (h[j + nOut] as number);
        out[j] = (activation === 'swiglu' ? silu(gate) : gelu(gate)) * upV;
        continue;
      case 'swiglu-interleaved':
        out[j] = silu(h[2 * j] as number) * (h[2 * j + 1] as number);
        continue;
      case 'gpt-oss-swiglu':
        out[j] = gptOssSwiglu(h[2 * j] as number, h[2 * j + 1] as number, alpha, limit);
        continue;
    }
  }
  return out;
}

/** Element (e, n, k) of a weight tensor of either layout with N output and K input columns. */
export function weightAt(
  w: ArrayLike<number>,
  layout: WeightLayout,
  e: number,
  n: number,
  k: number,
  N: number,
  K: number,
): number {
  return (layout === 'enk' ? w[(e * N + n) * K + k] : w[(e * K + k) * N + n]) as number;
}

/**
 * One expert's linear map of one input row: h[n] = sum_k x[k] W_e[n, k] + b_e[n].
 * `xRow` has K values; `bias` (if any) is [E, N].
 */
export function expertLinear(
  xRow: ArrayLike<number>,
  w: ArrayLike<number>,
  layout: WeightLayout,
  e: number,
  N: number,
  K: number,
  bias?: ArrayLike<number>,
): Float64Array {
  const h = new Float64Array(N);
  for (let n = 0; n < N; n++) {
    let acc = 0;
    for (let k = 0; k < K; k++) acc += (xRow[k] as number) * weightAt(w, layout, e, n, k, N, K);
    h[n] = acc + (bias ? (bias[e * N + n] as number) : 0);
  }
  return h;
}

/** Copies `length` values of `values` starting at `start` into a new Float64Array. */
export function sliceRow(values: ArrayLike<number>, start: number, length: number): Float64Array {
  const out = new Float64Array(length);
  for (let i = 0; i < length; i++) out[i] = values[start + i] as number;
  return out;
}

/** Options of {@link refGroupedGemm}, mirroring GroupedGemmParams in camelCase. */
export interface GroupedGemmOptions {
  /** [rows, k] activations grouped by expert. */
  x: ArrayLike<number>;
  /** [experts + 1] row range of each expert's group. */
  offsets: ArrayLike<number>;
  /** Rows of x and y. */
  rows: number;
  /** Experts E. */
  experts: number;
  /** Output columns N of the weight (2I for a fused gate/up projection). */
  n: number;
  /** Input columns K. */
  k: number;
  /** [E, N, K] or [E, K, N] per `layout` (already rounded if it stands for f16/bf16). */
  w: ArrayLike<number>;
  /** Weight layout (default 'enk'). */
  layout?: WeightLayout | undefined;
  /** Optional separate up projection (same layout and shape as w); needs 'swiglu' or 'geglu'. */
  wUp?: ArrayLike<number> | undefined;
  /** [E, N] bias of w. */
  bias?: ArrayLike<number> | undefined;
  /** [E, N] bias of wUp. */
  biasUp?: ArrayLike<number> | undefined;
  /** Fused activation (default 'none'). */
  activation?: Activation | undefined;
  /** gpt-oss sigmoid scale (default 1.702). */
  alpha?: number | undefined;
  /** gpt-oss clamp (default 7). */
  limit?: number | undefined;
  /** [rows] per-row output scale (routing weight fused into the down projection). */
  rowScale?: ArrayLike<number> | undefined;
}

/** Output of {@link refGroupedGemm}. */
export interface GroupedGemmResult {
  /** [rows, nOut] output. */
  y: Float64Array;
  /** Output columns. */
  nOut: number;
}

/** Float64 reference grouped GEMM + bias + activation + row scale. */
export function refGroupedGemm(opts: GroupedGemmOptions): GroupedGemmResult {
  const { x, offsets, rows, experts, n: N, k: K, w } = opts;
  const layout = opts.layout ?? 'enk';
  const activation = opts.activation ?? 'none';
  const nOut = activationOutputColumns(activation, N, opts.wUp !== undefined);
  if (offsets.length !== experts + 1) throw new Error(`offsets: expected ${experts + 1} values, got ${offsets.length}`);
  if (x.length !== rows * K) throw new Error(`x: expected ${rows * K} values, got ${x.length}`);
  if (w.length !== experts * N * K) throw new Error(`w: expected ${experts * N * K} values, got ${w.length}`);
  const y = new Float64Array(rows * nOut);
  for (let e = 0; e < experts; e++) {
    const begin = offsets[e] as number;
    const end = offsets[e + 1] as number;
    if (begin < 0 || end > rows || end < begin) throw new Error(`offsets for expert ${e} out of range: [${begin}, ${end})`);
    for (let r = begin; r < end; r++) {
      const xRow = sliceRow(x, r * K, K);
      const h = expertLinear(xRow, w, layout, e, N, K, opts.bias);
      const up = opts.wUp !== undefined ? expertLinear(xRow, opts.wUp, layout, e, N, K, opts.biasUp) : undefined;
      const act = applyActivation(activation, h, up, { alpha: opts.alpha, limit: opts.limit });
      const scale = opts.rowScale ? (opts.rowScale[r] as number) : 1;
      for (let j = 0; j < nOut; j++) y[r * nOut + j] = (act[j] as number) * scale;
    }
  }
  return { y, nOut };
}
