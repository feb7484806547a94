// importTorch for conditional flows (issue 13): zuko's conditional MAF, nflows' conditional MAF
// as sbi's build_maf stacks it, and sbi's own estimator files (prefix `net.`, z-scoring of x and of
// the context). Checked against what PyTorch computed for the fixtures (test/fixtures/torch), with
// negative controls that show the checks can fail.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Flow, importTorch, loadFlow, saveFlow } from '../src/index';
import { decodeSafetensors, encodeSafetensors, Tensor } from '../src/safetensors';
import { RefConfig, refLogProb } from './reference';

const fixtures = join(__dirname, 'fixtures/torch');

interface ConditionalFixture {
  features: number;
  context_features: number;
  activation: 'relu' | 'tanh';
  inputs: number[][];
  context: number[][];
  shared_context_rows: number[];
  log_prob: number[];
  log_prob_rolled_context: number[];
  noise: number[][];
}

const CASES = [
  { name: 'zuko-cmaf-d3-c2', from: 'zuko-maf', form: 'linear' },
  { name: 'nflows-cmaf-d3-c4', from: 'nflows-maf', form: 'activated' },
] as const;

function fixture(name: string): ConditionalFixture {
  return JSON.parse(readFileSync(join(fixtures, `${name}.json`), 'utf8')) as ConditionalFixture;
}

function tensorsOf(name: string): Map<string, Tensor> {
  return decodeSafetensors(readFileSync(join(fixtures, `${name}.safetensors`))).tensors;
}

/** Largest |actual[i] - expected[i]|. */
function maxError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  expect(actual.length).toBe(expected.length);
  let worst = 0;
  for (let i = 0; i < expected.length; i++) worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
  return worst;
}

function params64(flow: Flow): Record<string, Float64Array> {
  return Object.fromEntries(Object.entries(flow.getParameters()).map(([k, v]) => [k, Float64Array.from(v)]));
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'iaflow-cimport-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function save(name: string, tensors: Map<string, Tensor>): string {
  const file = join(dir, name);
  writeFileSync(file, encodeSafetensors(tensors));
  return file;
}

