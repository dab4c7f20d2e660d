// The whole time loop of one layer-direction, forward and hand backward, in one C++ call.
//
// The same math as rnnkit/cells/lstm.py (no peephole) and rnnkit/cells/gru.py (reset after),
// on the same packed layout as rnnkit/bptt.py: rows of all time steps stacked, batch_sizes[t]
// rows at step t, non-increasing. Each step is one matrix product (StepProduct: oneDNN for
// float32, at::mm for float64) and one pass over its elements (the *_row loops, vectorised
// by the compiler, rows spread over the intra-op threads). The states live in full-batch
// buffers (B, H): step t touches their first n_t rows only, so an example's final state is
// its state after its own last token, a reverse pass starts each example from the initial
// state, and the backward leaves d(initial state) in the same buffers. After the loop, each
// weight gradient is one product over the stacked time axis.
//
// Caches (all packed, (N, .); with keep=false, for inference, none: one step's scratch):
//   LSTM: gates (N, 4H) = [i, f, g, o] after their activations, tanh_c (N, H),
//         h_prev (N, H), c_prev (N, H)
//   GRU:  gates (N, 3H) = [r, z, h_{t-1} W_n.T + b_hn], n (N, H), h_prev (N, H)

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#ifdef __linux__
#include <stdlib.h>
#include <sys/mman.h>
#endif

namespace {

// ---------------------------------------------------------------------------------------
// exp, sigmoid and tanh as straight-line arithmetic, so that the element loops vectorise
// (std::exp is a library call the compiler will not vectorise without -ffast-math).
// Range reduction x = n ln2 + r, a polynomial for e^r, and 2^n built in the exponent bits:
// Cephes' expf (about 1 ulp) for float; a degree-13 Taylor series (|r| <= ln2/2, relative
// error < 1e-17) for double.

inline float exp_approx(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

inline double exp_approx(double x) {
  x = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);
  const double n = __builtin_floor(x * 1.4426950408889634074 + 0.5);
  const double r = x - n * 6.93145751953125e-1 - n * 1.42860682030941723212e-6;
  double p = 1.0 / 6227020800.0;                      // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const int64_t bits = (static_cast<int64_t>(n) + 1023) << 52;
  double scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

template <typename T> inline T sigmoid(T x) { return T(1) / (T(1) + exp_approx(-x)); }
template <typename T> inline T tanh_(T x) { return T(2) / (T(1) + exp_approx(T(-2) * x)) - T(1); }

std::vector<int64_t> offsets_of(const std::vector<int64_t>& batch_sizes) {
  std::vector<int64_t> offsets(batch_sizes.size());
  int64_t total = 0;
  for (size_t t = 0; t < batch_sizes.size(); ++t) {
    offsets[t] = total;
    total += batch_sizes[t];
  }
  return offsets;
}

void check_packed(const at::Tensor& xw, const std::vector<int64_t>& batch_sizes, int64_t B) {
  TORCH_CHECK(!batch_sizes.empty(), "batch_sizes: empty");
  int64_t total = 0, prev = B;
  for (int64_t n : batch_sizes) {
    TORCH_CHECK(n > 0 && n <= prev, "batch_sizes: expected positive, non-increasing, "
                "at most the batch of the initial state");
    prev = n;
    total += n;
  }
  TORCH_CHECK(batch_sizes[0] == B, "batch_sizes[0] must equal the initial state's batch");
  TORCH_CHECK(xw.size(0) == total, "xw: expected ", total, " rows, got ", xw.size(0));
  TORCH_CHECK(xw.is_contiguous(), "xw: expected a contiguous tensor");
}

// A fresh (rows, cols) buffer. Large ones (the caches, the packed gradients: tens of MB) get
// memory advised for transparent huge pages: on a machine where THP is "madvise" (the common
// default) the first touch of a fresh 4 KiB-paged buffer costs more than the pointwise pass
// that fills it (about 14 ms for 37 MB here, against 2 ms with huge pages).
bool huge_pages_wanted = true;

bool use_huge_pages(bool on) { return huge_pages_wanted = on; }

at::Tensor buffer(int64_t rows, int64_t cols, const at::TensorOptions& options) {
#ifdef __linux__
  constexpr size_t huge = size_t(2) << 20;
  const size_t bytes = size_t(rows) * size_t(cols) * options.dtype().itemsize();
  if (huge_pages_wanted && bytes >= 2 * huge) {
    const size_t rounded = (bytes + huge - 1) / huge * huge;
    void* ptr = nullptr;
    if (posix_memalign(&ptr, huge, rounded) == 0) {
      madvise(ptr, rounded, MADV_HUGEPAGE);              // advice only: fine if refused
      return at::from_blob(ptr, {rows, cols}, [](void* p) { free(p); }, options);
    }
  }
#endif
  return at::empty({rows, cols}, options);
}

// a.T as a fresh contiguous buffer: the operand of the weight-gradient products, transposed
// once rather than by oneDNN inside each of them (5-15% faster pair of products), in
// cache-sized tiles (several times faster than copy_ from a transposed view).
template <typename scalar_t>
void transpose_into(const scalar_t* src, scalar_t* dst, int64_t rows, int64_t cols) {
  constexpr int64_t tile = 16;                         // 16: fastest of 8-64 here
  at::parallel_for(0, (rows + tile - 1) / tile, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bi = begin; bi < end; ++bi) {
      const int64_t i0 = bi * tile, i1 = std::min(rows, i0 + tile);
      for (int64_t j0 = 0; j0 < cols; j0 += tile) {
        const int64_t j1 = std::min(cols, j0 + tile);
        for (int64_t j = j0; j < j1; ++j)
          for (int64_t i = i0; i < i1; ++i) dst[j * rows + i] = src[i * cols + j];
      }
    }
  });
}

