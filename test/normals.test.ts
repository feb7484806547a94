// The library's standard-normal stream: Philox 4x32-10 and Box-Muller in double precision with the
// core's own log and sin/cos (native/core/normals.h), one algorithm for the scalar code and every
// instruction set's vector code. Checked here: the stream is what DESIGN.md defines (against an
// independent float64 computation in JS, whose Philox passes Random123's known answers); it is
// bit-identical on every instruction set this CPU runs, for any thread count, and for any split
// into row ranges; and its samples have the moments and tails of N(0, 1).
import { getThreads, setThreads, standardNormal } from '../src/index';
import { native } from '../src/native';

const MASK32 = 0xffffffffn;

/** Philox 4x32-10 in BigInt arithmetic (Salmon et al. 2011), independent of the native code. */
function philox4x32(counter: readonly number[], key: readonly number[]): number[] {
  let [c0, c1, c2, c3] = counter.map(BigInt);
  let [k0, k1] = key.map(BigInt);
  for (let round = 0; round < 10; round++) {
    const p0 = 0xd2511f53n * c0;
    const p1 = 0xcd9e8d57n * c2;
    [c0, c1, c2, c3] = [(p1 >> 32n) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32n) ^ c3 ^ k1, p0 & MASK32];
    k0 = (k0 + 0x9e3779b9n) & MASK32;
    k1 = (k1 + 0xbb67ae85n) & MASK32;
  }
  return [c0, c1, c2, c3].map(Number);
}

/**
 * Two normals from two 32-bit words, in float64 with Math's log/sin/cos: radius from the first word,
 * angle 2 pi t from the second, t = (w + 0.5) / 2^32 reduced exactly by quarter turns as the core does.
 */
function boxMuller(radiusWord: number, angleWord: number): [number, number] {
  const u = (radiusWord + 0.5) / 2 ** 32;
  const radius = Math.sqrt(-2 * Math.log(u));
  const quarter = Math.floor((angleWord + 2 ** 29) / 2 ** 30); // nearest quarter turn, 0..4
  const x = 2 * Math.PI * ((angleWord - quarter * 2 ** 30 + 0.5) / 2 ** 32);
  const turns = [
    [Math.sin(x), Math.cos(x)],
    [Math.cos(x), -Math.sin(x)],
    [-Math.sin(x), -Math.cos(x)],
    [-Math.cos(x), Math.sin(x)],
  ][quarter % 4];
  return [radius * turns[1], radius * turns[0]];
}

/** Row `row`, dimensions 0..dim-1 of the stream of (seedLo, seedHi), per DESIGN.md. */
function referenceRow(seedLo: number, seedHi: number, row: number, dim: number): number[] {
  const out: number[] = [];
  for (let block = 0; 4 * block < dim; block++) {
    const words = philox4x32([block, row % 2 ** 32, Math.floor(row / 2 ** 32), 0x1af10b], [seedLo, seedHi]);
    out.push(...boxMuller(words[0], words[1]), ...boxMuller(words[2], words[3]));
  }
  return out.slice(0, dim).map(Math.fround);
}

function draw(seedLo: number, seedHi: number, firstRow: number, rows: number, dim: number): Float32Array {
  const out = new Float32Array(rows * dim);
  native.standardNormal({ seed: [seedLo, seedHi], firstRow, rows, dim, out });
  return out;
}

function bits(values: Float32Array): number[] {
  return Array.from(new Uint32Array(values.buffer, values.byteOffset, values.length));
}

// Distance in float32 units in the last place (same-sign values; 0 when equal).
function ulpDistance(a: number, b: number): number {
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat32(0, a);
  view.setFloat32(4, b);
  return Math.abs(view.getInt32(0) - view.getInt32(4));
}

const ISAS = native.kernelInfo().available.split(',');
const BEST_ISA = native.kernelInfo().isa;

describe('the Philox stream', () => {
  test('the JS Philox 4x32-10 gives Random123 known answers', () => {
    const hex = (words: number[]) => words.map((w) => w.toString(16).padStart(8, '0')).join(' ');
    expect(hex(philox4x32([0, 0, 0, 0], [0, 0]))).toBe('6627e8d5 e169c58d bc57ac4c 9b00dbd8');
    expect(hex(philox4x32([0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], [0xffffffff, 0xffffffff]))).toBe(
      '408f276d 41c83b0e a20bc7c6 6d5451fd',
    );
    expect(hex(philox4x32([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]))).toBe(
      'd16cfe09 94fdcceb 5001e420 24126ea1',
    );
  });

  // The core's log and sin/cos are within about 1 ulp of double, as are Math's, so a float can
  // differ only where the exact value lies within ~2^-52 (relative) of a rounding boundary.
  test.each([
    [1, 7, 0, 0, 300],
    [0x9e3779b9, 0x12345, 5, 2 ** 32 - 3, 200], // a seed with a high word; rows across 2^32
  ])('equals Box-Muller of Philox in float64 (seed %i:%i, dim %i)', (seedLo, seedHi, dim0, firstRow, rows) => {
    for (const dim of dim0 ? [dim0] : [1, 3, 4, 7, 16]) {
      const got = draw(seedLo, seedHi, firstRow, rows, dim);
      let inexact = 0;
      for (let r = 0; r < rows; r++) {
        const expected = referenceRow(seedLo, seedHi, firstRow + r, dim);
        for (let i = 0; i < dim; i++) {
          const distance = ulpDistance(got[r * dim + i], expected[i]);
          expect(distance).toBeLessThanOrEqual(1);
          inexact += distance;
        }
      }
      expect(inexact).toBeLessThanOrEqual(1);
    }
  });
});

