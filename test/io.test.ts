// saveFlow / loadFlow: bit-exact round trips, clear refusals of bad files, atomic saves.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createFlow, iaf, importTorch, loadFlow, maf, permute, reverse, saveFlow } from '../src/index';
import { encodeFlow } from '../src/io';
import { fuzzModelFiles, HOSTILE_CASES, loadHostileCases } from './fuzz';
import { decodeSafetensors, encodeSafetensors, __testing } from '../src/safetensors';

// Sanitized builds run slower: scripts/test-asan.js sets this factor for the explicit time limits.
const TIME_SCALE = Number(process.env.IAFLOW_TEST_TIME_SCALE) || 1;

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'iaflow-io-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function sampleFlow() {
  const flow = createFlow({
    dim: 5,
    seed: 7,
    layers: [iaf({ hidden: [16, 12], activation: 'tanh', scale: 'gated' }), permute({ seed: 3 }), maf({ hidden: [9], order: [4, 2, 0, 1, 3], scale: 'exp' }), reverse(), iaf({ activation: 'elu' })],
  });
  // Move away from the initialisation so the round trip is not trivially the same init.
  const params = flow.getParameters();
  for (const p of Object.values(params)) for (let i = 0; i < p.length; i++) p[i] += Math.sin(i * 1.7) * 0.1;
  flow.setParameters(params);
  return flow;
}

test('save/load round trip is bit-exact: config, parameters and outputs', async () => {
  const flow = sampleFlow();
  const file = join(dir, 'model.safetensors');
  await saveFlow(flow, file);
  const loaded = await loadFlow(file);
  expect(loaded.config).toEqual(flow.config);
  const a = flow.getParameters();
  const b = loaded.getParameters();
  expect(Object.keys(b).sort()).toEqual(Object.keys(a).sort());
  for (const name of Object.keys(a)) expect(Buffer.from(b[name].buffer).equals(Buffer.from(a[name].buffer))).toBe(true);
  const x1 = flow.sampleWithLogProbSync(200, { seed: 3 });
  const x2 = loaded.sampleWithLogProbSync(200, { seed: 3 });
  expect(Array.from(x2.x)).toEqual(Array.from(x1.x));
  expect(Array.from(x2.logProb)).toEqual(Array.from(x1.logProb));
});

test('the file is standard safetensors: F32 tensors named as getParameters, config in __metadata__', () => {
  const flow = sampleFlow();
  const decoded = decodeSafetensors(encodeFlow(flow));
  expect(decoded.metadata.format).toBe('iaflow');
  expect(JSON.parse(decoded.metadata.iaflow)).toEqual(flow.config);
  const shapes = flow.parameterShapes();
  for (const [name, tensor] of decoded.tensors) {
    expect(tensor.dtype).toBe('F32');
    expect(tensor.shape).toEqual(shapes[name]);
  }
  expect(decoded.tensors.size).toBe(Object.keys(shapes).length);
});

