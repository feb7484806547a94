/**
 * Reading and writing the safetensors format (https://github.com/huggingface/safetensors),
 * so that files written here load in Python's `safetensors` and files written by PyTorch
 * load here.
 *
 * Layout: an 8-byte little-endian u64 header length N, N bytes of UTF-8 JSON, then the raw
 * little-endian tensor bytes. The JSON maps each tensor name to
 * `{ "dtype", "shape", "data_offsets": [begin, end] }` (offsets relative to the start of the
 * data section) and may hold `"__metadata__"`, an object whose values are all strings.
 *
 * Model files come from outside the process, so the decoder treats every byte as hostile:
 * it validates the whole header before touching the data and reports any problem as a
 * ModelFileError that names the file, never as a crash or a generic exception.
 */
import { constants as bufferConstants } from 'node:buffer';
import { createHash, randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { open, opendir, rename, stat, unlink } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { MAX_CONFIG_INTEGERS } from './layers';

export type DType = 'F32' | 'F64' | 'I64' | 'I32' | 'BOOL' | 'U8';

export type TensorData = Float32Array | Float64Array | BigInt64Array | Int32Array | Uint8Array;

export interface Tensor {
  dtype: DType;
  shape: number[];
  /** Row-major (C order) elements; BOOL tensors hold one byte per element, 0 or 1. */
  data: TensorData;
}

export interface SafetensorsFile {
  tensors: Map<string, Tensor>;
  metadata: Record<string, string>;
}

/** A model file that cannot be used; the message is `<file>: <what is wrong, what was expected>`. */
export class ModelFileError extends Error {
  override readonly name = 'ModelFileError';
  /** The file (or other source) the problem was found in. */
  readonly source: string;
  /** The problem alone, without the source prefix. */
  readonly problem: string;

  constructor(source: string, problem: string, options?: ErrorOptions) {
    super(`${source}: ${problem}`, options);
    this.source = source;
    this.problem = problem;
    // Keeps instanceof working even if this file is compiled to ES5-style classes.
    Object.setPrototypeOf(this, new.target.prototype);
  }
}

interface DTypeInfo {
  elementSize: number;
  /** What Object.prototype.toString reports for the matching typed array; used instead of
   * instanceof because arrays (and Node Buffers) may come from another realm (e.g. jest's vm). */
  arrayTag: string;
  fromBuffer: (buffer: ArrayBuffer) => TensorData;
}

const DTYPES: Readonly<Record<DType, DTypeInfo>> = {
  F32: { elementSize: 4, arrayTag: '[object Float32Array]', fromBuffer: (b) => new Float32Array(b) },
  F64: { elementSize: 8, arrayTag: '[object Float64Array]', fromBuffer: (b) => new Float64Array(b) },
  I64: { elementSize: 8, arrayTag: '[object BigInt64Array]', fromBuffer: (b) => new BigInt64Array(b) },
  I32: { elementSize: 4, arrayTag: '[object Int32Array]', fromBuffer: (b) => new Int32Array(b) },
  BOOL: { elementSize: 1, arrayTag: '[object Uint8Array]', fromBuffer: (b) => new Uint8Array(b) },
  U8: { elementSize: 1, arrayTag: '[object Uint8Array]', fromBuffer: (b) => new Uint8Array(b) },
};

const SUPPORTED_DTYPES = Object.keys(DTYPES).join(', ');

/** Same bound as the reference implementation: no header longer than this is ever read. */
export const MAX_HEADER_BYTES = 100_000_000;

// Bounds on the header that are checked by one linear scan of its bytes (scanJson) before
// JSON.parse sees them, so that a hostile header is refused in milliseconds instead of costing
// seconds of event-loop time and gigabytes of heap (JSON.parse of 20 MB of nested arrays took
// 15 s and 1.45 GB; 2M keys in one object, 14 s). What a valid file can need decides each bound:
//
// - Nesting: a valid header nests 3 levels (the object, a tensor entry, its shape or
//   data_offsets array); __metadata__ values are strings. 8 leaves room for a malformed but
//   shallow entry to reach the precise per-field messages.
// - Keys: an entry has 3 keys; __metadata__ holds a handful (4096 costs ~30 ms to parse).
// - Tensor entries: the caller's limit (what the largest model it accepts can need, see io.ts).
// - Values (every scalar, array and object): an entry holds 6 plus its rank; 16 per entry plus
//   16384 for __metadata__ admits any real file, yet keeps a hostile header from packing far more
//   parse work per byte than a real one (a flat `[0,0,0,...]` costs ~400 ns per value).
// - Bytes: 4 MiB + 8 MiB for __metadata__ (the iaflow config: a few hundred bytes per layer plus
//   its degree lists and permutations, at most layers.ts's MAX_CONFIG_INTEGERS), plus 256 bytes per entry (saveFlow writes ~100), plus one byte per byte of the
//   data section (a config's degree lists are at most ~0.75 bytes per stored weight byte, since
//   every degree entry comes with at least 2 float32 weights). Permutation layers have no
//   weights, so they draw on the base alone, which holds the largest config createFlow accepts
//   (saveFlow still refuses to write a file that loadFlow would refuse).
//   MAX_HEADER_BYTES caps it all. A header is checked against this as it is scanned, so a 98 MB
//   header with few entries is refused after ~4 MiB.
/** Deepest nesting a header may have. */
export const MAX_HEADER_DEPTH = 8;
/** Keys allowed in one object below the top level (__metadata__, a tensor entry). */
export const MAX_HEADER_OBJECT_KEYS = 4096;
const HEADER_BASE_VALUES = 16384;
const HEADER_VALUES_PER_ENTRY = 16;
// 4 MiB, plus room for the largest config createFlow accepts: MAX_CONFIG_INTEGERS integers of at
// most 7 characters and a separator each (a flow that saves must load).
const HEADER_BASE_BYTES = 4 * 1024 * 1024 + 8 * MAX_CONFIG_INTEGERS;
const HEADER_BYTES_PER_ENTRY = 256;
/** Tensor entries decodeSafetensors accepts when its caller gives no tighter limit. */
export const DEFAULT_MAX_TENSORS = 2 ** 21;

/** Far beyond any flow we build; it keeps shape products well inside safe-integer range. */
const MAX_ELEMENTS = 2 ** 32;

const METADATA_KEY = '__metadata__';
const ENTRY_KEYS = ['dtype', 'shape', 'data_offsets'] as const;
const DEFAULT_SOURCE = '<safetensors bytes>';

const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function isDType(value: string): value is DType {
  return Object.prototype.hasOwnProperty.call(DTYPES, value);
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function describeJsonValue(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return 'an object';
  if (typeof value === 'string') return `the string ${quote(value)}`;
  return `${typeof value} ${String(value)}`;
}

/** Shortens text from a file for messages, so a hostile 50 MB name cannot flood a log. */
export function shorten(text: string, limit = 120): string {
  return text.length > limit ? `${text.slice(0, limit)}... (${text.length} characters)` : text;
}

/** JSON-quotes a name for messages, shortened (see shorten). */
function quote(text: string): string {
  return JSON.stringify(shorten(text));
}

/** A shape for messages; a hostile header may give thousands of dims. */
function formatShape(shape: readonly number[]): string {
  const shown = shape.length > 8 ? [...shape.slice(0, 8), `... (${shape.length} dims)`] : shape;
  return `[${shown.join(', ')}]`;
}

function isNonNegativeSafeInteger(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

/** Product of the dims, or undefined when it would exceed MAX_ELEMENTS. A zero dim makes the
 * product zero whatever the other dims are, so it is found before multiplying. */
function elementCount(shape: readonly number[]): number | undefined {
  if (shape.includes(0)) return 0;
  let count = 1;
  for (const dim of shape) {
    count *= dim;
    if (count > MAX_ELEMENTS) return undefined;
  }
  return count;
}

/** Reverses the bytes of each element; safetensors data is little-endian on every host. */
function swapByteOrder(bytes: Uint8Array, elementSize: number): void {
  for (let start = 0; start + elementSize <= bytes.length; start += elementSize) {
    for (let low = start, high = start + elementSize - 1; low < high; low++, high--) {
      const byte = bytes[low];
      bytes[low] = bytes[high];
      bytes[high] = byte;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Bounding JSON before it is parsed

/** Limits for scanJson; a per-top-level-key allowance grows with each key of the top-level object. */
export interface JsonScanLimits {
  maxDepth: number;
  /** Keys allowed in one object below the top level. */
  maxKeysPerObject: number;
  /** Keys allowed in the top-level object. */
  maxTopLevelKeys: number;
  /** Objects and arrays allowed in all. */
  maxContainers: number;
  /** JSON values (scalars, arrays, objects) allowed: base + perTopLevelKey * top-level keys so far. */
  valuesBase: number;
  valuesPerTopLevelKey: number;
  /** Bytes allowed, of the same form, checked as the scan goes. */
  bytesBase: number;
  bytesPerTopLevelKey: number;
}

export type JsonScanLimit = 'depth' | 'keys' | 'topLevelKeys' | 'containers' | 'values' | 'bytes';

export interface JsonScanProblem {
  limit: JsonScanLimit;
  /** Byte offset (from the start of the scan) where the limit was passed. */
  at: number;
  /** Top-level keys seen when it was passed. */
  topLevelKeys: number;
  /** The limit's value at that point (for 'values' and 'bytes' it grows with topLevelKeys). */
  bound: number;
  /** The top-level key under which it was passed, if any. */
  topLevelKey: string | undefined;
}

const NO_TOP_LEVEL_KEY = -1;

/**
 * One linear pass over JSON bytes that counts nesting, keys, containers and values and stops at
 * the first limit passed, so hostile JSON is refused before JSON.parse spends time and memory on
 * it. It tracks only structure: strings are skipped (respecting backslash escapes, so `"\""` and
 * `"\\"` end where JSON says). It needs no error handling for malformed JSON: it never reads past
 * `end`, and whatever it lets through is still parsed (and refused) by JSON.parse. Bytes at or
 * above 0x80 only occur inside strings in valid JSON, so scanning UTF-8 bytes is exact.
 */
export function scanJson(bytes: Uint8Array, start: number, end: number, limits: JsonScanLimits): JsonScanProblem | undefined {
  const { maxDepth, maxKeysPerObject, maxTopLevelKeys, maxContainers, valuesBase, valuesPerTopLevelKey, bytesBase, bytesPerTopLevelKey } = limits;
  const isObject = new Uint8Array(maxDepth + 1);
  const keyCounts = new Float64Array(maxDepth + 1);
  let depth = 0;
  let containers = 0;
  let values = 0;
  let topLevelKeys = 0;
  let valueLimit = valuesBase;
  let byteLimit = start + bytesBase; // absolute index: bytes at or past it are over the limit
  let expectingKey = false; // right after `{` or after `,` inside an object
  let expectingValue = true; // right after `[`, `:` or `,`: the next token starts a value
  let topKeyStart = NO_TOP_LEVEL_KEY;
  let topKeyEnd = NO_TOP_LEVEL_KEY;
  const problem = (limit: JsonScanLimit, at: number, bound: number): JsonScanProblem => {
    let topLevelKey: string | undefined;
    if (topKeyStart !== NO_TOP_LEVEL_KEY) {
      // Raw (still escaped) bytes, enough of them for a shortened message.
      topLevelKey = Buffer.from(bytes.buffer, bytes.byteOffset + topKeyStart, Math.min(topKeyEnd - topKeyStart, 4096)).toString('utf8');
    }
    return { limit, at: at - start, topLevelKeys, bound, topLevelKey };
  };

  for (let i = start; i < end; i++) {
    if (i >= byteLimit) return problem('bytes', i, byteLimit - start);
    const c = bytes[i];
    if (c === 0x22 /* " */) {
      const stop = end < byteLimit ? end : byteLimit;
      let j = i + 1;
      while (j < stop) {
        const d = bytes[j];
        if (d === 0x22) break;
        j += d === 0x5c /* \ */ ? 2 : 1;
      }
      if (j >= stop && stop < end) return problem('bytes', stop, byteLimit - start);
      if (expectingKey && isObject[depth] === 1) {
        if (depth === 1) {
          topLevelKeys++;
          topKeyStart = i + 1;
          topKeyEnd = j;
          if (topLevelKeys > maxTopLevelKeys) return problem('topLevelKeys', i, maxTopLevelKeys);
          valueLimit = valuesBase + valuesPerTopLevelKey * topLevelKeys;
          byteLimit = start + bytesBase + bytesPerTopLevelKey * topLevelKeys;
        } else if (++keyCounts[depth] > maxKeysPerObject) {
          return problem('keys', i, maxKeysPerObject);
        }
        expectingKey = false;
      } else if (++values > valueLimit) {
        return problem('values', i, valueLimit);
      }
      expectingValue = false;
      i = j;
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (depth === maxDepth) return problem('depth', i, maxDepth);
      if (++containers > maxContainers) return problem('containers', i, maxContainers);
      if (++values > valueLimit) return problem('values', i, valueLimit);
      depth++;
      isObject[depth] = c === 0x7b ? 1 : 0;
      keyCounts[depth] = 0;
      expectingKey = c === 0x7b;
      expectingValue = true;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      if (depth > 0) depth--;
      expectingKey = false;
      expectingValue = false;
    } else if (c === 0x2c /* , */) {
      expectingKey = isObject[depth] === 1;
      expectingValue = true;
    } else if (c === 0x3a /* : */) {
      expectingKey = false;
      expectingValue = true;
    } else if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) {
      // whitespace between tokens
    } else if (expectingValue) {
      // The first byte of a number or of true/false/null.
      if (++values > valueLimit) return problem('values', i, valueLimit);
      expectingValue = false;
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------
// Duplicate keys

interface JsonFrame {
  /** Keys seen so far, or null for an array. */
  keys: Set<string> | null;
  expectingKey: boolean;
  /** The key this container is stored under in its parent (for error messages). */
  parentKey: string | undefined;
}

/**
 * JSON.parse silently keeps the last of two equal keys, which would let a file hide a
 * tensor. This scans the header text once more with a minimal tokenizer that tracks only
 * containers and strings. It must only be given text JSON.parse already accepted, so it
 * needs no error handling: any string token right after `{` or `,` inside an object is a key.
 * Keys are compared after unescaping (`"a"` and `"\u0061"` are the same key).
 */
function findDuplicateKey(json: string): { key: string; parentKey: string | undefined } | undefined {
  const stack: JsonFrame[] = [];
  let lastKey: string | undefined;
  for (let i = 0; i < json.length; i++) {
    const char = json.charCodeAt(i);
    const top = stack[stack.length - 1];
    if (char === 0x7b /* { */ || char === 0x5b /* [ */) {
      stack.push({ keys: char === 0x7b ? new Set() : null, expectingKey: true, parentKey: lastKey });
    } else if (char === 0x7d /* } */ || char === 0x5d /* ] */) {
      stack.pop();
    } else if (char === 0x2c /* , */) {
      if (top !== undefined) top.expectingKey = true;
    } else if (char === 0x3a /* : */) {
      if (top !== undefined) top.expectingKey = false;
    } else if (char === 0x22 /* " */) {
      let end = i + 1;
      let hasEscape = false;
      while (json.charCodeAt(end) !== 0x22) {
        if (json.charCodeAt(end) === 0x5c /* \ */) {
          hasEscape = true;
          end++;
        }
        end++;
      }
      if (top !== undefined && top.keys !== null && top.expectingKey) {
        const key = hasEscape ? (JSON.parse(json.slice(i, end + 1)) as string) : json.slice(i + 1, end);
        if (top.keys.has(key)) return { key, parentKey: top.parentKey };
        top.keys.add(key);
        lastKey = key;
      }
      i = end;
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------
// Decoding

interface TensorEntry {
  name: string;
  dtype: DType;
  shape: number[];
  begin: number;
  end: number;
}

function parseMetadata(value: unknown, fail: (problem: string) => never): Record<string, string> {
  if (!isPlainObject(value)) {
    fail(`${METADATA_KEY} must be an object whose values are strings, got ${describeJsonValue(value)}`);
  }
  const entries: [string, string][] = [];
  for (const [key, item] of Object.entries(value)) {
    if (typeof item !== 'string') {
      fail(`${METADATA_KEY}[${quote(key)}] must be a string, got ${describeJsonValue(item)}`);
    }
    entries.push([key, item]);
  }
  // fromEntries defines own properties, so a "__proto__" key cannot replace the prototype.
  return Object.fromEntries(entries);
}

function parseEntry(
  name: string,
  value: unknown,
  dataLength: number,
  fail: (problem: string) => never,
): TensorEntry {
  const what = `tensor ${quote(name)}`;
  if (name === '') fail('tensor names must be non-empty strings, found an entry named ""');
  if (!isPlainObject(value)) {
    fail(`${what}: expected an object with dtype, shape and data_offsets, got ${describeJsonValue(value)}`);
  }
  for (const key of Object.keys(value)) {
    if (!(ENTRY_KEYS as readonly string[]).includes(key)) {
      fail(`${what}: unexpected key ${quote(key)} (expected only dtype, shape, data_offsets)`);
    }
  }
  for (const key of ENTRY_KEYS) {
    if (!Object.prototype.hasOwnProperty.call(value, key)) fail(`${what}: missing "${key}"`);
  }

  const { dtype, shape, data_offsets: offsets } = value;
  if (typeof dtype !== 'string') fail(`${what}: dtype must be a string, got ${describeJsonValue(dtype)}`);
  if (!isDType(dtype)) fail(`${what}: unsupported dtype ${quote(dtype)} (supported: ${SUPPORTED_DTYPES})`);

  if (!Array.isArray(shape)) {
    fail(`${what}: shape must be an array of non-negative integers, got ${describeJsonValue(shape)}`);
  }
  const dims: number[] = [];
  shape.forEach((dim: unknown, axis) => {
    if (!isNonNegativeSafeInteger(dim)) {
      fail(`${what}: shape[${axis}] must be a non-negative safe integer, got ${describeJsonValue(dim)}`);
    }
    dims.push(dim);
  });
  const count = elementCount(dims);
  if (count === undefined) {
    fail(`${what}: shape ${formatShape(dims)} has more than 2^32 elements`);
  }

  if (!Array.isArray(offsets) || offsets.length !== 2) {
    fail(`${what}: data_offsets must be an array [begin, end], got ${describeJsonValue(offsets)}`);
  }
  const [begin, end]: unknown[] = offsets;
  if (!isNonNegativeSafeInteger(begin) || !isNonNegativeSafeInteger(end)) {
    fail(`${what}: data_offsets must be non-negative safe integers, got ${JSON.stringify(offsets)}`);
  }
  if (begin > end) fail(`${what}: data_offsets [${begin}, ${end}] has begin > end`);

  const expectedBytes = count * DTYPES[dtype].elementSize;
  if (end - begin !== expectedBytes) {
    fail(
      `${what}: data_offsets [${begin}, ${end}] span ${end - begin} bytes, but dtype ${dtype} ` +
        `with shape ${formatShape(dims)} needs ${expectedBytes} bytes`,
    );
  }
  if (end > dataLength) {
    fail(`${what}: data_offsets [${begin}, ${end}] extend past the end of the ${dataLength}-byte data section`);
  }
  return { name, dtype, shape: dims, begin, end };
}

function checkNoOverlap(entries: readonly TensorEntry[], fail: (problem: string) => never): void {
  // Empty tensors occupy no bytes, so they cannot overlap anything.
  const occupied = entries.filter((entry) => entry.end > entry.begin).sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < occupied.length; i++) {
    const previous = occupied[i - 1];
    const current = occupied[i];
    if (current.begin < previous.end) {
      fail(
        `tensors ${quote(previous.name)} [${previous.begin}, ${previous.end}] and ` +
          `${quote(current.name)} [${current.begin}, ${current.end}] overlap`,
      );
    }
  }
}

export interface DecodeLimits {
  /** Most tensors the file may hold (default DEFAULT_MAX_TENSORS): what the largest model the
   * caller accepts can need, which also bounds the header's size and parse time. */
  maxTensors?: number;
}

/** Refuses a header that passes one of the bounds above (MAX_HEADER_DEPTH and the rest). */
function checkHeaderBounds(
  bytes: Uint8Array,
  headerLength: number,
  dataLength: number,
  maxTensors: number,
  fail: (problem: string) => never,
): void {
  // The top level holds the tensors and __metadata__.
  const maxEntries = maxTensors + 1;
  const bytesBase = HEADER_BASE_BYTES + dataLength;
  const byteRule = `${HEADER_BASE_BYTES} bytes + ${HEADER_BYTES_PER_ENTRY} per entry + the ${dataLength}-byte data section`;
  // Refused before scanning when even the most entries allowed cannot pay for this length.
  if (headerLength > bytesBase + HEADER_BYTES_PER_ENTRY * maxEntries) {
    fail(`header length ${headerLength} exceeds the limit for at most ${maxTensors} tensors (${byteRule})`);
  }
  const found = scanJson(bytes, 8, Math.min(8 + headerLength, bytes.length), {
    maxDepth: MAX_HEADER_DEPTH,
    maxKeysPerObject: MAX_HEADER_OBJECT_KEYS,
    maxTopLevelKeys: maxEntries,
    maxContainers: Infinity,
    valuesBase: HEADER_BASE_VALUES,
    valuesPerTopLevelKey: HEADER_VALUES_PER_ENTRY,
    bytesBase,
    bytesPerTopLevelKey: HEADER_BYTES_PER_ENTRY,
  });
  if (found === undefined) return;
  const under = found.topLevelKey === undefined ? '' : ` (under ${quote(found.topLevelKey)})`;
  switch (found.limit) {
    case 'depth':
      return fail(`header nests deeper than ${MAX_HEADER_DEPTH} levels${under}; a safetensors header nests 3 (the object, an entry, its shape)`);
    case 'keys':
      return fail(`header entry ${quote(found.topLevelKey ?? '')} has more than ${MAX_HEADER_OBJECT_KEYS} keys (the limit per object)`);
    case 'topLevelKeys':
      return fail(`header has more than ${maxTensors} tensor entries (the limit for this kind of model file)`);
    case 'values':
      return fail(
        `header holds more than ${found.bound} JSON values in its first ${found.topLevelKeys} entries` +
          ` (limit: ${HEADER_BASE_VALUES} + ${HEADER_VALUES_PER_ENTRY} per entry)${under}`,
      );
    case 'bytes':
      return fail(
        `header of ${headerLength} bytes passes its size limit at byte ${found.at}, with ${found.topLevelKeys} entries so far` +
          ` (limit: ${byteRule})${under}`,
      );
    default:
      return fail(`header passes the ${found.limit} limit`);
  }
}

/**
 * The checks decodeSafetensors makes before it decodes or parses anything: the length field,
 * and the header's size, nesting, keys and values (checkHeaderBounds). Linear in the header,
 * with a small constant. Returns the header length.
 *
 * `bytes` may be only the start of a file of `fileSize` bytes: then the part of the header it
 * holds is checked (every bound holds for a whole header only if it holds for each start of
 * it), which lets a reader refuse a hostile header before reading the rest of the file.
 * @throws ModelFileError naming `source`.
 */
export function checkSafetensorsHeader(bytes: Uint8Array, source: string = DEFAULT_SOURCE, limits: DecodeLimits = {}, fileSize = bytes.length): number {
  const fail: (problem: string) => never = (problem) => {
    throw new ModelFileError(source, problem);
  };
  if (fileSize < 8) {
    fail(`file is ${fileSize} bytes long; a safetensors file needs at least 8 (the header length)`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  // Compared as a bigint: a hostile u64 can exceed Number's exact range.
  const declaredHeaderLength = view.getBigUint64(0, true);
  if (declaredHeaderLength === 0n) {
    fail('header length is 0; expected the length of a JSON object header');
  }
  if (declaredHeaderLength > BigInt(MAX_HEADER_BYTES)) {
    fail(`header length ${declaredHeaderLength} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  }
  const headerLength = Number(declaredHeaderLength);
  if (headerLength > fileSize - 8) {
    fail(
      `header length ${headerLength} is larger than the ${fileSize - 8} bytes after the length field ` +
        '(truncated or not a safetensors file)',
    );
  }
  checkHeaderBounds(bytes, headerLength, fileSize - 8 - headerLength, limits.maxTensors ?? DEFAULT_MAX_TENSORS, fail);
  return headerLength;
}

/**
 * Parses a safetensors file held in memory. Every tensor gets its own freshly allocated,
 * aligned typed array (never a view of `bytes`, whose offsets need not be aligned), in host
 * byte order. Unreferenced bytes between or after tensors are allowed, as the format permits.
 *
 * @param source names the file in error messages.
 * @throws ModelFileError for anything that is not a valid file.
 */
export function decodeSafetensors(bytes: Uint8Array, source: string = DEFAULT_SOURCE, limits: DecodeLimits = {}): SafetensorsFile {
  const steps = decodeSteps(bytes, source, limits);
  for (;;) {
    const step = steps.next();
    if (step.done === true) return step.value;
  }
}

/**
 * decodeSafetensors as a generator that yields after each tensor it copies (the bytes copied),
 * so that readSafetensors can let the event loop turn while copying a big file's tensors.
 */
function* decodeSteps(bytes: Uint8Array, source: string, limits: DecodeLimits): Generator<number, SafetensorsFile, void> {
  // The explicit type annotation is what lets TypeScript narrow after `fail(...)` calls.
  const fail: (problem: string) => never = (problem) => {
    throw new ModelFileError(source, problem);
  };
  const maxTensors = limits.maxTensors ?? DEFAULT_MAX_TENSORS;
  const headerLength = checkSafetensorsHeader(bytes, source, limits);
  const dataLength = bytes.length - 8 - headerLength;

  let headerText: string;
  try {
    // ignoreBOM keeps a leading byte-order mark in the text, so JSON.parse rejects it as
    // the reference implementation does.
    headerText = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(
      bytes.subarray(8, 8 + headerLength),
    );
  } catch {
    return fail('header is not valid UTF-8');
  }

  let header: unknown;
  try {
    header = JSON.parse(headerText);
  } catch (error) {
    return fail(`header is not valid JSON (${error instanceof Error ? error.message : String(error)})`);
  }
  if (!isPlainObject(header)) {
    fail(`header must be a JSON object mapping tensor names to entries, got ${describeJsonValue(header)}`);
  }
  const duplicate = findDuplicateKey(headerText);
  if (duplicate !== undefined) {
    fail(
      duplicate.parentKey === undefined
        ? `header names ${quote(duplicate.key)} more than once (duplicate tensor name)`
        : `header entry ${quote(duplicate.parentKey)} has the key ${quote(duplicate.key)} more than once`,
    );
  }

  const dataStart = 8 + headerLength;
  let metadata: Record<string, string> = {};
  const entries: TensorEntry[] = [];
  for (const [name, value] of Object.entries(header)) {
    if (name === METADATA_KEY) metadata = parseMetadata(value, fail);
    else entries.push(parseEntry(name, value, dataLength, fail));
  }
  // The pre-scan allowed one more top-level key for __metadata__; without it, recheck.
  if (entries.length > maxTensors) fail(`header has more than ${maxTensors} tensor entries (the limit for this kind of model file)`);
  checkNoOverlap(entries, fail);

  // Only now, with every entry validated, is any tensor data touched.
  const tensors = new Map<string, Tensor>();
  // ArrayBuffer#slice copies in one pass, where allocating (zero-filled) and then set() takes two.
  const ownBuffer = Object.prototype.toString.call(bytes.buffer) === '[object ArrayBuffer]' ? (bytes.buffer as ArrayBuffer) : undefined;
  for (const { name, dtype, shape, begin, end } of entries) {
    const { elementSize, fromBuffer } = DTYPES[dtype];
    // A fresh buffer at offset 0 is aligned for any element size. (Buffer#slice would alias
    // the input instead of copying, hence ArrayBuffer#slice or set() here.)
    let copy: Uint8Array;
    if (ownBuffer !== undefined) {
      copy = new Uint8Array(ownBuffer.slice(bytes.byteOffset + dataStart + begin, bytes.byteOffset + dataStart + end));
    } else {
      copy = new Uint8Array(end - begin);
      copy.set(bytes.subarray(dataStart + begin, dataStart + end));
    }
    if (dtype === 'BOOL') {
      const invalidIndex = copy.findIndex((byte) => byte > 1);
      if (invalidIndex >= 0) {
        fail(`tensor ${quote(name)}: BOOL element ${invalidIndex} has byte value ${copy[invalidIndex]}; expected 0 or 1`);
      }
    }
    if (!HOST_IS_LITTLE_ENDIAN && elementSize > 1) swapByteOrder(copy, elementSize);
    tensors.set(name, { dtype, shape, data: fromBuffer(copy.buffer as ArrayBuffer) });
    yield end - begin;
  }
  return { tensors, metadata };
}

export interface ReadLimits extends DecodeLimits {
  /** Largest file accepted, in bytes (default: the largest Buffer this Node can hold). */
  maxFileBytes?: number;
}

/** Reads are issued in pieces of this size so that one huge read does not hold a thread-pool thread. */
const READ_CHUNK_BYTES = 64 * 1024 * 1024;

/** What a file that is not a regular file is, for messages. */
function describeFileKind(stats: { isDirectory(): boolean; isFIFO(): boolean; isCharacterDevice(): boolean; isBlockDevice(): boolean; isSocket(): boolean }): string {
  if (stats.isDirectory()) return 'a directory';
  if (stats.isFIFO()) return 'a FIFO (named pipe)';
  if (stats.isCharacterDevice()) return 'a character device';
  if (stats.isBlockDevice()) return 'a block device';
  if (stats.isSocket()) return 'a socket';
  return 'not a regular file';
}

function reasonOf(error: unknown): string {
  return typeof error === 'object' && error !== null && typeof (error as Error).message === 'string' ? (error as Error).message : String(error);
}

/**
 * Opens a regular file of at most `maxBytes` bytes for reading. The checks use fstat on the
 * opened descriptor, so the file checked is the file read (no stat-then-open race): a device
 * such as /dev/zero, a FIFO or a directory is refused instead of read forever. O_NONBLOCK makes
 * opening a FIFO that has no writer return at once instead of waiting for one (on a regular
 * file it changes nothing); O_NOCTTY keeps a terminal from becoming ours.
 * @throws ModelFileError naming `path`.
 */
async function openRegularFile(path: string, maxBytes: number): Promise<{ handle: FileHandle; size: number }> {
  const flags = fsConstants.O_RDONLY | (fsConstants.O_NONBLOCK ?? 0) | (fsConstants.O_NOCTTY ?? 0);
  let handle: FileHandle;
  try {
    handle = await open(path, flags);
  } catch (error) {
    throw new ModelFileError(path, `cannot read the file (${reasonOf(error)})`, { cause: error });
  }
  try {
    const stats = await handle.stat();
    if (!stats.isFile()) throw new ModelFileError(path, `is ${describeFileKind(stats)}; a model file must be a regular file`);
    if (stats.size > maxBytes) throw new ModelFileError(path, `file is ${stats.size} bytes, more than the ${maxBytes}-byte limit for this kind of model file`);
    return { handle, size: stats.size };
  } catch (error) {
    await handle.close().catch(() => undefined);
    throw asReadError(path, error);
  }
}

function asReadError(path: string, error: unknown): unknown {
  if (typeof error === 'object' && error !== null && (error as Error).name === 'ModelFileError') return error;
  return new ModelFileError(path, `cannot read the file (${reasonOf(error)})`, { cause: error });
}

/** Fills bytes[from, to) from the same offsets of the file; exactly those bytes, never more. */
async function readRange(path: string, handle: FileHandle, bytes: Buffer, from: number, to: number): Promise<void> {
  let filled = from;
  while (filled < to) {
    const { bytesRead } = await handle.read(bytes, filled, Math.min(READ_CHUNK_BYTES, to - filled), filled);
    if (bytesRead === 0) throw new ModelFileError(path, `file shrank while being read (to ${filled} of the ${bytes.length} bytes it had when opened)`);
    filled += bytesRead;
  }
}

/** How much of a header is read and checked before the rest of the file (see readSafetensors). */
const EARLY_CHECK_BYTES = HEADER_BASE_BYTES + 64 * 1024;

/**
 * Reads and decodes a safetensors file: a regular file (see openRegularFile) of at most
 * `limits.maxFileBytes`, of which exactly the size fstat reported is read. The start of the
 * file is read and its header checked first, so a hostile header (a 98 MB one, say) is refused
 * after reading a few MB rather than the whole file.
 * @throws ModelFileError naming `path` if it cannot be read, is not a regular file, passes a
 * limit or is not a valid file.
 */
export async function readSafetensors(path: string, limits: ReadLimits = {}): Promise<SafetensorsFile> {
  const { handle, size } = await openRegularFile(path, limits.maxFileBytes ?? bufferConstants.MAX_LENGTH);
  let bytes: Buffer;
  try {
    bytes = Buffer.allocUnsafe(size);
    const early = Math.min(size, 8 + EARLY_CHECK_BYTES);
    await readRange(path, handle, bytes, 0, early);
    if (early < size) {
      checkSafetensorsHeader(bytes.subarray(0, early), path, limits, size);
      await readRange(path, handle, bytes, early, size);
    }
  } catch (error) {
    throw asReadError(path, error);
  } finally {
    await handle.close().catch(() => undefined);
  }
  // Let other work run between tensors once a few MB have been copied, rather than only
  // after the whole file (copying 1 GiB takes a noticeable fraction of a second).
  const steps = decodeSteps(bytes, path, limits);
  let sinceTurn = 0;
  for (;;) {
    const step = steps.next();
    if (step.done === true) return step.value;
    sinceTurn += step.value;
    if (sinceTurn >= BYTES_PER_TURN) {
      sinceTurn = 0;
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }
}

/** Tensor bytes copied between turns of the event loop in readSafetensors. */
const BYTES_PER_TURN = 16 * 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Encoding

function isMap(value: unknown): value is Map<string, Tensor> {
  return value instanceof Map || Object.prototype.toString.call(value) === '[object Map]';
}

/** Throws a TypeError/RangeError: bad input to the encoder is a programming error, not a bad file. */
function checkTensorForEncoding(name: string, tensor: Tensor): void {
  if (typeof name !== 'string' || name === '') throw new TypeError('encodeSafetensors: tensor names must be non-empty strings');
  const what = `encodeSafetensors: tensor ${quote(name)}`;
  if (name === METADATA_KEY) throw new TypeError(`${what}: the name is reserved for file metadata`);
  if (!isDType(tensor.dtype)) throw new TypeError(`${what}: unsupported dtype ${quote(String(tensor.dtype))} (supported: ${SUPPORTED_DTYPES})`);
  const info = DTYPES[tensor.dtype];
  const actualTag = Object.prototype.toString.call(tensor.data);
  if (actualTag !== info.arrayTag) {
    throw new TypeError(`${what}: dtype ${tensor.dtype} needs data as ${info.arrayTag.slice(8, -1)}, got ${actualTag.slice(8, -1)}`);
  }
  if (!Array.isArray(tensor.shape) || !tensor.shape.every(isNonNegativeSafeInteger)) {
    throw new TypeError(`${what}: shape must be an array of non-negative safe integers`);
  }
  const count = elementCount(tensor.shape);
  if (count === undefined) throw new RangeError(`${what}: shape has more than 2^32 elements`);
  if (count !== tensor.data.length) {
    throw new RangeError(`${what}: shape [${tensor.shape.join(', ')}] has ${count} elements but data has ${tensor.data.length}`);
  }
  if (tensor.dtype === 'BOOL' && (tensor.data as Uint8Array).some((byte) => byte > 1)) {
    throw new RangeError(`${what}: BOOL data must hold only 0 and 1`);
  }
}

/**
 * Serializes tensors (and optional string metadata) to safetensors bytes.
 *
 * The data section is laid out the way the reference writer lays it out: contiguous with no
 * gaps and no trailing bytes (its reader rejects both), ordered by element size, largest
 * first, then by name. Every tensor length is a multiple of its element size, so this order
 * leaves every tensor aligned to its element size without padding. Header keys are written
 * in name order; the header is padded with spaces so the data starts at a multiple of 8.
 * Empty or absent metadata writes no `__metadata__` entry.
 *
 * @throws TypeError / RangeError if a tensor is inconsistent (dtype vs. array type, shape vs.
 * length, BOOL values other than 0/1, empty or reserved name) or a metadata value is not a string.
 */
export function encodeSafetensors(
  tensors: Record<string, Tensor> | Map<string, Tensor>,
  metadata?: Record<string, string>,
): Buffer {
  const entries: [string, Tensor][] = isMap(tensors) ? [...tensors.entries()] : Object.entries(tensors);
  for (const [name, tensor] of entries) checkTensorForEncoding(name, tensor);
  if (metadata !== undefined) {
    for (const [key, value] of Object.entries(metadata)) {
      if (typeof value !== 'string') throw new TypeError(`encodeSafetensors: metadata ${quote(key)} must be a string`);
    }
  }

  // Code-unit order rather than localeCompare: the layout must not depend on the locale.
  const byName = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);
  const layout = [...entries].sort(
    ([nameA, a], [nameB, b]) => DTYPES[b.dtype].elementSize - DTYPES[a.dtype].elementSize || byName(nameA, nameB),
  );
  const offsets = new Map<string, [number, number]>();
  let dataLength = 0;
  for (const [name, tensor] of layout) {
    offsets.set(name, [dataLength, dataLength + tensor.data.byteLength]);
    dataLength += tensor.data.byteLength;
  }

  // Built by hand rather than with one JSON.stringify of an object: object key order would
  // move integer-like names first, and a tensor named "__proto__" would be lost.
  const headerParts: string[] = [];
  if (metadata !== undefined && Object.keys(metadata).length > 0) {
    headerParts.push(`${JSON.stringify(METADATA_KEY)}:${JSON.stringify(metadata)}`);
  }
  for (const [name, tensor] of [...entries].sort(([a], [b]) => byName(a, b))) {
    const entry = { dtype: tensor.dtype, shape: tensor.shape, data_offsets: offsets.get(name) };
    headerParts.push(`${JSON.stringify(name)}:${JSON.stringify(entry)}`);
  }
  const headerJson = Buffer.from(`{${headerParts.join(',')}}`, 'utf8');
  const headerLength = Math.ceil(headerJson.length / 8) * 8;

  const out = Buffer.alloc(8 + headerLength + dataLength, 0);
  out.writeBigUInt64LE(BigInt(headerLength), 0);
  headerJson.copy(out, 8);
  out.fill(0x20 /* space */, 8 + headerJson.length, 8 + headerLength);
  const dataStart = 8 + headerLength;
  for (const [name, tensor] of layout) {
    const [begin] = offsets.get(name) ?? [0];
    const target = out.subarray(dataStart + begin, dataStart + begin + tensor.data.byteLength);
    target.set(new Uint8Array(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength));
    const { elementSize } = DTYPES[tensor.dtype];
    if (!HOST_IS_LITTLE_ENDIAN && elementSize > 1) swapByteOrder(target, elementSize);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Atomic file replacement

/** Failure-injection points for tests; production code never sets them. */
interface WriteFileAtomicHooks {
  /** Runs after the bytes are written to the temp file, before it is synced and renamed. */
  afterTempWrite?: (tempPath: string) => void | Promise<void>;
}

const writeHooks: WriteFileAtomicHooks = {};

// Temp files are named `.iaflow-<target>-<host>-<pid>-<random>.tmp`, whatever the target's name:
// <target> is a hash of the target's file name, so the name has a fixed length of at most ~50
// bytes (a 255-byte target name would not fit with a suffix) and still tells which target a temp
// file belongs to; <host> and <pid> tell whether the save that made it can still be running.
const TEMP_PREFIX = '.iaflow-';
const HOST_TAG = shortHash(hostname(), 4);

function shortHash(text: string, length: number): string {
  return createHash('sha256').update(text).digest('hex').slice(0, length);
}

function targetTag(path: string): string {
  return shortHash(basename(path), 12);
}

function tempPathFor(path: string, pid: number = process.pid, host: string = HOST_TAG): string {
  return join(dirname(path), `${TEMP_PREFIX}${targetTag(path)}-${host}-${pid}-${randomBytes(4).toString('hex')}.tmp`);
}

function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0); // signal 0: only asks whether the process exists
    return true;
  } catch (error) {
    // EPERM: it exists but belongs to another user.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Removes temp files that earlier saves of the same target left when they were killed
 * mid-write. A temp file is removed only if its name matches this target's pattern, it was
 * made on this host and its process is gone. That never touches a save still in progress:
 * not in this process (its pid is alive, which also covers other worker threads, whose saves
 * the module state of this thread cannot see), nor in another live process on this host, nor
 * on another host sharing the directory (whose pids mean nothing here). A reused pid only
 * delays the cleanup. Best effort: an unreadable directory or a failed unlink is ignored.
 */
async function removeStaleTempFiles(path: string): Promise<void> {
  const pattern = new RegExp(`^${TEMP_PREFIX.replace('.', '\\.')}${targetTag(path)}-${HOST_TAG}-([1-9][0-9]{0,9})-[0-9a-f]{8}\\.tmp$`);
  const directory = dirname(path);
  try {
    for await (const entry of await opendir(directory)) {
      const match = pattern.exec(entry.name);
      if (match === null || isProcessAlive(Number(match[1]))) continue;
      await unlink(join(directory, entry.name)).catch(() => undefined);
    }
  } catch {
    // Cleanup is a courtesy; the save itself must not fail because of it.
  }
}

/**
 * A file-system error from a step of the save, reworded to name the user's path instead of the
 * hidden temp file (`ENOENT: no such file or directory, open '/dir/.iaflow-...tmp'` means the
 * target's directory is missing) or no path at all (`ENOSPC: ..., write`). The code, errno and
 * syscall are kept; the original is the cause. Other errors (from a data source, say) pass as
 * they are, unless they quote the temp path.
 */
function errorNamingTarget(error: unknown, path: string, tempPath: string): unknown {
  if (typeof error !== 'object' || error === null) return error;
  const { message, code, errno, syscall } = error as NodeJS.ErrnoException;
  if (typeof message !== 'string') return error;
  // Node's system errors read `CODE: description, syscall['path'[ -> 'dest']]`.
  const parts = typeof code === 'string' ? /^([A-Z0-9_]+): ([^,]*), \w+/.exec(message) : null;
  if (parts === null && !message.includes(tempPath)) return error;
  const text = parts !== null ? `${parts[1]}: ${parts[2]}, while saving '${path}'` : message.split(tempPath).join(path);
  const reworded = new Error(text, { cause: error }) as NodeJS.ErrnoException;
  if (code !== undefined) reworded.code = code;
  if (errno !== undefined) reworded.errno = errno;
  if (syscall !== undefined) reworded.syscall = syscall;
  reworded.path = path;
  return reworded;
}

/**
 * Replaces `path` with `bytes` so that readers (and a crash or power loss) see either the
 * old file or the complete new one, never a partial file: the bytes go to a temp file in the
 * same directory (rename is only atomic within one file system), which is fsynced and then
 * renamed over `path`. On any failure the temp file is removed, the previous file is left
 * untouched and the error is rethrown, naming `path` (never the temp file). An existing file's
 * permission bits are kept. Temp files left by earlier saves of `path` that were killed are
 * removed first (see removeStaleTempFiles).
 */
export async function writeFileAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const directory = dirname(path);
  const tempPath = tempPathFor(path);
  await removeStaleTempFiles(path);
  const previousMode = await stat(path).then(
    (stats) => stats.mode & 0o777, // permission bits only; never carry setuid/setgid over
    () => undefined,
  );

  let handle: FileHandle | undefined;
  let createdTemp = false;
  try {
    // 'wx' fails rather than truncating if the name is somehow taken, so we never clobber
    // (or later delete) a file we did not create.
    handle = await open(tempPath, 'wx', 0o666);
    createdTemp = true;
    if (previousMode !== undefined) await handle.chmod(previousMode);
    await handle.writeFile(bytes);
    await writeHooks.afterTempWrite?.(tempPath);
    await handle.sync();
    await handle.close();
    handle = undefined;
    await rename(tempPath, path);
  } catch (error) {
    await handle?.close().catch(() => undefined);
    if (createdTemp) await unlink(tempPath).catch(() => undefined);
    throw errorNamingTarget(error, path, tempPath);
  }
  await syncDirectory(directory);
}

/** Makes the rename itself durable. Best effort: some platforms (Windows) cannot open a
 * directory for syncing, and the new file is already in place either way. */
async function syncDirectory(directory: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(directory, 'r');
    await handle.sync();
  } catch {
    // Durability of the directory entry is not guaranteed on such platforms; nothing to do.
  } finally {
    await handle?.close().catch(() => undefined);
  }
}

/** Internals exposed for tests only; not part of the public API. */
export const __testing = {
  hooks: writeHooks,
  swapByteOrder,
  findDuplicateKey,
  /** A temp-file name as writeFileAtomic makes them, for the given pid (and host tag). */
  tempPathFor,
  HOST_TAG,
};
