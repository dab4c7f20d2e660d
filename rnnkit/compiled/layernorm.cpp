// The layer-normalised LSTM and GRU: the same math as rnnkit/cells/layernorm_lstm.py and
// layernorm_gru.py, with the normalisation of rnnkit/cells/layernorm.py (each gate block of
// H features on its own, the biased variance, ε = 1e-5 inside the square root).
//
// N(xw), the normalised input projection, does not depend on the recurrence: the forward
// normalises every row of xw before the loop (one pass over the stacked time axis), and the
// backward turns dL/dN(xw) into dxw after the loop, in the same pass that sums the gains'
// and shifts' gradients. Inside the loop a step is one product h W.T + b_hh and one pass per
// row (the block statistics of hw, the gates, the state update; the LSTM's N(c_t) too).
//
// Caches (packed, (N, .); with keep=false none: one step's scratch):
//   LSTM: x_hat (N, 4H) N(xw), h_hat (N, 4H) N(hw), gates (N, 4H) [i, f, g, o],
//         cell (N, 3H) [c_{t-1}, N(c_t), tanh u], rstd (N, 9) [xw's 4, hw's 4, c_t's 1],
//         h_prev (N, H)
//   GRU:  x_hat (N, 3H), h_hat (N, 3H), gates (N, 3H) [r, z, n], rstd (N, 6) [xw's 3, hw's 3],
//         h_prev (N, H)
//
// Helpers others could share (local to this file): normalize_block / normalize_rows (one
// row's layer norm per block, vectorised), normalize_block_backward, column_sums (sums over
// the stacked time axis: blocks of rows in the dtype, the blocks' sums in double), buffers
// (several caches in one huge-page-advised allocation), gram (a weight gradient a.T b with
// the narrower operand transposed).

#include "common.h"

#include <cmath>

namespace rnnkit_compiled {

namespace {

constexpr double kLayerNormEps = 1e-5;      // as rnnkit.cells.layernorm.EPS

// μ and r = 1/sqrt(σ² + ε) of one block of H features (σ² biased; two passes, as
// accurate as torch's statistics): r returned, μ in *mean.
template <typename T>
inline T block_stats(const T* __restrict__ a, int64_t H, T* mean_out) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < H; ++j) s += a[j];
  const T mean = s / T(H);
  T v = 0;
#pragma omp simd reduction(+ : v)
  for (int64_t j = 0; j < H; ++j) {
    const T d = a[j] - mean;
    v += d * d;
  }
  *mean_out = mean;
  return T(1) / std::sqrt(v / T(H) + T(kLayerNormEps));
}

// â = (a − μ) r over one block of H features, r returned.
template <typename T>
inline T normalize_block(const T* __restrict__ a, T* __restrict__ out, int64_t H) {
  T mean;
  const T r = block_stats(a, H, &mean);
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) out[j] = (a[j] - mean) * r;
  return r;
}

// dL/da = r (d − mean(d) − â mean(d â)) over one block, d = dL/dâ = dy ⊙ γ; written to out
// (which may be dy itself: every read of a j comes before its write).
template <typename T>
inline void normalize_block_backward(const T* dy, const T* __restrict__ gain,
                                     const T* __restrict__ a_hat, T r, T* out, int64_t H) {
  T s = 0, p = 0;
#pragma omp simd reduction(+ : s, p)
  for (int64_t j = 0; j < H; ++j) {
    const T d = dy[j] * gain[j];
    s += d;
    p += d * a_hat[j];
  }
  const T m = s / T(H), mx = p / T(H);
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) out[j] = r * (dy[j] * gain[j] - m - a_hat[j] * mx);
}

// Rows [0, rows) of src (rows, K*H) normalised per block into dst, r of block k at
// rstd[row * ld + k].
template <typename T>
void normalize_rows(const T* src, T* dst, T* rstd, int64_t ld, int64_t rows, int64_t K,
                    int64_t H) {
  for_rows(rows, K * H, [&](int64_t r) {
    for (int64_t k = 0; k < K; ++k)
      rstd[r * ld + k] = normalize_block(src + (r * K + k) * H, dst + (r * K + k) * H, H);
  });
}

// Sums over rows [0, N): body(row, acc) adds one row's terms to acc (K of T). Rows in as
// many contiguous chunks as threads; within a chunk, blocks of kSumBlock rows summed in T
// (full-width vectors) and each block's sums added into the chunk's double partials (the
// error of a float32 sum over a whole sequence stays that of kSumBlock terms).
constexpr int64_t kSumBlock = 32;

template <typename T, typename F>
at::Tensor column_sums(int64_t N, int64_t K, F body) {
  const int64_t P = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), N));
  std::vector<double> part(P * K, 0.0);
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> block(K);
    for (int64_t c = begin; c < end; ++c) {
      double* acc = part.data() + c * K;
      const int64_t r1 = N * (c + 1) / P;
      for (int64_t r0 = N * c / P; r0 < r1; r0 += kSumBlock) {
        std::fill(block.begin(), block.end(), T(0));
        for (int64_t r = r0; r < std::min(r1, r0 + kSumBlock); ++r) body(r, block.data());
        for (int64_t j = 0; j < K; ++j) acc[j] += double(block[j]);
      }
    }
  });
  at::Tensor sums = at::empty({K}, at::kDouble);
  double* S = sums.data_ptr<double>();
  for (int64_t j = 0; j < K; ++j) S[j] = part[j];
  for (int64_t c = 1; c < P; ++c)
    for (int64_t j = 0; j < K; ++j) S[j] += part[c * K + j];
  return sums;
}