describe.each(CASES)('importTorch, conditional: $name', ({ name, from, form }) => {
  const ref = fixture(name);
  const file = join(fixtures, `${name}.safetensors`);
  let flow: Flow;
  beforeAll(async () => {
    flow = await importTorch(file, { from, activation: ref.activation });
  });

  test('maps to a conditional flow of the right width and context form', () => {
    expect(flow.dim).toBe(ref.features);
    expect(flow.contextDim).toBe(ref.context_features);
    const mades = flow.config.layers.filter((l) => l.type === 'maf');
    expect(mades.length).toBe(2);
    for (const layer of mades) expect(layer).toMatchObject({ contextForm: form, activation: ref.activation });
  });

  test('log p(x | c) of every row matches PyTorch to 1e-5 (one context row per row)', async () => {
    const logProb = await flow.logProb(ref.inputs, { context: ref.context });
    expect(maxError(logProb, ref.log_prob)).toBeLessThan(1e-5);
    // The float64 oracle on the imported weights reproduces torch's float64 numbers almost exactly:
    // the mapping itself is exact, what is left above is float32 arithmetic.
    const exact = refLogProb(flow.config as RefConfig, params64(flow), ref.inputs.flat(), ref.inputs.length, ref.context.flat());
    expect(maxError(exact, ref.log_prob)).toBeLessThan(1e-9);
  });

  test('rows 12-15 with ONE broadcast context row give the same numbers', async () => {
    const rows = ref.shared_context_rows;
    expect(rows).toEqual([12, 13, 14, 15]);
    const shared = ref.context[rows[0]];
    for (const r of rows) expect(ref.context[r]).toEqual(shared);
    const logProb = await flow.logProb(rows.map((r) => ref.inputs[r]), { context: shared });
    expect(maxError(logProb, rows.map((r) => ref.log_prob[r]))).toBeLessThan(1e-5);
  });

  test("each row given the previous row's context matches log_prob_rolled_context (the wiring is right)", async () => {
    const rolled = ref.context.map((_, k) => ref.context[(k + ref.context.length - 1) % ref.context.length]);
    const logProb = await flow.logProb(ref.inputs, { context: rolled });
    expect(maxError(logProb, ref.log_prob_rolled_context)).toBeLessThan(1e-5);
    // And the two lists differ by far more than the tolerance: the context matters in this file.
    expect(maxError(ref.log_prob_rolled_context, ref.log_prob)).toBeGreaterThan(0.1);
  });

  test('the latents match torch, and sampling (the sequential direction) inverts the density direction', async () => {
    const { z } = await flow.inverse(ref.inputs, { context: ref.context });
    expect(maxError(z, ref.noise.flat())).toBeLessThan(1e-4);
    const { x } = await flow.forward(z, { context: ref.context });
    expect(maxError(x, ref.inputs.flat())).toBeLessThan(1e-3);
  });

  test('the imported flow saves and loads with its context', async () => {
    const saved = join(dir, `${name}-imported.safetensors`);
    await saveFlow(flow, saved);
    const loaded = await loadFlow(saved);
    expect(loaded.contextDim).toBe(ref.context_features);
    expect(Array.from(loaded.logProbSync(ref.inputs, { context: ref.context }))).toEqual(Array.from(flow.logProbSync(ref.inputs, { context: ref.context })));
  });

  describe('negative controls: a wrong import does not match', () => {
    test('the other activation', async () => {
      const wrong = await importTorch(file, { from, activation: ref.activation === 'tanh' ? 'relu' : 'tanh' });
      expect(maxError(await wrong.logProb(ref.inputs, { context: ref.context }), ref.log_prob)).toBeGreaterThan(0.1);
    });

    test('the other context form (the same weights)', async () => {
      const other = form === 'linear' ? 'activated' : 'linear';
      const config = { ...flow.config, layers: flow.config.layers.map((l) => (l.type === 'maf' ? { ...l, contextForm: other } : l)) };
      const wrong = new Flow(config as typeof flow.config, new Map(Object.entries(flow.getParameters())));
      expect(maxError(await wrong.logProb(ref.inputs, { context: ref.context }), ref.log_prob)).toBeGreaterThan(0.1);
    });

    test('a zero context', async () => {
      const zero = new Array<number>(ref.context_features).fill(0);
      expect(maxError(await flow.logProb(ref.inputs, { context: zero }), ref.log_prob)).toBeGreaterThan(0.1);
    });
  });

  test('a call without the context, or with the wrong width, is refused naming the width', async () => {
    await expect(flow.logProb(ref.inputs)).rejects.toThrow(new RegExp(`one row of ${ref.context_features} context values`));
    await expect(flow.logProb(ref.inputs, { context: [1, 2, 3, 4, 5] })).rejects.toThrow(new RegExp(`one row of ${ref.context_features} context values .* received an array of length 5`));
  });
});

test('the nflows layer order is read off the indices: sbi puts the permutation after its MADE', async () => {
  const flow = await importTorch(join(fixtures, 'nflows-cmaf-d3-c4.safetensors'), { from: 'nflows-maf', activation: 'tanh' });
  // Latent first: _transforms.3 (a permutation) is iaflow's layer 0, _transforms.0 (a MADE) its last.
  expect(flow.config.layers.map((l) => l.type)).toEqual(['permutation', 'maf', 'permutation', 'maf']);
  // Swapping each MADE with its permutation (nflows' MaskedAutoregressiveFlow order) is another flow.
  const tensors = tensorsOf('nflows-cmaf-d3-c4');
  const swapped = new Map<string, Tensor>();
  for (const [key, tensor] of tensors) {
    swapped.set(key.replace(/^_transform\._transforms\.(\d+)\./, (_, i: string) => `_transform._transforms.${Number(i) ^ 1}.`), tensor);
  }
  const wrong = await importTorch(save('swapped.safetensors', swapped), { from: 'nflows-maf', activation: 'tanh' });
  expect(wrong.config.layers.map((l) => l.type)).toEqual(['maf', 'permutation', 'maf', 'permutation']);
  const ref = fixture('nflows-cmaf-d3-c4');
  expect(maxError(await wrong.logProb(ref.inputs, { context: ref.context }), ref.log_prob)).toBeGreaterThan(1);
});

