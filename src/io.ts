// Flows to and from model files: one .safetensors file, float32 tensors named
// `layers.{k}.{param}` as getParameters() names them, the config as JSON in
// `__metadata__` (key "iaflow"). Python's safetensors package reads it as is.
import { Flow } from './flow';
import {
  ACTIVATIONS,
  Activation,
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
import { checkEnum, checkOptions, invalidType } from './validation';

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
/** A PyTorch state dict: per layer, weight, bias, mask and (nflows) degrees for each linear, and a
 * permutation or order. The masks (F32 in nflows) take as many bytes as the weights and the I64
 * degrees (one per unit, each unit having at least 2 weights) at most as many again: 3x in all. */
const TORCH_LIMITS: Required<ReadLimits> = {
  maxTensors: MAX_LAYERS * (4 * (MAX_HIDDEN_LAYERS + 1) + 1) + 2,
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
  await writeFileAtomic(path, bytes);
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
  return new Flow(config, params);
}

// ---- Weights trained in PyTorch ----

export type TorchSource = 'zuko-maf' | 'nflows-maf';

export interface ImportTorchOptions {
  /** Which library's MAF the state dict comes from. */
  from: TorchSource;
  /** The hidden activation, which a state dict does not record. Default 'relu' (both libraries' default). */
  activation?: Activation;
}

/**
 * Builds the iaflow flow equivalent to a PyTorch MAF whose `state_dict()` was saved with
 * `safetensors.torch.save_file`: zuko's `zuko.flows.MAF` or nflows' `MaskedAutoregressiveFlow`
 * (plain or residual MADE blocks). Each library's direction, order, output layout and scale
 * formula is mapped exactly; the MADE degrees are read off the stored masks, and a mask that no
 * degree assignment reproduces is refused. See the README for the Python side.
 */
export async function importTorch(path: string, options: ImportTorchOptions): Promise<Flow> {
  if (typeof path !== 'string' || path.length === 0) throw invalidType('path', 'a file path string', path);
  const opts = checkOptions('importTorch options', options, ['from', 'activation']);
  const from = checkEnum('options.from', opts.from, ['zuko-maf', 'nflows-maf'] as const);
  const activation = checkEnum('options.activation', opts.activation ?? 'relu', ACTIVATIONS);
  const file = await readSafetensors(path, TORCH_LIMITS);
  const reader = new StateDict(file.tensors, path);
  const { config, params } = from === 'zuko-maf' ? mapZuko(reader, activation) : mapNflows(reader, activation);
  reader.checkAllUsed();
  let checked: FlowConfig;
  try {
    checked = checkFlowConfig(config, 'config');
  } catch (error) {
    throw new ModelFileError(path, `the state dict maps to an invalid flow: ${shorten((error as Error).message, MAX_QUOTED_PROBLEM)}`);
  }
  return new Flow(checked, params);
}

/** Typed, checked access to a state dict's tensors; remembers which were read. */
class StateDict {
  private readonly used = new Set<string>();
  constructor(
    readonly tensors: Map<string, Tensor>,
    private readonly source: string,
  ) {}

  fail(problem: string): never {
    throw new ModelFileError(this.source, problem);
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  private get(name: string, shape?: number[]): Tensor {
    const tensor = this.tensors.get(name);
    if (!tensor) this.fail(`missing tensor ${name}`);
    if (shape && (tensor.shape.length !== shape.length || tensor.shape.some((d, i) => d !== shape[i]))) {
      this.fail(`tensor ${name} has shape [${tensor.shape.join(', ')}], expected [${shape.join(', ')}]`);
    }
    this.used.add(name);
    return tensor;
  }

  floats(name: string, shape?: number[]): Float32Array {
    const tensor = this.get(name, shape);
    if (tensor.dtype !== 'F32') this.fail(`tensor ${name} has dtype ${tensor.dtype}, expected F32`);
    const data = tensor.data as Float32Array;
    const bad = firstNonFinite(data);
    if (bad >= 0) this.fail(`tensor ${name} holds a non-finite value (${data[bad]}) at index ${bad}`);
    return data;
  }

  integers(name: string, shape?: number[]): number[] {
    const tensor = this.get(name, shape);
    if (tensor.dtype !== 'I64' && tensor.dtype !== 'I32') this.fail(`tensor ${name} has dtype ${tensor.dtype}, expected I64`);
    return Array.from(tensor.data as ArrayLike<number | bigint>, (v) => Number(v));
  }

  /** A 0/1 mask stored as BOOL (zuko) or F32 (nflows), as booleans [out][in]. */
  mask(name: string, out: number, inputs: number): boolean[][] {
    const tensor = this.get(name, [out, inputs]);
    if (tensor.dtype !== 'BOOL' && tensor.dtype !== 'F32') this.fail(`tensor ${name} has dtype ${tensor.dtype}, expected BOOL or F32`);
    const data = tensor.data as Uint8Array | Float32Array;
    return Array.from({ length: out }, (_, o) =>
      Array.from({ length: inputs }, (_, i) => {
        const v = data[o * inputs + i];
        if (v !== 0 && v !== 1) this.fail(`tensor ${name} is not a 0/1 mask (value ${v} at [${o}, ${i}])`);
        return v === 1;
      }),
    );
  }

  /** Indices n for which `${prefix}{n}${suffix}` exists, ascending. */
  indices(prefix: string, suffix: string): number[] {
    const found: number[] = [];
    for (const name of this.tensors.keys()) {
      if (!name.startsWith(prefix) || !name.endsWith(suffix)) continue;
      const middle = name.slice(prefix.length, name.length - suffix.length);
      if (/^\d+$/.test(middle)) found.push(Number(middle));
    }
    return found.sort((a, b) => a - b);
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
}

function readLinear(dict: StateDict, prefix: string, inputs: number, out?: number) {
  const bias = dict.floats(`${prefix}.bias`);
  const width = out ?? bias.length;
  if (bias.length !== width) dict.fail(`tensor ${prefix}.bias has ${bias.length} entries, expected ${width}`);
  return { weight: dict.floats(`${prefix}.weight`, [width, inputs]), bias, mask: dict.mask(`${prefix}.mask`, width, inputs) };
}

/**
 * zuko: `transform.transforms.{t}` maps data to noise in order t = 0, 1, ... (each a MAF layer);
 * feature i has rank order[i]; the MADE `hyper` is Linear layers at even indices with the
 * activation between them; output rows 2i / 2i+1 are shift_i / unconstrained scale a_i; the scale
 * is exp of a soft-clipped a (iaflow's 'exp').
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
  // iaflow lists layers latent first: zuko's last transform is iaflow's layer 0.
  [...transforms].reverse().forEach((t, k) => {
    const prefix = `transform.transforms.${t}`;
    const order = dict.integers(`${prefix}.order`, [dim]);
    const inputDegrees = order.map((rank) => rank + 1);
    const linears = dict.indices(`${prefix}.hyper.`, '.weight');
    if (linears.length < 2) dict.fail(`${prefix}.hyper needs at least one hidden layer`);
    let inputs = dim;
    const hidden = linears.slice(0, -1).map((n) => {
      const linear = readLinear(dict, `${prefix}.hyper.${n}`, inputs);
      inputs = linear.bias.length;
      return linear;
    });
    const out = readLinear(dict, `${prefix}.hyper.${linears[linears.length - 1]}`, inputs, 2 * dim);
    const made: MadeWeights = { hidden, out, shiftRow: (i) => 2 * i, scaleRow: (i) => 2 * i + 1 };
    const hiddenDegrees = degreesFromMasks(dict, prefix, inputDegrees, made);
    layers.push({ type: 'maf', hidden: hidden.map((h) => h.bias.length), activation, scale: 'exp', inputDegrees, hiddenDegrees, residual: false });
    madeParameters(k, made, dim, params);
  });
  return { config: { formatVersion: FORMAT_VERSION, dim, contextDim: 0, layers }, params };
}

/**
 * nflows: `_transform._transforms.{i}` maps data to noise in order i = 0, 1, ...; even i are
 * permutations (y[:, j] = x[:, perm[j]]), odd i MADE-affine layers on the natural feature order
 * (plain: act after every hidden layer; residual: nflows' blocks); output rows 2i / 2i+1 are the
 * unconstrained scale a_i / shift_i; scale = softplus(a) + 1e-3 (iaflow's 'softplus').
 */
function mapNflows(dict: StateDict, activation: Activation) {
  const prefix = '_transform._transforms.';
  const permutations = dict.indices(prefix, '._permutation');
  const mades = dict.indices(prefix, '.autoregressive_net.initial_layer.weight');
  if (mades.length === 0) dict.fail('no _transform._transforms.{i}.autoregressive_net tensors: not an nflows MAF state dict');
  const steps = [...permutations.map((i) => ({ i, kind: 'permutation' as const })), ...mades.map((i) => ({ i, kind: 'made' as const }))].sort((a, b) => a.i - b.i);
  steps.forEach((step, position) => {
    if (step.i !== position) dict.fail(`${prefix}${position} is missing (transforms must be numbered 0, 1, 2, ...)`);
  });
  const dim = dict.floats(`${prefix}${mades[0]}.autoregressive_net.initial_layer.weight`).length / dict.floats(`${prefix}${mades[0]}.autoregressive_net.initial_layer.bias`).length;
  if (!Number.isInteger(dim) || dim < 1) dict.fail('cannot tell the dimension from the first initial_layer');
  const layers: LayerConfig[] = [];
  const params = new Map<string, Float32Array>();
  [...steps].reverse().forEach((step, k) => {
    const at = `${prefix}${step.i}`;
    if (step.kind === 'permutation') {
      const perm = dict.integers(`${at}._permutation`, [dim]);
      // nflows: noise-side y[j] = data-side x[perm[j]]; iaflow: data-side b[i] = noise-side a[p[i]], so p = perm^-1.
      const inverse = new Array<number>(dim).fill(-1);
      perm.forEach((source, j) => {
        if (!Number.isInteger(source) || source < 0 || source >= dim || inverse[source] !== -1) dict.fail(`${at}._permutation is not a permutation of 0..${dim - 1}`);
        inverse[source] = j;
      });
      layers.push({ type: 'permutation', permutation: inverse });
      return;
    }
    const net = `${at}.autoregressive_net`;
    const initial = readLinear(dict, `${net}.initial_layer`, dim);
    const width = initial.bias.length;
    const blocks = dict.indices(`${net}.blocks.`, '.linear.weight');
    const residualBlocks = dict.indices(`${net}.blocks.`, '.linear_layers.0.weight');
    if (blocks.length > 0 && residualBlocks.length > 0) dict.fail(`${net} mixes plain and residual blocks`);
    const residual = residualBlocks.length > 0;
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
    const inputDegrees = Array.from({ length: dim }, (_, i) => i + 1);
    const made: MadeWeights = { hidden, out, shiftRow: (i) => 2 * i + 1, scaleRow: (i) => 2 * i };
    const hiddenDegrees = degreesFromMasks(dict, net, inputDegrees, made);
    const stored = [`${net}.initial_layer`, ...(residual ? residualBlocks.flatMap((b) => [`${net}.blocks.${b}.linear_layers.0`, `${net}.blocks.${b}.linear_layers.1`]) : blocks.map((b) => `${net}.blocks.${b}.linear`))];
    // The stored degree vectors must agree with what the masks say.
    stored.forEach((name, l) => {
      const degrees = dict.integers(`${name}.degrees`, [width]);
      // nflows gives degree-0 units (D = 1) a degree its masks cannot show; only connected units must agree.
      if (degrees.some((d, j) => d !== hiddenDegrees[l][j] && hiddenDegrees[l][j] !== 0)) dict.fail(`${name}.degrees disagrees with ${name}.mask`);
    });
    dict.integers(`${net}.final_layer.degrees`, [2 * dim]);
    layers.push({ type: 'maf', hidden: hidden.map((h) => h.bias.length), activation, scale: 'softplus', inputDegrees, hiddenDegrees, residual });
    madeParameters(k, made, dim, params);
  });
  return { config: { formatVersion: FORMAT_VERSION, dim, contextDim: 0, layers }, params };
}
