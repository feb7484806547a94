// Self-checks of the float64 oracle: if these fail, no comparison against it means anything.
import {
  Activation,
  RefConfig,
  RefMadeLayer,
  RefParams,
  ScaleKind,
  defaultHiddenDegrees,
  naturalDegrees,
  numericalLogDetJacobian,
  randomParams,
  refForward,
  refInverse,
  refLogProb,
  refMadeConditioner,
  refMadeLayerParallel,
  refMadeLayerSequential,
} from './reference';

const DIMS = [1, 2, 5];
const ACTIVATIONS: Activation[] = ['relu', 'tanh', 'elu'];
const SCALES: ScaleKind[] = ['softplus', 'exp', 'gated'];
const LOG_2PI = Math.log(2 * Math.PI);

/** Deterministic pseudo-random numbers for test inputs (independent of the oracle's PRNG). */
function seededUniform(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    // xorshift32
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 4294967296;
  };
}

function randomBatch(n: number, D: number, seed: number): Float64Array {
  const uniform = seededUniform(seed);
  return Float64Array.from({ length: n * D }, () => 4 * uniform() - 2);
}

function shuffled(values: number[], seed: number): number[] {
  const uniform = seededUniform(seed);
  const result = [...values];
  for (let i = result.length - 1; i > 0; i--) {
    const j = Math.floor(uniform() * (i + 1));
    [result[i], result[j]] = [result[j], result[i]];
  }
  return result;
}

function madeLayer(
  type: 'iaf' | 'maf',
  D: number,
  hidden: number[],
  activation: Activation,
  scale: ScaleKind,
  inputDegrees = naturalDegrees(D),
  hiddenDegrees = defaultHiddenDegrees(D, hidden),
): RefMadeLayer {
  return { type, hidden, activation, scale, inputDegrees, hiddenDegrees };
}

/** Hidden degrees drawn from the whole range 0..D, including units that see nothing / feed nothing. */
function randomHiddenDegrees(D: number, hidden: number[], seed: number): number[][] {
  const uniform = seededUniform(seed);
  return hidden.map((width) => Array.from({ length: width }, () => Math.floor(uniform() * (D + 1))));
}

interface NamedConfig {
  name: string;
  cfg: RefConfig;
}

function configsFor(D: number, activation: Activation, scale: ScaleKind): NamedConfig[] {
  const reversed = naturalDegrees(D).reverse();
  const reversePermutation = Array.from({ length: D }, (_, i) => D - 1 - i);
  return [
    { name: 'IAF with 2 hidden layers', cfg: { dim: D, layers: [madeLayer('iaf', D, [8, 6], activation, scale)] } },
    { name: 'MAF with reversed degrees', cfg: { dim: D, layers: [madeLayer('maf', D, [7], activation, scale, reversed)] } },
    {
      name: 'mixed stack with permutations',
      cfg: {
        dim: D,
        layers: [
          madeLayer('iaf', D, [6, 5], activation, scale, shuffled(naturalDegrees(D), 11), randomHiddenDegrees(D, [6, 5], 12)),
          { type: 'permutation', permutation: reversePermutation },
          madeLayer('maf', D, [8], activation, scale),
          { type: 'permutation', permutation: shuffled(naturalDegrees(D).map((d) => d - 1), 13) },
          madeLayer('maf', D, [5, 5, 4], activation, scale, shuffled(naturalDegrees(D), 14), randomHiddenDegrees(D, [5, 5, 4], 15)),
          madeLayer('iaf', D, [6], activation, scale, reversed),
        ],
      },
    },
  ];
}

function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tolerance: number): void {
  expect(actual.length).toBe(expected.length);
  let worst = 0;
  for (let i = 0; i < actual.length; i++) {
    expect(Number.isFinite(actual[i])).toBe(true);
    worst = Math.max(worst, Math.abs(actual[i] - expected[i]) / Math.max(1, Math.abs(expected[i])));
  }
  expect(worst).toBeLessThan(tolerance);
}

function row(batch: Float64Array, r: number, D: number): Float64Array {
  return batch.slice(r * D, (r + 1) * D);
}

