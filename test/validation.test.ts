// Bad input never reaches native code: wrong lengths, non-numeric arrays, NaN in parameters,
// bad row counts, unknown options. Each gets a TypeError or RangeError that says what was
// expected ("Expected <what> for <name> but received <value>"), thrown (or, for the async
// methods, rejected) before the addon is called, and the process carries on.
import {
  createFlow,
  createIAF,
  createMAF,
  Flow,
  getThreads,
  iaf,
  maf,
  permute,
  reverse,
  setThreads,
  standardNormal,
} from '../src/index';
import type { FlowOptions, LayerDescriptor, MadeOptions, Rows, SampleOptions } from '../src/index';
import { native } from '../src/native';
import type { NativeBinding, NativeFlowInstance } from '../src/native';
import { HUGE_WEIGHT, MAX_ELEMENTS, warnOnHugeWeights } from '../src/validation';
import { checkFlowConfig } from '../src/layers';

// ---------------------------------------------------------------------------------------
// Spies on the addon: every bad call below must leave these counters untouched.

const nativeCalls = { construct: 0, run: 0, setThreads: 0, standardNormal: 0 };
const realNative = {
  NativeFlow: native.NativeFlow,
  setThreads: native.setThreads,
  standardNormal: native.standardNormal,
};

beforeAll(() => {
  native.NativeFlow = new Proxy<NativeBinding['NativeFlow']>(realNative.NativeFlow, {
    construct(target, args: unknown[]): NativeFlowInstance {
      nativeCalls.construct++;
      const inner: NativeFlowInstance = Reflect.construct(target, args);
      return {
        run: (...runArgs: Parameters<NativeFlowInstance['run']>) => {
          nativeCalls.run++;
          return inner.run(...runArgs);
        },
        release: () => inner.release(),
        get backend() {
          return inner.backend;
        },
      };
    },
  });
  native.setThreads = (threads: number) => {
    nativeCalls.setThreads++;
    realNative.setThreads(threads);
  };
  native.standardNormal = (...args: Parameters<NativeBinding['standardNormal']>) => {
    nativeCalls.standardNormal++;
    realNative.standardNormal(...args);
  };
});

afterAll(() => {
  native.NativeFlow = realNative.NativeFlow;
  native.setThreads = realNative.setThreads;
  native.standardNormal = realNative.standardNormal;
});

// ---------------------------------------------------------------------------------------
// Helpers

type ErrorKind = 'TypeError' | 'RangeError';
const ERROR_CLASSES = { TypeError, RangeError } as const;

function checkError(error: unknown, kind: ErrorKind | ErrorKind[], message: RegExp): void {
  const kinds = Array.isArray(kind) ? kind : [kind];
  expect(error).toBeInstanceOf(Error);
  const { name, message: text } = error as Error;
  // One comparison, so a failure shows both the class and the message that came back.
  expect({ name, message: text }).toEqual({
    name: expect.stringMatching(new RegExp(`^(${kinds.join('|')})$`)),
    message: expect.stringMatching(message),
  });
  expect(kinds.some((k) => error instanceof ERROR_CLASSES[k])).toBe(true);
}

/**
 * fn throws `kind` with a message matching `message`, and the addon is not called (unless
 * `checkedNatively`: the finiteness of typed-array rows is checked by the addon's run, off the event loop).
 */
function expectError(fn: () => unknown, kind: ErrorKind | ErrorKind[], message: RegExp, checkedNatively = false): void {
  const before = { ...nativeCalls, run: nativeCalls.run + (checkedNatively ? 1 : 0) };
  let threw = false;
  let error: unknown;
  try {
    fn();
  } catch (e) {
    threw = true;
    error = e;
  }
  expect(threw).toBe(true);
  checkError(error, kind, message);
  expect(nativeCalls).toEqual(before);
}

/**
 * start() returns a promise (the async methods are `async`, so they never throw synchronously)
 * that rejects with `kind` / `message`; the addon is called neither before nor after.
 */
async function expectRejection(start: () => Promise<unknown>, kind: ErrorKind, message: RegExp, checkedNatively = false): Promise<void> {
  const before = { ...nativeCalls, run: nativeCalls.run + (checkedNatively ? 1 : 0) };
  let promise: Promise<unknown> | undefined;
  expect(() => {
    promise = start();
  }).not.toThrow();
  expect(typeof promise?.then).toBe('function');
  expect(nativeCalls).toEqual(before);
  let rejected = false;
  let error: unknown;
  try {
    await promise;
  } catch (e) {
    rejected = true;
    error = e;
  }
  expect(rejected).toBe(true);
  checkError(error, kind, message);
  expect(nativeCalls).toEqual(before);
}

/** Escapes a literal for use inside a RegExp. */
function esc(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

const DIM = 3;
const SMALL: MadeOptions = { hidden: [8] };

function smallFlow(seed = 7): Flow {
  return createFlow({ dim: DIM, layers: [maf(SMALL), reverse(), iaf(SMALL)], seed });
}

/** A few rows of dimension 3, exactly representable in float32. */
const PROBE_ROWS = [
  [0.5, -1.25, 2],
  [-0.75, 0.25, -1.5],
  [1.125, 0, -0.375],
  [-2, 1.5, 0.625],
];
const PROBE_F32 = Float32Array.from(PROBE_ROWS.flat());

function bits(a: Float32Array): number[] {
  return Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));
}

function allFinite(a: Float32Array): boolean {
  return a.every((v) => Number.isFinite(v));
}

// ---------------------------------------------------------------------------------------
// createFlow

