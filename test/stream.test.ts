// flow.sampleStream: chunks of one (seed, row)-addressed stream, as an async iterable and a Readable.
import { createFlow, createIAF, createMAF, iaf, maf, reverse, SampleStream, standardNormal } from '../src';

const flow = createIAF({ dim: 3, hidden: [16], layers: 2, seed: 7 });

async function collect(stream: AsyncIterable<Float32Array>): Promise<Float32Array[]> {
  const chunks: Float32Array[] = [];
  for await (const chunk of stream) chunks.push(chunk);
  return chunks;
}

function concat(chunks: Float32Array[]): Float32Array {
  const out = new Float32Array(chunks.reduce((sum, c) => sum + c.length, 0));
  let at = 0;
  for (const c of chunks) (out.set(c, at), (at += c.length));
  return out;
}

const bytes = (x: Float32Array) => Buffer.from(x.buffer, x.byteOffset, x.byteLength);

test('the chunks, concatenated, are the bytes of one sample call, for chunk sizes that do and do not divide n', async () => {
  for (const chunkRows of [1, 7, 250, 1000, 4096]) {
    const stream = flow.sampleStream(1000, { seed: 42, firstRow: 13, chunkRows });
    expect(stream).toBeInstanceOf(SampleStream);
    const chunks = await collect(stream);
    expect(chunks.length).toBe(Math.ceil(1000 / chunkRows));
    expect(chunks.slice(0, -1).every((c) => c.length === chunkRows * 3)).toBe(true);
    expect(bytes(concat(chunks)).equals(bytes(await flow.sample(1000, { seed: 42, firstRow: 13 })))).toBe(true);
  }
});

test('chunk k is sample(chunkRows, { seed, firstRow: firstRow + k * chunkRows }) (a sequential-direction flow too)', async () => {
  const maf = createMAF({ dim: 2, hidden: [8], layers: 2, seed: 1 });
  const chunks = await collect(maf.sampleStream(50, { seed: 5, firstRow: 100, chunkRows: 20 }));
  for (let k = 0; k < chunks.length; k++) {
    const rows = Math.min(20, 50 - k * 20);
    expect(bytes(chunks[k]).equals(bytes(await maf.sample(rows, { seed: 5, firstRow: 100 + k * 20 })))).toBe(true);
  }
});

test('without a seed, one random seed serves every chunk and is readable from the stream', async () => {
  const stream = flow.sampleStream(300, { chunkRows: 64 });
  expect(Number.isSafeInteger(stream.seed)).toBe(true);
  const once = concat(await collect(stream));
  expect(bytes(once).equals(bytes(await flow.sample(300, { seed: stream.seed })))).toBe(true);
  // Iterating again draws the same rows: the stream is a description, not a cursor.
  expect(bytes(concat(await collect(stream))).equals(bytes(once))).toBe(true);
});

test('toReadable gives the float32 bytes (little-endian) of the same rows, with backpressure', async () => {
  const stream = flow.sampleStream(5000, { seed: 3, chunkRows: 512 });
  const readable = stream.toReadable({ highWaterMark: 1024 });
  const pieces: Buffer[] = [];
  for await (const piece of readable) pieces.push(piece as Buffer);
  expect(Buffer.concat(pieces).equals(bytes(await flow.sample(5000, { seed: 3 })))).toBe(true);
});

test('bad arguments are TypeErrors and RangeErrors that name what was expected', () => {
  expect(() => flow.sampleStream(0)).toThrow(/Expected an integer in \[1, .*\] for n but received 0/);
  expect(() => flow.sampleStream(10, { chunkRows: 0 })).toThrow(/for options.chunkRows but received 0/);
  expect(() => flow.sampleStream(10, { firstRow: 3 })).toThrow(/firstRow needs options.seed/);
  expect(() => flow.sampleStream(10, { seed: -1 })).toThrow(/for options.seed/);
  expect(() => flow.sampleStream(10, { chunk: 5 } as never)).toThrow(/Unknown option "chunk"/);
  expect(() => flow.sampleStream(10, { signal: {} as AbortSignal })).toThrow(/Expected an AbortSignal for options.signal/);
});

test('an aborted signal stops the stream with an AbortError; breaking out of the loop stops the chunk computed ahead', async () => {
  const controller = new AbortController();
  const big = flow.sampleStream(2_000_000, { seed: 1, chunkRows: 100_000, signal: controller.signal });
  let seen = 0;
  await expect(
    (async () => {
      for await (const chunk of big) {
        seen += chunk.length / 3;
        controller.abort();
      }
    })(),
  ).rejects.toThrow(/aborted/);
  expect(seen).toBe(100_000);
  let count = 0;
  for await (const chunk of flow.sampleStream(1_000_000, { seed: 1, chunkRows: 1000 })) {
    expect(chunk.length).toBe(3000);
    if (++count === 3) break;
  }
  expect(count).toBe(3);
});

