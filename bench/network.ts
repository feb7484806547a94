// The flow as plain dense tensors (mask-multiplied, transposed to [in, out]) for the peers, the
// masked and dense FLOP counts, and random parameters that make a flow nontrivial but stable.
import type { Flow, FlowConfig, MadeLayerConfig } from '../src/index';

export interface DenseLinear {
  /** [in, out], row-major, masked entries zero. */
  wT: Float32Array;
  bias: Float32Array;
  in: number;
  out: number;
}

export type GraphScale = 'softplus' | 'exp';

export interface MadeNet {
  kind: 'iaf' | 'maf';
  /** softplus: scale = softplus(a) + 1e-3; exp: scale = exp(a / (1 + |a| / ln 1e3)) (flow_math.h). */
  scale: GraphScale;
  hidden: DenseLinear[];
  /** Both heads in one [H, 2D] product: columns 0..D-1 the shift, D..2D-1 the raw scale. */
  head: DenseLinear;
}

export type NetLayer = { type: 'made'; net: MadeNet } | { type: 'perm'; perm: number[] };

export interface FlowNet {
  dim: number;
  layers: NetLayer[];
}

export type Direction = 'toData' | 'toLatent';

/** Softplus scale floor of docs/DESIGN.md: scale = softplus(a) + 1e-3. */
export const SOFTPLUS_FLOOR = 1e-3;
/** iaflow's 'exp' scale soft-clips a before exp: a' = a / (1 + |a| / EXP_SOFT_CLIP) (zuko's). */
export const EXP_SOFT_CLIP = Math.log(1e3);
export const HALF_LOG_2PI = 0.5 * Math.log(2 * Math.PI);
/** Head weights are uniform in +-HEAD_GAIN/sqrt(width): small enough that the sequential direction stays bounded. */
export const HEAD_GAIN = 0.2;

function madeLayers(config: Readonly<FlowConfig>): MadeLayerConfig[] {
  return config.layers.filter((l): l is MadeLayerConfig => l.type !== 'permutation');
}

/** Multiply-adds the MADE masks allow, per row, for one network pass of every MADE layer. */
export function maskedMacsPerRow(config: Readonly<FlowConfig>): number {
  let macs = 0;
  for (const layer of madeLayers(config)) {
    const inDeg = layer.inputDegrees;
    let prev: readonly number[] = inDeg;
    layer.hiddenDegrees.forEach((degrees) => {
      for (const d of degrees) for (const p of prev) if (p <= d) macs++;
      prev = degrees;
    });
    let head = 0;
    for (const i of inDeg) for (const m of prev) if (m < i) head++;
    macs += 2 * head;
  }
  return macs;
}

/** Multiply-adds of one dense pass of every MADE layer (what a dense GEMM computes), per row. */
export function denseMacsPerRow(config: Readonly<FlowConfig>): number {
  let macs = 0;
  for (const layer of madeLayers(config)) {
    let width = config.dim;
    for (const h of layer.hidden) {
      macs += width * h;
      width = h;
    }
    macs += width * 2 * config.dim;
  }
  return macs;
}

/** mulberry32: a small seeded generator, so every run benchmarks the same weights. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Random weights: hidden layers He-uniform over the masked fan-in, heads uniform in
 * +-HEAD_GAIN/sqrt(width), biases small, the scale bias around softplus^-1(1) +- 0.2 (scales
 * 0.8..1.2 or so). Nontrivial, and bounded through 5 layers in both directions (with heads of
 * +-1/sqrt(width) the MAF's sequential direction blows up to 1e22 at D = 64).
 */
