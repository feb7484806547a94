// Evaluation (src/evaluate.ts): the log-likelihood summary of a flow on rows, and the
// full-covariance Gaussian baseline, both checked against closed forms computed here in float64.
import { createMAF, evaluate, gaussianBaseline, summarizeLogLikelihoods } from '../src';
import type { Flow } from '../src';

const LOG_2PI = Math.log(2 * Math.PI);

/** A deterministic stream of standard normal draws (Box-Muller over an LCG), independent of the library. */
function normals(count: number, seed: number): Float64Array {
  let state = seed >>> 0;
  const uniform = () => ((state = (Math.imul(state, 1664525) + 1013904223) >>> 0) + 0.5) / 2 ** 32;
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) out[i] = Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
  return out;
}

/** A MAF whose every weight is 0 with exp scales: the identity map, so log p(x) is the standard normal's. */
function identityFlow(dim: number): Flow {
  const flow = createMAF({ dim, layers: 2, hidden: [8], scale: 'exp', seed: 1 });
  const params = flow.getParameters();
  for (const name of Object.keys(params)) params[name].fill(0);
  flow.setParameters(params);
  return flow;
}

/** Mean, median and standard error of plain numbers, written out the long way. */
function closedFormSummary(values: number[]) {
  const n = values.length;
  const mean = values.reduce((a, b) => a + b, 0) / n;
  const variance = values.reduce((a, v) => a + (v - mean) ** 2, 0) / (n - 1);
  const sorted = [...values].sort((a, b) => a - b);
  const median = n % 2 ? sorted[(n - 1) / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
  return { mean, median, stderr: Math.sqrt(variance / n) };
}

describe('summarizeLogLikelihoods', () => {
  test('mean, median and standard error; non-finite values counted and left out', () => {
    expect(summarizeLogLikelihoods([1, 2, 3, 4])).toEqual({ rows: 4, mean: 2.5, median: 2.5, stderr: Math.sqrt(5 / 3 / 4), nonFinite: 0 });
    const withBad = summarizeLogLikelihoods(Float32Array.of(-1, -Infinity, -3, NaN, -2));
    expect(withBad).toEqual({ rows: 5, mean: -2, median: -2, stderr: Math.sqrt(1 / 3), nonFinite: 2 });
    expect(summarizeLogLikelihoods([-Infinity])).toEqual({ rows: 1, mean: NaN, median: NaN, stderr: NaN, nonFinite: 1 });
    expect(summarizeLogLikelihoods([7]).stderr).toBeNaN();
    expect(() => summarizeLogLikelihoods('1,2' as unknown as number[])).toThrow(/Expected a Float32Array, Float64Array or array of numbers for values/);
  });
});

describe('evaluate', () => {
  test("the identity flow's summary is the standard normal's log-likelihood of the rows", async () => {
    const dim = 3;
    const z = normals(999 * dim, 5);
    const rows = Float32Array.from(z, (v) => 2 * v); // wider than the model: a real spread of values
    const expected: number[] = [];
    for (let r = 0; r < 999; r++) {
      let sq = 0;
      for (let c = 0; c < dim; c++) sq += rows[r * dim + c] ** 2;
      expected.push(-0.5 * (dim * LOG_2PI + sq));
    }
    const want = closedFormSummary(expected);
    const got = await evaluate(identityFlow(dim), rows);
    expect(got.rows).toBe(999);
    expect(got.nonFinite).toBe(0);
    expect(got.mean).toBeCloseTo(want.mean, 4);
    expect(got.median).toBeCloseTo(want.median, 4);
    expect(got.stderr).toBeCloseTo(want.stderr, 4);
    // An array of rows gives the same figures.
    const asArrays = Array.from({ length: 999 }, (_, r) => Array.from(rows.subarray(r * dim, (r + 1) * dim)));
    expect(await evaluate(identityFlow(dim), asArrays)).toEqual(got);
  });

  test('rows of zero density in float32 are counted in nonFinite, not averaged in', async () => {
    const rows = Float32Array.of(0, 0, 1e20, 0, 1, -1, 0, 3e19);
    const got = await evaluate(identityFlow(2), rows);
    expect(got.rows).toBe(4);
    expect(got.nonFinite).toBe(2);
    const want = closedFormSummary([-LOG_2PI, -LOG_2PI - 1]);
    expect(got.mean).toBeCloseTo(want.mean, 5);
    expect(got.stderr).toBeCloseTo(want.stderr, 5);
  });

  test('bad arguments are TypeErrors and RangeErrors', async () => {
    await expect(evaluate({} as Flow, Float32Array.of(1, 2))).rejects.toThrow(/Expected a Flow for flow/);
    await expect(evaluate(identityFlow(2), Float32Array.of(1, 2, 3))).rejects.toThrow(/multiple of 2/);
  });
});

describe('gaussianBaseline', () => {
  /** Correlated 2-d rows: x = a, y = 0.8 a + 0.6 b, shifted and scaled like raw data. */
  function correlated(rows: number, seed: number): Float64Array {
    const z = normals(2 * rows, seed);
    const out = new Float64Array(2 * rows);
    for (let r = 0; r < rows; r++) {
      out[2 * r] = 1017 + 3 * z[2 * r];
      out[2 * r + 1] = -90 + 14.5 * (0.8 * z[2 * r] + 0.6 * z[2 * r + 1]);
    }
    return out;
  }

  test('2-d: the fitted mean and covariance, and the log-likelihood of test rows, as the closed form gives them', () => {
    const train = correlated(2000, 11);
    const test = correlated(500, 12);
    // Maximum-likelihood fit and the bivariate normal density, written out.
    let mx = 0;
    let my = 0;
    for (let r = 0; r < 2000; r++) (mx += train[2 * r] / 2000), (my += train[2 * r + 1] / 2000);
    let a = 0;
    let b = 0;
    let d = 0;
    for (let r = 0; r < 2000; r++) {
      const u = train[2 * r] - mx;
      const v = train[2 * r + 1] - my;
      a += (u * u) / 2000;
      b += (u * v) / 2000;
      d += (v * v) / 2000;
    }
    const det = a * d - b * b;
    const expected: number[] = [];
    for (let r = 0; r < 500; r++) {
      const u = test[2 * r] - mx;
      const v = test[2 * r + 1] - my;
      expected.push(-LOG_2PI - 0.5 * Math.log(det) - (0.5 * (d * u * u - 2 * b * u * v + a * v * v)) / det);
    }
    const want = closedFormSummary(expected);
    const got = gaussianBaseline(train, test, { dim: 2 });
    expect(got.evaluatedOn).toBe('test');
    expect([got.rows, got.trainRows, got.dim, got.nonFinite, got.ridge, got.note]).toEqual([500, 2000, 2, 0, 0, null]);
    expect(got.loc[0]).toBeCloseTo(mx, 10);
    expect(got.loc[1]).toBeCloseTo(my, 10);
    expect(Array.from(got.covariance).map((v, i) => v / [a, b, b, d][i])).toEqual([1, 1, 1, 1].map(() => expect.closeTo(1, 12)));
    expect(got.mean).toBeCloseTo(want.mean, 10);
    expect(got.median).toBeCloseTo(want.median, 10);
    expect(got.stderr).toBeCloseTo(want.stderr, 10);
  });

  test('on its own training rows, the mean log-likelihood is -(d (1 + log 2 pi) + log det S) / 2 (3-d, determinant by Sarrus)', () => {
    const n = 1500;
    const z = normals(3 * n, 21);
    const rows: number[][] = [];
    for (let r = 0; r < n; r++) rows.push([z[3 * r], 2 * z[3 * r] + z[3 * r + 1], 5 - z[3 * r + 1] + 0.1 * z[3 * r + 2]]);
    const got = gaussianBaseline(rows);
    expect(got.evaluatedOn).toBe('train');
    const s = (i: number, j: number) => got.covariance[i * 3 + j];
    const det =
      s(0, 0) * s(1, 1) * s(2, 2) + s(0, 1) * s(1, 2) * s(2, 0) + s(0, 2) * s(1, 0) * s(2, 1) - s(0, 2) * s(1, 1) * s(2, 0) - s(0, 0) * s(1, 2) * s(2, 1) - s(0, 1) * s(1, 0) * s(2, 2);
    expect(got.mean).toBeCloseTo(-0.5 * (3 * (1 + LOG_2PI) + Math.log(det)), 9);
    // The same rows as a flat Float32Array (rounded to float32) give nearly the same figure.
    const flat = Float32Array.from(rows.flat());
    expect(gaussianBaseline(flat, null, { dim: 3 }).mean).toBeCloseTo(got.mean, 3);
  });

  test('a constant column or a collinear one gets a tiny ridge and a note instead of a crash', () => {
    const z = normals(400, 31);
    const constant = Array.from({ length: 200 }, (_, r) => [z[2 * r], 4.5, z[2 * r + 1]]);
    const withConstant = gaussianBaseline(constant);
    expect(withConstant.ridge).toBeGreaterThan(0);
    expect(withConstant.ridge).toBeLessThanOrEqual(1e-6);
    expect(withConstant.note).toMatch(/^column 2 is constant in the 200 training rows, so the covariance is singular/);
    expect(Number.isFinite(withConstant.mean)).toBe(true);
    const collinear = Array.from({ length: 200 }, (_, r) => [z[2 * r], z[2 * r + 1], z[2 * r] - 2 * z[2 * r + 1]]);
    const withCollinear = gaussianBaseline(collinear);
    expect(withCollinear.ridge).toBeGreaterThan(0);
    expect(withCollinear.note).toMatch(/^column 3 is a linear function of the columns before it/);
    expect(Number.isFinite(withCollinear.mean)).toBe(true);
    // One row, every column constant: still an answer.
    expect(gaussianBaseline([[1, 2]]).note).toMatch(/^columns 1, 2 are constant in the 1 training row,/);
  });

  test('bad arguments are TypeErrors and RangeErrors naming what was expected', () => {
    expect(() => gaussianBaseline(Float32Array.of(1, 2, 3, 4))).toThrow(/train is a flat Float32Array: give options.dim/);
    expect(() => gaussianBaseline(Float32Array.of(1, 2, 3), null, { dim: 2 })).toThrow(/Expected a positive multiple of 2 for train.length/);
    expect(() => gaussianBaseline([[1, 2], [3]])).toThrow(/Expected 2 for train\[1\].length but received 1/);
    expect(() => gaussianBaseline([[1, NaN]])).toThrow(/Expected a finite number for train\[0\]\[1\]/);
    expect(() => gaussianBaseline([[1, 2], [3, 4]], [[1, 2, 3]])).toThrow(/Expected 2 for test\[0\].length/);
    expect(() => gaussianBaseline([])).toThrow(/non-empty array of rows/);
    expect(() => gaussianBaseline([[1e200, 1], [-1e200, 2]])).toThrow(/too large for a float64 covariance/);
    expect(() => gaussianBaseline([[1, 2]], null, { dims: 2 } as object)).toThrow(/Unknown option "dims"/);
  });
});
