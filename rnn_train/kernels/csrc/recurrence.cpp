// The time loops of one RNN / GRU / LSTM layer on the CPU, forward and backward (BPTT).
//
// Why C++: in Python every time step costs a GEMM plus ~10 element-wise torch ops, each a
// dispatcher call and a pass over memory. Here a step is one BLAS call and ONE loop over the
// step's [B, G*H] block that applies all the gate arithmetic at once, so what is left per step is
// the GEMM itself. The all-steps work (input projection, weight gradients) stays in Python, where
// each is one large GEMM. Equations and gate layouts are PyTorch's (nn.RNN, nn.GRU, nn.LSTM);
// rnn_train/kernels/cpp_layers.py documents the tensors each op takes and returns.
//
// exp (for sigmoid and tanh) is written out as range reduction + Taylor polynomial, so that the
// compiler vectorises each cell loop whole; it is accurate to about 1 ulp in float and double.
// The cell functions see raw pointers only: anything that may throw inside a loop (Tensor
// accessors) stops GCC from vectorising it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

// The Fortran BLAS that torch links (MKL in the x86 wheels), if the loaded torch exports it; weak,
// so that a torch without it still loads this library and the ATen GEMM path is used instead.
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*, const int*,
            const double*, const int*, const double*, double*, const int*) __attribute__((weak));
}