// acc[j] += a[j] b[j], sum[j] += a[j] over n features.
template <typename T>
inline void add_products(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ acc,
                         T* __restrict__ sum, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    acc[j] += a[j] * b[j];
    sum[j] += a[j];
  }
}

// The pieces of a sums vector, in the parameters' dtype: separate tensors.
std::vector<at::Tensor> split_sums(const at::Tensor& sums, const std::vector<int64_t>& sizes,
                                   at::ScalarType dtype) {
  const at::Tensor s = sums.to(dtype);
  std::vector<at::Tensor> pieces;
  int64_t start = 0;
  for (int64_t n : sizes) {
    pieces.push_back(s.narrow(0, start, n).clone());
    start += n;
  }
  return pieces;
}

// Several (rows, cols) buffers carved from one allocation, each view on a 64-byte boundary:
// the fresh memory of a call is one block, not one per cache. A block of up to 32 MiB is a
// plain at::empty: glibc's malloc hands such a block back from its heap call after call
// (its mmap threshold grows to the largest block freed, up to 32 MiB), so after the first
// calls it costs no page faults, and measured here that is as fast as or faster than huge
// pages (35x20x200: 1.65 against 1.9 ms per forward; with 2 threads the huge-page block was
// 3-8x slower for its first ~20 calls). A larger block is always mapped afresh: there
// buffer()'s huge pages win (100x32x256: 14 against 31 ms).
std::vector<at::Tensor> buffers(const std::vector<std::pair<int64_t, int64_t>>& shapes,
                                const at::TensorOptions& options) {
  auto padded = [](int64_t n) { return (n + 15) / 16 * 16; };
  int64_t total = 0;
  for (const auto& s : shapes) total += padded(s.first * s.second);
  total = std::max<int64_t>(total, 1);
  const bool large = total * int64_t(options.dtype().itemsize()) > (int64_t(32) << 20);
  const at::Tensor flat = large ? buffer(1, total, options).view({-1})
                                : at::empty({total}, options);
  std::vector<at::Tensor> views;
  int64_t start = 0;
  for (const auto& s : shapes) {
    views.push_back(flat.narrow(0, start, s.first * s.second).view({s.first, s.second}));
    start += padded(s.first * s.second);
  }
  return views;
}

// a.T b (a (N, M), b (N, K): M x K) as one product over the stacked time axis, with
// whichever transposed copies move fewer elements: lstm.cpp's affine(a.T, b.t()) (a
// transposed, N M elements) or (b.T a).T (b transposed and the (K, M) result: N K + K M;
// oneDNN reads a.t() as the weight without a copy). For a weight gradient (a = dhw
// (N, G*H), b = h_prev (N, H) or x (N, I)) the second is taken once N > 4H/3 or so:
// measured here 10-25% faster at 35x20x200 and 100x32x256, a little faster at 35x64x1024;
// the first stays faster at 35x20x650 (N = 700, H = 650), where it is taken. Others could
// share it (lstm.cpp, gru.cpp: the same two products).
at::Tensor gram(const at::Tensor& a, const at::Tensor& b) {
  const int64_t N = a.size(0), M = a.size(1), K = b.size(1);
  if (N * K + K * M < N * M) return transposed(affine(transposed(b), a.t()));
  return affine(transposed(a), b.t());
}

void check_gain(const at::Tensor& p, int64_t n, const char* name) {
  TORCH_CHECK(p.dim() == 1 && p.size(0) == n, name, ": expected (", n, ",), got ", p.sizes());
}

// ---------------------------------------------------------------------------------------
// LSTM