at::Tensor transposed(const at::Tensor& a) {
  const at::Tensor src = a.contiguous();
  at::Tensor t = buffer(a.size(1), a.size(0), a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "transposed", [&] {
    transpose_into(src.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), a.size(0), a.size(1));
  });
  return t;
}

// Step t's position in the walk: forward order unless reverse.
inline int64_t step_at(int64_t k, int64_t T, bool reverse) { return reverse ? T - 1 - k : k; }

// Rows [0, n) of one step through `body(row)`, on the intra-op threads when worth it.
template <typename F> void for_rows(int64_t n, int64_t H, F body) {
  const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(H, 1));  // ~2k elements
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) body(r);
  });
}

// ---------------------------------------------------------------------------------------
// The matrix products: y = x @ w.T (+ bias) (+ add), w as torch.nn.Linear holds it.
// float32 goes through oneDNN (PyTorch's mkldnn::_linear_pointwise, the library under
// torch.nn.LSTM on the CPU), which is 2-3x faster than the MKL sgemm behind at::mm on this
// machine's AMD CPU (MKL takes its AVX2 path there; oneDNN uses AVX-512). Elsewhere (float64,
// a torch without oneDNN, or use_onednn(false)) at::addmm / at::mm.

using LinearFn = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            c10::string_view, c10::List<std::optional<at::Scalar>>,
                            std::optional<c10::string_view>);
using LinearAddFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const std::optional<at::Tensor>&, c10::string_view);

using ReorderFn = at::Tensor(const at::Tensor&, std::optional<int64_t>);

struct OneDNN {
  c10::TypedOperatorHandle<LinearFn> linear;
  c10::TypedOperatorHandle<LinearAddFn> linear_add;
  c10::TypedOperatorHandle<ReorderFn> reorder;   // a weight in oneDNN's blocked layout
};

