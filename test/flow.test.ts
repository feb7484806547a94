// The native flow against the float64 oracle (test/reference.ts), plus the
// properties a flow must have whatever its weights: round trips, log-dets
// that match finite-difference Jacobians, the autoregressive property, and
// seeded sampling that does not depend on the thread count.
import {
  Activation,
  Flow,
  FlowConfig,
  LayerDescriptor,
  ScaleKind,
  createFlow,
  createIAF,
  createMAF,
  getThreads,
  affine,
  iaf,
  loadFlow,
  maf,
  permute,
  reverse,
  saveFlow,
  setThreads,
  standardNormal,
} from '../src/index';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../src/native';
import { RefConfig, numericalLogDetJacobian, randomParams, refForward, refInverse, refLogProb } from './reference';

const ACTIVATIONS: Activation[] = ['relu', 'tanh', 'elu'];
const SCALES: ScaleKind[] = ['softplus', 'exp', 'gated'];

/** Gives the flow random (far from identity) float32 weights and returns them for the oracle. */
function randomize(flow: Flow, seed: number, scale = 0.5): Record<string, Float32Array> {
  const params: Record<string, Float32Array> = {};
  for (const [name, value] of Object.entries(randomParams(flow.config as RefConfig, seed, scale))) {
    params[name] = Float32Array.from(value);
  }
  flow.setParameters(params);
  return params;
}

function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, atol: number, rtol: number, what: string) {
  expect(actual.length).toBe(expected.length);
  let worst = 0;
  let worstAt = -1;
  for (let i = 0; i < expected.length; i++) {
    const excess = Math.abs(actual[i] - expected[i]) - (atol + rtol * Math.abs(expected[i]));
    if (Number.isNaN(excess)) throw new Error(`${what}: element ${i} is ${actual[i]}, expected ${expected[i]}`);
    if (excess > worst) {
      worst = excess;
      worstAt = i;
    }
  }
  if (worstAt >= 0) {
    throw new Error(`${what}: element ${worstAt} is ${actual[worstAt]}, expected ${expected[worstAt]} (atol ${atol}, rtol ${rtol})`);
  }
}

function normalRows(n: number, dim: number, seed: number): Float32Array {
  return standardNormal(n, dim, { seed });
}

interface Case {
  name: string;
  dim: number;
  layers: LayerDescriptor[];
}

function cases(): Case[] {
  const out: Case[] = [];
  for (const dim of [1, 2, 5, 16]) {
    for (const activation of ACTIVATIONS) {
      for (const scale of SCALES) {
        out.push({ name: `iaf d${dim} ${activation} ${scale} [12]`, dim, layers: [iaf({ hidden: [12], activation, scale })] });
        out.push({ name: `maf d${dim} ${activation} ${scale} [10,9]`, dim, layers: [maf({ hidden: [10, 9], activation, scale })] });
      }
    }
    out.push({
      name: `mixed stack d${dim}`,
      dim,
      layers: [
        iaf({ hidden: [16, 16], activation: 'tanh' }),
        reverse(),
        maf({ hidden: [12], scale: 'exp', activation: 'elu' }),
        permute({ seed: dim }),
        iaf({ hidden: [8, 8, 8], scale: 'gated' }),
        reverse(),
        maf({ hidden: [20, 10] }),
      ],
    });
  }
  out.push({
    name: 'tight soft clamps (0.5, 2) and none, residual too d6',
    dim: 6,
    layers: [iaf({ hidden: [12, 12], softClamp: 0.5, activation: 'tanh' }), reverse(), maf({ hidden: [10, 10, 10], residual: true, softClamp: 2 }), permute({ seed: 1 }), maf({ hidden: [8], softClamp: 0 })],
  });
  out.push({
    name: 'affine layers (trainable and fixed, scales of both signs) at both ends and between d5',
    dim: 5,
    layers: [affine({ trainable: true }), iaf({ hidden: [12] }), affine(), reverse(), maf({ hidden: [10] }), affine()],
  });
  out.push({
    name: 'random orders and odd hidden degrees d5',
    dim: 5,
    layers: [
      iaf({ hidden: [7, 6], order: [3, 0, 4, 1, 2], hiddenDegrees: [[0, 1, 4, 2, 5, 3, 0], [5, 1, 0, 3, 2, 4]] }),
      maf({ hidden: [9], order: [4, 3, 2, 1, 0] }),
    ],
  });
  return out;
}

