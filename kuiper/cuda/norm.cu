// Row-wise reductions with warp shuffles: RMSNorm and softmax, one block per row.
// Lesson 13 of the Kuiper Course; loaded at run time by cupy.RawModule (kuiper/cuda/cuda_c.py).
//
// A block reduction in two stages: each warp reduces its 32 values with __shfl_xor_sync (every
// lane gets the warp's result), lane 0 of each warp parks it in shared memory, and the first warp
// reduces those (at most 32) partials the same way. Two __syncthreads instead of log2(blockDim).
//
// Launch: grid (rows,), block (threads,) with threads a multiple of 32, at most 1024.

#define WARP_SIZE 32
#define FULL_MASK 0xffffffffu
#define LOWEST (-3.402823466e+38f)  // -FLT_MAX, spelled out: NVRTC has no <cfloat>

__device__ __forceinline__ float warp_sum(float value) {
    for (int mask = WARP_SIZE / 2; mask > 0; mask /= 2)
        value += __shfl_xor_sync(FULL_MASK, value, mask);
    return value;
}

__device__ __forceinline__ float warp_max(float value) {
    for (int mask = WARP_SIZE / 2; mask > 0; mask /= 2)
        value = fmaxf(value, __shfl_xor_sync(FULL_MASK, value, mask));
    return value;
}

// The sum of `value` over the block, returned to every thread.
__device__ float block_sum(float value) {
    __shared__ float partial[WARP_SIZE];
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int warps = blockDim.x / WARP_SIZE;
    value = warp_sum(value);
    if (lane == 0) partial[warp] = value;
    __syncthreads();
    value = lane < warps ? partial[lane] : 0.0f;
    value = warp_sum(value);  // every warp reduces the partials: no second broadcast needed
    __syncthreads();          // partial[] may be reused by the caller's next reduction
    return value;
}

// The maximum of `value` over the block, returned to every thread.
__device__ float block_max(float value) {
    __shared__ float partial[WARP_SIZE];
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int warps = blockDim.x / WARP_SIZE;
    value = warp_max(value);
    if (lane == 0) partial[warp] = value;
    __syncthreads();
    value = lane < warps ? partial[lane] : LOWEST;
    value = warp_max(value);
    __syncthreads();
    return value;
}

// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight, for rows of length d.
extern "C" __global__ void rmsnorm_f32(const float* __restrict__ x, const float* __restrict__ weight,
                                       float* __restrict__ out, int d, float eps) {
    const float* row = x + (size_t)blockIdx.x * d;
    float* dst = out + (size_t)blockIdx.x * d;
    float sum = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        sum += row[i] * row[i];
    const float scale = rsqrtf(block_sum(sum) / d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        dst[i] = row[i] * scale * weight[i];
}

// out[r] = exp(x[r] - max x[r]) / sum, for rows of length n.
extern "C" __global__ void softmax_f32(const float* __restrict__ x, float* __restrict__ out, int n) {
    const float* row = x + (size_t)blockIdx.x * n;
    float* dst = out + (size_t)blockIdx.x * n;
    float top = LOWEST;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        top = fmaxf(top, row[i]);
    top = block_max(top);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float e = __expf(row[i] - top);
        dst[i] = e;
        sum += e;
    }
    const float scale = 1.0f / block_sum(sum);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        dst[i] *= scale;
}
