import { floorSeconds, summarize, work, CellShape } from '../../lib/bench/accounting';

// T 3, H 4, I 5, E 6, k 2: 6 pairs on 4 distinct experts; bf16 weights and activations.
const cell: CellShape = { tokens: 3, hidden: 4, intermediate: 5, experts: 6, k: 2, pairs: 6, touched: 4, sharedIntermediate: 0, weightBytes: 2, activationBytes: 2, correctionBias: false };

describe('FLOP and byte accounting (hand-computed)', () => {
  test('layer', () => {
    // router 2·3·4·6 = 144; experts 6·6·4·5 = 720.
    // router weights 6·4·2 = 48; touched experts 4·3·4·5·2 = 480; x and y 2·3·4·2 = 48.
    expect(work('layer', cell)).toEqual({ flops: 864, bytes: 576 });
    // + shared expert Is = 3: 6·3·4·3 = 216 FLOPs, 3·4·3·2 = 72 bytes; + correction bias 6·4 = 24 bytes.
    expect(work('layer', { ...cell, sharedIntermediate: 3, correctionBias: true })).toEqual({ flops: 1080, bytes: 672 });
    // f32 weights: 6·4·4 + 4·3·4·5·4 + 2·3·4·2 = 96 + 960 + 48.
    expect(work('layer', { ...cell, weightBytes: 4 })).toEqual({ flops: 864, bytes: 1104 });
  });

  test('ops', () => {
    // gemm-up: 2·6·4·10 = 480 FLOPs; 4·10·4·2 = 320 weight bytes + 6·4·4 = 96 in + 6·5·4 = 120 out.
    expect(work('gemm-up', cell)).toEqual({ flops: 480, bytes: 536 });
    // gemm-down: 2·6·5·4 = 240; 4·4·5·2 = 160 + 6·5·4 = 120 in + 6·4·4 = 96 out.
    expect(work('gemm-down', cell)).toEqual({ flops: 240, bytes: 376 });
    // combine: 2·6·4 = 48; rows 6·4·4 = 96 + pairToRow and weights 3·2·8 = 48 + out 3·4·4 = 48.
    expect(work('combine', cell)).toEqual({ flops: 48, bytes: 192 });
    // gating: logits 3·6·4 = 72 + ids and weights 3·2·8 = 48 + load 6·4 = 24.
    expect(work('gating', cell)).toEqual({ flops: 0, bytes: 144 });
    // dispatch: ids 24 + counts 24 + offsets 28 + sorted pairs 24 + pairToRow 24.
    expect(work('dispatch', cell)).toEqual({ flops: 0, bytes: 124 });
  });

  test('floor = max(FLOPs / peak, bytes / bandwidth); an unknown peak leaves compute out', () => {
    const w = { flops: 864, bytes: 576 };
    expect(floorSeconds(w, 1000, 100)).toBeCloseTo(5.76, 12); // memory-bound
    expect(floorSeconds(w, 100, 1000)).toBeCloseTo(8.64, 12); // compute-bound
    expect(floorSeconds(w, 0, 1000)).toBeCloseTo(0.576, 12);
  });

  test('summary: median, extremes, percentiles', () => {
    const s = summarize([5, 1, 3, 2, 4]);
    expect([s.median, s.min, s.max, s.n]).toEqual([3, 1, 5, 5]);
    expect(s.p10).toBeCloseTo(1.4, 12);
    expect(s.p90).toBeCloseTo(4.6, 12);
    expect(summarize([2, 1]).median).toBe(1.5);
    expect(summarize([7]).p90).toBe(7);
  });
});