test('destroying the Readable cancels it and it reports no error', async () => {
  const readable = flow.sampleStream(10_000_000, { seed: 2, chunkRows: 100_000 }).toReadable();
  const first = await new Promise<Buffer>((resolve) => readable.once('data', resolve));
  expect(first.length).toBe(100_000 * 3 * 4);
  readable.destroy();
  await new Promise((resolve) => readable.once('close', resolve));
  expect(readable.destroyed).toBe(true);
});

describe('conditional flows: the context, one row for all or one row per sample', () => {
  // Both directions: an IAF samples in one pass, a MAF sequentially; both context forms.
  const conditional = createFlow({
    dim: 3,
    context: 4,
    layers: [iaf({ hidden: [16] }), reverse(), maf({ hidden: [16], activation: 'tanh', contextForm: 'activated' })],
    seed: 5,
  });
  const perRow = standardNormal(1000, 4, { seed: 8 });
  const oneRow = [0.5, -1, 2, 0.25];

  test('one row: every chunk gets it, and the chunks are the bytes of sample(n, { context })', async () => {
    for (const chunkRows of [1, 7, 256, 1000]) {
      const chunks = await collect(conditional.sampleStream(1000, { seed: 4, firstRow: 3, chunkRows, context: oneRow }));
      expect(bytes(concat(chunks)).equals(bytes(await conditional.sample(1000, { seed: 4, firstRow: 3, context: oneRow })))).toBe(true);
    }
    // As [[...]] too.
    const nested = concat(await collect(conditional.sampleStream(100, { seed: 4, chunkRows: 30, context: [oneRow] })));
    expect(bytes(nested).equals(bytes(await conditional.sample(100, { seed: 4, context: oneRow })))).toBe(true);
  });

  test('n rows: chunk k gets its own rows, sample i is drawn given row i', async () => {
    for (const chunkRows of [1, 7, 256, 1000]) {
      const chunks = await collect(conditional.sampleStream(1000, { seed: 4, chunkRows, context: perRow }));
      expect(bytes(concat(chunks)).equals(bytes(await conditional.sample(1000, { seed: 4, context: perRow })))).toBe(true);
    }
    // Not the broadcast answer: the rows matter.
    const broadcast = await conditional.sample(1000, { seed: 4, context: perRow.subarray(0, 4) });
    expect(bytes(concat(await collect(conditional.sampleStream(1000, { seed: 4, context: perRow })))).equals(bytes(broadcast))).toBe(false);
    // number[][] rows, through the Readable.
    const rows = Array.from({ length: 50 }, (_, i) => Array.from(perRow.subarray(i * 4, i * 4 + 4)));
    const pieces: Buffer[] = [];
    for await (const piece of conditional.sampleStream(50, { seed: 2, chunkRows: 8, context: rows }).toReadable()) pieces.push(piece as Buffer);
    expect(Buffer.concat(pieces).equals(bytes(await conditional.sample(50, { seed: 2, context: perRow.subarray(0, 200) })))).toBe(true);
  });

  test('the context is copied when the stream is made: changing the array later changes nothing', async () => {
    const context = Float32Array.from(perRow.subarray(0, 400));
    const stream = conditional.sampleStream(100, { seed: 6, chunkRows: 16, context });
    const before = concat(await collect(stream));
    context.fill(3);
    expect(bytes(concat(await collect(stream))).equals(bytes(before))).toBe(true);
  });

  test('a missing, extra or wrongly sized context is refused naming the width', () => {
    expect(() => conditional.sampleStream(10, { seed: 1 })).toThrow(/conditional: options\.context is required, one row of 4 context values .* or 10 rows/);
    expect(() => conditional.sampleStream(10, { seed: 1, context: [1, 2, 3] })).toThrow(/one row of 4 context values .* or 10 rows of them/);
    expect(() => conditional.sampleStream(10, { seed: 1, context: new Float32Array(4 * 9) })).toThrow(/options\.context\.length.*received 36/);
    expect(() => conditional.sampleStream(2, { seed: 1, context: [1, 2, 3, NaN] })).toThrow(/Expected a finite number for options\.context\[0\]\[3\] but received NaN/);
    expect(() => flow.sampleStream(10, { seed: 1, context: [1, 2, 3, 4] })).toThrow(/not conditional .* takes no context/);
  });
});
