// Autograd kernels of fastnas::weighted_sum and fastnas::weighted_sum_backward.
//
// weighted_sum is linear in each argument, so its backward is itself a pair of weighted sums
// and the backward op is differentiable in terms of the two ops (double backward works, e.g. for
// Hessian-vector products):
//   d out / d inputs[k] = weights[k],  d out / d weights[k] = inputs[k];
//   backward(g, x, w) = ([w_k g]_k, [<g, x_k>]_k), whose vector-Jacobian product with (gx, gw) is
//   (d g, d x, d w) = (weighted_sum(gx, w) + weighted_sum(x, gw), [gw_k g]_k, [<g, gx_k>]_k)
//                   = (weighted_sum(gx, w) + weighted_sum(x, gw), weighted_sum_backward(g, gx, gw)).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "weighted_sum.h"

namespace fastnas {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class WeightedSumFunction : public torch::autograd::Function<WeightedSumFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, at::TensorList inputs, const at::Tensor& weights) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out = weighted_sum(inputs, weights);
    variable_list saved(inputs.begin(), inputs.end());
    saved.push_back(weights);
    ctx->save_for_backward(std::move(saved));
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list saved = ctx->get_saved_variables();
    const at::Tensor weights = saved.back();
    saved.pop_back();
    auto [grad_inputs, grad_weights] = weighted_sum_backward(grad_outputs[0], saved, weights);
    variable_list grads = std::move(grad_inputs);
    grads.push_back(grad_weights);
    return grads;
  }
};

class WeightedSumBackwardFunction : public torch::autograd::Function<WeightedSumBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_out, at::TensorList inputs,
                               const at::Tensor& weights) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [grad_inputs, grad_weights] = weighted_sum_backward(grad_out, inputs, weights);
    variable_list saved(inputs.begin(), inputs.end());
    saved.push_back(weights);
    saved.push_back(grad_out);
    ctx->save_for_backward(std::move(saved));
    variable_list outputs = std::move(grad_inputs);
    outputs.push_back(grad_weights);
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list saved = ctx->get_saved_variables();
    const at::Tensor grad_out = saved.back();
    saved.pop_back();
    const at::Tensor weights = saved.back();
    saved.pop_back();
    const variable_list& inputs = saved;
    const at::Tensor gw = grad_outputs.back();
    const variable_list gx(grad_outputs.begin(), grad_outputs.end() - 1);
    at::Tensor d_grad_out = weighted_sum(gx, weights).add(weighted_sum(inputs, gw));
    auto [d_inputs, d_weights] = weighted_sum_backward(grad_out, gx, gw);
    variable_list grads;
    grads.reserve(inputs.size() + 2);
    grads.push_back(d_grad_out);
    for (at::Tensor& d : d_inputs) {
      grads.push_back(std::move(d));
    }
    grads.push_back(d_weights.to(weights.scalar_type()));
    return grads;
  }
};

at::Tensor weighted_sum_autograd(at::TensorList inputs, const at::Tensor& weights) {
  return WeightedSumFunction::apply(inputs, weights);
}

std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward_autograd(const at::Tensor& grad_out,
                                                                               at::TensorList inputs,
                                                                               const at::Tensor& weights) {
  variable_list outputs = WeightedSumBackwardFunction::apply(grad_out, inputs, weights);
  at::Tensor grad_weights = outputs.back();
  outputs.pop_back();
  return {std::move(outputs), std::move(grad_weights)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnas, Autograd, m) {
  m.impl("weighted_sum", TORCH_FN(weighted_sum_autograd));
  m.impl("weighted_sum_backward", TORCH_FN(weighted_sum_backward_autograd));
}

}  // namespace fastnas