test('zuko: the context weights are hyper.0.weight[:, D:], hidden units of degree 0 see the context alone', async () => {
  const flow = await importTorch(join(fixtures, 'zuko-cmaf-d3-c2.safetensors'), { from: 'zuko-maf' });
  const tensors = tensorsOf('zuko-cmaf-d3-c2');
  const wide = tensors.get('transform.transforms.1.hyper.0.weight')!.data as Float32Array; // [16, 5]: iaflow's layer 0
  const params = flow.getParameters();
  expect(Array.from(params['layers.0.context.weight'])).toEqual(Array.from({ length: 16 * 2 }, (_, i) => wide[Math.floor(i / 2) * 5 + 3 + (i % 2)]));
  expect(Array.from(params['layers.0.context.bias'])).toEqual(new Array(16).fill(0));
  const layer = flow.config.layers[0];
  if (layer.type !== 'maf') throw new Error('layer 0 should be a MAF');
  expect(layer.hiddenDegrees[0]).toEqual(Array.from({ length: 16 }, (_, j) => j % 3));
});

// ---- sbi's own files ----

// z-scoring of x (PointwiseAffineTransform: z = x * scale + shift) and of the context (c' = (c - mean) / std).
const X_SHIFT = [0.7, -1.3, 0.25];
const X_SCALE = [0.5, 2.0, -1.25];
const C_MEAN = [0.3, -0.2, 1.5, -2.0];
const C_STD = [2.0, 0.5, 1.7, 3.0];

/**
 * The nflows-cmaf fixture as sbi would save it with z-scoring: every name under `net.`, the
 * z-scoring transform as `_transforms.0` (the others one index up), the context standardisation as
 * the embedding net's first module. `shapes` picks per-feature or single ('structured') buffers.
 */
function sbiFile(options: { structured?: boolean; prefix?: string } = {}): Map<string, Tensor> {
  const prefix = options.prefix ?? 'net.';
  const out = new Map<string, Tensor>();
  for (const [key, tensor] of tensorsOf('nflows-cmaf-d3-c4')) {
    out.set(prefix + key.replace(/^_transform\._transforms\.(\d+)\./, (_, i: string) => `_transform._transforms.${Number(i) + 1}.`), tensor);
  }
  const buffer = (values: number[]): Tensor =>
    options.structured ? { dtype: 'F32', shape: [], data: Float32Array.of(values[0]) } : { dtype: 'F32', shape: [values.length], data: Float32Array.from(values) };
  out.set(`${prefix}_transform._transforms.0._shift`, buffer(X_SHIFT));
  out.set(`${prefix}_transform._transforms.0._scale`, buffer(X_SCALE));
  out.set(`${prefix}_embedding_net.0._mean`, buffer(C_MEAN));
  out.set(`${prefix}_embedding_net.0._std`, buffer(C_STD));
  return out;
}

