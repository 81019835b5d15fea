// CPU kernels of fastnas::weighted_sum and fastnas::weighted_sum_backward.
//
// Both work on dense arrays (see detail::choose_memory_format) in blocks of kBlock elements, with
// at::parallel_for over the blocks; accumulation in float (double for double inputs).
// grad_weights is reduced per chunk and the chunk partials are summed in a fixed order, so the
// result does not depend on the number of threads.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "weighted_sum.h"

namespace fastnas {
namespace {

constexpr int64_t kBlock = 256;            // elements per inner block (accumulators stay in L1)
constexpr int64_t kBlocksPerChunk = 64;    // blocks per grad_weights partial sum (16384 elements)
constexpr int64_t kLanes = 8;              // independent partial sums, so the dot product vectorises

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename scalar_t>
void forward_kernel(const std::vector<const scalar_t*>& in, const at::opmath_type<scalar_t>* w,
                    scalar_t* out, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t num_inputs = static_cast<int64_t>(in.size());
  const int64_t blocks = ceil_div(n, kBlock);
  // Grain: enough blocks per task that scheduling is cheap next to the work (K reads per element).
  const int64_t grain = std::max<int64_t>(1, 32 / std::max<int64_t>(1, num_inputs / 4));
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    acc_t acc[kBlock];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t start = b * kBlock;
      const int64_t len = std::min(kBlock, n - start);
      const scalar_t* x0 = in[0] + start;
      const acc_t w0 = w[0];
      for (int64_t j = 0; j < len; ++j) {
        acc[j] = w0 * static_cast<acc_t>(x0[j]);
      }
      for (int64_t k = 1; k < num_inputs; ++k) {
        const scalar_t* xk = in[k] + start;
        const acc_t wk = w[k];
        for (int64_t j = 0; j < len; ++j) {
          acc[j] += wk * static_cast<acc_t>(xk[j]);
        }
      }
      scalar_t* o = out + start;
      for (int64_t j = 0; j < len; ++j) {
        o[j] = static_cast<scalar_t>(acc[j]);
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const scalar_t* grad_out, const std::vector<const scalar_t*>& in,
                     const at::opmath_type<scalar_t>* w, const std::vector<scalar_t*>& grad_in,
                     at::opmath_type<scalar_t>* grad_w, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t num_inputs = static_cast<int64_t>(in.size());
  const int64_t chunk = kBlock * kBlocksPerChunk;
  const int64_t chunks = ceil_div(n, chunk);
  std::vector<acc_t> partials(static_cast<size_t>(chunks * num_inputs), acc_t(0));
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    acc_t g[kBlock];
    acc_t lanes[kLanes];
    for (int64_t c = c0; c < c1; ++c) {
      acc_t* part = partials.data() + c * num_inputs;
      const int64_t chunk_end = std::min(n, (c + 1) * chunk);
      for (int64_t start = c * chunk; start < chunk_end; start += kBlock) {
        const int64_t len = std::min(kBlock, chunk_end - start);
        for (int64_t j = 0; j < len; ++j) {
          g[j] = static_cast<acc_t>(grad_out[start + j]);
        }
        for (int64_t k = 0; k < num_inputs; ++k) {
          const scalar_t* xk = in[k] + start;
          scalar_t* gxk = grad_in[k] + start;
          const acc_t wk = w[k];
          for (int64_t j = 0; j < len; ++j) {
            gxk[j] = static_cast<scalar_t>(wk * g[j]);
          }
          std::fill(lanes, lanes + kLanes, acc_t(0));
          int64_t j = 0;
          for (; j + kLanes <= len; j += kLanes) {
            for (int64_t l = 0; l < kLanes; ++l) {
              lanes[l] += g[j + l] * static_cast<acc_t>(xk[j + l]);
            }
          }
          for (; j < len; ++j) {
            lanes[0] += g[j] * static_cast<acc_t>(xk[j]);
          }
          acc_t s = acc_t(0);
          for (int64_t l = 0; l < kLanes; ++l) {
            s += lanes[l];
          }
          part[k] += s;
        }
      }
    }
  });
  for (int64_t k = 0; k < num_inputs; ++k) {
    acc_t s = acc_t(0);
    for (int64_t c = 0; c < chunks; ++c) {
      s += partials[static_cast<size_t>(c * num_inputs + k)];
    }
    grad_w[k] = s;
  }
}

at::Tensor weighted_sum_cpu(at::TensorList inputs, const at::Tensor& weights) {
  detail::check_weighted_sum_args("fastnas::weighted_sum", inputs, weights);
  const at::MemoryFormat fmt = detail::choose_memory_format(inputs);
  const std::vector<at::Tensor> xs = detail::to_memory_format(inputs, fmt);
  const at::Tensor& x0 = xs[0];
  const at::Tensor w = weights.to(detail::accumulate_type(x0.scalar_type())).contiguous();
  at::Tensor out = at::empty(x0.sizes(), x0.options().memory_format(fmt));
  const int64_t n = x0.numel();
  if (n == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "fastnas_weighted_sum_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<const scalar_t*> ptrs;
    ptrs.reserve(xs.size());
    for (const at::Tensor& x : xs) {
      ptrs.push_back(x.const_data_ptr<scalar_t>());
    }
    forward_kernel<scalar_t>(ptrs, w.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), n);
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward_cpu(const at::Tensor& grad_out,
                                                                          at::TensorList inputs,
                                                                          const at::Tensor& weights) {
  detail::check_weighted_sum_args("fastnas::weighted_sum_backward", inputs, weights);
  detail::check_weighted_sum_grad(grad_out, inputs);
  const at::MemoryFormat fmt = detail::choose_memory_format(inputs);
  const std::vector<at::Tensor> xs = detail::to_memory_format(inputs, fmt);
  const at::Tensor& x0 = xs[0];
  const at::ScalarType acc_type = detail::accumulate_type(x0.scalar_type());
  const at::Tensor g = grad_out.to(x0.scalar_type()).contiguous(fmt);
  const at::Tensor w = weights.to(acc_type).contiguous();
  std::vector<at::Tensor> grad_inputs;
  grad_inputs.reserve(xs.size());
  for (size_t k = 0; k < xs.size(); ++k) {
    grad_inputs.push_back(at::empty(x0.sizes(), x0.options().memory_format(fmt)));
  }
  at::Tensor grad_w = at::zeros({static_cast<int64_t>(xs.size())}, w.options());
  const int64_t n = x0.numel();
  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x0.scalar_type(), "fastnas_weighted_sum_backward_cpu", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          std::vector<const scalar_t*> in_ptrs;
          std::vector<scalar_t*> grad_ptrs;
          for (size_t k = 0; k < xs.size(); ++k) {
            in_ptrs.push_back(xs[k].const_data_ptr<scalar_t>());
            grad_ptrs.push_back(grad_inputs[k].mutable_data_ptr<scalar_t>());
          }
          backward_kernel<scalar_t>(g.const_data_ptr<scalar_t>(), in_ptrs, w.const_data_ptr<acc_t>(),
                                    grad_ptrs, grad_w.mutable_data_ptr<acc_t>(), n);
        });
  }
  return {grad_inputs, grad_w.to(weights.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnas, CPU, m) {
  m.impl("weighted_sum", TORCH_FN(weighted_sum_cpu));
  m.impl("weighted_sum_backward", TORCH_FN(weighted_sum_backward_cpu));
}

}  // namespace fastnas
