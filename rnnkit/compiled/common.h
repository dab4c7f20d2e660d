// What every compiled loop shares: the vectorisable exp / sigmoid / tanh, the packed layout's
// helpers, the buffers, and the matrix products (oneDNN for float32, at::mm otherwise).
//
// The loops themselves live one cell family per file (lstm.cpp, gru.cpp, elman.cpp, …), each
// with a register_<family>(module) that module.cpp calls; one extension holds them all.
// Every loop follows the layout of rnnkit/bptt.py: rows of all time steps stacked,
// batch_sizes[t] rows at step t, non-increasing. Each step is one matrix product
// (StepProduct) and one pass over its elements (a *_row function, vectorised by the
// compiler, rows spread over the intra-op threads by for_rows). The states live in
// full-batch buffers (B, H): step t touches their first n_t rows only, so an example's final
// state is its state after its own last token, a reverse pass starts each example from the
// initial state, and the backward leaves d(initial state) in the same buffers. After the
// loop, each weight gradient is one product over the stacked time axis.
//
// Everything here is inline (one definition across the files, so the switches below are
// one switch for the whole extension).

#pragma once

#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>   // pybind11 with the at::Tensor casters (not the
                                      // whole of torch/extension.h: half the build time)
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <deque>
#include <mutex>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#ifdef __linux__
#include <stdlib.h>
#include <sys/mman.h>
#endif

