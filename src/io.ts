// Flows to and from model files: one .safetensors file, float32 tensors named
// `layers.{k}.{param}` as getParameters() names them, the config as JSON in
// `__metadata__` (key "iaflow"). Python's safetensors package reads it as is.
import { Flow } from './flow';
import {
  ACTIVATIONS,
  Activation,
  affineTensorNames,
  checkFlowConfig,
  FlowConfig,
  FORMAT_VERSION,
  LayerConfig,
  MAX_HIDDEN_LAYERS,
  MAX_LAYERS,
  MAX_PARAMETERS,
  madeTensorNames,
  parameterShapes,
} from './layers';
import {
  checkSafetensorsHeader,
  encodeSafetensors,
  MAX_HEADER_BYTES,
  ModelFileError,
  readSafetensors,
  ReadLimits,
  scanJson,
  shorten,
  Tensor,
  writeFileAtomic,
} from './safetensors';
import { checkEnum, checkOptions, invalidType, warnOnHugeWeights } from './validation';

export { ModelFileError };

export const METADATA_FORMAT = 'iaflow';
const CONFIG_KEY = 'iaflow';

// What the largest model each reader accepts can need; a file past these is refused before it
// is read (size) or parsed (tensor count, which also bounds the header: see safetensors.ts).
/** A flow file: every layer a MADE with the most hidden layers, 2 tensors per hidden layer + 4 heads. */
const MODEL_LIMITS: Required<ReadLimits> = {
  maxTensors: MAX_LAYERS * (2 * MAX_HIDDEN_LAYERS + 4),
  // The length field, the largest header, and MAX_PARAMETERS float32 weights.
  maxFileBytes: 8 + MAX_HEADER_BYTES + 4 * MAX_PARAMETERS,
};
/** A PyTorch state dict: per layer, weight, bias, mask and (nflows) degrees for each linear, a
 * permutation or order, and (conditional nflows) a context layer's weight and bias; the base's or
 * sbi's z-scoring buffers (4). The masks (F32 in nflows) take as many bytes as the weights and the
 * I64 degrees (one per unit, each unit having at least 2 weights) at most as many again: 3x in all
 * (context layers have no mask). */
const TORCH_LIMITS: Required<ReadLimits> = {
  maxTensors: MAX_LAYERS * (4 * (MAX_HIDDEN_LAYERS + 1) + 3) + 4,
  maxFileBytes: 8 + MAX_HEADER_BYTES + 3 * 4 * MAX_PARAMETERS,
};

/**
 * The config is JSON inside a __metadata__ string, parsed a second time: it gets the same kind
 * of pre-scan as the header. A valid config nests 5 levels (config, layers, layer,
 * hiddenDegrees, one layer's degrees) and holds at most 4 containers per layer plus one per
 * hidden layer; its size is already bounded by the header's.
 */
const CONFIG_SCAN_LIMITS = {
  maxDepth: 8,
  maxKeysPerObject: 64,
  maxTopLevelKeys: 64,
  maxContainers: 2 + MAX_LAYERS * (MAX_HIDDEN_LAYERS + 4),
  valuesBase: Infinity,
  valuesPerTopLevelKey: 0,
  bytesBase: Infinity,
  bytesPerTopLevelKey: 0,
};

/** Longest message text taken over from a config check (its values come from the file). */
const MAX_QUOTED_PROBLEM = 500;

/**
 * Writes the flow atomically (temp file + rename): a failed save leaves any previous file intact.
 * @throws RangeError, writing nothing, if loadFlow would refuse the file (a config too big for
 * the header bound); errors from the file system name `path`.
 */
export async function saveFlow(flow: Flow, path: string): Promise<void> {
  if (!(flow instanceof Flow)) throw invalidType('flow', 'a Flow', flow);
  if (typeof path !== 'string' || path.length === 0) throw invalidType('path', 'a file path string', path);
  const bytes = encodeFlow(flow);
  // Never write a file that loadFlow would refuse (a config of many dim-65536 permutations can
  // outgrow the header bound).
  try {
    checkSafetensorsHeader(bytes, path, MODEL_LIMITS);
  } catch (error) {
    throw new RangeError(`saveFlow: this flow's model file would be refused by loadFlow: ${(error as ModelFileError).problem}`);
  }
  // Finite but huge weights (set by hand, or loaded) give NaN samples: saved, but said once.
  warnOnHugeWeights('saveFlow', maxAbsWeight(flow.currentParameters().values()));
  await writeFileAtomic(path, bytes);
}

/** The largest |weight| of a flow's tensors (see warnOnHugeWeights). */
function maxAbsWeight(tensors: Iterable<Float32Array>): number {
  let maxAbs = 0;
  for (const data of tensors) {
    for (let i = 0; i < data.length; i++) {
      const a = Math.abs(data[i]);
      if (a > maxAbs) maxAbs = a;
    }
  }
  return maxAbs;
}

