// Rebuilds the CSVs in this folder from the npm package vega-datasets (see README.md here):
//
//   mkdir -p /tmp/vd && cd /tmp/vd && npm pack vega-datasets@3.2.1 && tar xzf vega-datasets-3.2.1.tgz
//   npx tsx bench/data/extract.ts /tmp/vd/package/data
//
// Only numeric columns are kept, values copied as the source writes them (no rounding); rows with a
// missing value in a kept column are dropped (and counted on stderr).
import * as fs from 'node:fs';
import * as path from 'node:path';

const source = process.argv[2];
if (!source || !fs.existsSync(path.join(source, 'cars.json'))) {
  console.error('usage: npx tsx bench/data/extract.ts DIR   (DIR: the data folder of the unpacked vega-datasets package)');
  process.exit(2);
}
const out = path.dirname(__filename);

/** A small CSV reader for the source files: no quoted commas in the columns used here. */
function readCsv(file: string): Record<string, string>[] {
  const lines = fs.readFileSync(path.join(source, file), 'utf8').split(/\r?\n/).filter((l) => l.length > 0);
  const header = lines[0].split(',');
  return lines.slice(1).map((line) => {
    const cells = line.split(',');
    // airports.csv has quoted names with commas in them: take the numeric columns from the end.
    const aligned = cells.length === header.length ? cells : [...cells.slice(0, header.length - 2), ...cells.slice(-2)];
    return Object.fromEntries(header.map((h, i) => [h, aligned[i] ?? '']));
  });
}

function write(name: string, header: string[], rows: (string | number | null | undefined)[][], from: number): void {
  const isNumber = (v: unknown) => v !== null && v !== undefined && v !== '' && Number.isFinite(Number(v));
  const kept = rows.filter((r) => r.every(isNumber));
  fs.writeFileSync(path.join(out, name), [header.join(','), ...kept.map((r) => r.join(','))].join('\n') + '\n');
  console.error(`${name}: ${kept.length} rows of ${header.length} columns (${from - kept.length} of ${from} dropped for missing values)`);
}

// 2-D geographic: every airport's longitude and latitude (US and territories: Alaska, Hawaii, Guam).
const airports = readCsv('airports.csv');
write('airports.csv', ['longitude', 'latitude'], airports.map((r) => [r.longitude, r.latitude]), airports.length);

// 3-D weather: Seattle's hourly climate normals (pressure in hPa, around 1017; temperature in C; wind in m/s).
const hourly = readCsv('seattle-weather-hourly-normals.csv');
write('seattle-hourly.csv', ['pressure', 'temperature', 'wind'], hourly.map((r) => [r.pressure, r.temperature, r.wind]), hourly.length);

// 5-D car specifications (Cylinders left out: five distinct values, a discrete column a density
// cannot model; the other columns are recorded to whole units or halves).
const carColumns = ['Miles_per_Gallon', 'Displacement', 'Horsepower', 'Weight_in_lbs', 'Acceleration'];
const cars = JSON.parse(fs.readFileSync(path.join(source, 'cars.json'), 'utf8')) as Record<string, number | null>[];
write('cars.csv', carColumns, cars.map((c) => carColumns.map((k) => c[k])), cars.length);

// 4-D morphology: Palmer penguins' beak length and depth (mm), flipper length (mm), body mass (g).
const penguinColumns = ['Beak Length (mm)', 'Beak Depth (mm)', 'Flipper Length (mm)', 'Body Mass (g)'];
const penguins = JSON.parse(fs.readFileSync(path.join(source, 'penguins.json'), 'utf8')) as Record<string, number | null>[];
write('penguins.csv', ['beak_length_mm', 'beak_depth_mm', 'flipper_length_mm', 'body_mass_g'], penguins.map((p) => penguinColumns.map((k) => p[k])), penguins.length);