describe('createFlow', () => {
  const layers = (): LayerDescriptor[] => [maf(SMALL)];

  it.each<[string, unknown, ErrorKind, RegExp]>([
    ['missing', undefined, 'TypeError', /^Expected an integer in \[1, 65536\] for dim but received undefined$/],
    ['0', 0, 'RangeError', /^Expected an integer in \[1, 65536\] for dim but received 0$/],
    ['-1', -1, 'RangeError', /^Expected an integer in \[1, 65536\] for dim but received -1$/],
    ['1.5', 1.5, 'RangeError', /^Expected an integer in \[1, 65536\] for dim but received 1\.5$/],
    ["'8'", '8', 'TypeError', /^Expected an integer in \[1, 65536\] for dim but received the string "8"$/],
    ['NaN', NaN, 'TypeError', /^Expected an integer in \[1, 65536\] for dim but received NaN$/],
    ['Infinity', Infinity, 'RangeError', /^Expected an integer in \[1, 65536\] for dim but received Infinity$/],
    ['10^9', 1e9, 'RangeError', /^Expected an integer in \[1, 65536\] for dim but received 1000000000$/],
    ['null', null, 'TypeError', /^Expected an integer in \[1, 65536\] for dim but received null$/],
  ])('rejects dim %s', (_label, dim, kind, message) => {
    expectError(() => createFlow({ dim: dim as unknown as number, layers: layers(), seed: 1 }), kind, message);
  });

  it('rejects options that are not an options object', () => {
    const expected = /^Expected an options object for createFlow options but received /;
    expectError(() => createFlow(null as unknown as FlowOptions), 'TypeError', expected);
    expectError(() => createFlow(3 as unknown as FlowOptions), 'TypeError', /received 3$/);
    expectError(() => createFlow([3] as unknown as FlowOptions), 'TypeError', /received an array of length 1$/);
    // No options at all: the first thing missing is the dimension.
    expectError(() => (createFlow as unknown as () => Flow)(), 'TypeError', /for dim but received undefined$/);
  });

  it.each(['hiden', 'seeed', 'layer', 'Dim'])('rejects the unknown option %s', (key) => {
    const options = { dim: DIM, layers: layers(), seed: 1, [key]: 8 };
    expectError(
      () => createFlow(options as unknown as FlowOptions),
      'TypeError',
      new RegExp(`^Unknown option "${key}" in createFlow options; expected one of: dim, layers, seed, backend, context$`),
    );
  });

  it.each<[string, unknown]>([
    ['a single layer', maf(SMALL)],
    ['undefined', undefined],
    ['a string', 'maf'],
    ['an object', { 0: maf(SMALL), length: 1 }],
  ])('rejects layers that is not an array: %s', (_label, value) => {
    expectError(
      () => createFlow({ dim: DIM, layers: value as unknown as LayerDescriptor[] }),
      'TypeError',
      /^Expected an array of layers made by iaf\(\), maf\(\), reverse\(\), permute\(\) or affine\(\) for layers but received /,
    );
  });

  it.each<[string, unknown, RegExp]>([
    ['an empty object', {}, /received an object$/],
    ['the builder itself (not called)', maf, /received a function$/],
    ['null', null, /received null$/],
    ['a config object', { type: 'maf', hidden: [8] }, /received an object$/],
    ['a string', 'maf', /received the string "maf"$/],
  ])('rejects a layer that is not made by a builder: %s', (_label, layer, received) => {
    expectError(
      () => createFlow({ dim: DIM, layers: [maf(SMALL), layer as unknown as LayerDescriptor] }),
      'TypeError',
      new RegExp(`^Expected a layer made by iaf\\(\\), maf\\(\\), reverse\\(\\), permute\\(\\) or affine\\(\\) for layers\\[1\\] but ${received.source.slice(0, -1)}$`),
    );
  });

  it('rejects a hand-made descriptor whose config is not valid', () => {
    const fake = { kind: 'maf', options: {}, resolve: () => ({ type: 'linear' }) };
    expectError(
      () => createFlow({ dim: DIM, layers: [fake as unknown as LayerDescriptor] }),
      'TypeError',
      /^Expected one of 'iaf', 'maf', 'permutation', 'affine' for config\.layers\[0\]\.type but received the string "linear"$/,
    );
  });

  it.each<[string, unknown, ErrorKind]>([
    ['-1', -1, 'RangeError'],
    ['1.5', 1.5, 'RangeError'],
    ['2^60', 2 ** 60, 'RangeError'],
    ['Infinity', Infinity, 'RangeError'],
    ['NaN', NaN, 'TypeError'],
    ["'1'", '1', 'TypeError'],
    ['a bigint', 1n, 'TypeError'],
  ])('rejects seed %s', (_label, seed, kind) => {
    expectError(
      () => createFlow({ dim: DIM, layers: layers(), seed: seed as unknown as number }),
      kind,
      /^Expected an integer in \[0, 9007199254740991\] for seed but received /,
    );
  });

  it('accepts the edges of what it allows', () => {
    expect(createFlow({ dim: 1, layers: [maf({ hidden: 4 })], seed: 0 }).dim).toBe(1);
    expect(createFlow({ dim: DIM, layers: layers(), seed: Number.MAX_SAFE_INTEGER }).dim).toBe(DIM);
    expect(createFlow({ dim: DIM, layers: layers() }).dim).toBe(DIM);
  });
});

describe('createIAF / createMAF', () => {
  it('rejects unknown options and bad values', () => {
    expectError(
      () => createIAF({ dim: DIM, hiden: [8] } as unknown as Parameters<typeof createIAF>[0]),
      'TypeError',
      /^Unknown option "hiden" in createIAF options; expected one of: dim, layers, seed, backend, hidden, activation, scale, softClamp$/,
    );
    expectError(
      () => createMAF({ dim: DIM, order: [0, 1, 2] } as unknown as Parameters<typeof createMAF>[0]),
      'TypeError',
      /^Unknown option "order" in createMAF options/,
    );
    expectError(() => createMAF({ dim: 0, hidden: [8] }), 'RangeError', /^Expected an integer in \[1, 65536\] for dim but received 0$/);
    expectError(() => createIAF({ dim: DIM, hidden: [8], layers: 0 }), 'RangeError', /^Expected an integer in \[1, 2048\] for layers but received 0$/);
    expectError(() => createIAF({ dim: DIM, hidden: [8], layers: 2.5 }), 'RangeError', /for layers but received 2\.5$/);
    expectError(
      () => createMAF({ dim: DIM, hidden: [8], activation: 'sigmoid' as unknown as 'relu' }),
      'TypeError',
      /^Expected one of 'relu', 'tanh', 'elu' for maf\(\)\.activation but received the string "sigmoid"$/,
    );
    expectError(() => createIAF({ dim: DIM, hidden: [8], seed: -1 }), 'RangeError', /for seed but received -1$/);
  });
});

// ---------------------------------------------------------------------------------------
// Layer builders