/** The bytes saveFlow writes. */
export function encodeFlow(flow: Flow): Buffer {
  const tensors = new Map<string, Tensor>();
  const shapes = flow.parameterShapes();
  for (const [name, data] of Object.entries(flow.getParameters())) {
    tensors.set(name, { dtype: 'F32', shape: shapes[name], data });
  }
  return encodeSafetensors(tensors, { format: METADATA_FORMAT, [CONFIG_KEY]: JSON.stringify(flow.config) });
}

/** Index of the first NaN or infinity in `data`, or -1. */
function firstNonFinite(data: Float32Array): number {
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i])) return i;
  }
  return -1;
}

/** Elements checked between turns of the event loop while validating a big file's weights. */
const ELEMENTS_PER_TURN = 1 << 22;

/** Reads a model file written by saveFlow (or by anyone following the format), validating all of it. */
export async function loadFlow(path: string): Promise<Flow> {
  if (typeof path !== 'string' || path.length === 0) throw invalidType('path', 'a file path string', path);
  const file = await readSafetensors(path, MODEL_LIMITS);
  const configText = file.metadata[CONFIG_KEY];
  if (configText === undefined) {
    throw new ModelFileError(path, `not an iaflow model file: __metadata__ has no "${CONFIG_KEY}" config`);
  }
  const configBytes = Buffer.from(configText, 'utf8');
  const found = scanJson(configBytes, 0, configBytes.length, CONFIG_SCAN_LIMITS);
  if (found !== undefined) {
    const what = found.limit === 'depth' ? 'nests deeper than' : found.limit === 'containers' ? 'holds more arrays and objects than' : `passes the ${found.limit} limit of`;
    throw new ModelFileError(path, `bad config in __metadata__.${CONFIG_KEY}: it ${what} ${found.bound} (a valid config cannot)`);
  }
  let config: FlowConfig;
  try {
    config = checkFlowConfig(JSON.parse(configText), 'config');
  } catch (error) {
    throw new ModelFileError(path, `bad config in __metadata__.${CONFIG_KEY}: ${shorten((error as Error).message, MAX_QUOTED_PROBLEM)}`);
  }
  const shapes = parameterShapes(config);
  for (const name of file.tensors.keys()) {
    if (!shapes.has(name)) throw new ModelFileError(path, `unexpected tensor ${shorten(name)}: the config has no such parameter`);
  }
  const params = new Map<string, Float32Array>();
  let sinceTurn = 0;
  for (const [name, shape] of shapes) {
    const tensor = file.tensors.get(name);
    if (!tensor) throw new ModelFileError(path, `missing tensor ${name} (shape [${shape.join(', ')}])`);
    if (tensor.dtype !== 'F32') throw new ModelFileError(path, `tensor ${name} has dtype ${tensor.dtype}, expected F32`);
    if (tensor.shape.length !== shape.length || tensor.shape.some((d, i) => d !== shape[i])) {
      throw new ModelFileError(path, `tensor ${name} has shape [${tensor.shape.join(', ')}], expected [${shape.join(', ')}]`);
    }
    const data = tensor.data as Float32Array;
    const bad = firstNonFinite(data);
    if (bad >= 0) throw new ModelFileError(path, `tensor ${name} holds a non-finite value (${data[bad]}) at index ${bad}`);
    params.set(name, data);
    // Let other work run between tensors of a big file rather than after all of them.
    sinceTurn += data.length;
    if (sinceTurn >= ELEMENTS_PER_TURN) {
      sinceTurn = 0;
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }
  warnOnHugeWeights('loadFlow', maxAbsWeight(params.values()));
  return new Flow(config, params);
}

// ---- Weights trained in PyTorch ----

export type TorchSource = 'zuko-maf' | 'nflows-maf' | 'sbi-maf';
const TORCH_SOURCES: readonly TorchSource[] = ['zuko-maf', 'nflows-maf', 'sbi-maf'];

export interface ImportTorchOptions {
  /**
   * Which library's MAF the state dict comes from: 'zuko-maf' (`zuko.flows.MAF`, with or without
   * a context), 'nflows-maf' (nflows' `MaskedAutoregressiveFlow`, or a conditional stack as sbi's
   * `build_maf` makes it), 'sbi-maf' (an sbi estimator's own `state_dict()`: `build_maf`'s flow
   * with every name prefixed `net.`, its z-scoring of the flow's input (sbi's theta) and of the
   * context (sbi's x, the observation) included).
   */
  from: TorchSource;
  /**
   * The hidden activation, which a state dict does not record. Default 'relu' (zuko's and nflows'
   * default), but 'tanh' for 'sbi-maf' (sbi's `build_maf` always uses tanh).
   */
  activation?: Activation;
}

/**
 * Builds the iaflow flow equivalent to a PyTorch MAF whose `state_dict()` was saved with
 * `safetensors.torch.save_file`: zuko's `zuko.flows.MAF`, nflows' `MaskedAutoregressiveFlow`
 * (plain or residual MADE blocks), or a conditional nflows stack as sbi's `build_maf` makes it
 * (`from: 'sbi-maf'` for the file of an sbi estimator). Each library's direction, order, output
 * layout, scale formula and context wiring is mapped exactly; the MADE degrees are read off the
 * stored masks, and a mask that no degree assignment reproduces is refused. A conditional file
 * gives a conditional flow (`flow.contextDim` > 0). See the README for the Python side.
 */
export async function importTorch(path: string, options: ImportTorchOptions): Promise<Flow> {
  if (typeof path !== 'string' || path.length === 0) throw invalidType('path', 'a file path string', path);
  const opts = checkOptions('importTorch options', options, ['from', 'activation']);
  const from = checkEnum('options.from', opts.from, TORCH_SOURCES);
  const activation = checkEnum('options.activation', opts.activation ?? (from === 'sbi-maf' ? 'tanh' : 'relu'), ACTIVATIONS);
  const file = await readSafetensors(path, TORCH_LIMITS);
  const reader = new StateDict(file.tensors, path, stateDictRoot(file.tensors, from, path));
  const { config, params } = from === 'zuko-maf' ? mapZuko(reader, activation) : mapNflows(reader, activation);
  reader.checkAllUsed();
  let checked: FlowConfig;
  try {
    checked = checkFlowConfig(config, 'config');
  } catch (error) {
    throw new ModelFileError(path, `the state dict maps to an invalid flow: ${shorten((error as Error).message, MAX_QUOTED_PROBLEM)}`);
  }
  warnOnHugeWeights('importTorch', maxAbsWeight(params.values()));
  return new Flow(checked, params);
}

/** sbi's estimator (`NFlowsFlow`) holds the nflows Flow as `.net`: its state dict prefixes every name. */
const SBI_ROOT = 'net.';

/**
 * The prefix the mappers' names sit under: 'net.' in an sbi estimator's file. 'sbi-maf' also takes
 * the Flow's own state dict (`estimator.net.state_dict()`, no prefix); 'nflows-maf' refuses an sbi
 * file, whose activation is tanh rather than nflows' relu default.
 */
function stateDictRoot(tensors: Map<string, Tensor>, from: TorchSource, source: string): string {
  const names = [...tensors.keys()];
  const prefixed = names.filter((name) => name.startsWith(SBI_ROOT)).length;
  if (from === 'sbi-maf') {
    if (prefixed === 0) return '';
    if (prefixed !== names.length) {
      throw new ModelFileError(source, `some tensor names start with "${SBI_ROOT}" and some do not (${shorten(names.find((n) => !n.startsWith(SBI_ROOT))!)}): not one sbi estimator's state dict`);
    }
    return SBI_ROOT;
  }
  if (from === 'nflows-maf' && names.length > 0 && prefixed === names.length) {
    throw new ModelFileError(source, `every tensor name starts with "${SBI_ROOT}": this is an sbi estimator's state dict; import it with { from: 'sbi-maf' } (activation tanh by default, as sbi builds it)`);
  }
  return '';
}

/** Typed, checked access to a state dict's tensors under a root prefix; remembers which were read. */
class StateDict {
  private readonly used = new Set<string>();
  constructor(
    readonly tensors: Map<string, Tensor>,
    private readonly source: string,
    private readonly root = '',
  ) {}

  fail(problem: string): never {
    throw new ModelFileError(this.source, problem);
  }

  /** The name a tensor has in the file (the mappers use names below the root). */
  full(name: string): string {
    return this.root + name;
  }

  has(name: string): boolean {
    return this.tensors.has(this.full(name));
  }

  /** A tensor's shape, without reading it (undefined if it is absent). */
  shape(name: string): number[] | undefined {
    return this.tensors.get(this.full(name))?.shape;
  }

  private get(name: string, shape?: number[]): Tensor {
    const full = this.full(name);
    const tensor = this.tensors.get(full);
    if (!tensor) this.fail(`missing tensor ${full}`);
    if (shape && (tensor.shape.length !== shape.length || tensor.shape.some((d, i) => d !== shape[i]))) {
      this.fail(`tensor ${full} has shape [${tensor.shape.join(', ')}], expected [${shape.join(', ')}]`);
    }
    this.used.add(full);
    return tensor;
  }

  floats(name: string, shape?: number[]): Float32Array {
    const tensor = this.get(name, shape);
    if (tensor.dtype !== 'F32') this.fail(`tensor ${this.full(name)} has dtype ${tensor.dtype}, expected F32`);
    const data = tensor.data as Float32Array;
    const bad = firstNonFinite(data);
    if (bad >= 0) this.fail(`tensor ${this.full(name)} holds a non-finite value (${data[bad]}) at index ${bad}`);
    return data;
  }

  /** A per-feature buffer of `width` floats, or one float for all (sbi's 'structured' z-scoring: shape [] or [1]). */
  floatsPerFeature(name: string, width: number): Float32Array {
    const shape = this.shape(name);
    const single = shape !== undefined && (shape.length === 0 || (shape.length === 1 && shape[0] === 1));
    const data = this.floats(name, single ? shape : [width]);
    return single ? new Float32Array(width).fill(data[0]) : data;
  }

  integers(name: string, shape?: number[]): number[] {
    const tensor = this.get(name, shape);
    if (tensor.dtype !== 'I64' && tensor.dtype !== 'I32') this.fail(`tensor ${this.full(name)} has dtype ${tensor.dtype}, expected I64`);
    return Array.from(tensor.data as ArrayLike<number | bigint>, (v) => Number(v));
  }

  /** A 0/1 mask stored as BOOL (zuko) or F32 (nflows), as booleans [out][in]. */
  mask(name: string, out: number, inputs: number): boolean[][] {
    const tensor = this.get(name, [out, inputs]);
    if (tensor.dtype !== 'BOOL' && tensor.dtype !== 'F32') this.fail(`tensor ${this.full(name)} has dtype ${tensor.dtype}, expected BOOL or F32`);
    const data = tensor.data as Uint8Array | Float32Array;
    return Array.from({ length: out }, (_, o) =>
      Array.from({ length: inputs }, (_, i) => {
        const v = data[o * inputs + i];
        if (v !== 0 && v !== 1) this.fail(`tensor ${this.full(name)} is not a 0/1 mask (value ${v} at [${o}, ${i}])`);
        return v === 1;
      }),
    );
  }

  /** Indices n for which `${prefix}{n}${suffix}` exists, ascending. */
  indices(prefix: string, suffix: string): number[] {
    const found: number[] = [];
    const start = this.full(prefix);
    for (const name of this.tensors.keys()) {
      if (!name.startsWith(start) || !name.endsWith(suffix)) continue;
      const middle = name.slice(start.length, name.length - suffix.length);
      if (/^\d+$/.test(middle)) found.push(Number(middle));
    }
    return found.sort((a, b) => a - b);
  }

  /** Names (below the root) that start with `prefix`. */
  namesUnder(prefix: string): string[] {
    const start = this.full(prefix);
    return [...this.tensors.keys()].filter((name) => name.startsWith(start)).map((name) => name.slice(this.root.length));
  }

  checkAllUsed(): void {
    for (const name of this.tensors.keys()) {
      if (!this.used.has(name)) this.fail(`unexpected tensor ${shorten(name)}: not part of the model this importer maps`);
    }
  }
}

interface MadeWeights {
  hidden: { weight: Float32Array; bias: Float32Array; mask: boolean[][] }[];
  /** The final layer's rows for dimension i's shift and unconstrained scale. */
  out: { weight: Float32Array; bias: Float32Array; mask: boolean[][] };
  shiftRow: (i: number) => number;
  scaleRow: (i: number) => number;
  /** A conditional MADE's context term for hidden layer 0: weight [width_0, C], bias [width_0]. */
  context?: { weight: Float32Array; bias: Float32Array };
}

/**
 * Reads the MADE degrees off stored masks: a hidden unit's degree is the largest degree among
 * its inputs. Refuses masks that this degree assignment does not reproduce exactly.
 */
function degreesFromMasks(dict: StateDict, where: string, inputDegrees: number[], made: MadeWeights): number[][] {
  const hiddenDegrees: number[][] = [];
  let previous = inputDegrees;
  made.hidden.forEach(({ mask }, l) => {
    const degrees = mask.map((row) => row.reduce((best, on, m) => (on ? Math.max(best, previous[m]) : best), 0));
    mask.forEach((row, j) =>
      row.forEach((on, m) => {
        if (on !== degrees[j] >= previous[m]) dict.fail(`${where}: hidden layer ${l}'s mask is not a MADE mask (unit ${j}, input ${m})`);
      }),
    );
    hiddenDegrees.push(degrees);
    previous = degrees;
  });
  for (let i = 0; i < inputDegrees.length; i++) {
    for (const row of [made.shiftRow(i), made.scaleRow(i)]) {
      made.out.mask[row].forEach((on, m) => {
        if (on !== inputDegrees[i] > previous[m]) dict.fail(`${where}: the output mask is not a MADE mask (row ${row}, unit ${m})`);
      });
    }
  }
  return hiddenDegrees;
}

function madeParameters(k: number, made: MadeWeights, dim: number, params: Map<string, Float32Array>): void {
  const names = madeTensorNames(k, made.hidden.length);
  made.hidden.forEach(({ weight, bias }, l) => {
    params.set(names.hidden[l].weight, weight.slice());
    params.set(names.hidden[l].bias, bias.slice());
  });
  const width = made.out.weight.length / made.out.bias.length;
  for (const [head, rowOf] of [['shift', made.shiftRow], ['scale', made.scaleRow]] as const) {
    const weight = new Float32Array(dim * width);
    const bias = new Float32Array(dim);
    for (let i = 0; i < dim; i++) {
      weight.set(made.out.weight.subarray(rowOf(i) * width, (rowOf(i) + 1) * width), i * width);
      bias[i] = made.out.bias[rowOf(i)];
    }
    params.set(names[head].weight, weight);
    params.set(names[head].bias, bias);
  }
  if (made.context) {
    params.set(names.context.weight, made.context.weight.slice());
    params.set(names.context.bias, made.context.bias.slice());
  }
}

function readLinear(dict: StateDict, prefix: string, inputs: number, out?: number) {
  const bias = dict.floats(`${prefix}.bias`);
  const width = out ?? bias.length;
  if (bias.length !== width) dict.fail(`tensor ${dict.full(prefix)}.bias has ${bias.length} entries, expected ${width}`);
  return { weight: dict.floats(`${prefix}.weight`, [width, inputs]), bias, mask: dict.mask(`${prefix}.mask`, width, inputs) };
}

/**
 * zuko: `transform.transforms.{t}` maps data to noise in order t = 0, 1, ... (each a MAF layer);
 * feature i has rank order[i]; the MADE `hyper` is Linear layers at even indices with the
 * activation between them; output rows 2i / 2i+1 are shift_i / unconstrained scale a_i; the scale
 * is exp of a soft-clipped a (iaflow's 'exp'). A conditional MAF feeds [x, c] to the first Linear
 * (hyper.0 is D + C wide, its context columns unmasked): iaflow's 'linear' context form, with the
 * context weights hyper.0.weight[:, D:] and a zero context bias (hyper.0.bias already has it).
 */
function mapZuko(dict: StateDict, activation: Activation) {
  const transforms = dict.indices('transform.transforms.', '.order');
  if (transforms.length === 0) dict.fail('no transform.transforms.{t}.order tensors: not a zuko MAF state dict');
  const dim = dict.integers(`transform.transforms.${transforms[0]}.order`).length;
  const loc = dict.floats('base.loc', [dim]);
  const scale = dict.floats('base.scale', [dim]);
  if (loc.some((v) => v !== 0) || scale.some((v) => v !== 1)) dict.fail('base.loc/base.scale are not the standard normal; iaflow flows have an N(0, I) base');
  const layers: LayerConfig[] = [];
  const params = new Map<string, Float32Array>();
  let contextDim = -1;
  let contextFrom = '';
  // iaflow lists layers latent first: zuko's last transform is iaflow's layer 0.
  [...transforms].reverse().forEach((t, k) => {
    const prefix = `transform.transforms.${t}`;
    const order = dict.integers(`${prefix}.order`, [dim]);
    const inputDegrees = order.map((rank) => rank + 1);
    const linears = dict.indices(`${prefix}.hyper.`, '.weight');
    if (linears.length < 2) dict.fail(`${dict.full(prefix)}.hyper needs at least one hidden layer`);
    // The first Linear's width past D is the context (zuko concatenates [x, c]).
    const first = `${prefix}.hyper.${linears[0]}`;
    const firstShape = dict.shape(`${first}.weight`);
    if (firstShape === undefined || firstShape.length !== 2) dict.fail(`tensor ${dict.full(first)}.weight is not a matrix`);
    const C = firstShape[1] - dim;
    if (C < 0) dict.fail(`tensor ${dict.full(first)}.weight has ${firstShape[1]} input columns, fewer than the ${dim} features`);
    if (contextDim === -1) {
      contextDim = C;
      contextFrom = dict.full(first);
    } else if (C !== contextDim) {
      dict.fail(`${dict.full(first)} reads ${C} context columns but ${contextFrom} reads ${contextDim}: one flow has one context width`);
    }
    const wide = readLinear(dict, first, dim + C);
    const width0 = wide.bias.length;
    const hidden = [splitContextColumns(dict, first, wide, dim, C)];
    let inputs = width0;
    for (const n of linears.slice(1, -1)) {
      const linear = readLinear(dict, `${prefix}.hyper.${n}`, inputs);
      inputs = linear.bias.length;
      hidden.push(linear);
    }
    const out = readLinear(dict, `${prefix}.hyper.${linears[linears.length - 1]}`, inputs, 2 * dim);
    const context = C > 0 ? { weight: contextColumns(wide.weight, width0, dim, C), bias: new Float32Array(width0) } : undefined;
    const made: MadeWeights = { hidden, out, shiftRow: (i) => 2 * i, scaleRow: (i) => 2 * i + 1, context };
    const hiddenDegrees = degreesFromMasks(dict, dict.full(prefix), inputDegrees, made);
    layers.push({
      type: 'maf',
      hidden: hidden.map((h) => h.bias.length),
      activation,
      scale: 'exp',
      inputDegrees,
      hiddenDegrees,
      residual: false,
      ...(C > 0 ? { contextForm: 'linear' as const } : {}),
    });
    madeParameters(k, made, dim, params);
  });
  return { config: { formatVersion: FORMAT_VERSION, dim, contextDim, layers }, params };
}

/** The x part (first D columns) of zuko's first Linear; its context columns must be unmasked. */
function splitContextColumns(dict: StateDict, name: string, wide: { weight: Float32Array; bias: Float32Array; mask: boolean[][] }, dim: number, C: number) {
  if (C === 0) return wide;
  const width = wide.bias.length;
  const weight = new Float32Array(width * dim);
  for (let j = 0; j < width; j++) weight.set(wide.weight.subarray(j * (dim + C), j * (dim + C) + dim), j * dim);
  wide.mask.forEach((row, j) => {
    const masked = row.findIndex((on, m) => m >= dim && !on);
    if (masked >= 0) dict.fail(`${dict.full(name)}.mask hides context column ${masked - dim} from unit ${j}: iaflow's conditional MADE (as zuko's) gives every first-layer unit the whole context`);
  });
  return { weight, bias: wide.bias, mask: wide.mask.map((row) => row.slice(0, dim)) };
}

/** Columns D..D+C-1 of a [width, D + C] matrix, as [width, C]. */
function contextColumns(weight: Float32Array, width: number, dim: number, C: number): Float32Array {
  const out = new Float32Array(width * C);
  for (let j = 0; j < width; j++) out.set(weight.subarray(j * (dim + C) + dim, (j + 1) * (dim + C)), j * C);
  return out;
}

/** sbi's context standardisation (z_score_y): the embedding net nn.Sequential(Standardize, Identity). */
const CONTEXT_MEAN = '_embedding_net.0._mean';
const CONTEXT_STD = '_embedding_net.0._std';

/**
 * nflows: `_transform._transforms.{i}` maps data to noise in order i = 0, 1, ...; each entry is a
 * permutation (y[:, j] = x[:, perm[j]]), a MADE-affine layer on its input's feature order (plain:
 * act after every hidden layer; residual: nflows' blocks), or (sbi's z_score_x) a pointwise affine
 * z = x * _scale + _shift. `MaskedAutoregressiveFlow` puts each permutation before its MADE, sbi's
 * `build_maf` after it: the indices say which, and both map as they stand. Output rows 2i / 2i+1 are
 * the unconstrained scale a_i / shift_i; scale = softplus(a) + 1e-3 (iaflow's 'softplus').
 * A conditional MADE adds act(context_layer(c)) to its first hidden layer's pre-activation
 * (iaflow's 'activated' context form); sbi's context standardisation c' = (c - mean) / std is
 * folded into every context layer.
 */
function mapNflows(dict: StateDict, activation: Activation) {
  const prefix = '_transform._transforms.';
  const permutations = dict.indices(prefix, '._permutation');
  const mades = dict.indices(prefix, '.autoregressive_net.initial_layer.weight');
  const affines = dict.indices(prefix, '._shift');
  if (mades.length === 0) dict.fail(`no ${dict.full(prefix)}{i}.autoregressive_net tensors: not an nflows MAF state dict`);
  for (const i of dict.indices(prefix, '._scale')) if (!affines.includes(i)) dict.fail(`missing tensor ${dict.full(`${prefix}${i}._shift`)} (beside its ._scale)`);
  const steps = [
    ...permutations.map((i) => ({ i, kind: 'permutation' as const })),
    ...mades.map((i) => ({ i, kind: 'made' as const })),
    ...affines.map((i) => ({ i, kind: 'affine' as const })),
  ].sort((a, b) => a.i - b.i);
  steps.forEach((step, position) => {
    if (step.i !== position) dict.fail(`${dict.full(prefix)}${position} is missing or holds two transforms (transforms must be numbered 0, 1, 2, ...)`);
  });
  const firstNet = `${prefix}${mades[0]}.autoregressive_net`;
  const dim = dict.floats(`${firstNet}.initial_layer.weight`).length / dict.floats(`${firstNet}.initial_layer.bias`).length;
  if (!Number.isInteger(dim) || dim < 1) dict.fail('cannot tell the dimension from the first initial_layer');
  // The context: every MADE has a context_layer (a Linear C -> width_0) or none does.
  const withContext = mades.filter((i) => dict.has(`${prefix}${i}.autoregressive_net.context_layer.weight`));
  if (withContext.length > 0 && withContext.length < mades.length) {
    const without = mades.find((i) => !withContext.includes(i))!;
    dict.fail(`${dict.full(`${prefix}${withContext[0]}`)} has a context_layer but ${dict.full(`${prefix}${without}`)} has none: a conditional flow's MADEs all take the context`);
  }
  const contextShape = withContext.length > 0 ? dict.shape(`${prefix}${withContext[0]}.autoregressive_net.context_layer.weight`) : undefined;
  if (contextShape !== undefined && (contextShape.length !== 2 || contextShape[1] < 1)) dict.fail(`tensor ${dict.full(`${prefix}${withContext[0]}.autoregressive_net.context_layer.weight`)} is not a [hidden, context] matrix`);
  const contextDim = contextShape ? contextShape[1] : 0;
  const standardize = readContextStandardization(dict, contextDim);
  const layers: LayerConfig[] = [];
  const params = new Map<string, Float32Array>();
  [...steps].reverse().forEach((step, k) => {
    const at = `${prefix}${step.i}`;
    if (step.kind === 'permutation') {
      const perm = dict.integers(`${at}._permutation`, [dim]);
      // nflows: noise-side y[j] = data-side x[perm[j]]; iaflow: data-side b[i] = noise-side a[p[i]], so p = perm^-1.
      const inverse = new Array<number>(dim).fill(-1);
      perm.forEach((source, j) => {
        if (!Number.isInteger(source) || source < 0 || source >= dim || inverse[source] !== -1) dict.fail(`${dict.full(at)}._permutation is not a permutation of 0..${dim - 1}`);
        inverse[source] = j;
      });
      layers.push({ type: 'permutation', permutation: inverse });
      return;
    }
    if (step.kind === 'affine') {
      layers.push({ type: 'affine', trainable: false });
      const { loc, scale } = affineFromZScore(dict, at, dim);
      const names = affineTensorNames(k);
      params.set(names.loc, loc);
      params.set(names.scale, scale);
      return;
    }
    const net = `${at}.autoregressive_net`;
    const initial = readLinear(dict, `${net}.initial_layer`, dim);
    const width = initial.bias.length;
    const blocks = dict.indices(`${net}.blocks.`, '.linear.weight');
    const residualBlocks = dict.indices(`${net}.blocks.`, '.linear_layers.0.weight');
    if (blocks.length > 0 && residualBlocks.length > 0) dict.fail(`${dict.full(net)} mixes plain and residual blocks`);
    const residual = residualBlocks.length > 0;
    const blockContext = dict.indices(`${net}.blocks.`, '.context_layer.weight');
    if (blockContext.length > 0) {
      dict.fail(
        `${dict.full(`${net}.blocks.${blockContext[0]}.context_layer`)}: residual blocks with their own context layer (nflows' conditional residual MADE) cannot be imported: ` +
          `iaflow's conditional MADE takes the context in its first hidden layer only (build the MADE with use_residual_blocks=False, as sbi's build_maf does)`,
      );
    }
    const hidden = [initial];
    if (residual) {
      for (const b of residualBlocks) {
        hidden.push(readLinear(dict, `${net}.blocks.${b}.linear_layers.0`, width, width));
        hidden.push(readLinear(dict, `${net}.blocks.${b}.linear_layers.1`, width, width));
      }
    } else {
      for (const b of blocks) hidden.push(readLinear(dict, `${net}.blocks.${b}.linear`, width, width));
    }
    const out = readLinear(dict, `${net}.final_layer`, width, 2 * dim);
    let context: MadeWeights['context'];
    if (contextDim > 0) {
      const weight = dict.floats(`${net}.context_layer.weight`, [width, contextDim]);
      const bias = dict.floats(`${net}.context_layer.bias`, [width]);
      context = standardize ? foldStandardization(weight, bias, standardize) : { weight, bias };
      if (firstNonFinite(context.weight) >= 0 || firstNonFinite(context.bias) >= 0) {
        dict.fail(`${dict.full(`${net}.context_layer`)}: folding ${dict.full(CONTEXT_STD)} into it overflows float32 (a standard deviation too close to 0?)`);
      }
    }
    const inputDegrees = Array.from({ length: dim }, (_, i) => i + 1);
    const made: MadeWeights = { hidden, out, shiftRow: (i) => 2 * i + 1, scaleRow: (i) => 2 * i, context };
    const hiddenDegrees = degreesFromMasks(dict, dict.full(net), inputDegrees, made);
    const stored = [`${net}.initial_layer`, ...(residual ? residualBlocks.flatMap((b) => [`${net}.blocks.${b}.linear_layers.0`, `${net}.blocks.${b}.linear_layers.1`]) : blocks.map((b) => `${net}.blocks.${b}.linear`))];
    // The stored degree vectors must agree with what the masks say.
    stored.forEach((name, l) => {
      const degrees = dict.integers(`${name}.degrees`, [width]);
      // nflows gives degree-0 units (D = 1) a degree its masks cannot show; only connected units must agree.
      if (degrees.some((d, j) => d !== hiddenDegrees[l][j] && hiddenDegrees[l][j] !== 0)) dict.fail(`${dict.full(name)}.degrees disagrees with ${dict.full(name)}.mask`);
    });
    dict.integers(`${net}.final_layer.degrees`, [2 * dim]);
    layers.push({
      type: 'maf',
      hidden: hidden.map((h) => h.bias.length),
      activation,
      scale: 'softplus',
      inputDegrees,
      hiddenDegrees,
      residual,
      ...(contextDim > 0 ? { contextForm: 'activated' as const } : {}),
    });
    madeParameters(k, made, dim, params);
  });
  return { config: { formatVersion: FORMAT_VERSION, dim, contextDim, layers }, params };
}

/**
 * nflows' PointwiseAffineTransform (sbi's z_score_x) maps data to noise, z = x * scale + shift;
 * iaflow's affine layer maps noise to data, b = loc + s * a. So s = 1 / scale, loc = -shift / scale
 * (computed in float64), and the log-determinants agree: sum log|scale| = -sum log|s|.
 */
function affineFromZScore(dict: StateDict, at: string, dim: number): { loc: Float32Array; scale: Float32Array } {
  const shift = dict.floatsPerFeature(`${at}._shift`, dim);
  const scale = dict.floatsPerFeature(`${at}._scale`, dim);
  const loc = new Float32Array(dim);
  const s = new Float32Array(dim);
  for (let i = 0; i < dim; i++) {
    if (scale[i] === 0) dict.fail(`tensor ${dict.full(at)}._scale is 0 at index ${i}: not an invertible z-scoring`);
    loc[i] = -shift[i] / scale[i];
    s[i] = 1 / scale[i];
    if (!Number.isFinite(loc[i]) || !Number.isFinite(s[i]) || s[i] === 0) {
      dict.fail(`${dict.full(at)}: the z-scoring at index ${i} (shift ${shift[i]}, scale ${scale[i]}) is not representable in float32 as data-side loc and scale`);
    }
  }
  return { loc, scale: s };
}

/**
 * sbi's context standardisation (`_embedding_net.0._mean` / `._std`, c' = (c - mean) / std), or
 * undefined if the file has none. Any other embedding-net tensor is refused: a learned embedding
 * of the context is not a MADE layer.
 */
function readContextStandardization(dict: StateDict, contextDim: number): { mean: Float32Array; std: Float32Array } | undefined {
  const embedding = dict.namesUnder('_embedding_net.');
  const other = embedding.find((name) => name !== CONTEXT_MEAN && name !== CONTEXT_STD);
  if (other !== undefined) {
    dict.fail(`${shorten(dict.full(other))}: an embedding net with its own tensors cannot be imported (only sbi's context z-scoring, ${dict.full(CONTEXT_MEAN)} and ._std, is read): iaflow's MADEs take the context directly`);
  }
  if (embedding.length === 0) return undefined;
  if (!dict.has(CONTEXT_MEAN) || !dict.has(CONTEXT_STD)) dict.fail(`${dict.full('_embedding_net.0')} needs both _mean and _std`);
  if (contextDim === 0) dict.fail(`${dict.full('_embedding_net.0')} standardises a context, but no MADE takes one (no context_layer)`);
  const mean = dict.floatsPerFeature(CONTEXT_MEAN, contextDim);
  const std = dict.floatsPerFeature(CONTEXT_STD, contextDim);
  const zero = std.findIndex((v) => v === 0);
  if (zero >= 0) dict.fail(`tensor ${dict.full(CONTEXT_STD)} is 0 at index ${zero}: not a standardisation`);
  return { mean, std };
}

/**
 * act(W (c - mean) / std + b) = act(W' c + b') with W' = W / std (column k by std[k]) and
 * b' = b - W' mean, in float64: the standardisation becomes part of the context layer.
 */
function foldStandardization(weight: Float32Array, bias: Float32Array, { mean, std }: { mean: Float32Array; std: Float32Array }) {
  const C = mean.length;
  const width = bias.length;
  const folded = new Float32Array(width * C);
  const foldedBias = new Float32Array(width);
  for (let j = 0; j < width; j++) {
    let offset = bias[j];
    for (let k = 0; k < C; k++) {
      const w = weight[j * C + k] / std[k];
      folded[j * C + k] = w;
      offset -= w * mean[k];
    }
    foldedBias[j] = offset;
  }
  return { weight: folded, bias: foldedBias };
}
