// Gradient checks shared by the training suites: central differences of a float64 loss, and the
// comparison of a native gradient with them.

/** Central differences of f wrt every entry of every parameter (float64); 0 for `fixed` tensors. */
export function finiteDifferences(params: Record<string, Float64Array>, f: () => number, h = 1e-6, fixed = new Set<string>()): Record<string, Float64Array> {
  const out: Record<string, Float64Array> = {};
  for (const [name, values] of Object.entries(params)) {
    const g = new Float64Array(values.length);
    if (fixed.has(name)) {
      out[name] = g;
      continue;
    }
    for (let i = 0; i < values.length; i++) {
      const original = values[i];
      values[i] = original + h;
      const plus = f();
      values[i] = original - h;
      const minus = f();
      values[i] = original;
      g[i] = (plus - minus) / (2 * h);
    }
    out[name] = g;
  }
  return out;
}

/** Every native gradient entry within atol + rtol * |expected| of the expected one; the same names. */
export function expectGradientsClose(actual: Record<string, Float32Array>, expected: Record<string, ArrayLike<number>>, atol: number, rtol: number) {
  expect(Object.keys(actual).sort()).toEqual(Object.keys(expected).sort());
  for (const [name, want] of Object.entries(expected)) {
    const got = actual[name];
    expect(got.length).toBe(want.length);
    for (let i = 0; i < want.length; i++) {
      if (!(Math.abs(got[i] - want[i]) <= atol + rtol * Math.abs(want[i]))) {
        throw new Error(`${name}[${i}]: native ${got[i]}, expected ${want[i]} (atol ${atol}, rtol ${rtol})`);
      }
    }
  }
}