// Every instruction set this CPU runs (AVX-512, AVX2, portable) gets the whole comparison.
const ISAS = native.kernelInfo().available.split(',');
const BEST_ISA = native.kernelInfo().isa;

describe.each(ISAS)('native flow matches the float64 oracle (%s kernels)', (isa) => {
  beforeAll(() => expect(native.selectKernels(isa)).toBe(true));
  afterAll(() => native.selectKernels(BEST_ISA));
  // 150 rows: whole tiles plus a short one on every instruction set (tiles of 16, 24 or 64 rows); 3 rows: the one-row path for small batches.
  test.each(cases().flatMap((c) => [[`${c.name}, 150 rows`, c, 150], [`${c.name}, 3 rows`, c, 3]] as const))('%s', async (_name, c, n) => {
    const flow = createFlow({ dim: c.dim, layers: c.layers, seed: 3 });
    const params = randomize(flow, 11);
    const cfg = flow.config as RefConfig;
    const z = normalRows(n, c.dim, 5);

    const ref = refForward(cfg, params, z, n);
    const fwd = await flow.forward(z);
    expectClose(fwd.x, ref.x, 1e-4, 1e-3, 'forward x');
    expectClose(fwd.logDet, ref.logDet, 1e-3, 1e-4, 'forward logDet');

    // Invert the float32 data the oracle produced (data rounded to float32 first, for both).
    const x32 = Float32Array.from(ref.x);
    const refInv = refInverse(cfg, params, x32, n);
    const inv = flow.inverseSync(x32);
    expectClose(inv.z, refInv.z, 1e-3, 1e-3, 'inverse z');
    expectClose(inv.logDet, refInv.logDet, 1e-3, 1e-4, 'inverse logDet');

    const lp = await flow.logProb(x32);
    expectClose(lp, refLogProb(cfg, params, x32, n), 2e-3, 1e-4, 'logProb');
  });
});