// One row of the LSTM's step: N(hw) per block, a = γ_x N(xw) + γ_h N(hw) + β_x + β_h, the
// gates, c_t, N(c_t), h_t = o tanh(γ_c N(c_t) + β_c).
template <typename T>
inline void ln_lstm_forward_row(const T* __restrict__ xh, const T* __restrict__ hw,
                                const T* __restrict__ gx, const T* __restrict__ bs,
                                const T* __restrict__ gh, const T* __restrict__ gc,
                                const T* __restrict__ bc, T* __restrict__ hh,
                                T* __restrict__ ga, T* __restrict__ ce, T* __restrict__ st,
                                T* __restrict__ hp, T* __restrict__ hs, T* __restrict__ cs,
                                T* __restrict__ o_, int64_t H) {
  T mu[4], rs[4];
  for (int64_t k = 0; k < 4; ++k) st[4 + k] = rs[k] = block_stats(hw + k * H, H, &mu[k]);
  const T m0 = mu[0], m1 = mu[1], m2 = mu[2], m3 = mu[3];
  const T r0 = rs[0], r1 = rs[1], r2 = rs[2], r3 = rs[3];
  T* __restrict__ cp = ce;
  T* __restrict__ ch = ce + H;
  T* __restrict__ tu = ce + 2 * H;
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < H; ++j) {
    const T h0 = (hw[j] - m0) * r0, h1 = (hw[H + j] - m1) * r1;        // N(hw)
    const T h2 = (hw[2 * H + j] - m2) * r2, h3 = (hw[3 * H + j] - m3) * r3;
    hh[j] = h0; hh[H + j] = h1; hh[2 * H + j] = h2; hh[3 * H + j] = h3;
    const T a0 = bs[j] + gx[j] * xh[j] + gh[j] * h0;
    const T a1 = bs[H + j] + gx[H + j] * xh[H + j] + gh[H + j] * h1;
    const T a2 = bs[2 * H + j] + gx[2 * H + j] * xh[2 * H + j] + gh[2 * H + j] * h2;
    const T a3 = bs[3 * H + j] + gx[3 * H + j] * xh[3 * H + j] + gh[3 * H + j] * h3;
    const T i = sigmoid(a0), f = sigmoid(a1), g = tanh_(a2), o = sigmoid(a3);
    const T cprev = cs[j];
    const T c = f * cprev + i * g;                     // c_t = f c_{t-1} + i g
    ga[j] = i; ga[H + j] = f; ga[2 * H + j] = g; ga[3 * H + j] = o;
    cp[j] = cprev; hp[j] = hs[j]; cs[j] = c;
    s += c;
  }
  const T mean = s / T(H);
  T v = 0;
#pragma omp simd reduction(+ : v)
  for (int64_t j = 0; j < H; ++j) {
    const T d = cs[j] - mean;
    v += d * d;
  }
  const T r = T(1) / std::sqrt(v / T(H) + T(kLayerNormEps));
  st[8] = r;
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T chat = (cs[j] - mean) * r;                 // N(c_t)
    const T t = tanh_(gc[j] * chat + bc[j]);           // tanh u
    const T hn = ga[3 * H + j] * t;                    // h_t = o tanh u
    ch[j] = chat; tu[j] = t;
    o_[j] = hn; hs[j] = hn;
  }
}

// One row of the LSTM's backward step: du, dc (through N(c_t)), da (kept: dxw and the gains
// come from it after the loop), dhw = N'ᵀ(da ⊙ γ_h), dc_{t-1}. dhr holds dL/dh_t from the
// next step on entry (the product overwrites it after the pass).
template <typename T>
inline void ln_lstm_backward_row(const T* __restrict__ ga, const T* __restrict__ hh,
                                 const T* __restrict__ ce, const T* __restrict__ st,
                                 const T* __restrict__ do_, const T* __restrict__ gh,
                                 const T* __restrict__ gc, T* __restrict__ da,
                                 T* __restrict__ du, T* __restrict__ dhw,
                                 T* __restrict__ dhr, T* __restrict__ dcr, int64_t H) {
  const T* __restrict__ cp = ce;
  const T* __restrict__ ch = ce + H;
  const T* __restrict__ tu = ce + 2 * H;
  T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t j = 0; j < H; ++j) {
    const T dh_ = dhr[j] + do_[j];                     // output and next step use h_t
    const T t = tu[j];
    const T u = dh_ * ga[3 * H + j] * (1 - t * t);     // dL/du = dh o (1 − tanh²u)
    const T d = u * gc[j];                             // dL/dN(c) = du γ_c
    du[j] = u; dhr[j] = dh_;
    s1 += d; s2 += d * ch[j];
  }
  const T m1 = s1 / T(H), m2 = s2 / T(H), rc = st[8];
  T q0 = 0, q1 = 0, q2 = 0, q3 = 0, p0 = 0, p1 = 0, p2 = 0, p3 = 0;
#pragma omp simd reduction(+ : q0, q1, q2, q3, p0, p1, p2, p3)
  for (int64_t j = 0; j < H; ++j) {
    const T i = ga[j], f = ga[H + j], g = ga[2 * H + j], o = ga[3 * H + j];
    const T dh_ = dhr[j];
    const T dc = rc * (du[j] * gc[j] - m1 - ch[j] * m2) + dcr[j];   // N'ᵀ dN(c) + dc_next
    const T a0 = dc * g * i * (1 - i);                 // da_i = dc g σ'
    const T a1 = dc * cp[j] * f * (1 - f);             // da_f = dc c_{t-1} σ'
    const T a2 = dc * i * (1 - g * g);                 // da_g = dc i (1 − g²)
    const T a3 = dh_ * tu[j] * o * (1 - o);            // da_o = dh tanh u σ'
    da[j] = a0; da[H + j] = a1; da[2 * H + j] = a2; da[3 * H + j] = a3;
    dcr[j] = dc * f;                                   // dc_{t-1} = dc f
    const T e0 = a0 * gh[j], e1 = a1 * gh[H + j], e2 = a2 * gh[2 * H + j];
    const T e3 = a3 * gh[3 * H + j];
    q0 += e0; q1 += e1; q2 += e2; q3 += e3;
    p0 += e0 * hh[j]; p1 += e1 * hh[H + j]; p2 += e2 * hh[2 * H + j];
    p3 += e3 * hh[3 * H + j];
  }
  const T q[4] = {q0, q1, q2, q3}, p[4] = {p0, p1, p2, p3};
  for (int64_t k = 0; k < 4; ++k) {
    const T m = q[k] / T(H), mx = p[k] / T(H), r = st[4 + k];
    const T* __restrict__ a = da + k * H;
    const T* __restrict__ g_ = gh + k * H;
    const T* __restrict__ x = hh + k * H;
    T* __restrict__ out = dhw + k * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) out[j] = r * (a[j] * g_[j] - m - x[j] * mx);
  }
}