describe.each([
  ['iaf', iaf],
  ['maf', maf],
] as const)('%s() options', (name, builder) => {
  const b = esc(`${name}()`);
  const build = (options: unknown) => builder(options as MadeOptions);

  it.each(['hiden', 'seed', 'activations', 'orders'])('rejects the unknown key %s when the builder is called', (key) => {
    expectError(
      () => build({ hidden: [8], [key]: 1 }),
      'TypeError',
      new RegExp(`^Unknown option "${key}" in ${b} options; expected one of: hidden, activation, scale, order, hiddenDegrees, residual, softClamp, contextForm$`),
    );
  });

  it('rejects options that are not an object', () => {
    expectError(() => build('big'), 'TypeError', new RegExp(`^Expected an options object for ${b} options but received the string "big"$`));
    expectError(() => build(null), 'TypeError', new RegExp(`^Expected an options object for ${b} options but received null$`));
    expectError(() => build([8]), 'TypeError', new RegExp(`^Expected an options object for ${b} options but received an array of length 1$`));
  });

  it.each<[string, unknown, ErrorKind, string, string]>([
    ['[]', [], 'TypeError', 'hidden', 'an array of length 0'],
    ["'big'", 'big', 'TypeError', 'hidden', 'the string "big"'],
    ['null', null, 'TypeError', 'hidden', 'null'],
    ['[0]', [0], 'RangeError', 'hidden[0]', '0'],
    ['[-4]', [-4], 'RangeError', 'hidden[0]', '-4'],
    ['[1.5]', [1.5], 'RangeError', 'hidden[0]', '1.5'],
    ['1e9', 1e9, 'RangeError', 'hidden[0]', '1000000000'],
    ['[8, 1e9]', [8, 1e9], 'RangeError', 'hidden[1]', '1000000000'],
    ["[8, '8']", [8, '8'], 'TypeError', 'hidden[1]', 'the string "8"'],
    ['[8, NaN]', [8, NaN], 'TypeError', 'hidden[1]', 'NaN'],
  ])('rejects hidden %s when the builder is called', (_label, hidden, kind, at, received) => {
    const expected = at === 'hidden' ? 'a positive integer or a non-empty array of them' : 'an integer in [1, 65536]';
    expectError(() => build({ hidden }), kind, new RegExp(`^Expected ${esc(expected)} for ${b}\\.${esc(at)} but received ${esc(received)}$`));
  });

  it('rejects more hidden layers than it allows', () => {
    expectError(() => build({ hidden: new Array(65).fill(2) }), 'RangeError', new RegExp(`^Expected at most 64 for ${b}\\.hidden\\.length but received 65$`));
  });

  it('rejects an unknown activation or scale', () => {
    expectError(
      () => build({ hidden: [8], activation: 'sigmoid' }),
      'TypeError',
      new RegExp(`^Expected one of 'relu', 'tanh', 'elu' for ${b}\\.activation but received the string "sigmoid"$`),
    );
    expectError(
      () => build({ hidden: [8], scale: 'linear' }),
      'TypeError',
      new RegExp(`^Expected one of 'softplus', 'exp', 'gated' for ${b}\\.scale but received the string "linear"$`),
    );
    expectError(() => build({ hidden: [8], activation: 0 }), 'TypeError', new RegExp(`for ${b}\\.activation but received 0$`));
    // null is not "use the default": only a missing option is.
    expectError(() => build({ hidden: [8], activation: null }), 'TypeError', new RegExp(`for ${b}\\.activation but received null$`));
    expectError(() => build({ hidden: [8], scale: null }), 'TypeError', new RegExp(`for ${b}\\.scale but received null$`));
  });

  it.each<[string, unknown, ErrorKind, string, string]>([
    ['too short', [0, 1], 'RangeError', 'order', 'a permutation of 0..2 (length 3)'],
    ['too long', [0, 1, 2, 3], 'RangeError', 'order', 'a permutation of 0..2 (length 3)'],
    ['with a duplicate', [0, 0, 1], 'RangeError', 'order[1]', 'a permutation of 0..2 (each value once)'],
    ['out of range', [0, 1, 3], 'RangeError', 'order[2]', 'a permutation of 0..2 (each value once)'],
    ['negative', [-1, 0, 1], 'RangeError', 'order[0]', 'a permutation of 0..2 (each value once)'],
    ['fractional', [0, 1.5, 2], 'RangeError', 'order[1]', 'a permutation of 0..2 (each value once)'],
    ['with a string', [0, '1', 2], 'RangeError', 'order[1]', 'a permutation of 0..2 (each value once)'],
    ["'reverse'", 'reverse', 'TypeError', 'order', 'a permutation of 0..2'],
  ])('rejects an order %s, when createFlow resolves the layer', (_label, order, kind, at, expected) => {
    // The builder cannot know the dimension, so it accepts the order; createFlow checks it.
    const layer = build({ hidden: [8], order });
    expectError(
      () => createFlow({ dim: DIM, layers: [reverse(), layer], seed: 1 }),
      kind,
      new RegExp(`^Expected ${esc(expected)} for layers\\[1\\]\\.${esc(at)} but received `),
    );
  });

  it.each<[string, unknown, ErrorKind, RegExp]>([
    ['[] (too few layers)', [], 'TypeError', /^Expected an array of 2 degree arrays \(one per hidden layer\) for layers\[0\]\.hiddenDegrees but received an array of length 0$/],
    ['not an array', 'natural', 'TypeError', /^Expected an array of 2 degree arrays \(one per hidden layer\) for layers\[0\]\.hiddenDegrees but received the string "natural"$/],
    ['a layer of the wrong width', [[1, 2, 1, 2], [1, 2]], 'TypeError', /^Expected an array of 4 integers for layers\[0\]\.hiddenDegrees\[1\] but received an array of length 2$/],
    ['a degree above dim', [[1, 2, 1, 2], [1, 2, 4, 2]], 'RangeError', /^Expected an integer in \[0, 3\] for layers\[0\]\.hiddenDegrees\[1\]\[2\] but received 4$/],
    ['a negative degree', [[1, -1, 1, 2], [1, 2, 1, 2]], 'RangeError', /^Expected an integer in \[0, 3\] for layers\[0\]\.hiddenDegrees\[0\]\[1\] but received -1$/],
    ['a fractional degree', [[1, 2, 1, 2], [1, 2, 1.5, 2]], 'RangeError', /for layers\[0\]\.hiddenDegrees\[1\]\[2\] but received 1\.5$/],
    ['a string degree', [[1, 2, '1', 2], [1, 2, 1, 2]], 'TypeError', /for layers\[0\]\.hiddenDegrees\[0\]\[2\] but received the string "1"$/],
  ])('rejects hiddenDegrees %s, when createFlow resolves the layer', (_label, hiddenDegrees, kind, message) => {
    const layer = build({ hidden: [4, 4], hiddenDegrees });
    expectError(() => createFlow({ dim: DIM, layers: [layer], seed: 1 }), kind, message);
  });

  it('accepts a valid order and hiddenDegrees', () => {
    const flow = createFlow({
      dim: DIM,
      layers: [build({ hidden: [4, 4], order: [2, 0, 1], hiddenDegrees: [[1, 2, 0, 3], [2, 2, 1, 1]] })],
      seed: 1,
    });
    expect(allFinite(flow.logProbSync(PROBE_F32))).toBe(true);
  });
});

describe('permute()', () => {
  it.each<[string, unknown, RegExp]>([
    ['a number', 5, /received 5$/],
    ['a string', '012', /received the string "012"$/],
    ['undefined', undefined, /received undefined$/],
    ['null', null, /received null$/],
    ['an Int32Array', new Int32Array([0, 1, 2]), /received an Int32Array of length 3$/],
  ])('rejects %s when the builder is called', (_label, value, received) => {
    expectError(
      () => permute(value as unknown as number[]),
      'TypeError',
      new RegExp(`^Expected a permutation array or \\{ seed \\} for permute\\(\\) but ${received.source.slice(0, -1)}$`),
    );
  });

  it.each<[string, unknown, ErrorKind, RegExp]>([
    ['{ seed: -1 }', { seed: -1 }, 'RangeError', /^Expected an integer in \[0, 9007199254740991\] for permute\(\)\.seed but received -1$/],
    ['{ seed: 1.5 }', { seed: 1.5 }, 'RangeError', /for permute\(\)\.seed but received 1\.5$/],
    ["{ seed: 'x' }", { seed: 'x' }, 'TypeError', /for permute\(\)\.seed but received the string "x"$/],
    ['{}', {}, 'TypeError', /for permute\(\)\.seed but received undefined$/],
    ['{ sed: 1 }', { sed: 1 }, 'TypeError', /^Unknown option "sed" in permute\(\) options; expected one of: seed$/],
  ])('rejects %s when the builder is called', (_label, value, kind, message) => {
    expectError(() => permute(value as unknown as { seed: number }), kind, message);
  });

  it.each<[string, unknown[], string, string]>([
    ['too short', [0, 1], 'layers[1]', 'a permutation of 0..2 (length 3)'],
    ['too long', [0, 1, 2, 3], 'layers[1]', 'a permutation of 0..2 (length 3)'],
    ['with a duplicate', [0, 0, 1], 'layers[1][1]', 'a permutation of 0..2 (each value once)'],
    ['out of range', [0, 1, 3], 'layers[1][2]', 'a permutation of 0..2 (each value once)'],
    ['fractional', [0, 0.5, 2], 'layers[1][1]', 'a permutation of 0..2 (each value once)'],
    ['with null', [0, null, 2], 'layers[1][1]', 'a permutation of 0..2 (each value once)'],
  ])('rejects a permutation %s, when createFlow resolves it', (_label, perm, at, expected) => {
    const layer = permute(perm as number[]);
    expectError(
      () => createFlow({ dim: DIM, layers: [maf(SMALL), layer], seed: 1 }),
      'RangeError',
      new RegExp(`^Expected ${esc(expected)} for ${esc(at)} but received `),
    );
  });

  it('keeps its own copy of the permutation', () => {
    const perm = [2, 0, 1];
    const layer = permute(perm);
    perm[0] = 0; // now [0, 0, 1]: not a permutation, but the builder copied [2, 0, 1]
    expect(createFlow({ dim: DIM, layers: [layer, maf(SMALL)], seed: 1 }).config.layers[0]).toEqual({
      type: 'permutation',
      permutation: [2, 0, 1],
    });
    expect(createFlow({ dim: DIM, layers: [permute({ seed: 5 }), maf(SMALL)], seed: 1 }).dim).toBe(DIM);
  });
});

