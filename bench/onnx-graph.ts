// Builds the ONNX graph of a whole flow for onnxruntime-node, the way a Node user would export it:
// MatMul/Add/Relu/Softplus/... nodes with the mask-multiplied weights as initializers (stored
// once, shared by every use), the affine step, the log-det sum, the permutations as Gather and
// the standard-normal log-density. The sequential direction is the D-pass loop unrolled: every
// pass runs the whole network from the current u, and after pass p the first p + 1 positions of
// the autoregressive order are exact (the last pass's scales give the log-det).
import type { OnnxProtoModule } from './peers';
import { Direction, FlowNet, HALF_LOG_2PI, MadeNet, SOFTPLUS_FLOOR, travel } from './network';

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
  const floor = g.floats('softplus_floor', [], [SOFTPLUS_FLOOR]);
  let zero = '';
  const negHalf = g.floats('neg_half', [], [-0.5]);
  const baseConst = g.floats('base_const', [], [D * HALF_LOG_2PI]);
  const axis1 = g.int64s('axes_1', [1]);
  const split = g.int64s('split_d_d', [D, D]);

  // Weights once per MADE layer, shared by every pass.
  const weights = new Map<MadeNet, { hidden: { w: string; b: string }[]; head: { w: string; b: string } }>();
  net.layers.forEach((layer, k) => {
    if (layer.type !== 'made') return;
    const m = layer.net;
    weights.set(m, {
      hidden: m.hidden.map((h, l) => ({
        w: g.floats(`l${k}_h${l}_w`, [h.in, h.out], h.wT),
        b: g.floats(`l${k}_h${l}_b`, [h.out], h.bias),
      })),
      head: { w: g.floats(`l${k}_head_w`, [m.head.in, m.head.out], m.head.wT), b: g.floats(`l${k}_head_b`, [m.head.out], m.head.bias) },
    });
  });

  // One network pass: (shift, scale) of u.
  const conditioner = (m: MadeNet, u: string): { shift: string; scale: string } => {
    const w = weights.get(m)!;
    let x = u;
    for (const h of w.hidden) x = g.one('Relu', [g.one('Add', [g.one('MatMul', [x, h.w]), h.b])]);
    const head = g.one('Add', [g.one('MatMul', [x, w.head.w]), w.head.b]);
    const [shift, raw] = g.node('Split', [head, split], { axis: 1 }, 2);
    const scale = g.one('Add', [g.one('Softplus', [raw]), floor]);
    return { shift, scale };
  };
  const sumLogScale = (scale: string) => g.one('ReduceSum', [g.one('Log', [scale]), axis1], { keepdims: 0 });
  const baseLogDensity = (z: string) =>
    g.one('Sub', [g.one('Mul', [g.one('ReduceSum', [g.one('Mul', [z, z]), axis1], { keepdims: 0 }), negHalf]), baseConst]);

  let point = 'input';
  let logDet: string | null = null;
  let passes = 0;
  const gatherIndices = new Map<string, string>();
  for (const step of travel(net, direction)) {
    if (step.type === 'perm') {
      const key = step.gather.join(',');
      let indices = gatherIndices.get(key);
      if (!indices) {
        indices = g.int64s(`perm_${gatherIndices.size}`, step.gather);
        gatherIndices.set(key, indices);
      }
      point = g.one('Gather', [point, indices], { axis: 1 });
      continue;
    }
    if (step.parallel) {
      const { shift, scale } = conditioner(step.net, point);
      passes++;
      const ls = sumLogScale(scale);
      logDet = logDet ? g.one('Add', [logDet, ls]) : ls;
      point = g.one('Add', [g.one('Mul', [point, scale]), shift]);
    } else {
      const v = point;
      if (!zero) zero = g.floats('zero', [], [0]);
      let u = g.one('Mul', [v, zero]);
      let lastScale = '';
      for (let pass = 0; pass < D; pass++) {
        const { shift, scale } = conditioner(step.net, u);
        passes++;
        u = g.one('Div', [g.one('Sub', [v, shift]), scale]);
        lastScale = scale;
      }
      const ls = sumLogScale(lastScale);
      logDet = logDet ? g.one('Sub', [logDet, ls]) : g.one('Neg', [ls]);
      point = u;
    }
  }
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
