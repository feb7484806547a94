// Training against the float64 oracle (test/reference.ts): gradients of every loss by finite
// differences, the optimizer by hand, and the behaviour of fit / fitReverseKL / distill (early
// stopping, abort, skipped non-finite steps, reproducibility, refusals).
import {
  affine,
  Activation,
  Flow,
  LayerDescriptor,
  ScaleKind,
  Target,
  createFlow,
  createIAF,
  createMAF,
  distill,
  fit,
  fitReverseKL,
  fitSchedule,
  getThreads,
  iaf,
  maf,
  permute,
  reverse,
  setThreads,
  standardNormal,
} from '../src/index';
import { native } from '../src/native';
import { __trainingInternals as internals } from '../src/train';
import { RefConfig, randomParams, refForward, refLogProb } from './reference';

const ACTIVATIONS: Activation[] = ['relu', 'tanh', 'elu'];
const SCALES: ScaleKind[] = ['softplus', 'exp', 'gated'];
const HALF_LOG_2PI = 0.5 * Math.log(2 * Math.PI);

// Every instruction set this CPU runs (AVX-512, AVX2, portable): training uses the kernels
// inference uses, so one selectKernels switches both.
const ISAS = native.kernelInfo().available.split(',');
const BEST_ISA = native.kernelInfo().isa;

/** Runs `check` under each instruction set in turn (the failure names it), then restores the best. */
async function forEachIsa(check: (isa: string) => void | Promise<void>): Promise<void> {
  try {
    for (const isa of ISAS) {
      expect(native.selectKernels(isa)).toBe(true);
      try {
        await check(isa);
      } catch (error) {
        if (error instanceof Object && 'message' in error) (error as Error).message = `[${isa} kernels] ${(error as Error).message}`;
        throw error;
      }
    }
  } finally {
    native.selectKernels(BEST_ISA);
  }
}

/** Random (far from identity) float32 weights, set into the flow; returned in float64 for the oracle. */
function randomize(flow: Flow, seed: number, scale = 0.5): Record<string, Float64Array> {
  const p32: Record<string, Float32Array> = {};
  const p64: Record<string, Float64Array> = {};
  for (const [name, value] of Object.entries(randomParams(flow.config as RefConfig, seed, scale))) {
    p32[name] = Float32Array.from(value);
    p64[name] = Float64Array.from(p32[name]);
  }
  flow.setParameters(p32);
  return p64;
}

/** Deterministic test inputs in [-2, 2), rounded to float32. */
function uniformRows(n: number, dim: number, seed: number): Float32Array {
  let state = seed >>> 0 || 1;
  return Float32Array.from({ length: n * dim }, () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return (4 * state) / 4294967296 - 2;
  });
}

/** The tensors of the flow's fixed affine layers: training leaves them alone (gradient exactly 0). */
function fixedTensors(flow: Flow): Set<string> {
  const names = new Set<string>();
  flow.config.layers.forEach((layer, k) => {
    if (layer.type === 'affine' && !layer.trainable) names.add(`layers.${k}.loc`).add(`layers.${k}.scale`);
  });
  return names;
}

/** Central differences of f wrt every entry of every parameter (float64); 0 for `fixed` tensors. */
function finiteDifferences(params: Record<string, Float64Array>, f: () => number, h = 1e-6, fixed = new Set<string>()): Record<string, Float64Array> {
  const out: Record<string, Float64Array> = {};
  for (const [name, values] of Object.entries(params)) {
    const g = new Float64Array(values.length);
    if (fixed.has(name)) {
      out[name] = g;
      continue;
    }
    for (let i = 0; i < values.length; i++) {
      const original = values[i];
      values[i] = original + h;
      const plus = f();
      values[i] = original - h;
      const minus = f();
      values[i] = original;
      g[i] = (plus - minus) / (2 * h);
    }
    out[name] = g;
  }
  return out;
}

function expectGradientsClose(actual: Record<string, Float32Array>, expected: Record<string, ArrayLike<number>>, atol: number, rtol: number) {
  expect(Object.keys(actual).sort()).toEqual(Object.keys(expected).sort());
  for (const [name, want] of Object.entries(expected)) {
    const got = actual[name];
    expect(got.length).toBe(want.length);
    for (let i = 0; i < want.length; i++) {
      if (!(Math.abs(got[i] - want[i]) <= atol + rtol * Math.abs(want[i]))) {
        throw new Error(`${name}[${i}]: native ${got[i]}, expected ${want[i]} (atol ${atol}, rtol ${rtol})`);
      }
    }
  }
}

function meanNll(cfg: RefConfig, params: Record<string, Float64Array>, x: Float32Array, n: number): number {
  const lp = refLogProb(cfg, params, x, n);
  let sum = 0;
  for (const v of lp) sum -= v;
  return sum / n;
}

/** A correlated Gaussian on R^dim with an analytic log-density and gradient (float64 and float32). */
function gaussianTarget(dim: number, seed: number) {
  const u = uniformRows(dim * dim + dim, 1, seed);
  const mean = Array.from({ length: dim }, (_, i) => 0.5 * u[i]);
  // Precision = A A^T + 0.5 I, A random: symmetric positive definite.
  const a = Array.from({ length: dim }, (_, i) => Array.from({ length: dim }, (_, j) => 0.6 * u[dim + i * dim + j]));
  const precision = a.map((row, i) => a.map((other, j) => row.reduce((s, v, k) => s + v * other[k], 0) + (i === j ? 0.5 : 0)));
  const logDensity64 = (x: ArrayLike<number>, offset: number): number => {
    let q = 0;
    for (let i = 0; i < dim; i++) for (let j = 0; j < dim; j++) q += (x[offset + i] - mean[i]) * precision[i][j] * (x[offset + j] - mean[j]);
    return -0.5 * q;
  };
  const target: Target = {
    dim,
    logDensity(x: Float32Array) {
      const n = x.length / dim;
      const value = new Float32Array(n);
      const grad = new Float32Array(n * dim);
      for (let r = 0; r < n; r++) {
        value[r] = logDensity64(x, r * dim);
        for (let i = 0; i < dim; i++) {
          let g = 0;
          for (let j = 0; j < dim; j++) g -= precision[i][j] * (x[r * dim + j] - mean[j]);
          grad[r * dim + i] = g;
        }
      }
      return { value, grad };
    },
  };
  return { target, logDensity64, mean, precision };
}

interface Case {
  name: string;
  dim: number;
  layers: LayerDescriptor[];
}

/** Stacks that mix both kinds: each pass runs some layers in parallel and some sequentially. */
function mixedCases(): Case[] {
  return [
    { name: 'mixed d2 maf + iaf', dim: 2, layers: [maf({ hidden: [6] }), reverse(), iaf({ hidden: [5, 4], activation: 'tanh', scale: 'exp' })] },
    {
      name: 'mixed d5 iaf + maf, random orders, degree-0 and degree-dim units',
      dim: 5,
      layers: [
        iaf({ hidden: [7, 6], order: [3, 0, 4, 1, 2], hiddenDegrees: [[0, 1, 4, 2, 5, 3, 0], [5, 1, 0, 3, 2, 4]], activation: 'elu', scale: 'gated' }),
        permute({ seed: 3 }),
        maf({ hidden: [9], scale: 'softplus' }),
        iaf({ hidden: [8], order: [4, 3, 2, 1, 0], activation: 'relu', scale: 'exp' }),
      ],
    },
    {
      name: 'residual d3 maf + iaf (nflows-style blocks)',
      dim: 3,
      layers: [maf({ hidden: [6, 6, 6], residual: true, activation: 'tanh' }), reverse(), iaf({ hidden: [5, 5, 5, 5, 5], residual: true, activation: 'elu', scale: 'exp' })],
    },
    {
      name: 'tight soft clamps (0.7, 1.3) and none: the clamp bends every input',
      dim: 4,
      layers: [maf({ hidden: [7, 6], softClamp: 0.7, activation: 'elu' }), permute({ seed: 5 }), iaf({ hidden: [9], softClamp: 1.3, scale: 'exp' }), reverse(), maf({ hidden: [5], softClamp: 0 })],
    },
    {
      name: 'affine layers, trainable (scales of both signs) and fixed, around maf + iaf',
      dim: 3,
      layers: [
        affine({ loc: [0.3, -0.2, 0.1], scale: [1.5, -0.7, 2], trainable: true }),
        maf({ hidden: [6], activation: 'tanh' }),
        reverse(),
        iaf({ hidden: [5], scale: 'exp' }),
        affine({ loc: [1, -3, 0.5], scale: [0.5, 4, -2] }),
      ],
    },
    {
      name: 'residual d5 iaf + maf, random order',
      dim: 5,
      layers: [iaf({ hidden: [9, 9, 9], residual: true, order: [2, 4, 0, 3, 1], scale: 'gated' }), permute({ seed: 2 }), maf({ hidden: [7, 7, 7], residual: true, activation: 'relu' })],
    },
  ];
}

