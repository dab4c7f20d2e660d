// The cells without a recurrent matrix: IndRNN (a diagonal recurrent weight,
// rnnkit/cells/indrnn.py), minGRU and minLSTM (none; rnnkit/cells/min_gru.py, min_lstm.py).
//
// No matrix product in the loop: every unit (row r, column j) is its own recurrence over
// time, so the loop is memory-bound and organised accordingly:
//   - the threads split the columns once for the whole sequence (one parallel region per
//     call, not one per step: for_columns), each walking every step on its own columns;
//   - no state buffer in the forward: h_{t-1} is read from the previous step's output row
//     (still in cache) or from h0 where a row starts, and each row's final state is copied
//     out at its own last step;
//   - caches: a copy of the outputs, hs (N, H), written by the forward's pass (the caller may
//     change the returned outputs in place), h0 (B, H), and for minGRU / minLSTM the input
//     projection xw itself (the tensor the caller already holds: nothing written); the
//     backward recomputes the gates from xw (a few exps, cheaper than writing and reading them)
//     and reads h_{t-1} as the forward did, from hs at the neighbouring step or h0;
//   - the backward's pass is one straight-line pass per row; IndRNN's dweight_hh (H,)
//     accumulates in that pass (each thread owns its columns), dweight_ih is one product
//     after the loop (dxw.T x, as lstm.cpp).
// With keep=false (inference) the forward writes the outputs and final states only.

#include "common.h"

namespace rnnkit_compiled {

namespace {

// Cells' codes (diagonal.py's): 0 IndRNN, 1 minGRU, 2 minLSTM; G their xw blocks.
constexpr int kIndRNN = 0, kMinGRU = 1, kMinLSTM = 2;

inline int64_t gates_of(int64_t cell) { return cell == kIndRNN ? 1 : (cell == kMinGRU ? 2 : 3); }

// f(std::integral_constant<int, C>) for the cell of code `cell`: one instance per cell.
template <typename F> void with_cell(int64_t cell, F f) {
  if (cell == kIndRNN) f(std::integral_constant<int, kIndRNN>{});
  else if (cell == kMinGRU) f(std::integral_constant<int, kMinGRU>{});
  else f(std::integral_constant<int, kMinLSTM>{});
}

// Columns [j0, j1) of one loop per thread, for the whole walk over time: blocks of 16
// columns, as many threads as the work (N rows x columns) is worth.
template <typename F> void for_columns(int64_t N, int64_t H, F body) {
  constexpr int64_t cb = 16;
  const int64_t blocks = (H + cb - 1) / cb;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(N * cb, 1));
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    body(b0 * cb, std::min(H, b1 * cb));
  });
}

// minLSTM's gates from a_f, a_i without overflow: with p = −a_f, q = −a_i, m = max(0, p, q),
//   Q_f = e^{−m} + e^{p−m} = e^{−m} / f,   Q_i = e^{−m} + e^{q−m} = e^{−m} / i
// (no term above 1, the largest exactly 1), so that
//   i' = i / (f + i) = Q_f / (Q_f + Q_i),   f' = Q_i / (Q_f + Q_i),
//   1 − f = e^{p−m} / Q_f,                  1 − i = e^{q−m} / Q_i:
// finite where f and i both underflow, the values of the cell's log-space form
// σ(±(softplus(−a_f) − softplus(−a_i))). (Where both terms of Q_f fall below exp_approx's
// floor, e^{−87.3} in float, Q_i = 1 + …, so i' < 3e-38; 1 − f, then wrong, enters only
// multiplied by i' (dd ∝ f' i'): an error below 1e-37. Likewise Q_i, f' and 1 − i.)
template <typename scalar_t>
inline void min_lstm_terms(scalar_t a_f, scalar_t a_i, scalar_t& e_f, scalar_t& e_i,
                           scalar_t& q_f, scalar_t& q_i) {
  const scalar_t p = -a_f, q = -a_i;
  const scalar_t m0 = p > q ? p : q;
  const scalar_t m = m0 > 0 ? m0 : scalar_t(0);
  const scalar_t e0 = exp_approx(-m);
  e_f = exp_approx(p - m);
  e_i = exp_approx(q - m);
  q_f = e0 + e_f;
  q_i = e0 + e_i;
}

