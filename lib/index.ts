/**
 * moekit: Mixture-of-Experts inference for Node.js.
 * @packageDocumentation
 */
export { MoekitError } from './errors';
export type { MoekitErrorCode } from './errors';
export { runtime, resolveDevice, deviceMemory } from './device';
export type { Device, DeviceSpec, Runtime, CudaDeviceInfo, DeviceMemory } from './device';
export type { DType } from './dtype';
export { Tensor, MAX_READ_BYTES } from './tensor';
export type { TensorData } from './tensor';
export { gate, dispatch, groupedGemm, combine, profileOp, ACTIVATIONS } from './ops';
export type { Routing, GateOptions, Dispatch, DispatchOptions, GroupedGemmOptions, CombineOptions, Activation, WeightLayout, ProfiledOps } from './ops';
export { profileCopy } from './profile';
export type { Profile, ProfileOptions } from './profile';
export { routingStats, SCORINGS, SELECTIONS } from './routing';
export type { RoutingOptions, RoutingStats, Scoring, Selection } from './routing';
export { MoELayer, CUDA_GRAPH_MAX_TOKENS } from './layer';
export type { MoELayerConfig, MoELayerWeights, ForwardOptions, ForwardResult, ForwardRouting, MoELayerOptions } from './layer';
export { preset, FAMILIES } from './presets';
export type { Family, Preset, PresetOptions } from './presets';
export { SafetensorsFile, Checkpoint, writeSafetensors, readEntry, readStacked } from './safetensors';
export type { TensorEntry, WriteOptions } from './safetensors';
export { listMoELayers, loadMoELayer } from './pretrained';
export type { MoELayerInfo, PretrainedOptions } from './pretrained';
export { ExpertStore, DeviceExpertCache, OffloadedMoE, PregatingPrefetchSource, EXPERT_ROLES } from './offload';
export type { ExpertRole, ExpertWeightSpec, ExpertWeightLocation, ExpertTensors, DeviceCacheOptions, Acquired, OffloadOptions, OffloadPretrainedOptions, OffloadPrefetchOptions, OffloadForwardOptions, ResidentWeights, OffloadLayerConfig } from './offload';
