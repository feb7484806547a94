// Conditional flows p(x | c) (issue 13): the context enters every MADE's first hidden layer,
// as zuko does ('linear') or as nflows and sbi do ('activated'). Against the float64 oracle on
// every instruction set and the reference backend, with one context per row and one broadcast,
// and the API's refusals.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Flow, LayerDescriptor, createFlow, distill, fit, fitReverseKL, fitSchedule, iaf, loadFlow, maf, permute, reverse, saveFlow, standardNormal } from '../src/index';
import { native } from '../src/native';
import { __trainingInternals as internals } from '../src/train';
import { expectGradientsClose, finiteDifferences } from './gradients';
import { RefConfig, randomParams, refForward, refInverse, refLogProb } from './reference';
import { expectClose } from './helpers';

// Sanitized builds run slower: scripts/test-asan.js sets this factor for the explicit time limits.
const TIME_SCALE = Number(process.env.IAFLOW_TEST_TIME_SCALE) || 1;

const ISAS = native.kernelInfo().available.split(',');
const BEST_ISA = native.kernelInfo().isa;

function randomize(flow: Flow, seed: number, scale = 0.5): void {
  const params: Record<string, Float32Array> = {};
  for (const [name, value] of Object.entries(randomParams(flow.config as RefConfig, seed, scale))) params[name] = Float32Array.from(value);
  flow.setParameters(params);
}

function params64(flow: Flow): Record<string, Float64Array> {
  return Object.fromEntries(Object.entries(flow.getParameters()).map(([k, v]) => [k, Float64Array.from(v)]));
}


interface Case {
  name: string;
  dim: number;
  context: number;
  layers: () => LayerDescriptor[];
}

const CASES: Case[] = [
  { name: 'zuko-style MAF (linear context) d3 c2', dim: 3, context: 2, layers: () => [maf({ hidden: [16, 16] }), reverse(), maf({ hidden: [16, 16] })] },
  {
    name: 'sbi-style MAF (activated context, tanh) d4 c5, random permutations',
    dim: 4,
    context: 5,
    layers: () => [maf({ hidden: [20, 20, 20], activation: 'tanh', contextForm: 'activated' }), permute({ seed: 2 }), maf({ hidden: [20, 20, 20], activation: 'tanh', contextForm: 'activated' })],
  },
  {
    name: 'IAF and MAF mixed, both forms, elu, gated and exp scales, d5 c3',
    dim: 5,
    context: 3,
    layers: () => [iaf({ hidden: [24], activation: 'elu', scale: 'gated' }), reverse(), maf({ hidden: [18, 12], scale: 'exp', contextForm: 'activated' }), iaf({ hidden: [10], softClamp: 1 })],
  },
  { name: 'residual MADEs with a context d3 c4', dim: 3, context: 4, layers: () => [maf({ hidden: [12, 12, 12], residual: true, contextForm: 'activated' }), reverse(), iaf({ hidden: [12, 12, 12], residual: true })] },
  { name: 'wide: several column blocks d20 c16', dim: 20, context: 16, layers: () => [iaf({ hidden: [40, 33] }), permute({ seed: 1 }), maf({ hidden: [37], contextForm: 'activated', activation: 'tanh' })] },
];