function stackCases(kind: 'maf' | 'iaf'): Case[] {
  const made = kind === 'maf' ? maf : iaf;
  const out: Case[] = [];
  for (const dim of [1, 2, 5]) {
    for (const activation of ACTIVATIONS) {
      for (const scale of SCALES) {
        out.push({
          name: `${kind} d${dim} ${activation} ${scale}`,
          dim,
          layers: [made({ hidden: [6, 5], activation, scale }), permute({ seed: dim + 1 }), made({ hidden: [7], activation, scale }), reverse()],
        });
      }
    }
  }
  out.push({
    name: `${kind} d5 random orders and odd hidden degrees`,
    dim: 5,
    layers: [
      made({ hidden: [7, 6], order: [3, 0, 4, 1, 2], hiddenDegrees: [[0, 1, 4, 2, 5, 3, 0], [5, 1, 0, 3, 2, 4]], activation: 'tanh' }),
      made({ hidden: [9], order: [4, 3, 2, 1, 0], scale: 'gated' }),
    ],
  });
  return out;
}

describe('maximum-likelihood gradient against finite differences of the oracle, every instruction set', () => {
  // IAF layers run their sequential direction here, and its one-pass adjoint in the backward.
  test.each([...stackCases('maf'), ...stackCases('iaf'), ...mixedCases()].map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    const flow = createFlow({ dim: c.dim, layers: c.layers, seed: 3 });
    const params = randomize(flow, 11);
    const cfg = flow.config as RefConfig;
    const n = 6;
    const x = uniformRows(n, c.dim, 7);
    const want = meanNll(cfg, params, x, n); // large where random IAF layers are inverted: float32 rounding is relative
    const expected = finiteDifferences(params, () => meanNll(cfg, params, x, n), 1e-6, fixedTensors(flow));
    await forEachIsa(() => {
      const { loss, grads } = internals.likelihoodGradient(flow, x);
      expect(Math.abs(loss - want)).toBeLessThan(5e-4 + 2e-6 * Math.abs(want));
      // Masked entries: the oracle ignores them (difference 0) and the native gradient is exactly 0.
      expectGradientsClose(grads, expected, 2e-4, 2e-3);
    });
  });

  test.each(['maf', 'iaf', 'residual maf', 'residual iaf'] as const)('wide %s layers (several column blocks): the staircase kernels equal the dense path and the oracle', async (kind) => {
    const dim = 20;
    const made = kind.endsWith('maf') ? maf : iaf;
    const residual = kind.startsWith('residual');
    const flow = createFlow({
      dim,
      seed: 1,
      layers: [
        made({ hidden: residual ? [40, 40, 40] : [40, 33], activation: 'elu', residual }),
        permute({ seed: 4 }),
        made({ hidden: residual ? [37, 37, 37, 37, 37] : [37], order: Array.from({ length: dim }, (_, i) => (i * 7) % dim), scale: 'exp', activation: 'tanh', residual }),
      ],
    });
    const params = randomize(flow, 5, 0.3);
    const n = 70; // several slots of rows, and tiles with a short last one
    const x = uniformRows(n, dim, 3);
    const reference = internals.likelihoodGradient(flow, x, { reference: true });
    // A sample of entries against the oracle (all of them would take long in float64 JS).
    const cfg = flow.config as RefConfig;
    const few = uniformRows(3, dim, 9);
    const sampled: { name: string; i: number; fd: number }[] = [];
    for (const [name, values] of Object.entries(params)) {
      for (let i = name.endsWith('bias') ? 0 : 5; i < values.length; i += 97) {
        const original = values[i];
        const h = 1e-6;
        values[i] = original + h;
        const plus = meanNll(cfg, params, few, 3);
        values[i] = original - h;
        const minus = meanNll(cfg, params, few, 3);
        values[i] = original;
        sampled.push({ name, i, fd: (plus - minus) / (2 * h) });
      }
    }
    expect(sampled.length).toBeGreaterThan(50);
    const byIsa = new Map<string, Record<string, Float32Array>>();
    await forEachIsa((isa) => {
      const fast = internals.likelihoodGradient(flow, x);
      expect(fast.loss).toBeCloseTo(reference.loss, 4);
      expectGradientsClose(fast.grads, reference.grads, 1e-5, 1e-3);
      // Deterministic: the same kernels give the same bits again.
      const again = internals.likelihoodGradient(flow, x);
      for (const name of Object.keys(fast.grads)) expect(again.grads[name]).toEqual(fast.grads[name]);
      byIsa.set(isa, fast.grads);
      const g = internals.likelihoodGradient(flow, few).grads;
      for (const { name, i, fd } of sampled) expect(Math.abs(g[name][i] - fd)).toBeLessThanOrEqual(3e-4 + 3e-3 * Math.abs(fd));
    });
    // The switch reaches training: builds of different vector widths (and FMA or not) round differently.
    if (ISAS.length > 1) {
      const first = byIsa.get(ISAS[0])!;
      const last = byIsa.get(ISAS[ISAS.length - 1])!;
      expect(Object.keys(first).some((name) => first[name].some((v, i) => v !== last[name][i]))).toBe(true);
    }
  });

  test('the gradient of a batch is the mean of its halves (slots are summed correctly)', () => {
    const flow = createMAF({ dim: 3, layers: 2, hidden: [16, 16], seed: 1 });
    const x = standardNormal(600, 3, { seed: 2 });
    const all = internals.likelihoodGradient(flow, x);
    const a = internals.likelihoodGradient(flow, x.subarray(0, 900));
    const b = internals.likelihoodGradient(flow, x.subarray(900));
    const half: Record<string, Float64Array> = {};
    for (const name of Object.keys(all.grads)) half[name] = all.grads[name].map((_, i) => (a.grads[name][i] + b.grads[name][i]) / 2) as unknown as Float64Array;
    expectGradientsClose(all.grads, half, 1e-6, 1e-4);
    expect(all.loss).toBeCloseTo((a.loss + b.loss) / 2, 6);
  });
});

describe("gradient of log p(x) wrt x (distillation's teacher) against finite differences, every instruction set", () => {
  test.each([...stackCases('maf'), ...stackCases('iaf'), ...mixedCases()].filter((_, i) => i % 2 === 0).map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    const flow = createFlow({ dim: c.dim, layers: c.layers, seed: 2 });
    const params = randomize(flow, 13);
    const cfg = flow.config as RefConfig;
    const n = 5;
    const x = uniformRows(n, c.dim, 4);
    const ref = refLogProb(cfg, params, x, n);
    const h = 1e-6;
    const x64 = Float64Array.from(x);
    const fd = new Float64Array(n * c.dim);
    for (let r = 0; r < n; r++) {
      for (let i = 0; i < c.dim; i++) {
        const at = r * c.dim + i;
        const original = x64[at];
        x64[at] = original + h;
        const plus = refLogProb(cfg, params, x64.subarray(r * c.dim, (r + 1) * c.dim), 1)[0];
        x64[at] = original - h;
        const minus = refLogProb(cfg, params, x64.subarray(r * c.dim, (r + 1) * c.dim), 1)[0];
        x64[at] = original;
        fd[at] = (plus - minus) / (2 * h);
      }
    }
    await forEachIsa(() => {
      const { logProb, grad } = internals.logProbGradient(flow, x);
      for (let r = 0; r < n; r++) expect(Math.abs(logProb[r] - ref[r])).toBeLessThan(2e-3 * (1 + Math.abs(ref[r])));
      for (let at = 0; at < n * c.dim; at++) expect(Math.abs(grad[at] - fd[at])).toBeLessThanOrEqual(5e-4 + 2e-3 * Math.abs(fd[at]));
    });
  });
});

describe('reverse-KL gradient against finite differences of a float64 re-implementation, every instruction set', () => {
  // MAF layers sample through their sequential direction here.
  test.each([...stackCases('iaf'), ...stackCases('maf'), ...mixedCases()].map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    const flow = createFlow({ dim: c.dim, layers: c.layers, seed: 4 });
    const params = randomize(flow, 17, 0.4);
    const cfg = flow.config as RefConfig;
    const { target, logDensity64 } = gaussianTarget(c.dim, 21);
    const n = 6;
    const z = standardNormal(n, c.dim, { seed: 8 });
    // E_z[log q(x) - log p~(x)], x = f(z), log q(x) = log N(z) - log|det dx/dz|.
    const loss64 = () => {
      const { x, logDet } = refForward(cfg, params, z, n);
      let sum = 0;
      for (let r = 0; r < n; r++) {
        let base = 0;
        for (let i = 0; i < c.dim; i++) base += -0.5 * z[r * c.dim + i] ** 2 - HALF_LOG_2PI;
        sum += base - logDet[r] - logDensity64(x, r * c.dim);
      }
      return sum / n;
    };
    const want = loss64();
    const expected = finiteDifferences(params, loss64, 1e-6, fixedTensors(flow));
    await forEachIsa(async () => {
      const { loss, grads } = await internals.reverseKLGradient(flow, z, target);
      expect(Math.abs(loss - want)).toBeLessThan(1e-3 * (1 + Math.abs(want)));
      expectGradientsClose(grads, expected, 3e-4, 3e-3);
    });
  });
});

