// Seeded 2-D toy data sets for density-estimation demos and tests: two moons
// (with its exact log-density, so a trained flow's test log-likelihood can be
// compared with the best achievable), and the FFJORD toy sets.
//
// Every generator returns a fresh row-major Float32Array of n*2 values: point i
// is (data[2*i], data[2*i + 1]). The same seed gives the same points on every
// platform, because all randomness comes from the pure-TypeScript xoshiro128**
// stream in layers.ts (not Math.random, not the native stream).
//
// The FFJORD definitions follow rtqichen/ffjord lib/toy_data.py (inf_train_gen).
// Where that code cannot be followed literally (it returns fewer than n points
// when n is not a multiple of the class count), the deviation is noted at the
// generator.
import { Random } from './layers';
import {
  allocateFloats,
  checkOptions,
  checkRowCount,
  checkSeed,
  invalidRange,
  invalidType,
  toRowMajor,
} from './validation';

export interface DatasetOptions {
  /** Seed of the generator, a non-negative safe integer; default 0. */
  seed?: number;
}

export interface NoisyDatasetOptions extends DatasetOptions {
  /** Standard deviation of the Gaussian noise; each generator documents its default and where the noise enters. */
  noise?: number;
}

const TWO_MOONS_DEFAULT_NOISE = 0.05;

/**
 * Standard normals by the Box-Muller transform on top of `Random`. The second value of each
 * pair is kept for the next call, so no uniform draw is wasted. With 32-bit uniforms the
 * largest radius is sqrt(2 ln 2^32) ~ 6.7, so tails beyond 6.7 sigma are cut: irrelevant for
 * toy data.
 */
class NormalSampler {
  private spare: number | undefined;

  constructor(private readonly random: Random) {}

  next(): number {
    if (this.spare !== undefined) {
      const value = this.spare;
      this.spare = undefined;
      return value;
    }
    // 1 - u lies in (0, 1], so the logarithm is finite.
    const radius = Math.sqrt(-2 * Math.log(1 - this.random.next()));
    const angle = 2 * Math.PI * this.random.next();
    this.spare = radius * Math.sin(angle);
    return radius * Math.cos(angle);
  }
}

function checkNoise(name: string, value: unknown): number {
  if (typeof value !== 'number' || Number.isNaN(value)) throw invalidType(name, 'a finite number >= 0', value);
  if (!Number.isFinite(value) || value < 0) throw invalidRange(name, 'a finite number >= 0', value);
  return value;
}

interface Generator {
  rows: number;
  random: Random;
  normal: NormalSampler;
  noise: number;
  out: Float32Array;
}

/**
 * Validates n and the options of one generator. `defaultNoise` undefined means the data set
 * has no noise parameter, and then `noise` is an unknown option rather than silently ignored.
 */
function startGenerator(fn: string, n: unknown, options: unknown, defaultNoise: number | undefined): Generator {
  const rows = checkRowCount('n', n, 2);
  const allowed = defaultNoise === undefined ? ['seed'] : ['seed', 'noise'];
  const opts = checkOptions(`${fn} options`, options, allowed);
  const seed = opts.seed === undefined ? 0 : checkSeed(`${fn} options.seed`, opts.seed);
  const noise = opts.noise === undefined ? (defaultNoise ?? 0) : checkNoise(`${fn} options.noise`, opts.noise);
  const random = new Random(seed);
  return { rows, random, normal: new NormalSampler(random), noise, out: allocateFloats(rows * 2, `${fn}(${rows})`) };
}

/**
 * Fisher-Yates shuffle of the rows of an n*2 array. The generators that build their classes
 * in blocks (pinwheel, rings, twoSpirals) shuffle, as ffjord does for pinwheel and rings, so
 * that any prefix of the result is a fair sample.
 */
function shuffleRows(data: Float32Array, random: Random): void {
  for (let i = data.length / 2 - 1; i > 0; i--) {
    const j = Math.floor(random.next() * (i + 1));
    const x = data[2 * i];
    const y = data[2 * i + 1];
    data[2 * i] = data[2 * j];
    data[2 * i + 1] = data[2 * j + 1];
    data[2 * j] = x;
    data[2 * j + 1] = y;
  }
}