describe("importTorch { from: 'sbi-maf' }: an sbi estimator's state dict", () => {
  const ref = fixture('nflows-cmaf-d3-c4');
  let plain: Flow;
  beforeAll(async () => {
    plain = await importTorch(join(fixtures, 'nflows-cmaf-d3-c4.safetensors'), { from: 'nflows-maf', activation: 'tanh' });
  });

  /**
   * log p_sbi(x | c) = log p_plain(x * scale + shift | (c - mean) / std) + sum log|scale|, the
   * plain flow being the fixture's own (checked against torch above).
   */
  async function expectedLogProb(x: number[][], c: number[][], structured: boolean) {
    const pick = (values: number[], i: number) => (structured ? values[0] : values[i]);
    const xs = x.map((row) => row.map((v, i) => v * pick(X_SCALE, i) + pick(X_SHIFT, i)));
    const cs = c.map((row) => row.map((v, k) => (v - pick(C_MEAN, k)) / pick(C_STD, k)));
    const jacobian = x[0].reduce((sum, _, i) => sum + Math.log(Math.abs(pick(X_SCALE, i))), 0);
    return Array.from(await plain.logProb(xs, { context: cs }), (v) => v + jacobian);
  }

  /** Data rows that map onto the fixture's inputs: x = (x' - shift) / scale. */
  const sbiInputs = (structured: boolean) =>
    ref.inputs.map((row) => row.map((v, i) => (v - (structured ? X_SHIFT[0] : X_SHIFT[i])) / (structured ? X_SCALE[0] : X_SCALE[i])));

  test.each([false, true])('scores as the z-scored fixture flow (structured buffers: %s); tanh is the default', async (structured) => {
    const flow = await importTorch(save(`sbi-${structured}.safetensors`, sbiFile({ structured })), { from: 'sbi-maf' });
    expect(flow.contextDim).toBe(4);
    // The z-scoring of x is a fixed affine layer at the data end.
    expect(flow.config.layers.map((l) => l.type)).toEqual(['permutation', 'maf', 'permutation', 'maf', 'affine']);
    expect(flow.config.layers.every((l) => l.type !== 'maf' || l.activation === 'tanh')).toBe(true);
    const x = sbiInputs(structured);
    const logProb = await flow.logProb(x, { context: ref.context });
    expect(maxError(logProb, await expectedLogProb(x, ref.context, structured))).toBeLessThan(1e-4);
    // One broadcast context row, too.
    const rows = ref.shared_context_rows.map((r) => x[r]);
    const shared = await flow.logProb(rows, { context: ref.context[12] });
    expect(maxError(shared, await expectedLogProb(rows, ref.shared_context_rows.map(() => ref.context[12]), structured))).toBeLessThan(1e-4);
  });

  test('and the reverse check: at the standardised points it reproduces torch minus the Jacobian', async () => {
    // x' = fixture inputs, c' = fixture contexts: x = (x' - shift) / scale, c = c' * std + mean.
    const flow = await importTorch(save('sbi.safetensors', sbiFile()), { from: 'sbi-maf' });
    const c = ref.context.map((row) => row.map((v, k) => v * C_STD[k] + C_MEAN[k]));
    const jacobian = X_SCALE.reduce((sum, s) => sum + Math.log(Math.abs(s)), 0);
    const logProb = await flow.logProb(sbiInputs(false), { context: c });
    expect(maxError(logProb, ref.log_prob.map((v) => v + jacobian))).toBeLessThan(1e-4);
  });

  test('samples are the fixture flow\'s samples at the standardised context, mapped back to raw units', async () => {
    const flow = await importTorch(save('sbi.safetensors', sbiFile()), { from: 'sbi-maf' });
    const c = [0.4, -1.1, 2.0, 0.3];
    const standardised = c.map((v, k) => (v - C_MEAN[k]) / C_STD[k]);
    const raw = await flow.sample(200, { context: c, seed: 9 });
    const inner = await plain.sample(200, { context: standardised, seed: 9 });
    const expected = Array.from(inner, (v, j) => (v - X_SHIFT[j % 3]) / X_SCALE[j % 3]);
    expect(maxError(raw, expected)).toBeLessThan(1e-3);
  });

  test("the Flow's own state dict (no net. prefix) reads too", async () => {
    const flow = await importTorch(save('sbi-net.safetensors', sbiFile({ prefix: '' })), { from: 'sbi-maf' });
    const x = sbiInputs(false);
    expect(maxError(await flow.logProb(x, { context: ref.context }), await expectedLogProb(x, ref.context, false))).toBeLessThan(1e-4);
  });

  test('a negative control: without the context standardisation it does not match', async () => {
    const tensors = sbiFile();
    tensors.delete('net._embedding_net.0._mean');
    tensors.delete('net._embedding_net.0._std');
    const flow = await importTorch(save('sbi-no-zy.safetensors', tensors), { from: 'sbi-maf' });
    const x = sbiInputs(false);
    expect(maxError(await flow.logProb(x, { context: ref.context }), await expectedLogProb(x, ref.context, false))).toBeGreaterThan(0.1);
  });
});