describe('sticking-the-landing gradient against finite differences (log q with the weights held), every instruction set', () => {
  test.each([...stackCases('iaf').filter((_, i) => i % 4 === 0), ...mixedCases()].map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    const flow = createFlow({ dim: c.dim, layers: c.layers, seed: 4 });
    const params = randomize(flow, 17, 0.4);
    const held: Record<string, Float64Array> = {};
    for (const [name, value] of Object.entries(params)) held[name] = value.slice();
    const cfg = flow.config as RefConfig;
    const { target, logDensity64 } = gaussianTarget(c.dim, 21);
    const n = 6;
    const z = standardNormal(n, c.dim, { seed: 8 });
    // E_z[log q_held(x) - log p~(x)], x = f_params(z): only the path through x is differentiated.
    const loss64 = () => {
      const { x } = refForward(cfg, params, z, n);
      const logq = refLogProb(cfg, held, x, n);
      let sum = 0;
      for (let r = 0; r < n; r++) sum += logq[r] - logDensity64(x, r * c.dim);
      return sum / n;
    };
    const expected = finiteDifferences(params, loss64, 1e-6, fixedTensors(flow));
    await forEachIsa(async () => {
      const { grads } = await internals.reverseKLGradient(flow, z, target, {}, true);
      expectGradientsClose(grads, expected, 3e-4, 3e-3);
    });
  });

  test('at the optimum the gradient of every sample is zero (the plain estimator is not)', async () => {
    // q = N(0, I) exactly (identity IAF) and the target N(0, I): the STL gradient vanishes per sample.
    const flow = createIAF({ dim: 3, layers: 2, hidden: [8], seed: 1 });
    const params = flow.getParameters();
    for (const [name, value] of Object.entries(params)) {
      if (/(shift|scale)\.weight$/.test(name) || /shift\.bias$/.test(name)) value.fill(0);
      if (/scale\.bias$/.test(name)) value.fill(Math.log(Math.expm1(0.999)));
    }
    flow.setParameters(params);
    const target: Target = {
      dim: 3,
      logDensity: (x) => ({
        value: Float32Array.from({ length: x.length / 3 }, (_, r) => -0.5 * (x[3 * r] ** 2 + x[3 * r + 1] ** 2 + x[3 * r + 2] ** 2)),
        grad: x.map((v) => -v),
      }),
    };
    const z = standardNormal(4, 3, { seed: 2 });
    const norm = (g: Record<string, Float32Array>) => Math.sqrt(Object.values(g).reduce((s, v) => s + v.reduce((t, e) => t + e * e, 0), 0));
    const stl = await internals.reverseKLGradient(flow, z, target, {}, true);
    const plain = await internals.reverseKLGradient(flow, z, target, {}, false);
    expect(norm(stl.grads)).toBeLessThan(1e-5);
    expect(norm(plain.grads)).toBeGreaterThan(1e-2);
  });
});

describe('the optimizer', () => {
  test('two Adam steps (bias-corrected, decoupled weight decay) match a hand computation', async () => {
    // The fresh flow stores its masked entries as 0, which every step keeps: the formula gives 0 too.
    const flow = createMAF({ dim: 3, layers: 2, hidden: [8], seed: 1 });
    const x = standardNormal(48, 3, { seed: 2 });
    const [lr, b1, b2, eps, wd] = [0.01, 0.8, 0.99, 1e-6, 0.1];
    const p0 = flow.getParameters();
    const g1 = internals.likelihoodGradient(flow, x).grads;
    let p1: Record<string, Float32Array> = {};
    let g2: Record<string, Float32Array> = {};
    // One full batch per epoch: two epochs are two steps (the row order does not change the mean).
    await fit(flow, x, {
      epochs: 2,
      batchSize: 48,
      learningRate: lr,
      betas: [b1, b2],
      eps,
      weightDecay: wd,
      seed: 3,
      ema: 0, // the raw Adam iterates
      onProgress: ({ epoch }) => {
        if (epoch !== 0) return;
        p1 = flow.getParameters(); // the weights after the first step
        g2 = internals.likelihoodGradient(flow, x).grads;
      },
    });
    const p2 = flow.getParameters();
    for (const k of Object.keys(p0)) {
      for (let i = 0; i < p0[k].length; i++) {
        const m1 = (1 - b1) * g1[k][i];
        const v1 = (1 - b2) * g1[k][i] ** 2;
        const step1 = p0[k][i] * (1 - lr * wd) - ((lr / (1 - b1)) * m1) / (Math.sqrt(v1 / (1 - b2)) + eps);
        expect(Math.abs(p1[k][i] - step1)).toBeLessThan(2e-6 + 1e-5 * Math.abs(step1));
        const m2 = b1 * m1 + (1 - b1) * g2[k][i];
        const v2 = b2 * v1 + (1 - b2) * g2[k][i] ** 2;
        const step2 = p1[k][i] * (1 - lr * wd) - ((lr / (1 - b1 ** 2)) * m2) / (Math.sqrt(v2 / (1 - b2 ** 2)) + eps);
        expect(Math.abs(p2[k][i] - step2)).toBeLessThan(2e-6 + 1e-5 * Math.abs(step2));
      }
    }
  });

  test('clipGradNorm rescales the gradient to the given global norm', async () => {
    const flow = createMAF({ dim: 2, layers: 2, hidden: [8], seed: 5 });
    randomize(flow, 6, 0.3);
    const x = standardNormal(32, 2, { seed: 1 });
    const before = flow.getParameters();
    const { grads } = internals.likelihoodGradient(flow, x);
    let norm = 0;
    for (const g of Object.values(grads)) for (const v of g) norm += v * v;
    norm = Math.sqrt(norm);
    const clip = norm / 10;
    const factor = clip / (norm + 1e-6);
    // With a large eps the first Adam step is about lr * g / eps: linear in the (clipped) gradient.
    const [lr, eps] = [0.1, 10];
    await fit(flow, x, { epochs: 1, batchSize: 32, learningRate: lr, eps, clipGradNorm: clip, seed: 0, ema: 0 });
    const after = flow.getParameters();
    for (const k of Object.keys(before)) {
      for (let i = 0; i < before[k].length; i++) {
        const g = grads[k][i] * factor;
        const expected = before[k][i] - (lr * g) / (Math.abs(g) + eps);
        expect(Math.abs(after[k][i] - expected)).toBeLessThan(1e-7 + 1e-4 * Math.abs((lr * g) / eps));
      }
    }
  });
});

describe('fit with ema (Polyak averaging)', () => {
  /** The weights after each epoch (one full-batch step each) of a fit, and its final weights. */
  async function trajectory(ema: number, epochs: number) {
    const flow = createMAF({ dim: 2, layers: 2, hidden: [8], seed: 4 });
    randomize(flow, 7, 0.3);
    const x = standardNormal(40, 2, { seed: 6 });
    const start = flow.getParameters();
    const seen: Record<string, Float32Array>[] = [];
    await fit(flow, x, { epochs, batchSize: 40, learningRate: 0.05, seed: 1, ema, onProgress: () => void seen.push(flow.getParameters()) });
    return { start, seen, end: flow.getParameters() };
  }

  test('the flow gets the moving average (with its warm-up) of the raw Adam steps', async () => {
    const epochs = 4;
    const raw = await trajectory(0, epochs); // ema 0: the raw weights after each step
    expect(raw.seen).toHaveLength(epochs);
    expect(raw.end).toEqual(raw.seen[epochs - 1]);
    const averaged = await trajectory(0.99, epochs);
    expect(averaged.end).toEqual(averaged.seen[epochs - 1]); // onProgress sees the averaged weights too
    let differs = false;
    for (const k of Object.keys(raw.start)) {
      // avg_0 = theta_0; avg_t = d_t avg_{t-1} + (1 - d_t) theta_t, d_t = min(ema, t / (9 + t)).
      const avg = Float64Array.from(raw.start[k]);
      for (let t = 1; t <= epochs; t++) {
        const d = Math.min(0.99, t / (9 + t));
        for (let i = 0; i < avg.length; i++) avg[i] = d * avg[i] + (1 - d) * raw.seen[t - 1][k][i];
        for (let i = 0; i < avg.length; i++) expect(Math.abs(averaged.seen[t - 1][k][i] - avg[i])).toBeLessThan(1e-6 + 1e-5 * Math.abs(avg[i]));
      }
      for (let i = 0; i < avg.length; i++) if (Math.abs(raw.end[k][i] - averaged.end[k][i]) > 1e-4) differs = true;
    }
    expect(differs).toBe(true);
  });

  test('validation, the best epoch and the final weights all use the averaged weights', async () => {
    const data = standardNormal(1200, 2, { seed: 2 }).map((v, i) => (i % 2 === 0 ? 1.5 * v + 1 : 0.5 * v - 1));
    const valid = standardNormal(300, 2, { seed: 3 }).map((v, i) => (i % 2 === 0 ? 1.5 * v + 1 : 0.5 * v - 1));
    const nll = async (flow: Flow) => -(await flow.logProb(valid)).reduce((a, b) => a + b, 0) / 300;
    for (const restoreBest of [true, false]) {
      const flow = createMAF({ dim: 2, layers: 2, hidden: [16], seed: 1 });
      const report = await fit(flow, data, { epochs: 8, batchSize: 100, learningRate: 1e-2, validation: valid, seed: 0, ema: 0.9, restoreBest });
      const epoch = restoreBest ? report.bestEpoch! : report.epochs - 1;
      expect(Math.abs((await nll(flow)) - report.validLoss[epoch])).toBeLessThan(1e-5);
    }
  });

  test('the default is ema 0.99; bad values are refused', async () => {
    const data = standardNormal(600, 2, { seed: 8 });
    const runs: Record<string, Float32Array>[] = [];
    for (const ema of [undefined, 0.99, 0]) {
      const flow = createMAF({ dim: 2, layers: 2, hidden: [16], seed: 2 });
      await fit(flow, data, { epochs: 3, batchSize: 64, validationFraction: 0.2, seed: 4, ...(ema === undefined ? {} : { ema }) });
      runs.push(flow.getParameters());
    }
    expect(runs[1]).toEqual(runs[0]);
    expect(runs[2]).not.toEqual(runs[0]);
    const flow = createMAF({ dim: 2, layers: 1, hidden: [4] });
    await expect(fit(flow, data, { ema: 1 })).rejects.toThrow(RangeError);
    await expect(fit(flow, data, { ema: 1 })).rejects.toThrow(/a number in \[0, 1\) for options.ema but received 1/);
    await expect(fit(flow, data, { ema: -0.1 })).rejects.toThrow(RangeError);
    await expect(fit(flow, data, { ema: NaN })).rejects.toThrow(/options.ema/);
    await expect(fit(flow, data, { ema: '0.9' as never })).rejects.toThrow(/options.ema/);
  });
});

