// GRU, both forms of rnnkit/cells/gru.py: the same math as GRUCell (reset after) and
// GRUResetBeforeCell (reset before, Cho et al.).
//
// Reset after, caches (packed, (N, .); with keep=false none):
//   gates (N, 3H) = [r, z, h_{t-1} W_n.T + b_hn], n (N, H), h_prev (N, H)
// Reset before, caches (packed, (N, .); with keep=false one step's scratch, not returned):
//   rz (N, 2H) = [r, z], n (N, H), h_prev (N, H), rh (N, H) = r h_{t-1}

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
  const int64_t B = h0.size(0), H = h0.size(1);
  check_forward("gru_forward", xw, batch_sizes, h0, weight_hh, 3);
  const int64_t N = xw.size(0);
  const int64_t kept = keep ? N : B;          // caches for the backward, or one step's scratch
  StepProduct product(weight_hh, B, /*pack=*/true, bias_hh);   // h W.T (+ b_hh where given)
  at::Tensor gates = buffer(kept, 3 * H, xw.options());      // [r, z, h W_n.T + b_hn]
  at::Tensor cand = buffer(kept, H, xw.options());
  at::Tensor out = buffer(N, H, xw.options());
  at::Tensor h_prev = buffer(kept, H, xw.options());
  at::Tensor h = h0.contiguous().clone();
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "gru_forward", [&] {
    for_steps(batch_sizes, reverse, [&](int64_t n, int64_t off) {
      const int64_t coff = keep ? off : 0;
      const at::Tensor hw = product(h.narrow(0, 0, n));       // h W.T + b_hh (n, 3H)
      const Rows<const scalar_t> X(xw, off), HW(hw);
      const Rows<scalar_t> GA(gates, coff), NC(cand, coff), O(out, off), HP(h_prev, coff), HS(h);
      for_rows(n, H, [&](int64_t r) {
        gru_forward_row(X[r], HW[r], GA[r], NC[r], O[r], HP[r], HS[r], H);
      });
    });
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
  const int64_t B = dh_final.size(0), H = dh_final.size(1);
  const int64_t N = gates.size(0);
  StepProduct product = backward_product(weight_hh, B);       // dhw W = dhw (W.T).T
  const at::Tensor dout_c = dout.contiguous();
  at::Tensor dxw = buffer(N, 3 * H, gates.options());
  at::Tensor dhw = buffer(N, 3 * H, gates.options());
  at::Tensor dh = dh_final.contiguous().clone();               // (B, H)
  at::Tensor direct = at::empty({B, H}, gates.options());      // z dh, the path past the gates
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_backward", [&] {
    for_steps(batch_sizes, !reverse, [&](int64_t n, int64_t off) {
      const Rows<const scalar_t> G(gates, off), NC(cand, off), HP(h_prev, off), DO(dout_c, off);
      const Rows<const scalar_t> DH(dh);
      const Rows<scalar_t> DX(dxw, off), DHW(dhw, off), DZ(direct);
      for_rows(n, H, [&](int64_t r) {
        gru_backward_row(G[r], NC[r], HP[r], DO[r], DX[r], DHW[r], DH[r], DZ[r], H);
      });
      at::Tensor dhn = dh.narrow(0, 0, n);
      dhn.copy_(direct.narrow(0, 0, n));                           // z dh
      product_into(product, dhw.narrow(0, off, n), dhn, true);     // + dhw W
    });
  });
  at::Tensor dweight_hh = affine(transposed(dhw), h_prev.t());  // dhw.T h_prev (3H, H)
  at::Tensor dweight_ih = x.has_value() ? affine(transposed(dxw), x->t()) : at::Tensor();
  return {dxw, dhw, dh, dweight_hh, dweight_ih};
}