// ---------------------------------------------------------------------------------------
// Sampling

describe('sample / sampleSync / sampleWithLogProb(Sync)', () => {
  let flow: Flow;
  beforeAll(() => {
    flow = smallFlow();
  });

  const maxRows = Math.floor(MAX_ELEMENTS / DIM);
  const range = `a whole number of rows in [1, ${maxRows}]`;
  type SampleCall = (f: Flow, n: number, options?: SampleOptions) => unknown;
  const syncMethods: [string, SampleCall][] = [
    ['sampleSync', (f, n, o) => f.sampleSync(n, o)],
    ['sampleWithLogProbSync', (f, n, o) => f.sampleWithLogProbSync(n, o)],
  ];
  const asyncMethods: [string, (f: Flow, n: number, options?: SampleOptions) => Promise<unknown>][] = [
    ['sample', (f, n, o) => f.sample(n, o)],
    ['sampleWithLogProb', (f, n, o) => f.sampleWithLogProb(n, o)],
  ];

  const badN: [string, unknown, ErrorKind, RegExp][] = [
    ['-1', -1, 'RangeError', new RegExp(`^Expected ${esc(range)} \\(dim 3\\) for n but received -1$`)],
    ['0', 0, 'RangeError', new RegExp(`^Expected ${esc(range)} \\(dim 3\\) for n but received 0$`)],
    ['1.5', 1.5, 'RangeError', new RegExp(`^Expected ${esc(range)} \\(dim 3\\) for n but received 1\\.5$`)],
    ['NaN', NaN, 'TypeError', new RegExp(`^Expected ${esc(range)} for n but received NaN$`)],
    ["'10'", '10', 'TypeError', new RegExp(`^Expected ${esc(range)} for n but received the string "10"$`)],
    ['undefined', undefined, 'TypeError', new RegExp(`^Expected ${esc(range)} for n but received undefined$`)],
    ['10n', 10n, 'TypeError', new RegExp(`^Expected ${esc(range)} for n but received the bigint 10n$`)],
    ['Infinity', Infinity, 'RangeError', new RegExp(`^Expected ${esc(range)} \\(dim 3\\) for n but received Infinity$`)],
    // n*dim one row past the largest Float32Array the library will allocate.
    ['max rows + 1', maxRows + 1, 'RangeError', new RegExp(`^Expected ${esc(range)} \\(dim 3\\) for n but received ${maxRows + 1}$`)],
    ['MAX_SAFE_INTEGER', Number.MAX_SAFE_INTEGER, 'RangeError', new RegExp(`^Expected ${esc(range)} \\(dim 3\\) for n but received 9007199254740991$`)],
  ];

  const badOptions: [string, unknown, ErrorKind, RegExp][] = [
    ["{ seed: 'x' }", { seed: 'x' }, 'TypeError', /^Expected an integer in \[0, 9007199254740991\] for options\.seed but received the string "x"$/],
    ['{ seed: -1 }', { seed: -1 }, 'RangeError', /^Expected an integer in \[0, 9007199254740991\] for options\.seed but received -1$/],
    ['{ seed: 1.5 }', { seed: 1.5 }, 'RangeError', /for options\.seed but received 1\.5$/],
    ['{ seed: 2^60 }', { seed: 2 ** 60 }, 'RangeError', /for options\.seed but received 1152921504606847000$/],
    ['{ seed: NaN }', { seed: NaN }, 'TypeError', /for options\.seed but received NaN$/],
    ['{ sed: 1 }', { sed: 1 }, 'TypeError', /^Unknown option "sed" in sample options; expected one of: seed, firstRow(, signal)?, context$/],
    ["'x'", 'x', 'TypeError', /^Expected an options object for sample options but received the string "x"$/],
    ['42', 42, 'TypeError', /^Expected an options object for sample options but received 42$/],
    ['null', null, 'TypeError', /^Expected an options object for sample options but received null$/],
  ];

  describe.each(syncMethods)('%s', (_name, call) => {
    it.each(badN)('throws for n = %s', (_label, n, kind, message) => {
      expectError(() => call(flow, n as unknown as number), kind, message);
    });
    it.each(badOptions)('throws for options %s', (_label, options, kind, message) => {
      expectError(() => call(flow, 4, options as unknown as SampleOptions), kind, message);
    });
  });

  describe.each(asyncMethods)('%s', (_name, call) => {
    it.each(badN)('rejects n = %s', async (_label, n, kind, message) => {
      await expectRejection(() => call(flow, n as unknown as number), kind, message);
    });
    it.each(badOptions)('rejects options %s', async (_label, options, kind, message) => {
      await expectRejection(() => call(flow, 4, options as unknown as SampleOptions), kind, message);
    });
  });

  it('still samples after all that', async () => {
    const a = flow.sampleSync(5, { seed: 11 });
    const b = await flow.sample(5, { seed: 11 });
    expect(a.length).toBe(5 * DIM);
    expect(bits(b)).toEqual(bits(a));
    const c = flow.sampleWithLogProbSync(2, { seed: 0 });
    expect(c.logProb.length).toBe(2);
    expect(allFinite(c.x) && allFinite(c.logProb)).toBe(true);
  });
});