describe('the stream is bit-identical', () => {
  afterAll(() => native.selectKernels(BEST_ISA));
  const original = getThreads();
  afterAll(() => setThreads(original));

  // Row counts and dims that leave partial vectors (the last blocks run one lane at a time).
  const SHAPES: [number, number][] = [[1, 1], [7, 3], [33, 4], [1000, 5], [257, 16], [1000, 64]];

  test.each(SHAPES)('on every instruction set this CPU runs (%i rows x %i dims)', (rows, dim) => {
    const results = ISAS.map((isa) => {
      expect(native.selectKernels(isa)).toBe(true);
      return bits(draw(12345, 678, 11, rows, dim));
    });
    native.selectKernels(BEST_ISA);
    for (const result of results.slice(1)) expect(result).toEqual(results[0]);
  });

  test.each([1, 2])('with %i threads as with one call on one thread', (threads) => {
    setThreads(1);
    const single = bits(draw(99, 0, 0, 5000, 6));
    setThreads(threads);
    expect(bits(draw(99, 0, 0, 5000, 6))).toEqual(single);
  });

  test.each(ISAS)('for any split into row ranges (%s kernels)', (isa) => {
    expect(native.selectKernels(isa)).toBe(true);
    for (const dim of [1, 5, 8]) {
      const whole = draw(4242, 1, 0, 1200, dim);
      for (const [a, b] of [[0, 1], [3, 10], [7, 1045], [1199, 1200], [500, 1200]]) {
        expect(bits(draw(4242, 1, a, b - a, dim))).toEqual(bits(whole.subarray(a * dim, b * dim)));
      }
    }
    native.selectKernels(BEST_ISA);
  });

  test('the public standardNormal is the stream of its seed from row 0', () => {
    expect(bits(standardNormal(50, 3, { seed: 2 ** 40 + 17 }))).toEqual(bits(draw(17, 2 ** 8, 0, 50, 3)));
  });
});

describe('samples are standard normal (fixed seed, 2^20 draws)', () => {
  const z = draw(2024, 0, 0, 1 << 18, 4);
  const n = z.length;

  test('mean, variance, skewness and kurtosis', () => {
    let s1 = 0, s2 = 0, s3 = 0, s4 = 0;
    for (const v of z) {
      s1 += v;
      s2 += v * v;
      s3 += v ** 3;
      s4 += v ** 4;
    }
    // Standard errors at n = 2^20: mean 0.001, variance 0.0014, skewness 0.0024, kurtosis 0.0096.
    expect(Math.abs(s1 / n)).toBeLessThan(0.005);
    expect(Math.abs(s2 / n - 1)).toBeLessThan(0.007);
    expect(Math.abs(s3 / n)).toBeLessThan(0.012);
    expect(Math.abs(s4 / n - 3)).toBeLessThan(0.05);
  });

  test('the distribution function at -2, -1, 0, 1, 2 and the tails beyond 3 and 4', () => {
    const phi: [number, number][] = [[-2, 0.0227501319], [-1, 0.1586552539], [0, 0.5], [1, 0.8413447461], [2, 0.9772498681]];
    for (const [x, p] of phi) {
      let below = 0;
      for (const v of z) if (v < x) below++;
      // 5 standard errors of a binomial proportion.
      expect(Math.abs(below / n - p)).toBeLessThan(5 * Math.sqrt((p * (1 - p)) / n));
    }
    for (const [x, p] of [[3, 0.0026997961], [4, 6.3342484e-5]]) {
      let beyond = 0;
      for (const v of z) if (Math.abs(v) > x) beyond++;
      expect(Math.abs(beyond - p * n)).toBeLessThan(5 * Math.sqrt(p * n));
    }
  });

  test('every value is finite and within the radius the 32-bit uniforms allow', () => {
    // u >= 2^-33, so |z| <= sqrt(-2 ln 2^-33) = 6.763...
    let largest = 0;
    for (const v of z) largest = Math.max(largest, Math.abs(v));
    expect(Number.isFinite(largest)).toBe(true);
    expect(largest).toBeLessThan(6.764);
    expect(largest).toBeGreaterThan(4);
  });
});
