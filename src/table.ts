/**
 * Tables of float32 rows in the formats a user hands in or asks for: CSV and .npy files, and
 * the text formats a stream of rows goes out in (CSV, NDJSON, JSON). Shared by the command
 * line (src/cli.ts) and, later, the HTTP server, so that both read and write the same bytes.
 *
 * - CSV: comma-separated numbers, one row per line, fields trimmed. Blank lines and lines that
 *   start with '#' (numpy.savetxt's header) are skipped. The first remaining line is a header
 *   when NONE of its fields is a number; a first line with some numbers and some non-numbers is
 *   a malformed data row (`0x10,2`, a Unicode minus `−1,2`) and an error, never silently dropped.
 *   Values are written in the shortest decimal that reads back as the same float32.
 * - .npy: float32 or float64, shape (rows, cols) or (rows,); the codec is src/npy.ts. Tables
 *   read from it are converted to float32, the precision the flows compute in.
 * - NDJSON: one JSON array per row and line. JSON: one array of row arrays. JSON has no
 *   NaN or Infinity, so a non-finite value is written as null there (as JSON.stringify does).
 *
 * A file's format is taken from its name: `.npy` is .npy, anything else is read as CSV; only
 * `.csv` and `.npy` are written. Every problem with a file's contents is a TableError whose
 * message names the file (and the line and column for CSV).
 */
import { readFile } from 'node:fs/promises';
import { encodeNpy, decodeNpy } from './npy';
import { writeFileAtomic } from './safetensors';
import { checkEnum, checkInteger, invalidRange, invalidType, isFloat32Array } from './validation';

/** Rows of float32 values, row-major. */
export interface Table {
  /** rows * cols values, row-major. */
  data: Float32Array;
  rows: number;
  cols: number;
  /** The CSV header's names, or null (a CSV file without a header, or a .npy file). */
  header: string[] | null;
}

/** A table file or text that cannot be read; the message names the source. */
export class TableError extends Error {
  override readonly name = 'TableError';
}

/** The text formats a stream of rows can be written in. */
export const TEXT_FORMATS = ['csv', 'ndjson', 'json'] as const;
export type TextFormat = (typeof TEXT_FORMATS)[number];

/** The file formats a table can be stored in; 'f32' is the bare little-endian float32 values. */
export const FILE_FORMATS = ['csv', 'npy', 'f32'] as const;
export type FileFormat = (typeof FILE_FORMATS)[number];

// ---------------------------------------------------------------------------------------
// Reading

/** A decimal number as people write it: no hex, no Unicode minus, no NaN/Infinity words. */
const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/** True for a field that reads as a decimal number (finite or not in float32). */
export function isNumberField(field: string): boolean {
  return NUMBER.test(field.trim());
}

function quoted(field: string): string {
  return JSON.stringify(field.length > 30 ? field.slice(0, 30) + '...' : field);
}

/**
 * Parses CSV text (see the module comment) into a float32 table. `source` names the text in
 * error messages (a file name).
 * @throws TableError naming the source, line and column of the first problem: a ragged row, a
 * field that is not a number or not finite in float32, a malformed first row, no data rows.
 */
