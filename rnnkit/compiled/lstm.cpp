// LSTM (no peephole): the same math as rnnkit/cells/lstm.py.
//
// Caches (packed, (N, .); with keep=false, for inference, none: one step's scratch):
//   gates (N, 4H) = [i, f, g, o] after their activations, tanh_c (N, H), h_prev (N, H),
//   c_prev (N, H)

#include "common.h"

namespace rnnkit_compiled {

namespace {

// The pointwise passes of one row are functions of their own: a pragma may not stand inside
// the AT_DISPATCH macros.

// One row of lstm_forward's pointwise pass.
template <typename scalar_t>
inline void lstm_forward_row(const scalar_t* __restrict__ x, const scalar_t* __restrict__ hw,
                             scalar_t* __restrict__ ar, scalar_t* __restrict__ hs,
                             scalar_t* __restrict__ cs, scalar_t* __restrict__ o_,
                             scalar_t* __restrict__ tc, scalar_t* __restrict__ hp,
                             scalar_t* __restrict__ cp, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t i = sigmoid(x[j] + hw[j]), f = sigmoid(x[H + j] + hw[H + j]);
    const scalar_t g = tanh_(x[2 * H + j] + hw[2 * H + j]);
    const scalar_t o = sigmoid(x[3 * H + j] + hw[3 * H + j]);
    const scalar_t cprev = cs[j];
    const scalar_t cn = f * cprev + i * g;              // c_t = f c_{t-1} + i g
    const scalar_t t_ = tanh_(cn);
    const scalar_t hn = o * t_;                         // h_t = o tanh(c_t)
    ar[j] = i; ar[H + j] = f; ar[2 * H + j] = g; ar[3 * H + j] = o;
    hp[j] = hs[j]; cp[j] = cprev; tc[j] = t_;
    o_[j] = hn; hs[j] = hn; cs[j] = cn;
  }
}

// One row of lstm_backward's pointwise pass.
template <typename scalar_t>
inline void lstm_backward_row(const scalar_t* __restrict__ g_, const scalar_t* __restrict__ tc,
                              const scalar_t* __restrict__ cp, const scalar_t* __restrict__ do_,
                              scalar_t* __restrict__ dar, scalar_t* __restrict__ dhr,
                              scalar_t* __restrict__ dcr, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t i = g_[j], f = g_[H + j], g = g_[2 * H + j], o = g_[3 * H + j];
    const scalar_t t_ = tc[j];
    const scalar_t dh_ = dhr[j] + do_[j];               // output and next step use h_t
    const scalar_t dc_ = dcr[j] + dh_ * o * (1 - t_ * t_);  // dc += dh o (1 - tanh²c)
    dar[j] = dc_ * g * i * (1 - i);                     // da_i = dc g σ'
    dar[H + j] = dc_ * cp[j] * f * (1 - f);             // da_f = dc c_{t-1} σ'
    dar[2 * H + j] = dc_ * i * (1 - g * g);             // da_g = dc i (1 - g²)
    dar[3 * H + j] = dh_ * t_ * o * (1 - o);            // da_o = dh tanh(c) σ'
    dcr[j] = dc_ * f;                                   // dc_{t-1} = dc f
  }
}

std::vector<at::Tensor> lstm_forward(const at::Tensor& xw, const std::vector<int64_t>& batch_sizes,
                                     const at::Tensor& h0, const at::Tensor& c0,
                                     const at::Tensor& weight_hh, bool reverse, bool keep) {
  const int64_t B = h0.size(0), H = h0.size(1), T = batch_sizes.size();
  check_packed(xw, batch_sizes, B);
  TORCH_CHECK(xw.size(1) == 4 * H && weight_hh.size(0) == 4 * H && weight_hh.size(1) == H,
              "lstm_forward: shapes of xw / weight_hh do not match H=", H);
  const int64_t N = xw.size(0);
  const auto offsets = offsets_of(batch_sizes);
  const int64_t kept = keep ? N : B;          // caches for the backward, or one step's scratch
  StepProduct product(weight_hh, B, /*pack=*/true);             // h W.T
  at::Tensor gates = buffer(kept, 4 * H, xw.options());
  at::Tensor out = buffer(N, H, xw.options());
  at::Tensor tanh_c = buffer(kept, H, xw.options());
  at::Tensor h_prev = buffer(kept, H, xw.options());
  at::Tensor c_prev = buffer(kept, H, xw.options());
  at::Tensor h = h0.contiguous().clone(), c = c0.contiguous().clone();   // (B, H) the state
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "lstm_forward", [&] {
    for (int64_t k = 0; k < T; ++k) {
      const int64_t t = step_at(k, T, reverse), n = batch_sizes[t], off = offsets[t];
      const int64_t coff = keep ? off : 0;
      const at::Tensor hw = product(h.narrow(0, 0, n));       // h W.T  (n, 4H)
      const scalar_t* A = hw.data_ptr<scalar_t>();
      const scalar_t* X = xw.data_ptr<scalar_t>() + off * 4 * H;
      scalar_t* GA = gates.data_ptr<scalar_t>() + coff * 4 * H;
      scalar_t* HS = h.data_ptr<scalar_t>();
      scalar_t* CS = c.data_ptr<scalar_t>();
      scalar_t* O = out.data_ptr<scalar_t>() + off * H;
      scalar_t* TC = tanh_c.data_ptr<scalar_t>() + coff * H;
      scalar_t* HP = h_prev.data_ptr<scalar_t>() + coff * H;
      scalar_t* CP = c_prev.data_ptr<scalar_t>() + coff * H;
      for_rows(n, H, [&](int64_t r) {
        const scalar_t* __restrict__ hw_ = A + r * 4 * H;
        const scalar_t* __restrict__ x = X + r * 4 * H;
        scalar_t* __restrict__ ar = GA + r * 4 * H;
        scalar_t* __restrict__ hs = HS + r * H;
        scalar_t* __restrict__ cs = CS + r * H;
        scalar_t* __restrict__ o_ = O + r * H;
        scalar_t* __restrict__ tc = TC + r * H;
        scalar_t* __restrict__ hp = HP + r * H;
        scalar_t* __restrict__ cp = CP + r * H;
        lstm_forward_row(x, hw_, ar, hs, cs, o_, tc, hp, cp, H);
      });
    }
  });
  return {out, h, c, gates, tanh_c, h_prev, c_prev};
}