describe('fit', () => {
  test('a short fit on a small dataset lowers the NLL, and the report adds up', async () => {
    const n = 1200;
    const z = standardNormal(n, 2, { seed: 4 });
    const data = new Float32Array(2 * n);
    for (let r = 0; r < n; r++) {
      data[2 * r] = 1 + 0.5 * z[2 * r];
      data[2 * r + 1] = data[2 * r] ** 2 * 0.5 + 0.3 * z[2 * r + 1]; // a curved, correlated density
    }
    const flow = createMAF({ dim: 2, layers: 3, hidden: [32, 32], seed: 1 });
    const before = -(await flow.logProb(data)).reduce((a, b) => a + b, 0) / n;
    const progress: number[] = [];
    const report = await fit(flow, data, { epochs: 15, batchSize: 100, learningRate: 3e-3, seed: 1, onProgress: (p) => void progress.push(p.epoch) });
    const after = -(await flow.logProb(data)).reduce((a, b) => a + b, 0) / n;
    expect(report.epochs).toBe(15);
    expect(report.steps).toBe(15 * 12);
    expect(report.skippedSteps).toBe(0);
    expect(report.trainLoss).toHaveLength(15);
    expect(report.validLoss).toHaveLength(0);
    expect(report.bestEpoch).toBeNull();
    expect(report.trainLoss[14]).toBeLessThan(report.trainLoss[0] - 0.5);
    expect(after).toBeLessThan(before - 0.8);
    expect(Math.abs(after - report.trainLoss[14])).toBeLessThan(0.15);
    expect(report.samplesPerSec).toBeGreaterThan(0);
    for (let e = 0; e < 15; e++) expect(progress).toContain(e); // at least once per epoch
  });

  test('the same seed gives the same weights at 1 and 2 threads; number[][] data works too', async () => {
    const original = getThreads();
    try {
      const data = standardNormal(700, 3, { seed: 9 });
      const rows = Array.from({ length: 700 }, (_, r) => Array.from(data.subarray(3 * r, 3 * r + 3)));
      const results: Record<string, Float32Array>[] = [];
      for (const threads of [1, 2]) {
        setThreads(threads);
        const flow = createMAF({ dim: 3, layers: 2, hidden: [24, 24], seed: 3 });
        await fit(flow, threads === 1 ? data : rows, { epochs: 2, batchSize: 300, seed: 5, validationFraction: 0.2 });
        results.push(flow.getParameters());
      }
      expect(results[1]).toEqual(results[0]);
    } finally {
      setThreads(original);
    }
  });

  test('early stopping keeps the weights of the best validation epoch', async () => {
    // Training data far from the validation data: fitting one makes the other worse.
    const train = standardNormal(400, 1, { seed: 1 }).map((v) => 3 + 0.2 * v);
    const valid = standardNormal(200, 1, { seed: 2 });
    const flow = createMAF({ dim: 1, layers: 2, hidden: [8], seed: 1 });
    const report = await fit(flow, train, { epochs: 50, batchSize: 50, learningRate: 2e-2, validation: valid, patience: 3, seed: 0 });
    expect(report.stoppedEarly).toBe(true);
    const best = report.validLoss.indexOf(Math.min(...report.validLoss));
    expect(report.bestEpoch).toBe(best);
    expect(report.epochs).toBe(best + 4);
    expect(report.validLoss[report.epochs - 1]).toBeGreaterThan(report.validLoss[best]);
    const nll = -(await flow.logProb(valid)).reduce((a, b) => a + b, 0) / 200;
    expect(Math.abs(nll - report.validLoss[best])).toBeLessThan(1e-4);
  });

  test('a step whose loss is not finite is skipped and never written into the weights', async () => {
    const flow = createMAF({ dim: 2, layers: 2, hidden: [8], seed: 1 });
    const before = flow.getParameters();
    const data = standardNormal(64, 2, { seed: 1 });
    data[10] = 1e30; // z^2 overflows float32
    const report = await fit(flow, data, { epochs: 2, batchSize: 64, seed: 0 });
    expect(report.skippedSteps).toBe(2);
    expect(report.steps).toBe(0);
    expect(Number.isNaN(report.trainLoss[0])).toBe(true);
    expect(flow.getParameters()).toEqual(before);
    // Only the bad batch is skipped when there are others.
    const mixed = await fit(flow, data, { epochs: 1, batchSize: 16, seed: 0 });
    expect(mixed.skippedSteps).toBe(1);
    expect(mixed.steps).toBe(3);
    for (const v of Object.values(flow.getParameters())) expect(v.every(Number.isFinite)).toBe(true);
  });

  test('abort stops at a chunk boundary, rejects with an AbortError and leaves a usable flow', async () => {
    const flow = createMAF({ dim: 2, layers: 2, hidden: [16], seed: 1 });
    const data = standardNormal(2000, 2, { seed: 3 });
    const controller = new AbortController();
    let calls = 0;
    const run = fit(flow, data, {
      epochs: 1000,
      batchSize: 100,
      validationFraction: 0.1,
      seed: 0,
      signal: controller.signal,
      onProgress: () => {
        calls++;
        if (calls === 3) controller.abort();
      },
    });
    await expect(run).rejects.toMatchObject({ name: 'AbortError' });
    expect(calls).toBe(3);
    const lp = await flow.logProb(data);
    expect(lp.every(Number.isFinite)).toBe(true);
    // An already aborted signal refuses at once, leaving the weights alone.
    const before = flow.getParameters();
    await expect(fit(flow, data, { signal: controller.signal })).rejects.toMatchObject({ name: 'AbortError' });
    expect(flow.getParameters()).toEqual(before);
  });

  test('an onProgress that throws ends training with the best weights so far and its error', async () => {
    const flow = createMAF({ dim: 2, layers: 2, hidden: [16], seed: 2 });
    const data = standardNormal(1000, 2, { seed: 4 }).map((v) => 1.5 * v + 1);
    const valid: number[] = [];
    const run = fit(flow, data, {
      epochs: 20,
      batchSize: 100,
      validationFraction: 0.2,
      seed: 1,
      onProgress: ({ epoch, validLoss }) => {
        if (!Number.isNaN(validLoss) && valid.length === epoch) valid.push(validLoss);
        if (epoch === 4) throw new Error('boom');
      },
    });
    await expect(run).rejects.toThrow(/boom/);
    expect(valid).toHaveLength(5);
    // The held-out rows are the seed's choice: recompute the best epoch's loss through the report of a twin run.
    const twin = createMAF({ dim: 2, layers: 2, hidden: [16], seed: 2 });
    const report = await fit(twin, data, { epochs: 5, batchSize: 100, validationFraction: 0.2, seed: 1 });
    expect(report.validLoss).toEqual(valid);
    expect(flow.getParameters()).toEqual(twin.getParameters());
    await expect(fit(flow, data, { epochs: 1 })).resolves.toBeDefined(); // no longer claimed
  });

  test('the flow is usable during training and masked entries keep their stored values', async () => {
    const flow = createFlow({ dim: 3, seed: 1, layers: [maf({ hidden: [6] }), reverse(), maf({ hidden: [6] })] });
    const params = flow.getParameters();
    const degrees = flow.config.layers[0].type === 'maf' ? flow.config.layers[0].hiddenDegrees[0] : [];
    const w = params['layers.0.hidden.0.weight'];
    for (let j = 0; j < 6; j++) for (let i = 0; i < 3; i++) if (i + 1 > degrees[j]) w[j * 3 + i] = 123;
    flow.setParameters({ 'layers.0.hidden.0.weight': w });
    const data = standardNormal(500, 3, { seed: 5 }).map((v) => 2 * v + 1);
    let sampled = 0;
    await fit(flow, data, {
      epochs: 3,
      batchSize: 50,
      seed: 2,
      onProgress: async () => {
        const x = await flow.sample(10, { seed: 1 });
        if (x.every(Number.isFinite)) sampled++;
      },
    });
    expect(sampled).toBeGreaterThanOrEqual(3);
    const after = flow.getParameters()['layers.0.hidden.0.weight'];
    for (let j = 0; j < 6; j++) for (let i = 0; i < 3; i++) if (i + 1 > degrees[j]) expect(after[j * 3 + i]).toBe(123);
    expect(after).not.toEqual(w);
  });

  test('refuses flows with nothing to train, and bad options', async () => {
    const data = standardNormal(10, 2, { seed: 1 });
    await expect(fit(createFlow({ dim: 2, layers: [reverse()] }), data)).rejects.toThrow(/no MADE layer/);
    const flow = createMAF({ dim: 2, layers: 1, hidden: [4] });
    await expect(fit(flow, data, { learningrate: 1 } as never)).rejects.toThrow(/Unknown option "learningrate"/);
    await expect(fit(flow, data, { learningRate: -1 })).rejects.toThrow(/positive finite number for options.learningRate/);
    await expect(fit(flow, data, { batchSize: 0 })).rejects.toThrow(/options.batchSize/);
    await expect(fit(flow, data, { patience: 3 })).rejects.toThrow(/patience needs validation data/);
    await expect(fit(flow, data, { validationFraction: 1 })).rejects.toThrow(/validationFraction/);
    await expect(fit(flow, data, { validation: data, validationFraction: 0.5 })).rejects.toThrow(/not both/);
    await expect(fit(flow, new Float32Array(3))).rejects.toThrow(/multiple of 2/);
    await expect(fit(flow, data, { validation: [[1, 2, 3]] })).rejects.toThrow(/options.validation\[0\].length/);
    await expect(fit(flow, data, { signal: {} as AbortSignal })).rejects.toThrow(/AbortSignal/);
    // Holes are refused, not trained on as zeros.
    const sparse = new Array<number[]>(3);
    sparse[2] = [0.5, 0.5];
    await expect(fit(flow, sparse)).rejects.toThrow(/^Expected an array of 2 numbers for data\[0\] but received a hole/);
    await expect(fit(flow, [[0, 0], [0, 0]], { validation: [[0, 0], [1, , ] as number[]] })).rejects.toThrow(/options\.validation\[1\]\[1\] but received a hole/);
    await expect(fit({} as Flow, data)).rejects.toThrow(/Expected a Flow/);
  });

  test('one training at a time per flow', async () => {
    const flow = createMAF({ dim: 2, layers: 1, hidden: [8], seed: 1 });
    const data = standardNormal(2000, 2, { seed: 1 });
    const first = fit(flow, data, { epochs: 3, batchSize: 100 });
    await expect(fit(flow, data, { epochs: 1 })).rejects.toThrow(/already being trained/);
    await first;
    await expect(fit(flow, data, { epochs: 1 })).resolves.toBeDefined();
  });
});