describe.each(ISAS)('conditional flows against the float64 oracle (%s kernels)', (isa) => {
  beforeAll(() => expect(native.selectKernels(isa)).toBe(true));
  afterAll(() => native.selectKernels(BEST_ISA));
  test.each(CASES.flatMap((c) => [[`${c.name}, 150 rows`, c, 150], [`${c.name}, 3 rows`, c, 3]] as const))('%s', async (_name, c, n) => {
    const flow = createFlow({ dim: c.dim, context: c.context, layers: c.layers(), seed: 3 });
    randomize(flow, 11);
    const p = params64(flow);
    const cfg = flow.config as RefConfig;
    const z = standardNormal(n, c.dim, { seed: 5 });
    const contexts = standardNormal(n, c.context, { seed: 6 });
    for (const context of [contexts, contexts.slice(0, c.context)]) {
      const ref = refForward(cfg, p, z, n, context);
      const fwd = await flow.forward(z, { context });
      expectClose(fwd.x, ref.x, 1e-4, 1e-3, 'forward x');
      expectClose(fwd.logDet, ref.logDet, 1e-3, 1e-4, 'forward logDet');
      const x32 = Float32Array.from(ref.x);
      const inv = flow.inverseSync(x32, { context });
      const refInv = refInverse(cfg, p, x32, n, context);
      expectClose(inv.z, refInv.z, 1e-3, 1e-3, 'inverse z');
      expectClose(inv.logDet, refInv.logDet, 1e-3, 1e-4, 'inverse logDet');
      expectClose(await flow.logProb(x32, { context }), refLogProb(cfg, p, x32, n, context), 2e-3, 1e-4, 'logProb');
    }
  });
});