namespace {

using at::Tensor;

// ------------------------------------------------------------------------------------------ GEMM

// Per-step GEMM paths: kBlas calls the Fortran BLAS directly; kAten goes through torch.mm (for a
// torch whose BLAS is not exported). (MKL's packed-weight API, packing W once per call, measured
// no faster in docs/kernels.md, so it is not here.)
enum GemmPath : int64_t { kBlas = 0, kAten = 1 };

bool blas_available() { return sgemm_ != nullptr && dgemm_ != nullptr; }

inline void fortran_gemm(char ta, char tb, int m, int n, int k, const float* a, int lda, const float* b, int ldb,
                         float beta, float* c, int ldc) {
  const float one = 1.0f;
  sgemm_(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
}

inline void fortran_gemm(char ta, char tb, int m, int n, int k, const double* a, int lda, const double* b, int ldb,
                         double beta, double* c, int ldc) {
  const double one = 1.0;
  dgemm_(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
}

// The step GEMM of one time loop: row-major C[M, N] = A[M, K] @ W (+ C when accumulating), all
// contiguous, W stored [K, N], the same W and shapes at every step. Fortran BLAS is
// column-major, so it is asked for C^T = W^T A^T on the same memory ("N", "N"). The forward
// passes W_hh^T, transposed once per call: the step GEMMs were ~5-8% faster that way than
// with BLAS transposing W_hh itself (docs/kernels.md).
template <typename T>
class StepGemm {
 public:
  StepGemm(int64_t path, int64_t M, int64_t N, int64_t K, const T* W) : path_(path), M_(M), N_(N), K_(K), W_(W) {}

  void operator()(const T* A, T* C, bool accumulate) const {
    const T beta = accumulate ? T(1) : T(0);
    if (path_ == kBlas) {
      fortran_gemm('N', 'N', (int)N_, (int)M_, (int)K_, W_, (int)N_, A, (int)K_, beta, C, (int)N_);
      return;
    }
    auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
    Tensor a = at::from_blob(const_cast<T*>(A), {M_, K_}, opts);
    Tensor w = at::from_blob(const_cast<T*>(W_), {K_, N_}, opts);
    Tensor c = at::from_blob(C, {M_, N_}, opts);
    if (accumulate) {
      c.addmm_(a, w);
    } else {
      at::mm_out(c, a, w);
    }
  }

 private:
  int64_t path_;
  int64_t M_, N_, K_;
  const T* W_;
};

// ------------------------------------------------------------------------------------------ math

inline float exp_poly(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits
  float t = x * 1.44269504088896341f + magic;
  float n = t - magic;
  int32_t ni;
  std::memcpy(&ni, &t, sizeof ni);
  ni -= 0x4B400000;  // the bits of `magic`: ni = n as an integer
  float r = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;  // x - n ln2 (ln2 in two parts), |r| <= ln2/2
  float p = 1.0f / 5040.0f;  // e^r to r^7 / 7!: remainder below float's epsilon
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits = (ni + 127) << 23;  // 2^n as a float
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline double exp_poly(double x) {
  x = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);
  const double magic = 6755399441055744.0;  // 1.5 * 2^52
  double t = x * 1.44269504088896340736 + magic;
  double n = t - magic;
  int64_t ni;
  std::memcpy(&ni, &t, sizeof ni);
  ni -= 0x4338000000000000LL;
  double r = x - n * 6.93147180369123816490e-01 - n * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;  // to r^13 / 13!
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
  int64_t bits = (ni + 1023) << 52;
  double scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + exp_poly(-x));
}

template <typename T>
inline T tanh_poly(T x) {  // 1 - 2 / (1 + e^{2x}): saturates to +-1 without overflow
  return T(1) - T(2) / (T(1) + exp_poly(T(2) * x));
}

// ------------------------------------------------------------------------------------------ cells
// One row (one sequence b) of one step. H is the hidden size; blocks of a [G*H] row follow
// PyTorch's gate order. `q` is the row of h_{t-1} W_hh^T, `g` the row of the input projection.

template <typename T>
void rnn_cell_forward(int64_t H, bool relu, const T* __restrict g, T* __restrict h) {
  // h holds h_{t-1} W_hh^T on entry
  if (relu) {
    for (int64_t j = 0; j < H; ++j) h[j] = std::max(g[j] + h[j], T(0));
  } else {
    for (int64_t j = 0; j < H; ++j) h[j] = tanh_poly(g[j] + h[j]);
  }
}

template <typename T>
void rnn_cell_backward(int64_t H, bool relu, const T* __restrict h, const T* __restrict dh, const T* __restrict d_out_prev,
                       T* __restrict da, T* __restrict nx) {
  if (relu) {
    for (int64_t j = 0; j < H; ++j) da[j] = h[j] > T(0) ? dh[j] : T(0);
  } else {
    for (int64_t j = 0; j < H; ++j) da[j] = dh[j] * (T(1) - h[j] * h[j]);
  }
  std::memcpy(nx, d_out_prev, sizeof(T) * H);
}

template <typename T>
void gru_cell_forward(int64_t H, T* __restrict g, const T* __restrict q, const T* __restrict bn, const T* __restrict h_prev,
                      T* __restrict h, T* __restrict n) {
  // g: (W_ir x + b_ir + b_hr, W_iz x + b_iz + b_hz, W_in x + b_in) on entry, (r, z, W_hn h + b_hn) on exit
  for (int64_t j = 0; j < H; ++j) {
    T r = sigmoid(g[j] + q[j]);
    T z = sigmoid(g[H + j] + q[H + j]);
    T ghn = q[2 * H + j] + bn[j];
    T nn = tanh_poly(g[2 * H + j] + r * ghn);
    g[j] = r;
    g[H + j] = z;
    g[2 * H + j] = ghn;
    n[j] = nn;
    h[j] = nn + z * (h_prev[j] - nn);
  }
}

template <typename T>
void gru_cell_backward(int64_t H, const T* __restrict g, const T* __restrict n, const T* __restrict h_prev,
                       const T* __restrict dh, const T* __restrict d_out_prev, T* __restrict hid, T* __restrict inp,
                       T* __restrict nx) {
  for (int64_t j = 0; j < H; ++j) {
    T r = g[j], z = g[H + j], ghn = g[2 * H + j], nn = n[j], d = dh[j];
    T da_n = d * (T(1) - z) * (T(1) - nn * nn);
    T da_z = d * (h_prev[j] - nn) * z * (T(1) - z);
    T da_r = da_n * ghn * r * (T(1) - r);
    hid[j] = da_r;  // dL/d(h W_hh^T + b_hh)
    hid[H + j] = da_z;
    hid[2 * H + j] = da_n * r;
    inp[j] = da_r;  // dL/d(x W_ih^T + b_ih)
    inp[H + j] = da_z;
    inp[2 * H + j] = da_n;
    nx[j] = d_out_prev[j] + d * z;  // dh_{t-1} before the GEMM adds dgh W_hh
  }
}

template <typename T>
void lstm_cell_forward(int64_t H, T* __restrict g, const T* __restrict q, const T* __restrict c_prev, T* __restrict c,
                       T* __restrict tc, T* __restrict h) {
  // g: x W_ih^T + b_ih + b_hh on entry, the activated gates (i, f, g, o) on exit
  for (int64_t j = 0; j < H; ++j) {
    T i = sigmoid(g[j] + q[j]);
    T f = sigmoid(g[H + j] + q[H + j]);
    T gg = tanh_poly(g[2 * H + j] + q[2 * H + j]);
    T o = sigmoid(g[3 * H + j] + q[3 * H + j]);
    T cv = f * c_prev[j] + i * gg;
    T t = tanh_poly(cv);
    g[j] = i;
    g[H + j] = f;
    g[2 * H + j] = gg;
    g[3 * H + j] = o;
    c[j] = cv;
    tc[j] = t;
    h[j] = o * t;
  }
}

template <typename T>
void lstm_cell_backward(int64_t H, const T* __restrict g, const T* __restrict c_prev, const T* __restrict tc,
                        const T* __restrict dh, T* __restrict dc, const T* __restrict d_out_prev, T* __restrict da,
                        T* __restrict nx) {
  // dc: dL/dc_t from the future on entry, dL/dc_{t-1} on exit
  for (int64_t j = 0; j < H; ++j) {
    T i = g[j], f = g[H + j], gg = g[2 * H + j], o = g[3 * H + j], t = tc[j], d = dh[j];
    T dcv = dc[j] + d * o * (T(1) - t * t);
    da[j] = dcv * gg * i * (T(1) - i);
    da[H + j] = dcv * c_prev[j] * f * (T(1) - f);
    da[2 * H + j] = dcv * i * (T(1) - gg * gg);
    da[3 * H + j] = d * t * o * (T(1) - o);
    dc[j] = dcv * f;
    nx[j] = d_out_prev[j];
  }
}

// ------------------------------------------------------------------------------------------ checks

void check_common(const Tensor& gx, int64_t gates, const Tensor& w_hh, const Tensor& h0, int64_t path) {
  TORCH_CHECK(gx.device().is_cpu() && (gx.scalar_type() == at::kFloat || gx.scalar_type() == at::kDouble),
              "float32 / float64 CPU tensors only");
  TORCH_CHECK(path == kAten || (path == kBlas && blas_available()), "GEMM path ", path, " is not available");
  const int64_t H = w_hh.size(1);
  TORCH_CHECK(gx.dim() == 3 && gx.is_contiguous() && gx.size(2) == gates * H, "gx must be contiguous [T, B, G*H]");
  TORCH_CHECK(w_hh.is_contiguous() && w_hh.size(0) == gates * H, "w_hh must be contiguous [G*H, H]");
  TORCH_CHECK(h0.is_contiguous() && h0.dim() == 2 && h0.size(0) == gx.size(1) && h0.size(1) == H, "h0 must be [B, H]");
  TORCH_CHECK(w_hh.scalar_type() == gx.scalar_type() && h0.scalar_type() == gx.scalar_type(), "one dtype for all tensors");
}

// d_out [T, B, H] with any strides: rows must be contiguous for the cell loops.
Tensor rows_contiguous(const Tensor& d_out) { return d_out.stride(2) == 1 ? d_out : d_out.contiguous(); }

template <typename T>
const T* out_row(const Tensor& d_out, int64_t t, int64_t b) {
  return d_out.data_ptr<T>() + t * d_out.stride(0) + b * d_out.stride(1);
}

// dh_T = d_out[T-1] + d_hT for rows [b0, b1), the total gradient of the last state.
template <typename T>
void last_state_grad(const Tensor& d_out, const Tensor& d_hT, int64_t b0, int64_t b1, T* dh) {
  const int64_t steps = d_out.size(0), H = d_out.size(2);
  for (int64_t b = b0; b < b1; ++b) {
    const T* o = out_row<T>(d_out, steps - 1, b);
    const T* e = d_hT.data_ptr<T>() + b * H;
    for (int64_t j = 0; j < H; ++j) dh[(b - b0) * H + j] = o[j] + e[j];
  }
}

// ------------------------------------------------------------------------------------------ rows
// The sequences of a batch are independent, so a layer's whole time loop can run on blocks of
// batch rows, one block per thread, with no synchronisation between steps: each thread does
// its rows' GEMM (with BLAS kept on that thread) and cell loops. With `parallel` false the loop
// runs once over all rows and the BLAS library threads each GEMM itself.

// MKL's C entry point (mkl_service.h maps mkl_set_num_threads_local to it; the lowercase symbol
// itself is the Fortran one, which takes a pointer).
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

struct BlasOnThisThread {  // the GEMMs of one block stay on the thread that runs the block
  int previous = 0;
  BlasOnThisThread() {
    if (MKL_Set_Num_Threads_Local != nullptr) previous = MKL_Set_Num_Threads_Local(1);
  }
  ~BlasOnThisThread() {
    if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(previous);
  }
};

constexpr int64_t kMinRowsPerThread = 4;

template <typename F>
void over_rows(int64_t B, bool parallel, const F& f) {
  if (!parallel || B < 2 * kMinRowsPerThread) {
    f(int64_t(0), B);
    return;
  }
  at::parallel_for(0, B, kMinRowsPerThread, [&](int64_t b0, int64_t b1) {
    BlasOnThisThread guard;
    f(b0, b1);
  });
}

// ------------------------------------------------------------------------------------------ RNN

template <typename T>
void rnn_forward_rows(int64_t b0, int64_t b1, const Tensor& gx, const Tensor& w_t, bool relu, Tensor& hs,
                      int64_t path) {
  const int64_t steps = gx.size(0), B = gx.size(1), H = hs.size(2), M = b1 - b0;
  const T* w = w_t.data_ptr<T>();
  T* h = hs.data_ptr<T>();
  const T* g = gx.data_ptr<T>();
  const StepGemm<T> gemm(path, M, H, H, w);  // h_{t-1} W_hh^T
  for (int64_t t = 0; t < steps; ++t) {
    T* h_new = h + ((t + 1) * B + b0) * H;
    gemm(h + (t * B + b0) * H, h_new, false);
    for (int64_t b = b0; b < b1; ++b) rnn_cell_forward<T>(H, relu, g + (t * B + b) * H, h + ((t + 1) * B + b) * H);
  }
}

Tensor rnn_forward(const Tensor& gx, const Tensor& h0, const Tensor& w_hh, bool relu, int64_t path, bool parallel) {
  check_common(gx, 1, w_hh, h0, path);
  Tensor hs = at::empty({gx.size(0) + 1, gx.size(1), w_hh.size(1)}, gx.options());
  hs[0].copy_(h0);
  const Tensor w_t = w_hh.t().contiguous();  // [H, H]
  AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "rnn_forward", [&] {
    over_rows(gx.size(1), parallel, [&](int64_t b0, int64_t b1) { rnn_forward_rows<scalar_t>(b0, b1, gx, w_t, relu, hs, path); });
  });
  return hs;
}

template <typename T>
void rnn_backward_rows(int64_t b0, int64_t b1, const Tensor& d_out, const Tensor& d_hT, const Tensor& w_hh,
                       const Tensor& hs, bool relu, Tensor& da, Tensor& dh0, int64_t path) {
  const int64_t steps = da.size(0), B = da.size(1), H = da.size(2), M = b1 - b0;
  std::vector<T> dh_buf(M * H), next_buf(M * H), zeros(H, T(0));
  T* dh = dh_buf.data();
  T* next = next_buf.data();
  last_state_grad<T>(d_out, d_hT, b0, b1, dh);
  const T* w = w_hh.data_ptr<T>();
  const T* h = hs.data_ptr<T>();
  T* d = da.data_ptr<T>();
  const StepGemm<T> gemm(path, M, H, H, w);  // da_t W_hh
  for (int64_t t = steps - 1; t >= 0; --t) {
    for (int64_t b = b0; b < b1; ++b) {
      const T* o = t > 0 ? out_row<T>(d_out, t - 1, b) : zeros.data();
      rnn_cell_backward<T>(H, relu, h + ((t + 1) * B + b) * H, dh + (b - b0) * H, o, d + (t * B + b) * H,
                           next + (b - b0) * H);
    }
    gemm(d + (t * B + b0) * H, next, true);  // dh_{t-1} = dout_{t-1} + da_t W_hh
    std::swap(dh, next);
  }
  std::memcpy(dh0.data_ptr<T>() + b0 * H, dh, sizeof(T) * M * H);
}

// The deltas go into buffers the caller owns (`da` here, `dgh`/`dgi`, `dg` below): it reuses them
// across calls, so that the backward does not touch fresh pages (see rnn_train/kernels/gemm.py).
void check_deltas(const Tensor& deltas, at::IntArrayRef sizes, const Tensor& like) {
  TORCH_CHECK(deltas.is_contiguous() && deltas.sizes() == sizes && deltas.scalar_type() == like.scalar_type(),
              "delta buffers must be contiguous [T, B, G*H] of the gates' dtype");
}

Tensor rnn_backward(const Tensor& d_out, const Tensor& d_hT, const Tensor& w_hh, const Tensor& hs, Tensor da, bool relu,
                    int64_t path, bool parallel) {
  const int64_t B = hs.size(1), H = hs.size(2);
  Tensor d = rows_contiguous(d_out), e = d_hT.contiguous();
  check_deltas(da, {hs.size(0) - 1, B, H}, hs);
  Tensor dh0 = at::empty({B, H}, hs.options());
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "rnn_backward", [&] {
    over_rows(B, parallel, [&](int64_t b0, int64_t b1) { rnn_backward_rows<scalar_t>(b0, b1, d, e, w_hh, hs, relu, da, dh0, path); });
  });
  return dh0;
}

