// Flows to and from model files: one .safetensors file, float32 tensors named
// `layers.{k}.{param}` as getParameters() names them, the config as JSON in
// `__metadata__` (key "iaflow"). Python's safetensors package reads it as is.
import { Flow } from './flow';
import { checkFlowConfig, FlowConfig, parameterShapes } from './layers';
import { encodeSafetensors, ModelFileError, readSafetensors, Tensor, writeFileAtomic } from './safetensors';
import { invalidType } from './validation';

export { ModelFileError };

export const METADATA_FORMAT = 'iaflow';
const CONFIG_KEY = 'iaflow';

/** Writes the flow atomically (temp file + rename): a failed save leaves any previous file intact. */
export async function saveFlow(flow: Flow, path: string): Promise<void> {
  if (!(flow instanceof Flow)) throw invalidType('flow', 'a Flow', flow);
  if (typeof path !== 'string' || path.length === 0) throw invalidType('path', 'a file path string', path);
  await writeFileAtomic(path, encodeFlow(flow));
}

/** The bytes saveFlow writes. */
export function encodeFlow(flow: Flow): Buffer {
  const tensors = new Map<string, Tensor>();
  const shapes = flow.parameterShapes();
  for (const [name, data] of Object.entries(flow.getParameters())) {
    tensors.set(name, { dtype: 'F32', shape: shapes[name], data });
  }
  return encodeSafetensors(tensors, { format: METADATA_FORMAT, [CONFIG_KEY]: JSON.stringify(flow.config) });
}

/** Reads a model file written by saveFlow (or by anyone following the format), validating all of it. */
export async function loadFlow(path: string): Promise<Flow> {
  if (typeof path !== 'string' || path.length === 0) throw invalidType('path', 'a file path string', path);
  const file = await readSafetensors(path);
  const configText = file.metadata[CONFIG_KEY];
  if (configText === undefined) {
    throw new ModelFileError(path, `not an iaflow model file: __metadata__ has no "${CONFIG_KEY}" config`);
  }
  let config: FlowConfig;
  try {
    config = checkFlowConfig(JSON.parse(configText), 'config');
  } catch (error) {
    throw new ModelFileError(path, `bad config in __metadata__.${CONFIG_KEY}: ${(error as Error).message}`);
  }
  const shapes = parameterShapes(config);
  const params = new Map<string, Float32Array>();
  for (const [name, shape] of shapes) {
    const tensor = file.tensors.get(name);
    if (!tensor) throw new ModelFileError(path, `missing tensor ${name} (shape [${shape.join(', ')}])`);
    if (tensor.dtype !== 'F32') throw new ModelFileError(path, `tensor ${name} has dtype ${tensor.dtype}, expected F32`);
    if (tensor.shape.length !== shape.length || tensor.shape.some((d, i) => d !== shape[i])) {
      throw new ModelFileError(path, `tensor ${name} has shape [${tensor.shape.join(', ')}], expected [${shape.join(', ')}]`);
    }
    const data = tensor.data as Float32Array;
    const bad = data.findIndex((v) => !Number.isFinite(v));
    if (bad >= 0) throw new ModelFileError(path, `tensor ${name} holds a non-finite value (${data[bad]}) at index ${bad}`);
    params.set(name, data);
  }
  for (const name of file.tensors.keys()) {
    if (!shapes.has(name)) throw new ModelFileError(path, `unexpected tensor ${name}: the config has no such parameter`);
  }
  return new Flow(config, params);
}
