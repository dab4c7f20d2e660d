// LSTM: the same math as rnnkit/cells/lstm.py, with or without the peepholes
// (weight_peephole (3H,) = [p_i, p_f, p_o]), and zoneout (rnnkit/cells/dropout.py's Zoneout
// around an LSTMCell): lstm_forward / lstm_backward.
//
// Caches (packed, (N, .); with keep=false, for inference, none: one step's scratch):
//   gates (N, 4H) = [i, f, g, o] after their activations, tanh_c (N, H), h_prev (N, H),
//   c_prev (N, H) — the states the step read (with zoneout: the zoned ones). c_t, which
//   dL/dp_o needs, is recomputed in the backward as f c_{t-1} + i g.
//
// Zoneout: s_t = d s_{t-1} + (1 - d) s~_t per state (h, c), d the keep masks (training:
// drawn in Python, in the Python engine's order, packed (2, N, H) = [d_h, d_c]) or the
// scalar p (evaluation), as torch.lerp(s~, s_prev, d) computes it. Backward:
// ds~ = (1 - d) ds, and ds_{t-1} gains d ds.

#include "common.h"

namespace rnnkit_compiled {

namespace {

// The pointwise passes of one row are functions of their own: a pragma may not stand inside
// the AT_DISPATCH macros.
// The variants: peepholes (PEEP) and zoneout (ZONE: ZONE_NONE, ZONE_MASK — training, a mask
// per step and state — or ZONE_MEAN — evaluation, the scalar p), each a template instance
// of its own: the plain LSTM (no peepholes, ZONE_NONE) compiles to the plain loop.
enum { ZONE_NONE = 0, ZONE_MASK = 1, ZONE_MEAN = 2 };

// torch.lerp(a, b, w) = a + w (b - a), as ATen computes it (exact at w = 0 and w = 1).
template <typename scalar_t> inline scalar_t lerp_(scalar_t a, scalar_t b, scalar_t w) {
  return w < scalar_t(0.5) ? a + w * (b - a) : b - (b - a) * (scalar_t(1) - w);
}

// One row of lstm_forward's pointwise pass. pp: the peepholes (3H); mh, mc: the row's keep
// masks (ZONE_MASK); zp: p (ZONE_MEAN).
template <typename scalar_t, bool PEEP, int ZONE>
inline void lstm_forward_row(const scalar_t* __restrict__ x, const scalar_t* __restrict__ hw,
                              const scalar_t* __restrict__ pp, const scalar_t* __restrict__ mh,
                              const scalar_t* __restrict__ mc, scalar_t zp,
                              scalar_t* __restrict__ ar, scalar_t* __restrict__ hs,
                              scalar_t* __restrict__ cs, scalar_t* __restrict__ o_,
                              scalar_t* __restrict__ tc, scalar_t* __restrict__ hp,
                              scalar_t* __restrict__ cp, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t cprev = cs[j], hprev = hs[j];
    scalar_t ai = x[j] + hw[j], af = x[H + j] + hw[H + j];
    if constexpr (PEEP) {
      ai += pp[j] * cprev;                              // i, f see c_{t-1}
      af += pp[H + j] * cprev;
    }
    const scalar_t i = sigmoid(ai), f = sigmoid(af);
    const scalar_t g = tanh_(x[2 * H + j] + hw[2 * H + j]);
    scalar_t cn = f * cprev + i * g;                    // c~_t = f c_{t-1} + i g
    scalar_t ao = x[3 * H + j] + hw[3 * H + j];
    if constexpr (PEEP) ao += pp[2 * H + j] * cn;       // o sees c~_t
    const scalar_t o = sigmoid(ao);
    const scalar_t t_ = tanh_(cn);
    scalar_t hn = o * t_;                               // h~_t = o tanh(c~_t)
    ar[j] = i; ar[H + j] = f; ar[2 * H + j] = g; ar[3 * H + j] = o;
    hp[j] = hprev; cp[j] = cprev; tc[j] = t_;
    if constexpr (ZONE == ZONE_MASK) {
      hn = lerp_(hn, hprev, mh[j]);                     // d s_{t-1} + (1 - d) s~_t
      cn = lerp_(cn, cprev, mc[j]);
    } else if constexpr (ZONE == ZONE_MEAN) {
      hn = lerp_(hn, hprev, zp);
      cn = lerp_(cn, cprev, zp);
    }
    o_[j] = hn; hs[j] = hn; cs[j] = cn;
  }
}

// One row of lstm_backward's pointwise pass. dhr: in, dL/dh_t from the next step; out,
// with zoneout, d_h dh (to which the step adds da W), else unchanged (overwritten by da W).
// acc (3H): this thread's sums of dL/dp = [Σ da_i c_{t-1}, Σ da_f c_{t-1}, Σ da_o c~_t], in
// double whatever scalar_t (a float32 sum over thousands of rows would lose digits).
template <typename scalar_t, bool PEEP, int ZONE>
inline void lstm_backward_row(const scalar_t* __restrict__ g_, const scalar_t* __restrict__ tc,
                               const scalar_t* __restrict__ cp, const scalar_t* __restrict__ do_,
                               const scalar_t* __restrict__ pp, const scalar_t* __restrict__ mh,
                               const scalar_t* __restrict__ mc, scalar_t zp, scalar_t zq,
                               scalar_t* __restrict__ dar, scalar_t* __restrict__ dhr,
                               scalar_t* __restrict__ dcr, double* __restrict__ acc,
                               int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t i = g_[j], f = g_[H + j], g = g_[2 * H + j], o = g_[3 * H + j];
    const scalar_t t_ = tc[j], cprev = cp[j];
    const scalar_t dh_ = dhr[j] + do_[j];               // output and next step use h_t
    const scalar_t dcn = dcr[j];
    scalar_t dhi = dh_, dci = dcn;                      // the inner cell's: ds~ = (1 - d) ds
    if constexpr (ZONE == ZONE_MASK) {
      dhi = dh_ * (scalar_t(1) - mh[j]);
      dci = dcn * (scalar_t(1) - mc[j]);
    } else if constexpr (ZONE == ZONE_MEAN) {
      dhi = dh_ * zq;
      dci = dcn * zq;
    }
    const scalar_t dao = dhi * t_ * (o - o * o);        // da_o = dh tanh(c) σ'
    scalar_t dc_ = dci + dhi * o * (1 - t_ * t_);       // dc += dh o (1 - tanh²c)
    if constexpr (PEEP) dc_ += dao * pp[2 * H + j];     // o sees c_t through p_o
    const scalar_t dai = dc_ * g * (i - i * i);         // da_i = dc g σ'
    const scalar_t daf = dc_ * cprev * (f - f * f);     // da_f = dc c_{t-1} σ'
    dar[j] = dai;
    dar[H + j] = daf;
    dar[2 * H + j] = dc_ * i * (1 - g * g);             // da_g = dc i (1 - g²)
    dar[3 * H + j] = dao;
    scalar_t dcp = dc_ * f;                             // dc_{t-1} = dc f
    if constexpr (PEEP) dcp += dai * pp[j] + daf * pp[H + j];   // i, f see c_{t-1}
    if constexpr (ZONE == ZONE_MASK) {
      dcp += mc[j] * dcn;                               // ds_{t-1} gains d ds
      dhr[j] = mh[j] * dh_;
    } else if constexpr (ZONE == ZONE_MEAN) {
      dcp += zp * dcn;
      dhr[j] = zp * dh_;
    }
    dcr[j] = dcp;
    if constexpr (PEEP) {
      acc[j] += dai * cprev;
      acc[H + j] += daf * cprev;
      acc[2 * H + j] += dao * (f * cprev + i * g);      // c~_t, as the forward made it
    }
  }
}

