// What every time loop of recurrence.cpp uses: the per-step GEMM, exp / sigmoid / tanh that the
// compiler can vectorise, and how the work of one loop is split over threads.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>

// The Fortran BLAS that torch links (MKL in the x86 wheels), if the loaded torch exports it; weak,
// so that a torch without it still loads this library and the ATen GEMM path is used instead.
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*, const int*,
            const double*, const int*, const double*, double*, const int*) __attribute__((weak));
// MKL's C entry point (mkl_service.h maps mkl_set_num_threads_local to it; the lowercase symbol
// itself is the Fortran one, which takes a pointer).
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
}

namespace rnn_kernels {

using at::Tensor;

// ------------------------------------------------------------------------------------------ GEMM

// Per-step GEMM paths: kBlas calls the Fortran BLAS directly; kAten goes through torch.mm (for a
// torch whose BLAS is not exported); kTiled is tiled.h's register-tiled loop with W_hh packed
// once per call (needs no BLAS; batch rows, whole panels of units or one block per thread); kBf16 is
// the same loop with bf16.h's bf16 products (AMX; float32 only, where built). (MKL's
// packed-weight API measured no faster than kBlas in docs/kernels.md, so it is not here.)
enum GemmPath : int64_t { kBlas = 0, kAten = 1, kTiled = 2, kBf16 = 3 };

inline bool blas_available() { return sgemm_ != nullptr && dgemm_ != nullptr; }

inline void fortran_gemm(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float beta, float* c,
                         int ldc) {
  const float one = 1.0f;
  const char no = 'N';
  sgemm_(&no, &no, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
}

inline void fortran_gemm(int m, int n, int k, const double* a, int lda, const double* b, int ldb, double beta,
                         double* c, int ldc) {
  const double one = 1.0;
  const char no = 'N';
  dgemm_(&no, &no, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
}

// The step GEMM of one time loop: row-major C[M, N] = A[M, K] @ W[K, N] (+ C when accumulating),
// rows `lda`, `ldw`, `ldc` apart, the same W and shapes at every step. Fortran BLAS is
// column-major, so it is asked for C^T = W^T A^T on the same memory ("N", "N"). The forward
// multiplies by W_hh^T laid out [H, G*H] once per call: the step GEMMs were ~5-8% faster that
// way than with BLAS transposing W_hh itself (docs/kernels.md).
template <typename T>
class StepGemm {
 public:
  StepGemm(int64_t path, int64_t M, int64_t N, int64_t K, const T* W, int64_t ldw)
      : path_(path), M_(M), N_(N), K_(K), W_(W), ldw_(ldw) {}

  void operator()(const T* A, int64_t lda, T* C, int64_t ldc, bool accumulate) const {
    const T beta = accumulate ? T(1) : T(0);
    if (path_ == kBlas) {
      fortran_gemm((int)N_, (int)M_, (int)K_, W_, (int)ldw_, A, (int)lda, beta, C, (int)ldc);
      return;
    }
    auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
    Tensor a = at::from_blob(const_cast<T*>(A), {M_, K_}, {lda, 1}, opts);
    Tensor w = at::from_blob(const_cast<T*>(W_), {K_, N_}, {ldw_, 1}, opts);
    Tensor c = at::from_blob(C, {M_, N_}, {ldc, 1}, opts);
    if (accumulate) {
      c.addmm_(a, w);
    } else {
      at::mm_out(c, a, w);
    }
  }

 private:
  int64_t path_, M_, N_, K_;
  const T* W_;
  int64_t ldw_;
};

// ------------------------------------------------------------------------------------------ math
// exp as range reduction + Taylor polynomial, branch-free so that a loop calling it vectorises
// whole (with -fno-trapping-math for the clamp); about 1 ulp in float and double.

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

// ------------------------------------------------------------------------------------------ threads
// How one layer's time loop uses the threads torch is allowed (at::get_num_threads()):
//   kBlasThreads  one block, all rows and units; the BLAS library threads each step's GEMM
//   kRows         a block of batch rows per thread: the sequences are independent, so the
//                 threads never wait for each other, but each GEMM has only B/threads rows
//   kUnits        a block of hidden units per thread, all rows: full-height GEMMs (faster per
//                 multiply-add), but every step ends at a barrier, since the next step reads
//                 all units of h_t (forward) or of the step's deltas (backward); each thread
//                 reads only its units' share of W_hh, which can then stay in its core's L2
//                 (LSTM-512: 2 MB per thread of 4 MB, the tiled path's gain in docs/kernels.md)
// Which is fastest depends on the machine and the shapes: rnn_train/kernels/autotune.py measures.
enum Threads : int64_t { kBlasThreads = 0, kRows = 1, kUnits = 2 };

struct Block {
  int64_t b0, b1;  // batch rows
  int64_t u0, u1;  // hidden units
  bool sync;       // a barrier ends every step
};

struct BlasOnThisThread {  // the GEMMs of one block stay on the thread that runs the block
  int previous = 0;
  BlasOnThisThread() {
    if (MKL_Set_Num_Threads_Local != nullptr) previous = MKL_Set_Num_Threads_Local(1);
  }
  ~BlasOnThisThread() {
    if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(previous);
  }
};

constexpr int64_t kMinRows = 4, kMinUnits = 16;  // below this per thread, splitting costs more than it saves

inline int64_t chunk_start(int64_t n, int64_t parts, int64_t k, int64_t align) {
  const int64_t chunk = ((n + parts - 1) / parts + align - 1) / align * align;
  return std::min(n, k * chunk);
}

inline void step_barrier(const Block& blk) {
  if (blk.sync) {
#pragma omp barrier
  }
}

// Run f(Block) over the blocks of `mode`, one per thread. f must not throw where blocks
// synchronise (a thread that leaves early would leave the others at the barrier): the callers
// check everything first, and units mode runs with the BLAS and tiled paths only.
// In units mode each block but the last holds a multiple of `align` units (the tiled path's panels).
template <typename F>
void run_blocks(int64_t mode, int64_t B, int64_t H, const F& f, int64_t align = kMinUnits) {
  int64_t threads = mode == kBlasThreads ? 1 : at::get_num_threads();
  threads = std::min(threads, mode == kRows ? B / kMinRows : H / std::max(align, kMinUnits));
  if (threads <= 1) {
    f(Block{0, B, 0, H, false});
    return;
  }
  std::exception_ptr error;
#pragma omp parallel num_threads(threads)
  {
    BlasOnThisThread guard;
    const int64_t n = omp_get_num_threads(), k = omp_get_thread_num();
    Block blk{0, B, 0, H, mode == kUnits && n > 1};
    if (mode == kRows) {
      blk.b0 = chunk_start(B, n, k, 1);
      blk.b1 = chunk_start(B, n, k + 1, 1);
    } else {
      blk.u0 = chunk_start(H, n, k, align);
      blk.u1 = chunk_start(H, n, k + 1, align);
    }
    try {
      f(blk);
    } catch (...) {
#pragma omp critical
      error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace rnn_kernels