// ---------------------------------------------------------------------------------------
// Reset before (Cho et al.): n = tanh(xw_n + (r h_{t-1}) W_n.T), b_hh folded into xw.
// Two products a step each way, on the contiguous row blocks W_rz = weight_hh[:2H] and
// W_n = weight_hh[2H:]: forward h W_rz.T, then (r h) W_n.T; backward da_n W_n, then
// da_rz W_rz. After the loop dweight_hh is one product per block: da_rz.T h_prev and
// da_n.T (r h_prev).

// Rows [row0, row0 + n) of x (a contiguous (rows, K) buffer) through `product`: y = x w.T
// (n, N), or y += x w.T into `into` ((n, N) rows of a contiguous (., N) buffer) when given.
// The micro-kernel is called on the raw pointers (no tensor made per step: a few of those a
// step cost about 2% of the loop at 20 x 200); elsewhere product() and an add. Returns y.
template <typename scalar_t>
inline const scalar_t* step_product(StepProduct& product, const at::Tensor& x, int64_t row0,
                                    int64_t n, at::Tensor& held, scalar_t* into = nullptr) {
  const int64_t K = x.size(1);
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (product.micro && !product.bias) {
      const int64_t N = product.w_rows.size(1);
      float* y = into ? into : product.out.data_ptr<float>();
      micro_product(x.data_ptr<float>() + row0 * K, n, K, product.w_rows.data_ptr<float>(), N,
                    y, N, /*add=*/into != nullptr);
      return y;
    }
  }
  held = product(x.narrow(0, row0, n));
  if (into == nullptr) return held.data_ptr<scalar_t>();
  const int64_t N = held.size(1);
  at::Tensor y = at::from_blob(into, {n, N}, held.options());
  y.add_(held);
  return into;
}

// Forward, first pass of one row (after h W_rz.T): the gates and r h_{t-1}.
template <typename scalar_t>
inline void grub_gates_row(const scalar_t* __restrict__ x, const scalar_t* __restrict__ arz,
                           const scalar_t* __restrict__ hs, scalar_t* __restrict__ rz,
                           scalar_t* __restrict__ hp, scalar_t* __restrict__ rh, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t rr = sigmoid(x[j] + arz[j]);          // reset
    const scalar_t z = sigmoid(x[H + j] + arz[H + j]);   // update
    const scalar_t hprev = hs[j];
    rz[j] = rr; rz[H + j] = z;
    hp[j] = hprev; rh[j] = rr * hprev;                   // reset before the product
  }
}

// Forward, second pass of one row (after (r h) W_n.T): the candidate and the new state.
template <typename scalar_t>
inline void grub_state_row(const scalar_t* __restrict__ x, const scalar_t* __restrict__ an,
                           const scalar_t* __restrict__ rz, const scalar_t* __restrict__ hp,
                           scalar_t* __restrict__ nc, scalar_t* __restrict__ o_,
                           scalar_t* __restrict__ hs, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t z = rz[H + j], hprev = hp[j];
    const scalar_t nn = tanh_(x[2 * H + j] + an[j]);     // candidate
    const scalar_t hnew = nn + z * (hprev - nn);         // (1 - z) n + z h_{t-1}
    nc[j] = nn; o_[j] = hnew; hs[j] = hnew;
  }
}

// Backward, first pass of one row: da_n and da_z; dh becomes the direct path z dh.
template <typename scalar_t>
inline void grub_candidate_back_row(const scalar_t* __restrict__ rz,
                                    const scalar_t* __restrict__ nc,
                                    const scalar_t* __restrict__ hp,
                                    const scalar_t* __restrict__ do_,
                                    scalar_t* __restrict__ dx, scalar_t* __restrict__ dan,
                                    scalar_t* __restrict__ darz, scalar_t* __restrict__ dhr,
                                    int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t z = rz[H + j], nn = nc[j];
    const scalar_t dh_ = dhr[j] + do_[j];                // output and next step use h_t
    const scalar_t da_n = dh_ * (1 - z) * (1 - nn * nn); // dh (1 - z) tanh'
    const scalar_t da_z = dh_ * (hp[j] - nn) * z * (1 - z);  // dh (h_{t-1} - n) σ'
    dx[H + j] = da_z; dx[2 * H + j] = da_n;
    dan[j] = da_n; darz[H + j] = da_z;
    dhr[j] = dh_ * z;                                    // the path past the gates
  }
}