// One row of the LSTM's pass after the loop: its terms of Σ da N(xw), Σ da, Σ da N(hw),
// Σ du N(c), Σ du into acc ([4H | 4H | 4H | H | H]), then dxw = N'ᵀ(da ⊙ γ_x) over da.
template <typename T>
inline void ln_lstm_param_row(T* a, const T* __restrict__ xh, const T* __restrict__ hh,
                              const T* __restrict__ du, const T* __restrict__ ch,
                              const T* __restrict__ st, const T* __restrict__ gx,
                              T* __restrict__ acc, int64_t H) {
  const int64_t G = 4 * H;
  add_products(a, xh, acc, acc + G, G);
  T* __restrict__ agh = acc + 2 * G;
#pragma omp simd
  for (int64_t j = 0; j < G; ++j) agh[j] += a[j] * hh[j];
  add_products(du, ch, acc + 3 * G, acc + 3 * G + H, H);
  for (int64_t b = 0; b < 4; ++b)
    normalize_block_backward(a + b * H, gx + b * H, xh + b * H, st[b], a + b * H, H);
}

std::vector<at::Tensor> layernorm_lstm_forward(
    const at::Tensor& xw, const std::vector<int64_t>& batch_sizes, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_hh,
    const at::Tensor& scale_ih, const at::Tensor& shift_ih, const at::Tensor& scale_hh,
    const at::Tensor& shift_hh, const at::Tensor& scale_c, const at::Tensor& shift_c,
    bool reverse, bool keep) {
  const int64_t B = h0.size(0), H = h0.size(1);
  check_forward("layernorm_lstm_forward", xw, batch_sizes, h0, weight_hh, 4);
  check_gain(scale_ih, 4 * H, "ln_scale_ih"); check_gain(shift_ih, 4 * H, "ln_shift_ih");
  check_gain(scale_hh, 4 * H, "ln_scale_hh"); check_gain(shift_hh, 4 * H, "ln_shift_hh");
  check_gain(scale_c, H, "ln_scale_c"); check_gain(shift_c, H, "ln_shift_c");
  const int64_t N = xw.size(0);
  const int64_t kept = keep ? N : B;          // caches for the backward, or one step's scratch
  StepProduct product(weight_hh, B, /*pack=*/true, bias_hh);   // h W.T (+ b_hh where given)
  const at::TensorOptions opt = xw.options();
  // the caches in one block; the output on its own (kept by a caller, it keeps no cache)
  const auto bufs = buffers({{kept, 4 * H}, {kept, 4 * H}, {kept, 4 * H}, {kept, 3 * H},
                             {kept, 9}, {kept, H}}, opt);
  at::Tensor x_hat = bufs[0], h_hat = bufs[1], gates = bufs[2], cell = bufs[3];
  at::Tensor rstd = bufs[4], h_prev = bufs[5];
  at::Tensor out = buffer(N, H, opt);
  at::Tensor h = h0.contiguous().clone(), c = c0.contiguous().clone();   // (B, H) the state
  const at::Tensor gx = scale_ih.contiguous(), gh = scale_hh.contiguous();
  const at::Tensor bs = (shift_ih + shift_hh).contiguous();            // β_x + β_h
  const at::Tensor gc = scale_c.contiguous(), bc = shift_c.contiguous();
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "layernorm_lstm_forward", [&] {
    const scalar_t* XW = xw.data_ptr<scalar_t>();
    if (keep)                                               // N(xw) of every step at once
      normalize_rows(XW, x_hat.data_ptr<scalar_t>(), rstd.data_ptr<scalar_t>(), 9, N, 4, H);
    const scalar_t* GX = gx.data_ptr<scalar_t>();
    const scalar_t* GH = gh.data_ptr<scalar_t>();
    const scalar_t* BS = bs.data_ptr<scalar_t>();
    const scalar_t* GC = gc.data_ptr<scalar_t>();
    const scalar_t* BC = bc.data_ptr<scalar_t>();
    for_steps(batch_sizes, reverse, [&](int64_t n, int64_t off) {
      const int64_t coff = keep ? off : 0;
      const at::Tensor hw = product(h.narrow(0, 0, n));       // h W.T + b_hh  (n, 4H)
      const Rows<scalar_t> XH(x_hat, coff), ST(rstd, coff);
      if (!keep) normalize_rows(XW + off * 4 * H, XH.base, ST.base, 9, n, 4, H);  // this step's N(xw)
      const Rows<const scalar_t> A(hw);
      const Rows<scalar_t> HH(h_hat, coff), GA(gates, coff), CE(cell, coff), HP(h_prev, coff);
      const Rows<scalar_t> HS(h), CS(c), O(out, off);
      for_rows(n, 4 * H, [&](int64_t r) {
        ln_lstm_forward_row(XH[r], A[r], GX, BS, GH, GC, BC, HH[r], GA[r], CE[r], ST[r], HP[r],
                            HS[r], CS[r], O[r], H);
      });
    });
  });
  return {out, h, c, x_hat, h_hat, gates, cell, rstd, h_prev};
}