export function parseCsv(text: string, source = 'CSV text'): Table {
  if (typeof text !== 'string') throw invalidType('text', 'CSV text (a string)', text);
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  const values: number[] = [];
  let header: string[] | null = null;
  let cols = -1;
  let rows = 0;
  let seenFirst = false;
  for (let l = 0; l < lines.length; l++) {
    const line = lines[l].trim();
    if (line === '' || line.startsWith('#')) continue;
    const fields = line.split(',').map((f) => f.trim());
    if (!seenFirst) {
      seenFirst = true;
      const numeric = fields.map((f) => NUMBER.test(f));
      if (!numeric.some(Boolean)) {
        header = fields;
        continue;
      }
      const bad = numeric.indexOf(false);
      if (bad >= 0) {
        throw new TableError(
          `${source}, line ${l + 1}, column ${bad + 1}: ${quoted(fields[bad])} is not a number ` +
            `(the first row holds numbers, so it is data, not a header; a header holds no numbers)`,
        );
      }
    }
    if (cols < 0) cols = fields.length;
    if (fields.length !== cols) {
      throw new TableError(`${source}, line ${l + 1}: ${fields.length} value${fields.length === 1 ? '' : 's'}, but the first row has ${cols}`);
    }
    for (let c = 0; c < cols; c++) {
      const field = fields[c];
      const value = Number(field);
      if (!NUMBER.test(field) || !Number.isFinite(Math.fround(value))) {
        throw new TableError(`${source}, line ${l + 1}, column ${c + 1}: ${quoted(field)} is not a finite number`);
      }
      values.push(value);
    }
    rows++;
  }
  if (header !== null && cols >= 0 && header.length !== cols) {
    throw new TableError(`${source}: the header has ${header.length} name${header.length === 1 ? '' : 's'}, but the rows have ${cols} values`);
  }
  if (rows === 0) throw new TableError(`${source}: no data rows (expected comma-separated numbers, one row per point)`);
  return { data: Float32Array.from(values), rows, cols, header };
}

/** A table from .npy bytes: float32/float64, shape (rows, cols) or (rows,), finite in float32. */
function tableFromNpy(bytes: Uint8Array, source: string): Table {
  const { data, shape } = decodeNpy(bytes, source);
  if (shape.length !== 1 && shape.length !== 2) {
    throw new TableError(`${source}: expected a 2-d array (rows, dim), got shape (${shape.join(', ')})`);
  }
  const rows = shape[0];
  const cols = shape.length === 1 ? 1 : shape[1];
  if (rows === 0 || cols === 0) throw new TableError(`${source}: the array is empty (shape (${shape.join(', ')}))`);
  const values = isFloat32Array(data) ? data : Float32Array.from(data);
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) {
      const range = Number.isFinite(data[i]) ? ', outside float32\'s range' : '';
      throw new TableError(`${source}: row ${Math.floor(i / cols)}, column ${(i % cols) + 1} holds a non-finite value (${data[i]}${range})`);
    }
  }
  return { data: values, rows, cols, header: null };
}

/** The format a file is read in: .npy by its name, CSV otherwise. */
export function inputFormat(file: string): 'npy' | 'csv' {
  return file.toLowerCase().endsWith('.npy') ? 'npy' : 'csv';
}

/** The format a file is written in, from its name (.csv or .npy), or null for any other name. */
export function outputFormat(file: string): 'npy' | 'csv' | null {
  const lower = file.toLowerCase();
  return lower.endsWith('.npy') ? 'npy' : lower.endsWith('.csv') ? 'csv' : null;
}

/**
 * A table from a file's bytes: .npy bytes, or CSV text (UTF-8). `source` names it in errors.
 * @throws TableError (or NpyFileError for a broken .npy file) naming the source.
 */
export function decodeTable(bytes: Uint8Array, format: 'csv' | 'npy', source: string): Table {
  if (Object.prototype.toString.call(bytes) !== '[object Uint8Array]') throw invalidType('bytes', 'a Uint8Array (or Buffer)', bytes);
  checkEnum('format', format, ['csv', 'npy'] as const);
  if (format === 'npy') return tableFromNpy(bytes, source);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new TableError(`${source}: not UTF-8 text (expected CSV: comma-separated numbers, or a .npy file named *.npy)`);
  }
  return parseCsv(text, source);
}

/**
 * Reads a data file: .npy (float32/float64, shape (rows, dim) or (rows,)) or, any other
 * name, CSV.
 * @throws TableError (or NpyFileError) naming the file when it cannot be read or used.
 */
export async function readTable(file: string): Promise<Table> {
  if (typeof file !== 'string' || file.length === 0) throw invalidType('file', 'a file path string', file);
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (error) {
    const message = (error as { message?: unknown } | null)?.message;
    throw new TableError(`cannot read ${file} (${typeof message === 'string' ? message : String(error)})`);
  }
  return decodeTable(bytes, inputFormat(file), file);
}