// ------------------------------------------------------------------------------------------ GRU

template <typename T>
void gru_forward_rows(int64_t b0, int64_t b1, Tensor& gx, const Tensor& w_t, const Tensor& b_hn, Tensor& hs, Tensor& n,
                      int64_t path) {
  const int64_t steps = gx.size(0), B = gx.size(1), H = hs.size(2), G = 3 * H, M = b1 - b0;
  std::vector<T> q_buf(M * G);
  T* q = q_buf.data();
  const T* w = w_t.data_ptr<T>();
  const T* bn = b_hn.data_ptr<T>();
  T* g = gx.data_ptr<T>();
  T* h = hs.data_ptr<T>();
  T* nn = n.data_ptr<T>();
  const StepGemm<T> gemm(path, M, G, H, w);
  for (int64_t t = 0; t < steps; ++t) {
    gemm(h + (t * B + b0) * H, q, false);  // [M, 3H] = h_{t-1} W_hh^T
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t row = t * B + b;
      gru_cell_forward<T>(H, g + row * G, q + (b - b0) * G, bn, h + row * H, h + (row + B) * H, nn + row * H);
    }
  }
}

std::tuple<Tensor, Tensor> gru_forward(Tensor gx, const Tensor& h0, const Tensor& w_hh, const Tensor& b_hn, int64_t path,
                                       bool parallel) {
  check_common(gx, 3, w_hh, h0, path);
  TORCH_CHECK(b_hn.is_contiguous() && b_hn.numel() == w_hh.size(1) && b_hn.scalar_type() == gx.scalar_type(),
              "b_hn must be [H]");
  const int64_t steps = gx.size(0), B = gx.size(1), H = w_hh.size(1);
  Tensor hs = at::empty({steps + 1, B, H}, gx.options());
  Tensor n = at::empty({steps, B, H}, gx.options());
  hs[0].copy_(h0);
  const Tensor w_t = w_hh.t().contiguous();  // [H, 3H]
  AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "gru_forward", [&] {
    over_rows(B, parallel, [&](int64_t b0, int64_t b1) { gru_forward_rows<scalar_t>(b0, b1, gx, w_t, b_hn, hs, n, path); });
  });
  return {hs, n};
}

