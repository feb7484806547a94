import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import { __testing, checkSafetensorsHeader, decodeSafetensors, encodeSafetensors, readSafetensors, scanJson, writeFileAtomic } from '../src/safetensors';
import type { DType, ReadLimits, SafetensorsFile, Tensor } from '../src/safetensors';

// ---------------------------------------------------------------------------------------
// Helpers

const ELEMENT_SIZE: Record<DType, number> = { F32: 4, F64: 8, I64: 8, I32: 4, BOOL: 1, U8: 1 };

/** The raw bytes behind a typed array, for bit-exact comparisons (toEqual would treat NaNs alike). */
function bytesOf(data: Tensor['data']): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function f32FromBits(bits: number[]): Float32Array {
  return new Float32Array(new Uint32Array(bits).buffer);
}

function f64FromBits(bits: bigint[]): Float64Array {
  return new Float64Array(new BigUint64Array(bits).buffer);
}

/** Assembles a file byte by byte, as any other writer could: no padding, any header length. */
function buildFile(headerText: string | Uint8Array, data: Uint8Array = new Uint8Array(0), declaredLength?: bigint): Uint8Array {
  const header = typeof headerText === 'string' ? Buffer.from(headerText, 'utf8') : headerText;
  const out = new Uint8Array(8 + header.length + data.length);
  new DataView(out.buffer).setBigUint64(0, declaredLength ?? BigInt(header.length), true);
  out.set(header, 8);
  out.set(data, 8 + header.length);
  return out;
}

function headerOf(file: Uint8Array): { length: number; json: Record<string, { data_offsets: [number, number] }> } {
  const length = Number(new DataView(file.buffer, file.byteOffset).getBigUint64(0, true));
  const json = JSON.parse(Buffer.from(file.subarray(8, 8 + length)).toString('utf8')) as Record<
    string,
    { data_offsets: [number, number] }
  >;
  return { length, json };
}

function product(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function arrayTag(value: unknown): string {
  return Object.prototype.toString.call(value);
}

const EXPECTED_TAG: Record<DType, string> = {
  F32: '[object Float32Array]',
  F64: '[object Float64Array]',
  I64: '[object BigInt64Array]',
  I32: '[object Int32Array]',
  BOOL: '[object Uint8Array]',
  U8: '[object Uint8Array]',
};

/** The invariants every successful decode must satisfy, whatever the input was; returns the
 * first violation. (Plain checks rather than expect() so the fuzz loop stays fast.) */
function structuralProblem(file: SafetensorsFile): string | undefined {
  for (const [name, tensor] of file.tensors) {
    const where = `tensor ${JSON.stringify(name)}`;
    if (typeof name !== 'string' || name.length === 0) return `${where}: bad name`;
    if (!(tensor.dtype in ELEMENT_SIZE)) return `${where}: unknown dtype ${tensor.dtype}`;
    if (!Array.isArray(tensor.shape) || !tensor.shape.every((dim) => Number.isSafeInteger(dim) && dim >= 0)) {
      return `${where}: bad shape ${JSON.stringify(tensor.shape)}`;
    }
    if (tensor.data.length !== product(tensor.shape)) return `${where}: ${tensor.data.length} elements for shape [${tensor.shape}]`;
    if (arrayTag(tensor.data) !== EXPECTED_TAG[tensor.dtype]) return `${where}: ${arrayTag(tensor.data)} for ${tensor.dtype}`;
    if (tensor.data.byteOffset % ELEMENT_SIZE[tensor.dtype] !== 0) return `${where}: unaligned data`;
  }
  for (const [key, value] of Object.entries(file.metadata)) {
    if (typeof value !== 'string') return `metadata ${JSON.stringify(key)} is not a string`;
  }
  return undefined;
}

function expectStructurallyValid(file: SafetensorsFile): void {
  expect(structuralProblem(file)).toBeUndefined();
}

// A tiny deterministic PRNG (mulberry32) so fuzz failures reproduce.
function makeRng(seed: number): { next: () => number; int: (n: number) => number; pick: <T>(items: readonly T[]) => T } {
  let state = seed >>> 0;
  const next = (): number => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number): number => Math.floor(next() * n);
  return { next, int, pick: (items) => items[int(items.length)] };
}

function sampleTensors(): Record<string, Tensor> {
  return {
    // Quiet and signalling NaNs with payloads, -0, infinities and a subnormal must survive.
    'flow.0.weight': {
      dtype: 'F32',
      shape: [2, 4],
      data: f32FromBits([0x7fc00001, 0xffbfffff, 0x7f800001, 0x80000000, 0x7f800000, 0xff800000, 0x00000001, 0x3f800000]),
    },
    'flow.0.bias': { dtype: 'F32', shape: [3], data: new Float32Array([0.1, -2.5, 1e-30]) },
    scalar: { dtype: 'F32', shape: [], data: new Float32Array([Math.PI]) },
    empty: { dtype: 'F32', shape: [0, 3], data: new Float32Array(0) },
    'double.a': { dtype: 'F64', shape: [3], data: f64FromBits([0x7ff0000000000001n, 0x8000000000000000n, 0x3ff0000000000000n]) },
    'double.b': { dtype: 'F64', shape: [1, 1], data: new Float64Array([-1e300]) },
    order: { dtype: 'I64', shape: [4], data: new BigInt64Array([-(2n ** 63n), 2n ** 63n - 1n, 0n, -1n]) },
    'order.2': { dtype: 'I64', shape: [2], data: new BigInt64Array([1n, 0n]) },
    ints: { dtype: 'I32', shape: [3], data: new Int32Array([-(2 ** 31), 2 ** 31 - 1, 7]) },
    'ints.odd': { dtype: 'I32', shape: [1], data: new Int32Array([42]) },
    mask: { dtype: 'BOOL', shape: [3], data: new Uint8Array([1, 0, 1]) },
    'mask.b': { dtype: 'BOOL', shape: [1, 1], data: new Uint8Array([0]) },
    bytes: { dtype: 'U8', shape: [2, 3], data: new Uint8Array([0, 1, 127, 128, 254, 255]) },
    // Names that are awkward for JSON objects and naive header scanners.
    '10': { dtype: 'U8', shape: [1], data: new Uint8Array([10]) },
    '2': { dtype: 'U8', shape: [1], data: new Uint8Array([2]) },
    __proto__x: { dtype: 'U8', shape: [1], data: new Uint8Array([3]) },
    'weird "name", {with} [brackets]: \\ ok': { dtype: 'U8', shape: [1], data: new Uint8Array([4]) },
    'ünïcödé.𝑤': { dtype: 'F32', shape: [1], data: new Float32Array([5]) },
  };
}

const SAMPLE_METADATA = { format: 'pt', library: 'iaflow', note: 'ünïcode, "quotes" and {braces}', __proto__x: 'x' };

// ---------------------------------------------------------------------------------------