describe('fit on raw data: standardisation, dequantisation, the schedule', () => {
  /** Rows around 1017 (sd 7) and -90 (sd 14.5), correlated: a weather or map column's scale. */
  function rawRows(n: number, seed: number): Float32Array {
    const z = standardNormal(n, 2, { seed });
    const out = new Float32Array(2 * n);
    for (let r = 0; r < n; r++) {
      out[2 * r] = 1017 + 7 * z[2 * r];
      out[2 * r + 1] = -90 + 14.5 * (0.6 * z[2 * r] + 0.8 * z[2 * r + 1]);
    }
    return out;
  }

  test('standardize adds a fixed affine layer (mean, sd) at the data end; training matches training on hand-standardised rows', async () => {
    const n = 600;
    const raw = rawRows(n, 3);
    const make = () => createMAF({ dim: 2, layers: 2, hidden: [16, 16], seed: 7 });
    const flow = make();
    const report = await fit(flow, raw, { epochs: 3, batchSize: 100, seed: 2, standardize: true });
    expect(flow.config.layers).toHaveLength(4);
    expect(flow.config.layers[3]).toEqual({ type: 'affine', trainable: false });
    const mean = [0, 1].map((i) => raw.filter((_, k) => k % 2 === i).reduce((a, b) => a + b, 0) / n);
    const sd = [0, 1].map((i) => Math.sqrt(raw.filter((_, k) => k % 2 === i).reduce((a, b) => a + (b - mean[i]) ** 2, 0) / (n - 1)));
    expect(report.standardization!.loc[0]).toBeCloseTo(mean[0], 2);
    expect(report.standardization!.scale[1]).toBeCloseTo(sd[1], 3);
    expect(Array.from(flow.getParameters()['layers.3.scale'])).toEqual(report.standardization!.scale);

    const byHand = make();
    const standardised = raw.map((v, k) => (v - report.standardization!.loc[k % 2]) / report.standardization!.scale[k % 2]);
    await fit(byHand, standardised, { epochs: 3, batchSize: 100, seed: 2 });
    const logJacobian = Math.log(report.standardization!.scale[0]) + Math.log(report.standardization!.scale[1]);
    const lpRaw = flow.logProbSync(raw.subarray(0, 40));
    const lpStd = byHand.logProbSync(standardised.subarray(0, 40));
    for (let r = 0; r < 20; r++) expect(lpRaw[r]).toBeCloseTo(lpStd[r] - logJacobian, 2);
    // Samples come out in raw units.
    const x = flow.sampleSync(4000, { seed: 1 });
    const sampleMean = x.filter((_, k) => k % 2 === 0).reduce((a, b) => a + b, 0) / 4000;
    expect(Math.abs(sampleMean - 1017)).toBeLessThan(2);
    // A second fit keeps the layer (and says so) instead of stacking another.
    const again = await fit(flow, raw, { epochs: 1, batchSize: 100, seed: 2, standardize: true });
    expect(flow.config.layers).toHaveLength(4);
    expect(again.standardization).toBeNull();
    expect(again.notes.join()).toMatch(/already ends in an affine layer/);
  });

  test('a constant column gets scale 1 and a note; a batch larger than the rows uses the rows and says so', async () => {
    const raw = rawRows(300, 5);
    for (let r = 0; r < 300; r++) raw[2 * r + 1] = 42;
    const flow = createMAF({ dim: 2, layers: 1, hidden: [8], seed: 1 });
    const report = await fit(flow, raw, { epochs: 2, batchSize: 512, seed: 1, standardize: true });
    expect(report.standardization!.scale[1]).toBe(1);
    expect(report.standardization!.loc[1]).toBe(42);
    expect(report.notes.join('\n')).toMatch(/column 1 is constant \(42\) in the training rows: its scale is 1/);
    expect(report.notes.join('\n')).toMatch(/batchSize 512 is larger than the 300 training rows: each step uses all 300 rows/);
    expect(report.batchSize).toBe(300);
    expect(report.steps).toBe(2);
  });

  test('a fit that ends worse than a full-covariance Gaussian says it failed; a good one does not', async () => {
    const raw = rawRows(800, 6);
    // Raw units (1017, -90) and one epoch: nowhere near the data.
    const bad = await fit(createMAF({ dim: 2, layers: 2, hidden: [16, 16], seed: 1 }), raw, { epochs: 1, seed: 1, validationFraction: 0.2 });
    // The Gaussian's NLL of this data: 0.5 log det(2 pi e cov) ~ log(2 pi e) + log(7 * 14.5 * 0.8).
    expect(bad.gaussianValidLoss!).toBeCloseTo(Math.log(2 * Math.PI * Math.E) + Math.log(7 * 14.5 * 0.8), 0);
    expect(bad.warnings.join('\n')).toMatch(/fit failed: the kept weights' validation NLL \(.*\) is worse than a full-covariance Gaussian's on the same rows \(.*\); try standardize: true/);
    const good = await fit(createMAF({ dim: 2, layers: 2, hidden: [16, 16], seed: 1 }), raw, { epochs: 20, seed: 1, validationFraction: 0.2, standardize: true });
    expect(good.warnings).toEqual([]);
    expect(good.validLoss[good.bestEpoch!]).toBeLessThan(good.gaussianValidLoss! + 0.1);
    expect(good.gaussianValidLoss).toBe(bad.gaussianValidLoss);
  });

  test('the default schedule depends on the rows: never one step per epoch on small data', async () => {
    expect(fitSchedule(313)).toEqual({ batchSize: 16, epochs: 500, patience: 75 });
    expect(fitSchedule(10_000)).toEqual({ batchSize: 512, epochs: 500, patience: 75 });
    expect(fitSchedule(1_000_000)).toEqual({ batchSize: 512, epochs: 10, patience: 5 });
    const flow = createMAF({ dim: 2, layers: 1, hidden: [8], seed: 1 });
    const report = await fit(flow, rawRows(313, 2), { epochs: 1, seed: 1, standardize: true });
    expect(report.batchSize).toBe(16);
    expect(report.steps).toBe(20);
  });

  test('dequantize spreads grid data over its cells: the density between grid points is not far below the density on them', async () => {
    // Integers 0..3 in one column, a continuous second column.
    const n = 2000;
    const z = standardNormal(n, 2, { seed: 4 });
    const data = new Float32Array(2 * n);
    for (let r = 0; r < n; r++) {
      data[2 * r] = Math.min(3, Math.floor(Math.abs(z[2 * r]) * 2));
      data[2 * r + 1] = z[2 * r + 1];
    }
    const logDensityOnAndOff = async (dequantize: number[] | undefined) => {
      const flow = createMAF({ dim: 2, layers: 3, hidden: [32, 32], seed: 2 });
      await fit(flow, data, { epochs: 40, batchSize: 100, learningRate: 3e-3, seed: 3, dequantize });
      const on = flow.logProbSync(new Float32Array([1, 0]))[0];
      const off = flow.logProbSync(new Float32Array([1.5, 0]))[0];
      return on - off;
    };
    const spiky = await logDensityOnAndOff(undefined);
    const smooth = await logDensityOnAndOff([1, 0]);
    expect(spiky).toBeGreaterThan(1); // density piles up on the grid
    expect(Math.abs(smooth)).toBeLessThan(1); // spread over the cell
    expect(() => fit(createMAF({ dim: 2, layers: 1, seed: 1 }), data, { dequantize: -1 })).rejects.toThrow(/Expected a finite width >= 0 for options.dequantize but received -1/);
    await expect(fit(createMAF({ dim: 2, layers: 1, seed: 1 }), data, { dequantize: [1] })).rejects.toThrow(/Expected a width >= 0, or an array of 2 of them \(one per column\) for options.dequantize/);
    await expect(fit(createMAF({ dim: 2, layers: 1, seed: 1 }), data, { standardize: 'yes' } as never)).rejects.toThrow(/Expected true or false for options.standardize/);
  });
});

