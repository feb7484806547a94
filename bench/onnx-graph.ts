// Builds the ONNX graph of a whole flow for onnxruntime-node, as strong as a generic graph can be
// made (issue 10): each hidden layer is one Gemm (bias folded in) + Relu, each head one Gemm + Split,
// with the mask-multiplied weights as initializers stored once and shared by every pass. The
// permutations between layers cost no node: the graph keeps the point in the coordinates of the
// first layer and folds each permutation into the weights of the layers after it (input rows and
// head columns reordered), so at most one Gather remains, on the sampled x at the very end (none
// for the flows createIAF/createMAF build: their reversals cancel out over an odd number of layers).
// The scale comes in iaflow's two forms (flow_math.h): 'exp' (a' = a / (1 + |a| / ln 1e3),
// scale = exp(a'), log-det = sum a': no Log node) and 'softplus' (softplus(a) + 1e-3 and a Log for
// the log-det). The sequential direction is the D-pass loop unrolled: every pass runs the whole
// network from the current u, and after pass p the first p + 1 positions of the autoregressive
// order are exact (the last pass's scales give the log-det).
import type { OnnxProtoModule } from './peers';
import { DenseLinear, Direction, EXP_SOFT_CLIP, FlowNet, HALF_LOG_2PI, MadeNet, SOFTPLUS_FLOOR, travel } from './network';

const FLOAT = 1;
const INT64 = 7;
const ATTR_INT = 2;

interface NodeProto {
  name: string;
  opType: string;
  input: string[];
  output: string[];
  attribute: { name: string; type: number; i: number }[];
}

interface TensorProto {
  name: string;
  dims: number[];
  dataType: number;
  rawData: Uint8Array;
}

class GraphBuilder {
  readonly nodes: NodeProto[] = [];
  readonly initializers: TensorProto[] = [];
  private counter = 0;

  floats(name: string, dims: number[], data: Float32Array | number[]): string {
    const values = data instanceof Float32Array ? data : Float32Array.from(data);
    this.initializers.push({ name, dims, dataType: FLOAT, rawData: new Uint8Array(values.buffer, values.byteOffset, values.byteLength).slice() });
    return name;
  }

  int64s(name: string, values: number[]): string {
    const data = BigInt64Array.from(values.map((v) => BigInt(v)));
    this.initializers.push({ name, dims: [values.length], dataType: INT64, rawData: new Uint8Array(data.buffer) });
    return name;
  }

  node(opType: string, inputs: string[], attrs: Record<string, number> = {}, outputs = 1): string[] {
    const id = this.counter++;
    const out = Array.from({ length: outputs }, (_, k) => `${opType.toLowerCase()}_${id}${outputs > 1 ? `_${k}` : ''}`);
    const attribute = Object.entries(attrs).map(([name, i]) => ({ name, type: ATTR_INT, i }));
    this.nodes.push({ name: `n${id}`, opType, input: inputs, output: out, attribute });
    return out;
  }

  one(opType: string, inputs: string[], attrs: Record<string, number> = {}): string {
    return this.node(opType, inputs, attrs)[0];
  }
}

export interface OnnxGraph {
  bytes: Uint8Array;
  nodeCount: number;
  /** Network passes in the graph (MADE layers for the parallel direction, D per layer for the sequential one). */
  networkPasses: number;
  outputs: string[];
}

/**
 * The flow in one direction: input `input` [N, D] (z for toData, x for toLatent); outputs `x`
 * and `logProb` for toData (sampling), `logProb` for toLatent (density).
 */