describe('standardNormal', () => {
  it('rejects bad rows, dim and options before native code runs', () => {
    expectError(() => standardNormal(0, DIM), 'RangeError', /for rows but received 0$/);
    expectError(() => standardNormal(2, 0), 'RangeError', /^Expected an integer in \[1, 65536\] for dim but received 0$/);
    expectError(() => standardNormal('2' as unknown as number, DIM), 'TypeError', /for rows but received the string "2"$/);
    expectError(() => standardNormal(2, DIM, { seed: -1 }), 'RangeError', /for options\.seed but received -1$/);
    expectError(
      () => standardNormal(2, DIM, { sed: 1 } as unknown as SampleOptions),
      'TypeError',
      /^Unknown option "sed" in standardNormal options; expected one of: seed, firstRow$/,
    );
    expect(standardNormal(2, DIM, { seed: 1 }).length).toBe(2 * DIM);
  });
});

// ---------------------------------------------------------------------------------------
// Batch inputs: logProb / forward / inverse

type TransformCall = (f: Flow, rows: Rows) => Float32Array[];
type AsyncTransformCall = (f: Flow, rows: Rows) => Promise<Float32Array[]>;

const TRANSFORMS: { name: string; arg: string; sync: TransformCall; async: AsyncTransformCall }[] = [
  {
    name: 'logProb',
    arg: 'x',
    sync: (f, r) => [f.logProbSync(r)],
    async: async (f, r) => [await f.logProb(r)],
  },
  {
    name: 'forward',
    arg: 'z',
    sync: (f, r) => {
      const out = f.forwardSync(r);
      return [out.x, out.logDet];
    },
    async: async (f, r) => {
      const out = await f.forward(r);
      return [out.x, out.logDet];
    },
  },
  {
    name: 'inverse',
    arg: 'x',
    sync: (f, r) => {
      const out = f.inverseSync(r);
      return [out.z, out.logDet];
    },
    async: async (f, r) => {
      const out = await f.inverse(r);
      return [out.z, out.logDet];
    },
  },
];

/** The case: rows 0 and 1 are holes, which forEach skipped and left as zeros. */
function sparseRows(): number[][] {
  const rows = new Array<number[]>(3);
  rows[2] = [0.5, 0.5, 0.5];
  return rows;
}

/** A Proxy of an array that claims a length that is not a number. */
function lyingLength(): number[][] {
  return new Proxy([[0, 0, 0]], { get: (target, key) => (key === 'length' ? '3' : Reflect.get(target, key)) });
}

/** Bad inputs for an argument named `a`, with the error each must give. */
function badInputs(a: string): [string, unknown, ErrorKind, RegExp][] {
  const A = esc(a);
  const either = `a Float32Array of n\\*3 values \\(row-major\\) or an array of rows of 3 numbers`;
  // Object.prototype.toString calls this '[object Float32Array]'; it must still not reach the addon.
  const fakeFloat32 = { [Symbol.toStringTag]: 'Float32Array', length: 3, 0: 1, 1: 2, 2: 3 };
  return [
    ['a Float32Array of 4 values', new Float32Array(4), 'RangeError', new RegExp(`^Expected a positive multiple of 3 for ${A}\\.length but received 4$`)],
    ['an empty Float32Array', new Float32Array(0), 'RangeError', new RegExp(`^Expected a positive multiple of 3 for ${A}\\.length but received 0$`)],
    ['a Float64Array of 5 values', new Float64Array(5), 'RangeError', new RegExp(`^Expected a positive multiple of 3 for ${A}\\.length but received 5$`)],
    ['a short row', [[0, 0, 0], [0, 0]], 'RangeError', new RegExp(`^Expected 3 for ${A}\\[1\\]\\.length but received 2$`)],
    ['a long row', [[0, 0, 0, 0]], 'RangeError', new RegExp(`^Expected 3 for ${A}\\[0\\]\\.length but received 4$`)],
    ['a row with a string', [[0, 0, 0], [0, '1', 0]], 'TypeError', new RegExp(`^Expected a number for ${A}\\[1\\]\\[1\\] but received the string "1"$`)],
    ['a row with null', [[0, 0, null]], 'TypeError', new RegExp(`^Expected a number for ${A}\\[0\\]\\[2\\] but received null$`)],
    ['a row with undefined', [[0, 0, 0], [undefined, 0, 0]], 'TypeError', new RegExp(`^Expected a number for ${A}\\[1\\]\\[0\\] but received undefined$`)],
    ['a sparse row', [[0, , 0]], 'TypeError', new RegExp(`^Expected a number for ${A}\\[0\\]\\[1\\] but received a hole \\(the array is sparse\\)$`)],
    ['a sparse array of rows', sparseRows(), 'TypeError', new RegExp(`^Expected an array of 3 numbers for ${A}\\[0\\] but received a hole \\(the array is sparse\\)$`)],
    ['a hole between rows', [[0, 0, 0], , [0, 0, 0]], 'TypeError', new RegExp(`^Expected an array of 3 numbers for ${A}\\[1\\] but received a hole \\(the array is sparse\\)$`)],
    ['a hole at the end', [[0, 0, 0], ,], 'TypeError', new RegExp(`^Expected an array of 3 numbers for ${A}\\[1\\] but received a hole \\(the array is sparse\\)$`)],
    ['an array whose length is not a number', lyingLength(), 'TypeError', new RegExp(`^Expected an array length for ${A}\\.length but received the string "3"$`)],
    ['a row that is a string', [[0, 0, 0], '000'], 'TypeError', new RegExp(`^Expected an array of 3 numbers for ${A}\\[1\\] but received the string "000"$`)],
    ['a flat number[]', [0, 0, 0], 'TypeError', new RegExp(`^Expected an array of 3 numbers for ${A}\\[0\\] but received 0$`)],
    ['an empty array', [], 'RangeError', new RegExp(`^Expected ${either}, with at least one row for ${A} but received an array of length 0$`)],
    ['NaN in a row', [[0, 0, 0], [0, NaN, 0]], 'RangeError', new RegExp(`^Expected a finite number for ${A}\\[1\\]\\[1\\] but received NaN$`)],
    ['Infinity in a row', [[0, 0, Infinity]], 'RangeError', new RegExp(`^Expected a finite number for ${A}\\[0\\]\\[2\\] but received Infinity$`)],
    ['NaN in a Float32Array', Float32Array.from([0, 0, 0, 0, 0, NaN]), 'RangeError', new RegExp(`^Expected a finite number for ${A}\\[1\\]\\[2\\] but received NaN$`)],
    ['-Infinity in a Float32Array', Float32Array.from([0, -Infinity, 0]), 'RangeError', new RegExp(`^Expected a finite number for ${A}\\[0\\]\\[1\\] but received -Infinity$`)],
    ['Infinity in a Float64Array', Float64Array.from([0, 0, 0, Infinity, 0, 0]), 'RangeError', new RegExp(`^Expected a finite number for ${A}\\[1\\]\\[0\\] but received Infinity$`)],
    ['1e39 in a Float64Array (overflows float32)', Float64Array.from([0, 1e39, 0]), 'RangeError', new RegExp(`^Expected a finite number for ${A}\\[0\\]\\[1\\] but received Infinity$`)],
    ['1e39 in a row (overflows float32)', [[0, 0, -1e39]], 'RangeError', new RegExp(`^Expected a finite number for ${A}\\[0\\]\\[2\\] but received -Infinity$`)],
    ['a string', 'abc', 'TypeError', new RegExp(`^Expected ${either} for ${A} but received the string "abc"$`)],
    ['undefined', undefined, 'TypeError', new RegExp(`^Expected ${either} for ${A} but received undefined$`)],
    ['null', null, 'TypeError', new RegExp(`^Expected ${either} for ${A} but received null$`)],
    ['a number', 3, 'TypeError', new RegExp(`^Expected ${either} for ${A} but received 3$`)],
    ['an Int32Array', new Int32Array(3), 'TypeError', new RegExp(`^Expected ${either} for ${A} but received an Int32Array of length 3$`)],
    ['an array-like object', { 0: [0, 0, 0], length: 1 }, 'TypeError', new RegExp(`^Expected ${either} for ${A} but received an object$`)],
    ['an object claiming to be a Float32Array', fakeFloat32, 'TypeError', new RegExp(`^Expected ${either} for ${A} but received an object$`)],
  ];
}