/**
 * Two interleaved half circles. Exactly: t ~ U(0, pi); with probability 1/2 the outer moon
 * (cos t, sin t), else the inner moon (1 - cos t, 0.5 - sin t); then independent
 * N(0, noise^2) on each coordinate (noise default 0.05). No standardisation, so
 * `twoMoonsLogDensity` is the exact density of these points; its average over samples, the
 * best test log-likelihood a model can reach, is about -0.279 nats per point at noise 0.05.
 *
 * @returns a row-major Float32Array of n*2 values.
 */
export function twoMoons(n: number, options?: NoisyDatasetOptions): Float32Array {
  const { rows, random, normal, noise, out } = startGenerator('twoMoons', n, options, TWO_MOONS_DEFAULT_NOISE);
  for (let i = 0; i < rows; i++) {
    const t = Math.PI * random.next();
    const outer = random.next() < 0.5;
    const x = outer ? Math.cos(t) : 1 - Math.cos(t);
    const y = outer ? Math.sin(t) : 0.5 - Math.sin(t);
    out[2 * i] = x + noise * normal.next();
    out[2 * i + 1] = y + noise * normal.next();
  }
  return out;
}

/**
 * Exact log-density (nats) of the two-moons distribution of `twoMoons` with the given noise
 * (default 0.05) at each point: log of (1/pi) * integral over t in (0, pi) of the equal mixture
 * of N((cos t, sin t), noise^2 I) and N((1 - cos t, 0.5 - sin t), noise^2 I).
 *
 * The integral over t is a midpoint rule with at least 2048 nodes, and with nodes no further
 * apart than noise/20 along the moons (unit speed in t), so each Gaussian bump is sampled
 * densely and the rule is accurate to far better than 1e-4 relative; the sum is a
 * log-sum-exp, so points far from the moons get large negative values, not -Infinity. The
 * cost is O(n * nodes), about 4096 exponentials per point at the default noise.
 *
 * @param points a row-major Float32Array/Float64Array of n*2 values, or an array of [x, y] rows.
 * @returns a Float64Array of n log-densities (float64: this is the reference a model's
 *   float32 log-likelihood is compared with).
 */
export function twoMoonsLogDensity(points: Float32Array | Float64Array | number[][], noise = TWO_MOONS_DEFAULT_NOISE): Float64Array {
  const { data, rows } = toRowMajor('points', points, 2);
  if (typeof noise !== 'number' || Number.isNaN(noise)) throw invalidType('noise', 'a finite number > 0', noise);
  if (!Number.isFinite(noise) || noise <= 0) throw invalidRange('noise', 'a finite number > 0', noise);

  const nodes = Math.max(2048, Math.ceil((20 * Math.PI) / noise));
  const cosT = new Float64Array(nodes);
  const sinT = new Float64Array(nodes);
  for (let k = 0; k < nodes; k++) {
    const t = ((k + 0.5) * Math.PI) / nodes;
    cosT[k] = Math.cos(t);
    sinT[k] = Math.sin(t);
  }
  const halfPrecision = 1 / (2 * noise * noise);
  // The 1/pi of the uniform t cancels the pi/nodes node weight; 1/2 is the moon choice and
  // 1/(2 pi noise^2) the Gaussian's normaliser.
  const logConstant = -Math.log(2 * nodes) - Math.log(2 * Math.PI * noise * noise);
  const squaredDistances = new Float64Array(2 * nodes);
  const result = new Float64Array(rows);
  for (let i = 0; i < rows; i++) {
    const x = data[2 * i];
    const y = data[2 * i + 1];
    // First pass: squared distances to every node of both moons and the smallest one, so
    // the second pass can sum exp(-(d^2 - min d^2) / 2 noise^2) <= 1 without underflow.
    let nearest = Infinity;
    for (let k = 0; k < nodes; k++) {
      const outerDx = x - cosT[k];
      const outerDy = y - sinT[k];
      const innerDx = x - 1 + cosT[k];
      const innerDy = y - 0.5 + sinT[k];
      const outer = outerDx * outerDx + outerDy * outerDy;
      const inner = innerDx * innerDx + innerDy * innerDy;
      squaredDistances[2 * k] = outer;
      squaredDistances[2 * k + 1] = inner;
      nearest = Math.min(nearest, outer, inner);
    }
    let sum = 0;
    for (let k = 0; k < 2 * nodes; k++) {
      const exponent = (squaredDistances[k] - nearest) * halfPrecision;
      // exp underflows to 0 past ~745 anyway; skipping saves most of the work for
      // points near one part of the moons.
      if (exponent < 745) sum += Math.exp(-exponent);
    }
    result[i] = logConstant - nearest * halfPrecision + Math.log(sum);
  }
  return result;
}