describe('bad files are refused with a clear error naming the file', () => {
  const write = (name: string, bytes: Uint8Array) => {
    const file = join(dir, name);
    writeFileSync(file, bytes);
    return file;
  };
  const good = () => encodeFlow(sampleFlow());

  test('truncated', async () => {
    const bytes = good();
    const file = write('truncated.safetensors', bytes.subarray(0, bytes.length - 10));
    await expect(loadFlow(file)).rejects.toThrow(/truncated\.safetensors: .*(outside|beyond|past|end)/);
  });

  test('corrupted header length', async () => {
    const bytes = Buffer.from(good());
    bytes.writeUInt32LE(0xfffffff0, 0);
    await expect(loadFlow(write('corrupt.safetensors', bytes))).rejects.toThrow(/corrupt\.safetensors: .*header/);
  });

  test('foreign file (not safetensors at all)', async () => {
    await expect(loadFlow(write('foreign.bin', Buffer.from('PK\u0003\u0004 this is a zip file, not a model')))).rejects.toThrow(/foreign\.bin: /);
  });

  test('safetensors without an iaflow config (e.g. a PyTorch state dict)', async () => {
    const bytes = readFileSync(join(__dirname, 'fixtures/torch/zuko-maf-d3.safetensors'));
    await expect(loadFlow(write('torch.safetensors', bytes))).rejects.toThrow(/torch\.safetensors: not an iaflow model file/);
  });

  const rewrite = (mutate: (tensors: Map<string, import('../src/safetensors').Tensor>, meta: Record<string, string>) => void) => {
    const decoded = decodeSafetensors(good());
    mutate(decoded.tensors, decoded.metadata);
    return encodeSafetensors(decoded.tensors, decoded.metadata);
  };

  test('config that does not match the tensors', async () => {
    const bytes = rewrite((_, meta) => {
      const config = JSON.parse(meta.iaflow);
      config.layers[0].hidden = [17, 12];
      config.layers[0].hiddenDegrees[0].push(1);
      meta.iaflow = JSON.stringify(config);
    });
    await expect(loadFlow(write('shape.safetensors', bytes))).rejects.toThrow(/shape\.safetensors: tensor layers\.0\.hidden\.0\.weight has shape \[16, 5\], expected \[17, 5\]/);
  });

  test('bad config values', async () => {
    type RawConfig = { formatVersion: number; dim: number; layers: Record<string, unknown>[] };
    const cases: [string, (c: RawConfig) => void, RegExp][] = [
      ['version', (c) => (c.formatVersion = 99), /formatVersion/],
      ['degrees', (c) => (c.layers[0].inputDegrees = [1, 1, 2, 3, 4]), /inputDegrees/],
      ['permutation', (c) => (c.layers[1].permutation = [0, 1, 2, 3, 9]), /permutation/],
      ['kind', (c) => (c.layers[0].type = 'coupling'), /type/],
      ['activation', (c) => (c.layers[0].activation = 'gelu'), /activation/],
      ['dim', (c) => (c.dim = -5), /dim/],
    ];
    for (const [name, mutate, pattern] of cases) {
      const bytes = rewrite((_, meta) => {
        const config = JSON.parse(meta.iaflow);
        mutate(config);
        meta.iaflow = JSON.stringify(config);
      });
      await expect(loadFlow(write(`${name}.safetensors`, bytes))).rejects.toThrow(pattern);
    }
    const notJson = rewrite((_, meta) => (meta.iaflow = '{"dim": 5,'));
    await expect(loadFlow(write('json.safetensors', notJson))).rejects.toThrow(/json\.safetensors: bad config/);
  });

  test('missing, extra, wrongly typed or non-finite tensors', async () => {
    const missing = rewrite((t) => t.delete('layers.2.shift.bias'));
    await expect(loadFlow(write('missing.safetensors', missing))).rejects.toThrow(/missing tensor layers\.2\.shift\.bias/);
    const extra = rewrite((t) => t.set('layers.9.hidden.0.weight', { dtype: 'F32', shape: [1], data: new Float32Array(1) }));
    await expect(loadFlow(write('extra.safetensors', extra))).rejects.toThrow(/unexpected tensor layers\.9/);
    const f64 = rewrite((t) => t.set('layers.0.shift.bias', { dtype: 'F64', shape: [5], data: new Float64Array(5) }));
    await expect(loadFlow(write('f64.safetensors', f64))).rejects.toThrow(/dtype F64, expected F32/);
    const nan = rewrite((t) => ((t.get('layers.0.hidden.1.weight')!.data as Float32Array)[3] = NaN));
    await expect(loadFlow(write('nan.safetensors', nan))).rejects.toThrow(/non-finite value \(NaN\) at index 3/);
  });

  test('a missing file', async () => {
    await expect(loadFlow(join(dir, 'nope.safetensors'))).rejects.toThrow(/nope\.safetensors/);
  });
});

test('a failed save leaves the previous file intact and no temp file behind', async () => {
  const file = join(dir, 'atomic.safetensors');
  const first = sampleFlow();
  await saveFlow(first, file);
  const before = readFileSync(file);
  const second = createFlow({ dim: 2, seed: 1, layers: [maf()] });
  __testing.hooks.afterTempWrite = async () => {
    throw new Error('disk full (simulated)');
  };
  try {
    await expect(saveFlow(second, file)).rejects.toThrow(/disk full/);
  } finally {
    __testing.hooks.afterTempWrite = undefined;
  }
  expect(readFileSync(file).equals(before)).toBe(true);
  expect(readdirSync(dir).filter((f) => f.startsWith('atomic') && f !== 'atomic.safetensors')).toEqual([]);
  expect((await loadFlow(file)).config).toEqual(first.config);
});