// The zoneout mode of the arguments: masks (2, N, H) given, p given, or neither.
inline int zone_mode(const std::optional<at::Tensor>& masks, const std::optional<double>& p,
                     int64_t N, int64_t H) {
  if (masks.has_value() && masks->defined()) {
    TORCH_CHECK(masks->dim() == 3 && masks->size(0) == 2 && masks->size(1) == N &&
                masks->size(2) == H && masks->is_contiguous(),
                "lstm: zoneout masks must be contiguous (2, N, H) = (2, ", N, ", ", H, ")");
    return ZONE_MASK;
  }
  return p.has_value() ? ZONE_MEAN : ZONE_NONE;
}

// Calls f(std::integral_constant<bool, PEEP>, std::integral_constant<int, ZONE>).
template <typename F> void with_variant(bool peep, int zone, F f) {
  auto z = [&](auto P) {
    if (zone == ZONE_MASK) f(P, std::integral_constant<int, ZONE_MASK>());
    else if (zone == ZONE_MEAN) f(P, std::integral_constant<int, ZONE_MEAN>());
    else f(P, std::integral_constant<int, ZONE_NONE>());
  };
  if (peep) z(std::true_type());
  else z(std::false_type());
}

// Returns (out, h, c, and the caches above). The peepholes (3H,) where given; zoneout where
// masks (training) or p (evaluation) are given.
std::vector<at::Tensor> lstm_forward(const at::Tensor& xw, const std::vector<int64_t>& batch_sizes,
                                      const at::Tensor& h0, const at::Tensor& c0,
                                      const at::Tensor& weight_hh,
                                      const std::optional<at::Tensor>& peephole,
                                      const std::optional<at::Tensor>& masks,
                                      const std::optional<double>& zoneout, bool reverse,
                                      bool keep) {
  const int64_t B = h0.size(0), H = h0.size(1);
  check_forward("lstm_forward", xw, batch_sizes, h0, weight_hh, 4);
  const int64_t N = xw.size(0);
  const bool peep = peephole.has_value() && peephole->defined();
  TORCH_CHECK(!peep || peephole->numel() == 3 * H, "lstm_forward: weight_peephole must be (3H,)");
  const int zone = zone_mode(masks, zoneout, N, H);
  const at::Tensor pp = peep ? peephole->contiguous() : at::Tensor();
  const int64_t kept = keep ? N : B;          // caches for the backward, or one step's scratch
  StepProduct product(weight_hh, B, /*pack=*/true);             // h W.T
  at::Tensor gates = buffer(kept, 4 * H, xw.options());
  at::Tensor out = buffer(N, H, xw.options());
  at::Tensor tanh_c = buffer(kept, H, xw.options());
  at::Tensor h_prev = buffer(kept, H, xw.options());
  at::Tensor c_prev = buffer(kept, H, xw.options());
  at::Tensor h = h0.contiguous().clone(), c = c0.contiguous().clone();   // (B, H) the state
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "lstm_forward", [&] {
    const scalar_t* PP = peep ? pp.data_ptr<scalar_t>() : nullptr;
    const scalar_t* M = zone == ZONE_MASK ? masks->data_ptr<scalar_t>() : nullptr;
    const scalar_t zp = static_cast<scalar_t>(zone == ZONE_MEAN ? *zoneout : 0.0);
    with_variant(peep, zone, [&](auto P, auto Z) {
      constexpr bool PEEP = decltype(P)::value;
      constexpr int ZONE = decltype(Z)::value;
      for_steps(batch_sizes, reverse, [&](int64_t n, int64_t off) {
        const int64_t coff = keep ? off : 0;
        const at::Tensor hw = product(h.narrow(0, 0, n));     // h W.T  (n, 4H)
        const Rows<const scalar_t> X(xw, off), A(hw);
        const scalar_t* MH = M ? M + off * H : nullptr;         // the masks of h and of c
        const scalar_t* MC = M ? M + (N + off) * H : nullptr;
        const Rows<scalar_t> GA(gates, coff), HS(h), CS(c), O(out, off), TC(tanh_c, coff);
        const Rows<scalar_t> HP(h_prev, coff), CP(c_prev, coff);
        for_rows(n, H, [&](int64_t r) {
          lstm_forward_row<scalar_t, PEEP, ZONE>(
              X[r], A[r], PP, MH ? MH + r * H : nullptr, MC ? MC + r * H : nullptr, zp, GA[r],
              HS[r], CS[r], O[r], TC[r], HP[r], CP[r], H);
        });
      });
    });
  });
  return {out, h, c, gates, tanh_c, h_prev, c_prev};
}

