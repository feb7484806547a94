/**
 * NumPy `.npy` files (https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html)
 * for float32 and float64 arrays in C (row-major) order: data to score, samples to hand to
 * Python.
 *
 * Layout: the magic `\x93NUMPY`, a major and a minor version byte, the header length (u16
 * little-endian in version 1.0, u32 in 2.0 and 3.0), then the header, an ASCII (3.0: UTF-8)
 * Python dict literal such as `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`,
 * padded with spaces and a newline so the data starts at a multiple of 64 bytes; then the raw
 * array bytes.
 *
 * The reader treats every byte as hostile: it parses the header with a small parser for
 * Python literals (no eval), accepts exactly what numpy's own reader accepts for these
 * dtypes (the keys descr, fortran_order and shape, nothing else), and checks that the data
 * is exactly as long as the shape says before it touches it. Any problem is an NpyFileError
 * naming the file, never a crash. Big-endian files (`>f4`, `>f8`) are converted on reading.
 * The writer produces the bytes `numpy.save` produces for the same array (format 1.0, or
 * 2.0 when the header needs it; little-endian), and writes them atomically.
 */
import { readFile } from 'node:fs/promises';
import { writeFileAtomic } from './safetensors';
import { invalidRange, invalidType, isFloat32Array, isFloat64Array } from './validation';

/** An array read from a .npy file: its elements in C (row-major) order and its shape. */
export interface NpyArray {
  /** Float32Array for `<f4`/`>f4` files, Float64Array for `<f8`/`>f8`, converted to this machine's byte order. */
  data: Float32Array | Float64Array;
  /** The array's shape; `[]` for a 0-d array (one element). */
  shape: number[];
}

/** A .npy file (or byte buffer) that cannot be read; the message is `<source>: <what is wrong>`. */
export class NpyFileError extends Error {
  override readonly name = 'NpyFileError';
  /** The file (or other source) the problem was found in. */
  readonly source: string;
  /** The problem alone, without the source prefix. */
  readonly problem: string;

  constructor(source: string, problem: string, options?: ErrorOptions) {
    super(`${source}: ${problem}`, options);
    this.source = source;
    this.problem = problem;
    Object.setPrototypeOf(this, new.target.prototype);
  }
}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
const PREAMBLE_BYTES = 8; // magic + version
const ARRAY_ALIGN = 64;
/** numpy leaves room for the first axis to grow in place: the header is padded as if that
 * dimension had this many digits. Kept so our bytes equal numpy.save's. */
const GROWTH_AXIS_MAX_DIGITS = 21;
/** Nesting deeper than this is no .npy header; the limit keeps a hostile header from exhausting the stack. */
const MAX_NESTING = 32;
const DEFAULT_SOURCE = '<npy bytes>';

const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

interface DTypeInfo {
  elementSize: 4 | 8;
  littleEndian: boolean;
  name: 'float32' | 'float64';
}

const DESCRS: Readonly<Record<string, DTypeInfo>> = {
  '<f4': { elementSize: 4, littleEndian: true, name: 'float32' },
  '>f4': { elementSize: 4, littleEndian: false, name: 'float32' },
  '<f8': { elementSize: 8, littleEndian: true, name: 'float64' },
  '>f8': { elementSize: 8, littleEndian: false, name: 'float64' },
};

// ---------------------------------------------------------------------------------------
// A parser for the Python literals a .npy header may hold

type PyValue =
  | { kind: 'str'; value: string }
  | { kind: 'int'; value: bigint }
  | { kind: 'bool'; value: boolean }
  | { kind: 'none' }
  | { kind: 'tuple'; items: PyValue[] }
  | { kind: 'list'; items: PyValue[] }
  | { kind: 'dict'; entries: Map<string, PyValue> };

/** Shortened for messages, so a hostile 60 KB header cannot flood a log. */
function clip(text: string, limit = 120): string {
  return text.length > limit ? `${text.slice(0, limit)}...` : text;
}