describe('conditional imports: refusals name the file and the problem', () => {
  test("an sbi file read as 'nflows-maf' points at 'sbi-maf'", async () => {
    await expect(importTorch(save('sbi-as-nflows.safetensors', sbiFile()), { from: 'nflows-maf' })).rejects.toThrow(/sbi-as-nflows\.safetensors: every tensor name starts with "net\.".*from: 'sbi-maf'/);
  });

  test('names partly under net.', async () => {
    const tensors = sbiFile();
    tensors.set('extra.weight', { dtype: 'F32', shape: [1], data: new Float32Array(1) });
    await expect(importTorch(save('mixed.safetensors', tensors), { from: 'sbi-maf' })).rejects.toThrow(/some tensor names start with "net\." and some do not \(extra\.weight\)/);
  });

  test('an embedding net with weights', async () => {
    const tensors = sbiFile();
    tensors.set('net._embedding_net.1.weight', { dtype: 'F32', shape: [4, 4], data: new Float32Array(16) });
    await expect(importTorch(save('embedding.safetensors', tensors), { from: 'sbi-maf' })).rejects.toThrow(/net\._embedding_net\.1\.weight: an embedding net with its own tensors cannot be imported/);
  });

  test('a zero standard deviation or z-scoring scale', async () => {
    const std = sbiFile();
    (std.get('net._embedding_net.0._std')!.data as Float32Array)[2] = 0;
    await expect(importTorch(save('std0.safetensors', std), { from: 'sbi-maf' })).rejects.toThrow(/_std is 0 at index 2/);
    const scale = sbiFile();
    (scale.get('net._transform._transforms.0._scale')!.data as Float32Array)[1] = 0;
    await expect(importTorch(save('scale0.safetensors', scale), { from: 'sbi-maf' })).rejects.toThrow(/_scale is 0 at index 1/);
  });

  test('a context standardisation of the wrong width', async () => {
    const tensors = sbiFile();
    tensors.set('net._embedding_net.0._mean', { dtype: 'F32', shape: [3], data: new Float32Array(3) });
    await expect(importTorch(save('mean3.safetensors', tensors), { from: 'sbi-maf' })).rejects.toThrow(/_embedding_net\.0\._mean has shape \[3\], expected \[4\]/);
  });

  test('a MADE without a context layer in a conditional stack', async () => {
    const tensors = tensorsOf('nflows-cmaf-d3-c4');
    tensors.delete('_transform._transforms.2.autoregressive_net.context_layer.weight');
    tensors.delete('_transform._transforms.2.autoregressive_net.context_layer.bias');
    await expect(importTorch(save('half.safetensors', tensors), { from: 'nflows-maf', activation: 'tanh' })).rejects.toThrow(/_transforms\.0 has a context_layer but _transform\._transforms\.2 has none/);
  });

  test("residual blocks with their own context layers (nflows' conditional residual MADE)", async () => {
    // The residual fixture with the context layers nflows gives a conditional residual MADE.
    const tensors = tensorsOf('nflows-maf-d4');
    const nets = [...tensors.keys()].filter((k) => k.endsWith('.autoregressive_net.initial_layer.weight')).map((k) => k.slice(0, -'.initial_layer.weight'.length));
    const linear = (out: number, inputs: number) => [
      { dtype: 'F32' as const, shape: [out, inputs], data: new Float32Array(out * inputs).fill(0.1) },
      { dtype: 'F32' as const, shape: [out], data: new Float32Array(out) },
    ];
    for (const net of nets) {
      const [w, b] = linear(16, 2);
      tensors.set(`${net}.context_layer.weight`, w);
      tensors.set(`${net}.context_layer.bias`, b);
      for (const block of [0, 1]) {
        const [bw, bb] = linear(16, 2);
        tensors.set(`${net}.blocks.${block}.context_layer.weight`, bw);
        tensors.set(`${net}.blocks.${block}.context_layer.bias`, bb);
      }
    }
    await expect(importTorch(save('residual-context.safetensors', tensors), { from: 'nflows-maf' })).rejects.toThrow(
      /blocks\.0\.context_layer: residual blocks with their own context layer .* cannot be imported.*use_residual_blocks=False/,
    );
  });

  test('zuko: a context column hidden by the mask, and transforms of different context widths', async () => {
    const masked = tensorsOf('zuko-cmaf-d3-c2');
    (masked.get('transform.transforms.0.hyper.0.mask')!.data as Uint8Array)[1 * 5 + 4] = 0;
    await expect(importTorch(save('zuko-masked-context.safetensors', masked), { from: 'zuko-maf' })).rejects.toThrow(/hyper\.0\.mask hides context column 1 from unit 1/);
    // Transform 1 read as unconditional (its first layer cut to the x columns): widths disagree.
    const cut = tensorsOf('zuko-cmaf-d3-c2');
    for (const part of ['weight', 'mask']) {
      const t = cut.get(`transform.transforms.1.hyper.0.${part}`)!;
      const data = t.data as Float32Array | Uint8Array;
      const narrow = data instanceof Float32Array ? new Float32Array(16 * 3) : new Uint8Array(16 * 3);
      for (let j = 0; j < 16; j++) narrow.set(data.subarray(j * 5, j * 5 + 3), j * 3);
      cut.set(`transform.transforms.1.hyper.0.${part}`, { dtype: t.dtype, shape: [16, 3], data: narrow });
    }
    await expect(importTorch(save('zuko-cut.safetensors', cut), { from: 'zuko-maf' })).rejects.toThrow(/transform\.transforms\.0\.hyper\.0 reads 2 context columns but transform\.transforms\.1\.hyper\.0 reads 0/);
  });

  test('bad options', async () => {
    const file = join(fixtures, 'zuko-cmaf-d3-c2.safetensors');
    await expect(importTorch(file, { from: 'sbi-nsf' as never })).rejects.toThrow(/Expected one of 'zuko-maf', 'nflows-maf', 'sbi-maf' for options\.from/);
    await expect(importTorch(file, { from: 'sbi-maf', activation: 'gelu' as never })).rejects.toThrow(/options\.activation/);
  });
});