describe.each(TRANSFORMS)('$name / $name' + 'Sync input', ({ arg, sync, async }) => {
  let flow: Flow;
  beforeAll(() => {
    flow = smallFlow();
  });

  // Non-finite values in typed arrays are found by the addon (off the event loop when async).
  const checkedNatively = (input: unknown) =>
    (input instanceof Float32Array || input instanceof Float64Array) && input.length % DIM === 0 && input.some((v) => !Number.isFinite(Math.fround(v)));

  it.each(badInputs(arg))('sync: throws for %s', (_label, input, kind, message) => {
    expectError(() => sync(flow, input as Rows), kind, message, checkedNatively(input));
  });

  it.each(badInputs(arg))('async: rejects for %s', async (_label, input, kind, message) => {
    await expectRejection(() => async(flow, input as Rows), kind, message, checkedNatively(input));
  });

  it('accepts a Float64Array and number[][], with the same result as a Float32Array', async () => {
    const expected = sync(flow, PROBE_F32).map(bits);
    expected.forEach((out) => expect(out.length).toBeGreaterThan(0));
    const f64 = Float64Array.from(PROBE_F32);
    expect(sync(flow, f64).map(bits)).toEqual(expected);
    expect((await async(flow, f64)).map(bits)).toEqual(expected);
    expect(sync(flow, PROBE_ROWS).map(bits)).toEqual(expected);
    expect((await async(flow, PROBE_ROWS)).map(bits)).toEqual(expected);
    expect((await async(flow, PROBE_F32)).map(bits)).toEqual(expected);
    // Rows may themselves be typed arrays; a Float64Array of values that are not float32 is rounded.
    expect(sync(flow, PROBE_ROWS.map((r) => Float64Array.from(r)) as unknown as Rows).map(bits)).toEqual(expected);
    const unrounded = Float64Array.from(PROBE_F32, (v) => v + 1e-12);
    expect(sync(flow, unrounded).map(bits)).toEqual(expected);
    // A Float64Array that claims the Float32Array tag is still read (and converted) as float64.
    const disguised = Float64Array.from(PROBE_F32);
    Object.defineProperty(disguised, Symbol.toStringTag, { value: 'Float32Array' });
    expect(sync(flow, disguised).map(bits)).toEqual(expected);
    expect((await async(flow, disguised)).map(bits)).toEqual(expected);
    sync(flow, PROBE_F32).forEach((out) => expect(allFinite(out)).toBe(true));
  });
});

describe('array-likes with getters and inherited entries', () => {
  const flow = smallFlow();
  const expected = flow.logProbSync(PROBE_F32);

  afterEach(() => {
    delete (Array.prototype as unknown as Record<number, unknown>)[1];
  });

  it('refuses a hole even where Array.prototype lends it a number', () => {
    (Array.prototype as unknown as Record<number, unknown>)[1] = 0.5;
    const rows = [[0, 0, 0], [0.5, , 0.5]] as number[][];
    expect(rows[1][1]).toBe(0.5); // what forEach / indexing would have read
    expectError(() => flow.logProbSync(rows), 'TypeError', /^Expected a number for x\[1\]\[1\] but received a hole/);
    const outer = [PROBE_ROWS[0], , PROBE_ROWS[2]] as number[][];
    (Array.prototype as unknown as Record<number, unknown>)[1] = PROBE_ROWS[1];
    expectError(() => flow.logProbSync(outer), 'TypeError', /^Expected an array of 3 numbers for x\[1\] but received a hole/);
  });

  it('reads each element once through getters, and passes on what a getter throws', () => {
    let reads = 0;
    const rows = PROBE_ROWS.map((r) => [...r]);
    Object.defineProperty(rows[1], 0, {
      get: () => (reads++ === 0 ? PROBE_ROWS[1][0] : NaN),
      enumerable: true,
    });
    expect(bits(flow.logProbSync(rows))).toEqual(bits(expected));
    expect(reads).toBe(1);
    const throwing = PROBE_ROWS.map((r) => [...r]);
    Object.defineProperty(throwing, 2, {
      get: () => {
        throw new Error('getter says no');
      },
    });
    const before = { ...nativeCalls };
    expect(() => flow.logProbSync(throwing)).toThrow(/^getter says no$/);
    expect(nativeCalls).toEqual(before);
  });

  it('refuses a Proxy whose rows change under it, and reads a well-behaved Proxy like the array', () => {
    const shrinking = new Proxy(PROBE_ROWS.map((r) => [...r]), {
      get(target, key, receiver) {
        const value: unknown = Reflect.get(target, key, receiver);
        if (key === '1') target.length = 2; // reading row 1 removes rows 2 and 3
        return value;
      },
    });
    expectError(() => flow.logProbSync(shrinking), 'TypeError', /^Expected an array of 3 numbers for x\[2\] but received a hole/);
    const plain = new Proxy(PROBE_ROWS, {});
    expect(bits(flow.logProbSync(plain))).toEqual(bits(expected));
  });
});

// ---------------------------------------------------------------------------------------
// setParameters

