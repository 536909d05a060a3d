// Matrix-vector products for LLM decoding: y[t] = W x[t] for a row-major W (N, K).
// Lesson 13 of the Kuiper Course; loaded at run time by cupy.RawModule (kuiper/cuda/cuda_c.py).
//
// One warp (32 threads) computes one output y[t, n]. Its lanes walk along row n of W together,
// so each step of the warp reads 32 neighbouring floats (sgemv_f32) or 32 float4s = 512 bytes
// (sgemv_f32x4): whole cache lines, no wasted bytes. Decoding is limited by how fast W streams
// from memory, so the wide, coalesced loads are the whole game. The 32 partial sums are then
// added with register shuffles, without shared memory or __syncthreads.
//
// Launch: block (32, WARPS_PER_BLOCK), grid (ceil(N / WARPS_PER_BLOCK), T).

#define WARP_SIZE 32
#define FULL_MASK 0xffffffffu

// Sum of `value` over the 32 lanes of a warp; lane 0 ends up with the total.
__device__ __forceinline__ float warp_reduce_sum(float value) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2)
        value += __shfl_down_sync(FULL_MASK, value, offset);
    return value;
}

// Scalar loads: any K.
extern "C" __global__ void sgemv_f32(const float* __restrict__ w, const float* __restrict__ x,
                                     float* __restrict__ y, int n, int k) {
    const int lane = threadIdx.x;
    const int row = blockIdx.x * blockDim.y + threadIdx.y;
    const int t = blockIdx.y;
    if (row >= n) return;  // the whole warp leaves together: the shuffles below stay full-warp
    const float* w_row = w + (size_t)row * k;
    const float* x_t = x + (size_t)t * k;
    float sum = 0.0f;
    for (int i = lane; i < k; i += WARP_SIZE)
        sum += w_row[i] * x_t[i];
    sum = warp_reduce_sum(sum);
    if (lane == 0) y[(size_t)t * n + row] = sum;
}

// float4 loads: K must be a multiple of 4 and w, x 16-byte aligned (cupy allocations are 256-byte
// aligned). Each lane loads 16 bytes of W per instruction instead of 4.
extern "C" __global__ void sgemv_f32x4(const float* __restrict__ w, const float* __restrict__ x,
                                       float* __restrict__ y, int n, int k) {
    const int lane = threadIdx.x;
    const int row = blockIdx.x * blockDim.y + threadIdx.y;
    const int t = blockIdx.y;
    if (row >= n) return;
    const float4* w_row = reinterpret_cast<const float4*>(w + (size_t)row * k);
    const float4* x_t = reinterpret_cast<const float4*>(x + (size_t)t * k);
    float sum = 0.0f;
    for (int i = lane; i < k / 4; i += WARP_SIZE) {
        const float4 a = w_row[i];
        const float4 b = x_t[i];
        sum += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
    }
    sum = warp_reduce_sum(sum);
    if (lane == 0) y[(size_t)t * n + row] = sum;
}