template <typename T>
void gru_backward_rows(int64_t b0, int64_t b1, const Tensor& d_out, const Tensor& d_hT, const Tensor& w_hh,
                       const Tensor& hs, const Tensor& gates, const Tensor& n, Tensor& dgh, Tensor& dgi, Tensor& dh0,
                       int64_t path) {
  const int64_t steps = gates.size(0), B = gates.size(1), H = hs.size(2), G = 3 * H, M = b1 - b0;
  std::vector<T> dh_buf(M * H), next_buf(M * H), zeros(H, T(0));
  T* dh = dh_buf.data();
  T* next = next_buf.data();
  last_state_grad<T>(d_out, d_hT, b0, b1, dh);
  const T* w = w_hh.data_ptr<T>();
  const T* g = gates.data_ptr<T>();
  const T* nn = n.data_ptr<T>();
  const T* h = hs.data_ptr<T>();
  T* hid = dgh.data_ptr<T>();
  T* inp = dgi.data_ptr<T>();
  const StepGemm<T> gemm(path, M, H, G, w);
  for (int64_t t = steps - 1; t >= 0; --t) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t row = t * B + b;
      const T* o = t > 0 ? out_row<T>(d_out, t - 1, b) : zeros.data();
      gru_cell_backward<T>(H, g + row * G, nn + row * H, h + row * H, dh + (b - b0) * H, o, hid + row * G,
                           inp + row * G, next + (b - b0) * H);
    }
    gemm(hid + (t * B + b0) * G, next, true);  // dh_{t-1} += dgh_t W_hh
    std::swap(dh, next);
  }
  std::memcpy(dh0.data_ptr<T>() + b0 * H, dh, sizeof(T) * M * H);
}