describe('reference flows', () => {
  const n = 6;
  for (const D of DIMS) {
    for (const activation of ACTIVATIONS) {
      for (const scale of SCALES) {
        configsFor(D, activation, scale).forEach(({ name, cfg }, configIndex) => {
          describe(`${name}, D=${D}, ${activation}, ${scale}`, () => {
            const seed = 1000 * D + 100 * configIndex + ACTIVATIONS.indexOf(activation) * 10 + SCALES.indexOf(scale);
            const params = randomParams(cfg, seed);
            const z = randomBatch(n, D, seed + 1);

            it('inverse(forward(z)) recovers z and forward(inverse(x)) recovers x', () => {
              const { x } = refForward(cfg, params, z, n);
              expectClose(refInverse(cfg, params, x, n).z, z, 1e-9);
              const xOther = randomBatch(n, D, seed + 2);
              expectClose(refForward(cfg, params, refInverse(cfg, params, xOther, n).z, n).x, xOther, 1e-9);
            });

            it('the inverse log-det is minus the forward one, and logProb agrees with both', () => {
              const forward = refForward(cfg, params, z, n);
              const inverse = refInverse(cfg, params, forward.x, n);
              expectClose(inverse.logDet, forward.logDet.map((value) => -value), 1e-9);
              const baseLogDensity = Array.from({ length: n }, (_, r) =>
                row(z, r, D).reduce((sum, zi) => sum - 0.5 * zi * zi - 0.5 * LOG_2PI, 0),
              );
              const expectedLogProb = baseLogDensity.map((value, r) => value - forward.logDet[r]);
              expectClose(refLogProb(cfg, params, forward.x, n), expectedLogProb, 1e-9);
            });

            it('the log-dets match a finite-difference Jacobian', () => {
              const forward = refForward(cfg, params, z, n);
              const inverse = refInverse(cfg, params, forward.x, n);
              for (const r of [0, 1]) {
                const forwardAt = (v: Float64Array): Float64Array => refForward(cfg, params, v, 1).x;
                const inverseAt = (v: Float64Array): Float64Array => refInverse(cfg, params, v, 1).z;
                expect(Math.abs(numericalLogDetJacobian(forwardAt, row(z, r, D)) - forward.logDet[r])).toBeLessThan(1e-6);
                expect(Math.abs(numericalLogDetJacobian(inverseAt, row(forward.x, r, D)) - inverse.logDet[r])).toBeLessThan(1e-6);
              }
            });

            it('every MADE conditioner is autoregressive in its input degrees', () => {
              cfg.layers.forEach((layer, k) => {
                if (layer.type === 'permutation' || layer.type === 'affine') return;
                const u = row(z, 0, D);
                const base = refMadeConditioner(layer, params, k, u);
                for (let j = 0; j < D; j++) {
                  const perturbed = Float64Array.from(u);
                  perturbed[j] += 1.7;
                  const moved = refMadeConditioner(layer, params, k, perturbed);
                  for (let i = 0; i < D; i++) {
                    if (layer.inputDegrees[j] < layer.inputDegrees[i]) continue;
                    expect(moved.scale[i]).toBe(base.scale[i]);
                    expect(moved.shift[i]).toBe(base.shift[i]);
                    expect(moved.logScale[i]).toBe(base.logScale[i]);
                  }
                }
              });
            });
          });
        });
      }
    }
  }
});