// Returns (dxw (N, 4H) — also dhw —, dh0, dc0, dweight_hh, dweight_ih = dxw.T x when the
// layer input x (N, I) is given, else None, and dweight_peephole (3H,), None without
// peepholes); the forward's peephole / masks / zoneout again.
std::vector<at::Tensor> lstm_backward(const at::Tensor& dout, const at::Tensor& dh_final,
                                       const at::Tensor& dc_final, const at::Tensor& gates,
                                       const at::Tensor& tanh_c, const at::Tensor& h_prev,
                                       const at::Tensor& c_prev,
                                       const std::vector<int64_t>& batch_sizes,
                                       const at::Tensor& weight_hh,
                                       const std::optional<at::Tensor>& peephole,
                                       const std::optional<at::Tensor>& masks,
                                       const std::optional<double>& zoneout, bool reverse,
                                       const std::optional<at::Tensor>& x) {
  const int64_t B = dh_final.size(0), H = dh_final.size(1);
  const int64_t N = gates.size(0);
  const bool peep = peephole.has_value() && peephole->defined();
  TORCH_CHECK(!peep || peephole->numel() == 3 * H, "lstm_backward: weight_peephole must be (3H,)");
  const int zone = zone_mode(masks, zoneout, N, H);
  const at::Tensor pp = peep ? peephole->contiguous() : at::Tensor();
  StepProduct product = backward_product(weight_hh, B);      // da W, as lstm_backward
  const at::Tensor dout_c = dout.contiguous();
  at::Tensor da = buffer(N, 4 * H, gates.options());
  at::Tensor dh = dh_final.contiguous().clone(), dc = dc_final.contiguous().clone();  // (B, H)
  // dL/dp: one row of sums per intra-op thread, added up after the loop
  const int64_t threads = peep ? at::get_num_threads() : 1;
  at::Tensor acc = at::zeros({threads, peep ? 3 * H : 1}, gates.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward", [&] {
    const scalar_t* PP = peep ? pp.data_ptr<scalar_t>() : nullptr;
    const scalar_t* M = zone == ZONE_MASK ? masks->data_ptr<scalar_t>() : nullptr;
    const double p = zone == ZONE_MEAN ? *zoneout : 0.0;
    const scalar_t zp = static_cast<scalar_t>(p), zq = static_cast<scalar_t>(1.0 - p);
    double* ACC = acc.data_ptr<double>();
    with_variant(peep, zone, [&](auto P, auto Z) {
      constexpr bool PEEP = decltype(P)::value;
      constexpr int ZONE = decltype(Z)::value;
      for_steps(batch_sizes, !reverse, [&](int64_t n, int64_t off) {
        const Rows<const scalar_t> G(gates, off), TC(tanh_c, off), CP(c_prev, off);
        const Rows<const scalar_t> DO(dout_c, off);
        const scalar_t* MH = M ? M + off * H : nullptr;         // the masks of h and of c
        const scalar_t* MC = M ? M + (N + off) * H : nullptr;
        const Rows<scalar_t> DA(da, off), DH(dh), DC(dc);
        for_rows(n, H, [&](int64_t r) {
          double* mine = PEEP ? ACC + at::get_thread_num() * 3 * H : nullptr;
          lstm_backward_row<scalar_t, PEEP, ZONE>(
              G[r], TC[r], CP[r], DO[r], PP, MH ? MH + r * H : nullptr,
              MC ? MC + r * H : nullptr, zp, zq, DA[r], DH[r], DC[r], mine, H);
        });
        // dh_{t-1} = da W, added to the part zoneout carries straight through
        product_into(product, da.narrow(0, off, n), dh.narrow(0, 0, n), ZONE != ZONE_NONE);
      });
    });
  });
  const at::Tensor da_t = transposed(da);                     // (4H, N)
  at::Tensor dweight_hh = affine(da_t, h_prev.t());           // da.T h_prev (4H, H), one product
  at::Tensor dweight_ih = x.has_value() ? affine(da_t, x->t()) : at::Tensor();  // da.T x
  at::Tensor dpeephole = peep ? acc.sum(0).to(gates.scalar_type()) : at::Tensor();
  return {da, dh, dc, dweight_hh, dweight_ih, dpeephole};
}

}  // namespace

void register_lstm(pybind11::module_& m) {
  m.def("lstm_forward", &lstm_forward,
        "LSTM (peepholes, zoneout where given) forward over a packed sequence",
        py::arg("xw"), py::arg("batch_sizes"), py::arg("h0"), py::arg("c0"),
        py::arg("weight_hh"), py::arg("peephole") = py::none(), py::arg("masks") = py::none(),
        py::arg("zoneout") = py::none(), py::arg("reverse") = false, py::arg("keep") = true);
  m.def("lstm_backward", &lstm_backward,
        "LSTM (peepholes, zoneout where given) hand BPTT over a packed sequence",
        py::arg("dout"), py::arg("dh_final"), py::arg("dc_final"), py::arg("gates"),
        py::arg("tanh_c"), py::arg("h_prev"), py::arg("c_prev"), py::arg("batch_sizes"),
        py::arg("weight_hh"), py::arg("peephole") = py::none(), py::arg("masks") = py::none(),
        py::arg("zoneout") = py::none(), py::arg("reverse") = false,
        py::arg("x") = py::none());
}

}  // namespace rnnkit_compiled