export function randomParameters(flow: Flow, seed: number): Record<string, Float32Array> {
  const next = rng(seed);
  const uniform = (bound: number) => (2 * next() - 1) * bound;
  const shapes = flow.parameterShapes();
  const layers = flow.config.layers;
  const out: Record<string, Float32Array> = {};
  const softplusInverseOfOne = Math.log(Math.E - 1);
  for (const [name, shape] of Object.entries(shapes)) {
    const size = shape.reduce((a, b) => a * b, 1);
    const value = new Float32Array(size);
    const fanIn = shape.length === 2 ? shape[1] : 1;
    if (name.endsWith('.weight') && name.includes('.hidden.')) {
      const bound = Math.sqrt(6 / Math.max(1, fanIn / 2)); // about half the inputs pass the mask
      for (let i = 0; i < size; i++) value[i] = uniform(bound);
    } else if (name.endsWith('.weight')) {
      const bound = HEAD_GAIN / Math.sqrt(fanIn);
      for (let i = 0; i < size; i++) value[i] = uniform(bound);
    } else if (name.endsWith('.scale.bias')) {
      // Raw scale 0 is scale 1 for 'exp' (the soft clip keeps 0), softplus^-1(1) for 'softplus'.
      const layer = layers[Number(name.split('.')[1])];
      const centre = layer && (layer.type === 'iaf' || layer.type === 'maf') && layer.scale === 'exp' ? 0 : softplusInverseOfOne;
      for (let i = 0; i < size; i++) value[i] = centre + uniform(0.2);
    } else {
      for (let i = 0; i < size; i++) value[i] = uniform(0.1);
    }
    out[name] = value;
  }
  return out;
}

/** The flow's layers as dense masked matrices, in sampling order. */
export function flowNet(flow: Flow): FlowNet {
  const config = flow.config;
  const params = flow.getParameters();
  const dim = config.dim;
  const take = (name: string): Float32Array => {
    const p = params[name];
    if (!p) throw new Error(`bench: parameter ${name} missing`);
    return p;
  };
  const layers: NetLayer[] = config.layers.map((layer, k): NetLayer => {
    if (layer.type === 'permutation') return { type: 'perm', perm: [...layer.permutation] };
    if (layer.type === 'affine' || (layer.softClamp ?? 0) > 0) throw new Error('bench: the peers implement plain MADE and permutation layers only (no affine layer, softClamp 0)');
    if (layer.activation !== 'relu' || (layer.scale !== 'softplus' && layer.scale !== 'exp') || layer.residual) {
      throw new Error('bench: the peers implement plain relu MADE layers with the softplus or exp scale only');
    }
    const hidden: DenseLinear[] = [];
    let prevDeg: readonly number[] = layer.inputDegrees;
    layer.hidden.forEach((width, l) => {
      const deg = layer.hiddenDegrees[l];
      const w = take(`layers.${k}.hidden.${l}.weight`); // [width, in]
      const inWidth = prevDeg.length;
      const wT = new Float32Array(inWidth * width);
      for (let j = 0; j < width; j++)
        for (let i = 0; i < inWidth; i++) if (prevDeg[i] <= deg[j]) wT[i * width + j] = w[j * inWidth + i];
      hidden.push({ wT, bias: take(`layers.${k}.hidden.${l}.bias`).slice(), in: inWidth, out: width });
      prevDeg = deg;
    });
    const H = prevDeg.length;
    const shiftW = take(`layers.${k}.shift.weight`);
    const scaleW = take(`layers.${k}.scale.weight`);
    const wT = new Float32Array(H * 2 * dim);
    for (let i = 0; i < dim; i++)
      for (let m = 0; m < H; m++)
        if (prevDeg[m] < layer.inputDegrees[i]) {
          wT[m * 2 * dim + i] = shiftW[i * H + m];
          wT[m * 2 * dim + dim + i] = scaleW[i * H + m];
        }
    const bias = new Float32Array(2 * dim);
    bias.set(take(`layers.${k}.shift.bias`), 0);
    bias.set(take(`layers.${k}.scale.bias`), dim);
    return { type: 'made', net: { kind: layer.type, scale: layer.scale, hidden, head: { wT, bias, in: H, out: 2 * dim } } };
  });
  return { dim, layers };
}

/** The layers in the order a pass in `direction` meets them, each with how it runs. */
export function travel(net: FlowNet, direction: Direction) {
  const ordered = direction === 'toData' ? net.layers : [...net.layers].reverse();
  return ordered.map((layer) => {
    if (layer.type === 'perm') {
      const perm = layer.perm;
      // toData: b[i] = a[perm[i]]; toLatent: a[perm[i]] = b[i], i.e. a = b[inverse].
      const gather = direction === 'toData' ? perm : invert(perm);
      return { type: 'perm' as const, gather };
    }
    const parallel = (direction === 'toData') === (layer.net.kind === 'iaf');
    return { type: 'made' as const, net: layer.net, parallel };
  });
}

function invert(perm: number[]): number[] {
  const inv = new Array<number>(perm.length);
  perm.forEach((p, i) => (inv[p] = i));
  return inv;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= worst)) worst = Number.isNaN(d) ? Infinity : d;
  }
  return worst;
}
