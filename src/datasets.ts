// Seeded 2-D toy data sets for density-estimation demos and tests: two moons
// (with its exact log-density, so a trained flow's test log-likelihood can be
// compared with the best achievable), and the FFJORD toy sets.
//
// Every generator returns a fresh row-major Float32Array of n*2 values: point i
// is (data[2*i], data[2*i + 1]). The same seed gives the same points on every
// platform, because all randomness comes from the pure-TypeScript xoshiro128**
// stream in layers.ts (not Math.random, not the native stream).
//
// The FFJORD definitions follow rtqichen/ffjord lib/toy_data.py (inf_train_gen, as of
// commit 994864a, the version that has checkerboard and rings).
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

// Globals bound once at module scope. In a vm context (jest, node:vm) every read of a
// global such as Math, Number or Infinity goes through the context's interceptor and
// costs some 20-50x a local read, enough to make the loops here ten times slower under
// a test runner.
const { acos, atan2, ceil, cos, exp, floor, hypot, log, max, min, PI, sin, sqrt } = Math;
const isFiniteNumber = Number.isFinite;
const isNaNNumber = Number.isNaN;
const INFINITY = Number.POSITIVE_INFINITY;

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
    const radius = sqrt(-2 * log(1 - this.random.next()));
    const angle = 2 * PI * this.random.next();
    this.spare = radius * sin(angle);
    return radius * cos(angle);
  }
}

