// Dispatcher entry points and argument checks of fastnas::weighted_sum (see weighted_sum.h).
// Only Tensor methods and per-operator headers (faster to compile than <ATen/ATen.h>).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "weighted_sum.h"

#include <ATen/core/dispatch/Dispatcher.h>

namespace fastnas {

at::Tensor weighted_sum(at::TensorList inputs, const at::Tensor& weights) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastnas::weighted_sum", "")
                       .typed<at::Tensor(at::TensorList, const at::Tensor&)>();
  return op.call(inputs, weights);
}

std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward(const at::Tensor& grad_out,
                                                                      at::TensorList inputs,
                                                                      const at::Tensor& weights) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastnas::weighted_sum_backward", "")
          .typed<std::tuple<std::vector<at::Tensor>, at::Tensor>(const at::Tensor&, at::TensorList,
                                                                 const at::Tensor&)>();
  return op.call(grad_out, inputs, weights);
}

namespace detail {

namespace {

bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

}  // namespace

void check_weighted_sum_args(const char* op, at::TensorList inputs, const at::Tensor& weights) {
  TORCH_CHECK(!inputs.empty(), op, ": `inputs` is empty; pass at least one candidate-op output.");
  TORCH_CHECK(weights.defined(), op, ": `weights` is undefined.");
  TORCH_CHECK(weights.dim() == 1, op, ": `weights` must be 1-D with one weight per input, got shape ",
              weights.sizes(), ".");
  TORCH_CHECK(weights.size(0) == static_cast<int64_t>(inputs.size()), op, ": got ", inputs.size(),
              " inputs but ", weights.size(0), " weights; pass exactly one weight per input.");
  TORCH_CHECK(at::isFloatingType(weights.scalar_type()) && supported_dtype(weights.scalar_type()), op,
              ": `weights` must be float32, float64, float16 or bfloat16, got ", weights.scalar_type(), ".");
  const at::Tensor& first = inputs[0];
  TORCH_CHECK(first.defined(), op, ": inputs[0] is undefined.");
  TORCH_CHECK(supported_dtype(first.scalar_type()), op,
              ": inputs must be float32, float64, float16 or bfloat16, got ", first.scalar_type(), ".");
  TORCH_CHECK(weights.device() == first.device(), op, ": `weights` is on ", weights.device(),
              " but the inputs are on ", first.device(), "; move the weights to the inputs' device.");
  for (size_t k = 1; k < inputs.size(); ++k) {
    const at::Tensor& x = inputs[k];
    TORCH_CHECK(x.defined(), op, ": inputs[", k, "] is undefined.");
    TORCH_CHECK(x.sizes() == first.sizes(), op, ": inputs[", k, "] has shape ", x.sizes(),
                " but inputs[0] has shape ", first.sizes(), "; all inputs must have the same shape.");
    TORCH_CHECK(x.scalar_type() == first.scalar_type(), op, ": inputs[", k, "] has dtype ", x.scalar_type(),
                " but inputs[0] has dtype ", first.scalar_type(), "; cast all inputs to one dtype.");
    TORCH_CHECK(x.device() == first.device(), op, ": inputs[", k, "] is on ", x.device(),
                " but inputs[0] is on ", first.device(), "; all inputs must be on one device.");
  }
}

void check_weighted_sum_grad(const at::Tensor& grad_out, at::TensorList inputs) {
  const at::Tensor& first = inputs[0];
  TORCH_CHECK(grad_out.defined(), "fastnas::weighted_sum_backward: `grad_out` is undefined.");
  TORCH_CHECK(grad_out.sizes() == first.sizes(), "fastnas::weighted_sum_backward: grad_out has shape ",
              grad_out.sizes(), " but the inputs have shape ", first.sizes(), ".");
  TORCH_CHECK(grad_out.device() == first.device(), "fastnas::weighted_sum_backward: grad_out is on ",
              grad_out.device(), " but the inputs are on ", first.device(), ".");
}

at::MemoryFormat choose_memory_format(at::TensorList inputs) {
  const at::Tensor& first = inputs[0];
  if (first.dim() != 4 || first.is_contiguous()) {
    return at::MemoryFormat::Contiguous;
  }
  for (const at::Tensor& x : inputs) {
    if (!x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
      return at::MemoryFormat::Contiguous;
    }
  }
  return at::MemoryFormat::ChannelsLast;
}

std::vector<at::Tensor> to_memory_format(at::TensorList tensors, at::MemoryFormat fmt) {
  std::vector<at::Tensor> out;
  out.reserve(tensors.size());
  for (const at::Tensor& t : tensors) {
    out.push_back(t.contiguous(fmt));
  }
  return out;
}

}  // namespace detail
}  // namespace fastnas
