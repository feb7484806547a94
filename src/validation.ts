// Every check a caller's input meets before it reaches native code. Messages
// follow one pattern, "Expected <what> for <name> but received <value>", so a
// user can tell at once which argument is wrong and what would be right.
import { constants as bufferConstants } from 'node:buffer';

export function describeValue(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (typeof value === 'number') return `${value}`;
  if (typeof value === 'string') return `the string ${JSON.stringify(value.length > 40 ? value.slice(0, 40) + '...' : value)}`;
  if (typeof value === 'bigint') return `the bigint ${value}n`;
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  if (ArrayBuffer.isView(value)) return `${/^[AEIOU]/.test(value.constructor.name) ? 'an' : 'a'} ${value.constructor.name} of length ${(value as unknown as ArrayLike<unknown>).length ?? value.byteLength}`;
  if (typeof value === 'function') return 'a function';
  if (typeof value === 'object') return `an object`;
  return typeof value;
}

export function invalidType(name: string, expected: string, actual: unknown): TypeError {
  return new TypeError(`Expected ${expected} for ${name} but received ${describeValue(actual)}`);
}

export function invalidRange(name: string, expected: string, actual: unknown): RangeError {
  return new RangeError(`Expected ${expected} for ${name} but received ${describeValue(actual)}`);
}

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/** An options object (or undefined) with no keys outside `allowed`: catches typos such as `hiden`. */
export function checkOptions(name: string, value: unknown, allowed: readonly string[]): Record<string, unknown> {
  if (value === undefined) return {};
  if (!isPlainObject(value)) throw invalidType(name, 'an options object', value);
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) {
      throw new TypeError(`Unknown option ${JSON.stringify(key)} in ${name}; expected one of: ${allowed.join(', ')}`);
    }
  }
  return value;
}

export function checkInteger(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || Number.isNaN(value)) throw invalidType(name, `an integer in [${min}, ${max}]`, value);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw invalidRange(name, `an integer in [${min}, ${max}]`, value);
  }
  return value;
}

export function checkEnum<T extends string>(name: string, value: unknown, allowed: readonly T[]): T {
  if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) {
    throw invalidType(name, `one of ${allowed.map((a) => `'${a}'`).join(', ')}`, value);
  }
  return value as T;
}

/** A permutation of first..first+count-1, as a fresh number[]. */
export function checkPermutation(name: string, value: unknown, count: number, first = 0): number[] {
  const expected = `a permutation of ${first}..${first + count - 1}`;
  if (!Array.isArray(value) && !ArrayBuffer.isView(value)) throw invalidType(name, expected, value);
  const given = value as ArrayLike<unknown>;
  if (given.length !== count) throw invalidRange(name, `${expected} (length ${count})`, value);
  // A plain loop that names the element only for an error: model files hold millions of these.
  const values = new Array<number>(count);
  const seen = new Uint8Array(count);
  for (let i = 0; i < count; i++) {
    const v: unknown = given[i];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < first || v >= first + count || seen[v - first]) {
      throw invalidRange(`${name}[${i}]`, `${expected} (each value once)`, v);
    }
    seen[v - first] = 1;
    values[i] = v;
  }
  return values;
}

/** Seeds are non-negative safe integers; the native stream takes them as two 32-bit words. */
export function checkSeed(name: string, value: unknown): number {
  return checkInteger(name, value, 0, Number.MAX_SAFE_INTEGER);
}

export function seedWords(seed: number): [number, number] {
  return [seed % 0x100000000 >>> 0, Math.floor(seed / 0x100000000) >>> 0];
}

export function randomSeed(): number {
  return Math.floor(Math.random() * 0x100000000) * 0x200000 + Math.floor(Math.random() * 0x200000);
}

/**
 * The most float32 elements one batch may hold: 2^31 - 1 (8 GiB), or less where this Node's
 * buffers are smaller. A fixed bound, so a typo in n is an error, not a 100 GB allocation.
 */
export const MAX_ELEMENTS = Math.min(2 ** 31 - 1, Math.floor(bufferConstants.MAX_LENGTH / 4));

export function checkRowCount(name: string, value: unknown, dim: number): number {
  const maxRows = Math.floor(MAX_ELEMENTS / dim);
  if (typeof value !== 'number' || Number.isNaN(value)) throw invalidType(name, `a whole number of rows in [1, ${maxRows}]`, value);
  if (!Number.isInteger(value) || value < 1 || value > maxRows) {
    throw invalidRange(name, `a whole number of rows in [1, ${maxRows}] (dim ${dim})`, value);
  }
  return value;
}

