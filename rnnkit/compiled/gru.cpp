// GRU, reset gate after the recurrent product: the same math as rnnkit/cells/gru.py.
//
// Caches (packed, (N, .); with keep=false none):
//   gates (N, 3H) = [r, z, h_{t-1} W_n.T + b_hn], n (N, H), h_prev (N, H)

#include "common.h"

namespace rnnkit_compiled {

namespace {

// One row of gru_forward's pointwise pass.
template <typename scalar_t>
inline void gru_forward_row(const scalar_t* __restrict__ x, const scalar_t* __restrict__ hw_,
                            scalar_t* __restrict__ ga, scalar_t* __restrict__ nc,
                            scalar_t* __restrict__ o_, scalar_t* __restrict__ hp,
                            scalar_t* __restrict__ hs, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t rr = sigmoid(x[j] + hw_[j]);        // reset
    const scalar_t z = sigmoid(x[H + j] + hw_[H + j]);  // update
    const scalar_t hn = hw_[2 * H + j];                 // h W_n.T + b_hn
    const scalar_t nn = tanh_(x[2 * H + j] + rr * hn);  // candidate
    const scalar_t hprev = hs[j];
    const scalar_t hnew = nn + z * (hprev - nn);        // (1 - z) n + z h_{t-1}
    ga[j] = rr; ga[H + j] = z; ga[2 * H + j] = hn;
    nc[j] = nn; hp[j] = hprev;
    o_[j] = hnew; hs[j] = hnew;
  }
}

// One row of gru_backward's pointwise pass.
template <typename scalar_t>
inline void gru_backward_row(const scalar_t* __restrict__ g_, const scalar_t* __restrict__ nc,
                             const scalar_t* __restrict__ hp, const scalar_t* __restrict__ do_,
                             scalar_t* __restrict__ dx, scalar_t* __restrict__ dhw_,
                             const scalar_t* __restrict__ dhr, scalar_t* __restrict__ dz,
                             int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t rr = g_[j], z = g_[H + j], hn = g_[2 * H + j], nn = nc[j];
    const scalar_t dh_ = dhr[j] + do_[j];
    const scalar_t da_n = dh_ * (1 - z) * (1 - nn * nn);      // dh (1 - z) tanh'
    const scalar_t da_r = da_n * hn * rr * (1 - rr);          // da_n (h W_n.T + b_hn) σ'
    const scalar_t da_z = dh_ * (hp[j] - nn) * z * (1 - z);   // dh (h_{t-1} - n) σ'
    dx[j] = da_r; dx[H + j] = da_z; dx[2 * H + j] = da_n;
    dhw_[j] = da_r; dhw_[H + j] = da_z; dhw_[2 * H + j] = da_n * rr;  // n block passes r
    dz[j] = dh_ * z;
  }
}

std::vector<at::Tensor> gru_forward(const at::Tensor& xw, const std::vector<int64_t>& batch_sizes,
                                    const at::Tensor& h0, const at::Tensor& weight_hh,
                                    const c10::optional<at::Tensor>& bias_hh, bool reverse,
                                    bool keep) {
  const int64_t B = h0.size(0), H = h0.size(1), T = batch_sizes.size();
  check_packed(xw, batch_sizes, B);
  TORCH_CHECK(xw.size(1) == 3 * H && weight_hh.size(0) == 3 * H && weight_hh.size(1) == H,
              "gru_forward: shapes of xw / weight_hh do not match H=", H);
  const int64_t N = xw.size(0);
  const auto offsets = offsets_of(batch_sizes);
  const int64_t kept = keep ? N : B;          // caches for the backward, or one step's scratch
  const bool has_bias = bias_hh.has_value() && bias_hh->defined();
  StepProduct product(weight_hh, B, /*pack=*/true,
                      has_bias ? bias_hh : std::nullopt);     // h W.T + b_hh
  at::Tensor gates = buffer(kept, 3 * H, xw.options());      // [r, z, h W_n.T + b_hn]
  at::Tensor cand = buffer(kept, H, xw.options());
  at::Tensor out = buffer(N, H, xw.options());
  at::Tensor h_prev = buffer(kept, H, xw.options());
  at::Tensor h = h0.contiguous().clone();
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "gru_forward", [&] {
    for (int64_t k = 0; k < T; ++k) {
      const int64_t t = step_at(k, T, reverse), n = batch_sizes[t], off = offsets[t];
      const int64_t coff = keep ? off : 0;
      const at::Tensor hw = product(h.narrow(0, 0, n));       // h W.T + b_hh (n, 3H)
      const scalar_t* X = xw.data_ptr<scalar_t>() + off * 3 * H;
      const scalar_t* HW = hw.data_ptr<scalar_t>();
      scalar_t* GA = gates.data_ptr<scalar_t>() + coff * 3 * H;
      scalar_t* NC = cand.data_ptr<scalar_t>() + coff * H;
      scalar_t* O = out.data_ptr<scalar_t>() + off * H;
      scalar_t* HP = h_prev.data_ptr<scalar_t>() + coff * H;
      scalar_t* HS = h.data_ptr<scalar_t>();
      for_rows(n, H, [&](int64_t r) {
        const scalar_t* __restrict__ x = X + r * 3 * H;
        const scalar_t* __restrict__ hw_ = HW + r * 3 * H;
        scalar_t* __restrict__ ga = GA + r * 3 * H;
        scalar_t* __restrict__ nc = NC + r * H;
        scalar_t* __restrict__ o_ = O + r * H;
        scalar_t* __restrict__ hp = HP + r * H;
        scalar_t* __restrict__ hs = HS + r * H;
        gru_forward_row(x, hw_, ga, nc, o_, hp, hs, H);
      });
    }
  });
  return {out, h, gates, cand, h_prev};
}

