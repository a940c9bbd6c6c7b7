/** Expert offload: host expert store, device expert cache, offloaded MoE layer stack. */
export { ExpertStore, EXPERT_ROLES } from './store';
export type { ExpertRole, ExpertWeightSpec, ExpertWeightLocation, ExpertTensors } from './store';
export { DeviceExpertCache } from './cache';
export type { DeviceCacheOptions, Acquired } from './cache';
export { OffloadedMoE, PregatingPrefetchSource } from './model';
export type { OffloadOptions, OffloadPretrainedOptions, OffloadPrefetchOptions, OffloadForwardOptions, ResidentWeights, OffloadLayerConfig } from './model';