Tensor gru_backward(const Tensor& d_out, const Tensor& d_hT, const Tensor& w_hh, const Tensor& hs, const Tensor& gates,
                    const Tensor& n, Tensor dgh, Tensor dgi, int64_t path, bool parallel) {
  Tensor d = rows_contiguous(d_out), e = d_hT.contiguous();
  check_deltas(dgh, gates.sizes(), gates);
  check_deltas(dgi, gates.sizes(), gates);
  Tensor dh0 = at::empty_like(e);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_backward", [&] {
    over_rows(gates.size(1), parallel, [&](int64_t b0, int64_t b1) {
      gru_backward_rows<scalar_t>(b0, b1, d, e, w_hh, hs, gates, n, dgh, dgi, dh0, path);
    });
  });
  return dh0;
}

// ------------------------------------------------------------------------------------------ LSTM

template <typename T>
void lstm_forward_rows(int64_t b0, int64_t b1, Tensor& gx, const Tensor& w_t, Tensor& hs, Tensor& cs, Tensor& tc,
                       int64_t path) {
  const int64_t steps = gx.size(0), B = gx.size(1), H = hs.size(2), G = 4 * H, M = b1 - b0;
  std::vector<T> q_buf(M * G);
  T* q = q_buf.data();
  const T* w = w_t.data_ptr<T>();
  T* g = gx.data_ptr<T>();
  T* h = hs.data_ptr<T>();
  T* c = cs.data_ptr<T>();
  T* th = tc.data_ptr<T>();
  const StepGemm<T> gemm(path, M, G, H, w);
  for (int64_t t = 0; t < steps; ++t) {
    gemm(h + (t * B + b0) * H, q, false);  // [M, 4H] = h_{t-1} W_hh^T
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t row = t * B + b;
      lstm_cell_forward<T>(H, g + row * G, q + (b - b0) * G, c + row * H, c + (row + B) * H, th + row * H,
                           h + (row + B) * H);
    }
  }
}