// One row's columns [0, L) of the forward (pointers at the tile's first column; S: the
// stride of xw's gate blocks, H). KEEP: write the outputs' copy hs.
template <int C, bool KEEP, typename scalar_t>
inline void forward_row(const scalar_t* __restrict__ x, const scalar_t* __restrict__ hp,
                        const scalar_t* __restrict__ u, scalar_t* __restrict__ o_,
                        scalar_t* __restrict__ hs, int64_t L, int64_t S) {
#pragma omp simd
  for (int64_t j = 0; j < L; ++j) {
    scalar_t h;
    if constexpr (C == kIndRNN) {
      const scalar_t a = x[j] + u[j] * hp[j];           // a = xw + u ⊙ h_{t-1}
      h = a > 0 ? a : scalar_t(0);                      // h = relu(a)
    } else if constexpr (C == kMinGRU) {
      const scalar_t z = sigmoid(x[j]), p = hp[j];
      h = p + z * (x[S + j] - p);                       // (1 − z) h_{t-1} + z h̃
    } else {
      scalar_t e_f, e_i, q_f, q_i;
      min_lstm_terms(x[j], x[S + j], e_f, e_i, q_f, q_i);
      const scalar_t inv = scalar_t(1) / (q_f + q_i);
      h = (q_i * inv) * hp[j] + (q_f * inv) * x[2 * S + j];  // f' h_{t-1} + i' h̃
    }
    o_[j] = h;
    if constexpr (KEEP) hs[j] = h;
  }
}

// One row's columns of the backward: dh (the carried gradient, in place: d h_{t-1} on exit),
// dx the row of dxw; h the step's output (IndRNN), du IndRNN's dweight_hh accumulator (in
// double: a sum over every packed row, N terms, that long sequences make long).
template <int C, typename scalar_t>
inline void backward_row(const scalar_t* __restrict__ x, const scalar_t* __restrict__ h,
                         const scalar_t* __restrict__ hp, const scalar_t* __restrict__ u,
                         const scalar_t* __restrict__ do_, scalar_t* __restrict__ dh,
                         scalar_t* __restrict__ dx, double* __restrict__ du, int64_t L,
                         int64_t S) {
#pragma omp simd
  for (int64_t j = 0; j < L; ++j) {
    const scalar_t d = dh[j] + do_[j];                  // output and next step use h_t
    if constexpr (C == kIndRNN) {
      const scalar_t da = h[j] > 0 ? d : scalar_t(0);   // da = dh relu'(a)
      dx[j] = da;
      du[j] += double(da * hp[j]);                      // dL/du = Σ da ⊙ h_{t-1}
      dh[j] = da * u[j];                                // dh_{t-1} = da ⊙ u
    } else if constexpr (C == kMinGRU) {
      const scalar_t z = sigmoid(x[j]);
      dx[j] = d * ((x[S + j] - hp[j]) * z * (1 - z));   // dxw_z = dh (h̃ − h_{t-1}) σ'
      dx[S + j] = d * z;                                // dxw_h = dh z
      dh[j] = d * (1 - z);                              // dh_{t-1} = dh (1 − z)
    } else {
      scalar_t e_f, e_i, q_f, q_i;
      min_lstm_terms(x[j], x[S + j], e_f, e_i, q_f, q_i);
      const scalar_t inv = scalar_t(1) / (q_f + q_i);
      const scalar_t f_n = q_i * inv, i_n = q_f * inv;
      const scalar_t dd = d * (x[2 * S + j] - hp[j]) * f_n * i_n;  // dh (h̃ − h_{t-1}) f' i'
      dx[j] = -dd * (e_f / q_f);                        // dxw_f = −dd (1 − f)
      dx[S + j] = dd * (e_i / q_i);                     // dxw_i = dd (1 − i)
      dx[2 * S + j] = d * i_n;                          // dxw_h = dh i'
      dh[j] = d * f_n;                                  // dh_{t-1} = dh f'
    }
  }
}

// The step before step t in the forward's walk (-1 at the first): the source of h_{t-1}
// for its first min(n_t, n_prev) rows (the others start from h0).
inline int64_t walk_prev(int64_t t, int64_t T, bool reverse) {
  return reverse ? (t + 1 < T ? t + 1 : -1) : t - 1;
}