describe('encodeSafetensors / decodeSafetensors', () => {
  test('round trip of every dtype with metadata is bit-exact', () => {
    const tensors = sampleTensors();
    const file = encodeSafetensors(tensors, SAMPLE_METADATA);
    const decoded = decodeSafetensors(file, 'roundtrip.safetensors');

    expect(decoded.metadata).toEqual(SAMPLE_METADATA);
    expect([...decoded.tensors.keys()].sort()).toEqual(Object.keys(tensors).sort());
    for (const [name, original] of Object.entries(tensors)) {
      const copy = decoded.tensors.get(name);
      expect(copy).toBeDefined();
      if (copy === undefined) continue;
      expect(copy.dtype).toBe(original.dtype);
      expect(copy.shape).toEqual(original.shape);
      expect(arrayTag(copy.data)).toBe(arrayTag(original.data));
      expect(Buffer.from(bytesOf(copy.data)).equals(Buffer.from(bytesOf(original.data)))).toBe(true);
    }
    expectStructurallyValid(decoded);
    // -0 and the NaN payloads, checked explicitly.
    const weight = decoded.tensors.get('flow.0.weight')?.data as Float32Array;
    expect(Object.is(weight[3], -0)).toBe(true);
    expect(Array.from(new Uint32Array(weight.buffer, 0, 3))).toEqual([0x7fc00001, 0xffbfffff, 0x7f800001]);
  });

  test('layout: padded header, aligned and contiguous data, deterministic bytes', () => {
    const tensors = sampleTensors();
    const file = encodeSafetensors(tensors, SAMPLE_METADATA);
    const { length, json } = headerOf(file);

    expect(length % 8).toBe(0);
    expect((8 + length) % 8).toBe(0);
    // The padding is spaces, as the reference writer uses.
    const rawHeader = Buffer.from(file.subarray(8, 8 + length)).toString('utf8');
    expect(rawHeader).toMatch(/^\{.*\} *$/s);

    // Metadata first, then tensor names in code-unit order (read from the raw text, since
    // JSON.parse would move integer-like keys such as "2" and "10" to the front).
    expect(rawHeader.startsWith('{"__metadata__":')).toBe(true);
    const namesInHeader = Object.keys(tensors).sort((a, b) => rawHeader.indexOf(`${JSON.stringify(a)}:{"dtype"`) - rawHeader.indexOf(`${JSON.stringify(b)}:{"dtype"`));
    expect(namesInHeader).toEqual(Object.keys(tensors).sort());

    // Contiguous with no gaps or trailing bytes (Python's reader requires that), and every
    // tensor starts at a multiple of its element size.
    const ranges = Object.entries(tensors)
      .map(([name, tensor]) => ({ tensor, range: json[name].data_offsets }))
      .sort((a, b) => a.range[0] - b.range[0] || a.range[1] - b.range[1]);
    let cursor = 0;
    for (const { tensor, range } of ranges) {
      expect(range[0]).toBe(cursor);
      expect(range[0] % ELEMENT_SIZE[tensor.dtype]).toBe(0);
      cursor = range[1];
    }
    expect(8 + length + cursor).toBe(file.length);

    // A Map input and a second call give identical bytes.
    expect(encodeSafetensors(new Map(Object.entries(tensors)), SAMPLE_METADATA).equals(file)).toBe(true);
  });

  test('empty file and file without metadata', () => {
    const empty = encodeSafetensors({});
    expect(Array.from(empty)).toEqual([8, 0, 0, 0, 0, 0, 0, 0, 0x7b, 0x7d, 32, 32, 32, 32, 32, 32]);
    expect(decodeSafetensors(empty).tensors.size).toBe(0);
    const decoded = decodeSafetensors(encodeSafetensors({ a: { dtype: 'F32', shape: [1], data: new Float32Array([1]) } }));
    expect(decoded.metadata).toEqual({});
  });

  test('decoded arrays are fresh copies, not views of the input', () => {
    const file = encodeSafetensors({ w: { dtype: 'F32', shape: [2], data: new Float32Array([1, 2]) } });
    const decoded = decodeSafetensors(file).tensors.get('w')?.data as Float32Array;
    file.fill(0xff, file.length - 8);
    expect(Array.from(decoded)).toEqual([1, 2]);
    expect(decoded.buffer).not.toBe(file.buffer);
  });

  test('encoder rejects inconsistent tensors', () => {
    expect(() => encodeSafetensors({ w: { dtype: 'F32', shape: [3], data: new Float32Array(2) } })).toThrow(/shape \[3\] has 3 elements but data has 2/);
    expect(() => encodeSafetensors({ w: { dtype: 'F32', shape: [2], data: new Float64Array(2) } })).toThrow(/F32 needs data as Float32Array, got Float64Array/);
    expect(() => encodeSafetensors({ '': { dtype: 'F32', shape: [0], data: new Float32Array(0) } })).toThrow(/non-empty/);
    expect(() => encodeSafetensors({ __metadata__: { dtype: 'U8', shape: [0], data: new Uint8Array(0) } })).toThrow(/reserved/);
    expect(() => encodeSafetensors({ m: { dtype: 'BOOL', shape: [1], data: new Uint8Array([2]) } })).toThrow(/only 0 and 1/);
    expect(() => encodeSafetensors({ w: { dtype: 'F32', shape: [-1], data: new Float32Array(0) } })).toThrow(/non-negative safe integers/);
  });

  test('decodes a hand-built file as another writer would produce it (unsorted, unpadded, unaligned)', () => {
    // Python-style header: insertion order, no padding; odd lengths put the data section and
    // the F32/I64/F64 tensors at unaligned file offsets.
    const header =
      '{"z.mask":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]},' +
      '"b.weight":{"dtype":"F32","shape":[2],"data_offsets":[3,11]},' +
      '"a.order":{"dtype":"I64","shape":[1],"data_offsets":[11,19]},' +
      '"c.double":{"dtype":"F64","shape":[1],"data_offsets":[19,27]},' +
      '"d.ints":{"dtype":"I32","shape":[1],"data_offsets":[27,31]},' +
      '"__metadata__":{"format":"pt"}}';
    expect((8 + Buffer.byteLength(header)) % 8).not.toBe(0);
    const data = new Uint8Array(31);
    const view = new DataView(data.buffer);
    data.set([1, 0, 1], 0);
    view.setFloat32(3, 1.5, true);
    view.setFloat32(7, -0.25, true);
    view.setBigInt64(11, -123456789012345n, true);
    view.setFloat64(19, Math.E, true);
    view.setInt32(27, -7, true);

    const decoded = decodeSafetensors(buildFile(header, data), 'python.safetensors');
    expect(decoded.metadata).toEqual({ format: 'pt' });
    expect(Array.from(decoded.tensors.get('z.mask')?.data as Uint8Array)).toEqual([1, 0, 1]);
    expect(Array.from(decoded.tensors.get('b.weight')?.data as Float32Array)).toEqual([1.5, -0.25]);
    expect(Array.from(decoded.tensors.get('a.order')?.data as BigInt64Array)).toEqual([-123456789012345n]);
    expect(Array.from(decoded.tensors.get('c.double')?.data as Float64Array)).toEqual([Math.E]);
    expect(Array.from(decoded.tensors.get('d.ints')?.data as Int32Array)).toEqual([-7]);
    expectStructurallyValid(decoded);
  });

  test('accepts what the format allows: gaps, trailing bytes, empty tensors, an empty header object', () => {
    const header =
      '{"a":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},' +
      '"f":{"dtype":"F32","shape":[5,0],"data_offsets":[0,0]}}';
    const decoded = decodeSafetensors(buildFile(header, new Uint8Array([9, 9, 9, 9, 7, 8, 9, 9])));
    expect(Array.from(decoded.tensors.get('a')?.data as Uint8Array)).toEqual([7, 8]);
    expect(decoded.tensors.get('e')?.data.length).toBe(0);
    expect(decoded.tensors.get('f')?.shape).toEqual([5, 0]);
    expect(decodeSafetensors(buildFile('{}')).tensors.size).toBe(0);
  });

  test('a "__proto__" metadata key is kept as data and does not change the prototype', () => {
    const decoded = decodeSafetensors(buildFile('{"__metadata__":{"__proto__":"x","a":"b"}}'));
    expect(Object.getPrototypeOf(decoded.metadata)).toBe(Object.prototype);
    expect(Object.keys(decoded.metadata).sort()).toEqual(['__proto__', 'a']);
  });
});