// Returns (dxw, dhw (N, 4H), dh0, dc0, dweight_hh, dweight_ih or None, dγ_x, dβ (= dβ_x =
// dβ_h: one tensor, the caller copies it), dγ_h, dγ_c, dβ_c).
std::vector<at::Tensor> layernorm_lstm_backward(
    const at::Tensor& dout, const at::Tensor& dh_final, const at::Tensor& dc_final,
    const at::Tensor& x_hat, const at::Tensor& h_hat, const at::Tensor& gates,
    const at::Tensor& cell, const at::Tensor& rstd, const at::Tensor& h_prev,
    const std::vector<int64_t>& batch_sizes, const at::Tensor& weight_hh,
    const at::Tensor& scale_ih, const at::Tensor& shift_ih, const at::Tensor& scale_hh,
    const at::Tensor& shift_hh, const at::Tensor& scale_c, const at::Tensor& shift_c,
    bool reverse, const std::optional<at::Tensor>& x) {
  const int64_t B = dh_final.size(0), H = dh_final.size(1);
  const int64_t N = gates.size(0);
  StepProduct product = backward_product(weight_hh, B);        // dhw W = dhw (W.T).T
  const at::TensorOptions opt = gates.options();
  const at::Tensor dout_c = dout.contiguous();
  const auto bufs = buffers({{N, 4 * H}, {N, 4 * H}, {N, H}}, opt);
  at::Tensor da = bufs[0];                     // dL/da, then (after the loop) dxw in place
  at::Tensor dhw = bufs[1], du = bufs[2];      // du: dL/du
  at::Tensor dh = dh_final.contiguous().clone(), dc = dc_final.contiguous().clone();  // (B, H)
  const at::Tensor gx = scale_ih.contiguous(), gh = scale_hh.contiguous();
  const at::Tensor gc = scale_c.contiguous();
  at::Tensor sums;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "layernorm_lstm_backward", [&] {
    const scalar_t* GH = gh.data_ptr<scalar_t>();
    const scalar_t* GC = gc.data_ptr<scalar_t>();
    for_steps(batch_sizes, !reverse, [&](int64_t n, int64_t off) {
      const Rows<const scalar_t> GA(gates, off), HH(h_hat, off), CE(cell, off), ST(rstd, off);
      const Rows<const scalar_t> DO(dout_c, off);
      const Rows<scalar_t> DA(da, off), DU(du, off), DHW(dhw, off), DH(dh), DC(dc);
      for_rows(n, 4 * H, [&](int64_t r) {
        ln_lstm_backward_row(GA[r], HH[r], CE[r], ST[r], DO[r], GH, GC, DA[r], DU[r], DHW[r],
                             DH[r], DC[r], H);
      });
      product_into(product, dhw.narrow(0, off, n), dh.narrow(0, 0, n), false);  // dh_{t-1} = dhw W
    });
    // After the loop, over the stacked time axis: the gains' and shifts' sums, and
    // dxw = N'ᵀ(da ⊙ γ_x) written over da.
    const scalar_t* GX = gx.data_ptr<scalar_t>();
    const scalar_t* XH = x_hat.data_ptr<scalar_t>();
    const scalar_t* HH = h_hat.data_ptr<scalar_t>();
    const scalar_t* CE = cell.data_ptr<scalar_t>();
    const scalar_t* ST = rstd.data_ptr<scalar_t>();
    const scalar_t* DU = du.data_ptr<scalar_t>();
    scalar_t* DA = da.data_ptr<scalar_t>();
    const int64_t G = 4 * H;
    sums = column_sums<scalar_t>(N, 3 * G + 2 * H, [&](int64_t r, scalar_t* acc) {
      ln_lstm_param_row(DA + r * G, XH + r * G, HH + r * G, DU + r * H, CE + r * 3 * H + H,
                        ST + r * 9, GX, acc, H);
    });
  });
  at::Tensor dweight_hh = gram(dhw, h_prev);                     // dhw.T h_prev (4H, H)
  at::Tensor dweight_ih = x.has_value() ? gram(da, *x) : at::Tensor();   // dxw.T x (4H, I)
  auto p = split_sums(sums, {4 * H, 4 * H, 4 * H, H, H}, gates.scalar_type());
  return {da, dhw, dh, dc, dweight_hh, dweight_ih, p[0], p[1], p[2], p[3], p[4]};
}

// ---------------------------------------------------------------------------------------
// GRU