template <int C, bool KEEP, typename scalar_t>
void forward_loop(const at::Tensor& xw, const std::vector<int64_t>& batch_sizes,
                  const std::vector<int64_t>& offsets, const at::Tensor& h0, const at::Tensor& u,
                  at::Tensor& out, at::Tensor& hs, at::Tensor& final, bool reverse) {
  const int64_t T = batch_sizes.size(), H = h0.size(1), N = xw.size(0), G = xw.size(1) / H;
  const scalar_t* X = xw.data_ptr<scalar_t>();
  const scalar_t* H0 = h0.data_ptr<scalar_t>();
  const scalar_t* U = C == kIndRNN ? u.data_ptr<scalar_t>() : nullptr;
  scalar_t* O = out.data_ptr<scalar_t>();
  scalar_t* HS = KEEP ? hs.data_ptr<scalar_t>() : nullptr;
  scalar_t* F = final.data_ptr<scalar_t>();
  for_columns(N, H, [&](int64_t j0, int64_t j1) {
    const int64_t L = j1 - j0;
    for (int64_t k = 0; k < T; ++k) {
      const int64_t t = step_at(k, T, reverse), n = batch_sizes[t], off = offsets[t];
      const int64_t tp = walk_prev(t, T, reverse);
      const int64_t np = tp < 0 ? 0 : std::min(n, batch_sizes[tp]);
      const int64_t nn = k + 1 < T ? batch_sizes[step_at(k + 1, T, reverse)] : 0;  // rows going on
      for (int64_t r = 0; r < n; ++r) {
        const scalar_t* hp = (r < np ? O + (offsets[tp] + r) * H : H0 + r * H) + j0;
        scalar_t* o_ = O + (off + r) * H + j0;
        forward_row<C, KEEP>(X + (off + r) * G * H + j0, hp, U ? U + j0 : nullptr, o_,
                             KEEP ? HS + (off + r) * H + j0 : nullptr, L, H);
        if (r >= nn) std::memcpy(F + r * H + j0, o_, L * sizeof(scalar_t));  // its last step
      }
    }
  });
}

template <int C, typename scalar_t>
void backward_loop(const at::Tensor& xw, const at::Tensor& hs, const at::Tensor& h0,
                   const at::Tensor& u, const at::Tensor& dout,
                   const std::vector<int64_t>& batch_sizes, const std::vector<int64_t>& offsets,
                   at::Tensor& dh, at::Tensor& dxw, at::Tensor& du, bool reverse) {
  const int64_t T = batch_sizes.size(), H = h0.size(1), N = hs.size(0), G = dxw.size(1) / H;
  const scalar_t* X = C == kIndRNN ? nullptr : xw.data_ptr<scalar_t>();
  const scalar_t* HS = hs.data_ptr<scalar_t>();
  const scalar_t* H0 = h0.data_ptr<scalar_t>();
  const scalar_t* U = C == kIndRNN ? u.data_ptr<scalar_t>() : nullptr;
  const scalar_t* DO = dout.data_ptr<scalar_t>();
  scalar_t* DH = dh.data_ptr<scalar_t>();
  scalar_t* DX = dxw.data_ptr<scalar_t>();
  double* DU = C == kIndRNN ? du.data_ptr<double>() : nullptr;
  for_columns(N, H, [&](int64_t j0, int64_t j1) {
    const int64_t L = j1 - j0;
    for (int64_t k = 0; k < T; ++k) {
      const int64_t t = step_at(k, T, !reverse), n = batch_sizes[t], off = offsets[t];
      const int64_t tp = walk_prev(t, T, reverse);
      const int64_t np = tp < 0 ? 0 : std::min(n, batch_sizes[tp]);
      for (int64_t r = 0; r < n; ++r) {
        const int64_t row = off + r;
        const scalar_t* hp = (r < np ? HS + (offsets[tp] + r) * H : H0 + r * H) + j0;
        backward_row<C>(X ? X + row * G * H + j0 : nullptr, HS + row * H + j0, hp,
                        U ? U + j0 : nullptr, DO + row * H + j0, DH + r * H + j0,
                        DX + row * G * H + j0, DU ? DU + j0 : nullptr, L, H);
      }
    }
  });
}

// Returns (out (N, H), h_final (B, H), hs (N, H), h0 (B, H)); with keep=false hs and h0 are
// empty. weight_hh: IndRNN's u (H,), else None.
std::vector<at::Tensor> diagonal_forward(const at::Tensor& xw,
                                         const std::vector<int64_t>& batch_sizes,
                                         const at::Tensor& h0_,
                                         const std::optional<at::Tensor>& weight_hh,
                                         int64_t cell, bool reverse, bool keep) {
  TORCH_CHECK(cell >= 0 && cell <= 2, "cell: 0 (IndRNN), 1 (minGRU) or 2 (minLSTM)");
  const at::Tensor h0 = h0_.contiguous();
  const int64_t B = h0.size(0), H = h0.size(1), G = gates_of(cell);
  check_packed(xw, batch_sizes, B);
  TORCH_CHECK(xw.size(1) == G * H, "diagonal_forward: xw has ", xw.size(1), " columns, expected ",
              G * H);
  at::Tensor u;
  if (cell == kIndRNN) {
    TORCH_CHECK(weight_hh.has_value() && weight_hh->dim() == 1 && weight_hh->size(0) == H,
                "diagonal_forward: IndRNN's weight_hh must be (H,)");
    u = weight_hh->contiguous();
  }
  const int64_t N = xw.size(0);
  const auto offsets = offsets_of(batch_sizes);
  at::Tensor out = buffer(N, H, xw.options());
  at::Tensor hs = keep ? buffer(N, H, xw.options()) : at::Tensor();
  at::Tensor final = at::empty({B, H}, xw.options());
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "diagonal_forward", [&] {
    with_cell(cell, [&](auto c) {
      constexpr int C = decltype(c)::value;
      if (keep)
        forward_loop<C, true, scalar_t>(xw, batch_sizes, offsets, h0, u, out, hs, final, reverse);
      else
        forward_loop<C, false, scalar_t>(xw, batch_sizes, offsets, h0, u, out, hs, final, reverse);
    });
  });
  if (!keep) return {out, final, at::Tensor(), at::Tensor()};
  return {out, final, hs, h0.clone()};               // h0: its own copy (no alias of the input)
}