/** Python's repr of a parsed value, for error messages. */
function pyRepr(value: PyValue): string {
  switch (value.kind) {
    case 'str':
      return `'${value.value.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
    case 'int':
      return value.value.toString();
    case 'bool':
      return value.value ? 'True' : 'False';
    case 'none':
      return 'None';
    case 'tuple':
      return value.items.length === 1 ? `(${pyRepr(value.items[0])},)` : `(${value.items.map(pyRepr).join(', ')})`;
    case 'list':
      return `[${value.items.map(pyRepr).join(', ')}]`;
    case 'dict':
      return `{${[...value.entries].map(([k, v]) => `'${k}': ${pyRepr(v)}`).join(', ')}}`;
  }
}

const STRING_ESCAPES: Readonly<Record<string, string>> = {
  '\\': '\\',
  "'": "'",
  '"': '"',
  n: '\n',
  t: '\t',
  r: '\r',
  '0': '\0',
};

/** Parses `text` as one Python literal (dict, tuple, list, str, int, True, False, None). */
function parsePythonLiteral(text: string, fail: (problem: string) => never): PyValue {
  let pos = 0;
  const bad: (what: string) => never = (what) =>
    fail(`cannot parse the header ${JSON.stringify(clip(text.trimEnd()))}: ${what} at character ${pos}`);

  const skipSpace = (): void => {
    while (pos < text.length && /[ \t\r\n]/.test(text[pos])) pos++;
  };

  const parseString = (): PyValue => {
    const quote = text[pos++];
    let out = '';
    for (;;) {
      if (pos >= text.length) bad('unterminated string');
      const char = text[pos++];
      if (char === quote) return { kind: 'str', value: out };
      if (char === '\n') bad('line break inside a string');
      if (char === '\\') {
        const escaped = STRING_ESCAPES[text[pos]];
        if (escaped === undefined) bad(`unsupported escape \\${text[pos] ?? ''} in a string`);
        out += escaped;
        pos++;
      } else {
        out += char;
      }
    }
  };

  const parseSequence = (close: string, depth: number): { items: PyValue[]; trailingComma: boolean } => {
    const items: PyValue[] = [];
    let trailingComma = false;
    skipSpace();
    while (text[pos] !== close) {
      items.push(parseValue(depth + 1));
      skipSpace();
      if (text[pos] === ',') {
        pos++;
        trailingComma = true;
        skipSpace();
      } else if (text[pos] !== close) {
        bad(`expected ',' or '${close}'`);
      } else {
        trailingComma = false;
      }
    }
    pos++;
    return { items, trailingComma };
  };

  const parseValue = (depth: number): PyValue => {
    if (depth > MAX_NESTING) bad(`nesting deeper than ${MAX_NESTING} levels`);
    skipSpace();
    if (pos >= text.length) bad('unexpected end');
    const char = text[pos];
    if (char === "'" || char === '"') return parseString();
    if (char === '(') {
      pos++;
      const { items, trailingComma } = parseSequence(')', depth);
      // As in Python, parentheses around one value without a comma are just grouping: (3) is 3.
      if (items.length === 1 && !trailingComma) return items[0];
      return { kind: 'tuple', items };
    }
    if (char === '[') {
      pos++;
      return { kind: 'list', items: parseSequence(']', depth).items };
    }
    if (char === '{') {
      pos++;
      const entries = new Map<string, PyValue>();
      skipSpace();
      while (text[pos] !== '}') {
        const keyStart = pos;
        const key = parseValue(depth + 1);
        if (key.kind !== 'str') {
          pos = keyStart;
          return bad(`dictionary keys must be strings, found ${pyRepr(key)}`);
        }
        if (entries.has(key.value)) {
          pos = keyStart;
          bad(`the key '${clip(key.value)}' appears twice`);
        }
        skipSpace();
        if (text[pos] !== ':') bad("expected ':'");
        pos++;
        entries.set(key.value, parseValue(depth + 1));
        skipSpace();
        if (text[pos] === ',') {
          pos++;
          skipSpace();
        } else if (text[pos] !== '}') {
          bad("expected ',' or '}'");
        }
      }
      pos++;
      return { kind: 'dict', entries };
    }
    const word = /^(?:-?[0-9]+L?|True|False|None)/.exec(text.slice(pos, pos + 64));
    if (word === null) return bad(`unexpected ${JSON.stringify(char)}`);
    const token = word[0];
    // A number or name must end here: "3x" or "Truex" is not a literal.
    if (/[A-Za-z0-9_.]/.test(text[pos + token.length] ?? '')) bad(`unexpected ${JSON.stringify(text[pos + token.length])}`);
    pos += token.length;
    if (token === 'True' || token === 'False') return { kind: 'bool', value: token === 'True' };
    if (token === 'None') return { kind: 'none' };
    // Python 2 era writers put a long suffix on shape entries ("3L"); numpy still reads those.
    return { kind: 'int', value: BigInt(token.replace(/L$/, '')) };
  };

  const value = parseValue(0);
  skipSpace();
  if (pos !== text.length) bad('unexpected text after the literal');
  return value;
}

// ---------------------------------------------------------------------------------------
// Decoding

function describeHeaderValue(value: PyValue): string {
  return clip(pyRepr(value));
}

/**
 * Decodes .npy bytes. `source` names the file in error messages.
 * @throws NpyFileError if the bytes are not a valid float32/float64 C-order .npy file.
 */
export function decodeNpy(bytes: Uint8Array, source: string = DEFAULT_SOURCE): NpyArray {
  if (Object.prototype.toString.call(bytes) !== '[object Uint8Array]') {
    throw invalidType('bytes', 'a Uint8Array (or Buffer) holding .npy file contents', bytes);
  }
  const fail: (problem: string) => never = (problem) => {
    throw new NpyFileError(source, problem);
  };
  if (bytes.length < PREAMBLE_BYTES || MAGIC.some((byte, i) => bytes[i] !== byte)) {
    fail(
      bytes.length < PREAMBLE_BYTES && MAGIC.slice(0, bytes.length).every((byte, i) => bytes[i] === byte)
        ? `truncated: ${bytes.length} bytes, shorter than the ${PREAMBLE_BYTES}-byte .npy preamble`
        : 'not a .npy file (it does not start with the magic string \\x93NUMPY)',
    );
  }
  const major = bytes[6];
  const minor = bytes[7];
  if (!((major === 1 || major === 2 || major === 3) && minor === 0)) {
    fail(`unsupported .npy format version ${major}.${minor} (supported: 1.0, 2.0, 3.0)`);
  }
  const lengthBytes = major === 1 ? 2 : 4;
  const headerStart = PREAMBLE_BYTES + lengthBytes;
  if (bytes.length < headerStart) fail(`truncated: the file ends inside the header length (${bytes.length} bytes)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = major === 1 ? view.getUint16(PREAMBLE_BYTES, true) : view.getUint32(PREAMBLE_BYTES, true);
  const dataStart = headerStart + headerLength;
  if (dataStart > bytes.length) {
    fail(`truncated: the header is ${headerLength} bytes long but the file ends after ${bytes.length - headerStart} of them`);
  }

  const headerBytes = bytes.subarray(headerStart, dataStart);
  let headerText = '';
  if (major === 3) {
    try {
      headerText = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
    } catch {
      fail('the header is not valid UTF-8');
    }
  } else {
    headerText = Buffer.from(headerBytes.buffer, headerBytes.byteOffset, headerBytes.byteLength).toString('latin1');
  }
  const header = parsePythonLiteral(headerText, fail);
  if (header.kind !== 'dict') return fail(`the header is not a dictionary: ${describeHeaderValue(header)}`);
  const entries = header.entries;
  const keys = [...entries.keys()].sort();
  if (keys.join('\0') !== 'descr\0fortran_order\0shape') {
    fail(`the header must have exactly the keys 'descr', 'fortran_order', 'shape'; it has ${keys.map((k) => `'${clip(k, 40)}'`).join(', ') || 'none'}`);
  }

  const descr = entries.get('descr')!;
  const fortranOrder = entries.get('fortran_order')!;
  const shapeValue = entries.get('shape')!;

  if (shapeValue.kind !== 'tuple') return fail(`shape must be a tuple of integers, got ${describeHeaderValue(shapeValue)}`);
  const dims = shapeValue.items.map((item) =>
    item.kind === 'int' ? item.value : fail(`shape must be a tuple of integers, got ${describeHeaderValue(shapeValue)}`),
  );
  if (dims.some((dim) => dim < 0n)) fail(`shape ${describeHeaderValue(shapeValue)} has a negative dimension`);
  // Even an empty array (a zero dimension) must have a shape JavaScript numbers hold exactly.
  if (dims.some((dim) => dim > BigInt(Number.MAX_SAFE_INTEGER))) {
    fail(`shape ${describeHeaderValue(shapeValue)} has a dimension above 2^53 - 1`);
  }
  if (fortranOrder.kind !== 'bool') return fail(`fortran_order must be True or False, got ${describeHeaderValue(fortranOrder)}`);
  if (descr.kind !== 'str') {
    return fail(
      descr.kind === 'list'
        ? `structured dtype ${describeHeaderValue(descr)} is not supported (iaflow reads float32 and float64 arrays)`
        : `descr must be a dtype string such as '<f4', got ${describeHeaderValue(descr)}`,
    );
  }
  const descrText = descr.value;
  const info = Object.prototype.hasOwnProperty.call(DESCRS, descrText) ? DESCRS[descrText] : undefined;
  if (info === undefined) {
    return fail(
      `unsupported dtype '${clip(descrText, 40)}' (iaflow reads float32 '<f4' and float64 '<f8', either byte order); ` +
        `convert it first, e.g. with numpy's arr.astype(np.float32)`,
    );
  }
  const { elementSize, littleEndian, name } = info;
  if (fortranOrder.value) {
    fail(
      'fortran_order is True (column-major data), which iaflow does not read; ' +
        'save a C-order array instead, e.g. np.save(path, np.ascontiguousarray(arr))',
    );
  }

  // BigInt arithmetic: a hostile shape cannot overflow into a small, plausible count.
  const count = dims.reduce((product, dim) => product * dim, 1n);
  const expectedBytes = count * BigInt(elementSize);
  const actualBytes = BigInt(bytes.length - dataStart);
  const shapeText = `(${dims.join(', ')}${dims.length === 1 ? ',' : ''})`;
  if (actualBytes < expectedBytes) {
    fail(`truncated: shape ${clip(shapeText)} of ${name} needs ${expectedBytes} bytes of data, the file holds ${actualBytes}`);
  }
  if (actualBytes > expectedBytes) {
    fail(`${actualBytes - expectedBytes} unexpected bytes after the data (shape ${clip(shapeText)} of ${name} needs ${expectedBytes} bytes)`);
  }

  // A fresh buffer at offset 0 is aligned for either element size.
  const copy = new Uint8Array(Number(expectedBytes));
  copy.set(bytes.subarray(dataStart));
  if (littleEndian !== HOST_IS_LITTLE_ENDIAN) swapByteOrder(copy, elementSize);
  const data = elementSize === 4 ? new Float32Array(copy.buffer) : new Float64Array(copy.buffer);
  return { data, shape: dims.map(Number) };
}

function swapByteOrder(bytes: Uint8Array, elementSize: number): void {
  for (let start = 0; start + elementSize <= bytes.length; start += elementSize) {
    for (let low = start, high = start + elementSize - 1; low < high; low++, high--) {
      const byte = bytes[low];
      bytes[low] = bytes[high];
      bytes[high] = byte;
    }
  }
}

/**
 * Reads a .npy file holding a float32 or float64 array in C order.
 * @throws NpyFileError naming `path` if it cannot be read or is not such a file.
 */
export async function readNpy(path: string): Promise<NpyArray> {
  if (typeof path !== 'string' || path.length === 0) throw invalidType('path', 'a file path string', path);
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (error) {
    // Not `instanceof Error`: errors may come from another realm (a vm context, a test runner).
    const message = (error as { message?: unknown } | null)?.message;
    const reason = typeof message === 'string' ? message : String(error);
    throw new NpyFileError(path, `cannot read the file (${reason})`, { cause: error });
  }
  return decodeNpy(bytes, path);
}

// ---------------------------------------------------------------------------------------
// Encoding

function checkShape(data: Float32Array | Float64Array, shape: unknown): number[] {
  if (shape === undefined) return [data.length];
  const expected = `an array of non-negative integers whose product is data.length (${data.length})`;
  if (!Array.isArray(shape)) throw invalidType('shape', expected, shape);
  shape.forEach((dim: unknown, axis) => {
    if (typeof dim !== 'number' || !Number.isSafeInteger(dim) || dim < 0) throw invalidRange(`shape[${axis}]`, 'a non-negative integer', dim);
  });
  const count = (shape as number[]).reduce((product, dim) => product * dim, 1);
  if (count !== data.length) {
    throw new RangeError(`Expected ${expected} for shape but received [${shape.join(', ')}] (${count} elements)`);
  }
  return [...(shape as number[])];
}

/** The header numpy writes for this array, byte for byte (numpy.lib.format._write_array_header). */
function encodeHeader(descr: string, shape: readonly number[]): Buffer {
  const shapeRepr = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  let dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shapeRepr}, }`;
  if (shape.length > 0) dict += ' '.repeat(Math.max(0, GROWTH_AXIS_MAX_DIGITS - String(shape[0]).length));
  const text = Buffer.from(dict, 'latin1');
  for (const major of [1, 2]) {
    const lengthBytes = major === 1 ? 2 : 4;
    const used = PREAMBLE_BYTES + lengthBytes + text.length + 1; // + the final newline
    const padding = ARRAY_ALIGN - (used % ARRAY_ALIGN); // as numpy: a full 64 when already aligned
    const headerLength = text.length + padding + 1;
    if (major === 1 && headerLength > 0xffff) continue;
    const out = Buffer.alloc(PREAMBLE_BYTES + lengthBytes + headerLength, 0x20 /* space */);
    MAGIC.forEach((byte, i) => (out[i] = byte));
    out[6] = major;
    out[7] = 0;
    if (major === 1) out.writeUInt16LE(headerLength, PREAMBLE_BYTES);
    else out.writeUInt32LE(headerLength, PREAMBLE_BYTES);
    text.copy(out, PREAMBLE_BYTES + lengthBytes);
    out[out.length - 1] = 0x0a; // \n
    return out;
  }
  throw new RangeError(`shape [${shape.join(', ')}] makes a .npy header longer than 4 GiB`);
}

/**
 * The header of a float32 (`<f4`, C order) .npy file of the given shape: the bytes `encodeNpy`
 * puts before the values. For writing a big array in pieces (a streamed HTTP response): the
 * header, then the values as little-endian float32, make the file encodeNpy would make.
 */
export function encodeNpyHeaderFloat32(shape: readonly number[]): Buffer {
  if (!Array.isArray(shape)) throw invalidType('shape', 'an array of non-negative integers', shape);
  shape.forEach((dim: unknown, axis) => {
    if (typeof dim !== 'number' || !Number.isSafeInteger(dim) || dim < 0) throw invalidRange(`shape[${axis}]`, 'a non-negative integer', dim);
  });
  return encodeHeader('<f4', shape);
}

/**
 * The bytes of a .npy file holding `data` (C order) with the given shape (default: 1-d,
 * `[data.length]`): the bytes numpy.save writes for the same array. Float32Array data is
 * stored as `<f4`, Float64Array as `<f8`.
 * @throws TypeError / RangeError if data is not a Float32Array/Float64Array or the shape does
 * not match its length.
 */
export function encodeNpy(data: Float32Array | Float64Array, shape?: readonly number[]): Buffer {
  const is32 = isFloat32Array(data);
  if (!is32 && !isFloat64Array(data)) throw invalidType('data', 'a Float32Array or Float64Array', data);
  const dims = checkShape(data, shape);
  const header = encodeHeader(is32 ? '<f4' : '<f8', dims);
  const out = Buffer.alloc(header.length + data.byteLength);
  header.copy(out, 0);
  const body = out.subarray(header.length);
  body.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  if (!HOST_IS_LITTLE_ENDIAN) swapByteOrder(body, is32 ? 4 : 8);
  return out;
}

/**
 * Writes `data` (C order, shape default `[data.length]`) to a .npy file that numpy.load
 * reads, atomically: a failed write leaves any previous file intact.
 * `writeNpy('samples.npy', await flow.sample(n), [n, flow.dim])`.
 */
export async function writeNpy(path: string, data: Float32Array | Float64Array, shape?: readonly number[]): Promise<void> {
  if (typeof path !== 'string' || path.length === 0) throw invalidType('path', 'a file path string', path);
  await writeFileAtomic(path, encodeNpy(data, shape));
}
