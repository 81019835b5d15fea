// CUDA kernels of fastnas::weighted_sum: torch glue around the torch-free launchers of
// weighted_sum_kernel.cu. Compiled by the host compiler (only when FASTNAS_WITH_CUDA).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "../weighted_sum.h"
#include "weighted_sum_kernel.h"

namespace fastnas {
namespace {

fastnas_dtype_t kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return FASTNAS_FLOAT32;
    case at::kDouble:
      return FASTNAS_FLOAT64;
    case at::kHalf:
      return FASTNAS_FLOAT16;
    case at::kBFloat16:
      return FASTNAS_BFLOAT16;
    default:
      TORCH_CHECK(false, "fastnas::weighted_sum (CUDA): unsupported dtype ", t,
                  "; use float32, float64, float16 or bfloat16.");
  }
}

void check_cuda(at::TensorList inputs, const char* op) {
  TORCH_CHECK(inputs[0].is_cuda(), op, " (CUDA kernel) got inputs on ", inputs[0].device(), ".");
}

at::Tensor weighted_sum_cuda(at::TensorList inputs, const at::Tensor& weights) {
  detail::check_weighted_sum_args("fastnas::weighted_sum", inputs, weights);
  check_cuda(inputs, "fastnas::weighted_sum");
  const c10::cuda::CUDAGuard device_guard(inputs[0].device());
  const at::MemoryFormat fmt = detail::choose_memory_format(inputs);
  const std::vector<at::Tensor> xs = detail::to_memory_format(inputs, fmt);
  const at::Tensor& x0 = xs[0];
  const at::ScalarType acc_type = detail::accumulate_type(x0.scalar_type());
  const at::Tensor w = weights.to(acc_type).contiguous();
  at::Tensor out = at::empty(x0.sizes(), x0.options().memory_format(fmt));
  const int64_t n = x0.numel();
  if (n == 0) {
    return out;
  }
  const int64_t num_inputs = static_cast<int64_t>(xs.size());
  const int64_t workspace_numel = fastnas_weighted_sum_forward_workspace(num_inputs, n);
  at::Tensor workspace;
  if (workspace_numel > 0) {
    workspace = at::empty({workspace_numel}, x0.options().dtype(acc_type));
  }
  std::vector<const void*> ptrs;
  ptrs.reserve(xs.size());
  for (const at::Tensor& x : xs) {
    ptrs.push_back(x.const_data_ptr());
  }
  const cudaError_t err = fastnas_weighted_sum_forward(
      kernel_dtype(x0.scalar_type()), ptrs.data(), num_inputs, w.const_data_ptr(), out.mutable_data_ptr(), n,
      workspace.defined() ? workspace.mutable_data_ptr() : nullptr, c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_CHECK(err);
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward_cuda(const at::Tensor& grad_out,
                                                                           at::TensorList inputs,
                                                                           const at::Tensor& weights) {
  detail::check_weighted_sum_args("fastnas::weighted_sum_backward", inputs, weights);
  detail::check_weighted_sum_grad(grad_out, inputs);
  check_cuda(inputs, "fastnas::weighted_sum_backward");
  const c10::cuda::CUDAGuard device_guard(inputs[0].device());
  const at::MemoryFormat fmt = detail::choose_memory_format(inputs);
  const std::vector<at::Tensor> xs = detail::to_memory_format(inputs, fmt);
  const at::Tensor& x0 = xs[0];
  const at::ScalarType acc_type = detail::accumulate_type(x0.scalar_type());
  const at::Tensor g = grad_out.to(x0.scalar_type()).contiguous(fmt);
  const at::Tensor w = weights.to(acc_type).contiguous();
  std::vector<at::Tensor> grad_inputs;
  std::vector<const void*> in_ptrs;
  std::vector<void*> grad_ptrs;
  grad_inputs.reserve(xs.size());
  for (const at::Tensor& x : xs) {
    grad_inputs.push_back(at::empty(x0.sizes(), x0.options().memory_format(fmt)));
    in_ptrs.push_back(x.const_data_ptr());
    grad_ptrs.push_back(grad_inputs.back().mutable_data_ptr());
  }
  at::Tensor grad_w = at::zeros({static_cast<int64_t>(xs.size())}, w.options());
  const cudaError_t err = fastnas_weighted_sum_backward(
      kernel_dtype(x0.scalar_type()), g.const_data_ptr(), in_ptrs.data(), static_cast<int64_t>(xs.size()),
      w.const_data_ptr(), grad_ptrs.data(), grad_w.mutable_data_ptr(), x0.numel(),
      c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_CHECK(err);
  return {grad_inputs, grad_w.to(weights.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnas, CUDA, m) {
  m.impl("weighted_sum", TORCH_FN(weighted_sum_cuda));
  m.impl("weighted_sum_backward", TORCH_FN(weighted_sum_backward_cuda));
}

}  // namespace fastnas
