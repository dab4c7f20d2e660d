// Elman RNN (tanh, relu, sigmoid; the IRNN): the same math as rnnkit/cells/elman.py.
//
// Caches: h_prev (N, H); the outputs are the other one.

#include "common.h"

namespace rnnkit_compiled {

namespace {

// h_t = f(xw + h_{t-1} W.T), f = tanh (0), relu (1) or sigmoid (2)

template <int F, typename scalar_t> inline scalar_t activation(scalar_t a) {
  if constexpr (F == 0) return tanh_(a);
  else if constexpr (F == 1) return a > 0 ? a : scalar_t(0);
  else return sigmoid(a);
}

// f'(a) written through the output h = f(a): 1 - h², [h > 0], h (1 - h)
template <int F, typename scalar_t> inline scalar_t activation_grad(scalar_t h) {
  if constexpr (F == 0) return 1 - h * h;
  else if constexpr (F == 1) return h > 0 ? scalar_t(1) : scalar_t(0);
  else return h * (1 - h);
}

template <int F, typename scalar_t>
inline void elman_forward_row(const scalar_t* __restrict__ x, const scalar_t* __restrict__ hw,
                              scalar_t* __restrict__ o_, scalar_t* __restrict__ hp,
                              scalar_t* __restrict__ hs, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t h = activation<F>(x[j] + hw[j]);     // h_t = f(xw + h_{t-1} W.T)
    hp[j] = hs[j];
    o_[j] = h; hs[j] = h;
  }
}

template <int F, typename scalar_t>
inline void elman_backward_row(const scalar_t* __restrict__ h, const scalar_t* __restrict__ do_,
                               const scalar_t* __restrict__ dhr, scalar_t* __restrict__ da,
                               int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    da[j] = (dhr[j] + do_[j]) * activation_grad<F>(h[j]);   // da = dh f'(a)
  }
}

// Caches: h_prev (N, H); the outputs are the other one (h_t).
std::vector<at::Tensor> elman_forward(const at::Tensor& xw, const std::vector<int64_t>& batch_sizes,
                                      const at::Tensor& h0, const at::Tensor& weight_hh,
                                      int64_t nonlinearity, bool reverse, bool keep) {
  const int64_t B = h0.size(0), H = h0.size(1);
  check_forward("elman_forward", xw, batch_sizes, h0, weight_hh, 1);
  TORCH_CHECK(nonlinearity >= 0 && nonlinearity <= 2, "nonlinearity: 0, 1 or 2");
  const int64_t N = xw.size(0);
  const int64_t kept = keep ? N : B;          // caches for the backward, or one step's scratch
  StepProduct product(weight_hh, B, /*pack=*/true);             // h W.T
  at::Tensor out = buffer(N, H, xw.options());
  at::Tensor h_prev = buffer(kept, H, xw.options());
  at::Tensor h = h0.contiguous().clone();
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "elman_forward", [&] {
    for_steps(batch_sizes, reverse, [&](int64_t n, int64_t off) {
      const at::Tensor hw = product(h.narrow(0, 0, n));       // (n, H)
      const Rows<const scalar_t> X(xw, off), HW(hw);
      const Rows<scalar_t> O(out, off), HP(h_prev, keep ? off : 0), HS(h);
      for_rows(n, H, [&](int64_t r) {
        if (nonlinearity == 0) elman_forward_row<0>(X[r], HW[r], O[r], HP[r], HS[r], H);
        else if (nonlinearity == 1) elman_forward_row<1>(X[r], HW[r], O[r], HP[r], HS[r], H);
        else elman_forward_row<2>(X[r], HW[r], O[r], HP[r], HS[r], H);
      });
    });
  });
  return {out, h, h_prev};
}

// Returns (dxw (N, H) — also dhw —, dh0, dweight_hh, dweight_ih or None as for the LSTM).
std::vector<at::Tensor> elman_backward(const at::Tensor& dout, const at::Tensor& dh_final,
                                       const at::Tensor& out, const at::Tensor& h_prev,
                                       const std::vector<int64_t>& batch_sizes,
                                       const at::Tensor& weight_hh, int64_t nonlinearity,
                                       bool reverse, const std::optional<at::Tensor>& x) {
  const int64_t B = dh_final.size(0), H = dh_final.size(1);
  const int64_t N = out.size(0);
  StepProduct product = backward_product(weight_hh, B);       // da W = da (W.T).T
  const at::Tensor dout_c = dout.contiguous();
  at::Tensor da = buffer(N, H, out.options());
  at::Tensor dh = dh_final.contiguous().clone();               // (B, H)
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "elman_backward", [&] {
    for_steps(batch_sizes, !reverse, [&](int64_t n, int64_t off) {
      const Rows<const scalar_t> HO(out, off), DO(dout_c, off), DH(dh);
      const Rows<scalar_t> DA(da, off);
      for_rows(n, H, [&](int64_t r) {
        if (nonlinearity == 0) elman_backward_row<0>(HO[r], DO[r], DH[r], DA[r], H);
        else if (nonlinearity == 1) elman_backward_row<1>(HO[r], DO[r], DH[r], DA[r], H);
        else elman_backward_row<2>(HO[r], DO[r], DH[r], DA[r], H);
      });
      product_into(product, da.narrow(0, off, n), dh.narrow(0, 0, n), false);   // dh_{t-1} = da W
    });
  });
  const at::Tensor da_t = transposed(da);                     // (H, N)
  at::Tensor dweight_hh = affine(da_t, h_prev.t());           // da.T h_prev (H, H)
  at::Tensor dweight_ih = x.has_value() ? affine(da_t, x->t()) : at::Tensor();
  return {da, dh, dweight_hh, dweight_ih};
}

}  // namespace

void register_elman(pybind11::module_& m) {
  m.def("elman_forward", &elman_forward, "Elman RNN forward over a packed sequence",
        py::arg("xw"), py::arg("batch_sizes"), py::arg("h0"), py::arg("weight_hh"),
        py::arg("nonlinearity"), py::arg("reverse"), py::arg("keep") = true);
  m.def("elman_backward", &elman_backward, "Elman RNN hand BPTT over a packed sequence",
        py::arg("dout"), py::arg("dh_final"), py::arg("out"), py::arg("h_prev"),
        py::arg("batch_sizes"), py::arg("weight_hh"), py::arg("nonlinearity"),
        py::arg("reverse"), py::arg("x") = py::none());
}

}  // namespace rnnkit_compiled
