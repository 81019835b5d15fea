// fastnas::weighted_sum: the weighted sum of one edge's candidate-op outputs (the DARTS mixed op of
// Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019):
// out = sum_k weights[k] * inputs[k].
//
// Schemas are declared in fastnas.cpp; kernels are registered per dispatch key in
// weighted_sum_cpu.cpp, cuda/weighted_sum_cuda.cpp and weighted_sum_autograd.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

namespace fastnas {

// Calls through the dispatcher (autograd, then the device kernel).
at::Tensor weighted_sum(at::TensorList inputs, const at::Tensor& weights);

// Returns (grad_inputs, grad_weights); grad_inputs[k] has the inputs' dtype, grad_weights the weights' dtype.
std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward(const at::Tensor& grad_out,
                                                                      at::TensorList inputs,
                                                                      const at::Tensor& weights);

namespace detail {

// Validates the arguments shared by the forward and backward kernels (TORCH_CHECK with a message that
// says what is wrong and how to fix it). `op` names the calling op in the messages.
void check_weighted_sum_args(const char* op, at::TensorList inputs, const at::Tensor& weights);

// Validates grad_out against inputs[0] (same shape and device; its dtype is converted if it differs).
void check_weighted_sum_grad(const at::Tensor& grad_out, at::TensorList inputs);

// Accumulation dtype for an input dtype: double for double, float otherwise.
inline at::ScalarType accumulate_type(at::ScalarType input_dtype) {
  return input_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// Memory layout the kernels work in, so that they can treat every tensor as one dense array:
// channels-last when inputs[0] is a 4-D channels-last tensor (and not also plain contiguous) and every
// other input is channels-last too, else contiguous. The fake implementation
// (fastnas/ops/weighted_sum.py) mirrors this rule.
at::MemoryFormat choose_memory_format(at::TensorList inputs);

// The tensors in memory format `fmt` (no copy for those already in it).
std::vector<at::Tensor> to_memory_format(at::TensorList tensors, at::MemoryFormat fmt);

}  // namespace detail
}  // namespace fastnas