describe('setParameters', () => {
  let flow: Flow;
  let names: string[];
  const bias = 'layers.0.shift.bias';
  beforeAll(() => {
    flow = smallFlow();
    names = Object.keys(flow.parameterShapes());
  });

  /** Everything observable about the flow's parameters and outputs. */
  function state(f: Flow) {
    const params = f.getParameters();
    return {
      params: Object.fromEntries(Object.entries(params).map(([k, v]) => [k, bits(v)])),
      logProb: bits(f.logProbSync(PROBE_F32)),
      samples: bits(f.sampleSync(4, { seed: 3 })),
      inverse: bits(f.inverseSync(PROBE_F32).z),
    };
  }

  it.each<[string, unknown, ErrorKind, RegExp]>([
    ['an unknown name', { 'layers.9.shift.bias': new Float32Array(3) }, 'TypeError', /^Unknown parameter "layers\.9\.shift\.bias"; this flow has: layers\.0\.hidden\.0\.weight, /],
    ['the name of a permutation layer', { 'layers.1.shift.bias': new Float32Array(3) }, 'TypeError', /^Unknown parameter "layers\.1\.shift\.bias"/],
    ['a short array', { [bias]: new Float32Array(2) }, 'RangeError', /^Expected 3 \(shape \[3\]\) for parameters\["layers\.0\.shift\.bias"\]\.length but received 2$/],
    ['an empty array', { [bias]: [] }, 'RangeError', /^Expected 3 \(shape \[3\]\) for parameters\["layers\.0\.shift\.bias"\]\.length but received 0$/],
    ['a long weight', { 'layers.0.hidden.0.weight': new Float32Array(25) }, 'RangeError', /^Expected 24 \(shape \[8, 3\]\) for parameters\["layers\.0\.hidden\.0\.weight"\]\.length but received 25$/],
    ['NaN', { [bias]: [0, NaN, 0] }, 'RangeError', /^Expected a finite float32 value for parameters\["layers\.0\.shift\.bias"\]\[1\] but received NaN$/],
    ['NaN in a Float32Array', { [bias]: Float32Array.from([0, 0, NaN]) }, 'RangeError', /^Expected a finite float32 value for parameters\["layers\.0\.shift\.bias"\]\[2\] but received NaN$/],
    ['Infinity', { [bias]: [Infinity, 0, 0] }, 'RangeError', /^Expected a finite float32 value for parameters\["layers\.0\.shift\.bias"\]\[0\] but received Infinity$/],
    ['-Infinity in a Float64Array', { [bias]: Float64Array.from([0, -Infinity, 0]) }, 'RangeError', /\[1\] but received -Infinity$/],
    ['1e39 (beyond float32)', { [bias]: [0, 0, 1e39] }, 'RangeError', /^Expected a finite float32 value for parameters\["layers\.0\.shift\.bias"\]\[2\] but received 1e\+39$/],
    ['-1e39 in a Float64Array', { [bias]: Float64Array.from([-1e39, 0, 0]) }, 'RangeError', /\[0\] but received -1e\+39$/],
    ['a number instead of an array', { [bias]: 5 }, 'TypeError', /^Expected a Float32Array of 3 values for parameters\["layers\.0\.shift\.bias"\] but received 5$/],
    ['a string instead of an array', { [bias]: '000' }, 'TypeError', /^Expected a Float32Array of 3 values for parameters\["layers\.0\.shift\.bias"\] but received the string "000"$/],
    ['an Int32Array', { [bias]: new Int32Array(3) }, 'TypeError', /^Expected a Float32Array of 3 values for parameters\["layers\.0\.shift\.bias"\] but received an Int32Array of length 3$/],
  ])('rejects %s', (_label, values, kind, message) => {
    expectError(() => flow.setParameters(values as Record<string, Float32Array>), kind, message);
  });

  it('rejects a non-numeric entry in an array (naming the entry)', () => {
    // Either class is a fair answer for a string among numbers; the message must name the entry.
    expectError(
      () => flow.setParameters({ [bias]: [0, '1', 0] } as unknown as Record<string, number[]>),
      ['TypeError', 'RangeError'],
      /^Expected a .*for parameters\["layers\.0\.shift\.bias"\]\[1\] but received the string "1"$/,
    );
    expectError(
      () => flow.setParameters({ [bias]: [0, 0, null] } as unknown as Record<string, number[]>),
      ['TypeError', 'RangeError'],
      /^Expected a .*for parameters\["layers\.0\.shift\.bias"\]\[2\] but received null$/,
    );
  });

  it.each<[string, unknown, string]>([
    ['null', null, 'null'],
    ['undefined', undefined, 'undefined'],
    ['a number', 5, '5'],
    ['a string', 'params', 'the string "params"'],
    ['an array', [new Float32Array(3)], 'an array of length 1'],
    ['a Map', new Map([[bias, new Float32Array(3)]]), 'an object'],
    ['a Float32Array', new Float32Array(3), 'a Float32Array of length 3'],
  ])('rejects %s instead of an object', (_label, values, received) => {
    expectError(
      () => flow.setParameters(values as Record<string, Float32Array>),
      'TypeError',
      new RegExp(`^Expected an object of named Float32Arrays for parameters but received ${esc(received)}$`),
    );
  });

  it('changes nothing when any entry is rejected (atomic)', () => {
    const original = flow.getParameters();
    const before = state(flow);
    const good = { [bias]: Float32Array.from([0.5, -0.5, 0.25]), 'layers.2.scale.bias': Float32Array.from([1, 2, 3]) };
    const bad: [Record<string, unknown>, ErrorKind][] = [
      [{ ...good, 'layers.0.scale.bias': [0, NaN, 0] }, 'RangeError'],
      [{ ...good, 'layers.0.scale.bias': [0, 1e39, 0] }, 'RangeError'],
      [{ ...good, 'layers.0.scale.weight': new Float32Array(5) }, 'RangeError'],
      [{ ...good, nope: new Float32Array(3) }, 'TypeError'],
      [{ ...good, 'layers.2.shift.bias': 'abc' }, 'TypeError'],
    ];
    for (const [values, kind] of bad) {
      expectError(() => flow.setParameters(values as Record<string, Float32Array>), kind, /./);
      expect(state(flow)).toEqual(before);
    }
    // The good entries on their own are accepted and do change the flow.
    flow.setParameters(good);
    const after = state(flow);
    expect(after.params[bias]).toEqual(bits(good[bias]));
    expect(after.logProb).not.toEqual(before.logProb);
    // Restore, with a Float64Array and a number[]: the flow is back exactly where it was.
    flow.setParameters({});
    flow.setParameters({ [bias]: Float64Array.from(original[bias]) });
    flow.setParameters({ 'layers.2.scale.bias': Array.from(original['layers.2.scale.bias']) });
    expect(state(flow)).toEqual(before);
    expect(Object.keys(original).sort()).toEqual([...names].sort());
  });

  it('keeps its own copy, so a caller cannot smuggle NaN in afterwards', () => {
    const original = flow.getParameters();
    const before = state(flow);
    const values = Float32Array.from([0.5, -0.5, 0.25]);
    flow.setParameters({ [bias]: values });
    const accepted = state(flow);
    values[1] = NaN;
    const got = flow.getParameters();
    got[bias][0] = NaN;
    expect(state(flow)).toEqual(accepted);
    expect(allFinite(flow.logProbSync(PROBE_F32))).toBe(true);
    flow.setParameters({ [bias]: original[bias] });
    expect(state(flow)).toEqual(before);
  });
});

// ---------------------------------------------------------------------------------------
// setThreads

describe('huge weights', () => {
  it('warn once per process, and only past the bound', () => {
    const emitted: unknown[][] = [];
    const spy = jest.spyOn(process, 'emitWarning').mockImplementation((...args: unknown[]) => void emitted.push(args));
    try {
      expect(warnOnHugeWeights('setParameters', 1e3)).toBe(false);
      expect(warnOnHugeWeights('setParameters', HUGE_WEIGHT)).toBe(false);
      expect(warnOnHugeWeights('setParameters', NaN)).toBe(false);
      expect(emitted).toHaveLength(0);
      expect(warnOnHugeWeights('setParameters', 3e38)).toBe(true);
      expect(warnOnHugeWeights('setParameters', 1e30)).toBe(true);
      expect(emitted).toEqual([[expect.stringMatching(/^setParameters: a weight of magnitude 3\.00e\+38 .* overflow/), { code: 'IAFLOW_HUGE_WEIGHTS' }]]);
    } finally {
      spy.mockRestore();
    }
    // What the warning is about: weights like these give NaN samples.
    const flow = smallFlow();
    const params = flow.getParameters();
    for (const value of Object.values(params)) value.forEach((_, i) => (value[i] = i % 2 ? -3e38 : 3e38));
    flow.setParameters(params);
    expect(flow.sampleSync(4, { seed: 1 }).some((v) => !Number.isFinite(v))).toBe(true);
  });
});