std::optional<OneDNN> find_onednn() {
  try {
    auto& d = c10::Dispatcher::singleton();
    return OneDNN{d.findSchemaOrThrow("mkldnn::_linear_pointwise", "").typed<LinearFn>(),
                  d.findSchemaOrThrow("mkldnn::_linear_pointwise", "binary")
                      .typed<LinearAddFn>(),
                  d.findSchemaOrThrow("mkldnn::_reorder_linear_weight", "").typed<ReorderFn>()};
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

const std::optional<OneDNN>& onednn() {
  static const std::optional<OneDNN> ops = find_onednn();
  return ops;
}

bool onednn_wanted = true;

bool use_onednn(bool on) {
  onednn_wanted = on;
  return on && onednn().has_value();
}

std::string gemm_backend() { return onednn_wanted && onednn() ? "onednn" : "aten"; }

bool onednn_for(const at::Tensor& x) {
  return onednn_wanted && x.scalar_type() == at::kFloat && onednn().has_value();
}

// A weight used at every step, packed once per sequence into oneDNN's layout for products
// of `rows` rows (15-40% faster steps); as it is where the products are not oneDNN's.
at::Tensor packed(const at::Tensor& w, int64_t rows) {
  return onednn_for(w) ? onednn()->reorder.call(w.contiguous(), rows) : w;
}

at::Tensor affine(const at::Tensor& x, const at::Tensor& w,
                  const std::optional<at::Tensor>& bias = std::nullopt,
                  const std::optional<at::Tensor>& add = std::nullopt) {
  const bool defined_bias = bias.has_value() && bias->defined();
  if (onednn_for(x)) {
    std::optional<at::Tensor> b = defined_bias ? bias : std::nullopt;
    if (add.has_value()) return onednn()->linear_add.call(x, *add, w, b, "add");
    return onednn()->linear.call(x, w, b, "none", c10::List<std::optional<at::Scalar>>(),
                                 std::nullopt);
  }
  if (add.has_value()) {
    at::Tensor y = at::addmm(*add, x, w.t());
    return defined_bias ? y.add_(*bias) : y;
  }
  return defined_bias ? at::addmm(*bias, x, w.t()) : at::mm(x, w.t());
}

// C (M, N) (+)= A (M, K) @ B (K, N), all row-major (C with leading dimension ldc), by
// oneDNN's brgemm micro-kernel (at::native::cpublas::brgemm), column blocks over the threads.
void micro_product(const float* A, int64_t M, int64_t K, const float* B, int64_t N, float* C,
                   int64_t ldc, bool add) {
  constexpr int64_t nb = 32;                            // columns per block: best of 32-256 here
  at::parallel_for(0, (N + nb - 1) / nb, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const int64_t n0 = j * nb;
      at::native::cpublas::brgemm(M, std::min(nb, N - n0), K, K, N, ldc, add, A, B + n0,
                                  C + n0, false);
    }
    at::native::cpublas::brgemm_release(false);
  });
}

// The product of every step of one loop, x (n, K) @ w.T (+ bias) -> (n, N), w (N, K) as
// torch.nn.Linear holds it. Large or float64 weights: affine(), the weight packed once
// (forward) or as given. A small float32 weight (<= 1 MiB, the whole of it in L2): the
// brgemm micro-kernel on a row-major copy into one reused buffer, which skips the per-call
// setup of the oneDNN op (about 25% faster steps at 20x200 @ 200x800).
bool micro_wanted = true;

bool use_micro_kernel(bool on) { return micro_wanted = on; }

struct StepProduct {
  at::Tensor w, w_rows, out;          // w for affine(); w_rows (K, N) = w.T and out, micro
  std::optional<at::Tensor> bias;
  bool micro = false;

  StepProduct(const at::Tensor& weight, int64_t rows, bool pack,
              const std::optional<at::Tensor>& bias_ = std::nullopt)
      : bias(bias_.has_value() && bias_->defined() ? bias_ : std::nullopt) {
    micro = micro_wanted && onednn_for(weight) && weight.numel() * 4 <= (int64_t(1) << 20);
    if (micro) {
      w_rows = weight.t().contiguous();
      out = at::empty({rows, weight.size(0)}, weight.options());
    } else {
      w = pack ? packed(weight, rows) : weight;
    }
  }

  at::Tensor operator()(const at::Tensor& x) {
    if (!micro) return affine(x, w, bias);
    const int64_t n = x.size(0), K = x.size(1), N = w_rows.size(1);
    at::Tensor y = out.narrow(0, 0, n);
    if (bias) y.copy_(bias->expand({n, N}));
    const at::Tensor xc = x.contiguous();
    micro_product(xc.data_ptr<float>(), n, K, w_rows.data_ptr<float>(), N,
                  y.data_ptr<float>(), N, bias.has_value());
    return y;
  }
};

