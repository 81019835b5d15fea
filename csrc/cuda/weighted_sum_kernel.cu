// CUDA kernels for fastnas::weighted_sum (the mixed-op sum of DARTS: Liu, Simonyan & Yang, "DARTS:
// Differentiable Architecture Search", ICLR 2019; out = sum_k w_k * o_k(x)) and its backward. Plain
// CUDA C++: no torch headers, so nvcc stays fast.
//
// Element types: float, double, __half, __nv_bfloat16; accumulation in float (double for double).
// Forward: grid-stride loop over elements, the up to 32 input pointers of one launch travel by value in
// the kernel parameters and the weights are staged in shared memory; more inputs are processed in
// several launches that carry the partial sums in an accumulator workspace.
// Backward: blockIdx.y selects the input k; every block writes grad_inputs[k] = w_k * grad_out for its
// slice and adds its share of grad_weights[k] = sum(grad_out * inputs[k]) with a block reduction and one
// atomicAdd into the accumulator buffer.
#include "weighted_sum_kernel.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

namespace {

constexpr int kThreads = 256;
constexpr int kMaxInputs = FASTNAS_WS_MAX_INPUTS_PER_LAUNCH;

// Conversions between an element type and its accumulator type.
template <typename T>
struct Acc;

template <>
struct Acc<float> {
  using type = float;
  static __device__ __forceinline__ float load(float v) { return v; }
  static __device__ __forceinline__ float store(float v) { return v; }
};

template <>
struct Acc<double> {
  using type = double;
  static __device__ __forceinline__ double load(double v) { return v; }
  static __device__ __forceinline__ double store(double v) { return v; }
};

template <>
struct Acc<__half> {
  using type = float;
  static __device__ __forceinline__ float load(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half store(float v) { return __float2half_rn(v); }
};

template <>
struct Acc<__nv_bfloat16> {
  using type = float;
  static __device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

// Pointer arrays passed by value (kernel parameter space) to avoid a host-to-device copy per call.
template <typename T>
struct ConstPtrs {
  const T* p[kMaxInputs];
};

template <typename T>
struct MutPtrs {
  T* p[kMaxInputs];
};

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Sum of `v` over the block; the result is valid in thread 0.
template <typename A>
__device__ __forceinline__ A block_sum(A v) {
  __shared__ A warp_partials[kThreads / 32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) {
    warp_partials[warp] = v;
  }
  __syncthreads();
  const int num_warps = (blockDim.x + 31) >> 5;
  v = (threadIdx.x < num_warps) ? warp_partials[threadIdx.x] : A(0);
  if (warp == 0) {
    v = warp_sum(v);
  }
  return v;
}

// acc = (read_acc ? workspace[i] : 0) + sum_{k < count} w[k] * in[k][i]; written to the workspace
// (write_acc) or converted to T and written to out.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    weighted_sum_forward_kernel(ConstPtrs<T> in, int count, const typename Acc<T>::type* __restrict__ w,
                                typename Acc<T>::type* workspace, bool read_acc, bool write_acc,
                                T* __restrict__ out, int64_t n) {
  using A = typename Acc<T>::type;
  __shared__ A w_shared[kMaxInputs];
  if (threadIdx.x < count) {
    w_shared[threadIdx.x] = w[threadIdx.x];
  }
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    A acc = read_acc ? workspace[i] : A(0);
    for (int k = 0; k < count; ++k) {
      acc += w_shared[k] * Acc<T>::load(in.p[k][i]);
    }
    if (write_acc) {
      workspace[i] = acc;
    } else {
      out[i] = Acc<T>::store(acc);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    weighted_sum_backward_kernel(const T* __restrict__ grad_out, ConstPtrs<T> in, MutPtrs<T> grad_in,
                                 const typename Acc<T>::type* __restrict__ w,
                                 typename Acc<T>::type* grad_w, int64_t n) {
  using A = typename Acc<T>::type;
  const int k = blockIdx.y;
  const T* __restrict__ x = in.p[k];
  T* __restrict__ gx = grad_in.p[k];
  const A wk = w[k];
  A partial = A(0);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const A g = Acc<T>::load(grad_out[i]);
    gx[i] = Acc<T>::store(wk * g);
    partial += g * Acc<T>::load(x[i]);
  }
  partial = block_sum(partial);
  if (threadIdx.x == 0) {
    atomicAdd(grad_w + k, partial);
  }
}

cudaError_t multiprocessor_count(int* count) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) {
    return err;
  }
  return cudaDeviceGetAttribute(count, cudaDevAttrMultiProcessorCount, device);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
cudaError_t forward_impl(const void* const* inputs, int64_t num_inputs, const void* weights, void* out,
                         int64_t numel, void* workspace, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  if (numel <= 0 || num_inputs <= 0) {
    return cudaSuccess;
  }
  if (num_inputs > kMaxInputs && workspace == nullptr) {
    return cudaErrorInvalidValue;
  }
  int sms = 0;
  cudaError_t err = multiprocessor_count(&sms);
  if (err != cudaSuccess) {
    return err;
  }
  const int64_t blocks = std::min<int64_t>(ceil_div(numel, kThreads), static_cast<int64_t>(sms) * 8);
  const A* w = static_cast<const A*>(weights);
  for (int64_t start = 0; start < num_inputs; start += kMaxInputs) {
    const int count = static_cast<int>(std::min<int64_t>(kMaxInputs, num_inputs - start));
    ConstPtrs<T> pack{};
    for (int k = 0; k < count; ++k) {
      pack.p[k] = static_cast<const T*>(inputs[start + k]);
    }
    const bool read_acc = start > 0;
    const bool write_acc = start + count < num_inputs;
    weighted_sum_forward_kernel<T><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
        pack, count, w + start, static_cast<A*>(workspace), read_acc, write_acc, static_cast<T*>(out), numel);
    err = cudaGetLastError();
    if (err != cudaSuccess) {
      return err;
    }
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t backward_impl(const void* grad_out, const void* const* inputs, int64_t num_inputs,
                          const void* weights, void* const* grad_inputs, void* grad_weights, int64_t numel,
                          cudaStream_t stream) {
  using A = typename Acc<T>::type;
  if (numel <= 0 || num_inputs <= 0) {
    return cudaSuccess;
  }
  int sms = 0;
  cudaError_t err = multiprocessor_count(&sms);
  if (err != cudaSuccess) {
    return err;
  }
  const A* w = static_cast<const A*>(weights);
  A* gw = static_cast<A*>(grad_weights);
  for (int64_t start = 0; start < num_inputs; start += kMaxInputs) {
    const int count = static_cast<int>(std::min<int64_t>(kMaxInputs, num_inputs - start));
    ConstPtrs<T> in{};
    MutPtrs<T> gin{};
    for (int k = 0; k < count; ++k) {
      in.p[k] = static_cast<const T*>(inputs[start + k]);
      gin.p[k] = static_cast<T*>(grad_inputs[start + k]);
    }
    // About 8 blocks per multiprocessor in all, spread over the `count` inputs.
    const int64_t per_input = std::max<int64_t>(1, ceil_div(static_cast<int64_t>(sms) * 8, count));
    const int64_t blocks_x = std::min<int64_t>(ceil_div(numel, kThreads), per_input);
    const dim3 grid(static_cast<unsigned int>(blocks_x), static_cast<unsigned int>(count));
    weighted_sum_backward_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(grad_out), in, gin,
                                                                  w + start, gw + start, numel);
    err = cudaGetLastError();
    if (err != cudaSuccess) {
      return err;
    }
  }
  return cudaSuccess;
}

}  // namespace

extern "C" int64_t fastnas_weighted_sum_forward_workspace(int64_t num_inputs, int64_t numel) {
  return num_inputs > kMaxInputs ? numel : 0;
}

extern "C" cudaError_t fastnas_weighted_sum_forward(fastnas_dtype_t dtype, const void* const* inputs,
                                                    int64_t num_inputs, const void* weights, void* out,
                                                    int64_t numel, void* workspace, cudaStream_t stream) {
  switch (dtype) {
    case FASTNAS_FLOAT32:
      return forward_impl<float>(inputs, num_inputs, weights, out, numel, workspace, stream);
    case FASTNAS_FLOAT64:
      return forward_impl<double>(inputs, num_inputs, weights, out, numel, workspace, stream);
    case FASTNAS_FLOAT16:
      return forward_impl<__half>(inputs, num_inputs, weights, out, numel, workspace, stream);
    case FASTNAS_BFLOAT16:
      return forward_impl<__nv_bfloat16>(inputs, num_inputs, weights, out, numel, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

extern "C" cudaError_t fastnas_weighted_sum_backward(fastnas_dtype_t dtype, const void* grad_out,
                                                     const void* const* inputs, int64_t num_inputs,
                                                     const void* weights, void* const* grad_inputs,
                                                     void* grad_weights, int64_t numel, cudaStream_t stream) {
  switch (dtype) {
    case FASTNAS_FLOAT32:
      return backward_impl<float>(grad_out, inputs, num_inputs, weights, grad_inputs, grad_weights, numel,
                                  stream);
    case FASTNAS_FLOAT64:
      return backward_impl<double>(grad_out, inputs, num_inputs, weights, grad_inputs, grad_weights, numel,
                                   stream);
    case FASTNAS_FLOAT16:
      return backward_impl<__half>(grad_out, inputs, num_inputs, weights, grad_inputs, grad_weights, numel,
                                   stream);
    case FASTNAS_BFLOAT16:
      return backward_impl<__nv_bfloat16>(grad_out, inputs, num_inputs, weights, grad_inputs, grad_weights,
                                          numel, stream);
  }
  return cudaErrorInvalidValue;
}
