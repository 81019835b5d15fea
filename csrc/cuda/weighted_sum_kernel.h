// Torch-free launchers for the weighted-sum CUDA kernels (see weighted_sum_kernel.cu).
//
// The interface is plain C: raw device pointers, element counts and a cudaStream_t, so the
// kernels compile with nvcc alone (no torch headers) and the torch glue (weighted_sum_cuda.cpp)
// is compiled by the host compiler. Every launcher returns the launch status
// (cudaGetLastError() right after the launches); callers must check it.
#pragma once

#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

// Element types the kernels are instantiated for.
typedef enum {
  FASTNAS_FLOAT32 = 0,
  FASTNAS_FLOAT64 = 1,
  FASTNAS_FLOAT16 = 2,
  FASTNAS_BFLOAT16 = 3,
} fastnas_dtype_t;

// Most inputs one kernel launch reads (their pointers travel by value in the kernel parameters).
// Launchers accept any count and split larger ones into several launches.
#define FASTNAS_WS_MAX_INPUTS_PER_LAUNCH 32

// Number of accumulator elements (float, or double for FASTNAS_FLOAT64) the forward launcher needs
// as `workspace`; 0 means the workspace may be NULL.
int64_t fastnas_weighted_sum_forward_workspace(int64_t num_inputs, int64_t numel);

// out[i] = sum_k weights[k] * inputs[k][i] for i < numel.
//   inputs:    host array of num_inputs device pointers, each to numel contiguous elements of `dtype`.
//   weights:   device pointer to num_inputs accumulator values (float; double for FASTNAS_FLOAT64).
//   out:       device pointer to numel elements of `dtype` (must not alias an input).
//   workspace: device accumulator buffer of fastnas_weighted_sum_forward_workspace() elements.
cudaError_t fastnas_weighted_sum_forward(fastnas_dtype_t dtype, const void* const* inputs, int64_t num_inputs,
                                         const void* weights, void* out, int64_t numel, void* workspace,
                                         cudaStream_t stream);

// grad_inputs[k][i] = weights[k] * grad_out[i];  grad_weights[k] += sum_i grad_out[i] * inputs[k][i].
//   grad_out:     device pointer to numel elements of `dtype`.
//   inputs, grad_inputs: host arrays of num_inputs device pointers (numel elements of `dtype` each).
//   weights:      device pointer to num_inputs accumulator values (float; double for FASTNAS_FLOAT64).
//   grad_weights: device accumulator buffer of num_inputs values, zero-filled by the caller
//                 (partial sums are added with atomicAdd, so the result is not bitwise deterministic).
cudaError_t fastnas_weighted_sum_backward(fastnas_dtype_t dtype, const void* grad_out, const void* const* inputs,
                                          int64_t num_inputs, const void* weights, void* const* grad_inputs,
                                          void* grad_weights, int64_t numel, cudaStream_t stream);

#ifdef __cplusplus
}  // extern "C"
#endif
