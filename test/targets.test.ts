// The reverse-KL targets: values against plain textbook formulas, analytic gradients
// against central finite differences of the float64 path, stability far from the mass,
// the grid normaliser against exact log Z (and its own refinement for U1..U4), and
// validation of every argument.
import { BuiltinTarget, GaussianMixtureOptions, Target, U1, U2, U3, U4, banana, funnel, gaussianMixture, logNormalizer2D, targets } from '../src/targets';

// Local bindings: global lookups (Math) are slow inside jest's vm context.
const { PI, abs, cos, exp, log, max, sin, sqrt } = Math;

/** Deterministic uniforms in [0, 1) for test points (a small LCG; quality is not the point). */
function uniforms(seed: number): () => number {
  let state = seed;
  return () => {
    state = (state * 48271) % 2147483647;
    return state / 2147483647;
  };
}

function randomPoints(count: number, dim: number, low: number, high: number, seed: number): Float64Array {
  const next = uniforms(seed);
  return Float64Array.from({ length: count * dim }, () => low + (high - low) * next());
}

/**
 * Largest |analytic - central difference| / max(1, |central difference|) over all points
 * and coordinates, all in float64. A step of 1e-5 leaves a truncation error of ~1e-10 times
 * the third derivative, and a rounding error of ~1e-11 times the value.
 */
function worstGradientError(target: BuiltinTarget, points: Float64Array): number {
  const { grad } = target.logDensity64(points);
  const step = 1e-5;
  let worst = 0;
  for (let i = 0; i < points.length; i++) {
    const plus = Float64Array.from(points);
    const minus = Float64Array.from(points);
    plus[i] += step;
    minus[i] -= step;
    const row = Math.floor(i / target.dim);
    const difference = (target.logDensity64(plus).value[row] - target.logDensity64(minus).value[row]) / (2 * step);
    worst = max(worst, abs(grad[i] - difference) / max(1, abs(difference)));
  }
  return worst;
}

// Textbook forms of Rezende & Mohamed's energies (plain log of a sum), safe for moderate z.
const w1 = (z1: number): number => sin((2 * PI * z1) / 4);
const w2 = (z1: number): number => 3 * exp(-0.5 * ((z1 - 1) / 0.6) ** 2);
const w3 = (z1: number): number => 3 / (1 + exp(-(z1 - 1) / 0.3));
const envelope = (z1: number, z2: number): number => (z1 ** 4 + z2 ** 4) / 8192;
const PAPER_ENERGIES: Array<[BuiltinTarget, (z1: number, z2: number) => number]> = [
  [U1, (z1, z2) => 0.5 * ((sqrt(z1 * z1 + z2 * z2) - 2) / 0.4) ** 2 - log(exp(-0.5 * ((z1 - 2) / 0.6) ** 2) + exp(-0.5 * ((z1 + 2) / 0.6) ** 2))],
  [U2, (z1, z2) => 0.5 * ((z2 - w1(z1)) / 0.4) ** 2 + envelope(z1, z2)],
  [U3, (z1, z2) => -log(exp(-0.5 * ((z2 - w1(z1)) / 0.35) ** 2) + exp(-0.5 * ((z2 - w1(z1) + w2(z1)) / 0.35) ** 2)) + envelope(z1, z2)],
  [U4, (z1, z2) => -log(exp(-0.5 * ((z2 - w1(z1)) / 0.4) ** 2) + exp(-0.5 * ((z2 - w1(z1) + w3(z1)) / 0.35) ** 2)) + envelope(z1, z2)],
];

const MIXTURE_OPTIONS = { means: [[-2, 0, 1], [2, 1, -1], [0, -3, 0.5]], stds: [0.5, 1, 0.7], weights: [1, 2, 3] };
const MIXTURE_2D = { means: [[-2, 0], [2, 1], [0, -3]], stds: [0.5, 1, 0.7], weights: [1, 2, 3] };

const ALL_TARGETS: BuiltinTarget[] = [U1, U2, U3, U4, banana, funnel(2), funnel(5), gaussianMixture(MIXTURE_OPTIONS)];

