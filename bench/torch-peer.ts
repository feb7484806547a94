// The torch-exported ONNX peers (issue 10): `iaf_cfgA_sample.onnx` / `iaf_cfgB_sample.onnx` with their
// `*_meta.json`, made by torch.onnx.export from a plain masked-linear MADE IAF (Gemm + Relu hidden
// layers, one Gemm head, x = z * exp(s) + m, log q = log N(z) - sum s, the order reversed between
// layers by the masks, no Gather). They live outside the repository, by default in the folder
// `shared/peers` beside the repository's root (`--peers DIR` names another); absent, the bench says so
// and times its own graphs only.
//
// The exported scale is exp(s) of the raw head output: iaflow's 'exp' scale soft-clips first,
// s' = s / (1 + |s| / ln 1e3) (flow_math.h), so iaflow cannot reproduce the export bit for bit. The
// checks here separate the two: a plain JS evaluation of the initializers with the export's plain
// exp must give the meta file's reference rows (the file is read right), the same evaluation with
// iaflow's soft clip must give iaflow's output on a flow built from the same initializers (iaflow
// computes that network), and the gap between the two is the soft clip alone.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createFlow, iaf } from '../src/index';
import type { Flow } from '../src/index';
import { EXP_SOFT_CLIP, HALF_LOG_2PI, maxAbsDiff } from './network';
import { BENCH_DIR } from './peers';
import type { OnnxProtoModule, OrtModule, OrtSessionOptions } from './peers';

export const TORCH_FILES = { 'CFG-A': 'iaf_cfgA', 'CFG-B': 'iaf_cfgB' } as const;
export type TorchConfig = keyof typeof TORCH_FILES;

/** The default peers folder: `shared/peers` beside the repository's root. */
export function defaultPeersDir(): string {
  return path.resolve(BENCH_DIR, '..', '..', 'shared', 'peers');
}

export interface TorchMeta {
  D: number;
  H: number;
  L: number;
  order: string;
  ref: { z: number[][]; x: number[][]; logq: number[]; logq_seq?: number[] };
}

interface TorchMade {
  w1: Float32Array; // [H, D]
  b1: Float32Array;
  w2: Float32Array; // [H, H]
  b2: Float32Array;
  w3: Float32Array; // [2D, H]: rows 0..D-1 the shift m, D..2D-1 the log-scale s
  b3: Float32Array;
}

export interface TorchPeer {
  config: TorchConfig;
  file: string;
  bytes: Uint8Array;
  meta: TorchMeta;
  mades: TorchMade[];
  inputName: string;
  outputs: { x: string; logq: string };
  nodeCount: number;
}

/** Reads one exported peer; a reason instead when the files are missing or not what the bench expects. */
export function loadTorchPeer(onnx: OnnxProtoModule, dir: string, config: TorchConfig): TorchPeer | { skipped: string } {
  const base = path.join(dir, TORCH_FILES[config]);
  const file = `${base}_sample.onnx`;
  const metaFile = `${base}_meta.json`;
  if (!fs.existsSync(file) || !fs.existsSync(metaFile)) return { skipped: `no ${path.basename(file)} / ${path.basename(metaFile)} in ${dir}` };
  try {
    const bytes = new Uint8Array(fs.readFileSync(file));
    const meta = JSON.parse(fs.readFileSync(metaFile, 'utf8')) as TorchMeta;
    const model = onnx.onnx.ModelProto.decode(bytes);
    const inits = new Map<string, Float32Array>();
    for (const t of model.graph.initializer) {
      if (t.dataType !== 1 || !t.rawData) continue;
      const raw = t.rawData;
      inits.set(t.name, new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength)));
    }
    const { D, H, L } = meta;
    const mades: TorchMade[] = [];
    for (let k = 0; k < L; k++) {
      const take = (name: string, size: number) => {
        const key = [...inits.keys()].find((n) => n.endsWith(`mades.${k}.${name}`));
        const v = key ? inits.get(key) : undefined;
        if (!v || v.length !== size) throw new Error(`initializer mades.${k}.${name} missing or not ${size} floats`);
        return v;
      };
      mades.push({ w1: take('w1', H * D), b1: take('b1', H), w2: take('w2', H * H), b2: take('b2', H), w3: take('w3', 2 * D * H), b3: take('b3', 2 * D) });
    }
    const inputName = model.graph.input[0]?.name ?? 'z';
    const outs = model.graph.output.map((o) => o.name);
    if (outs.length !== 2) throw new Error(`expected 2 outputs (x, log q), found ${outs.join(', ')}`);
    return { config, file, bytes, meta, mades, inputName, outputs: { x: outs[0], logq: outs[1] }, nodeCount: model.graph.node.length };
  } catch (error) {
    return { skipped: `${path.basename(file)} unreadable: ${error instanceof Error ? error.message : String(error)}` };
  }
}