// Returns (dxw (N, 4H) — also dhw —, dh0, dc0, dweight_hh, and dweight_ih = dxw.T x when
// the layer input x (N, I) is given, else None).
std::vector<at::Tensor> lstm_backward(const at::Tensor& dout, const at::Tensor& dh_final,
                                      const at::Tensor& dc_final, const at::Tensor& gates,
                                      const at::Tensor& tanh_c, const at::Tensor& h_prev,
                                      const at::Tensor& c_prev,
                                      const std::vector<int64_t>& batch_sizes,
                                      const at::Tensor& weight_hh, bool reverse,
                                      const std::optional<at::Tensor>& x) {
  const int64_t B = dh_final.size(0), H = dh_final.size(1), T = batch_sizes.size();
  const int64_t N = gates.size(0);
  const auto offsets = offsets_of(batch_sizes);
  // da W = da (W.T).T, W.T (H, 4H) a view. Unpacked: oneDNN reads the transposed layout
  // about as fast as a packed copy, which would cost more to make (a transpose, a reorder).
  StepProduct product(weight_hh.t(), B, /*pack=*/false);
  const at::Tensor dout_c = dout.contiguous();
  at::Tensor da = buffer(N, 4 * H, gates.options());
  at::Tensor dh = dh_final.contiguous().clone(), dc = dc_final.contiguous().clone();  // (B, H)
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward", [&] {
    for (int64_t k = 0; k < T; ++k) {
      const int64_t t = step_at(k, T, !reverse), n = batch_sizes[t], off = offsets[t];
      const scalar_t* G = gates.data_ptr<scalar_t>() + off * 4 * H;
      const scalar_t* TC = tanh_c.data_ptr<scalar_t>() + off * H;
      const scalar_t* CP = c_prev.data_ptr<scalar_t>() + off * H;
      const scalar_t* DO = dout_c.data_ptr<scalar_t>() + off * H;
      scalar_t* DA = da.data_ptr<scalar_t>() + off * 4 * H;
      scalar_t* DH = dh.data_ptr<scalar_t>();
      scalar_t* DC = dc.data_ptr<scalar_t>();
      for_rows(n, H, [&](int64_t r) {
        const scalar_t* __restrict__ g_ = G + r * 4 * H;
        const scalar_t* __restrict__ tc = TC + r * H;
        const scalar_t* __restrict__ cp = CP + r * H;
        const scalar_t* __restrict__ do_ = DO + r * H;
        scalar_t* __restrict__ dar = DA + r * 4 * H;
        scalar_t* __restrict__ dhr = DH + r * H;
        scalar_t* __restrict__ dcr = DC + r * H;
        lstm_backward_row(g_, tc, cp, do_, dar, dhr, dcr, H);
      });
      dh.narrow(0, 0, n).copy_(product(da.narrow(0, off, n)));   // dh_{t-1} = da W
    }
  });
  const at::Tensor da_t = transposed(da);                     // (4H, N)
  at::Tensor dweight_hh = affine(da_t, h_prev.t());           // da.T h_prev (4H, H), one product
  at::Tensor dweight_ih = x.has_value() ? affine(da_t, x->t()) : at::Tensor();  // da.T x
  return {da, dh, dc, dweight_hh, dweight_ih};
}

}  // namespace

void register_lstm(pybind11::module_& m) {
  m.def("lstm_forward", &lstm_forward, "LSTM forward over a packed sequence",
        py::arg("xw"), py::arg("batch_sizes"), py::arg("h0"), py::arg("c0"),
        py::arg("weight_hh"), py::arg("reverse"), py::arg("keep") = true);
  m.def("lstm_backward", &lstm_backward, "LSTM hand BPTT over a packed sequence",
        py::arg("dout"), py::arg("dh_final"), py::arg("dc_final"), py::arg("gates"),
        py::arg("tanh_c"), py::arg("h_prev"), py::arg("c_prev"), py::arg("batch_sizes"),
        py::arg("weight_hh"), py::arg("reverse"), py::arg("x") = py::none());
}

}  // namespace rnnkit_compiled