// Backward, second pass of one row (after drh = da_n W_n): da_r; dh += drh r.
template <typename scalar_t>
inline void grub_reset_back_row(const scalar_t* __restrict__ rz,
                                const scalar_t* __restrict__ hp,
                                const scalar_t* __restrict__ drh, scalar_t* __restrict__ dx,
                                scalar_t* __restrict__ darz, scalar_t* __restrict__ dhr,
                                int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t rr = rz[j], d = drh[j];
    const scalar_t da_r = d * hp[j] * rr * (1 - rr);     // d(r h) h_{t-1} σ'
    dx[j] = da_r; darz[j] = da_r;
    dhr[j] += d * rr;                                    // through r h_{t-1}
  }
}

std::vector<at::Tensor> gru_reset_before_forward(const at::Tensor& xw,
                                                 const std::vector<int64_t>& batch_sizes,
                                                 const at::Tensor& h0,
                                                 const at::Tensor& weight_hh, bool reverse,
                                                 bool keep) {
  const int64_t B = h0.size(0), H = h0.size(1);
  check_forward("gru_reset_before_forward", xw, batch_sizes, h0, weight_hh, 3);
  const int64_t N = xw.size(0);
  const int64_t kept = keep ? N : B;          // caches for the backward, or one step's scratch
  const at::Tensor w = weight_hh.contiguous();
  StepProduct product_rz(w.narrow(0, 0, 2 * H), B, /*pack=*/true);   // h W_rz.T
  StepProduct product_n(w.narrow(0, 2 * H, H), B, /*pack=*/true);    // (r h) W_n.T
  at::Tensor rz = buffer(kept, 2 * H, xw.options());
  at::Tensor cand = buffer(kept, H, xw.options());
  at::Tensor h_prev = buffer(kept, H, xw.options());
  at::Tensor rh = buffer(kept, H, xw.options());
  at::Tensor out = buffer(N, H, xw.options());
  at::Tensor h = h0.contiguous().clone();
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "gru_reset_before_forward", [&] {
    for_steps(batch_sizes, reverse, [&](int64_t n, int64_t off) {
      const int64_t coff = keep ? off : 0;
      const Rows<const scalar_t> X(xw, off);
      const Rows<scalar_t> RZ(rz, coff), NC(cand, coff), HP(h_prev, coff), RH(rh, coff);
      const Rows<scalar_t> O(out, off), HS(h);
      at::Tensor held;
      const scalar_t* ARZ = step_product<scalar_t>(product_rz, h, 0, n, held);  // h W_rz.T
      for_rows(n, H, [&](int64_t r) {
        grub_gates_row(X[r], ARZ + r * 2 * H, HS[r], RZ[r], HP[r], RH[r], H);
      });
      const scalar_t* AN = step_product<scalar_t>(product_n, rh, coff, n, held);  // (r h) W_n.T
      for_rows(n, H, [&](int64_t r) {
        grub_state_row(X[r], AN + r * H, RZ[r], HP[r], NC[r], O[r], HS[r], H);
      });
    });
  });
  return {out, h, rz, cand, h_prev, rh};
}