// ---------------------------------------------------------------------------------------
// Writing

/** The shortest decimal that reads back as the same float32 value. */
export function formatFloat32(value: number): string {
  const v = Math.fround(value);
  if (!Number.isFinite(v)) return String(v);
  if (Object.is(v, -0)) return '-0';
  // Binary search over 1..9 significant digits (9 always reads back): more digits are never
  // farther from v, so reading back is monotone in the digit count; 1.7x faster than a linear scan.
  let lo = 1;
  let hi = 9;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (Math.fround(Number(v.toPrecision(mid))) === v) hi = mid;
    else lo = mid + 1;
  }
  return String(Number(v.toPrecision(lo)));
}

function checkRows(rows: unknown, dim: unknown): asserts rows is Float32Array {
  if (!isFloat32Array(rows)) throw invalidType('rows', 'a Float32Array (row-major)', rows);
  checkInteger('dim', dim, 1, 2 ** 31 - 1);
  if (rows.length % (dim as number) !== 0) throw invalidRange('rows.length', `a multiple of dim (${dim})`, rows.length);
}

function checkHeader(header: unknown, dim: number): readonly string[] | undefined {
  if (header === undefined) return undefined;
  if (!Array.isArray(header) || header.some((h) => typeof h !== 'string')) throw invalidType('header', 'an array of strings', header);
  if (header.length !== dim) throw invalidRange('header.length', `${dim} (one name per column)`, header.length);
  // A name with a comma, a newline or a number would not read back as this header.
  header.forEach((name: string, i) => {
    if (/[,\r\n]/.test(name) || NUMBER.test(name) || name.trim() !== name) {
      throw invalidRange(`header[${i}]`, 'a column name without commas, line breaks, outer spaces, that is not a number', name);
    }
  });
  return header;
}

const jsonNumber = (v: number) => (Number.isFinite(Math.fround(v)) ? formatFloat32(v) : 'null');

/**
 * Formats a stream of rows chunk by chunk: the strings that format() and end() return,
 * concatenated in order, are exactly formatRows() of all the rows at once, however the rows
 * are split (empty chunks included). A server writes each string as it comes.
 *
 *   const out = new RowFormatter('ndjson', dim);
 *   for (const chunk of chunks) response.write(out.format(chunk));
 *   response.end(out.end());
 */
export class RowFormatter {
  readonly format: TextFormat;
  readonly dim: number;
  private readonly header: readonly string[] | undefined;
  private started = false;
  private ended = false;
  private rowsWritten = 0;

  /** `header`: CSV column names (one per column), written as the first line; ignored by the JSON formats. */
  constructor(format: TextFormat, dim: number, options: { header?: readonly string[] } = {}) {
    this.format = checkEnum('format', format, TEXT_FORMATS);
    this.dim = checkInteger('dim', dim, 1, 2 ** 31 - 1);
    if (options === null || typeof options !== 'object') throw invalidType('options', 'an options object', options);
    this.header = checkHeader(options.header, dim);
  }

  /** Number of rows formatted so far. */
  get rows(): number {
    return this.rowsWritten;
  }

  private prologue(): string {
    if (this.started) return '';
    this.started = true;
    if (this.format === 'json') return '[';
    if (this.format === 'csv' && this.header !== undefined) return this.header.join(',') + '\n';
    return '';
  }

  /** The text of the next rows (rows.length a multiple of dim; may be empty). */
  formatChunk(rows: Float32Array): string {
    if (this.ended) throw new Error('RowFormatter: formatChunk() after end()');
    checkRows(rows, this.dim);
    const dim = this.dim;
    const count = rows.length / dim;
    const parts: string[] = [this.prologue()];
    const fields = new Array<string>(dim);
    const json = this.format !== 'csv';
    for (let r = 0; r < count; r++) {
      for (let c = 0; c < dim; c++) fields[c] = json ? jsonNumber(rows[r * dim + c]) : formatFloat32(rows[r * dim + c]);
      if (this.format === 'csv') parts.push(fields.join(','), '\n');
      else if (this.format === 'ndjson') parts.push('[', fields.join(','), ']\n');
      else parts.push(this.rowsWritten + r === 0 ? '[' : ',\n[', fields.join(','), ']');
    }
    this.rowsWritten += count;
    return parts.join('');
  }