// ---------------------------------------------------------------------------------------

// Copies of ../shared/fixtures/torch (made with PyTorch; see its README) live in the repository,
// so a clean clone tests against them without the shared folder.
function findFixtureDir(): string {
  return resolve(__dirname, 'fixtures/torch');
}

describe('reading files written by PyTorch', () => {
  test('zuko-maf-d3.safetensors decodes to the tensors its JSON lists', async () => {
    const dir = findFixtureDir();
    const file = await readSafetensors(join(dir, 'zuko-maf-d3.safetensors'));
    const reference = JSON.parse(readFileSync(join(dir, 'zuko-maf-d3.json'), 'utf8')) as {
      state_dict: { name: string; dtype: string; shape: number[] }[];
    };
    const torchToSafetensors: Record<string, DType> = { float32: 'F32', int64: 'I64', bool: 'BOOL', float64: 'F64' };

    expect([...file.tensors.keys()].sort()).toEqual(reference.state_dict.map((entry) => entry.name).sort());
    for (const entry of reference.state_dict) {
      const tensor = file.tensors.get(entry.name);
      expect(tensor?.shape).toEqual(entry.shape);
      expect(tensor?.dtype).toBe(torchToSafetensors[entry.dtype]);
    }
    const dtypes = new Set([...file.tensors.values()].map((tensor) => tensor.dtype));
    expect(dtypes).toEqual(new Set(['F32', 'I64', 'BOOL']));
    expectStructurallyValid(file);

    expect(file.metadata.format).toBe('pt');
    expect(file.metadata.library).toBe('zuko');
    expect(file.metadata.seed_construct).toBe('101');

    // Values are sane: orders are permutations, masks are 0/1, weights are finite.
    const order = file.tensors.get('transform.transforms.0.order')?.data as BigInt64Array;
    expect(Array.from(order).map(Number).sort()).toEqual([0, 1, 2]);
    const weight = file.tensors.get('transform.transforms.0.hyper.0.weight')?.data as Float32Array;
    expect(weight.every(Number.isFinite)).toBe(true);

    // Our writer's output for the same tensors decodes to identical bytes.
    const again = decodeSafetensors(encodeSafetensors(file.tensors, file.metadata));
    for (const [name, tensor] of file.tensors) {
      expect(Buffer.from(bytesOf(again.tensors.get(name)?.data ?? new Uint8Array(1))).equals(Buffer.from(bytesOf(tensor.data)))).toBe(true);
    }
  });
});

// ---------------------------------------------------------------------------------------

const F32_ENTRY = '{"dtype":"F32","shape":[2],"data_offsets":[0,8]}';
const EIGHT_BYTES = new Uint8Array(8);