// One row of the GRU's step: N(hw) per block, ax = γ_x N(xw) + β_x, ah = γ_h N(hw) + β_h,
// r, z, n = tanh(ax_n + r ah_n), h_t = n + z (h_{t-1} − n).
template <typename T>
inline void ln_gru_forward_row(const T* __restrict__ xh, const T* __restrict__ hw,
                               const T* __restrict__ gx, const T* __restrict__ bx,
                               const T* __restrict__ gh, const T* __restrict__ bh,
                               T* __restrict__ hh, T* __restrict__ ga, T* __restrict__ st,
                               T* __restrict__ hp, T* __restrict__ hs, T* __restrict__ o_,
                               int64_t H) {
  T mu[3], rs[3];
  for (int64_t k = 0; k < 3; ++k) st[3 + k] = rs[k] = block_stats(hw + k * H, H, &mu[k]);
  const T m0 = mu[0], m1 = mu[1], m2 = mu[2], r0 = rs[0], r1 = rs[1], r2 = rs[2];
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T h0 = (hw[j] - m0) * r0, h1 = (hw[H + j] - m1) * r1;        // N(hw)
    const T h2 = (hw[2 * H + j] - m2) * r2;
    hh[j] = h0; hh[H + j] = h1; hh[2 * H + j] = h2;
    const T axr = bx[j] + gx[j] * xh[j], ahr = bh[j] + gh[j] * h0;
    const T axz = bx[H + j] + gx[H + j] * xh[H + j], ahz = bh[H + j] + gh[H + j] * h1;
    const T axn = bx[2 * H + j] + gx[2 * H + j] * xh[2 * H + j];
    const T ahn = bh[2 * H + j] + gh[2 * H + j] * h2;
    const T rr = sigmoid(axr + ahr), z = sigmoid(axz + ahz);
    const T nn = tanh_(axn + rr * ahn);                // n = tanh(ax_n + r ah_n)
    const T hprev = hs[j];
    const T hn = nn + z * (hprev - nn);                // (1 − z) n + z h_{t-1}
    ga[j] = rr; ga[H + j] = z; ga[2 * H + j] = nn;
    hp[j] = hprev; o_[j] = hn; hs[j] = hn;
  }
}

// One row of the GRU's backward step: dax (kept: dxw and the gains come from it after the
// loop; dah is dax with its n block times r), dhw = N'ᵀ(dah ⊙ γ_h), the direct path z dh.
template <typename T>
inline void ln_gru_backward_row(const T* __restrict__ ga, const T* __restrict__ hh,
                                const T* __restrict__ st, const T* __restrict__ hp,
                                const T* __restrict__ do_, const T* __restrict__ gh,
                                const T* __restrict__ bh, const T* __restrict__ dhr,
                                T* __restrict__ dax, T* __restrict__ dhw,
                                T* __restrict__ dz, int64_t H) {
  T q0 = 0, q1 = 0, q2 = 0, p0 = 0, p1 = 0, p2 = 0;
#pragma omp simd reduction(+ : q0, q1, q2, p0, p1, p2)
  for (int64_t j = 0; j < H; ++j) {
    const T rr = ga[j], z = ga[H + j], nn = ga[2 * H + j];
    const T dh_ = dhr[j] + do_[j];
    const T ahn = bh[2 * H + j] + gh[2 * H + j] * hh[2 * H + j];   // γ_hn N(hw)_n + β_hn
    const T dn = dh_ * (1 - z) * (1 - nn * nn);        // dax_n = dh (1 − z) tanh'
    const T dr = dn * ahn * rr * (1 - rr);             // da_r = dax_n ah_n σ'
    const T dzz = dh_ * (hp[j] - nn) * z * (1 - z);    // da_z = dh (h_{t-1} − n) σ'
    dax[j] = dr; dax[H + j] = dzz; dax[2 * H + j] = dn;
    dz[j] = dh_ * z;
    const T e0 = dr * gh[j], e1 = dzz * gh[H + j], e2 = dn * rr * gh[2 * H + j];
    q0 += e0; q1 += e1; q2 += e2;
    p0 += e0 * hh[j]; p1 += e1 * hh[H + j]; p2 += e2 * hh[2 * H + j];
  }
  const T m0 = q0 / T(H), m1 = q1 / T(H), m2 = q2 / T(H);
  const T x0 = p0 / T(H), x1 = p1 / T(H), x2 = p2 / T(H);
  const T r0 = st[3], r1 = st[4], r2 = st[5];
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    dhw[j] = r0 * (dax[j] * gh[j] - m0 - hh[j] * x0);
    dhw[H + j] = r1 * (dax[H + j] * gh[H + j] - m1 - hh[H + j] * x1);
    dhw[2 * H + j] = r2 * (dax[2 * H + j] * ga[j] * gh[2 * H + j] - m2 - hh[2 * H + j] * x2);
  }
}