describe('properties of the native flow', () => {
  test('inverse(forward(z)) recovers z, and the log-dets are opposite', () => {
    for (const dim of [1, 3, 16]) {
      const flow = createFlow({ dim, seed: 1, layers: [iaf({ hidden: [32, 32] }), reverse(), maf({ hidden: [24] }), permute({ seed: 2 }), iaf({ hidden: [16] })] });
      randomize(flow, 4, 0.4);
      const z = normalRows(200, dim, 9);
      const { x, logDet } = flow.forwardSync(z);
      const back = flow.inverseSync(x);
      expectClose(back.z, z, 1e-4, 1e-4, 'round trip');
      expectClose(back.logDet, logDet.map((v) => -v), 1e-4, 1e-4, 'log-det sign');
    }
  });

  test('log|det| equals the log-determinant of a finite-difference Jacobian', () => {
    for (const activation of ACTIVATIONS) {
      for (const scale of SCALES) {
        const dim = 4;
        const flow = createFlow({ dim, seed: 2, layers: [iaf({ hidden: [16, 16], activation, scale }), reverse(), maf({ hidden: [16], activation, scale })] });
        randomize(flow, 21, 0.4);
        const z = normalRows(3, dim, 13);
        const { logDet } = flow.forwardSync(z);
        const { logDet: inverseLogDet } = flow.inverseSync(flow.forwardSync(z).x);
        for (let r = 0; r < 3; r++) {
          const at = Float64Array.from(z.subarray(r * dim, (r + 1) * dim));
          const through = (v: Float64Array) => Float64Array.from(flow.forwardSync(Float32Array.from(v)).x);
          // float32 evaluation: a wide step keeps rounding noise (~1e-7 / h) small.
          const numeric = numericalLogDetJacobian(through, at, 1e-2);
          expect(Math.abs(numeric - logDet[r])).toBeLessThan(2e-2);
          expect(Math.abs(numeric + inverseLogDet[r])).toBeLessThan(2e-2);
        }
      }
    }
  });

  test('autoregressive: a single IAF layer output i never changes when inputs at or after i change', () => {
    const dim = 6;
    const order = [2, 5, 0, 3, 1, 4]; // rank of each dimension
    // tanh: no unit is ever exactly dead, so every allowed dependence shows.
    const flow = createFlow({ dim, seed: 3, layers: [iaf({ hidden: [20, 20], order, activation: 'tanh' })] });
    randomize(flow, 8);
    const base = normalRows(1, dim, 1);
    const x0 = flow.forwardSync(base).x;
    for (let j = 0; j < dim; j++) {
      const moved = base.slice();
      moved[j] += 0.75;
      const x1 = flow.forwardSync(moved).x;
      for (let i = 0; i < dim; i++) {
        // x_i depends on z_j only if j comes strictly before i in the order, or j = i.
        if (order[j] >= order[i] && j !== i) expect(x1[i]).toBe(x0[i]);
        if (order[j] < order[i]) expect(x1[i]).not.toBe(x0[i]);
      }
    }
  });

  test('logProb of IAF samples equals the log-probability sampleWithLogProb returned', async () => {
    const flow = createIAF({ dim: 5, layers: 3, hidden: [32, 32], seed: 4 });
    randomize(flow, 6, 0.4);
    const { x, logProb } = await flow.sampleWithLogProb(500, { seed: 42 });
    expectClose(await flow.logProb(x), logProb, 2e-4, 1e-4, 'logProb of samples');
  });

  test('sample(n, seed) is forward(standardNormal(n, seed)) and sampleWithLogProb draws the same x', async () => {
    const flow = createMAF({ dim: 3, layers: 2, hidden: [16], seed: 5 });
    randomize(flow, 7, 0.4);
    const x = await flow.sample(100, { seed: 99 });
    expect(Array.from(flow.forwardSync(standardNormal(100, 3, { seed: 99 })).x)).toEqual(Array.from(x));
    expect(Array.from((await flow.sampleWithLogProb(100, { seed: 99 })).x)).toEqual(Array.from(x));
  });

  test('samples and densities match the oracle from the same latent draws', () => {
    const flow = createFlow({ dim: 4, seed: 8, layers: [maf({ hidden: [16] }), reverse(), iaf({ hidden: [16] })] });
    const params = randomize(flow, 12, 0.4);
    const { x, logProb } = flow.sampleWithLogProbSync(64, { seed: 3 });
    const ref = refForward(flow.config as RefConfig, params, standardNormal(64, 4, { seed: 3 }), 64);
    expectClose(x, ref.x, 1e-4, 1e-3, 'samples');
    expectClose(logProb, refLogProb(flow.config as RefConfig, params, ref.x, 64), 2e-3, 1e-4, 'sample log-density');
  });
});