describe('fitReverseKL', () => {
  function identityIAF(dim: number, seed: number): Flow {
    const flow = createIAF({ dim, layers: 3, hidden: [32, 32], seed });
    const params = flow.getParameters();
    // Heads with zero weights, shift 0 and scale exactly 1 (softplus(b) + 1e-3 = 1): the identity.
    for (const [name, value] of Object.entries(params)) {
      if (/(shift|scale)\.weight$/.test(name) || /shift\.bias$/.test(name)) value.fill(0);
      if (/scale\.bias$/.test(name)) value.fill(Math.log(Math.expm1(0.999)));
    }
    flow.setParameters(params);
    return flow;
  }

  test('the loss at the identity is the analytic KL of N(0, I) from a Gaussian, and training drives it near 0', async () => {
    const dim = 2;
    const { target, mean, precision } = gaussianTarget(dim, 5);
    // KL(N(0, I) || N(mean, P^-1)) = 0.5 (tr P + mean' P mean - d - log det P); the target above is
    // unnormalized by exactly log Z = 0.5 d log 2 pi - 0.5 log det P.
    const detP = precision[0][0] * precision[1][1] - precision[0][1] * precision[1][0];
    const quad = mean.reduce((s, mi, i) => s + mi * mean.reduce((t, mj, j) => t + precision[i][j] * mj, 0), 0);
    const logZ = dim * HALF_LOG_2PI - 0.5 * Math.log(detP);
    const kl0 = 0.5 * (precision[0][0] + precision[1][1] + quad - dim - Math.log(detP));
    const flow = identityIAF(dim, 1);
    const z = standardNormal(100000, dim, { seed: 3 });
    const { loss } = await internals.reverseKLGradient(flow, z, target);
    expect(Math.abs(loss + logZ - kl0)).toBeLessThan(0.03);

    const steps: number[] = [];
    const report = await fitReverseKL(flow, { ...target, logZ }, { steps: 600, batchSize: 256, learningRate: 5e-3, seed: 0, onProgress: (p) => void steps.push(p.step) });
    expect(report.steps).toBe(600);
    expect(report.loss).toHaveLength(600);
    expect(report.skippedSteps).toBe(0);
    expect(report.kl).not.toBeNull();
    expect(report.kl!).toBeLessThan(0.05);
    expect(report.elbo).toBeCloseTo(-report.finalLoss, 12);
    expect(steps[steps.length - 1]).toBe(600);
    // An independent estimate from the trained flow's own samples.
    const { x, logProb } = await flow.sampleWithLogProb(20000, { seed: 11 });
    const { value } = (await target.logDensity(x)) as { value: Float32Array };
    let kl = 0;
    for (let r = 0; r < 20000; r++) kl += (logProb[r] - value[r] - logZ) / 20000;
    expect(kl).toBeLessThan(0.05);
  });

  test('reproducible from the seed; a target returning NaN makes skipped steps, not NaN weights', async () => {
    const { target } = gaussianTarget(3, 2);
    const a = createIAF({ dim: 3, layers: 2, hidden: [16], seed: 1 });
    const b = createIAF({ dim: 3, layers: 2, hidden: [16], seed: 1 });
    await fitReverseKL(a, target, { steps: 20, batchSize: 64, seed: 4 });
    await fitReverseKL(b, { dim: 3, logDensity: async (x: Float32Array) => target.logDensity(x) }, { steps: 20, batchSize: 64, seed: 4 });
    expect(b.getParameters()).toEqual(a.getParameters());
    // ema 0 hands over the raw Adam iterate, the default the running average: not the same weights.
    const raw = createIAF({ dim: 3, layers: 2, hidden: [16], seed: 1 });
    await fitReverseKL(raw, target, { steps: 20, batchSize: 64, seed: 4, ema: 0 });
    expect(raw.getParameters()).not.toEqual(a.getParameters());
    // Annealing: a step at beta = 0.5 is a step against the target with half its gradient.
    const halfGrad: Target = {
      dim: 3,
      logDensity(x) {
        const result = target.logDensity(x) as { value: Float32Array; grad: Float32Array };
        return { value: result.value, grad: result.grad.map((g) => g * 0.5) };
      },
    };
    const annealed = createIAF({ dim: 3, layers: 2, hidden: [16], seed: 1 });
    const halved = createIAF({ dim: 3, layers: 2, hidden: [16], seed: 1 });
    const annealedReport = await fitReverseKL(annealed, target, { steps: 1, batchSize: 64, seed: 4, anneal: 1, annealFrom: 0.5 });
    const halvedReport = await fitReverseKL(halved, halfGrad, { steps: 1, batchSize: 64, seed: 4, anneal: 0 });
    expect(annealed.getParameters()).toEqual(halved.getParameters());
    expect(annealedReport.loss[0]).toBe(halvedReport.loss[0]); // reported at beta = 1 either way

    let calls = 0;
    const flaky: Target = {
      dim: 3,
      logDensity(x) {
        const result = target.logDensity(x) as { value: Float32Array; grad: Float32Array };
        if (calls++ % 2 === 1) result.grad[5] = NaN;
        return result;
      },
    };
    const report = await fitReverseKL(a, flaky, { steps: 10, batchSize: 32, seed: 1 });
    expect(report.skippedSteps).toBe(5);
    for (const v of Object.values(a.getParameters())) expect(v.every(Number.isFinite)).toBe(true);
  });

  test('a target that throws ends training with its error; the flow keeps the weights reached', async () => {
    const { target } = gaussianTarget(2, 3);
    const flow = createIAF({ dim: 2, layers: 2, hidden: [8], seed: 1 });
    const before = flow.getParameters();
    let calls = 0;
    const failing: Target = {
      dim: 2,
      logDensity: async (x) => {
        if (++calls === 30) throw new Error('target failed');
        return target.logDensity(x);
      },
    };
    await expect(fitReverseKL(flow, failing, { steps: 100, batchSize: 32, seed: 0 })).rejects.toThrow(/target failed/);
    expect(flow.getParameters()).not.toEqual(before);
    for (const v of Object.values(flow.getParameters())) expect(v.every(Number.isFinite)).toBe(true);
    await expect(fitReverseKL(flow, target, { steps: 2, batchSize: 8 })).resolves.toBeDefined();
  });

  test('abort, and refusals', async () => {
    const { target } = gaussianTarget(2, 1);
    const flow = createIAF({ dim: 2, layers: 2, hidden: [8], seed: 1 });
    const controller = new AbortController();
    const run = fitReverseKL(flow, target, { steps: 1e6, batchSize: 64, signal: controller.signal, onProgress: () => controller.abort() });
    await expect(run).rejects.toMatchObject({ name: 'AbortError' });
    await expect(fitReverseKL(flow, { dim: 3, logDensity: target.logDensity })).rejects.toThrow(/the flow's dim, 2 for target.dim/);
    await expect(fitReverseKL(flow, { dim: 2 } as Target)).rejects.toThrow(/a function for target.logDensity/);
    const wrong: Target = { dim: 2, logDensity: () => ({ value: new Float32Array(1), grad: new Float32Array(2) }) };
    await expect(fitReverseKL(flow, wrong, { steps: 2, batchSize: 4 })).rejects.toThrow(/logDensity\(x\).value.length/);
    await expect(fitReverseKL(flow, target, { steps: 1.5 })).rejects.toThrow(/options.steps/);
    await expect(fitReverseKL(flow, target, { ema: 1 })).rejects.toThrow(/a number in \[0, 1\) for options.ema/);
    await expect(fitReverseKL(flow, target, { anneal: 1.5 })).rejects.toThrow(/a number in \[0, 1\] for options.anneal/);
    await expect(fitReverseKL(flow, target, { annealFrom: 0 })).rejects.toThrow(/options.annealFrom/);
    await expect(fitReverseKL(flow, target, { stickingTheLanding: 1 as never })).rejects.toThrow(/a boolean for options.stickingTheLanding/);
    await expect(distill(flow, createMAF({ dim: 2, layers: 1 }), { forwardKL: -1 })).rejects.toThrow(/options.forwardKL/);
  });
});

describe('distill', () => {
  test('a student IAF learns a MAF teacher natively; the teacher is unchanged', async () => {
    const teacher = createFlow({ dim: 2, seed: 3, layers: [maf({ hidden: [16] }), reverse(), maf({ hidden: [16], scale: 'exp' })] });
    // Random weights of moderate size: a teacher without the heavy tails that reverse KL (mode-seeking) would neglect.
    randomize(teacher, 2, 0.15);
    const teacherParams = teacher.getParameters();
    const student = createIAF({ dim: 2, layers: 3, hidden: [32, 32], seed: 2 });
    // 400 steps are too few to match the map first: plain reverse KL here (match 0).
    const report = await distill(student, teacher, { steps: 400, batchSize: 256, learningRate: 3e-3, seed: 0, match: 0 });
    expect(report.steps).toBe(400);
    expect(report.skippedSteps).toBe(0);
    expect(teacher.getParameters()).toEqual(teacherParams);
    const first = report.loss.slice(0, 20).reduce((a, b) => a + b, 0) / 20;
    expect(report.kl!).toBeLessThan(first / 20);
    // The reported KL agrees with one estimated from the student's own samples...
    const mean = (v: Float32Array) => v.reduce((a, b) => a + b, 0) / v.length;
    const xs = await student.sample(5000, { seed: 4 });
    expect(Math.abs(mean(await student.logProb(xs)) - mean(await teacher.logProb(xs)) - report.kl!)).toBeLessThan(0.01);
    // ...and the student's log-likelihood of the teacher's samples approaches the teacher's own.
    const x = await teacher.sample(5000, { seed: 4 });
    expect(mean(await teacher.logProb(x)) - mean(await student.logProb(x))).toBeLessThan(0.02);
  });

  test('annealing, or the forward-KL term, keeps reverse KL from settling on one mode of a two-mode teacher', async () => {
    // A 2-D teacher with two blobs, at x0 = -2 and x0 = +2, made by a MAF trained briefly.
    const teacher = createMAF({ dim: 2, layers: 3, hidden: [32, 32], seed: 1 });
    const z = standardNormal(4000, 2, { seed: 2 });
    const data = z.map((v, i) => (i % 2 === 1 ? 0 : (i >> 1) % 2 === 0 ? -2 : 2) + 0.3 * v);
    await fit(teacher, data, { epochs: 30, batchSize: 200, learningRate: 3e-3, seed: 0 });
    const rightFraction = async (flow: Flow) => {
      const x = await flow.sample(4000, { seed: 3 });
      let n = 0;
      for (let r = 0; r < 4000; r++) if (x[2 * r] > 0) n++;
      return n / 4000;
    };
    expect(Math.abs((await rightFraction(teacher)) - 0.5)).toBeLessThan(0.1);
    const fractions: Record<string, number[]> = { plain: [], annealed: [], forward: [] };
    for (const seed of [5, 6, 7, 8, 9]) {
      for (const [name, anneal, forwardKL] of [['plain', 0, 0], ['annealed', 0.3, 0], ['forward', 0, 1]] as const) {
        const student = createIAF({ dim: 2, layers: 3, hidden: [32, 32], seed });
        const report = await distill(student, teacher, { steps: 600, batchSize: 256, learningRate: 3e-3, seed: 0, anneal, match: 0, forwardKL });
        fractions[name].push(await rightFraction(student));
        // The forward term trades some reverse KL for coverage.
        if (name !== 'plain') expect(report.kl!).toBeLessThan(name === 'forward' ? 0.5 : 0.35);
      }
    }
    // Annealed or with the forward term, every student keeps both blobs (plain reverse KL may lose
    // one, depending on the start).
    for (const f of [...fractions.annealed, ...fractions.forward]) expect(Math.abs(f - 0.5)).toBeLessThan(0.15);
    await expect(distill(createIAF({ dim: 2, layers: 1 }), teacher, { anneal: 2 })).rejects.toThrow(/\[0, 1\] for options.anneal/);
  });

  test('refuses the student as its own teacher, a student with nothing to train, and different dims', async () => {
    const iafFlow = createIAF({ dim: 2, layers: 1, hidden: [4] });
    await expect(distill(iafFlow, iafFlow)).rejects.toThrow(/a teacher other than the student/);
    await expect(distill(createFlow({ dim: 2, layers: [reverse()] }), iafFlow)).rejects.toThrow(/the student\): the flow has no MADE layer/);
    await expect(distill(iafFlow, createMAF({ dim: 3, layers: 1 }))).rejects.toThrow(/the student's dim, 2 for teacher.dim/);
  });
});

describe('training along a sequential direction (the one-pass inverse and its adjoint)', () => {
  test('an IAF fits data by maximum likelihood as well as a MAF does', async () => {
    // x1 = z1, x2 = 0.8 x1 + 0.6 z2: a Gaussian with covariance det 0.36, entropy log(2 pi e) + 0.5 log 0.36.
    const n = 4000;
    const z = standardNormal(n, 2, { seed: 3 });
    const data = new Float32Array(2 * n);
    for (let r = 0; r < n; r++) {
      data[2 * r] = 1 + z[2 * r];
      data[2 * r + 1] = 0.8 * z[2 * r] + 0.6 * z[2 * r + 1] - 0.5;
    }
    const entropy = Math.log(2 * Math.PI * Math.E) + 0.5 * Math.log(0.36);
    const nll: number[] = [];
    for (const create of [createIAF, createMAF]) {
      const flow = create({ dim: 2, layers: 2, hidden: [16], seed: 1 });
      const report = await fit(flow, data, { epochs: 40, batchSize: 200, learningRate: 3e-3, seed: 0 });
      expect(report.skippedSteps).toBe(0);
      const lp = await flow.logProb(data);
      nll.push(-lp.reduce((a, b) => a + b, 0) / n);
    }
    expect(nll[0]).toBeLessThan(entropy + 0.05);
    expect(Math.abs(nll[0] - nll[1])).toBeLessThan(0.03);
  });

  test('a MAF learns a Gaussian by reverse KL, and a MAF student distils an IAF teacher', async () => {
    const dim = 2;
    const { target, precision } = gaussianTarget(dim, 5);
    const detP = precision[0][0] * precision[1][1] - precision[0][1] * precision[1][0];
    const logZ = dim * HALF_LOG_2PI - 0.5 * Math.log(detP);
    const mafFlow = createMAF({ dim, layers: 2, hidden: [16], seed: 2 });
    const report = await fitReverseKL(mafFlow, { ...target, logZ }, { steps: 800, batchSize: 256, learningRate: 5e-3, seed: 0 });
    expect(report.kl!).toBeLessThan(0.05);

    const teacher = createIAF({ dim, layers: 2, hidden: [16], seed: 4 });
    randomize(teacher, 9, 0.3);
    const student = createMAF({ dim, layers: 2, hidden: [16], seed: 5 });
    const distilled = await distill(student, teacher, { steps: 800, batchSize: 256, learningRate: 5e-3, seed: 1 });
    expect(distilled.kl!).toBeLessThan(0.05);
    // Checked on the teacher's own samples too: the student's density agrees with the teacher's.
    const { x, logProb } = await teacher.sampleWithLogProb(5000, { seed: 6 });
    const studentLp = await student.logProb(x);
    let gap = 0;
    for (let r = 0; r < 5000; r++) gap += (logProb[r] - studentLp[r]) / 5000;
    expect(gap).toBeLessThan(0.08);
  });
});

test('distill scales a teacher score far above its tile\'s median down to 10x the median, direction kept', async () => {
  // A teacher whose density collapses for x0 > 1.5: there the scale of x1 falls to ~1e-3 and the
  // score d log p / dx1 grows to ~1e6 |x1|. Rows of a batch that land there are rare outliers.
  const teacher = createMAF({ dim: 2, layers: 1, hidden: [4], seed: 0 });
  const p = teacher.getParameters();
  for (const value of Object.values(p)) value.fill(0);
  p['layers.0.hidden.0.weight'].set([20, 0]); // unit 0 = relu(20 x0 - 30)
  p['layers.0.hidden.0.bias'][0] = -30;
  p['layers.0.scale.weight'][4] = -1; // raw scale of dim 1 -= unit 0
  p['layers.0.scale.bias'].fill(Math.log(Math.expm1(0.999)));
  teacher.setParameters(p);
  const scores = (x: Float32Array) => internals.logProbGradient(teacher, x);
  // The clipping by hand, in float32 as the core does it: per tile of 32 rows, bound = 10 x the
  // upper median of the row norms.
  let clippedRows = 0;
  const clipped: Target = {
    dim: 2,
    logDensity(x) {
      const { logProb, grad } = scores(x);
      for (let t = 0; t < x.length / 2; t += 32) {
        const n = Math.min(32, x.length / 2 - t);
        const norms = Array.from({ length: n }, (_, r) => Math.fround(Math.hypot(grad[2 * (t + r)], grad[2 * (t + r) + 1])));
        const bound = Math.fround(10 * [...norms].sort((a, b) => a - b)[n >> 1]);
        for (let r = 0; r < n; r++) {
          if (!(norms[r] > bound)) continue;
          const shrink = Math.fround(bound / norms[r]);
          for (let i = 0; i < 2; i++) grad[2 * (t + r) + i] = Math.fround(grad[2 * (t + r) + i] * shrink);
          clippedRows++;
        }
      }
      return { value: logProb, grad };
    },
  };
  const unclipped: Target = { dim: 2, logDensity: (x) => { const { logProb, grad } = scores(x); return { value: logProb, grad }; } };
  const options = { steps: 1, batchSize: 256, seed: 3, learningRate: 1e-2, ema: 0, anneal: 0 };
  const viaDistill = createIAF({ dim: 2, layers: 1, hidden: [4], seed: 1 });
  const byHand = createIAF({ dim: 2, layers: 1, hidden: [4], seed: 1 });
  const raw = createIAF({ dim: 2, layers: 1, hidden: [4], seed: 1 });
  await distill(viaDistill, teacher, { ...options, match: 0, forwardKL: 0 });
  await fitReverseKL(byHand, clipped, options);
  await fitReverseKL(raw, unclipped, options);
  expect(clippedRows).toBeGreaterThan(0);
  expect(viaDistill.getParameters()).toEqual(byHand.getParameters());
  expect(viaDistill.getParameters()).not.toEqual(raw.getParameters());
});

test('distill with map matching: the matching phase pulls the student onto the teacher map, both modes kept', async () => {
  // Two blobs at x0 = -2 and +2: plain reverse KL from a fresh student can lose one.
  const teacher = createMAF({ dim: 2, layers: 3, hidden: [32, 32], seed: 1 });
  const z = standardNormal(4000, 2, { seed: 2 });
  await fit(teacher, z.map((v, i) => (i % 2 === 1 ? 0 : (i >> 1) % 2 === 0 ? -2 : 2) + 0.3 * v), { epochs: 30, batchSize: 200, learningRate: 3e-3, seed: 0 });
  const student = createIAF({ dim: 2, layers: 3, hidden: [32, 32], seed: 7 });
  const report = await distill(student, teacher, { steps: 1500, batchSize: 256, learningRate: 3e-3, seed: 0, match: 0.5, clipGradNorm: 5 });
  // The first reverse-KL step after matching starts from a student close to the teacher.
  expect(report.loss[750]).toBeLessThan(1);
  const x = await student.sample(4000, { seed: 3 });
  let right = 0;
  for (let r = 0; r < 4000; r++) if (x[2 * r] > 0) right++;
  expect(Math.abs(right / 4000 - 0.5)).toBeLessThan(0.1);
  expect(report.kl!).toBeLessThan(0.2);
  await expect(distill(student, teacher, { match: -0.1 })).rejects.toThrow(/\[0, 1\] for options\.match/);
});

describe('long runs and runs that diverge', () => {
  const gaussian: Target = {
    dim: 2,
    logDensity: (x) => ({ value: Float32Array.from({ length: x.length / 2 }, (_, r) => -0.5 * (x[2 * r] ** 2 + x[2 * r + 1] ** 2)), grad: x.map((v) => -v) }),
  };

  test.each(['fitReverseKL', 'distill'])('%s: a billion steps allocate no per-step history, and abort stops them promptly', async (which) => {
    const flow = createIAF({ dim: 2, layers: 2, hidden: [8], seed: 1 });
    const teacher = createMAF({ dim: 2, layers: 1, hidden: [8], seed: 2 });
    const controller = new AbortController();
    const before = process.memoryUsage().arrayBuffers;
    const started = performance.now();
    const options = { steps: 1e9, batchSize: 16, seed: 0, signal: controller.signal };
    const run = which === 'fitReverseKL' ? fitReverseKL(flow, gaussian, options) : distill(flow, teacher, { ...options, match: 0 });
    // Everything the call allocates up front exists once it has returned its promise.
    const grown = process.memoryUsage().arrayBuffers - before;
    expect(performance.now() - started).toBeLessThan(500);
    setTimeout(() => controller.abort(), 150);
    await expect(run).rejects.toMatchObject({ name: 'AbortError' });
    expect(performance.now() - started).toBeLessThan(2000);
    expect(grown).toBeLessThan(16 * 2 ** 20); // an 8 GB Float64Array before
    expect(flow.sampleSync(4, { seed: 1 }).every(Number.isFinite)).toBe(true);
  });

  test('a history past the bound keeps the mean of each group of steps', async () => {
    const run = async (which: 'fitReverseKL' | 'distill', limit: number) => {
      const previous = internals.setLossHistoryLimit(limit);
      try {
        const flow = createIAF({ dim: 2, layers: 2, hidden: [8], seed: 1 });
        const options = { steps: 50, batchSize: 16, seed: 3 };
        return which === 'fitReverseKL'
          ? await fitReverseKL(flow, gaussian, options)
          : await distill(flow, createMAF({ dim: 2, layers: 1, hidden: [8], seed: 2 }), { ...options, match: 0.2 });
      } finally {
        internals.setLossHistoryLimit(previous);
      }
    };
    for (const which of ['fitReverseKL', 'distill'] as const) {
      const full = await run(which, 65536);
      const summary = await run(which, 8);
      expect(full.loss).toHaveLength(50);
      expect(full.lossStride).toBe(1);
      expect(summary.lossStride).toBe(7); // ceil(50 / 8)
      expect(summary.loss).toHaveLength(8); // ceil(50 / 7)
      summary.loss.forEach((mean, j) => {
        const group = Array.from(full.loss.subarray(7 * j, 7 * j + 7)).filter(Number.isFinite);
        expect(group.length).toBeGreaterThan(0);
        expect(mean).toBeCloseTo(group.reduce((a, b) => a + b, 0) / group.length, 10);
      });
      expect(summary.finalLoss).toBe(full.finalLoss);
      expect(full.diverged).toBe(false);
      expect(full.warnings).toEqual([]);
    }
  });

  test('fit, fitReverseKL and distill never hand back weights that give non-finite results', async () => {
    const teacher = createMAF({ dim: 2, layers: 2, hidden: [16], seed: 1 });
    const data = teacher.sampleSync(512, { seed: 2 });
    const runs: [string, Flow, () => Promise<{ diverged: boolean; warnings: string[] }>][] = [];
    const maf1 = createMAF({ dim: 2, layers: 2, hidden: [16], seed: 3 });
    runs.push(['fit', maf1, () => fit(maf1, data, { epochs: 3, learningRate: 1e30, seed: 1 })]);
    const iaf1 = createIAF({ dim: 2, layers: 2, hidden: [16], seed: 4 });
    runs.push(['fitReverseKL', iaf1, () => fitReverseKL(iaf1, gaussian, { steps: 50, batchSize: 32, learningRate: 1e30, seed: 1 })]);
    const iaf2 = createIAF({ dim: 2, layers: 2, hidden: [16], seed: 5 });
    runs.push(['distill', iaf2, () => distill(iaf2, teacher, { steps: 50, batchSize: 32, learningRate: 1e30, seed: 1 })]);
    for (const [what, flow, train] of runs) {
      const before = flow.getParameters();
      const report = await train();
      expect(report.diverged).toBe(true);
      expect(report.warnings).toEqual([expect.stringMatching(new RegExp(`^${what}: the weights reached give non-finite samples or log-densities .*; the flow keeps`))]);
      // The first step already overflows, so the only finite weights are those from before the call.
      expect(flow.getParameters()).toEqual(before);
      const { x, logProb } = flow.sampleWithLogProbSync(256, { seed: 9 });
      expect(x.every(Number.isFinite) && logProb.every(Number.isFinite)).toBe(true);
      expect(flow.logProbSync(data).every(Number.isFinite)).toBe(true);
    }
    // A sane run reports nothing.
    const sane = await fit(maf1, data, { epochs: 2, learningRate: 1e-3, seed: 1 });
    expect(sane.diverged).toBe(false);
    expect(sane.warnings).toEqual([]);
  });
});