describe('values', () => {
  it.each(PAPER_ENERGIES.map(([t, u]) => [t.name, t, u] as const))('%s is minus the energy as printed (plus the envelope for U2..U4)', (_name, target, energy) => {
    const points = randomPoints(200, 2, -4, 4, 1);
    const { value } = target.logDensity64(points);
    for (let r = 0; r < 200; r++) expect(value[r]).toBeCloseTo(-energy(points[2 * r], points[2 * r + 1]), 9);
  });

  it('banana is Haario et al.\'s twisted Gaussian with b = 0.03: x1 ~ N(0, 100), x2 + 0.03 (x1^2 - 100) ~ N(0, 1)', () => {
    const normal = (x: number, variance: number): number => -0.5 * log(2 * PI * variance) - (x * x) / (2 * variance);
    const points = randomPoints(100, 2, -20, 20, 2);
    const { value } = banana.logDensity64(points);
    for (let r = 0; r < 100; r++) {
      const [x1, x2] = [points[2 * r], points[2 * r + 1]];
      expect(value[r]).toBeCloseTo(normal(x1, 100) + normal(x2 + 0.03 * (x1 * x1 - 100), 1), 10);
    }
    expect(banana.logZ).toBe(0);
  });

  it('funnel is v ~ N(0, 9), x_i | v ~ N(0, e^v)', () => {
    const normal = (x: number, variance: number): number => -0.5 * log(2 * PI * variance) - (x * x) / (2 * variance);
    const target = funnel(4);
    const points = randomPoints(100, 4, -3, 3, 3);
    const { value } = target.logDensity64(points);
    for (let r = 0; r < 100; r++) {
      const v = points[4 * r];
      let expected = normal(v, 9);
      for (let i = 1; i < 4; i++) expected += normal(points[4 * r + i], exp(v));
      expect(value[r]).toBeCloseTo(expected, 10);
    }
    expect(target).toMatchObject({ name: 'funnel(4)', dim: 4, logZ: 0 });
  });

  it('gaussianMixture is the normalised weighted sum of isotropic Gaussians', () => {
    const target = gaussianMixture(MIXTURE_OPTIONS);
    expect(target).toMatchObject({ name: 'gaussianMixture', dim: 3, logZ: 0 });
    const points = randomPoints(50, 3, -4, 4, 4);
    const { value } = target.logDensity64(points);
    for (let r = 0; r < 50; r++) {
      let density = 0;
      MIXTURE_OPTIONS.means.forEach((mean, k) => {
        const s = MIXTURE_OPTIONS.stds[k];
        const squared = mean.reduce((sum, m, j) => sum + (points[3 * r + j] - m) ** 2, 0);
        density += (MIXTURE_OPTIONS.weights[k] / 6) * (2 * PI * s * s) ** -1.5 * exp(-squared / (2 * s * s));
      });
      expect(value[r]).toBeCloseTo(log(density), 10);
    }
    // Weights are normalised, a shared std broadcasts, and zero-weight components drop out.
    const x = new Float64Array([0.3, -0.2, 1]);
    const scaled = gaussianMixture({ ...MIXTURE_OPTIONS, weights: [10, 20, 30] }).logDensity64(x).value[0];
    expect(scaled).toBeCloseTo(target.logDensity64(x).value[0], 12);
    const shared = gaussianMixture({ means: MIXTURE_OPTIONS.means, stds: 0.8 }).logDensity64(x).value[0];
    const listed = gaussianMixture({ means: MIXTURE_OPTIONS.means, stds: [0.8, 0.8, 0.8], weights: [1, 1, 1] }).logDensity64(x).value[0];
    expect(shared).toBeCloseTo(listed, 12);
    const single = gaussianMixture({ means: MIXTURE_OPTIONS.means, weights: [0, 1, 0] }).logDensity64(x).value[0];
    expect(single).toBeCloseTo(-1.5 * log(2 * PI) - 0.5 * ((0.3 - 2) ** 2 + (-0.2 - 1) ** 2 + 2 ** 2), 12);
  });

  it('U1..U4 carry no logZ (none is known in closed form); the others carry 0', () => {
    for (const t of [U1, U2, U3, U4]) expect('logZ' in t).toBe(false);
    for (const t of ALL_TARGETS.slice(4)) expect(t.logZ).toBe(0);
    expect(ALL_TARGETS.map((t) => t.dim)).toEqual([2, 2, 2, 2, 2, 2, 5, 3]);
  });

  it.each(ALL_TARGETS.map((t) => [t.name, t] as const))('%s: logDensity is logDensity64 rounded once to float32', (_name, target) => {
    const points32 = Float32Array.from(randomPoints(64, target.dim, -3, 3, 5));
    const result32 = target.logDensity(points32);
    const result64 = target.logDensity64(Float64Array.from(points32));
    expect(result32.value).toBeInstanceOf(Float32Array);
    expect(result32.grad).toBeInstanceOf(Float32Array);
    expect(result32.value).toEqual(Float32Array.from(result64.value));
    expect(result32.grad).toEqual(Float32Array.from(result64.grad));
    expect(result32.grad.length).toBe(points32.length);
  });

  it('built-in targets are frozen, so a shared one cannot be changed under other users', () => {
    for (const target of ALL_TARGETS) expect(Object.isFrozen(target)).toBe(true);
    expect(targets).toMatchObject({ U1, U2, U3, U4, banana, funnel, gaussianMixture, logNormalizer2D });
  });
});

