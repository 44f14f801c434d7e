// Fused uncertainty scoring for embedcache.kernels (compiled at run time by CuPy's NVRTC, see cuda.py).
//
// One warp per row: logits -> softmax -> score -> exclusion mask, kept in registers and shared
// memory, so the [N, C] probability matrix is never written to global memory. The scores agree
// with the CPU path's up to float32 rounding (kernels/README.md, the determinism contract).
//
// Strategy codes: 0 least-confidence, 1 entropy, 2 margin, 3 max-logit.
// fp16 embeddings arrive as their raw 16-bit patterns (unsigned short), converted exactly to float.

#define WARPS_PER_BLOCK 8
#define FULL_MASK 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)  // -inf without <math.h>, which NVRTC lacks

__device__ __forceinline__ float to_float(float v) { return v; }

__device__ __forceinline__ float to_float(unsigned short bits) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(bits));
    return f;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}

__device__ __forceinline__ int warp_sum(int v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

// The score of one row from its logits z[0..C) (plus bias[c] when bias is not null), computed by a
// whole warp; every lane returns it. Entropy uses H = log s - sum(e_c (z_c - m)) / s with
// e_c = exp(z_c - m), s = sum(e_c); margin uses p1 - p2 = (1 - exp(z_2 - m)) / s.
__device__ float warp_score(const float* z, const float* bias, int C, int strategy) {
    const int lane = threadIdx.x & 31;
    float m = NEG_INF;
    for (int c = lane; c < C; c += 32) m = fmaxf(m, z[c] + (bias ? bias[c] : 0.f));
    m = warp_max(m);
    if (strategy == 3) return -m;
    float s = 0.f, t = 0.f, second = NEG_INF;
    int tops = 0;
    for (int c = lane; c < C; c += 32) {
        const float zc = z[c] + (bias ? bias[c] : 0.f);
        const float d = zc - m;
        const float e = expf(d);
        s += e;
        t += e * d;
        if (zc == m) ++tops; else second = fmaxf(second, zc);
    }
    s = warp_sum(s);
    if (strategy == 0) return 1.f - 1.f / s;
    if (strategy == 1) return logf(s) - warp_sum(t) / s;
    second = warp_max(second);
    tops = warp_sum(tops);
    if (C < 2) return 0.f;
    const float e2 = tops > 1 ? 1.f : expf(second - m);
    return -(1.f - e2) / s;
}

// Small C (up to 32): the whole head in one pass over X. Lane j accumulates columns j, j+32, ...
template <typename T, int C>
__global__ void fused_scores(const T* __restrict__ x, long long n, int d, const float* __restrict__ w,
                             const float* __restrict__ b, const unsigned char* __restrict__ excluded,
                             int strategy, float* __restrict__ score) {
    __shared__ float logits[WARPS_PER_BLOCK][C];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const long long stride = (long long)gridDim.x * WARPS_PER_BLOCK;
    for (long long row = (long long)blockIdx.x * WARPS_PER_BLOCK + warp; row < n; row += stride) {
        const T* xr = x + row * d;
        float acc[C];
#pragma unroll
        for (int c = 0; c < C; ++c) acc[c] = 0.f;
        for (int j = lane; j < d; j += 32) {
            const float v = to_float(xr[j]);
            const float* wj = w + (long long)j * C;
#pragma unroll
            for (int c = 0; c < C; ++c) acc[c] = fmaf(v, wj[c], acc[c]);
        }
#pragma unroll
        for (int c = 0; c < C; ++c) {
            const float total = warp_sum(acc[c]);
            if (lane == c) logits[warp][c] = total + b[c];
        }
        __syncwarp();
        const float s = warp_score(logits[warp], nullptr, C, strategy);
        if (lane == 0) score[row] = (excluded != nullptr && excluded[row]) ? NEG_INF : s;
        __syncwarp();
    }
}

// Large C: logits [n, C] come from a cuBLAS GEMM; the bias, softmax, score and mask are fused here.
extern "C" __global__ void logit_scores(const float* __restrict__ z, long long n, int C, const float* __restrict__ b,
                             const unsigned char* __restrict__ excluded, int strategy, float* __restrict__ score) {
    const int lane = threadIdx.x & 31;
    const long long stride = (long long)gridDim.x * WARPS_PER_BLOCK;
    for (long long row = (long long)blockIdx.x * WARPS_PER_BLOCK + (threadIdx.x >> 5); row < n; row += stride) {
        const float s = warp_score(z + row * C, b, C, strategy);
        if (lane == 0) score[row] = (excluded != nullptr && excluded[row]) ? NEG_INF : s;
    }
}