namespace rnnkit_compiled {

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

inline std::vector<int64_t> offsets_of(const std::vector<int64_t>& batch_sizes) {
  std::vector<int64_t> offsets(batch_sizes.size());
  int64_t total = 0;
  for (size_t t = 0; t < batch_sizes.size(); ++t) {
    offsets[t] = total;
    total += batch_sizes[t];
  }
  return offsets;
}

inline void check_packed(const at::Tensor& xw, const std::vector<int64_t>& batch_sizes, int64_t B) {
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

// The arguments of a forward with a step product: xw (N, G H) packed as batch_sizes says,
// h0 (B, H), weight_hh (G H, H) for a cell of G gate blocks.
inline void check_forward(const char* name, const at::Tensor& xw,
                          const std::vector<int64_t>& batch_sizes, const at::Tensor& h0,
                          const at::Tensor& weight_hh, int64_t G) {
  const int64_t H = h0.size(1);
  check_packed(xw, batch_sizes, h0.size(0));
  TORCH_CHECK(xw.size(1) == G * H && weight_hh.dim() == 2 && weight_hh.size(0) == G * H &&
                  weight_hh.size(1) == H,
              name, ": expected xw (N, ", G * H, ") and weight_hh (", G * H, ", ", H,
              ") for H=", H, ", got xw ", xw.sizes(), " and weight_hh ", weight_hh.sizes());
}

// A fresh (rows, cols) buffer. Large ones (the caches, the packed gradients: tens of MB) get
// memory advised for transparent huge pages: on a machine where THP is "madvise" (the common
// default) the first touch of a fresh 4 KiB-paged buffer costs more than the pointwise pass
// that fills it (about 14 ms for 37 MB here, against 2 ms with huge pages).
inline bool huge_pages_wanted = true;

inline bool use_huge_pages(bool on) { return huge_pages_wanted = on; }

// Freed large buffers are kept for the next call of the same shapes (training repeats them)
// rather than given back to the system: a fresh block must be faulted in page by page at
// its first touch, which costs more than the loops' own pointwise passes, and more still
// when other work has fragmented memory (bench_core's interleaved peers: the compiled LSTM
// at 35 x 64 x 1024 took 344 ms there against 273 ms alone). At most `pool_limit` bytes
// are kept (exact sizes, rounded to 2 MiB; the oldest go first); release_buffers() gives
// them back.
struct BufferPool {
  std::mutex mu;
  std::deque<std::pair<size_t, void*>> blocks;   // free blocks, oldest first
  size_t held = 0;
};

inline size_t pool_limit = size_t(1) << 30;

inline BufferPool& buffer_pool() {
  static BufferPool* pool = new BufferPool;  // never destroyed: tensors may outlive exit
  return *pool;
}

// A kept block of exactly `bytes`, the most recently freed one; nullptr if none.
inline void* pool_take(size_t bytes) {
  BufferPool& pool = buffer_pool();
  std::lock_guard<std::mutex> lock(pool.mu);
  for (auto it = pool.blocks.rbegin(); it != pool.blocks.rend(); ++it) {
    if (it->first == bytes) {
      void* ptr = it->second;
      pool.blocks.erase(std::next(it).base());
      pool.held -= bytes;
      return ptr;
    }
  }
  return nullptr;
}

// Keep a freed block; past the limit, the oldest blocks go back to the system (the shapes
// of earlier calls give way to the current ones).
inline void pool_give(void* ptr, size_t bytes) {
  std::vector<void*> evicted;
  {
    BufferPool& pool = buffer_pool();
    std::lock_guard<std::mutex> lock(pool.mu);
    pool.blocks.emplace_back(bytes, ptr);
    pool.held += bytes;
    while (pool.held > pool_limit) {
      pool.held -= pool.blocks.front().first;
      evicted.push_back(pool.blocks.front().second);
      pool.blocks.pop_front();
    }
  }
  for (void* old : evicted) free(old);
}

// Give every kept block back to the system; returns the bytes released.
inline int64_t release_buffers() {
  BufferPool& pool = buffer_pool();
  std::lock_guard<std::mutex> lock(pool.mu);
  for (auto& block : pool.blocks) free(block.second);
  pool.blocks.clear();
  const size_t held = pool.held;
  pool.held = 0;
  return static_cast<int64_t>(held);
}

inline int64_t buffers_held() {
  BufferPool& pool = buffer_pool();
  std::lock_guard<std::mutex> lock(pool.mu);
  return static_cast<int64_t>(pool.held);
}

inline at::Tensor buffer(int64_t rows, int64_t cols, const at::TensorOptions& options) {
#ifdef __linux__
  constexpr size_t huge = size_t(2) << 20;
  const size_t bytes = size_t(rows) * size_t(cols) * options.dtype().itemsize();
  if (huge_pages_wanted && bytes >= 2 * huge) {
    const size_t rounded = (bytes + huge - 1) / huge * huge;
    void* ptr = pool_take(rounded);
    if (ptr == nullptr && posix_memalign(&ptr, huge, rounded) == 0)
      madvise(ptr, rounded, MADV_HUGEPAGE);              // advice only: fine if refused
    if (ptr != nullptr)
      return at::from_blob(ptr, {rows, cols}, [rounded](void* p) { pool_give(p, rounded); },
                           options);
  }
#endif
  return at::empty({rows, cols}, options);
}

// a.T as a fresh contiguous buffer: the operand of the weight-gradient products, transposed
// once rather than by oneDNN inside each of them (5-15% faster pair of products), in
// cache-sized tiles (several times faster than copy_ from a transposed view).
template <typename scalar_t>
inline void transpose_into(const scalar_t* src, scalar_t* dst, int64_t rows, int64_t cols) {
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

inline at::Tensor transposed(const at::Tensor& a) {
  const at::Tensor src = a.contiguous();
  at::Tensor t = buffer(a.size(1), a.size(0), a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "transposed", [&] {
    transpose_into(src.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), a.size(0), a.size(1));
  });
  return t;
}

// Step t's position in the walk: forward order unless reverse.
inline int64_t step_at(int64_t k, int64_t T, bool reverse) { return reverse ? T - 1 - k : k; }

// The steps of one loop in the order it walks them, step(n, off) for each: n =
// batch_sizes[t] rows from row off of the packed layout. A forward walks in time order
// (backwards for a reverse layer); a backward passes !reverse.
template <typename F> void for_steps(const std::vector<int64_t>& batch_sizes, bool reverse, F step) {
  const auto offsets = offsets_of(batch_sizes);
  const int64_t T = batch_sizes.size();
  for (int64_t k = 0; k < T; ++k) {
    const int64_t t = step_at(k, T, reverse);
    step(batch_sizes[t], offsets[t]);
  }
}

// The rows of a contiguous (rows, width) buffer from row `row0` on: rows[r] points at row
// row0 + r. A step addresses each buffer through one of these, the width read from the
// buffer itself (T const for one that is only read).
template <typename T> struct Rows {
  T* base;
  int64_t width;
  Rows(const at::Tensor& t, int64_t row0 = 0)
      : base(t.data_ptr<std::remove_const_t<T>>() + row0 * t.size(1)), width(t.size(1)) {
    TORCH_CHECK(t.dim() == 2 && t.is_contiguous(), "Rows: expected a contiguous 2-d buffer");
  }
  T* operator[](int64_t r) const { return base + r * width; }
};

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

inline std::optional<OneDNN> find_onednn() {
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

inline const std::optional<OneDNN>& onednn() {
  static const std::optional<OneDNN> ops = find_onednn();
  return ops;
}

inline bool onednn_wanted = true;

inline bool use_onednn(bool on) {
  onednn_wanted = on;
  return on && onednn().has_value();
}

inline std::string gemm_backend() { return onednn_wanted && onednn() ? "onednn" : "aten"; }

inline bool onednn_for(const at::Tensor& x) {
  return onednn_wanted && x.scalar_type() == at::kFloat && onednn().has_value();
}

// A weight used at every step, packed once per sequence into oneDNN's layout for products
// of `rows` rows (15-40% faster steps); as it is where the products are not oneDNN's.
inline at::Tensor packed(const at::Tensor& w, int64_t rows) {
  return onednn_for(w) ? onednn()->reorder.call(w.contiguous(), rows) : w;
}

inline at::Tensor affine(const at::Tensor& x, const at::Tensor& w,
                  const std::optional<at::Tensor>& bias = std::nullopt,
                  const std::optional<at::Tensor>& add = std::nullopt) {
  const bool defined_bias = bias.has_value() && bias->defined();
  if (onednn_for(x)) {
    // oneDNN reads the bias as contiguous memory whatever its strides: a strided view would
    // be read wrong
    std::optional<at::Tensor> b =
        defined_bias ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
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
inline void micro_product(const float* A, int64_t M, int64_t K, const float* B, int64_t N, float* C,
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
inline bool micro_wanted = true;

inline bool use_micro_kernel(bool on) { return micro_wanted = on; }

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

// The backward's product d @ block for a row block (M, H) of weight_hh: d (block.T).T.
// Where oneDNN runs it with its own op (float32 past the micro-kernel's size) on block.T
// made contiguous (the tiled transpose) and packed once: at 64 x 1024 x 2048 about 25%
// faster a step than reading the transposed view, the copy included (no slower at 20 x 650).
// Elsewhere the view (at::mm takes it as it is; the micro-kernel makes its own row-major
// copy).
inline StepProduct backward_product(const at::Tensor& block, int64_t rows) {
  const bool micro = micro_wanted && onednn_for(block) && block.numel() * 4 <= (int64_t(1) << 20);
  if (micro || !onednn_for(block)) return StepProduct(block.t(), rows, /*pack=*/false);
  return StepProduct(transposed(block), rows, /*pack=*/true);
}

// dst (n, N) = x (n, K) @ w.T through `product`, or dst += it when `add`: dst a block of
// whole rows of a contiguous buffer (a state gradient's first n rows). The micro-kernel
// writes (or adds) straight into dst; elsewhere the product (with the add fused), then a
// copy. Saves
// the copy of every step's product (about 10 us a step at 20 x 200).
inline void product_into(StepProduct& product, const at::Tensor& x, at::Tensor dst, bool add) {
  if (product.micro && !product.bias) {
    const at::Tensor xc = x.contiguous();
    micro_product(xc.data_ptr<float>(), x.size(0), x.size(1), product.w_rows.data_ptr<float>(),
                  product.w_rows.size(1), dst.data_ptr<float>(), dst.size(1), add);
  } else if (add && !product.micro) {
    dst.copy_(affine(x, product.w, product.bias, dst));    // oneDNN's fused add
  } else if (add) {
    dst.add_(product(x));
  } else {
    dst.copy_(product(x));
  }
}

}  // namespace rnnkit_compiled