describe('seeded sampling', () => {
  const original = getThreads();
  afterAll(() => setThreads(original));

  test('same seed gives the same samples at 1, 2 and 3 threads; different seeds differ', async () => {
    const flow = createFlow({ dim: 7, seed: 1, layers: [iaf({ hidden: [32] }), reverse(), maf({ hidden: [32] })] });
    randomize(flow, 2, 0.4);
    const results: Float32Array[] = [];
    for (const threads of [1, 2, 3]) {
      setThreads(threads);
      expect(getThreads()).toBe(threads);
      results.push((await flow.sampleWithLogProb(5000, { seed: 1234 })).x);
    }
    expect(Buffer.from(results[1].buffer).equals(Buffer.from(results[0].buffer))).toBe(true);
    expect(Buffer.from(results[2].buffer).equals(Buffer.from(results[0].buffer))).toBe(true);
    // A prefix of a batch is the batch of the prefix: rows are addressed, not streamed.
    expect(Array.from(flow.sampleSync(10, { seed: 1234 }))).toEqual(Array.from(results[0].subarray(0, 70)));
    const other = flow.sampleSync(5000, { seed: 1235 });
    let same = 0;
    for (let i = 0; i < other.length; i++) if (other[i] === results[0][i]) same++;
    expect(same).toBeLessThan(10);
  });

  test('the latent stream is standard normal (moments, fixed seed)', () => {
    const z = standardNormal(100000, 3, { seed: 7 });
    let sum = 0, sumSq = 0, sumFourth = 0;
    for (const v of z) { sum += v; sumSq += v * v; sumFourth += v ** 4; }
    const m = z.length;
    expect(Math.abs(sum / m)).toBeLessThan(0.01);
    expect(Math.abs(sumSq / m - 1)).toBeLessThan(0.01);
    expect(Math.abs(sumFourth / m - 3)).toBeLessThan(0.05);
  });

  test('a fresh flow starts near the identity', () => {
    for (const scale of SCALES) {
      const flow = createFlow({ dim: 6, seed: 9, layers: [iaf({ scale }), reverse(), maf({ scale })] });
      const z = normalRows(50, 6, 1);
      const { x } = flow.forwardSync(z);
      for (let r = 0; r < 50; r++) {
        for (let i = 0; i < 6; i++) {
          // gated starts at scale sigmoid(2): the IAF multiplies by it and the MAF, sampling, divides by it.
          const expected = z[r * 6 + (5 - i)];
          // Heads start at 0.3 of PyTorch's bound: each layer moves a point a little, never far.
          expect(Math.abs(x[r * 6 + i] - expected)).toBeLessThan(0.3 * (1 + Math.abs(expected)));
        }
      }
    }
  });
});

describe('async calls', () => {
  test('run off the event loop: timers fire while a large batch is sampled', async () => {
    const flow = createIAF({ dim: 16, layers: 3, hidden: [128, 128], seed: 1 });
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const started = Date.now();
    await flow.sample(100000, { seed: 1 });
    const elapsed = Date.now() - started;
    clearInterval(timer);
    if (elapsed > 20) expect(ticks).toBeGreaterThan(0);
  });

  test('setParameters during an async call does not affect the call in flight', async () => {
    const flow = createIAF({ dim: 4, layers: 2, hidden: [16], seed: 1 });
    const z = normalRows(20000, 4, 2);
    const expected = flow.forwardSync(z).x;
    const pending = flow.forward(z);
    randomize(flow, 3);
    expect(Array.from((await pending).x)).toEqual(Array.from(expected));
  });

  test('the input may be changed right after an async call starts', async () => {
    const flow = createIAF({ dim: 4, layers: 2, hidden: [16], seed: 1 });
    const z = normalRows(20000, 4, 2);
    const expected = flow.forwardSync(z).x;
    const pending = flow.forward(z);
    z.fill(0);
    expect(Array.from((await pending).x)).toEqual(Array.from(expected));
  });
});

