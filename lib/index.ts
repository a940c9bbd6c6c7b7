/**
 * moekit: Mixture-of-Experts inference for Node.js.
 * @packageDocumentation
 */
export { MoekitError } from './errors';
export type { MoekitErrorCode } from './errors';
export { runtime, resolveDevice } from './device';
export type { Device, DeviceSpec, Runtime, CudaDeviceInfo } from './device';
export type { DType } from './dtype';
export { Tensor, MAX_READ_BYTES } from './tensor';
export type { TensorData } from './tensor';
export { gate, dispatch, groupedGemm, combine, ACTIVATIONS } from './ops';
export type { Routing, GateOptions, Dispatch, DispatchOptions, GroupedGemmOptions, CombineOptions, Activation, WeightLayout } from './ops';
export { routingStats, SCORINGS, SELECTIONS } from './routing';
export type { RoutingOptions, RoutingStats, Scoring, Selection } from './routing';
export { MoELayer } from './layer';
export type { MoELayerConfig, MoELayerWeights, ForwardOptions, ForwardResult, ForwardRouting } from './layer';
export { preset, FAMILIES } from './presets';
export type { Family, Preset, PresetOptions } from './presets';
export { SafetensorsFile, Checkpoint, writeSafetensors, readEntry, readStacked } from './safetensors';
export type { TensorEntry, WriteOptions } from './safetensors';
export { listMoELayers, loadMoELayer } from './pretrained';
export type { MoELayerInfo, PretrainedOptions } from './pretrained';