// Returns (dxw (N, G*H) — also dhw —, dh0 (B, H), dweight_hh (IndRNN's (H,), else None),
// dweight_ih = dxw.T x when the layer input x (N, I) is given, else None).
// xw: the forward's input projection (minGRU, minLSTM; None for IndRNN).
std::vector<std::optional<at::Tensor>> diagonal_backward(
    const at::Tensor& dout, const at::Tensor& dh_final, const at::Tensor& hs,
    const at::Tensor& h0, const std::optional<at::Tensor>& xw,
    const std::vector<int64_t>& batch_sizes, const std::optional<at::Tensor>& weight_hh,
    int64_t cell, bool reverse, const std::optional<at::Tensor>& x) {
  TORCH_CHECK(cell >= 0 && cell <= 2, "cell: 0 (IndRNN), 1 (minGRU) or 2 (minLSTM)");
  const int64_t B = dh_final.size(0), H = dh_final.size(1), G = gates_of(cell);
  const int64_t N = hs.size(0);
  check_packed(hs, batch_sizes, B);
  TORCH_CHECK(h0.is_contiguous() && h0.size(0) == B && h0.size(1) == H, "h0: (B, H) expected");
  at::Tensor u, xwc, du;
  if (cell == kIndRNN) {
    TORCH_CHECK(weight_hh.has_value() && weight_hh->dim() == 1 && weight_hh->size(0) == H,
                "diagonal_backward: IndRNN's weight_hh must be (H,)");
    u = weight_hh->contiguous();
    du = at::zeros({H}, hs.options().dtype(at::kDouble));
  } else {
    TORCH_CHECK(xw.has_value() && xw->size(0) == N && xw->size(1) == G * H,
                "diagonal_backward: the forward's xw (N, G*H) expected");
    xwc = xw->contiguous();
  }
  const auto offsets = offsets_of(batch_sizes);
  const at::Tensor dout_c = dout.contiguous();
  at::Tensor dxw = buffer(N, G * H, hs.options());
  at::Tensor dh = dh_final.contiguous().clone();               // (B, H)
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "diagonal_backward", [&] {
    with_cell(cell, [&](auto c) {
      backward_loop<decltype(c)::value, scalar_t>(xwc, hs, h0, u, dout_c, batch_sizes, offsets,
                                                  dh, dxw, du, reverse);
    });
  });
  std::optional<at::Tensor> dweight_hh, dweight_ih;
  if (cell == kIndRNN) dweight_hh = du.to(hs.scalar_type());
  if (x.has_value()) dweight_ih = affine(transposed(dxw), x->t());  // dxw.T x (G*H, I)
  return {dxw, dh, dweight_hh, dweight_ih};
}

}  // namespace

void register_diagonal(pybind11::module_& m) {
  m.def("diagonal_forward", &diagonal_forward,
        "IndRNN (cell 0) / minGRU (1) / minLSTM (2) forward over a packed sequence",
        py::arg("xw"), py::arg("batch_sizes"), py::arg("h0"), py::arg("weight_hh"),
        py::arg("cell"), py::arg("reverse"), py::arg("keep") = true);
  m.def("diagonal_backward", &diagonal_backward,
        "IndRNN / minGRU / minLSTM hand BPTT over a packed sequence",
        py::arg("dout"), py::arg("dh_final"), py::arg("hs"), py::arg("h0"), py::arg("xw"),
        py::arg("batch_sizes"), py::arg("weight_hh"), py::arg("cell"), py::arg("reverse"),
        py::arg("x") = py::none());
}

}  // namespace rnnkit_compiled
