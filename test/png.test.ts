// The demo's PNG writer (src/png.ts): CRC-32, chunk layout, and the image data round trip
// through zlib.
import { inflateSync } from 'node:zlib';
import { crc32, encodePng, pngChunk, PNG_SIGNATURE, Raster } from '../src/png';

/** The chunks of a PNG: type, data, and whether the stored CRC matches. */
function chunks(png: Buffer): { type: string; data: Buffer; crcOk: boolean }[] {
  const out = [];
  let at = 8;
  while (at < png.length) {
    const length = png.readUInt32BE(at);
    const type = png.toString('ascii', at + 4, at + 8);
    const data = png.subarray(at + 8, at + 8 + length);
    const crc = png.readUInt32BE(at + 8 + length);
    out.push({ type, data, crcOk: crc === crc32(png.subarray(at + 4, at + 8 + length)) });
    at += 12 + length;
  }
  return out;
}

describe('crc32', () => {
  test('matches the standard check values', () => {
    expect(crc32(Buffer.from('123456789'))).toBe(0xcbf43926); // the CRC-32 check value
    expect(crc32(Buffer.from('IEND'))).toBe(0xae426082); // every PNG ends with these bytes
    expect(crc32(new Uint8Array(0))).toBe(0);
  });

  test('continues across pieces', () => {
    const whole = Buffer.from('The quick brown fox jumps over the lazy dog');
    expect(crc32(whole)).toBe(0x414fa339);
    expect(crc32(whole.subarray(10), crc32(whole.subarray(0, 10)))).toBe(0x414fa339);
  });
});

describe('encodePng', () => {
  test('IEND is the 12 bytes every PNG ends with', () => {
    expect(pngChunk('IEND', new Uint8Array(0))).toEqual(Buffer.from([0, 0, 0, 0, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82]));
  });

  test('signature, IHDR, IDAT and IEND, with valid CRCs; the pixels come back through zlib', () => {
    const width = 3;
    const height = 2;
    const rgb = Uint8Array.from({ length: width * height * 3 }, (_, i) => (i * 37) % 256);
    const png = encodePng(width, height, rgb);
    expect(png.subarray(0, 8)).toEqual(PNG_SIGNATURE);
    const list = chunks(png);
    expect(list.map((c) => c.type)).toEqual(['IHDR', 'IDAT', 'IEND']);
    expect(list.every((c) => c.crcOk)).toBe(true);
    const ihdr = list[0].data;
    expect([ihdr.readUInt32BE(0), ihdr.readUInt32BE(4), ihdr[8], ihdr[9], ihdr[10], ihdr[11], ihdr[12]]).toEqual([width, height, 8, 2, 0, 0, 0]);
    const raw = inflateSync(list[1].data);
    expect(raw.length).toBe((width * 3 + 1) * height);
    for (let y = 0; y < height; y++) {
      expect(raw[y * (width * 3 + 1)]).toBe(0); // filter type none
      expect(raw.subarray(y * (width * 3 + 1) + 1, (y + 1) * (width * 3 + 1))).toEqual(Buffer.from(rgb.subarray(y * width * 3, (y + 1) * width * 3)));
    }
  });

  test('refuses a wrong byte count or size', () => {
    expect(() => encodePng(2, 2, new Uint8Array(11))).toThrow(RangeError);
    expect(() => encodePng(0, 2, new Uint8Array(0))).toThrow(RangeError);
    expect(() => pngChunk('IDATA', new Uint8Array(0))).toThrow(RangeError);
  });
});

describe('Raster', () => {
  test('draws rectangles and text inside its bounds only, and encodes', () => {
    const img = new Raster(20, 10, [255, 255, 255]);
    img.fillRect(-5, -5, 8, 8, [255, 0, 0]); // clipped to (0..2, 0..2)
    img.setPixel(100, 100, [0, 0, 0]); // ignored
    expect(Array.from(img.pixels.subarray(0, 3))).toEqual([255, 0, 0]);
    expect(Array.from(img.pixels.subarray(3 * 3, 3 * 3 + 3))).toEqual([255, 255, 255]); // x = 3
    img.text(4, 1, 'A1', [0, 0, 0]);
    let dark = 0;
    for (let i = 0; i < img.pixels.length; i += 3) if (img.pixels[i] === 0 && img.pixels[i + 1] === 0) dark++;
    expect(dark).toBeGreaterThan(10);
    expect(Raster.textWidth('A1')).toBe(11);
    const raw = inflateSync(chunks(img.encode())[1].data);
    expect(raw.length).toBe((20 * 3 + 1) * 10);
  });
});