std::tuple<Tensor, Tensor, Tensor> lstm_forward(Tensor gx, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                                                int64_t path, bool parallel) {
  check_common(gx, 4, w_hh, h0, path);
  TORCH_CHECK(c0.sizes() == h0.sizes() && c0.scalar_type() == h0.scalar_type(), "c0 must be like h0");
  const int64_t steps = gx.size(0), B = gx.size(1), H = w_hh.size(1);
  Tensor hs = at::empty({steps + 1, B, H}, gx.options());
  Tensor cs = at::empty({steps + 1, B, H}, gx.options());
  Tensor tc = at::empty({steps, B, H}, gx.options());
  hs[0].copy_(h0);
  cs[0].copy_(c0);
  const Tensor w_t = w_hh.t().contiguous();  // [H, 4H]
  AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "lstm_forward", [&] {
    over_rows(B, parallel, [&](int64_t b0, int64_t b1) { lstm_forward_rows<scalar_t>(b0, b1, gx, w_t, hs, cs, tc, path); });
  });
  return {hs, cs, tc};
}

template <typename T>
void lstm_backward_rows(int64_t b0, int64_t b1, const Tensor& d_out, const Tensor& d_hT, const Tensor& d_cT,
                        const Tensor& w_hh, const Tensor& cs, const Tensor& gates, const Tensor& tc, Tensor& dg,
                        Tensor& dh0, Tensor& dc0, int64_t path) {
  const int64_t steps = gates.size(0), B = gates.size(1), H = cs.size(2), G = 4 * H, M = b1 - b0;
  std::vector<T> dh_buf(M * H), next_buf(M * H), zeros(H, T(0));
  T* dh = dh_buf.data();
  T* next = next_buf.data();
  T* dc = dc0.data_ptr<T>() + b0 * H;  // the carried dL/dc of these rows, ends as dL/dc_0
  std::memcpy(dc, d_cT.data_ptr<T>() + b0 * H, sizeof(T) * M * H);
  last_state_grad<T>(d_out, d_hT, b0, b1, dh);
  const T* w = w_hh.data_ptr<T>();
  const T* g = gates.data_ptr<T>();
  const T* c = cs.data_ptr<T>();
  const T* th = tc.data_ptr<T>();
  T* da = dg.data_ptr<T>();
  const StepGemm<T> gemm(path, M, H, G, w);
  for (int64_t t = steps - 1; t >= 0; --t) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t row = t * B + b;
      const T* o = t > 0 ? out_row<T>(d_out, t - 1, b) : zeros.data();
      lstm_cell_backward<T>(H, g + row * G, c + row * H, th + row * H, dh + (b - b0) * H, dc + (b - b0) * H, o,
                            da + row * G, next + (b - b0) * H);
    }
    gemm(da + (t * B + b0) * G, next, true);  // dh_{t-1} = dout_{t-1} + da_t W_hh
    std::swap(dh, next);
  }
  std::memcpy(dh0.data_ptr<T>() + b0 * H, dh, sizeof(T) * M * H);
}