describe('gradients against central finite differences (float64, 1e-4 relative)', () => {
  it.each([U1, U2, U3, U4, banana].map((t) => [t.name, t] as const))('%s', (_name, target) => {
    const points = randomPoints(150, 2, -4, 4, 6);
    // Where the pieces meet: U3/U4's bump and step at z1 = 1, U1 close to its cone tip at 0.
    const special = new Float64Array([1, 0.2, 1, -2.5, 0.99, 0.5, 1e-3, 0, 0, -1e-3, 2, 0, -2, 0, 25, -30, 0, 3]);
    expect(worstGradientError(target, points)).toBeLessThan(1e-4);
    expect(worstGradientError(target, special)).toBeLessThan(1e-4);
  });

  it('funnel', () => {
    for (const dim of [2, 5]) {
      const points = randomPoints(100, dim, -2, 2, 7 + dim);
      // Scale x_i to the funnel's width e^(v/2) at that v, where the density lives.
      for (let r = 0; r < 100; r++) for (let i = 1; i < dim; i++) points[r * dim + i] *= exp(1.5 * points[r * dim] / 2);
      expect(worstGradientError(funnel(dim), points)).toBeLessThan(1e-4);
    }
  });

  it('gaussianMixture', () => {
    expect(worstGradientError(gaussianMixture(MIXTURE_OPTIONS), randomPoints(100, 3, -4, 4, 9))).toBeLessThan(1e-4);
    // Far from all means a single component takes over, and its softmax weight must stay exact.
    expect(worstGradientError(gaussianMixture(MIXTURE_OPTIONS), randomPoints(20, 3, 20, 40, 10))).toBeLessThan(1e-4);
  });

  it('U1 takes the finite subgradient 0 at its non-differentiable point z = 0', () => {
    const { value, grad } = U1.logDensity(new Float32Array([0, 0]));
    expect(Number.isFinite(value[0])).toBe(true);
    // The ring term contributes 0; the two lobes' pulls along z1 cancel at z1 = 0.
    expect(grad.every((g) => g === 0)).toBe(true);
  });
});

describe('far from the mass', () => {
  const coordinates = [-1e3, -137.5, -10, -1, 0, 1, 2.5, 10, 1e3];
  const grid = Float32Array.from(coordinates.flatMap((a) => coordinates.flatMap((b) => [a, b])));

  // The funnel has its own test below: down its neck the log-density is genuinely -Infinity.
  it.each([U1, U2, U3, U4, banana, gaussianMixture(MIXTURE_2D)].map((t) => [t.name, t] as const))(
    '%s stays finite in float32 for |z| up to 1e3',
    (_name, target) => {
      const { value, grad } = target.logDensity(grid);
      expect(value.every(Number.isFinite)).toBe(true);
      expect(grad.every(Number.isFinite)).toBe(true);
    },
  );

  it('log-sum-exp keeps the lobes exact where the plain formula gives -Infinity', () => {
    // At z1 = 1000 both U1 lobes underflow in a plain sum of exponentials.
    const value = U1.logDensity64(new Float64Array([1000, 0])).value[0];
    const expected = -(0.5 * ((1000 - 2) / 0.4) ** 2 + 0.5 * ((1000 - 2) / 0.6) ** 2);
    expect(value / expected).toBeCloseTo(1, 12);
  });

  it('funnel: finite wherever the true log-density is, -Infinity (never NaN) down the neck', () => {
    const target = funnel(3);
    const rows: number[] = [];
    for (const v of [-1e3, -50, -1, 0, 1, 50, 1e3]) for (const x of [0, 1e-3, 1, 1e3]) rows.push(v, x, -x);
    const { value, grad } = target.logDensity(Float32Array.from(rows));
    for (let r = 0; r < rows.length / 3; r++) {
      const [v, x] = [rows[3 * r], rows[3 * r + 1]];
      const representable = x === 0 || v >= -50;
      expect(Number.isNaN(value[r])).toBe(false);
      expect([grad[3 * r], grad[3 * r + 1], grad[3 * r + 2]].some(Number.isNaN)).toBe(false);
      if (representable) {
        expect(Number.isFinite(value[r])).toBe(true);
        expect([grad[3 * r], grad[3 * r + 1], grad[3 * r + 2]].every(Number.isFinite)).toBe(true);
      } else {
        expect(value[r]).toBe(-Infinity);
      }
    }
  });
});

