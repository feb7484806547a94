// The flow's parallel direction in TensorFlow.js (tf.matMul etc.), on whichever backend is set:
// the same masked dense weights as the ONNX graph, uploaded once.
import type { TfModule, TfTensor } from './peers';
import { Direction, EXP_SOFT_CLIP, FlowNet, HALF_LOG_2PI, SOFTPLUS_FLOOR, travel } from './network';

export interface TfRunner {
  run(input: Float32Array, rows: number): { x: Float32Array | null; logProb: Float32Array };
  dispose(): void;
}

/** Only the parallel direction: input z (toData, IAF sampling) or x (toLatent, MAF density). */
export function tfParallelRunner(tf: TfModule, net: FlowNet, direction: Direction): TfRunner {
  const D = net.dim;
  const keep: TfTensor[] = [];
  const held = (t: TfTensor) => (keep.push(t), t);
  const steps = travel(net, direction).map((step) => {
    if (step.type === 'perm') return { type: 'perm' as const, indices: held(tf.tensor1d(Int32Array.from(step.gather), 'int32')) };
    if (!step.parallel) throw new Error('bench: the TF.js peer runs the parallel direction only');
    return {
      type: 'made' as const,
      scale: step.net.scale,
      hidden: step.net.hidden.map((h) => ({ w: held(tf.tensor2d(h.wT, [h.in, h.out])), b: held(tf.tensor1d(h.bias)) })),
      head: { w: held(tf.tensor2d(step.net.head.wT, [step.net.head.in, step.net.head.out])), b: held(tf.tensor1d(step.net.head.bias)) },
    };
  });
  const floor = held(tf.scalar(SOFTPLUS_FLOOR));
  const one = held(tf.scalar(1));
  const inverseClip = held(tf.scalar(1 / EXP_SOFT_CLIP));
  const negHalf = held(tf.scalar(-0.5));
  const baseConst = held(tf.scalar(D * HALF_LOG_2PI));
  const baseLogDensity = (z: TfTensor) => tf.sub(tf.mul(tf.sum(tf.square(z), 1), negHalf), baseConst);

  return {
    run(input, rows) {
      const [x, logProb] = tf.tidy(() => {
        const start = tf.tensor2d(input.subarray(0, rows * D), [rows, D]);
        let point = start;
        let logDet: TfTensor | null = null;
        for (const step of steps) {
          if (step.type === 'perm') {
            point = tf.gather(point, step.indices, 1);
            continue;
          }
          let h = point;
          for (const layer of step.hidden) h = tf.relu(tf.add(tf.matMul(h, layer.w), layer.b));
          const head = tf.add(tf.matMul(h, step.head.w), step.head.b);
          const shift = tf.slice(head, [0, 0], [rows, D]);
          const raw = tf.slice(head, [0, D], [rows, D]);
          let scale: TfTensor;
          let ls: TfTensor;
          if (step.scale === 'exp') {
            const clipped = tf.div(raw, tf.add(one, tf.mul(tf.abs(raw), inverseClip)));
            scale = tf.exp(clipped);
            ls = tf.sum(clipped, 1);
          } else {
            scale = tf.add(tf.softplus(raw), floor);
            ls = tf.sum(tf.log(scale), 1);
          }
          logDet = logDet ? tf.add(logDet, ls) : ls;
          point = tf.add(tf.mul(point, scale), shift);
        }
        if (!logDet) throw new Error('bench: a flow without MADE layers');
        return direction === 'toData'
          ? [point, tf.sub(baseLogDensity(start), logDet)]
          : [point, tf.add(baseLogDensity(point), logDet)];
      });
      const out = {
        x: direction === 'toData' ? Float32Array.from(x.dataSync()) : null,
        logProb: Float32Array.from(logProb.dataSync()),
      };
      x.dispose();
      logProb.dispose();
      return out;
    },
    dispose() {
      for (const t of keep) t.dispose();
    },
  };
}