function checkNoise(name: string, value: unknown): number {
  if (typeof value !== 'number' || isNaNNumber(value)) throw invalidType(name, 'a finite number >= 0', value);
  if (!isFiniteNumber(value) || value < 0) throw invalidRange(name, 'a finite number >= 0', value);
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
    const j = floor(random.next() * (i + 1));
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
 * `twoMoonsLogDensity` is the exact density of these points. Its expectation, the best test
 * log-likelihood a model can reach on average, is -0.2892 nats per point at noise 0.05 (grid
 * integral of p log p; the -0.279 once quoted for it is 0.010 too high).
 *
 * @returns a row-major Float32Array of n*2 values.
 */
export function twoMoons(n: number, options?: NoisyDatasetOptions): Float32Array {
  const { rows, random, normal, noise, out } = startGenerator('twoMoons', n, options, TWO_MOONS_DEFAULT_NOISE);
  for (let i = 0; i < rows; i++) {
    const t = PI * random.next();
    const outer = random.next() < 0.5;
    const x = outer ? cos(t) : 1 - cos(t);
    const y = outer ? sin(t) : 0.5 - sin(t);
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
 * log-sum-exp, so points far from the moons get large negative values, not -Infinity.
 *
 * @param points a row-major Float32Array/Float64Array of n*2 values, or an array of [x, y] rows.
 * @returns a Float64Array of n log-densities (float64: this is the reference a model's
 *   float32 log-likelihood is compared with).
 */
export function twoMoonsLogDensity(points: Float32Array | Float64Array | number[][], noise = TWO_MOONS_DEFAULT_NOISE): Float64Array {
  const { data, rows } = toRowMajor('points', points, 2);
  if (typeof noise !== 'number' || isNaNNumber(noise)) throw invalidType('noise', 'a finite number > 0', noise);
  if (!isFiniteNumber(noise) || noise <= 0) throw invalidRange('noise', 'a finite number > 0', noise);

  const nodes = max(2048, ceil((20 * PI) / noise));
  const spacing = PI / nodes;
  const cosT = new Float64Array(nodes);
  const sinT = new Float64Array(nodes);
  for (let k = 0; k < nodes; k++) {
    cosT[k] = cos((k + 0.5) * spacing);
    sinT[k] = sin((k + 0.5) * spacing);
  }
  const halfPrecision = 1 / (2 * noise * noise);
  // The 1/pi of the uniform t cancels the pi/nodes node weight; 1/2 is the moon choice and
  // 1/(2 pi noise^2) the Gaussian's normaliser.
  const logConstant = -log(2 * nodes) - log(2 * PI * noise * noise);
  // Terms below e^-CUTOFF relative to the largest add up to at most 2 * nodes * e^-40
  // (~2e-14 at the default noise) relative to the sum, below what a log-density needs, so
  // only the nodes within reach of the point are summed: a few hundred, not thousands.
  const CUTOFF = 40;

  // Each moon is a half circle: node k sits at centre + radius-1 vector at angle
  // firstAngle + t_k (outer: centre (0, 0), angle t; inner: centre (1, 0.5), angle t + pi).
  const moons = [
    { centreX: 0, centreY: 0, firstAngle: 0, sign: 1 },
    { centreX: 1, centreY: 0.5, firstAngle: PI, sign: -1 },
  ];
  const result = new Float64Array(rows);
  const relative = moons.map(() => ({ distance: 0, direction: 0 }));
  for (let i = 0; i < rows; i++) {
    const x = data[2 * i];
    const y = data[2 * i + 1];
    // The smallest squared distance to either arc (continuous, so no node is nearer): the
    // log-sum-exp is taken relative to it, which keeps every term in (0, 1] and the largest
    // near 1.
    let nearest = INFINITY;
    moons.forEach((moon, m) => {
      const dx = x - moon.centreX;
      const dy = y - moon.centreY;
      const distance = hypot(dx, dy);
      // Direction of the point seen from the centre, as an angle t along this moon in (-pi, pi].
      const direction = wrapAngle(atan2(dy, dx) - moon.firstAngle);
      relative[m].distance = distance;
      relative[m].direction = direction;
      // On a circle the squared distance is d^2 + 1 - 2 d cos(t - direction): smallest at
      // t = direction if that lies on the arc, else at the nearer end.
      const closestT = direction >= 0 ? direction : direction < -PI / 2 ? PI : 0;
      nearest = min(nearest, distance * distance + 1 - 2 * distance * cos(closestT - direction));
    });
    let sum = 0;
    moons.forEach((moon, m) => {
      const { distance, direction } = relative[m];
      // Nodes within the cutoff are those with cos(t - direction) > threshold.
      const threshold = (distance * distance + 1 - nearest - CUTOFF / halfPrecision) / (2 * distance);
      const addNodes = (from: number, to: number): void => {
        for (let k = max(0, from); k <= min(nodes - 1, to); k++) {
          const dx = x - moon.centreX - moon.sign * cosT[k];
          const dy = y - moon.centreY - moon.sign * sinT[k];
          const exponent = (dx * dx + dy * dy - nearest) * halfPrecision;
          // Never negative in exact arithmetic, as nearest is the continuous minimum; far out,
          // rounding of d^2 can make it so, and the clamp keeps each term at most 1.
          sum += exp(exponent > 0 ? -exponent : 0);
        }
      };
      if (!(threshold > -1)) {
        // The whole moon is within reach (also when distance is 0 and threshold is -Infinity).
        addNodes(0, nodes - 1);
      } else if (threshold < 1) {
        const halfWidth = acos(threshold);
        // The window [direction - halfWidth, direction + halfWidth] is shorter than a full
        // turn; it can meet the arc [0, pi] directly or after wrapping by one turn.
        for (const turn of [-2 * PI, 0, 2 * PI]) {
          const from = direction - halfWidth + turn;
          const to = direction + halfWidth + turn;
          if (to < 0 || from > PI) continue;
          // The nodes with t_k = (k + 0.5) * spacing in [from, to]; windows of different
          // turns are disjoint, so no node is counted twice.
          addNodes(ceil(from / spacing - 0.5), floor(to / spacing - 0.5));
        }
      }
    });
    // sum is near 1 or more, except far out (|x| beyond ~1e7) where rounding of d^2 exceeds
    // the noise scale and can empty the window; there the nearest point alone is as good as
    // float64 allows (the value is then ~1e17 or more in magnitude).
    result[i] = logConstant - nearest * halfPrecision + (sum > 0 ? log(sum) : 0);
  }
  return result;
}

/** The same angle in (-pi, pi]. */
function wrapAngle(angle: number): number {
  let wrapped = angle % (2 * PI);
  if (wrapped > PI) wrapped -= 2 * PI;
  if (wrapped <= -PI) wrapped += 2 * PI;
  return wrapped;
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
    const [cx, cy] = EIGHT_GAUSSIAN_DIRECTIONS[floor(random.next() * 8)];
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
    const column = ((floor(x1) % 2) + 2) % 2;
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
    const angle = (2 * PI * (i % arms)) / arms + rate * exp(radial);
    const cosAngle = cos(angle);
    const sinAngle = sin(angle);
    out[2 * i] = 2 * (radial * cosAngle + tangential * sinAngle);
    out[2 * i + 1] = 2 * (-radial * sinAngle + tangential * cosAngle);
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
    const s = (sqrt(random.next()) * 540 * 2 * PI) / 360;
    const dx = -cos(s) * s + random.next() * 0.5;
    const dy = sin(s) * s + random.next() * 0.5;
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
 * added per coordinate (noise default 0.08). Source: ffjord lib/toy_data.py at commit
 * 994864a, "rings" branch (earlier versions of that file have neither rings nor checkerboard).
 *
 * @returns a row-major Float32Array of n*2 values.
 */
export function rings(n: number, options?: NoisyDatasetOptions): Float32Array {
  const { rows, random, normal, noise, out } = startGenerator('rings', n, options, 0.08);
  const outerCount = floor(rows / 4);
  const counts = [outerCount, outerCount, outerCount, rows - 3 * outerCount];
  const radii = [3, 2.25, 1.5, 0.75];
  let row = 0;
  counts.forEach((count, ring) => {
    for (let j = 0; j < count; j++, row++) {
      const angle = (2 * PI * j) / count;
      out[2 * row] = radii[ring] * cos(angle);
      out[2 * row + 1] = radii[ring] * sin(angle);
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