test('fuzz: mutated conditional state dicts import as a flow or are refused with a ModelFileError (seeded)', async () => {
  let state = 20261207;
  const random = () => ((state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  const pick = <T>(list: T[]): T => list[Math.floor(random() * list.length)];
  const sources: [() => Map<string, Tensor>, 'zuko-maf' | 'nflows-maf' | 'sbi-maf'][] = [
    [() => tensorsOf('zuko-cmaf-d3-c2'), 'zuko-maf'],
    [() => tensorsOf('nflows-cmaf-d3-c4'), 'nflows-maf'],
    [() => sbiFile(), 'sbi-maf'],
    [() => sbiFile({ structured: true }), 'sbi-maf'],
  ];
  let loaded = 0;
  let refused = 0;
  for (let trial = 0; trial < 240; trial++) {
    const [make, from] = sources[trial % sources.length];
    const tensors = make();
    const name = pick([...tensors.keys()]);
    const tensor = tensors.get(name)!;
    const count = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
    switch (Math.floor(random() * 6)) {
      case 0:
        tensors.delete(name);
        break;
      case 1: {
        const shape = Array.from({ length: Math.floor(random() * 3) }, () => Math.floor(random() * 6));
        tensors.set(name, { dtype: 'F32', shape, data: new Float32Array(count(shape)).fill(0.5) });
        break;
      }
      case 2:
        tensors.set(name, { dtype: 'I64', shape: tensor.shape, data: new BigInt64Array(count(tensor.shape)).fill(1n) });
        break;
      case 3:
        if (tensor.dtype === 'F32' && tensor.data.length > 0) (tensor.data as Float32Array)[Math.floor(random() * tensor.data.length)] = pick([NaN, Infinity, 0, -1e38, 1e-38]);
        break;
      case 4:
        tensors.set(`${name.replace(/\.\d+\./, '.9.')}`, tensor);
        break;
      default:
        if (tensor.dtype === 'I64' && tensor.data.length > 0) (tensor.data as BigInt64Array)[Math.floor(random() * tensor.data.length)] = pick([-1n, 3n, 99n, 0n]);
    }
    const file = save(`fuzz-${trial}.safetensors`, tensors);
    try {
      const flow = await importTorch(file, { from });
      const context = new Array<number>(flow.contextDim).fill(0.5);
      const logProb = await flow.logProb([[0.1, -0.2, 0.3]], flow.contextDim > 0 ? { context } : undefined);
      expect(logProb.length).toBe(1);
      loaded++;
    } catch (error) {
      expect([trial, (error as Error).name]).toEqual([trial, 'ModelFileError']);
      refused++;
    }
  }
  // Both outcomes happen: the mutations reach past the first check.
  expect(loaded).toBeGreaterThan(10);
  expect(refused).toBeGreaterThan(100);
});