describe('setThreads', () => {
  it.each<[string, unknown, ErrorKind]>([
    ['0', 0, 'RangeError'],
    ['-1', -1, 'RangeError'],
    ['1.5', 1.5, 'RangeError'],
    ['1025', 1025, 'RangeError'],
    ['Infinity', Infinity, 'RangeError'],
    ["'two'", 'two', 'TypeError'],
    ['NaN', NaN, 'TypeError'],
    ['undefined', undefined, 'TypeError'],
  ])('rejects %s', (_label, threads, kind) => {
    const before = getThreads();
    expectError(() => setThreads(threads as unknown as number), kind, /^Expected an integer in \[1, 1024\] for threads but received /);
    expect(getThreads()).toBe(before);
  });

  it('still accepts a valid count', () => {
    const before = getThreads();
    setThreads(1);
    expect(getThreads()).toBe(1);
    setThreads(before);
    expect(getThreads()).toBe(before);
  });
});

// ---------------------------------------------------------------------------------------

describe('after all the bad calls', () => {
  it('the addon was reached only by the good calls, and a fresh flow still works', async () => {
    const flow = smallFlow(99);
    const x = flow.sampleSync(8, { seed: 1 });
    expect(allFinite(x)).toBe(true);
    const lp = await flow.logProb(x);
    expect(lp.length).toBe(8);
    expect(allFinite(lp)).toBe(true);
    const { z } = await flow.inverse(x);
    const back = flow.forwardSync(z).x;
    back.forEach((v, i) => expect(v).toBeCloseTo(x[i], 4));
    const { logProb } = await flow.sampleWithLogProb(3, { seed: 2 });
    expect(allFinite(logProb)).toBe(true);
    expect(nativeCalls.run).toBeGreaterThan(0);
    expect(nativeCalls.construct).toBeGreaterThan(0);
  });
});

describe('limits and copies', () => {
  test('a flow too large to hold is refused before anything is allocated', () => {
    expect(() => createFlow({ dim: 65536, layers: [iaf({ hidden: [65536] })], seed: 1 })).toThrow(
      /^Expected a flow of at most 268435456 parameters \(these layers have \d+\) for config\.layers/,
    );
  });

  test('permutations count toward the size: 4096 reversals of dim 65536 are refused in milliseconds', () => {
    const heapBefore = process.memoryUsage().heapUsed;
    const started = performance.now();
    const reversals = Array.from({ length: 4096 }, () => reverse());
    expect(() => createFlow({ dim: 65536, layers: reversals, seed: 1 })).toThrow(
      /^Expected a flow whose config holds at most 1048576 integers \(.*these layers have 268435456\) for config\.layers/,
    );
    // The same for MADE layers, whose degrees are not built for a flow that is refused.
    expect(() => createFlow({ dim: 65536, layers: Array.from({ length: 4096 }, () => iaf({ hidden: [1] })), seed: 1 })).toThrow(
      /^Expected a flow of at most 268435456 parameters/,
    );
    expect(performance.now() - started).toBeLessThan(1500); // 32 s and an out-of-memory abort before
    expect(process.memoryUsage().heapUsed - heapBefore).toBeLessThan(64 * 2 ** 20);
  });

  test('the config bound is exact: 64 permutations of dim 16384 (2^20 entries) fit the bound, 65 do not', () => {
    // checkFlowConfig is what createFlow and loadFlow both call; a Flow of 2^20 entries takes seconds to build.
    const layers = (count: number, last = reverse()) =>
      Array.from({ length: count }, (_, k) => (k === count - 1 ? last : k % 2 ? reverse() : permute({ seed: k })).resolve(16384, `layers[${k}]`));
    const config = (list: unknown[]) => ({ formatVersion: 1, dim: 16384, contextDim: 0, layers: list });
    expect(checkFlowConfig(config(layers(64)), 'config').layers).toHaveLength(64);
    expect(() => checkFlowConfig(config(layers(65)), 'config')).toThrow(/these layers have 1064960\) for config\.layers/);
    // A MADE layer counts dim + its hidden widths.
    expect(() => checkFlowConfig(config(layers(64, maf({ hidden: [1] }))), 'config')).toThrow(/these layers have 1048577\)/);
    expect(createFlow({ dim: 16384, layers: [maf({ hidden: [1] }), reverse()], seed: 1 }).config.layers).toHaveLength(2);
  });

  test('a model file config over the bound is refused before its arrays are read', () => {
    const bogus = { type: 'permutation', permutation: 'not even an array' };
    const config = { formatVersion: 1, dim: 65536, contextDim: 0, layers: Array.from({ length: 17 }, () => bogus) };
    expect(() => checkFlowConfig(config, 'config')).toThrow(/at most 1048576 integers .*these layers have 1114112\)/);
    expect(() => checkFlowConfig({ ...config, layers: config.layers.slice(0, 2) }, 'config')).toThrow(
      /^Expected a permutation of 0\.\.65535 for config\.layers\[0\]\.permutation/,
    );
  });

  test('a reversal is held as a flag until the config is built, then as the permutation every reader knows', () => {
    const descriptor = reverse();
    const resolved = descriptor.resolve(5, 'layers[0]');
    expect(Object.getOwnPropertyDescriptor(resolved, 'permutation')?.get).toBeDefined();
    const flow = createFlow({ dim: 5, layers: [maf({ hidden: [4] }), descriptor], seed: 1 });
    const layer = flow.config.layers[1];
    expect(Object.getOwnPropertyDescriptor(layer, 'permutation')?.value).toEqual([4, 3, 2, 1, 0]);
    expect(JSON.parse(JSON.stringify(flow.config)).layers[1]).toEqual({ type: 'permutation', permutation: [4, 3, 2, 1, 0] });
    // The config as it was before: a file saved by an earlier version builds the same flow.
    expect(checkFlowConfig(JSON.parse(JSON.stringify(flow.config)), 'config')).toEqual(flow.config);
  });

  test('a sparse list of layers is refused, naming the hole', () => {
    // eslint-disable-next-line no-sparse-arrays
    expect(() => createFlow({ dim: 2, layers: [, iaf()] as LayerDescriptor[], seed: 1 })).toThrow(
      /^Expected a layer object for config\.layers\[0\] but received undefined$/,
    );
  });

  test('changing the options object after iaf() does not change the layer', () => {
    const options = { hidden: [4], order: [2, 0, 1] };
    const layer = iaf(options);
    options.order[0] = 0;
    options.hidden[0] = 9;
    const flow = createFlow({ dim: 3, layers: [layer], seed: 1 });
    expect(flow.config.layers[0]).toMatchObject({ hidden: [4], inputDegrees: [3, 1, 2] });
  });
});