  /** The closing text (JSON's ']'); no chunk may follow. */
  end(): string {
    if (this.ended) return '';
    const text = this.prologue() + (this.format === 'json' ? ']\n' : '');
    this.ended = true;
    return text;
  }
}

/**
 * All the rows (row-major, dim per row) as CSV (with `header` as its first line when given),
 * NDJSON or JSON text. For a stream, RowFormatter gives the same text chunk by chunk.
 */
export function formatRows(rows: Float32Array, dim: number, format: TextFormat, options: { header?: readonly string[] } = {}): string {
  const formatter = new RowFormatter(format, dim, options);
  return formatter.formatChunk(rows) + formatter.end();
}

/** CSV text of a row-major float32 array, with a header row. */
export function formatCsv(data: Float32Array, cols: number, header: readonly string[]): string {
  return formatRows(data, cols, 'csv', { header });
}

/** Rows per piece when a big table is formatted: bounds the size of any one string. */
const CHUNK_ROWS = 8192;

/** The rows of `data` in pieces of at most CHUNK_ROWS rows (views, not copies). */
export function* rowChunks(data: Float32Array, cols: number, chunkRows = CHUNK_ROWS): Generator<Float32Array> {
  checkRows(data, cols);
  checkInteger('chunkRows', chunkRows, 1, 2 ** 31 - 1);
  const step = chunkRows * cols;
  for (let start = 0; start < data.length; start += step) yield data.subarray(start, Math.min(data.length, start + step));
}

/**
 * The bytes of a table file: .npy (float32, shape (rows, cols), or (rows,) with `oneD`), CSV
 * (with the header line when given) or f32 (the bare float32 values, little-endian).
 * Built piece by piece, so a table bigger than the longest JavaScript string is fine.
 */
export function encodeTable(
  data: Float32Array,
  cols: number,
  format: FileFormat,
  options: { header?: readonly string[]; oneD?: boolean } = {},
): Buffer {
  checkRows(data, cols);
  checkEnum('format', format, FILE_FORMATS);
  const rows = data.length / cols;
  if (format === 'npy') {
    if (options.oneD && cols !== 1) throw invalidRange('cols', '1 for a 1-d array (oneD)', cols);
    return encodeNpy(data, options.oneD ? [rows] : [rows, cols]);
  }
  if (format === 'f32') {
    const npy = encodeNpy(data); // little-endian on any host; the values are its last bytes
    return npy.subarray(npy.length - data.byteLength);
  }
  const formatter = new RowFormatter('csv', cols, { header: options.header });
  const pieces: Buffer[] = [];
  for (const chunk of rowChunks(data, cols)) pieces.push(Buffer.from(formatter.formatChunk(chunk)));
  pieces.push(Buffer.from(formatter.end()));
  return Buffer.concat(pieces);
}

/**
 * Writes a table file, its format taken from the name (.csv or .npy), atomically: a failed
 * write leaves any previous file intact.
 * @throws RangeError for a name that ends in neither; the file system's error otherwise.
 */
export async function writeTable(file: string, data: Float32Array, cols: number, options: { header?: readonly string[]; oneD?: boolean } = {}): Promise<void> {
  if (typeof file !== 'string' || file.length === 0) throw invalidType('file', 'a file path string', file);
  const format = outputFormat(file);
  if (format === null) throw invalidRange('file', 'a name ending in .csv or .npy (the format is taken from it)', file);
  await writeFileAtomic(file, encodeTable(data, cols, format, options));
}