/** [what is wrong, the file, what the message must say after "bad.safetensors: "] */
const INVALID_FILES: [string, Uint8Array, RegExp][] = [
  ['file shorter than 8 bytes', new Uint8Array(5), /file is 5 bytes long; .*at least 8/],
  ['empty file', new Uint8Array(0), /file is 0 bytes long/],
  ['header length larger than the file', buildFile('{}', EIGHT_BYTES, 1000n), /header length 1000 is larger than the 10 bytes after the length field/],
  ['header length above the 100 MB bound', buildFile('{}', EIGHT_BYTES, 100_000_001n), /header length 100000001 exceeds the 100000000-byte limit/],
  ['header length 2^64 - 1', buildFile('{}', EIGHT_BYTES, 2n ** 64n - 1n), /header length 18446744073709551615 exceeds the 100000000-byte limit/],
  ['header length 0', buildFile('{}', EIGHT_BYTES, 0n), /header length is 0/],
  ['header not UTF-8', buildFile(new Uint8Array([0x7b, 0x22, 0xff, 0x22, 0x7d])), /header is not valid UTF-8/],
  ['header with a byte-order mark', buildFile('\ufeff{}'), /header is not valid JSON/],
  ['header not JSON', buildFile('{"w":'), /header is not valid JSON/],
  ['header an array', buildFile('[]'), /header must be a JSON object .*got an array/],
  ['header null', buildFile('null'), /header must be a JSON object .*got null/],
  ['header a number', buildFile('42'), /header must be a JSON object .*got number 42/],
  ['metadata not an object', buildFile('{"__metadata__":["a"]}'), /__metadata__ must be an object whose values are strings, got an array/],
  ['metadata value not a string', buildFile('{"__metadata__":{"seed":1}}'), /__metadata__\["seed"\] must be a string, got number 1/],
  ['empty tensor name', buildFile(`{"":${F32_ENTRY}}`, EIGHT_BYTES), /tensor names must be non-empty strings/],
  ['entry not an object', buildFile('{"w":[0,8]}', EIGHT_BYTES), /tensor "w": expected an object with dtype, shape and data_offsets, got an array/],
  ['entry missing shape', buildFile('{"w":{"dtype":"F32","data_offsets":[0,8]}}', EIGHT_BYTES), /tensor "w": missing "shape"/],
  ['entry with an extra key', buildFile('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"offsets":1}}', EIGHT_BYTES), /tensor "w": unexpected key "offsets" \(expected only dtype, shape, data_offsets\)/],
  ['dtype not a string', buildFile('{"w":{"dtype":4,"shape":[2],"data_offsets":[0,8]}}', EIGHT_BYTES), /tensor "w": dtype must be a string, got number 4/],
  ['unknown dtype', buildFile('{"w":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}}', EIGHT_BYTES), /tensor "w": unsupported dtype "F16" \(supported: F32, F64, I64, I32, BOOL, U8\)/],
  ['shape not an array', buildFile('{"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}}', EIGHT_BYTES), /tensor "w": shape must be an array of non-negative integers, got number 2/],
  ['negative dim', buildFile('{"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}', EIGHT_BYTES), /tensor "w": shape\[0\] must be a non-negative safe integer, got number -2/],
  ['fractional dim', buildFile('{"w":{"dtype":"F32","shape":[1,1.5],"data_offsets":[0,8]}}', EIGHT_BYTES), /tensor "w": shape\[1\] must be a non-negative safe integer, got number 1.5/],
  ['string dim', buildFile('{"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}}', EIGHT_BYTES), /tensor "w": shape\[0\] must be a non-negative safe integer, got the string "2"/],
  ['unsafe dim', buildFile('{"w":{"dtype":"F32","shape":[9007199254740993],"data_offsets":[0,8]}}', EIGHT_BYTES), /tensor "w": shape\[0\] must be a non-negative safe integer/],
  ['huge element count', buildFile('{"w":{"dtype":"F32","shape":[65536,65536,65536],"data_offsets":[0,8]}}', EIGHT_BYTES), /tensor "w": shape \[65536, 65536, 65536\] has more than 2\^32 elements/],
  ['data_offsets of one number', buildFile('{"w":{"dtype":"F32","shape":[2],"data_offsets":[8]}}', EIGHT_BYTES), /tensor "w": data_offsets must be an array \[begin, end\]/],
  ['negative offset', buildFile('{"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}}', EIGHT_BYTES), /tensor "w": data_offsets must be non-negative safe integers, got \[-8,0\]/],
  ['begin after end', buildFile('{"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}', EIGHT_BYTES), /tensor "w": data_offsets \[8, 0\] has begin > end/],
  ['size mismatch', buildFile('{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', EIGHT_BYTES), /tensor "w": data_offsets \[0, 8\] span 8 bytes, but dtype F32 with shape \[3\] needs 12 bytes/],
  ['range outside the data section', buildFile('{"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', EIGHT_BYTES), /tensor "w": data_offsets \[4, 12\] extend past the end of the 8-byte data section/],
  [
    'overlapping tensors',
    buildFile('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[4],"data_offsets":[6,10]}}', new Uint8Array(12)),
    /tensors "a" \[0, 8\] and "b" \[6, 10\] overlap/,
  ],
  ['duplicate tensor names', buildFile(`{"w":${F32_ENTRY},"w":${F32_ENTRY}}`, EIGHT_BYTES), /header names "w" more than once \(duplicate tensor name\)/],
  ['duplicate names spelled differently', buildFile(`{"w":${F32_ENTRY},"\\u0077":${F32_ENTRY}}`, EIGHT_BYTES), /header names "w" more than once/],
  ['duplicate __metadata__', buildFile('{"__metadata__":{},"__metadata__":{"a":"b"}}'), /header names "__metadata__" more than once/],
  ['duplicate key inside an entry', buildFile('{"w":{"dtype":"I32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}', EIGHT_BYTES), /header entry "w" has the key "dtype" more than once/],
  ['BOOL byte other than 0/1', buildFile('{"m":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}}', new Uint8Array([1, 2, 0])), /tensor "m": BOOL element 1 has byte value 2; expected 0 or 1/],
];

describe('validation', () => {
  test.each(INVALID_FILES)('%s', (_what, file, problem) => {
    const expected = new RegExp(`^bad\\.safetensors: ${problem.source}`);
    expect(() => decodeSafetensors(file, 'bad.safetensors')).toThrow(expected);
    let thrown: unknown;
    try {
      decodeSafetensors(file, 'bad.safetensors');
    } catch (error) {
      thrown = error;
    }
    expect((thrown as Error).name).toBe('ModelFileError');
  });

  test('names that contain JSON punctuation do not confuse the duplicate-key scan', () => {
    const header = `{"a\\",\\"a\\":{":${F32_ENTRY},"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}`;
    expect([...decodeSafetensors(buildFile(header, EIGHT_BYTES)).tensors.keys()].sort()).toEqual(['a', 'a","a":{']);
    expect(__testing.findDuplicateKey('{"x":{"a":1,"b":[{"a":2},{"a":3}]},"y":"x"}')).toBeUndefined();
    expect(__testing.findDuplicateKey('{"x":[{"a":1,"a":2}]}')).toEqual({ key: 'a', parentKey: 'x' });
  });

  test('the default source is named when none is given', () => {
    expect(() => decodeSafetensors(new Uint8Array(3))).toThrow(/^<safetensors bytes>: file is 3 bytes long/);
  });

  test('readSafetensors names the file for read and format errors', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'iaflow-st-'));
    try {
      const missing = join(dir, 'missing.safetensors');
      await expect(readSafetensors(missing)).rejects.toThrow(new RegExp(`^${escapeRegExp(missing)}: cannot read the file \\(.*ENOENT`));
      const truncated = join(dir, 'truncated.safetensors');
      writeFileSync(truncated, encodeSafetensors(sampleTensors()).subarray(0, 40));
      await expect(readSafetensors(truncated)).rejects.toThrow(new RegExp(`^${escapeRegExp(truncated)}: header length \\d+ is larger than`));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('byte swapping used on big-endian hosts reverses each element', () => {
    const bytes = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]);
    __testing.swapByteOrder(bytes, 4);
    expect(Array.from(bytes)).toEqual([4, 3, 2, 1, 8, 7, 6, 5]);
    __testing.swapByteOrder(bytes, 8);
    expect(Array.from(bytes)).toEqual([5, 6, 7, 8, 1, 2, 3, 4]);
  });
});

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

// ---------------------------------------------------------------------------------------