// =======================================================================================
// The pointwise pass of one row, for each loop (kept outside the AT_DISPATCH macros, where
// a pragma may not stand).

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

// =======================================================================================
// LSTM

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

// =======================================================================================
// GRU, reset gate after the recurrent product (torch.nn.GRU)

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

// =======================================================================================
// Elman RNN, h_t = f(xw + h_{t-1} W.T), f = tanh (0), relu (1) or sigmoid (2)

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
  const int64_t B = h0.size(0), H = h0.size(1), T = batch_sizes.size();
  check_packed(xw, batch_sizes, B);
  TORCH_CHECK(xw.size(1) == H && weight_hh.size(0) == H && weight_hh.size(1) == H,
              "elman_forward: shapes of xw / weight_hh do not match H=", H);
  TORCH_CHECK(nonlinearity >= 0 && nonlinearity <= 2, "nonlinearity: 0, 1 or 2");
  const int64_t N = xw.size(0);
  const auto offsets = offsets_of(batch_sizes);
  const int64_t kept = keep ? N : B;          // caches for the backward, or one step's scratch
  StepProduct product(weight_hh, B, /*pack=*/true);             // h W.T
  at::Tensor out = buffer(N, H, xw.options());
  at::Tensor h_prev = buffer(kept, H, xw.options());
  at::Tensor h = h0.contiguous().clone();
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "elman_forward", [&] {
    for (int64_t k = 0; k < T; ++k) {
      const int64_t t = step_at(k, T, reverse), n = batch_sizes[t], off = offsets[t];
      const int64_t coff = keep ? off : 0;
      const at::Tensor hw = product(h.narrow(0, 0, n));       // (n, H)
      const scalar_t* X = xw.data_ptr<scalar_t>() + off * H;
      const scalar_t* HW = hw.data_ptr<scalar_t>();
      scalar_t* O = out.data_ptr<scalar_t>() + off * H;
      scalar_t* HP = h_prev.data_ptr<scalar_t>() + coff * H;
      scalar_t* HS = h.data_ptr<scalar_t>();
      for_rows(n, H, [&](int64_t r) {
        const int64_t o = r * H;
        if (nonlinearity == 0) elman_forward_row<0>(X + o, HW + o, O + o, HP + o, HS + o, H);
        else if (nonlinearity == 1) elman_forward_row<1>(X + o, HW + o, O + o, HP + o, HS + o, H);
        else elman_forward_row<2>(X + o, HW + o, O + o, HP + o, HS + o, H);
      });
    }
  });
  return {out, h, h_prev};
}