describe('parameters', () => {
  test('getParameters returns named copies with the model-file shapes', () => {
    const flow = createFlow({ dim: 3, seed: 1, layers: [iaf({ hidden: [5, 4] }), reverse(), maf({ hidden: [6] })] });
    const params = flow.getParameters();
    const shapes = flow.parameterShapes();
    expect(Object.keys(params).sort()).toEqual(Object.keys(shapes).sort());
    expect(shapes['layers.0.hidden.0.weight']).toEqual([5, 3]);
    expect(shapes['layers.0.hidden.1.weight']).toEqual([4, 5]);
    expect(shapes['layers.0.shift.weight']).toEqual([3, 4]);
    expect(shapes['layers.2.scale.bias']).toEqual([3]);
    expect(shapes['layers.1.hidden.0.weight']).toBeUndefined(); // the reverse has no parameters
    const original = params['layers.0.shift.bias'][0];
    params['layers.0.shift.bias'][0] = 123;
    expect(flow.getParameters()['layers.0.shift.bias'][0]).toBe(original);
    expect(flow.numParameters).toBe(Object.values(params).reduce((a, p) => a + p.length, 0));
  });

  test('the same seed initialises the same parameters; masked entries start at zero', () => {
    const make = (seed: number) => createFlow({ dim: 4, seed, layers: [iaf({ hidden: [8] })] }).getParameters();
    expect(make(5)).toEqual(make(5));
    expect(make(5)['layers.0.hidden.0.weight']).not.toEqual(make(6)['layers.0.hidden.0.weight']);
    const w = make(5)['layers.0.hidden.0.weight']; // [8, 4], hidden degrees (j mod 3) + 1
    for (let j = 0; j < 8; j++) for (let i = 0; i < 4; i++) if (i + 1 > (j % 3) + 1) expect(w[j * 4 + i]).toBe(0);
  });

  test('values at masked positions are ignored', () => {
    const flow = createFlow({ dim: 3, seed: 1, layers: [iaf({ hidden: [6] })] });
    randomize(flow, 1);
    const z = normalRows(10, 3, 1);
    const before = flow.forwardSync(z).x;
    const w = flow.getParameters()['layers.0.hidden.0.weight'];
    const degrees = flow.config.layers[0].type === 'iaf' ? flow.config.layers[0].hiddenDegrees[0] : [];
    for (let j = 0; j < 6; j++) for (let i = 0; i < 3; i++) if (i + 1 > degrees[j]) w[j * 3 + i] = 1e6;
    flow.setParameters({ 'layers.0.hidden.0.weight': w });
    expect(Array.from(flow.forwardSync(z).x)).toEqual(Array.from(before));
  });

  test('config is frozen and describes the layers', () => {
    const flow = createFlow({ dim: 3, seed: 1, layers: [iaf({ hidden: 8 }), permute([2, 0, 1]), maf({ order: [2, 1, 0] })] });
    const config: FlowConfig = flow.config;
    expect(config.layers[1]).toEqual({ type: 'permutation', permutation: [2, 0, 1] });
    expect(config.layers[2]).toMatchObject({ type: 'maf', inputDegrees: [3, 2, 1], hidden: [64, 64] });
    expect(Object.isFrozen(config.layers[0])).toBe(true);
  });
});

describe('the soft clamp of the conditioner inputs', () => {
  test('an input far outside the data leaves the conditioner where the clamp bound puts it (without the clamp, it extrapolates)', () => {
    // One MAF layer on 2-D: z2 = (x2 - shift(x1)) / scale(x1). With c = 1 the conditioner reads
    // about 1 for x1 = 1e3 and for x1 = 1e4 alike.
    const run = (softClamp: number) => {
      const flow = createFlow({ dim: 2, seed: 5, layers: [maf({ hidden: [16, 16], softClamp })] });
      randomize(flow, 3);
      const z = flow.inverseSync(new Float32Array([1e3, 0.5, 1e4, 0.5])).z;
      return Math.abs(z[3] - z[1]);
    };
    expect(run(1)).toBeLessThan(1e-2);
    expect(run(0)).toBeGreaterThan(10);
  });

  test('softClamp is stored in the config (absent when 0) and checked', () => {
    expect(createFlow({ dim: 2, seed: 1, layers: [iaf({ hidden: [4] })] }).config.layers[0]).toMatchObject({ softClamp: 4 });
    expect(createFlow({ dim: 2, seed: 1, layers: [iaf({ hidden: [4], softClamp: 0 })] }).config.layers[0]).not.toHaveProperty('softClamp');
    expect(createMAF({ dim: 2, layers: 1, seed: 1, softClamp: 2.5 }).config.layers[0]).toMatchObject({ softClamp: 2.5 });
    expect(() => iaf({ softClamp: -1 })).toThrow(/Expected a finite number >= 0 \(0: off\) for iaf\(\).softClamp but received -1/);
    expect(() => maf({ softClamp: Infinity })).toThrow(/for maf\(\).softClamp but received Infinity/);
  });
});