// Returns (dxw (N, 3H) — also dhw, bias_hh being folded —, dh0, dweight_hh, and
// dweight_ih = dxw.T x when the layer input x (N, I) is given, else None).
std::vector<at::Tensor> gru_reset_before_backward(const at::Tensor& dout,
                                                  const at::Tensor& dh_final,
                                                  const at::Tensor& rz, const at::Tensor& cand,
                                                  const at::Tensor& h_prev,
                                                  const at::Tensor& rh,
                                                  const std::vector<int64_t>& batch_sizes,
                                                  const at::Tensor& weight_hh, bool reverse,
                                                  const std::optional<at::Tensor>& x) {
  const int64_t B = dh_final.size(0), H = dh_final.size(1);
  const int64_t N = rz.size(0);
  check_packed(rz, batch_sizes, B);
  TORCH_CHECK(rz.size(1) == 2 * H && cand.sizes() == h_prev.sizes() &&
                  rh.sizes() == h_prev.sizes() && dout.sizes() == h_prev.sizes() &&
                  h_prev.size(0) == N && h_prev.size(1) == H && weight_hh.size(0) == 3 * H &&
                  weight_hh.size(1) == H,
              "gru_reset_before_backward: shapes of the caches / dout / weight_hh do not "
              "match H=", H);
  TORCH_CHECK(cand.is_contiguous() && h_prev.is_contiguous() && rh.is_contiguous(),
              "gru_reset_before_backward: expected the forward's (contiguous) caches");
  const at::Tensor w = weight_hh.contiguous();
  StepProduct product_n = backward_product(w.narrow(0, 2 * H, H), B);       // da_n W_n
  StepProduct product_rz = backward_product(w.narrow(0, 0, 2 * H), B);      // da_rz W_rz
  const at::Tensor dout_c = dout.contiguous();
  at::Tensor da = buffer(N, 3 * H, rz.options());
  at::Tensor dan = at::empty({B, H}, rz.options());            // one step's da_n, contiguous
  at::Tensor darz = at::empty({B, 2 * H}, rz.options());       // one step's [da_r, da_z]
  at::Tensor dh = dh_final.contiguous().clone();               // (B, H)
  AT_DISPATCH_FLOATING_TYPES(rz.scalar_type(), "gru_reset_before_backward", [&] {
    for_steps(batch_sizes, !reverse, [&](int64_t n, int64_t off) {
      const Rows<const scalar_t> RZ(rz, off), NC(cand, off), HP(h_prev, off), DO(dout_c, off);
      const Rows<scalar_t> DA(da, off), DAN(dan), DARZ(darz), DH(dh);
      for_rows(n, H, [&](int64_t r) {
        grub_candidate_back_row(RZ[r], NC[r], HP[r], DO[r], DA[r], DAN[r], DARZ[r], DH[r], H);
      });
      at::Tensor held;
      const scalar_t* DRH = step_product<scalar_t>(product_n, dan, 0, n, held);  // da_n W_n
      for_rows(n, H, [&](int64_t r) {
        grub_reset_back_row(RZ[r], HP[r], DRH + r * H, DA[r], DARZ[r], DH[r], H);
      });
      step_product<scalar_t>(product_rz, darz, 0, n, held, DH.base);   // dh += da_rz W_rz
    });
  });
  const at::Tensor da_t = transposed(da);                      // (3H, N)
  at::Tensor dweight_hh = at::empty({3 * H, H}, rz.options());
  dweight_hh.narrow(0, 0, 2 * H).copy_(affine(da_t.narrow(0, 0, 2 * H), h_prev.t()));
  dweight_hh.narrow(0, 2 * H, H).copy_(affine(da_t.narrow(0, 2 * H, H), rh.t()));
  at::Tensor dweight_ih = x.has_value() ? affine(da_t, x->t()) : at::Tensor();  // da.T x
  return {da, dh, dweight_hh, dweight_ih};
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
  m.def("gru_reset_before_forward", &gru_reset_before_forward,
        "GRU (reset before) forward over a packed sequence", py::arg("xw"),
        py::arg("batch_sizes"), py::arg("h0"), py::arg("weight_hh"), py::arg("reverse"),
        py::arg("keep") = true);
  m.def("gru_reset_before_backward", &gru_reset_before_backward,
        "GRU (reset before) hand BPTT over a packed sequence", py::arg("dout"),
        py::arg("dh_final"), py::arg("rz"), py::arg("cand"), py::arg("h_prev"), py::arg("rh"),
        py::arg("batch_sizes"), py::arg("weight_hh"), py::arg("reverse"),
        py::arg("x") = py::none());
}

}  // namespace rnnkit_compiled
