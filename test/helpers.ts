// Shared by the suites that compare backends (backend.test.ts, conditional.test.ts, cuda.test.ts).
import type { Flow } from '../src/index';

/** Throws, naming the first element, unless |actual - expected| <= atol + rtol |expected| everywhere. */
export function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, atol: number, rtol: number, what: string): void {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    const tolerance = atol + rtol * Math.abs(expected[i]);
    if (!(Math.abs(actual[i] - expected[i]) <= tolerance)) {
      throw new Error(`${what}: element ${i} is ${actual[i]}, expected ${expected[i]} (tolerance ${tolerance})`);
    }
  }
}

/** Weights far from the identity, so every layer's shift and scale matter (a fixed LCG per seed). */
export function randomizeWeights(flow: Flow, seed: number): void {
  let state = seed >>> 0;
  const next = () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2 ** 32 - 0.5;
  };
  const params: Record<string, Float32Array> = {};
  for (const [name, shape] of Object.entries(flow.parameterShapes())) {
    const fanIn = shape.length > 1 ? shape[1] : 1;
    params[name] = Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => (1.4 * next()) / Math.sqrt(fanIn));
  }
  flow.setParameters(params);
}