// One row of the GRU's pass after the loop: its terms of Σ dax N(xw), Σ dax, Σ dah N(hw),
// Σ dah into acc ([3H each]; dah = dax with its n block times r), then
// dxw = N'ᵀ(dax ⊙ γ_x) over dax.
template <typename T>
inline void ln_gru_param_row(T* a, const T* __restrict__ xh, const T* __restrict__ hh,
                             const T* __restrict__ ga, const T* __restrict__ st,
                             const T* __restrict__ gx, T* __restrict__ acc, int64_t H) {
  const int64_t G = 3 * H;
  add_products(a, xh, acc, acc + G, G);
  add_products(a, hh, acc + 2 * G, acc + 3 * G, 2 * H);      // r, z blocks: dah = dax
  T* __restrict__ agh = acc + 2 * G + 2 * H;
  T* __restrict__ abh = acc + 3 * G + 2 * H;
  const T* an = a + 2 * H;
  const T* __restrict__ hn = hh + 2 * H;
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {                          // dah_n = dax_n r
    const T d = an[j] * ga[j];
    agh[j] += d * hn[j];
    abh[j] += d;
  }
  for (int64_t b = 0; b < 3; ++b)
    normalize_block_backward(a + b * H, gx + b * H, xh + b * H, st[b], a + b * H, H);
}

std::vector<at::Tensor> layernorm_gru_forward(
    const at::Tensor& xw, const std::vector<int64_t>& batch_sizes, const at::Tensor& h0,
    const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_hh,
    const at::Tensor& scale_ih, const at::Tensor& shift_ih, const at::Tensor& scale_hh,
    const at::Tensor& shift_hh, bool reverse, bool keep) {
  const int64_t B = h0.size(0), H = h0.size(1);
  check_forward("layernorm_gru_forward", xw, batch_sizes, h0, weight_hh, 3);
  check_gain(scale_ih, 3 * H, "ln_scale_ih"); check_gain(shift_ih, 3 * H, "ln_shift_ih");
  check_gain(scale_hh, 3 * H, "ln_scale_hh"); check_gain(shift_hh, 3 * H, "ln_shift_hh");
  const int64_t N = xw.size(0);
  const int64_t kept = keep ? N : B;
  StepProduct product(weight_hh, B, /*pack=*/true, bias_hh);   // h W.T (+ b_hh where given)
  const at::TensorOptions opt = xw.options();
  const auto bufs = buffers({{kept, 3 * H}, {kept, 3 * H}, {kept, 3 * H}, {kept, 6},
                             {kept, H}}, opt);
  at::Tensor x_hat = bufs[0], h_hat = bufs[1], gates = bufs[2], rstd = bufs[3];
  at::Tensor h_prev = bufs[4];
  at::Tensor out = buffer(N, H, opt);
  at::Tensor h = h0.contiguous().clone();
  const at::Tensor gx = scale_ih.contiguous(), bx = shift_ih.contiguous();
  const at::Tensor gh = scale_hh.contiguous(), bh = shift_hh.contiguous();
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "layernorm_gru_forward", [&] {
    const scalar_t* XW = xw.data_ptr<scalar_t>();
    if (keep)
      normalize_rows(XW, x_hat.data_ptr<scalar_t>(), rstd.data_ptr<scalar_t>(), 6, N, 3, H);
    const scalar_t* GX = gx.data_ptr<scalar_t>();
    const scalar_t* BX = bx.data_ptr<scalar_t>();
    const scalar_t* GH = gh.data_ptr<scalar_t>();
    const scalar_t* BH = bh.data_ptr<scalar_t>();
    for_steps(batch_sizes, reverse, [&](int64_t n, int64_t off) {
      const int64_t coff = keep ? off : 0;
      const at::Tensor hw = product(h.narrow(0, 0, n));       // h W.T + b_hh  (n, 3H)
      const Rows<scalar_t> XH(x_hat, coff), ST(rstd, coff);
      if (!keep) normalize_rows(XW + off * 3 * H, XH.base, ST.base, 6, n, 3, H);
      const Rows<const scalar_t> A(hw);
      const Rows<scalar_t> HH(h_hat, coff), GA(gates, coff), HP(h_prev, coff), HS(h), O(out, off);
      for_rows(n, 3 * H, [&](int64_t r) {
        ln_gru_forward_row(XH[r], A[r], GX, BX, GH, BH, HH[r], GA[r], ST[r], HP[r], HS[r], O[r],
                           H);
      });
    });
  });
  return {out, h, x_hat, h_hat, gates, rstd, h_prev};
}