// Returns (dxw (N, H) — also dhw —, dh0, dweight_hh, dweight_ih or None as for the LSTM).
std::vector<at::Tensor> elman_backward(const at::Tensor& dout, const at::Tensor& dh_final,
                                       const at::Tensor& out, const at::Tensor& h_prev,
                                       const std::vector<int64_t>& batch_sizes,
                                       const at::Tensor& weight_hh, int64_t nonlinearity,
                                       bool reverse, const std::optional<at::Tensor>& x) {
  const int64_t B = dh_final.size(0), H = dh_final.size(1), T = batch_sizes.size();
  const int64_t N = out.size(0);
  const auto offsets = offsets_of(batch_sizes);
  StepProduct product(weight_hh.t(), B, /*pack=*/false);       // da W = da (W.T).T
  const at::Tensor dout_c = dout.contiguous();
  at::Tensor da = buffer(N, H, out.options());
  at::Tensor dh = dh_final.contiguous().clone();               // (B, H)
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "elman_backward", [&] {
    for (int64_t k = 0; k < T; ++k) {
      const int64_t t = step_at(k, T, !reverse), n = batch_sizes[t], off = offsets[t];
      const scalar_t* HO = out.data_ptr<scalar_t>() + off * H;
      const scalar_t* DO = dout_c.data_ptr<scalar_t>() + off * H;
      const scalar_t* DH = dh.data_ptr<scalar_t>();
      scalar_t* DA = da.data_ptr<scalar_t>() + off * H;
      for_rows(n, H, [&](int64_t r) {
        const int64_t o = r * H;
        if (nonlinearity == 0) elman_backward_row<0>(HO + o, DO + o, DH + o, DA + o, H);
        else if (nonlinearity == 1) elman_backward_row<1>(HO + o, DO + o, DH + o, DA + o, H);
        else elman_backward_row<2>(HO + o, DO + o, DH + o, DA + o, H);
      });
      dh.narrow(0, 0, n).copy_(product(da.narrow(0, off, n)));   // dh_{t-1} = da W
    }
  });
  const at::Tensor da_t = transposed(da);                     // (H, N)
  at::Tensor dweight_hh = affine(da_t, h_prev.t());           // da.T h_prev (H, H)
  at::Tensor dweight_ih = x.has_value() ? affine(da_t, x->t()) : at::Tensor();
  return {da, dh, dweight_hh, dweight_ih};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnkit: whole-sequence LSTM / GRU loops, forward and hand backward";
  m.def("lstm_forward", &lstm_forward, "LSTM forward over a packed sequence",
        py::arg("xw"), py::arg("batch_sizes"), py::arg("h0"), py::arg("c0"),
        py::arg("weight_hh"), py::arg("reverse"), py::arg("keep") = true);
  m.def("lstm_backward", &lstm_backward, "LSTM hand BPTT over a packed sequence",
        py::arg("dout"), py::arg("dh_final"), py::arg("dc_final"), py::arg("gates"),
        py::arg("tanh_c"), py::arg("h_prev"), py::arg("c_prev"), py::arg("batch_sizes"),
        py::arg("weight_hh"), py::arg("reverse"), py::arg("x") = py::none());
  m.def("gru_forward", &gru_forward, "GRU (reset after) forward over a packed sequence",
        py::arg("xw"), py::arg("batch_sizes"), py::arg("h0"), py::arg("weight_hh"),
        py::arg("bias_hh"), py::arg("reverse"), py::arg("keep") = true);
  m.def("gru_backward", &gru_backward, "GRU (reset after) hand BPTT over a packed sequence",
        py::arg("dout"), py::arg("dh_final"), py::arg("gates"), py::arg("cand"),
        py::arg("h_prev"), py::arg("batch_sizes"), py::arg("weight_hh"), py::arg("reverse"),
        py::arg("x") = py::none());
  m.def("linear", &affine, "x @ w.T (+ bias) (+ add) through the loops' GEMM", py::arg("x"),
        py::arg("w"), py::arg("bias") = py::none(), py::arg("add") = py::none());
  m.def("packed", &packed, "a weight packed for products of `rows` rows (where oneDNN runs them)");
  m.def("elman_forward", &elman_forward, "Elman RNN forward over a packed sequence",
        py::arg("xw"), py::arg("batch_sizes"), py::arg("h0"), py::arg("weight_hh"),
        py::arg("nonlinearity"), py::arg("reverse"), py::arg("keep") = true);
  m.def("elman_backward", &elman_backward, "Elman RNN hand BPTT over a packed sequence",
        py::arg("dout"), py::arg("dh_final"), py::arg("out"), py::arg("h_prev"),
        py::arg("batch_sizes"), py::arg("weight_hh"), py::arg("nonlinearity"),
        py::arg("reverse"), py::arg("x") = py::none());
  m.def("transposed", &transposed, "a.T, contiguous (the loops' tiled transpose)");
  m.def("use_micro_kernel", &use_micro_kernel,
        "small step weights through brgemm (default) or the oneDNN op");
  m.def("use_huge_pages", &use_huge_pages, "large caches in THP-advised memory (default) or not");
  m.def("use_onednn", &use_onednn, "route float32 products through oneDNN (default) or at::mm");
  m.def("gemm_backend", &gemm_backend, "\"onednn\" or \"aten\"");
}