export function buildOnnxGraph(onnxProto: OnnxProtoModule, net: FlowNet, direction: Direction): OnnxGraph {
  const g = new GraphBuilder();
  const D = net.dim;
  const constants = new Map<string, string>();
  const scalar = (name: string, value: number) => {
    if (!constants.has(name)) constants.set(name, g.floats(name, [], [value]));
    return constants.get(name)!;
  };
  const axis1 = g.int64s('axes_1', [1]);
  const split = g.int64s('split_d_d', [D, D]);

  // pos[i]: the column of the graph's tensor that holds the flow's current dimension i.
  let pos = Array.from({ length: D }, (_, i) => i);
  // Weights once per MADE layer (in the coordinates in force when the layer is met), shared by every pass.
  const weights = new Map<MadeNet, { hidden: { w: string; b: string }[]; head: { w: string; b: string } }>();
  const gemmWeights = (m: MadeNet, k: number) => {
    let held = weights.get(m);
    if (held) return held;
    const linear = (name: string, l: DenseLinear) => ({ w: g.floats(`${name}_w`, [l.in, l.out], l.wT), b: g.floats(`${name}_b`, [l.out], l.bias) });
    // First hidden layer: its input row i reads the flow's dimension i, stored in column pos[i].
    const first = m.hidden[0];
    const firstW = new Float32Array(first.wT.length);
    for (let i = 0; i < D; i++) firstW.set(first.wT.subarray(i * first.out, (i + 1) * first.out), pos[i] * first.out);
    // Head: output column i (shift) and D + i (raw scale) go to pos[i] and D + pos[i].
    const head = m.head;
    const headW = new Float32Array(head.wT.length);
    const headB = new Float32Array(head.bias.length);
    for (let i = 0; i < D; i++)
      for (const offset of [0, D]) {
        headB[offset + pos[i]] = head.bias[offset + i];
        for (let r = 0; r < head.in; r++) headW[r * head.out + offset + pos[i]] = head.wT[r * head.out + offset + i];
      }
    held = {
      hidden: m.hidden.map((h, l) => linear(`l${k}_h${l}`, l === 0 ? { ...h, wT: firstW } : h)),
      head: linear(`l${k}_head`, { ...head, wT: headW, bias: headB }),
    };
    weights.set(m, held);
    return held;
  };

  // One network pass: shift, scale and log(scale) of u.
  const conditioner = (m: MadeNet, k: number, u: string): { shift: string; scale: string; logScale: string } => {
    const w = gemmWeights(m, k);
    let x = u;
    for (const h of w.hidden) x = g.one('Relu', [g.one('Gemm', [x, h.w, h.b])]);
    const [shift, raw] = g.node('Split', [g.one('Gemm', [x, w.head.w, w.head.b]), split], { axis: 1 }, 2);
    if (m.scale === 'exp') {
      const soft = g.one('Add', [g.one('Mul', [g.one('Abs', [raw]), scalar('inverse_soft_clip', 1 / EXP_SOFT_CLIP)]), scalar('one', 1)]);
      const clipped = g.one('Div', [raw, soft]);
      return { shift, scale: g.one('Exp', [clipped]), logScale: clipped };
    }
    const scale = g.one('Add', [g.one('Softplus', [raw]), scalar('softplus_floor', SOFTPLUS_FLOOR)]);
    return { shift, scale, logScale: g.one('Log', [scale]) };
  };
  const sumOf = (t: string) => g.one('ReduceSum', [t, axis1], { keepdims: 0 });
  const baseLogDensity = (z: string) =>
    g.one('Sub', [g.one('Mul', [sumOf(g.one('Mul', [z, z])), scalar('neg_half', -0.5)]), scalar('base_const', D * HALF_LOG_2PI)]);

  let point = 'input';
  let logDet: string | null = null;
  let passes = 0;
  let k = 0;
  for (const step of travel(net, direction)) {
    if (step.type === 'perm') {
      // new[i] = old[gather[i]]: no data moves, only the bookkeeping of where dimension i lives.
      const old = pos;
      pos = step.gather.map((source) => old[source]);
      continue;
    }
    k++;
    if (step.parallel) {
      const { shift, scale, logScale } = conditioner(step.net, k, point);
      passes++;
      const ls = sumOf(logScale);
      logDet = logDet ? g.one('Add', [logDet, ls]) : ls;
      point = g.one('Add', [g.one('Mul', [point, scale]), shift]);
    } else {
      const v = point;
      let u = g.one('Mul', [v, scalar('zero', 0)]);
      let lastLogScale = '';
      for (let pass = 0; pass < D; pass++) {
        const { shift, scale, logScale } = conditioner(step.net, k, u);
        passes++;
        u = g.one('Div', [g.one('Sub', [v, shift]), scale]);
        lastLogScale = logScale;
      }
      const ls = sumOf(lastLogScale);
      logDet = logDet ? g.one('Sub', [logDet, ls]) : g.one('Neg', [ls]);
      point = u;
    }
  }
  // The sampled x leaves in the flow's own order; the log-densities do not depend on the order.
  if (direction === 'toData' && pos.some((p, i) => p !== i)) point = g.one('Gather', [point, g.int64s('final_order', pos)], { axis: 1 });
  if (!logDet) throw new Error('bench: a flow without MADE layers');
  const outputs: { name: string; value: string; dims: number }[] = [];
  if (direction === 'toData') {
    outputs.push({ name: 'x', value: point, dims: 2 });
    outputs.push({ name: 'logProb', value: g.one('Sub', [baseLogDensity('input'), logDet]), dims: 1 });
  } else {
    outputs.push({ name: 'logProb', value: g.one('Add', [baseLogDensity(point), logDet]), dims: 1 });
  }
  for (const o of outputs) g.nodes.push({ name: `out_${o.name}`, opType: 'Identity', input: [o.value], output: [o.name], attribute: [] });

  const tensorType = (dims: number) => ({
    tensorType: {
      elemType: FLOAT,
      shape: { dim: dims === 2 ? [{ dimParam: 'N' }, { dimValue: D }] : [{ dimParam: 'N' }] },
    },
  });
  const model = {
    irVersion: 8,
    producerName: 'iaflow-bench',
    opsetImport: [{ domain: '', version: 17 }],
    graph: {
      name: `flow_${direction}`,
      node: g.nodes,
      initializer: g.initializers,
      input: [{ name: 'input', type: tensorType(2) }],
      output: outputs.map((o) => ({ name: o.name, type: tensorType(o.dims) })),
    },
  };
  const bytes = onnxProto.onnx.ModelProto.encode(model).finish();
  return { bytes, nodeCount: g.nodes.length, networkPasses: passes, outputs: outputs.map((o) => o.name) };
}
