// Pictures (src/plot.ts): renderPlot's PNG decoded here (chunks, zlib, scanline filters) and
// checked against its layout: points land where the axes say they should, the density and
// its colour bar follow the model, and each tick label's pixels are the font's.
import { inflateSync } from 'node:zlib';
import { createMAF, renderPlot, renderPlotWithLayout } from '../src';
import type { Flow, PlotPanel, Tick } from '../src';
import { formatTicks, niceTicks } from '../src/plot';
import { crc32, PNG_SIGNATURE, Raster } from '../src/png';

interface Image {
  width: number;
  height: number;
  rgb: Uint8Array;
}

/** A small PNG decoder (8-bit RGB, no interlace; all five scanline filters), independent of the writer. */
function decodePng(png: Buffer): Image {
  expect(png.subarray(0, 8)).toEqual(PNG_SIGNATURE);
  let at = 8;
  let width = 0;
  let height = 0;
  const idat: Buffer[] = [];
  while (at < png.length) {
    const length = png.readUInt32BE(at);
    const type = png.toString('ascii', at + 4, at + 8);
    const data = png.subarray(at + 8, at + 8 + length);
    expect(png.readUInt32BE(at + 8 + length)).toBe(crc32(png.subarray(at + 4, at + 8 + length)));
    if (type === 'IHDR') {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      expect([data[8], data[9], data[12]]).toEqual([8, 2, 0]); // 8-bit, RGB, not interlaced
    } else if (type === 'IDAT') idat.push(data);
    at += 12 + length;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * 3;
  expect(raw.length).toBe((stride + 1) * height);
  const rgb = new Uint8Array(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    for (let x = 0; x < stride; x++) {
      const value = raw[y * (stride + 1) + 1 + x];
      const a = x >= 3 ? rgb[y * stride + x - 3] : 0;
      const b = y > 0 ? rgb[(y - 1) * stride + x] : 0;
      const c = x >= 3 && y > 0 ? rgb[(y - 1) * stride + x - 3] : 0;
      const p = a + b - c;
      const paeth = Math.abs(p - a) <= Math.abs(p - b) && Math.abs(p - a) <= Math.abs(p - c) ? a : Math.abs(p - b) <= Math.abs(p - c) ? b : c;
      const predictor = [0, a, b, (a + b) >> 1, paeth][filter];
      rgb[y * stride + x] = (value + predictor) & 0xff;
    }
  }
  return { width, height, rgb };
}

function pixel(img: Image, x: number, y: number): [number, number, number] {
  const i = (y * img.width + x) * 3;
  return [img.rgb[i], img.rgb[i + 1], img.rgb[i + 2]];
}

/** The pixel a data point falls on in a panel, from the panel's axis ranges. */
function at(panel: PlotPanel, x: number, y: number): [number, number] {
  const { rect } = panel;
  return [
    rect.left + Math.floor(((x - panel.x.min) / (panel.x.max - panel.x.min)) * rect.width),
    rect.top + rect.height - 1 - Math.floor(((y - panel.y!.min) / (panel.y!.max - panel.y!.min)) * rect.height),
  ];
}

const isWhite = (p: number[]) => p[0] === 255 && p[1] === 255 && p[2] === 255;
const isDark = (p: number[]) => p[0] < 120 && p[1] < 120 && p[2] < 120;
const isOrange = (p: number[]) => p[0] > 200 && p[1] < 180 && p[2] < 120;

/**
 * The label drawn at a tick matches the font's rendering of that text, pixel for pixel (dark or
 * not), in the box where the axis puts it: centred under x ticks, right-aligned left of y ticks
 * (or left-aligned right of a colour bar's).
 */
function expectLabel(img: Image, tick: Tick, left: number, top: number): void {
  const w = Raster.textWidth(tick.label);
  const reference = new Raster(w, 7);
  reference.text(0, 0, tick.label, [0, 0, 0]);
  let inked = 0;
  for (let y = 0; y < 7; y++) {
    for (let x = 0; x < w; x++) {
      const expected = reference.pixels[(y * w + x) * 3] === 0;
      expect([tick.label, x, y, isDark(pixel(img, left + x, top + y))]).toEqual([tick.label, x, y, expected]);
      if (expected) inked++;
    }
  }
  expect(inked).toBeGreaterThan(3);
}

/** Values spread around a centre by a deterministic small jitter. */
function cluster(n: number, centre: number[], spread: number): number[][] {
  return Array.from({ length: n }, (_, i) => centre.map((c, k) => c + spread * Math.sin(1.7 * i + 2.3 * k + 0.5 * i * k)));
}

/** A MAF with every weight 0 and exp scales: the identity, so its density is the standard normal's. */
function identityFlow(dim: number): Flow {
  const flow = createMAF({ dim, layers: 1, hidden: [4], scale: 'exp', seed: 1 });
  const params = flow.getParameters();
  for (const name of Object.keys(params)) params[name].fill(0);
  flow.setParameters(params);
  return flow;
}

describe('niceTicks and formatTicks', () => {
  test('ticks inside the range, evenly spaced by a round step; labels read back as the values and differ', () => {
    let state = 7;
    const random = () => ((state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 2 ** 32);
    for (let trial = 0; trial < 300; trial++) {
      const centre = (random() - 0.5) * 10 ** Math.floor(random() * 16 - 6);
      const span = 10 ** (random() * 12 - 6) * (Math.abs(centre) + 1e-6);
      const lo = centre - span / 2;
      const hi = centre + span / 2;
      const count = 2 + Math.floor(random() * 5);
      const { values, step } = niceTicks(lo, hi, count);
      const mantissa = step / 10 ** Math.floor(Math.log10(step) + 1e-9);
      expect([1, 2, 2.5, 5, 10].some((m) => Math.abs(mantissa - m) < 1e-6)).toBe(true);
      expect(values.length).toBeGreaterThanOrEqual(1);
      expect(values.length).toBeLessThanOrEqual(count + 1);
      for (let i = 0; i < values.length; i++) {
        expect(values[i]).toBeGreaterThanOrEqual(lo - step * 1e-6);
        expect(values[i]).toBeLessThanOrEqual(hi + step * 1e-6);
        if (i > 0) expect(Math.abs(values[i] - values[i - 1] - step)).toBeLessThan(step * 1e-6);
      }
      const labels = formatTicks(values, step);
      expect(new Set(labels).size).toBe(labels.length);
      labels.forEach((label, i) => {
        expect(label).toMatch(/^-?\d+(\.\d+)?(e-?\d+)?$/);
        expect(Math.abs(Number(label) - values[i])).toBeLessThanOrEqual(step * 1e-6 + Math.abs(values[i]) * 1e-12);
      });
    }
    expect(formatTicks([1000, 1010, 1020], 10)).toEqual(['1000', '1010', '1020']); // one form for the whole axis
    expect(formatTicks([0, 2e-6, 4e-6], 2e-6)).toEqual(['0', '2e-6', '4e-6']);
    expect(formatTicks([0, 2.5, 5], 2.5)).toEqual(['0', '2.5', '5.0']);
  });
});

describe('renderPlot', () => {
  test('2-d: data, samples and density panels; points where the axes say; density and colour bar follow the model', async () => {
    const data = [...cluster(300, [1, 1], 0.05), ...cluster(300, [9, 9], 0.05)];
    const samples = cluster(400, [9, 1], 0.05);
    const flow = identityFlow(2);
    const result = await renderPlotWithLayout({ flow, data, samples, names: ['lon', 'lat'], title: 'test' });
    const img = decodePng(result.png);
    expect([img.width, img.height]).toEqual([result.width, result.height]);
    expect(result.panels.map((p) => p.kind)).toEqual(['data', 'samples', 'density']);
    const [dataPanel, samplePanel, densityPanel] = result.panels;
    // The range is the data's: both clusters inside it, with a margin.
    expect(dataPanel.x.min).toBeLessThan(1);
    expect(dataPanel.x.max).toBeGreaterThan(9);

    expect(isDark(pixel(img, ...at(dataPanel, 1, 1)))).toBe(true);
    expect(isDark(pixel(img, ...at(dataPanel, 9, 9)))).toBe(true);
    expect(isWhite(pixel(img, ...at(dataPanel, 9, 1)))).toBe(true);
    expect(isWhite(pixel(img, ...at(dataPanel, 5, 5)))).toBe(true);
    expect(isOrange(pixel(img, ...at(samplePanel, 9, 1)))).toBe(true);
    expect(isWhite(pixel(img, ...at(samplePanel, 1, 1)))).toBe(true);

    // The standard normal's log density falls away from the origin: brighter (greener) at (1, 1)
    // than at (5, 5); the colour bar's top is the largest log p on the lattice, its cells' centres
    // being 0.5/150 of the range in from the panel's edges.
    const bar = densityPanel.colorBar!;
    const nearest = (axis: PlotPanel['x']) => axis.min + (0.5 / 150) * (axis.max - axis.min);
    const x0 = nearest(densityPanel.x);
    const y0 = nearest(densityPanel.y!);
    expect(bar.max).toBeCloseTo(-Math.log(2 * Math.PI) - (x0 * x0 + y0 * y0) / 2, 3);
    expect(bar.min).toBeCloseTo(bar.max - 8, 6);
    expect(pixel(img, ...at(densityPanel, 1, 1))[1]).toBeGreaterThan(pixel(img, ...at(densityPanel, 5, 5))[1] + 40);
    const barTop = pixel(img, bar.rect.left + 5, bar.rect.top);
    const barBottom = pixel(img, bar.rect.left + 5, bar.rect.top + bar.rect.height - 1);
    expect(barTop[0] > 200 && barTop[1] > 200 && barTop[2] < 100).toBe(true); // viridis' yellow
    expect(barBottom[0] < 100 && barBottom[1] < 40 && barBottom[2] > 60).toBe(true); // viridis' purple

    // Tick labels: round values in the data's units, drawn in the font where the axes put them.
    for (const panel of result.panels) {
      const { rect } = panel;
      expect(panel.x.ticks.length).toBeGreaterThanOrEqual(2);
      expect(panel.y!.ticks.length).toBeGreaterThanOrEqual(2);
      for (const tick of panel.x.ticks) {
        expect(Number(tick.label)).toBeCloseTo(tick.value, 9);
        expect(isDark(pixel(img, tick.pixel, rect.top + rect.height + 1))).toBe(true); // the tick mark
        expectLabel(img, tick, tick.pixel - Math.floor(Raster.textWidth(tick.label) / 2), rect.top + rect.height + 6);
      }
      for (const tick of panel.y!.ticks) expectLabel(img, tick, rect.left - 6 - Raster.textWidth(tick.label), tick.pixel - 3);
    }
    expect(bar.ticks.length).toBeGreaterThanOrEqual(2);
    for (const tick of bar.ticks) expectLabel(img, tick, bar.rect.left + bar.rect.width + 6, tick.pixel - 3);
    // The same options draw the same picture.
    expect(await renderPlot({ flow, data, samples, names: ['lon', 'lat'], title: 'test' })).toEqual(result.png);
  });

  test('3 columns: a scatter matrix of data over samples, histograms on the diagonal, ticks on the outer panels', async () => {
    const data = [...cluster(200, [0, 0, 0], 0.1), ...cluster(200, [10, 10, 10], 0.1)];
    const samples = cluster(300, [10, 0, 5], 0.1);
    const result = await renderPlotWithLayout({ data, samples, dim: 3, names: ['mpg', 'hp', 'weight'] });
    const img = decodePng(result.png);
    expect([img.width, img.height]).toEqual([result.width, result.height]);
    expect(result.panels).toHaveLength(9);
    const panel = (r: number, c: number) => result.panels[r * 3 + c];
    expect(panel(1, 1).kind).toBe('histogram');
    expect(panel(1, 0).kind).toBe('scatter');
    expect([panel(1, 0).x.column, panel(1, 0).y!.column]).toEqual([0, 1]);
    // Column 1 against column 0: data at (0, 0) and (10, 10), samples at (10, 0).
    expect(isDark(pixel(img, ...at(panel(1, 0), 0, 0)))).toBe(true);
    expect(isDark(pixel(img, ...at(panel(1, 0), 10, 10)))).toBe(true);
    expect(isOrange(pixel(img, ...at(panel(1, 0), 10, 0)))).toBe(true);
    expect(isWhite(pixel(img, ...at(panel(1, 0), 0, 10)))).toBe(true);
    // Transposed in the panel across the diagonal.
    expect(isOrange(pixel(img, ...at(panel(0, 1), 0, 10)))).toBe(true);
    // Column 2's histogram: data at 0 and 10 (grey bars from the bottom), samples at 5 (orange).
    const histogram = panel(2, 2);
    const column = (v: number) => histogram.rect.left + Math.floor(((v - histogram.x.min) / (histogram.x.max - histogram.x.min)) * histogram.rect.width);
    const bottom = histogram.rect.top + histogram.rect.height - 1;
    expect(pixel(img, column(0), bottom - 5)).toEqual([200, 200, 200]); // above the samples' zero line
    expect(isWhite(pixel(img, column(2.5), bottom - 20))).toBe(true);
    let orange = 0;
    for (let y = histogram.rect.top; y <= bottom; y++) if (isOrange(pixel(img, column(5), y))) orange++;
    expect(orange).toBeGreaterThan(5);
    // Ticks: x under the bottom row, y left of the first column, each label in the font.
    for (let c = 0; c < 3; c++) {
      const p = panel(2, c);
      for (const tick of p.x.ticks) expectLabel(img, tick, tick.pixel - Math.floor(Raster.textWidth(tick.label) / 2), p.rect.top + p.rect.height + 6);
      // No labels under the rows above.
      const above = panel(0, c);
      for (let x = above.rect.left; x < above.rect.left + above.rect.width; x++) expect(isWhite(pixel(img, x, above.rect.top + above.rect.height + 8))).toBe(true);
    }
    for (let r = 1; r < 3; r++) for (const tick of panel(r, 0).y!.ticks) expectLabel(img, tick, panel(r, 0).rect.left - 6 - Raster.textWidth(tick.label), tick.pixel - 3);
  });

  test('a model alone: its samples; a 1-d model: a histogram with its density curve', async () => {
    const flow2 = identityFlow(2);
    const alone = await renderPlotWithLayout({ flow: flow2, sampleCount: 5000, seed: 3 });
    expect(alone.panels.map((p) => p.kind)).toEqual(['samples', 'density']);
    const img2 = decodePng(alone.png);
    expect(isOrange(pixel(img2, ...at(alone.panels[0], 0, 0)))).toBe(true);

    const flow1 = identityFlow(1);
    const one = await renderPlotWithLayout({ flow: flow1, data: [[0], [0.1], [-0.2], [1], [-1]] });
    expect(one.panels.map((p) => p.kind)).toEqual(['histogram']);
    const img1 = decodePng(one.png);
    let blue = 0;
    for (let i = 0; i < img1.rgb.length; i += 3) if (img1.rgb[i] === 31 && img1.rgb[i + 1] === 119 && img1.rgb[i + 2] === 180) blue++;
    expect(blue).toBeGreaterThan(100);
  });

  test('bad options are TypeErrors and RangeErrors that say what was expected', async () => {
    const flow = identityFlow(3);
    await expect(renderPlot({})).rejects.toThrow(/give options.dim, or data as an array of rows/);
    await expect(renderPlot({ dim: 2 })).rejects.toThrow(/nothing to draw/);
    await expect(renderPlot({ flow, columns: [0, 3] })).rejects.toThrow(/Expected an integer in \[0, 2\] for options.columns\[1\]/);
    await expect(renderPlot({ flow, columns: [1, 1] })).rejects.toThrow(/columns without repeats/);
    await expect(renderPlot({ flow, names: ['a'] })).rejects.toThrow(/Expected 3 \(one name per column\) for options.names.length/);
    await expect(renderPlot({ flow, data: [[1, 2]] })).rejects.toThrow(/options.data\[0\].length/);
    await expect(renderPlot({ flow: {} as Flow })).rejects.toThrow(/Expected a Flow for options.flow/);
    await expect(renderPlot({ flow, panelSize: 5 })).rejects.toThrow(/for options.panelSize/);
    await expect(renderPlot({ flow, colums: [0] } as object)).rejects.toThrow(/Unknown option "colums"/);
  });
});
