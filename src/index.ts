// iaflow's public API, in one place.
export { Flow, backends, createFlow, createIAF, createMAF, setThreads, getThreads, standardNormal } from './flow';
export type { BackendInfo, FlowOptions, Rows, RunOptions, RunSyncOptions, SampleOptions, SampleSyncOptions, StackOptions } from './flow';
export { SampleStream } from './stream';
export type { SampleStreamOptions } from './stream';
export { iaf, maf, reverse, permute, affine } from './layers';
export type {
  Activation,
  AffineLayerConfig,
  ContextForm,
  AffineOptions,
  FlowConfig,
  LayerConfig,
  LayerDescriptor,
  MadeLayerConfig,
  MadeOptions,
  PermutationLayerConfig,
  ScaleKind,
} from './layers';
export { saveFlow, loadFlow, importTorch, ModelFileError } from './io';
export type { ImportTorchOptions, TorchSource } from './io';
export { readNpy, writeNpy, encodeNpy, decodeNpy, NpyFileError } from './npy';
export type { NpyArray } from './npy';
export { datasets } from './datasets';
export type { DatasetOptions, NoisyDatasetOptions } from './datasets';
export { targets } from './targets';
export type { BuiltinTarget, GaussianMixtureOptions, GridOptions } from './targets';
export { fit, fitReverseKL, distill, fitSchedule } from './train';
export type {
  DistillOptions,
  FitOptions,
  FitProgress,
  FitReport,
  OptimizerOptions,
  ReverseKLOptions,
  ReverseKLProgress,
  ReverseKLReport,
  Target,
  TargetEvaluation,
} from './train';
export { evaluate, gaussianBaseline, summarizeLogLikelihoods } from './evaluate';
export type { GaussianBaseline, GaussianBaselineOptions, LogLikelihoodSummary } from './evaluate';
export { renderPlot, renderPlotWithLayout } from './plot';
export type { PlotOptions, PlotPanel, PlotResult, Rect, Tick } from './plot';