describe('fuzzing', () => {
  test('every mutation of a valid file decodes to a valid result or throws ModelFileError', () => {
    // A plain Uint8Array copy: Buffer#slice() would alias, letting mutations accumulate.
    const original = new Uint8Array(encodeSafetensors(sampleTensors(), SAMPLE_METADATA));
    const { length: headerLength } = headerOf(original);
    const headerText = Buffer.from(original.subarray(8, 8 + headerLength)).toString('utf8');
    const data = original.subarray(8 + headerLength);
    const rng = makeRng(0x1af10);

    const rewriteHeader = (edit: (text: string) => string): Uint8Array => buildFile(edit(headerText), data);
    const replaceRandomMatch = (text: string, pattern: RegExp, replacement: () => string): string => {
      const matches = [...text.matchAll(pattern)];
      if (matches.length === 0) return text;
      const match = rng.pick(matches);
      const at = match.index ?? 0;
      return text.slice(0, at) + replacement() + text.slice(at + match[0].length);
    };
    const hugeLengths = [2n ** 64n - 1n, 2n ** 63n, 2n ** 53n + 1n, 100_000_001n, 100_000_000n, BigInt(original.length), BigInt(headerLength + 1), 1n];
    const dtypes = ['F16', 'BF16', 'F32', 'F64', 'I64', 'I32', 'BOOL', 'U8', 'I8', '', 'f32', '"', '\\u0000'];
    const shapes = ['[65536,65536,65536]', '[4294967297]', '[-1]', '[1e300]', '[9007199254740993]', '[]', '[0]', '[2,"2"]', 'null', '{}', '[1.5]', '[3]', '[2,2]'];
    const offsets = () => rng.pick(['[0,0]', `[${rng.int(200)},${rng.int(200)}]`, '[-1,4]', '[0]', '[1e400,0]', '[0,18446744073709551616]', '"x"']);

    const mutations: ((file: Uint8Array) => Uint8Array)[] = [
      (file) => file.slice(0, rng.int(file.length)), // truncation
      (file) => {
        const out = file.slice();
        const at = 8 + rng.int(headerLength);
        out[at] ^= 1 << rng.int(8); // bit flip in the header
        return out;
      },
      (file) => {
        const out = file.slice();
        const at = 8 + headerLength + rng.int(data.length);
        out[at] ^= 1 << rng.int(8); // bit flip in the data (BOOL bytes may become invalid)
        return out;
      },
      (file) => {
        const out = file.slice();
        out[rng.int(8)] ^= 1 << rng.int(8); // bit flip in the length field
        return out;
      },
      (file) => {
        const out = file.slice();
        if (out.length >= 8) new DataView(out.buffer).setBigUint64(0, rng.pick(hugeLengths), true); // may follow a truncation
        return out;
      },
      (file) => {
        const out = file.slice();
        if (out.length >= 8) new DataView(out.buffer).setBigUint64(0, 0n, true); // may follow a truncation
        return out;
      },
      () => rewriteHeader((text) => replaceRandomMatch(text, /"dtype":"[A-Z0-9]+"/g, () => `"dtype":"${rng.pick(dtypes)}"`)),
      () => rewriteHeader((text) => replaceRandomMatch(text, /"shape":\[[^\]]*\]/g, () => `"shape":${rng.pick(shapes)}`)),
      () => rewriteHeader((text) => replaceRandomMatch(text, /"data_offsets":\[[^\]]*\]/g, () => `"data_offsets":${offsets()}`)),
      () =>
        rewriteHeader((text) => {
          // Duplicate one existing entry (tensor or metadata) at the front of the object.
          const match = rng.pick([...text.matchAll(/"[^"]+":\{[^{}]*\}/g)]);
          return `{${match[0]},${text.slice(1)}`;
        }),
      () => rewriteHeader((text) => replaceRandomMatch(text, /"[a-z_]+":/g, () => rng.pick(['"":', '"dtype":', '"w":', '"__metadata__":', '"\\ud800":']))),
      (file) => {
        // NaN weights with random payloads: still a valid file.
        const out = file.slice();
        const view = new DataView(out.buffer);
        for (let k = 0; k < 4; k++) {
          const at = 8 + headerLength + 4 * rng.int(Math.floor(data.length / 4));
          if (at + 4 <= out.length) view.setUint32(at, 0x7f800001 + rng.int(0x7fffff), true);
        }
        return out;
      },
      (file) => {
        // Random garbage spliced into the header.
        const out = file.slice();
        const at = 8 + rng.int(headerLength);
        for (let k = 0; k < 1 + rng.int(6); k++) if (at + k < 8 + headerLength) out[at + k] = rng.int(256);
        return out;
      },
    ];

    const deadline = Date.now() + 2000;
    let runs = 0;
    let accepted = 0;
    let rejected = 0;
    for (; runs < 2000 && Date.now() < deadline; runs++) {
      // Usually one mutation, sometimes a few stacked.
      let file: Uint8Array = original;
      const count = rng.next() < 0.8 ? 1 : 2 + rng.int(3);
      for (let k = 0; k < count; k++) file = rng.pick(mutations)(file);

      let result: SafetensorsFile | undefined;
      try {
        result = decodeSafetensors(file, 'fuzz.safetensors');
      } catch (error) {
        const ok = error instanceof Error && error.name === 'ModelFileError' && error.message.startsWith('fuzz.safetensors: ');
        if (!ok) throw new Error(`run ${runs}: decode threw something other than ModelFileError: ${String(error)}`);
        rejected++;
        continue;
      }
      const problem = structuralProblem(result);
      if (problem !== undefined) throw new Error(`run ${runs}: decode returned an invalid result: ${problem}`);
      accepted++;
    }
    expect(runs).toBeGreaterThanOrEqual(500);
    // Both outcomes occur, so the fuzzer exercises the decoder rather than only its first check.
    expect(accepted).toBeGreaterThan(50);
    expect(rejected).toBeGreaterThan(50);
  });
});

// ---------------------------------------------------------------------------------------