describe('affine layers', () => {
  test('affine({ loc, scale }) at the data end maps samples to loc + scale * x and counts the Jacobian in logProb', () => {
    const layers = () => [iaf({ hidden: [8] }), reverse(), maf({ hidden: [8] })];
    const inner = createFlow({ dim: 3, seed: 4, layers: layers() });
    const loc = [1017, -90, 0.5];
    const scale = [7.5, -14.5, 0.01];
    const outer = createFlow({ dim: 3, seed: 4, layers: [...layers(), affine({ loc, scale })] });
    expect(outer.parameterShapes()['layers.3.loc']).toEqual([3]);
    expect(Array.from(outer.getParameters()['layers.3.scale'])).toEqual(scale.map(Math.fround));
    const y = inner.sampleSync(50, { seed: 9 });
    const x = outer.sampleSync(50, { seed: 9 });
    for (let i = 0; i < x.length; i++) expect(x[i]).toBeCloseTo(loc[i % 3] + scale[i % 3] * y[i], 2);
    const logJacobian = scale.reduce((sum, s) => sum + Math.log(Math.abs(s)), 0);
    const inner64 = inner.logProbSync(y);
    const outer64 = outer.logProbSync(x);
    for (let r = 0; r < 50; r++) expect(outer64[r]).toBeCloseTo(inner64[r] - logJacobian, 2);
    // sampleWithLogProb agrees with scoring its own samples.
    const both = outer.sampleWithLogProbSync(50, { seed: 9 });
    for (let r = 0; r < 50; r++) expect(both.logProb[r]).toBeCloseTo(outer64[r], 2);
  });

  test('bad loc and scale are refused with the expected form named', () => {
    expect(() => affine({ scale: 0 })).toThrow(/Expected a finite nonzero number \(in float32\) for affine\(\).scale but received 0/);
    expect(() => affine({ loc: [1, NaN] })).toThrow(/affine\(\).loc\[1\]/);
    expect(() => affine({ scale: '2' } as never)).toThrow(/Expected a finite nonzero number.* for affine\(\).scale but received the string "2"/);
    expect(() => affine({ trainable: 1 } as never)).toThrow(/Expected true or false for affine\(\).trainable/);
    expect(() => affine({ shift: 1 } as never)).toThrow(/Unknown option "shift" in affine\(\) options/);
    expect(() => createFlow({ dim: 3, layers: [affine({ loc: [1, 2] })] })).toThrow(/Expected 3 \(the flow's dim\) or one number for layers\[0\].loc.length but received 2/);
    const flow = createFlow({ dim: 2, seed: 1, layers: [iaf({ hidden: [4] }), affine()] });
    expect(() => flow.setParameters({ 'layers.1.scale': [1, 0] })).toThrow(/Expected a finite nonzero scale for parameters\["layers.1.scale"\]\[1\] but received 0/);
    expect(flow.config.layers[1]).toEqual({ type: 'affine', trainable: false });
  });

  test('saved and loaded like every layer', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'iaflow-affine-'));
    try {
      const flow = createFlow({ dim: 2, seed: 2, layers: [affine({ loc: [1, 2], scale: [3, -4], trainable: true }), maf({ hidden: [6] }), affine({ loc: 5, scale: 0.5 })] });
      const file = join(dir, 'affine.safetensors');
      await saveFlow(flow, file);
      const loaded = await loadFlow(file);
      expect(loaded.config).toEqual(flow.config);
      expect(loaded.getParameters()).toEqual(flow.getParameters());
      const x = flow.sampleSync(20, { seed: 1 });
      expect(Array.from(loaded.logProbSync(x))).toEqual(Array.from(flow.logProbSync(x)));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the one-pass sequential direction against the simple dim-pass path (second oracle)', () => {
  test.each([1, 2, 7, 33])('dim %i: both directions, every layer kind', (dim) => {
    const flow = createFlow({
      dim,
      seed: 1,
      layers: [iaf({ hidden: [24, 24], activation: 'tanh' }), permute({ seed: 5 }), maf({ hidden: [40], scale: 'gated' }), reverse(), iaf({ hidden: [16], scale: 'exp', activation: 'elu' })],
    });
    randomize(flow, 17, 0.4);
    const n = 45;
    const z = normalRows(n, dim, 4);
    const fast = flow.forwardSync(z);
    const simple = flow.referenceRun('toData', z, n);
    expectClose(fast.x, simple.points, 1e-4, 1e-3, 'forward');
    expectClose(fast.logDet, simple.logDet, 1e-3, 1e-4, 'forward logDet');
    const back = flow.inverseSync(fast.x);
    const backSimple = flow.referenceRun('toLatent', fast.x, n);
    expectClose(back.z, backSimple.points, 1e-4, 1e-3, 'inverse');
    expectClose(back.logDet, backSimple.logDet, 1e-3, 1e-4, 'inverse logDet');
    const sampled = flow.sampleWithLogProbSync(n, { seed: 8 });
    const sampledSimple = flow.referenceRun('toData', null, n, 8);
    expectClose(sampled.x, sampledSimple.points, 1e-4, 1e-3, 'sample');
    expectClose(sampled.logProb, sampledSimple.logProb, 1e-3, 1e-4, 'sample logProb');
  });
});

describe('residual MADE blocks (nflows style)', () => {
  test.each([1, 2, 5])('dim %i: oracle, both directions, small and tiled batches, simple path', (dim) => {
    const flow = createFlow({
      dim,
      seed: 2,
      layers: [
        maf({ hidden: [12, 12, 12], residual: true }),
        reverse(),
        iaf({ hidden: [10, 10, 10, 10, 10], residual: true, activation: 'tanh', scale: 'exp' }),
        permute({ seed: 1 }),
        maf({ hidden: [8, 8, 8], residual: true, activation: 'elu', scale: 'gated' }),
      ],
    });
    // Residual streams compound: a smaller weight scale keeps every value inside float32's range.
    const params = randomize(flow, 23, 0.25);
    const cfg = flow.config as RefConfig;
    for (const n of [3, 150]) {
      const z = normalRows(n, dim, 6);
      const ref = refForward(cfg, params, z, n);
      const fwd = flow.forwardSync(z);
      expectClose(fwd.x, ref.x, 1e-4, 1e-3, 'forward x');
      expectClose(fwd.logDet, ref.logDet, 1e-3, 1e-4, 'forward logDet');
      const x32 = Float32Array.from(ref.x);
      const inv = flow.inverseSync(x32);
      expectClose(inv.z, refInverse(cfg, params, x32, n).z, 1e-3, 1e-3, 'inverse z');
      expectClose(flow.logProbSync(x32), refLogProb(cfg, params, x32, n), 2e-3, 1e-4, 'logProb');
      expectClose(flow.referenceRun('toLatent', x32, n).points, inv.z, 1e-4, 1e-3, 'simple path inverse');
      expectClose(flow.referenceRun('toData', z, n).points, fwd.x, 1e-4, 1e-3, 'simple path forward');
    }
  });

  test('a fresh residual flow starts near the identity, and bad residual shapes are refused', () => {
    const flow = createFlow({ dim: 3, seed: 1, layers: [maf({ hidden: [16, 16, 16], residual: true })] });
    const z = normalRows(20, 3, 2);
    expectClose(flow.forwardSync(z).x, z, 0.3, 0.3, 'near identity');
    expect(() => maf({ hidden: [16, 16], residual: true })).toThrow(/one width repeated 1 \+ 2 \* blocks times/);
    expect(() => maf({ hidden: [16, 8, 16], residual: true })).toThrow(/one width repeated/);
    expect(() => maf({ hidden: [4, 4, 4], residual: 'yes' as unknown as boolean })).toThrow(/Expected true or false for maf\(\)\.residual/);
    expect(() =>
      createFlow({ dim: 3, seed: 1, layers: [maf({ hidden: [3, 3, 3], residual: true, hiddenDegrees: [[1, 2, 2], [1, 2, 1], [1, 2, 2]] })] }),
    ).toThrow(/the same degrees as hidden layer 0/);
  });
});

describe('the soft clamp at the edges of float32', () => {
  test('values that are not a finite float32 with a finite reciprocal are refused, in the builder and in a config', () => {
    for (const bad of [1e39, 1e-46, -0.5, NaN]) {
      expect(() => maf({ softClamp: bad })).toThrow(/Expected a finite number >= 0 \(0: off\) for maf\(\).softClamp/);
    }
    expect(createFlow({ dim: 2, seed: 1, layers: [maf({ hidden: [4], softClamp: 3e38 })] }).config.layers[0]).toMatchObject({ softClamp: Math.fround(3e38) });
  });
});