// Returns (dxw (N, 3H), dhw (N, 3H), dh0, dweight_hh, dweight_ih or None as for the LSTM).
std::vector<at::Tensor> gru_backward(const at::Tensor& dout, const at::Tensor& dh_final,
                                     const at::Tensor& gates, const at::Tensor& cand,
                                     const at::Tensor& h_prev,
                                     const std::vector<int64_t>& batch_sizes,
                                     const at::Tensor& weight_hh, bool reverse,
                                     const std::optional<at::Tensor>& x) {
  const int64_t B = dh_final.size(0), H = dh_final.size(1), T = batch_sizes.size();
  const int64_t N = gates.size(0);
  const auto offsets = offsets_of(batch_sizes);
  StepProduct product(weight_hh.t(), B, /*pack=*/false);       // dhw W = dhw (W.T).T
  const at::Tensor dout_c = dout.contiguous();
  at::Tensor dxw = buffer(N, 3 * H, gates.options());
  at::Tensor dhw = buffer(N, 3 * H, gates.options());
  at::Tensor dh = dh_final.contiguous().clone();               // (B, H)
  at::Tensor direct = at::empty({B, H}, gates.options());      // z dh, the path past the gates
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_backward", [&] {
    for (int64_t k = 0; k < T; ++k) {
      const int64_t t = step_at(k, T, !reverse), n = batch_sizes[t], off = offsets[t];
      const scalar_t* G = gates.data_ptr<scalar_t>() + off * 3 * H;
      const scalar_t* NC = cand.data_ptr<scalar_t>() + off * H;
      const scalar_t* HP = h_prev.data_ptr<scalar_t>() + off * H;
      const scalar_t* DO = dout_c.data_ptr<scalar_t>() + off * H;
      scalar_t* DX = dxw.data_ptr<scalar_t>() + off * 3 * H;
      scalar_t* DHW = dhw.data_ptr<scalar_t>() + off * 3 * H;
      scalar_t* DH = dh.data_ptr<scalar_t>();
      scalar_t* DZ = direct.data_ptr<scalar_t>();
      for_rows(n, H, [&](int64_t r) {
        const scalar_t* __restrict__ g_ = G + r * 3 * H;
        const scalar_t* __restrict__ nc = NC + r * H;
        const scalar_t* __restrict__ hp = HP + r * H;
        const scalar_t* __restrict__ do_ = DO + r * H;
        scalar_t* __restrict__ dx = DX + r * 3 * H;
        scalar_t* __restrict__ dhw_ = DHW + r * 3 * H;
        const scalar_t* __restrict__ dhr = DH + r * H;
        scalar_t* __restrict__ dz = DZ + r * H;
        gru_backward_row(g_, nc, hp, do_, dx, dhw_, dhr, dz, H);
      });
      at::Tensor dhn = dh.narrow(0, 0, n);
      at::add_out(dhn, product(dhw.narrow(0, off, n)), direct.narrow(0, 0, n));  // dhw W + z dh
    }
  });
  at::Tensor dweight_hh = affine(transposed(dhw), h_prev.t());  // dhw.T h_prev (3H, H)
  at::Tensor dweight_ih = x.has_value() ? affine(transposed(dxw), x->t()) : at::Tensor();
  return {dxw, dhw, dh, dweight_hh, dweight_ih};
}

}  // namespace

void register_gru(pybind11::module_& m) {
  m.def("gru_forward", &gru_forward, "GRU (reset after) forward over a packed sequence",
        py::arg("xw"), py::arg("batch_sizes"), py::arg("h0"), py::arg("weight_hh"),
        py::arg("bias_hh"), py::arg("reverse"), py::arg("keep") = true);
  m.def("gru_backward", &gru_backward, "GRU (reset after) hand BPTT over a packed sequence",
        py::arg("dout"), py::arg("dh_final"), py::arg("gates"), py::arg("cand"),
        py::arg("h_prev"), py::arg("batch_sizes"), py::arg("weight_hh"), py::arg("reverse"),
        py::arg("x") = py::none());
}

}  // namespace rnnkit_compiled
