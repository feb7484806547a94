// The training-step cell (issue 5: CFG-A training step >= 2x the rows/s of the simple path).
// If the build has no training API (`fit` not exported from src/index.ts), the bench prints
// "training: not available in this build" instead of a number.
//
// What is timed: maximum-likelihood Adam steps (forward through the MAF's parallel direction,
// backward, update) through the library's benchmark hook `__trainingInternals.likelihoodThroughput`
// (src/train.ts), on the staircase kernels or, with `reference`, on the simple dense path. The hook
// builds a trainer, runs one warm-up step, times `steps` steps and returns rows/s; it leaves the
// flow unchanged.
import * as iaflow from '../src/index';
import type { Flow } from '../src/index';
import { __trainingInternals } from '../src/train';

export type TrainingThroughput = (flow: Flow, data: Float32Array, batchSize: number, steps: number, reference: boolean) => number;

export type TrainingAvailability = { available: true; throughput: TrainingThroughput } | { available: false; reason: string };

export function trainingCell(): TrainingAvailability {
  const fit: unknown = Reflect.get(iaflow, 'fit');
  if (typeof fit !== 'function') return { available: false, reason: 'training: not available in this build' };
  return {
    available: true,
    throughput: (flow, data, batchSize, steps, reference) => __trainingInternals.likelihoodThroughput(flow, data, batchSize, steps, { reference }),
  };
}