// ffjord's eight centres, in its order: the four axis directions, then the diagonals.
const EIGHT_GAUSSIAN_DIRECTIONS: ReadonlyArray<readonly [number, number]> = [
  [1, 0],
  [-1, 0],
  [0, 1],
  [0, -1],
  [Math.SQRT1_2, Math.SQRT1_2],
  [Math.SQRT1_2, -Math.SQRT1_2],
  [-Math.SQRT1_2, Math.SQRT1_2],
  [-Math.SQRT1_2, -Math.SQRT1_2],
];

/**
 * ffjord "8gaussians": a centre chosen uniformly among 4 * (the unit circle at 45-degree
 * steps), plus N(0, noise^2) per coordinate (noise default 0.5), and the whole divided by
 * 1.414 (ffjord's literal constant, not sqrt 2). So the centres lie at radius 4/1.414 and
 * each component's standard deviation is noise/1.414 ~ 0.354 by default.
 *
 * @returns a row-major Float32Array of n*2 values.
 */
export function eightGaussians(n: number, options?: NoisyDatasetOptions): Float32Array {
  const { rows, random, normal, noise, out } = startGenerator('eightGaussians', n, options, 0.5);
  const scale = 4;
  for (let i = 0; i < rows; i++) {
    const [cx, cy] = EIGHT_GAUSSIAN_DIRECTIONS[Math.floor(random.next() * 8)];
    out[2 * i] = (scale * cx + noise * normal.next()) / 1.414;
    out[2 * i + 1] = (scale * cy + noise * normal.next()) / 1.414;
  }
  return out;
}

/**
 * ffjord "checkerboard": x1 ~ U(-2, 2); x2 = U(0, 1) - 2 * (0 or 1, equally likely)
 * + (floor(x1) mod 2); the point is 2 * (x1, x2). Uniform on the 8 dark squares of side 2 of
 * a 4x4 board over [-4, 4)^2 (those with floor(x/2) + floor(y/2) even). No noise option.
 *
 * @returns a row-major Float32Array of n*2 values.
 */
export function checkerboard(n: number, options?: DatasetOptions): Float32Array {
  const { rows, random, out } = startGenerator('checkerboard', n, options, undefined);
  for (let i = 0; i < rows; i++) {
    const x1 = random.next() * 4 - 2;
    const lowerHalf = random.next() < 0.5 ? 1 : 0;
    // Python's % is non-negative for a positive modulus; JavaScript's keeps the sign.
    const column = ((Math.floor(x1) % 2) + 2) % 2;
    const x2 = random.next() - 2 * lowerHalf + column;
    out[2 * i] = 2 * x1;
    out[2 * i + 1] = 2 * x2;
  }
  return out;
}

/**
 * ffjord "pinwheel": 5 arms, radial_std 0.3, tangential_std 0.1, rate 0.25. For arm k,
 * f = (1 + 0.3 N, 0.1 N), angle = 2 pi k / 5 + 0.25 exp(f1), and the point is
 * 2 * (f1 cos a + f2 sin a, -f1 sin a + f2 cos a). The arms get n/5 points each, the first
 * n mod 5 arms one more (ffjord drops the remainder instead, returning 5 * floor(n/5)
 * points), and the rows are shuffled as in ffjord. No noise option: the two standard
 * deviations are the shape.
 *
 * @returns a row-major Float32Array of n*2 values.
 */