describe('logNormalizer2D', () => {
  const WIDE: [[number, number], [number, number]] = [[-25, 25], [-10, 10]];

  it('gives finite log Z for U1..U4 that a finer grid confirms to 1e-3', () => {
    const coarse = [U1, U2, U3, U4].map((t) => logNormalizer2D(t, { range: WIDE, resolution: [250, 100] }));
    const fine = [U1, U2, U3, U4].map((t) => logNormalizer2D(t, { range: WIDE, resolution: [500, 200] }));
    console.log(`grid log Z: ${[U1, U2, U3, U4].map((t, i) => `${t.name} ${fine[i].toFixed(6)}`).join(', ')}`);
    coarse.forEach((value, i) => {
      expect(Number.isFinite(value)).toBe(true);
      expect(abs(value - fine[i])).toBeLessThan(1e-3);
    });
    // Also computed independently (numpy, 0.02 cells on [-30, 30] x [-12, 12]).
    const independent = [1.8775016, 2.8501378, 3.4097196, 3.4759752];
    fine.forEach((value, i) => expect(abs(value - independent[i])).toBeLessThan(1e-5));
  });

  it('recovers the exact log Z = 0 of the banana and of a Gaussian mixture', () => {
    expect(abs(logNormalizer2D(banana, { range: [[-50, 50], [-80, 10]], resolution: [500, 450] }))).toBeLessThan(1e-3);
    const mixture = gaussianMixture(MIXTURE_2D);
    expect(abs(logNormalizer2D(mixture, { range: [-8, 8], resolution: 200 }))).toBeLessThan(1e-3);
    // A user target (not built in) goes through its float32 logDensity, with the same result.
    const wrapped: Target = { name: 'wrapped', dim: 2, logDensity: (x) => mixture.logDensity(x) };
    expect(abs(logNormalizer2D(wrapped, { range: [-8, 8] }))).toBeLessThan(1e-3);
    // An unnormalised target: p~ = e^3 p has log Z = 3.
    const shifted: Target = {
      name: 'shifted',
      dim: 2,
      logDensity: (x) => {
        const { value, grad } = mixture.logDensity(x);
        return { value: value.map((v) => v + 3), grad };
      },
    };
    expect(logNormalizer2D(shifted, { range: [-8, 8], resolution: 200 })).toBeCloseTo(3, 3);
    // Too small a box misses mass, and says so by a lower log Z.
    expect(logNormalizer2D(mixture, { range: [-1, 1], resolution: 50 })).toBeLessThan(-1);
  });

  it('skips cells of zero density and returns -Infinity when all are', () => {
    const halfPlane: Target = {
      name: 'halfPlane',
      dim: 2,
      logDensity: (x) => ({
        value: Float32Array.from({ length: x.length / 2 }, (_, r) => (x[2 * r] > 0 ? -0.5 * (x[2 * r] ** 2 + x[2 * r + 1] ** 2) - log(2 * PI) : -Infinity)),
        grad: new Float32Array(x.length),
      }),
    };
    expect(logNormalizer2D(halfPlane, { range: [-8, 8], resolution: 200 })).toBeCloseTo(log(0.5), 4);
    expect(logNormalizer2D(halfPlane, { range: [[-8, -1], [-8, 8]], resolution: 20 })).toBe(-Infinity);
  });
});

