import { routingStats } from '../../lib';

test('routing statistics: imbalance, coefficient of variation, entropy, idle experts, drops', () => {
  const s = routingStats([4, 0, 2, 2], 3);
  expect(s.routed).toBe(8);
  expect(s.maxOverMean).toBe(2); // 4 / mean 2
  // std of [4, 0, 2, 2] = sqrt((4 + 4 + 0 + 0) / 4) = sqrt(2); cv = sqrt(2) / 2
  expect(s.coefficientOfVariation).toBeCloseTo(Math.SQRT2 / 2, 12);
  // p = [0.5, 0, 0.25, 0.25]: H = 0.5 ln 2 + 2 · 0.25 ln 4 = 1.5 ln 2
  expect(s.entropy).toBeCloseTo(1.5 * Math.LN2, 12);
  expect(s.normalizedEntropy).toBeCloseTo((1.5 * Math.LN2) / Math.log(4), 12);
  expect(s.idleExperts).toBe(1);
  expect(s.dropped).toBe(3);
  const balanced = routingStats([3, 3, 3]);
  expect([balanced.maxOverMean, balanced.coefficientOfVariation, balanced.normalizedEntropy]).toEqual([1, 0, 1]);
  const empty = routingStats([0, 0]);
  expect([empty.routed, empty.maxOverMean, empty.entropy]).toEqual([0, 0, 0]);
});
