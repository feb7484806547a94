// Correct use of the public API, type-checked (never run) by test/types.test.ts: it must compile
// with no error under strict settings. Excluded from `tsc -p tsconfig.test.json` on purpose.
import {
  createFlow,
  createIAF,
  createMAF,
  decodeNpy,
  encodeNpy,
  getThreads,
  iaf,
  importTorch,
  loadFlow,
  maf,
  ModelFileError,
  NpyFileError,
  permute,
  readNpy,
  reverse,
  saveFlow,
  setThreads,
  standardNormal,
  writeNpy,
  type Flow,
  type FlowConfig,
  type FlowOptions,
  type ImportTorchOptions,
  type MadeOptions,
  type NpyArray,
  type SampleOptions,
} from '../../src/index';

export async function use(): Promise<number> {
  const made: MadeOptions = { hidden: [32, 32], activation: 'tanh', scale: 'gated', order: [1, 0, 2] };
  const options: FlowOptions = { dim: 3, seed: 1, layers: [iaf(made), reverse(), maf({ hidden: 16 }), permute({ seed: 2 }), permute([2, 0, 1])] };
  const flow: Flow = createFlow(options);
  const stacked: Flow[] = [createIAF({ dim: 3, layers: 2, hidden: [8], scale: 'exp' }), createMAF({ dim: 3, activation: 'elu' })];
  const sampleOptions: SampleOptions = { seed: 42 };
  const x: Float32Array = await flow.sample(10, sampleOptions);
  const both: { x: Float32Array; logProb: Float32Array } = await flow.sampleWithLogProb(10, { seed: 1 });
  const lp: Float32Array = await flow.logProb(x);
  const lpRows: Float32Array = flow.logProbSync([[0, 1, 2]]);
  const fwd: { x: Float32Array; logDet: Float32Array } = await flow.forward(standardNormal(10, 3, { seed: 3 }));
  const inv: { z: Float32Array; logDet: Float32Array } = flow.inverseSync(new Float64Array(30));
  const params: Record<string, Float32Array> = flow.getParameters();
  flow.setParameters(params);
  const config: Readonly<FlowConfig> = flow.config;
  await saveFlow(flow, 'model.safetensors');
  const loaded: Flow = await loadFlow('model.safetensors');
  await writeNpy('samples.npy', x, [10, flow.dim]);
  await writeNpy('values.npy', new Float64Array([1, 2]));
  const read: NpyArray = await readNpy('samples.npy');
  const data: Float32Array | Float64Array = read.data;
  const shape: number[] = read.shape;
  const bytes: Buffer = encodeNpy(data, shape);
  const again: NpyArray = decodeNpy(bytes, 'bytes');
  // A conditional flow from sbi: the context in sample, logProb and sampleStream.
  const sbi: ImportTorchOptions = { from: 'sbi-maf', activation: 'tanh' };
  const posterior: Flow = await importTorch('posterior.safetensors', sbi);
  const draws: Float32Array = await posterior.sample(100, { context: [0.1, 0.2], seed: 1 });
  const scored: Float32Array = await posterior.logProb(draws, { context: [[0.1, 0.2]] });
  for await (const chunk of posterior.sampleStream(100, { context: new Float32Array(200), chunkRows: 10 })) void chunk;
  void scored;
  setThreads(getThreads());
  for (const error of [new ModelFileError('f', 'p'), new NpyFileError('f', 'p')]) {
    const where: string = error.source;
    void where;
  }
  return stacked.length + both.x.length + lp.length + lpRows.length + fwd.logDet.length + inv.z.length +
    config.layers.length + loaded.numParameters + again.shape.length;
}
