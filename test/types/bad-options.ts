// Misused options that a TypeScript user must see rejected at compile time. Type-checked (never
// run) by test/types.test.ts: each line marked `// error TSxxxx` must give exactly that error,
// and no other line may give any. Excluded from `tsc -p tsconfig.test.json` on purpose.
import {
  createFlow,
  createIAF,
  createMAF,
  iaf,
  importTorch,
  maf,
  permute,
  reverse,
  standardNormal,
  writeNpy,
  type Flow,
} from '../../src/index';

export async function misuse(flow: Flow): Promise<void> {
  createFlow({ dim: 2, layers: [reverse()], sede: 1 }); // error TS2353
  createFlow({ dim: 2, layer: [reverse()] }); // error TS2561
  iaf({ hiden: [8] }); // error TS2561
  maf({ activation: 'relu', scael: 'exp' }); // error TS2561
  maf({ activation: 'sigmoid' }); // error TS2322
  iaf({ scale: 'log' }); // error TS2322
  createIAF({ dim: 4, layer: 3 }); // error TS2561
  createMAF({ dim: 4, order: 'natural' }); // error TS2353
  permute({ sed: 3 }); // error TS2353
  await flow.sample(10, { sed: 1 }); // error TS2561
  await flow.sampleWithLogProb(10, { seed: 1, threads: 2 }); // error TS2353
  standardNormal(4, 2, { seeed: 3 }); // error TS2561
  await writeNpy('x.npy', new Int32Array(3)); // error TS2345
  await importTorch('f.safetensors', { from: 'sbi-nsf' }); // error TS2322
  flow.sampleStream(10, { contxt: [1] }); // error TS2561
  const wrongArray: Float64Array = await flow.sample(3); // error TS2322
  void wrongArray;
}