describe('conditional flows: behaviour', () => {
  const make = () => {
    const flow = createFlow({ dim: 3, context: 2, layers: [maf({ hidden: [16, 16] }), reverse(), iaf({ hidden: [16], contextForm: 'activated' })], seed: 1 });
    randomize(flow, 4);
    return flow;
  };

  test('the reference backend agrees; one broadcast context equals that row repeated, bit for bit', () => {
    const flow = make();
    const x = standardNormal(50, 3, { seed: 1 });
    const c = [0.3, -1.2];
    const repeated = Float32Array.from({ length: 100 }, (_, i) => c[i % 2]);
    const lp = flow.logProbSync(x, { context: c });
    expect(Array.from(flow.logProbSync(x, { context: repeated }))).toEqual(Array.from(lp));
    expect(Array.from(flow.logProbSync(x, { context: [c] }))).toEqual(Array.from(lp));
    const reference = flow.referenceRun('toLatent', x, 50, 0, c).logProb;
    expectClose(reference, lp, 1e-4, 1e-4, 'reference backend');
  });

  test('the context matters, and sampling with n contexts gives row i from (seed, row i) given context i', async () => {
    const flow = make();
    const x = standardNormal(20, 3, { seed: 2 });
    const a = flow.logProbSync(x, { context: [0, 0] });
    const b = flow.logProbSync(x, { context: [2, -1] });
    expect(Math.max(...Array.from(a, (v, i) => Math.abs(v - b[i])))).toBeGreaterThan(0.1);
    const contexts = standardNormal(40, 2, { seed: 3 });
    const { x: xs, logProb } = await flow.sampleWithLogProb(40, { seed: 9, context: contexts });
    for (const i of [0, 17, 39]) {
      const one = flow.sampleSync(1, { seed: 9, firstRow: i, context: contexts.subarray(2 * i, 2 * i + 2) });
      expect(Array.from(one)).toEqual(Array.from(xs.subarray(3 * i, 3 * i + 3)));
    }
    // Each sample's log-density, scored at its own context.
    expectClose(flow.logProbSync(xs, { context: contexts }), logProb, 1e-3, 1e-4, 'sample log-density');
  });

  test('a missing, extra or wrongly sized context is a clear error naming the expected width', async () => {
    const flow = make();
    const x = new Float32Array(6);
    expect(() => flow.logProbSync(x)).toThrow(/This flow is conditional: options.context is required, one row of 2 context values \(for every row\) or one per row/);
    await expect(flow.sample(4)).rejects.toThrow(/This flow is conditional: options.context is required/);
    expect(() => flow.logProbSync(x, { context: [1, 2, 3] })).toThrow(/Expected one row of 2 context values \(for every row\), or 2 rows of them \(one per row\) for options.context/);
    expect(() => flow.logProbSync(x, { context: new Float32Array(5) })).toThrow(/options.context.length/);
    expect(() => flow.logProbSync(x, { context: [[1, 2], [3, 4], [5, 6]] })).toThrow(/for options.context but received/);
    expect(() => flow.logProbSync(x, { context: [1, NaN] })).toThrow(/Expected a finite number for options.context\[0\]\[1\] but received NaN/);
    expect(() => flow.sampleSync(3, { seed: 1, context: new Float32Array(4) })).toThrow(/options.context.length/);
    const plain = createFlow({ dim: 2, layers: [maf({ hidden: [4] })], seed: 1 });
    expect(() => plain.logProbSync(new Float32Array(2), { context: [1] })).toThrow(/this flow is not conditional/);
    expect(() => createFlow({ dim: 2, layers: [maf({ contextForm: 'activated' })] })).toThrow(/contextForm: the flow has no context/);
    expect(() => maf({ contextForm: 'added' as never })).toThrow(/Expected one of 'linear', 'activated' for maf\(\).contextForm/);
    expect(() => createFlow({ dim: 2, context: -1, layers: [maf()] })).toThrow(/for context but received -1/);
  });

  test('saved and loaded like every flow: contextDim, the forms and the context tensors', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'iaflow-conditional-'));
    try {
      const flow = make();
      expect(flow.contextDim).toBe(2);
      expect(flow.config.layers[2]).toMatchObject({ type: 'iaf', contextForm: 'activated' });
      expect(flow.parameterShapes()['layers.0.context.weight']).toEqual([16, 2]);
      // Degrees 0..dim-1 (zuko's rule): units of degree 0 see only the context.
      expect((flow.config.layers[0] as { hiddenDegrees: number[][] }).hiddenDegrees[0].slice(0, 4)).toEqual([0, 1, 2, 0]);
      const file = join(dir, 'c.safetensors');
      await saveFlow(flow, file);
      const loaded = await loadFlow(file);
      expect(loaded.config).toEqual(flow.config);
      const x = standardNormal(10, 3, { seed: 4 });
      expect(Array.from(loaded.logProbSync(x, { context: [1, 2] }))).toEqual(Array.from(flow.logProbSync(x, { context: [1, 2] })));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// ---- training: gradients against finite differences of the float64 oracle ----


const SMALL_CASES: Case[] = [
  { name: 'MAF + IAF, linear context, d3 c2', dim: 3, context: 2, layers: () => [maf({ hidden: [7, 6], activation: 'tanh' }), reverse(), iaf({ hidden: [6], scale: 'exp' })] },
  { name: 'IAF + MAF, activated context, elu, d4 c3', dim: 4, context: 3, layers: () => [iaf({ hidden: [8], activation: 'elu', contextForm: 'activated', softClamp: 1.5 }), permute({ seed: 1 }), maf({ hidden: [9, 5], contextForm: 'activated', scale: 'gated' })] },
  { name: 'residual, both forms, d3 c2', dim: 3, context: 2, layers: () => [maf({ hidden: [6, 6, 6], residual: true, contextForm: 'activated', activation: 'tanh' }), reverse(), iaf({ hidden: [5, 5, 5], residual: true })] },
];

describe.each(ISAS)('conditional training gradients against finite differences (%s kernels)', (isa) => {
  beforeAll(() => expect(native.selectKernels(isa)).toBe(true));
  afterAll(() => native.selectKernels(BEST_ISA));

  test.each(SMALL_CASES.map((c) => [c.name, c] as const))('maximum likelihood: %s', (_name, c) => {
    const flow = createFlow({ dim: c.dim, context: c.context, layers: c.layers(), seed: 2 });
    randomize(flow, 7, 0.4);
    const p = params64(flow);
    const cfg = flow.config as RefConfig;
    const n = 6;
    const x = standardNormal(n, c.dim, { seed: 1 });
    const context = standardNormal(n, c.context, { seed: 2 });
    const meanNll = () => -refLogProb(cfg, p, x, n, context).reduce((a, b) => a + b, 0) / n;
    const want = meanNll();
    const expected = finiteDifferences(p, meanNll);
    const { loss, grads } = internals.likelihoodGradient(flow, x, {}, context);
    expect(Math.abs(loss - want)).toBeLessThan(5e-4 + 2e-6 * Math.abs(want));
    expectGradientsClose(grads, expected, 2e-4, 2e-3);
  });

  test.each(SMALL_CASES.map((c) => [c.name, c] as const))('reverse KL: %s', async (_name, c) => {
    const flow = createFlow({ dim: c.dim, context: c.context, layers: c.layers(), seed: 3 });
    randomize(flow, 8, 0.4);
    const p = params64(flow);
    const cfg = flow.config as RefConfig;
    const n = 6;
    const z = standardNormal(n, c.dim, { seed: 3 });
    const context = standardNormal(n, c.context, { seed: 4 });
    // Target: N(x; m(c), I) with m(c)_i = 0.5 c_(i mod C): it reads its rows' contexts.
    const mean = (ctx: ArrayLike<number>, r: number, i: number) => 0.5 * ctx[r * c.context + (i % c.context)];
    const target = {
      dim: c.dim,
      logDensity: (x: Float32Array, ctx?: Float32Array) => {
        const rows = x.length / c.dim;
        const value = new Float32Array(rows);
        const grad = new Float32Array(x.length);
        for (let r = 0; r < rows; r++)
          for (let i = 0; i < c.dim; i++) {
            const d = x[r * c.dim + i] - mean(ctx!, r, i);
            value[r] -= 0.5 * d * d;
            grad[r * c.dim + i] = -d;
          }
        return { value, grad };
      },
    };
    const loss64 = () => {
      const { x, logDet } = refForward(cfg, p, z, n, context);
      let sum = 0;
      for (let r = 0; r < n; r++) {
        let base = 0;
        let target64 = 0;
        for (let i = 0; i < c.dim; i++) {
          base += -0.5 * z[r * c.dim + i] ** 2 - 0.5 * Math.log(2 * Math.PI);
          target64 -= 0.5 * (x[r * c.dim + i] - mean(context, r, i)) ** 2;
        }
        sum += base - logDet[r] - target64;
      }
      return sum / n;
    };
    const want = loss64();
    const expected = finiteDifferences(p, loss64);
    const { loss, grads } = await internals.reverseKLGradient(flow, z, target, {}, false, context);
    expect(Math.abs(loss - want)).toBeLessThan(1e-3 * (1 + Math.abs(want)));
    expectGradientsClose(grads, expected, 3e-4, 3e-3);
  });
});

// ---- posteriors: neural posterior estimation and amortised VI on a linear-Gaussian model ----
// theta ~ N(0, I_3), y = A theta + N(0, 0.3^2 I_5): the posterior p(theta | y) is Gaussian with
// precision P = I + A^T A / s^2 and mean P^-1 A^T y / s^2, so KL to it is exact up to Monte Carlo.


describe('posteriors of a linear-Gaussian simulator (issue 13)', () => {
  const D = 3;
  const C = 5;
  const SIGMA = 0.3;
  const A = Array.from(standardNormal(C, D, { seed: 100 }));
  const simulate = (n: number, seed: number) => {
    const theta = standardNormal(n, D, { seed });
    const noise = standardNormal(n, C, { seed: seed + 1 });
    const y = new Float32Array(n * C);
    for (let r = 0; r < n; r++)
      for (let i = 0; i < C; i++) {
        let s = 0;
        for (let j = 0; j < D; j++) s += A[i * D + j] * theta[r * D + j];
        y[r * C + i] = s + SIGMA * noise[r * C + i];
      }
    return { theta, y };
  };
  const precision = Array.from({ length: D * D }, (_, k) => {
    const i = Math.floor(k / D);
    const j = k % D;
    let s = i === j ? 1 : 0;
    for (let t = 0; t < C; t++) s += (A[t * D + i] * A[t * D + j]) / SIGMA ** 2;
    return s;
  });
  // Cholesky of the precision: P = R R^T; log det P = 2 sum log R_ii; posterior samples mu + R^-T e.
  const R = new Array<number>(D * D).fill(0);
  for (let i = 0; i < D; i++)
    for (let j = 0; j <= i; j++) {
      let s = precision[i * D + j];
      for (let k = 0; k < j; k++) s -= R[i * D + k] * R[j * D + k];
      R[i * D + j] = i === j ? Math.sqrt(s) : s / R[j * D + j];
    }
  const logDetP = 2 * [0, 1, 2].reduce((a, i) => a + Math.log(R[i * D + i]), 0);
  const posteriorMean = (y: ArrayLike<number>) => {
    const b = Array.from({ length: D }, (_, j) => {
      let s = 0;
      for (let t = 0; t < C; t++) s += (A[t * D + j] * y[t]) / SIGMA ** 2;
      return s;
    });
    // Solve P mu = b with R R^T.
    const w = [0, 0, 0];
    for (let i = 0; i < D; i++) w[i] = (b[i] - [0, 1, 2].slice(0, i).reduce((a, k) => a + R[i * D + k] * w[k], 0)) / R[i * D + i];
    const mu = [0, 0, 0];
    for (let i = D - 1; i >= 0; i--) mu[i] = (w[i] - [0, 1, 2].slice(i + 1).reduce((a, k) => a + R[k * D + i] * mu[k], 0)) / R[i * D + i];
    return mu;
  };
  const logPosterior = (theta: ArrayLike<number>, offset: number, mu: number[]) => {
    let q = 0;
    for (let i = 0; i < D; i++) for (let j = 0; j < D; j++) q += (theta[offset + i] - mu[i]) * precision[i * D + j] * (theta[offset + j] - mu[j]);
    return -0.5 * q + 0.5 * logDetP - 0.5 * D * Math.log(2 * Math.PI);
  };
  const samplePosterior = (mu: number[], m: number, seed: number) => {
    const e = standardNormal(m, D, { seed });
    const out = new Float32Array(m * D);
    for (let r = 0; r < m; r++) {
      // theta = mu + R^-T e (back substitution with R^T)
      const v = [0, 0, 0];
      for (let i = D - 1; i >= 0; i--) v[i] = (e[r * D + i] - [0, 1, 2].slice(i + 1).reduce((a, k) => a + R[k * D + i] * v[k], 0)) / R[i * D + i];
      for (let i = 0; i < D; i++) out[r * D + i] = mu[i] + v[i];
    }
    return out;
  };
  const heldOut = simulate(100, 77);
  let npePosterior: Flow | null = null; // the NPE test's flow, the distillation test's teacher

  test('neural posterior estimation: a conditional MAF fitted to 50k pairs is within 0.05 nats of the true posterior (mean KL(p || q) over 100 held-out y)', async () => {
    const { theta, y } = simulate(50_000, 1);
    const flow = createFlow({ dim: D, context: C, seed: 1, layers: [maf({ hidden: [64, 64] }), reverse(), maf({ hidden: [64, 64] }), reverse(), maf({ hidden: [64, 64] })] });
    const report = await fit(flow, { x: theta, context: y }, { seed: 1, validationFraction: 0.1, patience: fitSchedule(45_000).patience });
    expect(report.warnings).toEqual([]);
    npePosterior = flow;
    let kl = 0;
    for (let k = 0; k < 100; k++) {
      const yk = heldOut.y.subarray(k * C, (k + 1) * C);
      const mu = posteriorMean(yk);
      const samples = samplePosterior(mu, 500, 1000 + k);
      const logQ = flow.logProbSync(samples, { context: yk });
      for (let m = 0; m < 500; m++) kl += (logPosterior(samples, m * D, mu) - logQ[m]) / 500 / 100;
    }
    expect(kl).toBeLessThan(0.05);
    expect(kl).toBeGreaterThan(-0.01); // a KL estimate far below 0 would mean a wrong log-density
  }, 120_000 * TIME_SCALE);

  test('conditional distillation: a conditional IAF student of the NPE posterior is within 0.05 nats of it (mean KL(student || teacher) over 100 held-out y)', async () => {
    expect(npePosterior).not.toBeNull();
    const teacher = npePosterior!;
    const student = createFlow({ dim: D, context: C, seed: 2, layers: [iaf({ hidden: [64, 64] }), reverse(), iaf({ hidden: [64, 64] }), reverse(), iaf({ hidden: [64, 64] })] });
    const report = await distill(student, teacher, { steps: 3000, batchSize: 256, seed: 3, context: (step) => simulate(256, 20_000 + 2 * step).y });
    expect(report.warnings).toEqual([]);
    let kl = 0;
    for (let k = 0; k < 100; k++) {
      const yk = heldOut.y.subarray(k * C, (k + 1) * C);
      const { x, logProb } = student.sampleWithLogProbSync(500, { seed: k, context: yk });
      const logTeacher = teacher.logProbSync(x, { context: yk });
      for (let m = 0; m < 500; m++) kl += (logProb[m] - logTeacher[m]) / 500 / 100;
    }
    expect(kl).toBeLessThan(0.05);
    expect(kl).toBeGreaterThan(-0.01);
    await expect(distill(student, createFlow({ dim: D, layers: [maf()], seed: 1 }))).rejects.toThrow(/teacher.contextDim/);
    await expect(distill(student, teacher, { steps: 2 })).rejects.toThrow(/Expected a function \(step\) => the batch's contexts/);
  }, 120_000 * TIME_SCALE);

  test('amortised VI: a conditional IAF fitted by reverse KL to log p(theta) + log p(y | theta) is within 0.05 nats (mean KL(q || p) over 100 held-out y)', async () => {
    const target = {
      dim: D,
      logDensity(x: Float32Array, context?: Float32Array) {
        const n = x.length / D;
        const value = new Float32Array(n);
        const grad = new Float32Array(x.length);
        for (let r = 0; r < n; r++) {
          let v = 0;
          for (let j = 0; j < D; j++) {
            v -= 0.5 * x[r * D + j] ** 2;
            grad[r * D + j] = -x[r * D + j];
          }
          for (let t = 0; t < C; t++) {
            let predicted = 0;
            for (let j = 0; j < D; j++) predicted += A[t * D + j] * x[r * D + j];
            const residual = context![r * C + t] - predicted;
            v -= (0.5 * residual * residual) / SIGMA ** 2;
            for (let j = 0; j < D; j++) grad[r * D + j] += (residual * A[t * D + j]) / SIGMA ** 2;
          }
          value[r] = v;
        }
        return { value, grad };
      },
    };
    const flow = createFlow({ dim: D, context: C, seed: 1, layers: [iaf({ hidden: [64, 64] }), reverse(), iaf({ hidden: [64, 64] }), reverse(), iaf({ hidden: [64, 64] })] });
    // Each step's batch: 256 y drawn from the prior predictive, one per latent draw.
    const report = await fitReverseKL(flow, target, { steps: 5000, batchSize: 256, seed: 1, context: (step) => simulate(256, 10_000 + 2 * step).y });
    expect(report.warnings).toEqual([]);
    let kl = 0;
    for (let k = 0; k < 100; k++) {
      const yk = heldOut.y.subarray(k * C, (k + 1) * C);
      const mu = posteriorMean(yk);
      const { x, logProb } = flow.sampleWithLogProbSync(500, { seed: k, context: yk });
      for (let m = 0; m < 500; m++) kl += (logProb[m] - logPosterior(x, m * D, mu)) / 500 / 100;
    }
    expect(kl).toBeLessThan(0.05);
    expect(kl).toBeGreaterThan(-0.01);
  }, 120_000 * TIME_SCALE);
});
