// The fastnas._C extension module: operator schemas and the Python module object.
//
// Every fastnas operator schema is declared here, once (TORCH_LIBRARY may appear only once per
// namespace); kernels are registered per dispatch key next to their implementation:
// <op>_cpu.cpp (CPU), cuda/<op>_cuda.cpp (CUDA), <op>_autograd.cpp (Autograd). Fake (meta)
// implementations for torch.compile live with the Python wrapper in fastnas/ops/. See DEVELOPERS.md.
#include <pybind11/pybind11.h>
#include <torch/library.h>

TORCH_LIBRARY(fastnas, m) {
  // out = sum_k weights[k] * inputs[k] (the DARTS mixed op of one edge; Liu, Simonyan & Yang,
  // "DARTS: Differentiable Architecture Search", ICLR 2019).
  m.def("weighted_sum(Tensor[] inputs, Tensor weights) -> Tensor");
  // (grad_inputs, grad_weights) of weighted_sum for the output gradient grad_out.
  m.def("weighted_sum_backward(Tensor grad_out, Tensor[] inputs, Tensor weights) -> (Tensor[], Tensor)");
}

namespace {

bool with_cuda() {
#ifdef FASTNAS_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastnas C++/CUDA operators, registered with the PyTorch dispatcher as torch.ops.fastnas.*";
  m.def("with_cuda", &with_cuda, "True when the CUDA kernels were compiled into this build.");
}
