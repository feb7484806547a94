// Tables (src/table.ts): CSV parsing and its header rule, the row formats a stream goes out in
// (CSV, NDJSON, JSON) chunk by chunk, and .csv/.npy/.f32 files written and read back.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeNpy } from '../src/npy';
import {
  RowFormatter,
  TEXT_FORMATS,
  TextFormat,
  decodeTable,
  detectDelimiter,
  encodeTable,
  formatCsv,
  formatFloat32,
  formatRows,
  parseCsv,
  peekCsvHeader,
  readTable,
  rowChunks,
  splitCsvLine,
  writeTable,
} from '../src/table';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'iaflow-table-'));
});
afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A deterministic pseudo-random float32 table spanning many magnitudes and signs. */
function randomRows(rows: number, cols: number, seed = 1): Float32Array {
  let state = seed >>> 0;
  const next = () => ((state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  return Float32Array.from({ length: rows * cols }, () => (next() - 0.5) * 10 ** Math.floor(next() * 16 - 8));
}

describe('parseCsv', () => {
  test('skips a header row, blank lines, # lines and a BOM; reads \\r\\n; returns float32 and the header names', () => {
    expect(parseCsv('\uFEFFa, b\n1,2\n\n# note\n3, -4e-1\r\n', 'f.csv')).toEqual({
      data: Float32Array.of(1, 2, 3, -0.4),
      rows: 2,
      cols: 2,
      header: ['a', 'b'],
    });
    expect(parseCsv('1.5\n2', 'f.csv')).toEqual({ data: Float32Array.of(1.5, 2), rows: 2, cols: 1, header: null });
    expect(parseCsv('# written by numpy.savetxt\n.5,-0,+7E2\n', 'f.csv').data).toEqual(Float32Array.of(0.5, -0, 700));
  });

  test('a header is a first row with no number; a first row with numbers and non-numbers is an error naming line and field', () => {
    // Words that are not decimal numbers (NaN, Infinity, hex) make a header only when no field is a number.
    expect(parseCsv('NaN,Infinity\n1,2\n', 'f.csv').header).toEqual(['NaN', 'Infinity']);
    expect(parseCsv(',x\n1,2\n', 'f.csv').header).toEqual(['', 'x']);
    expect(() => parseCsv('0x10,2\n1,2\n', 'f.csv')).toThrow(/^f\.csv, line 1, column 1: "0x10" is not a number \(the first row holds numbers/);
    expect(() => parseCsv('\u22121,2\n1,2\n', 'f.csv')).toThrow('f.csv, line 1, column 1: "\u22121" is not a number');
    expect(() => parseCsv('\n# c\n1,2,1e3x\n1,2,3\n', 'f.csv')).toThrow('f.csv, line 3, column 3: "1e3x" is not a number');
    expect(() => parseCsv('1,NaN\n', 'f.csv')).toThrow('line 1, column 2: "NaN" is not a number');
    // Only the first row can be a header: a later row of names is bad data.
    expect(() => parseCsv('x,y\nx,y\n', 'f.csv')).toThrow('f.csv, line 2, column 1: "x" is not a finite number');
  });

  test('reports ragged rows, non-numbers, empty fields, float32 overflow, a header of the wrong width and no data', () => {
    expect(() => parseCsv('1,2\n3\n', 'f.csv')).toThrow('f.csv, line 2: 1 value, but the first row has 2');
    expect(() => parseCsv('1,2\n3,x\n', 'f.csv')).toThrow('f.csv, line 2, column 2: "x" is not a finite number');
    expect(() => parseCsv('1,2\n3,\n', 'f.csv')).toThrow('line 2, column 2');
    expect(() => parseCsv('1,2\n3,1e39\n', 'f.csv')).toThrow('line 2, column 2: "1e39" is not a finite number');
    expect(() => parseCsv('a,b,c\n1,2\n', 'f.csv')).toThrow('f.csv: the header has 3 names, but the rows have 2 values');
    expect(() => parseCsv('x,y\n', 'f.csv')).toThrow('f.csv: no data rows');
    expect(() => parseCsv('', 'f.csv')).toThrow('f.csv: no data rows');
    expect(() => parseCsv(`1,${'9'.repeat(100)}x\n`, 'f.csv')).toThrow(/"9{30}\.\.\." is not a number/);
    expect(() => parseCsv(42 as unknown as string)).toThrow(/Expected CSV text \(a string\) for text but received 42/);
  });
});

describe('delimiters, quotes, column selection and bad rows', () => {
  test('comma, semicolon and tab are told from the first lines; the same values come back', () => {
    const expected = Float32Array.of(1.5, -2, 3e-3, 4, 5, 6);
    for (const d of [',', ';', '\t']) {
      const text = `a${d}b${d}c\n1.5${d}-2${d}3e-3\n4${d} 5${d}6\n`;
      expect(detectDelimiter(text)).toBe(d);
      expect(parseCsv(text, 'f.csv')).toEqual({ data: expected, rows: 2, cols: 3, header: ['a', 'b', 'c'] });
    }
    // Names with commas in a tab-separated file; a comma file with a space after each comma.
    expect(detectDelimiter('x, m\ty, m\n1\t2\n')).toBe('\t');
    expect(parseCsv('x, m\ty, m\n1\t2\n', 'f').header).toEqual(['x, m', 'y, m']);
    expect(detectDelimiter('1,\t2\n3,\t4\n')).toBe(',');
    expect(detectDelimiter('1\n2\n')).toBe(',');
    // Given explicitly, the delimiter is not guessed.
    expect(parseCsv('1;2\n3;4\n', 'f', { delimiter: ';' }).cols).toBe(2);
    expect(() => parseCsv('1;2\n3;4\n', 'f', { delimiter: ',' })).toThrow('f, line 2, column 1: "3;4" is not a finite number (fields are read as separated by commas)');
  });

  test('quoted fields: the delimiter and "" inside quotes; a quoted header and quoted numbers', () => {
    expect(splitCsvLine('"a, b",c,"say ""hi""" , ', ',')).toEqual(['a, b', 'c', 'say "hi"', '']);
    expect(splitCsvLine('1,2,', ',')).toEqual(['1', '2', '']);
    expect(splitCsvLine('"1";"2"', ';')).toEqual(['1', '2']);
    const text = '"weight, kg","height"\n"70.5",180\n"64",175\n';
    expect(detectDelimiter(text)).toBe(',');
    expect(parseCsv(text, 'q.csv')).toEqual({ data: Float32Array.of(70.5, 180, 64, 175), rows: 2, cols: 2, header: ['weight, kg', 'height'] });
  });

  test('columns by header name or 0-based index, in the order given; errors name what is missing', () => {
    const text = 'id,mpg,name,hp\n1,21,ford,110\n2,33.5,fiat,65\n';
    expect(parseCsv(text, 'cars.csv', { columns: ['hp', 'mpg'] })).toEqual({ data: Float32Array.of(110, 21, 65, 33.5), rows: 2, cols: 2, header: ['hp', 'mpg'] });
    expect(parseCsv(text, 'cars.csv', { columns: [3, '1'] })).toEqual({ data: Float32Array.of(110, 21, 65, 33.5), rows: 2, cols: 2, header: ['hp', 'mpg'] });
    expect(parseCsv('1,2,3\n4,5,6\n', 'n.csv', { columns: [2, 0] })).toEqual({ data: Float32Array.of(3, 1, 6, 4), rows: 2, cols: 2, header: null });
    expect(() => parseCsv(text, 'cars.csv', { columns: ['weight'] })).toThrow('cars.csv: no column named "weight"; the header has "id", "mpg", "name", "hp"');
    expect(() => parseCsv(text, 'cars.csv', { columns: [4] })).toThrow('cars.csv: no column 4 (0-based): the file has 4 columns, 0 to 3');
    expect(() => parseCsv(text, 'cars.csv', { columns: ['mpg', 1] })).toThrow('column "1" is selected twice');
    expect(() => parseCsv('1,2\n', 'n.csv', { columns: ['x'] })).toThrow('n.csv: no header row, so column "x" cannot be found by name');
    // The text column, kept, is refused row by row; left out, it does not matter.
    expect(() => parseCsv(text, 'cars.csv')).toThrow('cars.csv, line 2, column 3: "ford" is not a finite number');
    expect(() => parseCsv(text, 'f', { columns: [] })).toThrow(/Expected a non-empty array of column names or 0-based indices for options.columns/);
    expect(() => parseCsv(text, 'f', { columns: [-1] })).toThrow(/for options.columns\[0\] but received -1/);
    expect(() => parseCsv(text, 'f', { invalidRows: 'drop' as 'skip' })).toThrow(/Expected one of 'error', 'skip' for options.invalidRows/);
    expect(() => parseCsv(text, 'f', { delimiter: '|' as ',' })).toThrow(/for options.delimiter/);
    expect(() => parseCsv(text, 'f', { colums: [1] } as object)).toThrow(/Unknown option "colums"/);
  });

  test("invalidRows 'skip': rows with an empty, NA, word or overflowing cell are left out and counted", () => {
    const text = 'a;b\n1;2\nNA;3\n4;\n5;6\n7;1e39\n8;x\n9;10\n';
    const table = parseCsv(text, 's.csv', { invalidRows: 'skip' });
    expect([table.rows, table.cols, Array.from(table.data)]).toEqual([3, 2, [1, 2, 5, 6, 9, 10]]);
    expect(table.skipped).toEqual({ count: 4, first: { line: 3, column: 1, field: 'NA' }, rows: [1, 2, 4, 5], byColumn: [1, 3] });
    // Only kept columns count: leave out the bad column and nothing is skipped.
    const onlyA = parseCsv(text, 's.csv', { invalidRows: 'skip', columns: ['a'] });
    expect(onlyA.rows).toBe(6);
    expect(Array.from(onlyA.data)).toEqual([1, 4, 5, 7, 8, 9]);
    expect(onlyA.skipped).toEqual({ count: 1, first: { line: 3, column: 1, field: 'NA' }, rows: [1], byColumn: [1] });
    // The default refuses the first bad row, naming line and column.
    expect(() => parseCsv(text, 's.csv')).toThrow('s.csv, line 3, column 1: "NA" is not a finite number');
    // A clean file has no `skipped`; ragged rows stay errors either way.
    expect(parseCsv('1,2\n', 'f', { invalidRows: 'skip' })).toEqual({ data: Float32Array.of(1, 2), rows: 1, cols: 2, header: null });
    expect(() => parseCsv('1,2\n3\n', 'f', { invalidRows: 'skip' })).toThrow('f, line 2: 1 value, but the first row has 2');
    // Nothing left: the error says which column is to blame.
    expect(() => parseCsv('x,name\n1,ford\n2,fiat\n', 'c.csv', { invalidRows: 'skip' })).toThrow(
      'c.csv: every one of the 2 data rows has a cell that is not a number; column 2 ("name") in 2 of them (choose numeric columns)',
    );
  });

  test('peekCsvHeader: the names of a header row as parseCsv reads them, from the first lines only', () => {
    expect(peekCsvHeader(Buffer.from('\uFEFF# c\n\n"a;b";c;d\n1;2;3\n'))).toEqual(['a;b', 'c', 'd']);
    expect(peekCsvHeader(Buffer.from('x\ty\n1\t2\n'))).toEqual(['x', 'y']);
    expect(peekCsvHeader(Buffer.from('1,2\n'))).toBeNull();
    expect(peekCsvHeader(Buffer.from('# only a comment\n'))).toBeNull();
    // A big file: its header is read without decoding the rest.
    const big = Buffer.from('u,v\n' + '1,2\n'.repeat(400000));
    expect(peekCsvHeader(big)).toEqual(['u', 'v']);
    expect(() => peekCsvHeader('a,b' as unknown as Buffer)).toThrow(/Expected a Uint8Array \(or Buffer\) for bytes/);
  });

  test('.npy files: columns by index; names are refused (no header)', () => {
    const bytes = encodeNpy(Float32Array.of(1, 2, 3, 4, 5, 6), [2, 3]);
    expect(decodeTable(bytes, 'npy', 'a.npy', { columns: [2, 0] })).toEqual({ data: Float32Array.of(3, 1, 6, 4), rows: 2, cols: 2, header: null });
    expect(() => decodeTable(bytes, 'npy', 'a.npy', { columns: ['x'] })).toThrow('a.npy: no header row, so column "x" cannot be found by name');
    expect(() => decodeTable(bytes, 'npy', 'a.npy', { columns: [3] })).toThrow('a.npy: no column 3 (0-based)');
  });
});

describe('formatting', () => {
  test('float32 values are written in their shortest form and read back exactly', () => {
    const values = randomRows(1000, 2, 7);
    values[0] = 0.1;
    values[1] = -0;
    values[2] = 3.4028234663852886e38;
    values[3] = 1.401298464324817e-45;
    expect(formatFloat32(0.1)).toBe('0.1');
    expect(formatFloat32(1)).toBe('1');
    expect(formatFloat32(-0)).toBe('-0');
    expect(formatFloat32(Math.fround(1 / 3))).toBe('0.33333334'); // 8 digits: 0.3333333 is another float32
    // Shortest: over random bit patterns (every exponent), the text reads back as the same float32
    // and one significant digit fewer would not.
    const bits = new Uint32Array(1);
    const float = new Float32Array(bits.buffer);
    let state = 12345;
    for (let i = 0; i < 20000; i++) {
      state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
      bits[0] = state;
      const v = float[0];
      if (!Number.isFinite(v)) continue;
      const text = formatFloat32(v);
      expect(Math.fround(Number(text))).toBe(v);
      const digits = Math.fround(v) === 0 ? 1 : Number(text).toExponential().split('e')[0].replace(/[-.]/g, '').length;
      if (digits > 1) expect(Math.fround(Number(v.toPrecision(digits - 1)))).not.toBe(v);
    }
    const back = parseCsv(formatCsv(values, 2, ['a', 'b']), 'round trip');
    expect(back.header).toEqual(['a', 'b']);
    expect(back.data).toEqual(values);
    expect(Object.is(back.data[1], -0)).toBe(true);
  });

  test('csv, ndjson and json of the same rows parse back to the same values', () => {
    const rows = randomRows(50, 3, 3);
    const csv = formatRows(rows, 3, 'csv', { header: ['a', 'b', 'c'] });
    expect(csv.split('\n')[0]).toBe('a,b,c');
    expect(parseCsv(csv).data).toEqual(rows);
    expect(formatRows(rows, 3, 'csv').split('\n')[0]).toBe(formatRows(rows.subarray(0, 3), 3, 'csv').trimEnd());

    const ndjson = formatRows(rows, 3, 'ndjson');
    const lines = ndjson.split('\n');
    expect(lines).toHaveLength(51);
    expect(lines[50]).toBe('');
    expect(Float32Array.from(lines.slice(0, 50).flatMap((l) => JSON.parse(l) as number[]))).toEqual(rows);

    const json = JSON.parse(formatRows(rows, 3, 'json')) as number[][];
    expect(json).toHaveLength(50);
    expect(json.every((r) => r.length === 3)).toBe(true);
    expect(Float32Array.from(json.flat())).toEqual(rows);
    expect(JSON.parse(formatRows(new Float32Array(0), 3, 'json'))).toEqual([]);
    expect(formatRows(new Float32Array(0), 3, 'ndjson')).toBe('');
    expect(formatRows(new Float32Array(0), 2, 'csv', { header: ['x', 'y'] })).toBe('x,y\n');
  });

  test('non-finite values: their names in CSV, null in JSON and NDJSON (JSON has no NaN)', () => {
    const rows = Float32Array.of(NaN, Infinity, -Infinity, 1);
    expect(formatRows(rows, 4, 'csv')).toBe('NaN,Infinity,-Infinity,1\n');
    expect(formatRows(rows, 4, 'ndjson')).toBe('[null,null,null,1]\n');
    expect(JSON.parse(formatRows(rows, 2, 'json'))).toEqual([
      [null, null],
      [null, 1],
    ]);
  });

  test.each(TEXT_FORMATS)('%s: chunks of any size, empty ones included, concatenate to the whole output', (format: TextFormat) => {
    const dim = 3;
    const rows = randomRows(257, dim, 11);
    const options = { header: ['u', 'v', 'w'] };
    const whole = formatRows(rows, dim, format, options);
    let state = 5;
    for (let trial = 0; trial < 20; trial++) {
      const formatter = new RowFormatter(format, dim, options);
      const pieces: string[] = [];
      let at = 0;
      if (trial % 2 === 0) pieces.push(formatter.formatChunk(new Float32Array(0))); // an empty first chunk
      while (at < 257) {
        state = (state * 1103515245 + 12345) % 2 ** 31;
        const take = Math.min(257 - at, state % 40); // 0 rows now and then
        pieces.push(formatter.formatChunk(rows.subarray(at * dim, (at + take) * dim)));
        at += take;
      }
      expect(formatter.rows).toBe(257);
      pieces.push(formatter.end());
      expect(pieces.join('')).toBe(whole);
    }
    // No rows at all, in any number of empty chunks, is the output of an empty table.
    const empty = new RowFormatter(format, dim, options);
    expect(empty.formatChunk(new Float32Array(0)) + empty.end()).toBe(formatRows(new Float32Array(0), dim, format, options));
  });

  test('rowChunks: views of at most chunkRows rows that cover the data in order', () => {
    const rows = randomRows(1000, 3);
    const chunks = [...rowChunks(rows, 3, 300)];
    expect(chunks.map((c) => c.length / 3)).toEqual([300, 300, 300, 100]);
    expect(chunks.every((c) => c.buffer === rows.buffer)).toBe(true);
    const joined = new Float32Array(rows.length);
    let at = 0;
    for (const c of chunks) joined.set(c, (at += c.length) - c.length);
    expect(joined).toEqual(rows);
    expect([...rowChunks(new Float32Array(0), 3)]).toEqual([]);
  });

  test('bad arguments are TypeErrors and RangeErrors that say what was expected', () => {
    const rows = Float32Array.of(1, 2, 3, 4);
    expect(() => formatRows(Float64Array.of(1, 2) as unknown as Float32Array, 2, 'csv')).toThrow(/Expected a Float32Array \(row-major\) for rows but received a Float64Array/);
    expect(() => formatRows([1, 2] as unknown as Float32Array, 2, 'csv')).toThrow(/for rows but received an array of length 2/);
    expect(() => formatRows(rows, 3, 'csv')).toThrow(/Expected a multiple of dim \(3\) for rows.length but received 4/);
    expect(() => formatRows(rows, 0, 'csv')).toThrow(/for dim but received 0/);
    expect(() => formatRows(rows, 1.5, 'csv')).toThrow(/for dim but received 1.5/);
    expect(() => formatRows(rows, 2, 'xml' as TextFormat)).toThrow(/Expected one of 'csv', 'ndjson', 'json' for format/);
    expect(() => formatRows(rows, 2, 'csv', { header: ['a'] })).toThrow(/Expected 2 \(one name per column\) for header.length but received 1/);
    expect(() => formatRows(rows, 2, 'csv', { header: ['a,b', 'c'] })).toThrow(/for header\[0\]/);
    expect(() => formatRows(rows, 2, 'csv', { header: ['a', '3'] })).toThrow(/not a number for header\[1\]/);
    const formatter = new RowFormatter('json', 2);
    formatter.end();
    expect(() => formatter.formatChunk(rows)).toThrow(/after end\(\)/);
  });
});

describe('files', () => {
  test('.csv and .npy round trips: the same float32 values, the header kept in CSV', async () => {
    const rows = randomRows(300, 4, 5);
    const csvFile = join(dir, 't.csv');
    const npyFile = join(dir, 't.NPY'); // the extension is matched without regard to case
    await writeTable(csvFile, rows, 4, { header: ['a', 'b', 'c', 'd'] });
    await writeTable(npyFile, rows, 4);
    expect(await readTable(csvFile)).toEqual({ data: rows, rows: 300, cols: 4, header: ['a', 'b', 'c', 'd'] });
    expect(await readTable(npyFile)).toEqual({ data: rows, rows: 300, cols: 4, header: null });
    expect(readFileSync(npyFile)).toEqual(encodeNpy(rows, [300, 4]));
    // One column as a 1-d array, as numpy.save writes a vector.
    await writeTable(join(dir, 'v.npy'), rows.subarray(0, 10), 1, { oneD: true });
    expect(readFileSync(join(dir, 'v.npy'))).toEqual(encodeNpy(rows.slice(0, 10)));
    expect(await readTable(join(dir, 'v.npy'))).toEqual({ data: rows.slice(0, 10), rows: 10, cols: 1, header: null });
    // Any other name is read as CSV.
    writeFileSync(join(dir, 'data.txt'), '1,2\n3,4\n');
    expect((await readTable(join(dir, 'data.txt'))).data).toEqual(Float32Array.of(1, 2, 3, 4));
  });

  test('encodeTable: csv equals formatRows, f32 is the bare little-endian values, npy has the shape', () => {
    const rows = randomRows(20000, 2, 9); // more than one formatting chunk
    expect(encodeTable(rows, 2, 'csv', { header: ['x', 'y'] }).toString('utf8')).toBe(formatRows(rows, 2, 'csv', { header: ['x', 'y'] }));
    const f32 = encodeTable(rows, 2, 'f32');
    expect(f32.length).toBe(rows.length * 4);
    for (const i of [0, 1, 777, rows.length - 1]) expect(f32.readFloatLE(4 * i)).toBe(rows[i]);
    expect(decodeTable(encodeTable(rows, 2, 'npy'), 'npy', 'bytes')).toEqual({ data: rows, rows: 20000, cols: 2, header: null });
    expect(() => encodeTable(rows, 2, 'npy', { oneD: true })).toThrow(/Expected 1 for a 1-d array \(oneD\) for cols but received 2/);
    expect(() => encodeTable(rows, 2, 'parquet' as 'csv')).toThrow(/Expected one of 'csv', 'npy', 'f32' for format/);
  });

  test('float64 .npy is read as float32; values outside float32, non-finite values and wrong shapes are errors naming the file', () => {
    const wide = Float64Array.of(0.1, -2.5, 1e-3, 7);
    expect(decodeTable(encodeNpy(wide, [2, 2]), 'npy', 'w.npy')).toEqual({ data: Float32Array.from(wide), rows: 2, cols: 2, header: null });
    expect(() => decodeTable(encodeNpy(Float64Array.of(1, 2, 3, 1e39), [2, 2]), 'npy', 'w.npy')).toThrow(
      "w.npy: row 1, column 2 holds a non-finite value (1e+39, outside float32's range)",
    );
    expect(() => decodeTable(encodeNpy(Float32Array.of(1, NaN), [1, 2]), 'npy', 'n.npy')).toThrow('n.npy: row 0, column 2 holds a non-finite value (NaN)');
    expect(() => decodeTable(encodeNpy(new Float32Array(8), [2, 2, 2]), 'npy', 's.npy')).toThrow('s.npy: expected a 2-d array (rows, dim), got shape (2, 2, 2)');
    expect(() => decodeTable(encodeNpy(new Float32Array(0), [0, 3]), 'npy', 'e.npy')).toThrow('e.npy: the array is empty');
    expect(() => decodeTable(Buffer.from('1,2\n'), 'npy', 'c.npy')).toThrow(/c\.npy: not a \.npy file/);
    expect(() => decodeTable(Buffer.from([0x31, 0x2c, 0xff, 0x0a]), 'csv', 'b.csv')).toThrow('b.csv: not UTF-8 text');
    expect(() => decodeTable('1,2' as unknown as Buffer, 'csv', 'b.csv')).toThrow(/Expected a Uint8Array \(or Buffer\) for bytes/);
  });

  test('a missing file, and a name that says no format to write, are clear errors', async () => {
    await expect(readTable(join(dir, 'missing.csv'))).rejects.toThrow(/^cannot read .*missing\.csv \(ENOENT/);
    await expect(readTable(join(dir, 'missing.npy'))).rejects.toThrow(/missing\.npy/);
    await expect(writeTable(join(dir, 'out.txt'), Float32Array.of(1), 1)).rejects.toThrow(/Expected a name ending in \.csv or \.npy/);
    await expect(readTable('' as string)).rejects.toThrow(/Expected a file path string for file/);
  });
});