/** The MADE degrees the export's masks imply (zero weights = masked): input order and hidden degrees. */
function degreesOf(m: TorchMade, D: number, H: number): { order: number[]; hiddenDegrees: number[][] } {
  // Input i feeds fewer hidden units the later it comes in the order (the last feeds none).
  const fanOut = Array.from({ length: D }, (_, i) => {
    let n = 0;
    for (let j = 0; j < H; j++) if (m.w1[j * D + i] !== 0) n++;
    return n;
  });
  const byFanOut = [...fanOut.keys()].sort((a, b) => fanOut[b] - fanOut[a]);
  for (let r = 1; r < D; r++) if (fanOut[byFanOut[r]] === fanOut[byFanOut[r - 1]]) throw new Error('two inputs feed as many hidden units: the order is ambiguous');
  const order = new Array<number>(D);
  byFanOut.forEach((dim, rank) => (order[dim] = rank));
  const inputDegree = order.map((r) => r + 1);
  // A unit's degree: the highest degree among its nonzero inputs (its true degree or lower; either
  // gives a mask that keeps every nonzero weight, so iaflow computes the same network).
  const layer = (w: Float32Array, fanIn: number, prev: number[]) =>
    Array.from({ length: H }, (_, j) => {
      let d = 0;
      for (let i = 0; i < fanIn; i++) if (w[j * fanIn + i] !== 0 && prev[i] > d) d = prev[i];
      return d;
    });
  const h1 = layer(m.w1, D, inputDegree);
  const h2 = layer(m.w2, H, h1);
  return { order, hiddenDegrees: [h1, h2] };
}

/** An iaflow flow with the export's weights (scale 'exp': iaflow's soft-clipped exp). */
export function iaflowFromTorch(peer: TorchPeer): Flow {
  const { D, H } = peer.meta;
  const layers = peer.mades.map((m) => {
    const { order, hiddenDegrees } = degreesOf(m, D, H);
    return iaf({ hidden: [H, H], scale: 'exp', order, hiddenDegrees, softClamp: 0 });
  });
  const flow = createFlow({ dim: D, layers, seed: 1 });
  const params: Record<string, Float32Array> = {};
  peer.mades.forEach((m, k) => {
    params[`layers.${k}.hidden.0.weight`] = m.w1;
    params[`layers.${k}.hidden.0.bias`] = m.b1;
    params[`layers.${k}.hidden.1.weight`] = m.w2;
    params[`layers.${k}.hidden.1.bias`] = m.b2;
    params[`layers.${k}.shift.weight`] = m.w3.slice(0, D * H);
    params[`layers.${k}.shift.bias`] = m.b3.slice(0, D);
    params[`layers.${k}.scale.weight`] = m.w3.slice(D * H);
    params[`layers.${k}.scale.bias`] = m.b3.slice(D);
  });
  flow.setParameters(params);
  return flow;
}