describe('validation', () => {
  it('logDensity takes a Float32Array of n*dim finite values', () => {
    for (const target of ALL_TARGETS) {
      const dim = target.dim;
      expect(() => target.logDensity(new Float64Array(dim) as unknown as Float32Array)).toThrow(
        new RegExp(`Expected a Float32Array of n\\*${dim} values \\(row-major\\) for .+ but received a Float64Array of length ${dim}`),
      );
      expect(() => target.logDensity(Array(dim).fill(0) as unknown as Float32Array)).toThrow(TypeError);
      expect(() => target.logDensity(undefined as unknown as Float32Array)).toThrow(TypeError);
      expect(() => target.logDensity(new Float32Array(dim + 1))).toThrow(RangeError);
      expect(() => target.logDensity(new Float32Array(0))).toThrow(/positive multiple/);
      const withNaN = new Float32Array(2 * dim);
      withNaN[dim] = NaN;
      expect(() => target.logDensity(withNaN)).toThrow(/Expected a finite number for .+\[\d+\] but received NaN/);
      expect(() => target.logDensity64(new Float32Array(dim) as unknown as Float64Array)).toThrow(TypeError);
      expect(() => target.logDensity64(new Float64Array(dim + 1))).toThrow(RangeError);
    }
  });

  it('funnel takes an integer dim >= 2', () => {
    expect(() => funnel(1)).toThrow(RangeError);
    expect(() => funnel(2.5)).toThrow(RangeError);
    expect(() => funnel('3' as unknown as number)).toThrow(/for funnel dim but received the string "3"/);
  });

  it('gaussianMixture checks means, stds and weights', () => {
    const bad: Array<[unknown, RegExp]> = [
      [undefined, /non-empty array of mean vectors for gaussianMixture options.means but received undefined/],
      [{ means: [] }, /non-empty array of mean vectors/],
      [{ means: [[0, 0], [1]] }, /Expected 2 \(the length of means\[0\]\) for gaussianMixture options.means\[1\].length but received 1/],
      [{ means: [[0, NaN]] }, /Expected a finite number for gaussianMixture options.means\[0\]\[1\] but received NaN/],
      [{ means: [[0, 0]], stds: 0 }, /Expected a finite number > 0 for gaussianMixture options.stds but received 0/],
      [{ means: [[0, 0]], stds: [1, 1] }, /Expected 1 \(one per component\) for gaussianMixture options.stds.length but received 2/],
      [{ means: [[0, 0], [1, 1]], stds: [1, -1] }, /options.stds\[1\]/],
      [{ means: [[0, 0], [1, 1]], weights: [1, -1] }, /Expected a finite number >= 0 for gaussianMixture options.weights\[1\] but received -1/],
      [{ means: [[0, 0], [1, 1]], weights: [0, 0] }, /weights with a positive, finite sum/],
      [{ means: [[0, 0]], weight: [1] }, /Unknown option "weight" in gaussianMixture options/],
    ];
    for (const [options, message] of bad) expect(() => gaussianMixture(options as GaussianMixtureOptions)).toThrow(message);
  });

  it('logNormalizer2D checks the target, range and resolution', () => {
    const ok = { range: [-1, 1] as [number, number] };
    expect(() => logNormalizer2D(funnel(3), ok)).toThrow(/Expected 2 \(logNormalizer2D integrates over a 2-D grid\) for target.dim but received 3/);
    expect(() => logNormalizer2D({} as Target, ok)).toThrow(TypeError);
    expect(() => logNormalizer2D(U1, {} as typeof ok)).toThrow(/for logNormalizer2D options.range but received undefined/);
    expect(() => logNormalizer2D(U1, { range: [1, -1] })).toThrow(/for logNormalizer2D options.range but received \[1, -1\]/);
    expect(() => logNormalizer2D(U1, { range: [0, NaN] })).toThrow(RangeError);
    expect(() => logNormalizer2D(U1, { range: [[-1, 1], [2, 2]] })).toThrow(/options.range\[1\] but received \[2, 2\]/);
    expect(() => logNormalizer2D(U1, { range: [-1, 1], resolution: 0 })).toThrow(RangeError);
    expect(() => logNormalizer2D(U1, { range: [-1, 1], resolution: [10, 1.5] })).toThrow(/options.resolution\[1\]/);
    expect(() => logNormalizer2D(U1, { range: [-1, 1], resolutoin: 10 } as typeof ok)).toThrow(/Unknown option "resolutoin"/);
    const broken: Target = { name: 'broken', dim: 2, logDensity: (x) => ({ value: new Float32Array(x.length / 2).fill(NaN), grad: x }) };
    expect(() => logNormalizer2D(broken, ok)).toThrow(/broken.logDensity at \(.+\) but received NaN/);
    const short: Target = { name: 'short', dim: 2, logDensity: (x) => ({ value: new Float32Array(1), grad: x }) };
    expect(() => logNormalizer2D(short, ok)).toThrow(/Expected a Float32Array of \d+ values for short.logDensity\(x\).value/);
  });
});