test('saveFlow validates its arguments', async () => {
  await expect(saveFlow({} as never, join(dir, 'x'))).rejects.toThrow(/Expected a Flow for flow/);
  await expect(saveFlow(sampleFlow(), '' as never)).rejects.toThrow(/Expected a file path string for path/);
  await expect(loadFlow(42 as never)).rejects.toThrow(/Expected a file path string for path/);
});

describe('importTorch: MAFs trained in PyTorch (zuko, nflows)', () => {
  const fixtures = join(__dirname, 'fixtures/torch');
  const cases = [
    ['zuko-maf-d3', 'zuko-maf'],
    ['zuko-maf-d5', 'zuko-maf'],
    ['nflows-maf-d4', 'nflows-maf'],
    ['nflows-maf-d2-plain', 'nflows-maf'],
  ] as const;

  test.each(cases)('%s reproduces the log-densities and latents PyTorch computed', async (name, from) => {
    const flow = await importTorch(join(fixtures, `${name}.safetensors`), { from });
    const reference = JSON.parse(readFileSync(join(fixtures, `${name}.json`), 'utf8')) as {
      inputs: number[][];
      log_prob: number[];
      noise: number[][];
    };
    const logProb = await flow.logProb(reference.inputs);
    reference.log_prob.forEach((expected, i) => expect(Math.abs(logProb[i] - expected)).toBeLessThan(1e-4 + 1e-5 * Math.abs(expected)));
    const { z } = await flow.inverse(reference.inputs);
    reference.noise.flat().forEach((expected, i) => expect(Math.abs(z[i] - expected)).toBeLessThan(1e-4 * (1 + Math.abs(expected))));
    // Sampling runs these MAFs' sequential direction: it must invert the density direction.
    const { x } = await flow.forward(z);
    reference.inputs.flat().forEach((expected, i) => expect(Math.abs(x[i] - expected)).toBeLessThan(1e-3 * (1 + Math.abs(expected))));
    // And the imported flow saves and loads as any other.
    const file = join(dir, `${name}-imported.safetensors`);
    await saveFlow(flow, file);
    expect(Array.from((await loadFlow(file)).logProbSync(reference.inputs))).toEqual(Array.from(logProb));
  });

  test('the residual nflows MAF maps to residual layers, zuko orders to input degrees', async () => {
    const nflows = await importTorch(join(fixtures, 'nflows-maf-d4.safetensors'), { from: 'nflows-maf' });
    expect(nflows.config.layers.map((l) => l.type)).toEqual(['maf', 'permutation', 'maf', 'permutation', 'maf', 'permutation']);
    expect(nflows.config.layers[0]).toMatchObject({ residual: true, hidden: [16, 16, 16, 16, 16], scale: 'softplus' });
    const zuko = await importTorch(join(fixtures, 'zuko-maf-d3.safetensors'), { from: 'zuko-maf', activation: 'relu' });
    // zuko's transforms 0, 1 have orders [0,1,2], [2,1,0]; iaflow lists them latent first.
    expect(zuko.config.layers.map((l) => (l.type === 'maf' ? l.inputDegrees : []))).toEqual([[3, 2, 1], [1, 2, 3]]);
  });

  describe('refusals', () => {
    const fixture = (name: string) => decodeSafetensors(readFileSync(join(fixtures, `${name}.safetensors`)));
    const save = (name: string, tensors: Map<string, import('../src/safetensors').Tensor>) => {
      const file = join(dir, name);
      writeFileSync(file, encodeSafetensors(tensors));
      return file;
    };

    test('the wrong library', async () => {
      await expect(importTorch(join(fixtures, 'zuko-maf-d3.safetensors'), { from: 'nflows-maf' })).rejects.toThrow(/not an nflows MAF state dict/);
      await expect(importTorch(join(fixtures, 'nflows-maf-d4.safetensors'), { from: 'zuko-maf' })).rejects.toThrow(/not a zuko MAF state dict/);
    });

    test('a mask that no MADE degree assignment gives', async () => {
      const { tensors } = fixture('zuko-maf-d3');
      const mask = tensors.get('transform.transforms.0.hyper.2.mask')!.data as Uint8Array;
      const flipped = mask.findIndex((v) => v === 0);
      mask[flipped] = 1;
      const file = save('bad-mask.safetensors', tensors);
      await expect(importTorch(file, { from: 'zuko-maf' })).rejects.toThrow(/bad-mask\.safetensors: transform\.transforms\.0: hidden layer 1's mask is not a MADE mask/);
    });

    test('missing, unexpected or non-finite tensors, and a non-standard base', async () => {
      const missing = fixture('nflows-maf-d2-plain').tensors;
      missing.delete('_transform._transforms.3.autoregressive_net.final_layer.bias');
      await expect(importTorch(save('missing.safetensors', missing), { from: 'nflows-maf' })).rejects.toThrow(/missing tensor _transform\._transforms\.3\.autoregressive_net\.final_layer\.bias/);
      const extra = fixture('zuko-maf-d3').tensors;
      extra.set('transform.context.weight', { dtype: 'F32', shape: [1], data: new Float32Array(1) });
      await expect(importTorch(save('extra.safetensors', extra), { from: 'zuko-maf' })).rejects.toThrow(/unexpected tensor transform\.context\.weight/);
      const nan = fixture('zuko-maf-d3').tensors;
      (nan.get('transform.transforms.1.hyper.0.weight')!.data as Float32Array)[2] = NaN;
      await expect(importTorch(save('nan.safetensors', nan), { from: 'zuko-maf' })).rejects.toThrow(/non-finite value \(NaN\)/);
      const shifted = fixture('zuko-maf-d3').tensors;
      (shifted.get('base.loc')!.data as Float32Array)[0] = 0.5;
      await expect(importTorch(save('base.safetensors', shifted), { from: 'zuko-maf' })).rejects.toThrow(/not the standard normal/);
    });

    test('bad arguments', async () => {
      await expect(importTorch(join(fixtures, 'zuko-maf-d3.safetensors'), { from: 'pyro-iaf' as never })).rejects.toThrow(/Expected one of 'zuko-maf', 'nflows-maf', 'sbi-maf' for options\.from/);
      await expect(importTorch(join(fixtures, 'zuko-maf-d3.safetensors'), { from: 'zuko-maf', actvation: 'relu' } as never)).rejects.toThrow(/Unknown option "actvation"/);
    });
  });
});

test('fuzz: mutated model files load and run, or are refused with ModelFileError (seeded, bounded)', async () => {
  const report = await fuzzModelFiles(12345, 4000, 1500);
  expect(report.failures).toEqual([]);
  expect(report.refused).toBeGreaterThan(report.runs / 2);
  expect(report.runs).toBeGreaterThan(200);
});

describe('hostile model files (issue 11) are refused quickly with a ModelFileError naming the limit', () => {
  // The files are generated here, into a temp dir; none is stored in the repository.
  const expected: Record<string, RegExp> = {
    '20 MB of nested arrays in __metadata__': /deep\.safetensors: header nests deeper than 8 levels \(under "__metadata__"\)/,
    '98 MB header of nested arrays': /deep98\.safetensors: header nests deeper than 8 levels/,
    '2M keys in __metadata__': /keys\.safetensors: header entry "__metadata__" has more than 4096 keys/,
    '98 MB header: one long __metadata__ string': /long-string\.safetensors: header of 98000101 bytes passes its size limit at byte 12583168, with 1 entries so far \(limit: 12582912 bytes \+ 256 per entry \+ the 0-byte data section\)/,
    '50 MB tensor name': /huge-name\.safetensors: header of \d+ bytes passes its size limit/,
    '1 MB tensor name, otherwise valid (unexpected tensor)': /long-name\.safetensors: unexpected tensor n{120}\.\.\. \(1000000 characters\): the config has no such parameter$/,
    'a shape of 5M dims': /rank\.safetensors: header holds more than 16400 JSON values in its first 1 entries/,
    '1M empty arrays side by side': /arrays\.safetensors: header holds more than 16400 JSON values/,
    '1M tensor entries (more than any flow has)': /entries\.safetensors: header has more than 540672 tensor entries/,
    'config JSON nested 1M deep': /config-deep\.safetensors: bad config in __metadata__\.iaflow: it nests deeper than 8/,
    'config JSON of 1M empty arrays': /config-arrays\.safetensors: bad config in __metadata__\.iaflow: it holds more arrays and objects than 278530/,
    'a sparse 2 GiB file (past the size limit)': /sparse\.safetensors: file is 2147483648 bytes, more than the 1173741832-byte limit/,
    '/dev/zero': /^\/dev\/zero: is a character device; a model file must be a regular file$/,
    '/dev/urandom': /^\/dev\/urandom: is a character device/,
    'a FIFO with no writer': /model\.fifo: is a FIFO \(named pipe\); a model file must be a regular file/,
    'a directory': /folder\.safetensors: is a directory; a model file must be a regular file|folder\.safetensors: cannot read the file \(EISDIR/,
  };

  test('every targeted case has an expected refusal', () => {
    expect(HOSTILE_CASES.map((c) => c.name).sort()).toEqual(Object.keys(expected).sort());
  });

  for (const hostile of HOSTILE_CASES) {
    // Cases this platform cannot make (no /dev/zero, no mkfifo) are skipped, saying why.
    const platformLacks =
      (hostile.name.startsWith('/dev/') && !existsSync(hostile.name) && `no ${hostile.name} on this platform`) ||
      (hostile.name.includes('FIFO') && (process.platform === 'win32' || spawnSync('mkfifo', ['--version']).error !== undefined) && 'no mkfifo on this platform');
    (platformLacks ? test.skip : test)(`${hostile.name}${platformLacks ? ` (skipped: ${platformLacks})` : ''}`, async () => {
      const [outcome] = await loadHostileCases(dir, [hostile]);
      expect(outcome.message).toMatch(/^ModelFileError: /);
      expect(outcome.message.replace(/^ModelFileError: /, '')).toMatch(expected[hostile.name]);
      expect(outcome.message.length).toBeLessThan(600);
      // Generous for a loaded machine: before the fix these took 15 s to forever.
      expect(outcome.ms).toBeLessThan(2000);
    });
  }

  test('importTorch reads through the same checks', async () => {
    if (existsSync('/dev/zero')) await expect(importTorch('/dev/zero', { from: 'zuko-maf' })).rejects.toThrow(/^\/dev\/zero: is a character device/);
    await expect(importTorch(dir, { from: 'zuko-maf' })).rejects.toThrow(/is a directory|EISDIR/);
  });

  test('tensor names from the file are shortened in messages (loadFlow and importTorch)', async () => {
    const name = `layers.0.${'x'.repeat(1_000_000)}`;
    const decoded = decodeSafetensors(encodeFlow(sampleFlow()));
    decoded.tensors.set(name, { dtype: 'F32', shape: [1], data: new Float32Array(1) });
    const file = join(dir, 'long-extra.safetensors');
    writeFileSync(file, encodeSafetensors(decoded.tensors, decoded.metadata));
    const error = (await loadFlow(file).catch((e: Error) => e)) as Error;
    expect(error.message).toMatch(/long-extra\.safetensors: unexpected tensor layers\.0\.x{111}\.\.\. \(1000009 characters\): the config has no such parameter/);
    expect(error.message.length).toBeLessThan(400);

    const torch = decodeSafetensors(readFileSync(join(__dirname, 'fixtures/torch/zuko-maf-d3.safetensors')));
    torch.tensors.set(`transform.${'y'.repeat(1_000_000)}`, { dtype: 'F32', shape: [1], data: new Float32Array(1) });
    const torchFile = join(dir, 'torch-long.safetensors');
    writeFileSync(torchFile, encodeSafetensors(torch.tensors, torch.metadata));
    const torchError = (await importTorch(torchFile, { from: 'zuko-maf' }).catch((e: Error) => e)) as Error;
    expect(torchError.message).toMatch(/unexpected tensor transform\.y+\.\.\. \(1000010 characters\): not part of the model/);
    expect(torchError.message.length).toBeLessThan(400);
  });
});

describe('finite but huge weights (issue 11)', () => {
  test('saveFlow, loadFlow and importTorch warn once per process each about weights that overflow float32', async () => {
    const emitted: string[] = [];
    const spy = jest.spyOn(process, 'emitWarning').mockImplementation(((warning: string | Error, options?: { code?: string }) => {
      if (options?.code === 'IAFLOW_HUGE_WEIGHTS') emitted.push(String(warning));
    }) as typeof process.emitWarning);
    try {
      // Weights of a trained size say nothing.
      const saneFile = join(dir, 'sane.safetensors');
      await saveFlow(sampleFlow(), saneFile);
      await loadFlow(saneFile);
      expect(emitted).toEqual([]);

      // 3e38 is a finite float32, so it is accepted, but the products overflow: NaN samples.
      const flow = sampleFlow();
      const params = flow.getParameters();
      for (const value of Object.values(params)) value.forEach((_, i) => (value[i] = i % 2 ? -3e38 : 3e38));
      flow.setParameters(params);
      expect(flow.sampleSync(4, { seed: 1 }).some((v) => !Number.isFinite(v))).toBe(true);
      const file = join(dir, 'huge.safetensors');
      await saveFlow(flow, file);
      const loaded = await loadFlow(file);
      expect(loaded.sampleSync(4, { seed: 1 }).some((v) => !Number.isFinite(v))).toBe(true);
      // Once per process for each: a loop of checkpoint saves does not repeat it.
      await saveFlow(loaded, file);
      await loadFlow(file);
      expect(emitted).toEqual([
        expect.stringMatching(/^setParameters: a weight of magnitude 3\.00e\+38 \(over 1e\+18\) makes float32 products overflow/),
        expect.stringMatching(/^saveFlow: a weight of magnitude 3\.00e\+38 .* NaN or infinite\. saveFlow gives this warning once per process\.$/),
        expect.stringMatching(/^loadFlow: a weight of magnitude 3\.00e\+38 .* NaN or infinite\. loadFlow gives this warning once per process\.$/),
      ]);

      const torch = decodeSafetensors(readFileSync(join(__dirname, 'fixtures/torch/zuko-maf-d3.safetensors')));
      const [name, tensor] = [...torch.tensors].find(([n]) => n.endsWith('.weight'))!;
      torch.tensors.set(name, { ...tensor, data: (tensor.data as Float32Array).map(() => 1e30) });
      const torchFile = join(dir, 'torch-huge.safetensors');
      writeFileSync(torchFile, encodeSafetensors(torch.tensors, torch.metadata));
      await importTorch(torchFile, { from: 'zuko-maf' });
      expect(emitted.slice(3)).toEqual([expect.stringMatching(/^importTorch: a weight of magnitude 1\.00e\+30 /)]);
    } finally {
      spy.mockRestore();
    }
  });
});

describe('saving (issue 11)', () => {
  test('names of 250 and 255 bytes save and load', async () => {
    const flow = sampleFlow();
    for (const length of [250, 255]) {
      const name = `${'f'.repeat(length - '.safetensors'.length)}.safetensors`;
      const file = join(dir, name);
      await saveFlow(flow, file);
      expect((await loadFlow(file)).config).toEqual(flow.config);
    }
    expect(readdirSync(dir).filter((name) => name.startsWith('.iaflow-'))).toEqual([]);
  });

  test('errors name the user\'s path, not the temp file', async () => {
    const file = join(dir, 'missing-dir', 'model.safetensors');
    const error = (await saveFlow(sampleFlow(), file).catch((e: Error) => e)) as Error;
    expect(error.message).toBe(`ENOENT: no such file or directory, while saving '${file}'`);
  });

  test('the largest config createFlow accepts (2^20 integers, random permutations) saves and loads', async () => {
    // 15 random permutations of dim 65535 and one MAF: 1,048,561 integers of up to 5 digits.
    const layers = [maf({ hidden: [1] }), ...Array.from({ length: 15 }, (_, i) => permute({ seed: i }))];
    expect(() => createFlow({ dim: 65535, seed: 1, layers: [...layers, permute({ seed: 99 })] })).toThrow(/at most 1048576 integers/);
    const flow = createFlow({ dim: 65535, seed: 1, layers });
    const file = join(dir, 'largest-config.safetensors');
    await saveFlow(flow, file);
    const loaded = await loadFlow(file);
    expect(loaded.config).toEqual(flow.config);
  }, 60_000 * TIME_SCALE);
});