describe('reference MADE layer details', () => {
  it('logScale is log(scale) and each parameterization stays in its range', () => {
    const D = 5;
    for (const scale of SCALES) {
      const layer = madeLayer('iaf', D, [8], 'tanh', scale);
      const cfg: RefConfig = { dim: D, layers: [layer] };
      // A large parameter scale pushes the pre-activations into the tails.
      const params = randomParams(cfg, 77, 8);
      for (let r = 0; r < 5; r++) {
        const out = refMadeConditioner(layer, params, 0, randomBatch(1, D, 300 + r));
        for (let i = 0; i < D; i++) {
          expect(Math.abs(out.logScale[i] - Math.log(out.scale[i]))).toBeLessThan(1e-12);
          if (scale === 'softplus') expect(out.scale[i]).toBeGreaterThanOrEqual(1e-3);
          if (scale === 'exp') expect(Math.abs(out.logScale[i])).toBeLessThan(Math.log(1000));
          if (scale === 'gated') {
            expect(out.scale[i]).toBeGreaterThan(0);
            expect(out.scale[i]).toBeLessThan(1);
          }
        }
      }
    }
  });

  // Formulas written out independently of the oracle (the round-trip tests cannot catch a wrong
  // formula that is applied consistently in both directions).
  const handActivation: Record<Activation, (x: number) => number> = {
    relu: (x) => Math.max(0, x),
    tanh: (x) => Math.tanh(x),
    elu: (x) => (x > 0 ? x : Math.exp(x) - 1),
  };
  const handParameterization: Record<ScaleKind, (a: number, s: number) => { scale: number; shift: number }> = {
    softplus: (a, s) => ({ scale: Math.log(1 + Math.exp(a)) + 1e-3, shift: s }),
    exp: (a, s) => ({ scale: Math.exp(a / (1 + Math.abs(a) / Math.log(1000))), shift: s }),
    gated: (a, s) => {
      const sigma = 1 / (1 + Math.exp(-(a + 2)));
      return { scale: sigma, shift: (1 - sigma) * s };
    },
  };
  for (const activation of ACTIVATIONS) {
    for (const scaleKind of SCALES) {
      it(`matches a hand computation for D = 2 with one hidden unit (${activation}, ${scaleKind})`, () => {
        // One hidden unit of degree 1: sees u_1 only, feeds dimension 2 only.
        const layer = madeLayer('iaf', 2, [1], activation, scaleKind, [1, 2], [[1]]);
        const params: RefParams = {
          'layers.0.hidden.0.weight': [0.8, 123], // [1, 2]; the entry from u_2 is masked
          'layers.0.hidden.0.bias': [0.1],
          'layers.0.shift.weight': [55, -0.4], // [2, 1]; row 0 is masked (dimension 1 sees nothing)
          'layers.0.shift.bias': [0.3, 0.2],
          'layers.0.scale.weight': [-66, 0.9],
          'layers.0.scale.bias': [-0.2, 0.7],
        };
        // Two rows: the hidden pre-activation is positive in the first and negative in the second.
        const u = [1.5, -2, -1.5, 0.5];
        const expectedOut: number[] = [];
        const expectedLogDet: number[] = [];
        for (let r = 0; r < 2; r++) {
          const hiddenUnit = handActivation[activation](0.8 * u[2 * r] + 0.1);
          const first = handParameterization[scaleKind](-0.2, 0.3);
          const second = handParameterization[scaleKind](0.9 * hiddenUnit + 0.7, -0.4 * hiddenUnit + 0.2);
          expectedOut.push(u[2 * r] * first.scale + first.shift, u[2 * r + 1] * second.scale + second.shift);
          expectedLogDet.push(Math.log(first.scale) + Math.log(second.scale));
        }
        const { out, logDet } = refMadeLayerParallel(layer, params, 0, u, 2);
        expectClose(out, expectedOut, 1e-14);
        expectClose(logDet, expectedLogDet, 1e-14);
        const back = refMadeLayerSequential(layer, params, 0, out, 2);
        expectClose(back.out, u, 1e-14);
        expectClose(back.logDet, logDet.map((value) => -value), 1e-14);
      });
    }
  }

  it('applies permutations as b_i = a_{permutation[i]} and MAF layers in their sequential direction', () => {
    const permutationOnly: RefConfig = { dim: 3, layers: [{ type: 'permutation', permutation: [2, 0, 1] }] };
    const forward = refForward(permutationOnly, {}, [10, 20, 30], 1);
    expect(Array.from(forward.x)).toEqual([30, 10, 20]);
    expect(Array.from(forward.logDet)).toEqual([0]);
    expect(Array.from(refInverse(permutationOnly, {}, [30, 10, 20], 1).z)).toEqual([10, 20, 30]);

    // A MAF layer's parallel direction runs data -> latent, so refInverse is its parallel pass.
    const D = 3;
    const maf: RefConfig = { dim: D, layers: [madeLayer('maf', D, [5], 'tanh', 'exp')] };
    const params = randomParams(maf, 8);
    const x = randomBatch(2, D, 8);
    const parallel = refMadeLayerParallel(maf.layers[0] as RefMadeLayer, params, 0, x, 2);
    const inverse = refInverse(maf, params, x, 2);
    expect(inverse.z).toEqual(parallel.out);
    expect(inverse.logDet).toEqual(parallel.logDet);
  });

  it('with all parameters zero a softplus flow is a fixed scaling', () => {
    const D = 3;
    const cfg: RefConfig = { dim: D, layers: [madeLayer('iaf', D, [4], 'elu', 'softplus'), madeLayer('maf', D, [4], 'elu', 'softplus')] };
    const params = randomParams(cfg, 5);
    for (const name of Object.keys(params)) params[name].fill(0);
    const c = Math.log(2) + 1e-3; // both layers scale by c, the MAF one inverted: net identity
    const z = randomBatch(2, D, 9);
    const { x, logDet } = refForward(cfg, params, z, 2);
    expectClose(x, z, 1e-14);
    expectClose(logDet, [0, 0], 1e-14);
    const iafOnly: RefConfig = { dim: D, layers: [cfg.layers[0]] };
    const single = refForward(iafOnly, params, z, 2);
    expectClose(single.x, z.map((v) => v * c), 1e-14);
    const expectedLogProb = [0, 1].map((r) =>
      row(single.x, r, D).reduce((sum, xi) => sum - 0.5 * (xi / c) ** 2 - 0.5 * LOG_2PI - Math.log(c), 0),
    );
    expectClose(refLogProb(iafOnly, params, single.x, 2), expectedLogProb, 1e-12);
  });

  it('ignores masked entries even when they hold NaN', () => {
    const D = 4;
    const hidden = [6, 5];
    const layer = madeLayer('maf', D, hidden, 'tanh', 'exp', [3, 1, 4, 2], randomHiddenDegrees(D, hidden, 21));
    const cfg: RefConfig = { dim: D, layers: [layer] };
    const params = randomParams(cfg, 31);
    const poisoned: Record<string, Float64Array> = {};
    for (const [name, tensor] of Object.entries(params)) poisoned[name] = Float64Array.from(tensor);
    let previousDegrees = layer.inputDegrees;
    hidden.forEach((width, l) => {
      const weight = poisoned[`layers.0.hidden.${l}.weight`];
      for (let j = 0; j < width; j++) {
        for (let m = 0; m < previousDegrees.length; m++) {
          if (!(layer.hiddenDegrees[l][j] >= previousDegrees[m])) weight[j * previousDegrees.length + m] = NaN;
        }
      }
      previousDegrees = layer.hiddenDegrees[l];
    });
    for (const head of ['shift', 'scale']) {
      const weight = poisoned[`layers.0.${head}.weight`];
      for (let i = 0; i < D; i++) {
        for (let m = 0; m < previousDegrees.length; m++) {
          if (!(layer.inputDegrees[i] > previousDegrees[m])) weight[i * previousDegrees.length + m] = NaN;
        }
      }
    }
    const x = randomBatch(3, D, 41);
    expect(refLogProb(cfg, poisoned, x, 3)).toEqual(refLogProb(cfg, params, x, 3));
    expect(refForward(cfg, poisoned, x, 3).x).toEqual(refForward(cfg, params, x, 3).x);
  });

  it('randomParams fills every named tensor with the documented shape', () => {
    const cfg: RefConfig = {
      dim: 3,
      layers: [madeLayer('iaf', 3, [4, 5], 'relu', 'gated'), { type: 'permutation', permutation: [2, 1, 0] }, madeLayer('maf', 3, [6], 'relu', 'gated')],
    };
    const params = randomParams(cfg, 3);
    const shapes = Object.fromEntries(Object.entries(params).map(([name, tensor]) => [name, tensor.length]));
    expect(shapes).toEqual({
      'layers.0.hidden.0.weight': 12,
      'layers.0.hidden.0.bias': 4,
      'layers.0.hidden.1.weight': 20,
      'layers.0.hidden.1.bias': 5,
      'layers.0.shift.weight': 15,
      'layers.0.shift.bias': 3,
      'layers.0.scale.weight': 15,
      'layers.0.scale.bias': 3,
      'layers.2.hidden.0.weight': 18,
      'layers.2.hidden.0.bias': 6,
      'layers.2.shift.weight': 18,
      'layers.2.shift.bias': 3,
      'layers.2.scale.weight': 18,
      'layers.2.scale.bias': 3,
    });
    expect(randomParams(cfg, 3)).toEqual(params);
    expect(randomParams(cfg, 4)['layers.0.hidden.0.weight']).not.toEqual(params['layers.0.hidden.0.weight']);
  });

  it('builds degrees by the documented rules and rejects bad inputs clearly', () => {
    expect(naturalDegrees(4)).toEqual([1, 2, 3, 4]);
    expect(defaultHiddenDegrees(4, [5, 2])).toEqual([[1, 2, 3, 1, 2], [1, 2]]);
    expect(defaultHiddenDegrees(1, [3])).toEqual([[1, 1, 1]]);
    const cfg: RefConfig = { dim: 2, layers: [madeLayer('iaf', 2, [3], 'relu', 'exp')] };
    const params: Record<string, Float64Array> = randomParams(cfg, 1);
    delete params['layers.0.scale.bias'];
    expect(() => refForward(cfg, params, [0, 0], 1)).toThrow(/missing parameter layers\.0\.scale\.bias/);
    expect(() => refForward(cfg, randomParams(cfg, 1), [0, 0, 0], 1)).toThrow(/length 3, expected 2/);
  });
});

