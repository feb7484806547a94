/**
 * Tables of float32 rows in the formats a user hands in or asks for: CSV and .npy files, and
 * the text formats a stream of rows goes out in (CSV, NDJSON, JSON). Shared by the command
 * line (src/cli.ts) and, later, the HTTP server, so that both read and write the same bytes.
 *
 * - CSV: numbers separated by commas, semicolons or tabs (told from the first lines), one row
 *   per line, fields trimmed; a field in double quotes may hold the separator ("" is a quote).
 *   Blank lines and lines that start with '#' (numpy.savetxt's header) are skipped. The first
 *   remaining line is a header when NONE of its fields is a number; a first line with some
 *   numbers and some non-numbers is a malformed data row (`0x10,2`, a Unicode minus `−1,2`).
 *   A row with a cell that is not a finite number (empty, NA, a word) is an error naming its line
 *   and column, or, with `invalidRows: 'skip'`, left out and counted: never dropped in silence.
 *   Columns can be selected by header name or 0-based index. Values are written with commas,
 *   in the shortest decimal that reads back as the same float32.
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
import { checkEnum, checkInteger, checkOptions, invalidRange, invalidType, isFloat32Array } from './validation';

/** Rows of float32 values, row-major. */
export interface Table {
  /** rows * cols values, row-major. */
  data: Float32Array;
  rows: number;
  cols: number;
  /** The CSV header's names (of the kept columns), or null (a CSV file without a header, or a .npy file). */
  header: string[] | null;
  /** Rows left out for a bad cell (ReadTableOptions.invalidRows 'skip'); absent when none was. */
  skipped?: SkippedRows;
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

/** The field separators a CSV file may use; detected from its first lines unless given. */
export const CSV_DELIMITERS = [',', ';', '\t'] as const;
export type CsvDelimiter = (typeof CSV_DELIMITERS)[number];

/** How a table file is read (parseCsv, decodeTable, readTable). */
export interface ReadTableOptions {
  /**
   * The columns to keep, in this order: header names (CSV with a header) or 0-based indices
   * (numbers, or strings of digits). Default: every column.
   */
  columns?: readonly (string | number)[];
  /**
   * A CSV row with a cell that is not a finite number (empty, NA, a word, 1e39) in a kept column:
   * 'error' (the default) throws a TableError naming its line and column; 'skip' leaves the row
   * out and counts it in the table's `skipped`.
   */
  invalidRows?: 'error' | 'skip';
  /** The CSV field separator; default: detected from the first lines (comma, semicolon or tab). */
  delimiter?: CsvDelimiter;
}

/** Rows of a CSV file left out by `invalidRows: 'skip'`. */
export interface SkippedRows {
  /** How many rows were left out. */
  count: number;
  /** The first one's problem: 1-based line and column in the file, and the cell's text. */
  first: { line: number; column: number; field: string };
  /** 0-based positions of the left-out rows among all the file's data rows (kept and skipped). */
  rows: number[];
  /** Per kept column, the number of left-out rows whose cell there was bad. */
  byColumn: number[];
}

const READ_OPTION_KEYS = ['columns', 'invalidRows', 'delimiter'] as const;

function checkReadOptions(options: unknown): ReadTableOptions {
  const opts = checkOptions('options', options, READ_OPTION_KEYS);
  if (opts.invalidRows !== undefined) checkEnum('options.invalidRows', opts.invalidRows, ['error', 'skip'] as const);
  if (opts.delimiter !== undefined) checkEnum('options.delimiter', opts.delimiter, CSV_DELIMITERS);
  if (opts.columns !== undefined) {
    const columns = opts.columns;
    if (!Array.isArray(columns) || columns.length === 0) throw invalidType('options.columns', 'a non-empty array of column names or 0-based indices', columns);
    columns.forEach((c: unknown, i) => {
      if (typeof c === 'string') return;
      if (typeof c !== 'number' || !Number.isInteger(c) || c < 0) throw invalidType(`options.columns[${i}]`, 'a column name (string) or a 0-based index (integer >= 0)', c);
    });
  }
  return opts as ReadTableOptions;
}

/**
 * The fields of one line: split at `delimiter` and trimmed. A field in double quotes may hold
 * the delimiter, and "" stands for one quote inside it (RFC 4180); its quotes are removed.
 */
export function splitCsvLine(line: string, delimiter: string): string[] {
  if (!line.includes('"')) return line.split(delimiter).map((f) => f.trim());
  const fields: string[] = [];
  let i = 0;
  for (;;) {
    while (i < line.length && (line[i] === ' ' || (line[i] === '\t' && delimiter !== '\t'))) i++;
    let field = '';
    if (line[i] === '"') {
      i++;
      for (;;) {
        const quote = line.indexOf('"', i);
        if (quote < 0) {
          // An unclosed quote runs to the end of the line.
          field += line.slice(i);
          i = line.length;
          break;
        }
        field += line.slice(i, quote);
        if (line[quote + 1] === '"') {
          field += '"';
          i = quote + 2;
        } else {
          i = quote + 1;
          break;
        }
      }
      // Anything between the closing quote and the delimiter belongs to the field.
      const end = line.indexOf(delimiter, i);
      field += line.slice(i, end < 0 ? line.length : end);
      i = end < 0 ? line.length : end;
    } else {
      const end = line.indexOf(delimiter, i);
      field = line.slice(i, end < 0 ? line.length : end);
      i = end < 0 ? line.length : end;
    }
    fields.push(field.trim());
    if (i >= line.length) break;
    i += delimiter.length; // past the delimiter
    if (i === line.length) {
      fields.push(''); // a trailing delimiter ends in an empty field
      break;
    }
  }
  return fields;
}

/** Lines looked at to tell the delimiter. */
const DELIMITER_SAMPLE_LINES = 20;

/**
 * The delimiter of CSV text, from its first (up to 20) lines that are not blank or comments:
 * among comma, semicolon and tab, those that split every such line into the same number (> 1)
 * of fields; of these, the one that gives the most number fields, ties going to tab, then
 * semicolon, then comma. Comma when none does (one column).
 */
export function detectDelimiter(text: string): CsvDelimiter {
  if (typeof text !== 'string') throw invalidType('text', 'CSV text (a string)', text);
  const sample: string[] = [];
  let at = text.charCodeAt(0) === 0xfeff ? 1 : 0;
  while (at < text.length && sample.length < DELIMITER_SAMPLE_LINES) {
    let end = text.indexOf('\n', at);
    if (end < 0) end = text.length;
    const line = text.slice(at, end).trim();
    at = end + 1;
    if (line !== '' && !line.startsWith('#')) sample.push(line);
  }
  let best: CsvDelimiter = ',';
  let bestScore = -1;
  for (const delimiter of ['\t', ';', ','] as const) {
    let count = -1;
    let numbers = 0;
    let consistent = true;
    for (const line of sample) {
      const fields = splitCsvLine(line, delimiter);
      if (count < 0) count = fields.length;
      if (fields.length !== count || count < 2) {
        consistent = false;
        break;
      }
      for (const f of fields) if (NUMBER.test(f)) numbers++;
    }
    if (consistent && count > 1 && numbers > bestScore) {
      best = delimiter;
      bestScore = numbers;
    }
  }
  return best;
}

const DELIMITER_NAMES: Record<CsvDelimiter, string> = { ',': 'commas', ';': 'semicolons', '\t': 'tabs' };

/** The 0-based file columns that `columns` names (all of them when undefined). */
function resolveColumns(columns: readonly (string | number)[] | undefined, header: string[] | null, fileCols: number, source: string): number[] {
  if (columns === undefined) return Array.from({ length: fileCols }, (_, i) => i);
  const seen = new Set<number>();
  return columns.map((column) => {
    let index: number;
    if (typeof column === 'number' || /^\d+$/.test(column.trim())) {
      index = Number(column);
      if (index >= fileCols) {
        throw new TableError(`${source}: no column ${index} (0-based): the file has ${fileCols} column${fileCols === 1 ? '' : 's'}, 0 to ${fileCols - 1}`);
      }
    } else {
      if (header === null) throw new TableError(`${source}: no header row, so column ${quoted(column)} cannot be found by name (select columns by 0-based index)`);
      index = header.indexOf(column.trim());
      if (index < 0) {
        const names = header.map((h) => quoted(h)).slice(0, 20).join(', ') + (header.length > 20 ? ', ...' : '');
        throw new TableError(`${source}: no column named ${quoted(column)}; the header has ${names}`);
      }
    }
    if (seen.has(index)) throw new TableError(`${source}: column ${quoted(String(column))} is selected twice`);
    seen.add(index);
    return index;
  });
}

/**
 * Parses CSV text (see the module comment) into a float32 table. `source` names the text in
 * error messages (a file name). `options` selects columns, skips rows with bad cells, or fixes
 * the delimiter (see ReadTableOptions).
 * @throws TableError naming the source, line and column of the first problem: a ragged row, a
 * field that is not a number or not finite in float32 (unless such rows are skipped), a
 * malformed first row, a column that is not there, no data rows.
 */
export function parseCsv(text: string, source = 'CSV text', options: ReadTableOptions = {}): Table {
  if (typeof text !== 'string') throw invalidType('text', 'CSV text (a string)', text);
  const opts = checkReadOptions(options);
  const skip = opts.invalidRows === 'skip';
  const delimiter = opts.delimiter ?? detectDelimiter(text);
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  const values: number[] = [];
  let header: string[] | null = null;
  let fileCols = -1;
  let selected: number[] = [];
  let rows = 0;
  let dataRows = 0;
  let skipped: SkippedRows | undefined;
  let seenFirst = false;
  const separated = delimiter === ',' ? '' : ` (fields separated by ${DELIMITER_NAMES[delimiter]})`;
  for (let l = 0; l < lines.length; l++) {
    const line = lines[l].trim();
    if (line === '' || line.startsWith('#')) continue;
    const fields = splitCsvLine(line, delimiter);
    let firstRow = false;
    if (!seenFirst) {
      seenFirst = true;
      firstRow = true;
      fileCols = fields.length;
      if (!fields.some((f) => NUMBER.test(f))) {
        header = fields;
        selected = resolveColumns(opts.columns, header, fileCols, source);
        continue;
      }
      selected = resolveColumns(opts.columns, null, fileCols, source);
    }
    if (fields.length !== fileCols) {
      throw new TableError(
        header !== null && dataRows === 0
          ? `${source}: the header has ${fileCols} name${fileCols === 1 ? '' : 's'}, but the rows have ${fields.length} values${separated}`
          : `${source}, line ${l + 1}: ${fields.length} value${fields.length === 1 ? '' : 's'}, but the ${header !== null ? 'header has' : 'first row has'} ${fileCols}${separated}`,
      );
    }
    const row = dataRows++;
    const start = values.length;
    for (let k = 0; k < selected.length; k++) {
      const c = selected[k];
      const field = fields[c];
      if (NUMBER.test(field)) {
        const value = Number(field);
        if (Number.isFinite(Math.fround(value))) {
          values.push(value);
          continue;
        }
      }
      if (!skip) {
        // A first row with numbers and non-numbers is data gone wrong, not a header.
        const why = firstRow && !NUMBER.test(field) ? ' is not a number (the first row holds numbers, so it is data, not a header; a header holds no numbers)' : ' is not a finite number';
        const other = CSV_DELIMITERS.find((d) => d !== delimiter && field.includes(d));
        const hint = other !== undefined ? ` (fields are read as separated by ${DELIMITER_NAMES[delimiter]})` : '';
        throw new TableError(`${source}, line ${l + 1}, column ${c + 1}: ${quoted(field)}${why}${hint}`);
      }
      values.length = start;
      if (skipped === undefined) skipped = { count: 0, first: { line: l + 1, column: c + 1, field }, rows: [], byColumn: new Array<number>(selected.length).fill(0) };
      skipped.count++;
      skipped.rows.push(row);
      skipped.byColumn[k]++;
      break;
    }
    if (values.length > start) rows++;
  }
  if (rows === 0) {
    let message = `${source}: no data rows (expected numbers separated by commas, semicolons or tabs, one row per point)`;
    if (skipped !== undefined) {
      const worst = skipped.byColumn.indexOf(Math.max(...skipped.byColumn));
      const name = header !== null ? ` (${quoted(header[selected[worst]])})` : '';
      message =
        `${source}: every one of the ${skipped.count} data row${skipped.count === 1 ? ' has' : 's has'} a cell that is not a number; ` +
        `column ${selected[worst] + 1}${name} in ${skipped.byColumn[worst]} of them (choose numeric columns)`;
    }
    throw new TableError(message);
  }
  const table: Table = { data: Float32Array.from(values), rows, cols: selected.length, header: header === null ? null : selected.map((c) => header![c]) };
  if (skipped !== undefined) table.skipped = skipped;
  return table;
}

/** Bytes of a CSV file looked at by peekCsvHeader: its header is in the first lines. */
const PEEK_BYTES = 1 << 20;

/**
 * The header of CSV bytes (the names of its first row, when that row holds no number, as
 * parseCsv reads it), from the first megabyte only; null when the file has none.
 */
export function peekCsvHeader(bytes: Uint8Array): string[] | null {
  if (Object.prototype.toString.call(bytes) !== '[object Uint8Array]') throw invalidType('bytes', 'a Uint8Array (or Buffer)', bytes);
  // A multi-byte character cut at the end of the peek decodes as U+FFFD; the last line is dropped anyway.
  const text = new TextDecoder('utf-8').decode(bytes.subarray(0, PEEK_BYTES)).replace(/^\uFEFF/, '');
  const lines = text.split(/\r?\n/);
  if (bytes.length > PEEK_BYTES) lines.pop(); // perhaps cut short
  const first = lines.map((l) => l.trim()).find((l) => l !== '' && !l.startsWith('#'));
  if (first === undefined) return null;
  const fields = splitCsvLine(first, detectDelimiter(lines.join('\n')));
  return fields.some((f) => NUMBER.test(f)) ? null : fields;
}

/** A table from .npy bytes: float32/float64, shape (rows, cols) or (rows,), finite in float32. */
function tableFromNpy(bytes: Uint8Array, source: string, columns?: readonly (string | number)[]): Table {
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
  if (columns === undefined) return { data: values, rows, cols, header: null };
  const selected = resolveColumns(columns, null, cols, source);
  const kept = new Float32Array(rows * selected.length);
  for (let r = 0; r < rows; r++) for (let k = 0; k < selected.length; k++) kept[r * selected.length + k] = values[r * cols + selected[k]];
  return { data: kept, rows, cols: selected.length, header: null };
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
export function decodeTable(bytes: Uint8Array, format: 'csv' | 'npy', source: string, options: ReadTableOptions = {}): Table {
  if (Object.prototype.toString.call(bytes) !== '[object Uint8Array]') throw invalidType('bytes', 'a Uint8Array (or Buffer)', bytes);
  checkEnum('format', format, ['csv', 'npy'] as const);
  const opts = checkReadOptions(options);
  if (format === 'npy') return tableFromNpy(bytes, source, opts.columns);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new TableError(`${source}: not UTF-8 text (expected CSV: comma-separated numbers, or a .npy file named *.npy)`);
  }
  return parseCsv(text, source, opts);
}

/**
 * Reads a data file: .npy (float32/float64, shape (rows, dim) or (rows,)) or, any other
 * name, CSV; `options` as for parseCsv (a .npy file's columns are selected by index only).
 * @throws TableError (or NpyFileError) naming the file when it cannot be read or used.
 */
export async function readTable(file: string, options: ReadTableOptions = {}): Promise<Table> {
  if (typeof file !== 'string' || file.length === 0) throw invalidType('file', 'a file path string', file);
  checkReadOptions(options);
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (error) {
    const message = (error as { message?: unknown } | null)?.message;
    throw new TableError(`cannot read ${file} (${typeof message === 'string' ? message : String(error)})`);
  }
  return decodeTable(bytes, inputFormat(file), file, options);
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
