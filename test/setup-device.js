// The CPU suite reads its results on the host (toArraySync, toFloat32Sync): where a GPU
// is usable, 'auto' would put its layers on CUDA. So jest runs with MOEKIT_DEVICE=cpu
// unless the caller sets it; test/gpu names 'cuda' explicitly wherever it means the GPU.
if (process.env.MOEKIT_DEVICE === undefined) process.env.MOEKIT_DEVICE = 'cpu';