std::tuple<Tensor, Tensor> lstm_backward(const Tensor& d_out, const Tensor& d_hT, const Tensor& d_cT, const Tensor& w_hh,
                                         const Tensor& cs, const Tensor& gates, const Tensor& tc, Tensor dg, int64_t path,
                                         bool parallel) {
  Tensor d = rows_contiguous(d_out), e = d_hT.contiguous(), ec = d_cT.contiguous();
  check_deltas(dg, gates.sizes(), gates);
  Tensor dh0 = at::empty_like(e), dc0 = at::empty_like(ec);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward", [&] {
    over_rows(gates.size(1), parallel, [&](int64_t b0, int64_t b1) {
      lstm_backward_rows<scalar_t>(b0, b1, d, e, ec, w_hh, cs, gates, tc, dg, dh0, dc0, path);
    });
  });
  return {dh0, dc0};
}

}  // namespace

TORCH_LIBRARY(rnn_train_kernels, m) {
  m.def("blas_available() -> bool", [] { return blas_available(); });
  m.def("rnn_forward(Tensor gx, Tensor h0, Tensor w_hh, bool relu, int path, bool parallel) -> Tensor", &rnn_forward);
  m.def("rnn_backward(Tensor d_out, Tensor d_hT, Tensor w_hh, Tensor hs, Tensor(a!) da, bool relu, int path, "
        "bool parallel) -> Tensor",
        &rnn_backward);
  m.def("gru_forward(Tensor(a!) gx, Tensor h0, Tensor w_hh, Tensor b_hn, int path, bool parallel) -> (Tensor, Tensor)",
        &gru_forward);
  m.def("gru_backward(Tensor d_out, Tensor d_hT, Tensor w_hh, Tensor hs, Tensor gates, Tensor n, Tensor(a!) dgh, "
        "Tensor(b!) dgi, int path, bool parallel) -> Tensor",
        &gru_backward);
  m.def("lstm_forward(Tensor(a!) gx, Tensor h0, Tensor c0, Tensor w_hh, int path, bool parallel) "
        "-> (Tensor, Tensor, Tensor)",
        &lstm_forward);
  m.def("lstm_backward(Tensor d_out, Tensor d_hT, Tensor d_cT, Tensor w_hh, Tensor cs, Tensor gates, Tensor tc, "
        "Tensor(a!) dg, int path, bool parallel) -> (Tensor, Tensor)",
        &lstm_backward);
}
