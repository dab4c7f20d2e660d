// The extension's one module: the shared products and switches (common.h), then each cell
// family's loops, registered by its own file. A new family: a file with a
// register_<family>(module) and one line in each list below.

#include "common.h"

namespace rnnkit_compiled {
void register_lstm(pybind11::module_& m);
void register_gru(pybind11::module_& m);
void register_elman(pybind11::module_& m);
void register_layernorm(pybind11::module_& m);
void register_diagonal(pybind11::module_& m);
}  // namespace rnnkit_compiled

using namespace rnnkit_compiled;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnkit: each cell's whole time loop, forward and hand backward, in one call";
  m.def("linear", &affine, "x @ w.T (+ bias) (+ add) through the loops' GEMM", py::arg("x"),
        py::arg("w"), py::arg("bias") = py::none(), py::arg("add") = py::none());
  m.def("packed", &packed, "a weight packed for products of `rows` rows (where oneDNN runs them)");
  m.def("transposed", &transposed, "a.T, contiguous (the loops' tiled transpose)");
  m.def("use_micro_kernel", &use_micro_kernel,
        "small step weights through brgemm (default) or the oneDNN op");
  m.def("use_huge_pages", &use_huge_pages, "large caches in THP-advised memory (default) or not");
  m.def("release_buffers", &release_buffers,
        "give the kept large buffers back to the system; returns the bytes released");
  m.def("buffers_held", &buffers_held, "bytes of freed large buffers kept for reuse");
  m.def("use_onednn", &use_onednn, "route float32 products through oneDNN (default) or at::mm");
  m.def("gemm_backend", &gemm_backend, "\"onednn\" or \"aten\"");
  register_lstm(m);
  register_gru(m);
  register_elman(m);
  register_layernorm(m);
  register_diagonal(m);
}