describe('writeFileAtomic', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'iaflow-atomic-'));
  });
  afterEach(() => {
    __testing.hooks.afterTempWrite = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  test('creates and then replaces the file, leaving nothing else behind', async () => {
    const target = join(dir, 'model.safetensors');
    await writeFileAtomic(target, Buffer.from('first'));
    expect(readFileSync(target, 'utf8')).toBe('first');
    const encoded = encodeSafetensors(sampleTensors());
    await writeFileAtomic(target, encoded);
    expect(readFileSync(target).equals(encoded)).toBe(true);
    expect(readdirSync(dir)).toEqual(['model.safetensors']);
    expect((await readSafetensors(target)).tensors.size).toBe(Object.keys(sampleTensors()).length);
  });

  if (process.platform !== 'win32') {
    test('keeps the permission bits of the file it replaces', async () => {
      const target = join(dir, 'private.safetensors');
      writeFileSync(target, 'old');
      chmodSync(target, 0o600);
      await writeFileAtomic(target, Buffer.from('new'));
      expect(statSync(target).mode & 0o777).toBe(0o600);
    });
  }

  test('a failure after the temp file is written keeps the old file and removes the temp file', async () => {
    const target = join(dir, 'model.safetensors');
    writeFileSync(target, 'previous contents');
    let sawTemp = false;
    __testing.hooks.afterTempWrite = (tempPath) => {
      // The new bytes really were on disk, next to the target, when the failure struck.
      expect(readFileSync(tempPath, 'utf8')).toBe('new contents');
      expect(tempPath.startsWith(dir)).toBe(true);
      sawTemp = true;
      throw new Error('simulated crash before rename');
    };
    await expect(writeFileAtomic(target, Buffer.from('new contents'))).rejects.toThrow(/simulated crash before rename/);
    expect(sawTemp).toBe(true);
    expect(readFileSync(target, 'utf8')).toBe('previous contents');
    expect(readdirSync(dir)).toEqual(['model.safetensors']);
  });

  test('data that fails half-way through writing keeps the old file and removes the temp file', async () => {
    const target = join(dir, 'model.safetensors');
    writeFileSync(target, 'previous contents');
    // An iterable that yields one chunk and then fails, like a source that errors mid-write.
    const failingSource = {
      *[Symbol.iterator](): Generator<Uint8Array> {
        yield Buffer.from('partial ');
        throw new Error('source failed half-way');
      },
    } as unknown as Uint8Array;
    await expect(writeFileAtomic(target, failingSource)).rejects.toThrow(/source failed half-way/);
    expect(readFileSync(target, 'utf8')).toBe('previous contents');
    expect(readdirSync(dir)).toEqual(['model.safetensors']);
  });

  test('a failing rename (target is a non-empty directory) removes the temp file', async () => {
    const target = join(dir, 'occupied');
    mkdirSync(target);
    writeFileSync(join(target, 'keep.txt'), 'keep');
    await expect(writeFileAtomic(target, Buffer.from('data'))).rejects.toThrow(/EISDIR|ENOTEMPTY|EEXIST|EPERM/);
    expect(readdirSync(dir)).toEqual(['occupied']);
    expect(readFileSync(join(target, 'keep.txt'), 'utf8')).toBe('keep');
  });

  test('a missing directory fails without creating anything', async () => {
    await expect(writeFileAtomic(join(dir, 'no', 'such', 'model.safetensors'), Buffer.from('x'))).rejects.toThrow(/ENOENT/);
    expect(readdirSync(dir)).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------
// Hostile headers, files and temp files (issue 11)

describe('scanJson (the pre-scan that bounds JSON before JSON.parse)', () => {
  const open = { maxDepth: Infinity, maxKeysPerObject: Infinity, maxTopLevelKeys: Infinity, maxContainers: Infinity, valuesBase: Infinity, valuesPerTopLevelKey: 0, bytesBase: Infinity, bytesPerTopLevelKey: 0 };
  const scan = (text: string, limits: Partial<typeof open>) => {
    const bytes = Buffer.from(text, 'utf8');
    return scanJson(bytes, 0, bytes.length, { ...open, ...limits, maxDepth: limits.maxDepth ?? 64 });
  };

  test('counts nesting, and nothing inside strings (escaped quotes and backslashes included)', () => {
    expect(scan('[[[1]]]', { maxDepth: 3 })).toBeUndefined();
    expect(scan('[[[[1]]]]', { maxDepth: 3 })).toMatchObject({ limit: 'depth', at: 3, bound: 3 });
    expect(scan('{"a\\"[[[[":"]]\\\\","b":"[[[["}', { maxDepth: 1 })).toBeUndefined();
    // After `"\\"` the string has ended: the brackets that follow are structure again.
    expect(scan('["\\\\",[[1]]]', { maxDepth: 2 })).toMatchObject({ limit: 'depth' });
  });

  test('counts keys per object, top-level keys, containers and values', () => {
    expect(scan('{"m":{"a":1,"b":2,"c":3}}', { maxKeysPerObject: 3 })).toBeUndefined();
    expect(scan('{"m":{"a":1,"b":2,"c":3,"d":4}}', { maxKeysPerObject: 3 })).toMatchObject({ limit: 'keys', topLevelKey: 'm' });
    // String values are not keys: only strings right after `{` or `,` in an object are.
    expect(scan('{"m":{"a":"x","b":["y","z"]}}', { maxKeysPerObject: 2 })).toBeUndefined();
    expect(scan('{"a":1,"b":2}', { maxTopLevelKeys: 1 })).toMatchObject({ limit: 'topLevelKeys', topLevelKeys: 2 });
    expect(scan('[[],[],[]]', { maxContainers: 3 })).toMatchObject({ limit: 'containers' });
    // 1 array + 3 numbers + 1 string + 2 literals = 7 values.
    expect(scan('[1,-2.5e3,0,"s",true,null]', { valuesBase: 7 })).toBeUndefined();
    expect(scan('[1,-2.5e3,0,"s",true,null]', { valuesBase: 6 })).toMatchObject({ limit: 'values' });
    // The values allowance grows with each top-level key.
    expect(scan('{"a":[1,2],"b":[3,4]}', { valuesBase: 1, valuesPerTopLevelKey: 3 })).toBeUndefined();
    expect(scan('{"a":[1,2,3],"b":[3]}', { valuesBase: 1, valuesPerTopLevelKey: 3 })).toMatchObject({ limit: 'values', topLevelKey: 'a' });
  });

  test('the byte allowance is checked as the scan goes, inside strings too', () => {
    const text = `{"a":"${'x'.repeat(1000)}"}`;
    expect(scan(text, { bytesBase: text.length })).toBeUndefined();
    expect(scan(text, { bytesBase: 100 })).toMatchObject({ limit: 'bytes', at: 100 });
    // Each top-level key pays for 5 more bytes once it is seen (it must fit in what came before).
    expect(scan('{"a":1,"b":2,"c":333}', { bytesBase: 6, bytesPerTopLevelKey: 5 })).toBeUndefined();
    expect(scan('{"a":1,"b":2,"c":3333}', { bytesBase: 6, bytesPerTopLevelKey: 5 })).toMatchObject({ limit: 'bytes', at: 21, topLevelKeys: 3 });
    expect(scan('{"a":1,"b":2,"cc":3}', { bytesBase: 6, bytesPerTopLevelKey: 5 })).toMatchObject({ limit: 'bytes', topLevelKeys: 2 });
  });

  test('malformed JSON ends the scan without a problem or an out-of-bounds read (JSON.parse refuses it later)', () => {
    for (const text of ['"unterminated', '{"a":"\\', ']]]]', '}{', '{"a" "b"}', '\\', '']) {
      expect(scan(text, {})).toBeUndefined();
    }
  });
});

describe('hostile headers are refused before JSON.parse, naming the limit', () => {
  const entry = '"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}';
  // The file is built before the returned function runs, so timing it times the decoder alone.
  const decode = (header: string | Buffer, data: Uint8Array = new Uint8Array(4), limits = {}) => {
    const file = buildFile(header, data);
    return () => decodeSafetensors(file, 'hostile.safetensors', limits);
  };
  const timed = (run: () => unknown) => {
    const start = performance.now();
    let message = '';
    try {
      run();
    } catch (error) {
      message = (error as Error).message;
    }
    return { message, ms: performance.now() - start };
  };

  test('nesting: 8 levels reach the per-field checks, 9 are refused by the pre-scan, 20 MB of it in milliseconds', () => {
    const nested = (depth: number) => `{"t":{"dtype":"F32","shape":${'['.repeat(depth - 2)}1${']'.repeat(depth - 2)},"data_offsets":[0,4]}}`;
    expect(decode(nested(8))).toThrow(/hostile\.safetensors: tensor "t": shape\[0\] must be a non-negative safe integer, got an array/);
    expect(decode(nested(9))).toThrow(/hostile\.safetensors: header nests deeper than 8 levels \(under "t"\)/);
    const deep = Buffer.alloc(20e6, '[');
    deep.write('{"__metadata__":{"a":');
    const { message, ms } = timed(decode(deep));
    expect(message).toMatch(/nests deeper than 8 levels \(under "__metadata__"\)/);
    expect(ms).toBeLessThan(2000);
  });

  test('keys: __metadata__ may hold 4096 keys, not 4097; 2M keys are refused in milliseconds', () => {
    const meta = (count: number) => `{"__metadata__":{${Array.from({ length: count }, (_, i) => `"k${i}":"v"`).join(',')}},${entry}}`;
    expect(Object.keys(decodeSafetensors(buildFile(meta(4096), new Uint8Array(4))).metadata)).toHaveLength(4096);
    expect(decode(meta(4097))).toThrow(/header entry "__metadata__" has more than 4096 keys/);
    const { message, ms } = timed(decode(meta(2e6)));
    expect(message).toMatch(/more than 4096 keys/);
    expect(ms).toBeLessThan(2000);
  });

  test('values: a huge shape (or a flood of empty arrays) is refused by the values allowance', () => {
    expect(decode(`{"t":{"dtype":"F32","shape":[${'1,'.repeat(5e6)}1],"data_offsets":[0,4]}}`)).toThrow(/more than 16400 JSON values in its first 1 entries \(limit: 16384 \+ 16 per entry\)/);
    expect(decode(`{"t":[${'[],'.repeat(1e6)}[]]}`)).toThrow(/JSON values/);
  });

  test('size: 12 MiB (4 MiB + room for the largest config) plus 256 bytes per entry plus the data section; a 98 MB header is refused after ~12 MiB', () => {
    const padded = (bytes: number) => `{"__metadata__":{"pad":"${'x'.repeat(bytes)}"},${entry}}`;
    expect(decodeSafetensors(buildFile(padded(12_500_000), new Uint8Array(4))).metadata.pad).toHaveLength(12_500_000);
    expect(decode(padded(12_700_000))).toThrow(/header of \d+ bytes passes its size limit at byte \d+, with 1 entries so far \(limit: 12582912 bytes \+ 256 per entry \+ the 4-byte data section\)/);
    // A bigger data section pays for a bigger header (a big flow's config grows with its weights).
    expect(decodeSafetensors(buildFile(padded(12_700_000), new Uint8Array(200_004))).metadata.pad).toHaveLength(12_700_000);
    const { message, ms } = timed(decode(padded(98e6)));
    expect(message).toMatch(/passes its size limit at byte 12583172/);
    expect(ms).toBeLessThan(2000);
  });

  test('tensor count: the caller limit is enforced before parsing', () => {
    const three = `{${['a', 'b', 'c'].map((name, i) => `"${name}":{"dtype":"U8","shape":[1],"data_offsets":[${i},${i + 1}]}`).join(',')}}`;
    expect(decodeSafetensors(buildFile(three, new Uint8Array(3)), 'x', { maxTensors: 3 }).tensors.size).toBe(3);
    // __metadata__ does not count as a tensor.
    expect(decode(`{"__metadata__":{},${three.slice(1)}`, new Uint8Array(3), { maxTensors: 3 })).not.toThrow();
    expect(decode(three, new Uint8Array(3), { maxTensors: 2 })).toThrow(/header has more than 2 tensor entries/);
  });

  test('messages quote names and shapes shortened', () => {
    const name = 'n'.repeat(100_000);
    const { message } = timed(decode(`{"${name}":{"dtype":"F32","shape":[${'2,'.repeat(1000)}0],"data_offsets":[0,4]}}`));
    expect(message).toMatch(/tensor "n{120}\.\.\. \(100000 characters\)": data_offsets \[0, 4\] span 4 bytes, but dtype F32 with shape \[2, 2, 2, 2, 2, 2, 2, 2, \.\.\. \(1001 dims\)\] needs 0 bytes/);
    expect(message.length).toBeLessThan(400);
  });

  test('saveFlow-sized headers pass: the check is a pure function of the bytes, shared by reader and writer', () => {
    const file = encodeSafetensors(sampleTensors(), SAMPLE_METADATA);
    expect(checkSafetensorsHeader(file)).toBe(headerOf(file).length);
    // A start of the file checks the same header against the whole file's size.
    expect(() => checkSafetensorsHeader(file.subarray(0, 20), 'x', {}, file.length)).not.toThrow();
  });
});

describe('readSafetensors reads only regular files of bounded size', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'iaflow-read-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const refusedQuickly = async (path: string, limits: ReadLimits, pattern: RegExp) => {
    const start = performance.now();
    await expect(readSafetensors(path, limits)).rejects.toThrow(pattern);
    expect(performance.now() - start).toBeLessThan(2000);
  };

  const hasDevZero = existsSync('/dev/zero');
  (hasDevZero ? test : test.skip)(`/dev/zero is refused at once, not read forever${hasDevZero ? '' : ' (skipped: no /dev/zero on this platform)'}`, async () => {
    await refusedQuickly('/dev/zero', {}, /^\/dev\/zero: is a character device; a model file must be a regular file$/);
  });

  const hasMkfifo = process.platform !== 'win32' && spawnSync('mkfifo', ['--version']).error === undefined;
  (hasMkfifo ? test : test.skip)(`a FIFO with no writer is refused at once, not waited on${hasMkfifo ? '' : ' (skipped: no mkfifo on this platform)'}`, async () => {
    const fifo = join(dir, 'pipe.safetensors');
    spawnSync('mkfifo', [fifo]);
    await refusedQuickly(fifo, {}, /pipe\.safetensors: is a FIFO \(named pipe\); a model file must be a regular file/);
  });

  test('a directory is refused', async () => {
    await refusedQuickly(dir, {}, /: is a directory; a model file must be a regular file|cannot read the file \(EISDIR/);
  });

  test('a file over the size limit is refused before it is read', async () => {
    const file = join(dir, 'big.safetensors');
    const bytes = encodeSafetensors(sampleTensors());
    writeFileSync(file, bytes);
    await expect(readSafetensors(file, { maxFileBytes: bytes.length })).resolves.toBeDefined();
    await refusedQuickly(file, { maxFileBytes: bytes.length - 1 }, new RegExp(`big\\.safetensors: file is ${bytes.length} bytes, more than the ${bytes.length - 1}-byte limit`));
  });

  test('a file whose header is hostile is refused after reading its start only', async () => {
    // 60 MB of nesting: refused by the early check of the first ~4 MiB.
    const file = join(dir, 'deep.safetensors');
    const header = Buffer.alloc(60e6, '[');
    header.write('{"__metadata__":{"a":');
    writeFileSync(file, buildFile(header));
    await refusedQuickly(file, {}, /nests deeper than 8 levels/);
  });
});

describe('writeFileAtomic: temp names, stale temp files, errors', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'iaflow-temp-'));
  });
  afterEach(() => {
    __testing.hooks.afterTempWrite = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  test('names of 250 and 255 bytes save (the temp name does not grow with the target name)', async () => {
    for (const length of [250, 255]) {
      const name = `${'m'.repeat(length - '.safetensors'.length)}.safetensors`;
      expect(Buffer.byteLength(name)).toBe(length);
      const target = join(dir, name);
      let tempName = '';
      __testing.hooks.afterTempWrite = (tempPath) => {
        tempName = tempPath.slice(dir.length + 1);
      };
      const bytes = encodeSafetensors(sampleTensors());
      await writeFileAtomic(target, bytes);
      expect(readFileSync(target).equals(bytes)).toBe(true);
      expect(Buffer.byteLength(tempName)).toBeLessThan(64);
      expect((await readSafetensors(target)).tensors.size).toBe(Object.keys(sampleTensors()).length);
    }
    expect(readdirSync(dir)).toHaveLength(2);
  });

  test('a save killed mid-write leaves a temp file that the next save of the same target removes', async () => {
    const target = join(dir, 'model.safetensors');
    writeFileSync(target, 'old');
    // A real save, SIGKILLed after writing its temp file and before renaming it.
    const child = join(dir, 'killed-save.ts');
    writeFileSync(
      child,
      `import { __testing, writeFileAtomic } from ${JSON.stringify(resolve(__dirname, '../src/safetensors'))};\n` +
        `__testing.hooks.afterTempWrite = () => { process.kill(process.pid, 'SIGKILL'); };\n` +
        `void writeFileAtomic(process.argv[2], Buffer.alloc(1 << 20, 7));\n`,
    );
    const run = spawnSync(process.execPath, ['--import', 'tsx', child, target], { cwd: resolve(__dirname, '..'), encoding: 'utf8' });
    expect(run.signal).toBe('SIGKILL');
    rmSync(child);
    const orphans = readdirSync(dir).filter((name) => name.startsWith('.iaflow-') && name.endsWith('.tmp'));
    expect(orphans).toHaveLength(1);
    expect(statSync(join(dir, orphans[0])).size).toBe(1 << 20);
    expect(readFileSync(target, 'utf8')).toBe('old');

    // The dead child's pid marks more stale temps; other files must survive the cleanup.
    const deadPid = run.pid as number;
    const staleMore = [1, 2, 3].map(() => __testing.tempPathFor(target, deadPid));
    const liveOwn = __testing.tempPathFor(target); // a save still running in this process
    const otherTarget = __testing.tempPathFor(join(dir, 'other.safetensors'), deadPid);
    const otherHost = __testing.tempPathFor(target, deadPid, __testing.HOST_TAG === 'ffff' ? 'eeee' : 'ffff');
    const userFiles = [join(dir, '.model.safetensors.tmp'), join(dir, '.iaflow-notes.tmp')];
    for (const path of [...staleMore, liveOwn, otherTarget, otherHost, ...userFiles]) writeFileSync(path, 'x');

    await writeFileAtomic(target, Buffer.from('new'));
    expect(readFileSync(target, 'utf8')).toBe('new');
    const left = new Set(readdirSync(dir));
    for (const name of orphans) expect(left.has(name)).toBe(false);
    for (const path of staleMore) expect(existsSync(path)).toBe(false);
    for (const path of [liveOwn, otherTarget, otherHost, ...userFiles]) expect(existsSync(path)).toBe(true);
    expect(left.size).toBe(1 + 1 + 1 + 1 + userFiles.length);
  });

  test('concurrent saves of one target in this process do not remove each other\'s temp files', async () => {
    const target = join(dir, 'model.safetensors');
    let releaseFirst: () => void = () => undefined;
    const firstMayGoOn = new Promise<void>((resolve) => (releaseFirst = resolve));
    let firstReached: () => void = () => undefined;
    const firstHasTemp = new Promise<void>((resolve) => (firstReached = resolve));
    let calls = 0;
    __testing.hooks.afterTempWrite = async () => {
      // The first save waits, temp file written, until the second has cleaned up and finished.
      if (++calls === 1) {
        firstReached();
        await firstMayGoOn;
      }
    };
    const first = writeFileAtomic(target, Buffer.from('first'));
    await firstHasTemp;
    expect(readdirSync(dir).filter((name) => name.endsWith('.tmp'))).toHaveLength(1);
    await writeFileAtomic(target, Buffer.from('second'));
    expect(readFileSync(target, 'utf8')).toBe('second');
    releaseFirst();
    await expect(first).resolves.toBeUndefined();
    expect(readFileSync(target, 'utf8')).toBe('first');
    expect(readdirSync(dir)).toEqual(['model.safetensors']);
  });

  test('errors name the user\'s path, never the hidden temp file', async () => {
    const missing = join(dir, 'no', 'such', 'model.safetensors');
    const error = await writeFileAtomic(missing, Buffer.from('x')).catch((e: NodeJS.ErrnoException) => e);
    expect(error).toBeDefined();
    expect((error as Error).message).toBe(`ENOENT: no such file or directory, while saving '${missing}'`);
    expect((error as NodeJS.ErrnoException).code).toBe('ENOENT');
    expect((error as NodeJS.ErrnoException).path).toBe(missing);

    const occupied = join(dir, 'occupied');
    mkdirSync(occupied);
    writeFileSync(join(occupied, 'keep.txt'), 'keep');
    const renameError = (await writeFileAtomic(occupied, Buffer.from('x')).catch((e: Error) => e)) as Error;
    expect(renameError.message).toMatch(new RegExp(`^(EISDIR|ENOTEMPTY|EEXIST|EPERM): .*, while saving '${escapeRegExp(occupied)}'$`));
    expect(renameError.message).not.toMatch(/\.iaflow-|\.tmp/);
    expect(readdirSync(dir)).toEqual(['occupied']);

    // A write error names no path at all; the save names the user's.
    const target = join(dir, 'model.safetensors');
    __testing.hooks.afterTempWrite = () => {
      throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' });
    };
    const writeError = (await writeFileAtomic(target, Buffer.from('x')).catch((e: Error) => e)) as NodeJS.ErrnoException;
    expect(writeError.message).toBe(`ENOSPC: no space left on device, while saving '${target}'`);
    expect([writeError.code, writeError.syscall, writeError.path]).toEqual(['ENOSPC', 'write', target]);
    // An error that is not the file system's passes unchanged.
    __testing.hooks.afterTempWrite = () => {
      throw new Error('source failed');
    };
    await expect(writeFileAtomic(target, Buffer.from('x'))).rejects.toThrow(/^source failed$/);
    expect(readdirSync(dir)).toEqual(['occupied']);
  });
});