export function pinwheel(n: number, options?: DatasetOptions): Float32Array {
  const { rows, random, normal, out } = startGenerator('pinwheel', n, options, undefined);
  const arms = 5;
  const radialStd = 0.3;
  const tangentialStd = 0.1;
  const rate = 0.25;
  for (let i = 0; i < rows; i++) {
    const radial = 1 + radialStd * normal.next();
    const tangential = tangentialStd * normal.next();
    const angle = (2 * Math.PI * (i % arms)) / arms + rate * Math.exp(radial);
    const cos = Math.cos(angle);
    const sin = Math.sin(angle);
    out[2 * i] = 2 * (radial * cos + tangential * sin);
    out[2 * i + 1] = 2 * (-radial * sin + tangential * cos);
  }
  shuffleRows(out, random);
  return out;
}

/**
 * ffjord "2spirals": s = sqrt(U) * 540 * 2 pi / 360 (up to 1.5 turns);
 * d = (-cos(s) s + 0.5 U', sin(s) s + 0.5 U''); half the points are d, the other half -d
 * (ceil(n/2) and floor(n/2); ffjord returns 2 * floor(n/2) points); all divided by 3, plus
 * N(0, noise^2) per coordinate (noise default 0.1). Rows are shuffled, so that a prefix holds
 * both spirals (ffjord returns one spiral, then the other).
 *
 * @returns a row-major Float32Array of n*2 values.
 */
export function twoSpirals(n: number, options?: NoisyDatasetOptions): Float32Array {
  const { rows, random, normal, noise, out } = startGenerator('twoSpirals', n, options, 0.1);
  for (let i = 0; i < rows; i++) {
    const s = (Math.sqrt(random.next()) * 540 * 2 * Math.PI) / 360;
    const dx = -Math.cos(s) * s + random.next() * 0.5;
    const dy = Math.sin(s) * s + random.next() * 0.5;
    const sign = i % 2 === 0 ? 1 : -1;
    out[2 * i] = (sign * dx) / 3 + noise * normal.next();
    out[2 * i + 1] = (sign * dy) / 3 + noise * normal.next();
  }
  shuffleRows(out, random);
  return out;
}

/**
 * "rings" of later ffjord versions: 4 concentric circles of radii 3 * (1, 0.75, 0.5, 0.25)
 * = 3, 2.25, 1.5, 0.75. The three outer circles get floor(n/4) points each and the innermost
 * the rest; on each circle the points sit at evenly spaced angles 2 pi j / count (as ffjord's
 * linspace(0, 2 pi, count, endpoint=False)); the rows are shuffled, then N(0, noise^2) is
 * added per coordinate (noise default 0.08). Source: ffjord lib/toy_data.py, "rings" branch
 * of the version with checkerboard and rings (the repository's older version has neither).
 *
 * @returns a row-major Float32Array of n*2 values.
 */
export function rings(n: number, options?: NoisyDatasetOptions): Float32Array {
  const { rows, random, normal, noise, out } = startGenerator('rings', n, options, 0.08);
  const outerCount = Math.floor(rows / 4);
  const counts = [outerCount, outerCount, outerCount, rows - 3 * outerCount];
  const radii = [3, 2.25, 1.5, 0.75];
  let row = 0;
  counts.forEach((count, ring) => {
    for (let j = 0; j < count; j++, row++) {
      const angle = (2 * Math.PI * j) / count;
      out[2 * row] = radii[ring] * Math.cos(angle);
      out[2 * row + 1] = radii[ring] * Math.sin(angle);
    }
  });
  shuffleRows(out, random);
  for (let i = 0; i < 2 * rows; i++) out[i] += noise * normal.next();
  return out;
}

/** The toy data sets, as one namespace: `datasets.twoMoons(1000, { seed: 1 })`. */
export const datasets = {
  twoMoons,
  eightGaussians,
  checkerboard,
  pinwheel,
  twoSpirals,
  rings,
  twoMoonsLogDensity,
} as const;