/** The export's network in plain JS (float64): x and log q of z, with the plain exp or iaflow's soft clip. */
function evaluate(peer: TorchPeer, z: Float32Array, rows: number, softClip: boolean): { x: Float32Array; logq: Float32Array } {
  const { D, H } = peer.meta;
  const x = new Float32Array(rows * D);
  const logq = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let u = Array.from(z.subarray(r * D, (r + 1) * D), Number);
    let lq = -u.reduce((a, v) => a + 0.5 * v * v, 0) - D * HALF_LOG_2PI;
    for (const m of peer.mades) {
      const dense = (w: Float32Array, b: Float32Array, input: number[], out: number, relu: boolean) =>
        Array.from({ length: out }, (_, j) => {
          let s = b[j];
          for (let i = 0; i < input.length; i++) s += w[j * input.length + i] * input[i];
          return relu ? Math.max(0, s) : s;
        });
      const h = dense(m.w2, m.b2, dense(m.w1, m.b1, u, H, true), H, true);
      const out = dense(m.w3, m.b3, h, 2 * D, false);
      u = u.map((v, i) => {
        const s = softClip ? out[D + i] / (1 + Math.abs(out[D + i]) / EXP_SOFT_CLIP) : out[D + i];
        lq -= s;
        return v * Math.exp(s) + out[i];
      });
    }
    x.set(u, r * D);
    logq[r] = lq;
  }
  return { x, logq };
}

export interface TorchCheck {
  /** Plain-JS evaluation (plain exp) vs the meta file's reference rows: the file is read right. */
  jsVsReference: { x: number; logq: number };
  /** onnxruntime running the export on the reference z vs the reference rows. */
  ortVsReference: { x: number; logq: number } | null;
  /** iaflow on the export's weights vs the plain-JS evaluation with iaflow's soft clip. */
  iaflowVsSoftClip: { x: number; logq: number };
  /** iaflow vs the reference rows: the soft clip's effect (iaflow's 'exp' is not the export's exp). */
  iaflowVsReference: { x: number; logq: number };
  rows: number;
  /** The export's masks keep as many multiply-adds as the bench's own flow of that shape (so timing either is timing the same work). */
  sameMaskedWork: boolean | null;
}

/** The four reference rows through the export (JS and ORT) and through iaflow on the same weights. */
export async function checkTorchPeer(peer: TorchPeer, ort: OrtModule | null, options: OrtSessionOptions, benchFlowMacs: number | null, macsOf: (flow: Flow) => number): Promise<TorchCheck> {
  const { D } = peer.meta;
  const rows = peer.meta.ref.z.length;
  const z = Float32Array.from(peer.meta.ref.z.flat());
  const refX = Float32Array.from(peer.meta.ref.x.flat());
  const refLogq = Float32Array.from(peer.meta.ref.logq);
  const diff = (o: { x: Float32Array; logq: Float32Array }) => ({ x: maxAbsDiff(o.x, refX), logq: maxAbsDiff(o.logq, refLogq) });
  const plain = evaluate(peer, z, rows, false);
  const clipped = evaluate(peer, z, rows, true);
  let ortVsReference: TorchCheck['ortVsReference'] = null;
  if (ort) {
    const session = await ort.InferenceSession.create(peer.bytes, options);
    const out = await session.run({ [peer.inputName]: new ort.Tensor('float32', z, [rows, D]) });
    ortVsReference = diff({ x: out[peer.outputs.x].data as Float32Array, logq: out[peer.outputs.logq].data as Float32Array });
    await session.release();
  }
  const flow = iaflowFromTorch(peer);
  const f = await flow.forward(z);
  const logq = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let sq = 0;
    for (let i = 0; i < D; i++) sq += z[r * D + i] ** 2;
    logq[r] = -0.5 * sq - D * HALF_LOG_2PI - f.logDet[r];
  }
  const mine = { x: f.x, logq };
  return {
    jsVsReference: diff(plain),
    ortVsReference,
    iaflowVsSoftClip: { x: maxAbsDiff(mine.x, clipped.x), logq: maxAbsDiff(mine.logq, clipped.logq) },
    iaflowVsReference: diff(mine),
    rows,
    sameMaskedWork: benchFlowMacs === null ? null : macsOf(flow) === benchFlowMacs,
  };
}