// ---------------------------------------------------------------------------------------
// The library where its float32 sequential inverse overflows: a point the model gives no mass.

describe('a sequential inverse past float32 (gated scale)', () => {
  // Imported here so the oracle's self-checks above stay independent of the library.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const lib = require('../src/index') as typeof import('../src/index');
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { native } = require('../src/native') as typeof import('../src/native');

  /** A gated IAF whose last layer's scales are sigmoid(bias + 2): 0 in float32 below about -90. */
  function gatedFlow(bias: number) {
    const flow = lib.createFlow({ dim: 4, layers: [lib.iaf({ hidden: [8], scale: 'gated' }), lib.reverse(), lib.iaf({ hidden: [8], scale: 'gated' })], seed: 3 });
    const params = flow.getParameters();
    params['layers.2.scale.bias'].fill(bias);
    flow.setParameters(params);
    const ref: Record<string, Float64Array> = {};
    for (const [name, value] of Object.entries(flow.getParameters())) ref[name] = Float64Array.from(value);
    return { flow, ref, config: flow.config as unknown as RefConfig };
  }

  it('gives logProb -Infinity (not NaN) where the float64 oracle is below -3.4e38, on every path', async () => {
    const { flow, ref, config } = gatedFlow(-100);
    const batch = Float32Array.from(randomBatch(16, 4, 4));
    for (const rows of [1, 16]) {
      const x = rows === 16 ? batch : batch.slice(4 * 8, 4 * 9); // row 8: one the oracle can score
      // Where the oracle has a number it is below -3.4e38, -Infinity once rounded to float32. On
      // some rows float64 overflows too (the oracle's own NaN): the answer there is no different.
      const expected = Array.from(refLogProb(config, ref, Float64Array.from(x), rows)).filter((v) => !Number.isNaN(v));
      expect(expected.length).toBeGreaterThanOrEqual(rows / 2);
      expected.forEach((v) => expect(v).toBeLessThan(-3.5e38));
      const paths: [string, Float32Array][] = [
        ['sync', flow.logProbSync(x)],
        ['async', await flow.logProb(x)],
        ['reference path', flow.referenceRun('toLatent', x, rows).logProb],
      ];
      const isa = native.kernelInfo().isa;
      try {
        native.selectKernels('portable');
        paths.push(['portable kernels', flow.logProbSync(x)]);
      } finally {
        native.selectKernels(isa);
      }
      for (const [path, logProb] of paths) expect({ path, rows, logProb: Array.from(logProb) }).toEqual({ path, rows, logProb: Array(rows).fill(-Infinity) });
      const { z, logDet } = flow.inverseSync(x);
      expect(z.every((v) => !Number.isNaN(v)) && z.some((v) => v === Infinity || v === -Infinity)).toBe(true);
      expect(logDet.every(Number.isFinite)).toBe(true);
    }
  });

  it('still matches the oracle where the inverse is large but inside float32', () => {
    const { flow, ref, config } = gatedFlow(-40);
    const x = Float32Array.from(randomBatch(16, 4, 6));
    const expected = refLogProb(config, ref, Float64Array.from(x), 16);
    const got = flow.logProbSync(x);
    let compared = 0;
    expected.forEach((v, r) => {
      if (Number.isNaN(v)) {
        expect(got[r]).toBe(-Infinity); // the oracle's float64 overflowed as well
        return;
      }
      expect(v < -1e20 && v > -3.4e38).toBe(true); // far in the tail, but a float32 number
      expect(Math.abs(got[r] - v) / Math.abs(v)).toBeLessThan(1e-4);
      compared++;
    });
    expect(compared).toBeGreaterThanOrEqual(8);
  });

  it('a sample whose sequential solve overflows has no log-density (NaN), not a finite one', () => {
    const flow = lib.createFlow({ dim: 3, layers: [lib.maf({ hidden: [8], scale: 'gated' })], seed: 1 });
    const params = flow.getParameters();
    params['layers.0.scale.bias'].fill(-100);
    flow.setParameters(params);
    const { x, logProb } = flow.sampleWithLogProbSync(16, { seed: 2 });
    for (let r = 0; r < 16; r++) {
      if (x.subarray(3 * r, 3 * r + 3).every(Number.isFinite)) expect(Number.isFinite(logProb[r])).toBe(true);
      else expect(logProb[r]).toBeNaN();
    }
    expect(x.some((v) => !Number.isFinite(v))).toBe(true);
  });
});
