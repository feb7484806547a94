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
import { randomBytes } from 'node:crypto';
import { open, readFile, rename, stat, unlink } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

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

/** Same bound as the reference implementation, so we reject exactly the headers it rejects. */
export const MAX_HEADER_BYTES = 100_000_000;

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

/** JSON-quotes a name for messages, shortened so a hostile 50 MB name cannot flood a log. */
function quote(text: string): string {
  const limit = 120;
  return JSON.stringify(text.length > limit ? `${text.slice(0, limit)}...` : text);
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
    fail(`${what}: shape [${dims.join(', ')}] has more than 2^32 elements`);
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
        `with shape [${dims.join(', ')}] needs ${expectedBytes} bytes`,
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

/**
 * Parses a safetensors file held in memory. Every tensor gets its own freshly allocated,
 * aligned typed array (never a view of `bytes`, whose offsets need not be aligned), in host
 * byte order. Unreferenced bytes between or after tensors are allowed, as the format permits.
 *
 * @param source names the file in error messages.
 * @throws ModelFileError for anything that is not a valid file.
 */
export function decodeSafetensors(bytes: Uint8Array, source: string = DEFAULT_SOURCE): SafetensorsFile {
  // The explicit type annotation is what lets TypeScript narrow after `fail(...)` calls.
  const fail: (problem: string) => never = (problem) => {
    throw new ModelFileError(source, problem);
  };

  if (bytes.length < 8) {
    fail(`file is ${bytes.length} bytes long; a safetensors file needs at least 8 (the header length)`);
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
  if (headerLength > bytes.length - 8) {
    fail(
      `header length ${headerLength} is larger than the ${bytes.length - 8} bytes after the length field ` +
        '(truncated or not a safetensors file)',
    );
  }

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
  const dataLength = bytes.length - dataStart;
  let metadata: Record<string, string> = {};
  const entries: TensorEntry[] = [];
  for (const [name, value] of Object.entries(header)) {
    if (name === METADATA_KEY) metadata = parseMetadata(value, fail);
    else entries.push(parseEntry(name, value, dataLength, fail));
  }
  checkNoOverlap(entries, fail);

  // Only now, with every entry validated, is any tensor data touched.
  const tensors = new Map<string, Tensor>();
  for (const { name, dtype, shape, begin, end } of entries) {
    const { elementSize, fromBuffer } = DTYPES[dtype];
    // A fresh buffer at offset 0 is aligned for any element size. (Buffer#slice would alias
    // the input instead of copying, hence no slice() here.)
    const copy = new Uint8Array(end - begin);
    copy.set(bytes.subarray(dataStart + begin, dataStart + end));
    if (dtype === 'BOOL') {
      const invalidIndex = copy.findIndex((byte) => byte > 1);
      if (invalidIndex >= 0) {
        fail(`tensor ${quote(name)}: BOOL element ${invalidIndex} has byte value ${copy[invalidIndex]}; expected 0 or 1`);
      }
    }
    if (!HOST_IS_LITTLE_ENDIAN && elementSize > 1) swapByteOrder(copy, elementSize);
    tensors.set(name, { dtype, shape, data: fromBuffer(copy.buffer) });
  }
  return { tensors, metadata };
}

/**
 * Reads and decodes a safetensors file.
 * @throws ModelFileError naming `path` if it cannot be read or is not a valid file.
 */
export async function readSafetensors(path: string): Promise<SafetensorsFile> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new ModelFileError(path, `cannot read the file (${reason})`, { cause: error });
  }
  return decodeSafetensors(bytes, path);
}

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

/**
 * Replaces `path` with `bytes` so that readers (and a crash or power loss) see either the
 * old file or the complete new one, never a partial file: the bytes go to a temp file in the
 * same directory (rename is only atomic within one file system), which is fsynced and then
 * renamed over `path`. On any failure the temp file is removed, the previous file is left
 * untouched and the error is rethrown. An existing file's permission bits are kept.
 */
export async function writeFileAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const directory = dirname(path);
  const tempPath = join(directory, `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
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
    throw error;
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
};