// Returns (dxw, dhw (N, 3H), dh0, dweight_hh, dweight_ih or None, dγ_x, dβ_x, dγ_h, dβ_h).
std::vector<at::Tensor> layernorm_gru_backward(
    const at::Tensor& dout, const at::Tensor& dh_final, const at::Tensor& x_hat,
    const at::Tensor& h_hat, const at::Tensor& gates, const at::Tensor& rstd,
    const at::Tensor& h_prev, const std::vector<int64_t>& batch_sizes,
    const at::Tensor& weight_hh, const at::Tensor& scale_ih, const at::Tensor& shift_ih,
    const at::Tensor& scale_hh, const at::Tensor& shift_hh, bool reverse,
    const std::optional<at::Tensor>& x) {
  const int64_t B = dh_final.size(0), H = dh_final.size(1);
  const int64_t N = gates.size(0);
  StepProduct product = backward_product(weight_hh, B);        // dhw W = dhw (W.T).T
  const at::TensorOptions opt = gates.options();
  const at::Tensor dout_c = dout.contiguous();
  const auto bufs = buffers({{N, 3 * H}, {N, 3 * H}}, opt);
  at::Tensor dax = bufs[0];                    // dL/dax, then (after the loop) dxw in place
  at::Tensor dhw = bufs[1];
  at::Tensor dh = dh_final.contiguous().clone();               // (B, H)
  at::Tensor direct = at::empty({B, H}, opt);                  // z dh, the path past the gates
  const at::Tensor gx = scale_ih.contiguous();
  const at::Tensor gh = scale_hh.contiguous(), bh = shift_hh.contiguous();
  at::Tensor sums;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "layernorm_gru_backward", [&] {
    const scalar_t* GH = gh.data_ptr<scalar_t>();
    const scalar_t* BH = bh.data_ptr<scalar_t>();
    for_steps(batch_sizes, !reverse, [&](int64_t n, int64_t off) {
      const Rows<const scalar_t> GA(gates, off), HH(h_hat, off), ST(rstd, off), HP(h_prev, off);
      const Rows<const scalar_t> DO(dout_c, off), DH(dh);
      const Rows<scalar_t> DX(dax, off), DHW(dhw, off), DZ(direct);
      for_rows(n, 3 * H, [&](int64_t r) {
        ln_gru_backward_row(GA[r], HH[r], ST[r], HP[r], DO[r], GH, BH, DH[r], DX[r], DHW[r],
                            DZ[r], H);
      });
      at::Tensor dhn = dh.narrow(0, 0, n);
      dhn.copy_(direct.narrow(0, 0, n));                           // z dh
      product_into(product, dhw.narrow(0, off, n), dhn, true);     // + dhw W
    });
    const scalar_t* GX = gx.data_ptr<scalar_t>();
    const scalar_t* XH = x_hat.data_ptr<scalar_t>();
    const scalar_t* HH = h_hat.data_ptr<scalar_t>();
    const scalar_t* GA = gates.data_ptr<scalar_t>();
    const scalar_t* ST = rstd.data_ptr<scalar_t>();
    scalar_t* DX = dax.data_ptr<scalar_t>();
    const int64_t G = 3 * H;
    sums = column_sums<scalar_t>(N, 4 * G, [&](int64_t r, scalar_t* acc) {
      ln_gru_param_row(DX + r * G, XH + r * G, HH + r * G, GA + r * G, ST + r * 6, GX, acc, H);
    });
  });
  at::Tensor dweight_hh = gram(dhw, h_prev);                     // dhw.T h_prev (3H, H)
  at::Tensor dweight_ih = x.has_value() ? gram(dax, *x) : at::Tensor();  // dxw.T x (3H, I)
  auto p = split_sums(sums, {3 * H, 3 * H, 3 * H, 3 * H}, gates.scalar_type());
  return {dax, dhw, dh, dweight_hh, dweight_ih, p[0], p[1], p[2], p[3]};
}

}  // namespace

void register_layernorm(pybind11::module_& m) {
  m.def("layernorm_lstm_forward", &layernorm_lstm_forward,
        "layer-normalised LSTM forward over a packed sequence", py::arg("xw"),
        py::arg("batch_sizes"), py::arg("h0"), py::arg("c0"), py::arg("weight_hh"),
        py::arg("bias_hh"), py::arg("scale_ih"), py::arg("shift_ih"), py::arg("scale_hh"),
        py::arg("shift_hh"), py::arg("scale_c"), py::arg("shift_c"), py::arg("reverse"),
        py::arg("keep") = true);
  m.def("layernorm_lstm_backward", &layernorm_lstm_backward,
        "layer-normalised LSTM hand BPTT over a packed sequence", py::arg("dout"),
        py::arg("dh_final"), py::arg("dc_final"), py::arg("x_hat"), py::arg("h_hat"),
        py::arg("gates"), py::arg("cell"), py::arg("rstd"), py::arg("h_prev"),
        py::arg("batch_sizes"), py::arg("weight_hh"), py::arg("scale_ih"),
        py::arg("shift_ih"), py::arg("scale_hh"), py::arg("shift_hh"), py::arg("scale_c"),
        py::arg("shift_c"), py::arg("reverse"), py::arg("x") = py::none());
  m.def("layernorm_gru_forward", &layernorm_gru_forward,
        "layer-normalised GRU (reset after) forward over a packed sequence", py::arg("xw"),
        py::arg("batch_sizes"), py::arg("h0"), py::arg("weight_hh"), py::arg("bias_hh"),
        py::arg("scale_ih"), py::arg("shift_ih"), py::arg("scale_hh"), py::arg("shift_hh"),
        py::arg("reverse"), py::arg("keep") = true);
  m.def("layernorm_gru_backward", &layernorm_gru_backward,
        "layer-normalised GRU hand BPTT over a packed sequence", py::arg("dout"),
        py::arg("dh_final"), py::arg("x_hat"), py::arg("h_hat"), py::arg("gates"),
        py::arg("rstd"), py::arg("h_prev"), py::arg("batch_sizes"), py::arg("weight_hh"),
        py::arg("scale_ih"), py::arg("shift_ih"), py::arg("scale_hh"), py::arg("shift_hh"),
        py::arg("reverse"), py::arg("x") = py::none());
}

}  // namespace rnnkit_compiled