/**
 * Weights beyond this magnitude overflow float32 products in practice: two layers of them reach
 * 1e36, near float32's 3.4e38, and then samples and log-densities are NaN. Trained flows keep
 * their weights far below (a few units to hundreds).
 */
export const HUGE_WEIGHT = 1e18;
/** The callers (setParameters, saveFlow, loadFlow, importTorch) that have warned in this process. */
const hugeWeightsWarned = new Set<string>();

/**
 * The warning path for finite weights too large for float32 arithmetic (give it the largest
 * |value| of the weights set, saved or loaded). Such weights are accepted, since they are valid
 * float32 values and a caller may mean them, but the first time in the process that each caller
 * meets them a warning (code IAFLOW_HUGE_WEIGHTS) says what they will do; later calls stay quiet,
 * so a loop of setParameters or of checkpoint saves does not spam.
 * Returns whether `maxAbs` is over HUGE_WEIGHT.
 */
export function warnOnHugeWeights(where: string, maxAbs: number): boolean {
  if (!(maxAbs > HUGE_WEIGHT)) return false;
  if (!hugeWeightsWarned.has(where)) {
    hugeWeightsWarned.add(where);
    process.emitWarning(
      `${where}: a weight of magnitude ${maxAbs.toPrecision(3)} (over ${HUGE_WEIGHT.toExponential()}) makes float32 products overflow, so samples and log-densities will be NaN or infinite. ${where} gives this warning once per process.`,
      { code: 'IAFLOW_HUGE_WEIGHTS' },
    );
  }
  return true;
}

/** Allocates a result, turning an allocation failure into a RangeError that says what was asked. */
export function allocateFloats(count: number, what: string): Float32Array {
  try {
    return new Float32Array(count);
  } catch {
    throw new RangeError(`Not enough memory for ${what} (${count} float32 values)`);
  }
}

// Brand checks instead of instanceof, so arrays made in another realm (a vm
// context, a test runner) are recognised too. %TypedArray%.prototype's
// Symbol.toStringTag getter reads the internal slot: it gives undefined for
// anything but a real typed array, so an object that merely claims the tag
// (or a Float64Array given an own Symbol.toStringTag) is not taken for one.
const typedArrayTag = Object.getOwnPropertyDescriptor(
  Object.getPrototypeOf(Uint8Array.prototype) as object,
  Symbol.toStringTag,
)!.get!;

export function isFloat32Array(value: unknown): value is Float32Array {
  return typedArrayTag.call(value) === 'Float32Array';
}

export function isFloat64Array(value: unknown): value is Float64Array {
  return typedArrayTag.call(value) === 'Float64Array';
}

const hasOwn = (target: object, key: number): boolean => Object.prototype.hasOwnProperty.call(target, key);

/**
 * Whether an array's prototype chain has an index property (Array.prototype[1] = 0.5), which a
 * hole would read. for-in sees only enumerable keys, which an assignment makes and the built-ins
 * are not, so it costs next to nothing when, as usual, there are none.
 */
function prototypesHaveIndices(): boolean {
  for (const key in Array.prototype) if (/^(0|[1-9][0-9]*)$/.test(key)) return true;
  return false;
}

function holeError(name: string, expected: string): TypeError {
  return new TypeError(`Expected ${expected} for ${name} but received a hole (the array is sparse)`);
}

/** Batch input: Float32Array / Float64Array (row-major, n*dim) or number[][] of finite numbers. */
export function toRowMajor(name: string, value: unknown, dim: number): { data: Float32Array; rows: number } {
  const expected = `a Float32Array of n*${dim} values (row-major) or an array of rows of ${dim} numbers`;
  let data: Float32Array;
  if (isFloat32Array(value) || isFloat64Array(value)) {
    if (value.length === 0 || value.length % dim !== 0) {
      throw invalidRange(`${name}.length`, `a positive multiple of ${dim}`, value.length);
    }
    data = isFloat32Array(value) ? value : Float32Array.from(value);
  } else if (Array.isArray(value)) {
    // Read once: a Proxy's length may change between reads or not be a number at all.
    const rowCount: unknown = value.length;
    if (typeof rowCount !== 'number' || !Number.isSafeInteger(rowCount)) throw invalidType(`${name}.length`, 'an array length', rowCount);
    if (rowCount === 0) throw invalidRange(name, `${expected}, with at least one row`, value);
    if (rowCount * dim > MAX_ELEMENTS) throw invalidRange(`${name}.length`, `at most ${Math.floor(MAX_ELEMENTS / dim)} rows`, rowCount);
    data = allocateFloats(rowCount * dim, name);
    // A plain loop, not forEach: forEach skips the holes of a sparse array, which would leave
    // their rows as zeros. Each element is read once, so a getter cannot hand back two values.
    // A hole reads as undefined, unless a prototype lends it a value (someone set
    // Array.prototype[i]): checked once per call, so the usual case pays only for undefined.
    const inherits = prototypesHaveIndices();
    for (let r = 0; r < rowCount; r++) {
      const row: unknown = value[r];
      if ((row === undefined || inherits) && !hasOwn(value, r)) throw holeError(`${name}[${r}]`, `an array of ${dim} numbers`);
      if (!Array.isArray(row) && !isFloat32Array(row) && !isFloat64Array(row)) {
        throw invalidType(`${name}[${r}]`, `an array of ${dim} numbers`, row);
      }
      const cells = row as ArrayLike<unknown>;
      if (cells.length !== dim) throw invalidRange(`${name}[${r}].length`, `${dim}`, cells.length);
      const plain = Array.isArray(row);
      for (let i = 0; i < dim; i++) {
        const v = cells[i];
        if (typeof v !== 'number') {
          if (plain && !hasOwn(row, i)) throw holeError(`${name}[${r}][${i}]`, 'a number');
          throw invalidType(`${name}[${r}][${i}]`, 'a number', v);
        }
        if (inherits && plain && !hasOwn(row, i)) throw holeError(`${name}[${r}][${i}]`, 'a number');
        data[r * dim + i] = v;
      }
    }
  } else {
    throw invalidType(name, expected, value);
  }
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i])) {
      throw invalidRange(`${name}[${Math.floor(i / dim)}][${i % dim}]`, 'a finite number', data[i]);
    }
  }
  return { data, rows: data.length / dim };
}

/** An AbortSignal (or undefined): anything with `aborted` and `addEventListener`, as Node's and DOM's. */
export function checkSignal(name: string, value: unknown): AbortSignal | undefined {
  if (value === undefined) return undefined;
  const s = value as AbortSignal;
  if (typeof value !== 'object' || value === null || typeof s.aborted !== 'boolean' || typeof s.addEventListener !== 'function') {
    throw invalidType(name, 'an AbortSignal', value);
  }
  return s;
}

/**
 * Batch input for a native run: typed arrays pass through as they are (O(1) here; the native
 * side copies them, then checks finiteness and converts float64 off the event loop), arrays of
 * rows are converted and checked by toRowMajor.
 */
export function rowsForNative(name: string, value: unknown, dim: number): { data: Float32Array | Float64Array; rows: number } {
  if (isFloat32Array(value) || isFloat64Array(value)) {
    if (value.length === 0 || value.length % dim !== 0) {
      throw invalidRange(`${name}.length`, `a positive multiple of ${dim}`, value.length);
    }
    return { data: value, rows: value.length / dim };
  }
  return toRowMajor(name, value, dim);
}

/**
 * A conditional flow's context for a call of `rows` rows: one row (a typed array or number[] of
 * contextDim values, or [[...]]) is every row's; otherwise one row per row. Returned as float32,
 * row-major, checked finite.
 */
export function checkContext(name: string, value: unknown, rows: number, contextDim: number): { context: Float32Array; contextRows: number } {
  const expected = `one row of ${contextDim} context values (for every row), or ${rows} rows of them (one per row)`;
  let data: Float32Array;
  if (isFloat32Array(value) || isFloat64Array(value)) {
    if (value.length !== contextDim && value.length !== rows * contextDim) {
      throw invalidRange(`${name}.length`, `${contextDim} (${expected.split(',')[0]}) or ${rows * contextDim} (${rows} rows)`, value.length);
    }
    data = isFloat32Array(value) ? value : Float32Array.from(value);
  } else if (Array.isArray(value) && value.length === contextDim && value.every((v) => typeof v === 'number')) {
    data = Float32Array.from(value as number[]);
  } else if (Array.isArray(value) && (value.length === 1 || value.length === rows)) {
    data = toRowMajor(name, value, contextDim).data;
  } else {
    throw invalidType(name, expected, value);
  }
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i])) throw invalidRange(`${name}[${Math.floor(i / contextDim)}][${i % contextDim}]`, 'a finite number', data[i]);
  }
  return { context: data, contextRows: data.length / contextDim };
}
