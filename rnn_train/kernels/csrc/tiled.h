// The "tiled" per-step GEMM: a register-tiled product written for the shapes of one time step,
// with the weights packed once per call.
//
// Why: a step multiplies a few batch rows (16-32 per thread) by W_hh, 35 times in a row with the
// same W_hh. A BLAS library tunes for large matrices: on every call it repacks W_hh into its
// panel layout and its kernels are sized for many rows, so on these shapes MKL ran at ~78-90
// GFLOP/s per core where this loop runs at ~115 (benchmarks/tile_bench.py; docs/kernels.md).
// Here W_hh is packed ONCE per forward or backward call into column panels that a tile reads in
// order, and a tile keeps MR rows x NV vectors of results in registers for the whole K loop.
//
// Portable C++: GCC vector extensions, so the same source is AVX-512 code where the compiler
// targets AVX-512 (-march=native on such a CPU), AVX2 code on an AVX2 CPU, and plain SIMD or
// scalar code elsewhere; float and double alike (double gives the float64 gradient checks).
#pragma once

#include <vector>

#include "common.h"

namespace rnn_kernels {

#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;  // 32 vector registers: up to 24 accumulators
constexpr int kAccumulators = 24;
#else
constexpr int kVectorBytes = 32;  // AVX2 (and narrower): 16 vector registers, 12 accumulators
constexpr int kAccumulators = 12;
#endif

template <typename T>
constexpr int64_t lanes() {
  return kVectorBytes / sizeof(T);
}

// Rows of a tile whose panel is NV vectors wide: as many as the accumulator registers allow, at most 8.
constexpr int tile_rows(int NV) { return kAccumulators / NV < 8 ? kAccumulators / NV : 8; }

// c[MR rows, ldc apart][NV * L] (+)= A[MR, K] @ B[K, NV * L], where A's element (r, k) is
// a[r * ar + k * ak] and B's row k starts at b + k * bk: MR x NV vectors of C stay in registers
// for the whole K loop. The step product reads A by rows (ak = 1) and B as a packed panel; the
// weight gradient reads both operands in place (A = Y^T: ar = 1, ak = O), a few KB apart from one
// k to the next, which the hardware prefetchers do not follow across pages: with PD > 0 the loop
// asks for row k + PD of both while it multiplies row k (the sums, hence the bits, are the same).
template <typename T, int MR, int NV, int PD = 0>
struct Tile {
  static constexpr int L = lanes<T>();
  static constexpr int W = NV * L;  // columns of a panel
  typedef T V __attribute__((vector_size(kVectorBytes)));

  static void product(int64_t K, const T* __restrict a, int64_t ar, int64_t ak, const T* __restrict b, int64_t bk,
                      T* __restrict c, int64_t ldc, bool accumulate) {
    V acc[MR][NV];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        acc[r][v] = V{};
        if (accumulate) std::memcpy(&acc[r][v], c + r * ldc + v * L, sizeof(V));
      }
    for (int64_t k = 0; k < K; ++k) {
      if constexpr (PD > 0) {
        __builtin_prefetch(a + (k + PD) * ak);
        __builtin_prefetch(a + (MR - 1) * ar + (k + PD) * ak);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) __builtin_prefetch(b + (k + PD) * bk + v * L);
      }
      V x[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) std::memcpy(&x[v], b + k * bk + v * L, sizeof(V));
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const T y = a[r * ar + k * ak];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[r][v] += x[v] * y;
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) std::memcpy(c + r * ldc + v * L, &acc[r][v], sizeof(V));
  }
};

// c[rows, ldc apart] (+)= A[rows, lda apart][0..K) @ panel[K][NV * L] for 1 <= rows <= MR, on a tile
// of exactly `rows` rows. A row's arithmetic is the same on a tile of any height, so its numbers do
// not depend on which tile holds it (the generation steps' batch invariance, decode.cpp), and the
// rows past a batch's last full tile cost what they compute (zero-padded to a full tile, the
// backward's 12-row tile ran [16x256]@[256x1024] at 60 G multiply-adds/s on one core of the Xeon
// of docs/kernels.md; on exact tiles, 89). The panel's rows are `ldb` apart (default NV * L): a
// tile may take the first vectors of a wider panel (a column's sum is the same on any width).
template <typename T, int NV, int MR>
inline void product_rows(int64_t rows, int64_t K, const T* a, int64_t lda, const T* panel, T* c, int64_t ldc,
                         bool accumulate, int64_t ldb = NV * lanes<T>()) {
  if constexpr (MR > 1) {
    if (rows < MR) {
      product_rows<T, NV, MR - 1>(rows, K, a, lda, panel, c, ldc, accumulate, ldb);
      return;
    }
  }
  Tile<T, MR, NV>::product(K, a, lda, 1, panel, ldb, c, ldc, accumulate);
}

// The tile shapes: the forward's panel holds every gate of P*L consecutive units (so a tile
// row is a whole step of those units' gates, ready for cells.h), NV = G*P vectors; the
// backward's panel is NV consecutive units of dL/dh_{t-1}.
template <int G>
struct ForwardTile {
  static constexpr int P = G == 1 ? 3 : 1;  // unit vectors per gate
  static constexpr int NV = G * P;
  static constexpr int MR = tile_rows(NV);
};
constexpr int kBackwardNV = kVectorBytes == 64 ? 2 : 3;
constexpr int kBackwardMR = tile_rows(kBackwardNV);

// Units per packed panel of W_hh: the forward's (every gate of them in one tile) and the backward's.
template <typename T, int G>
constexpr int64_t forward_panel_units() { return ForwardTile<G>::P * lanes<T>(); }
template <typename T>
constexpr int64_t backward_panel_units() { return kBackwardNV * lanes<T>(); }

// A weight gradient summed over all steps: C[O, D] = Y^T X for row-major Y [N, O] (deltas) and
// X [N, D] (inputs or states), N = T*B. Why not one BLAS call: on these shapes (O, D ~ 10^2-10^3,
// N ~ 10^3) MKL ran at ~180 GFLOP/s on two cores where these tiles run at ~210 (docs/kernels.md).
// Tiles of C rows are split over torch's threads; the N rows are taken in chunks small enough
// for a thread's share of Y, X and C to stay in its L2 cache. The edges of C that do not fill a
// tile run through zero-padded copies of Y's last columns and X's last columns, so that every
// product is a tile (a plain loop there cost 4x the whole GEMM where W does not divide D).
template <typename T>
void weight_grad_tiled(int64_t N, int64_t O, int64_t D, const T* Y, const T* X, T* C) {
  // AVX-512: 6 x 4 vectors (64 floats: divides widths of 2^k from 64); AVX2: 6 x 2. Row k + 6 is
  // prefetched; the tile, the distance and the chunk KC were measured on the Xeon of docs/kernels.md
  constexpr int NV = kVectorBytes == 64 ? 4 : 2, MR = tile_rows(NV);
  using TL = Tile<T, MR, NV, 6>;
  constexpr int64_t W = TL::W, KC = 128;
  const int64_t row_tiles = (O + MR - 1) / MR, full_rows = O / MR * MR, full_cols = D / W * W;
  std::vector<T> y_edge, x_edge;  // [N, MR] and [N, W]
  if (full_rows < O) {
    y_edge.assign(N * MR, T(0));
    for (int64_t k = 0; k < N; ++k)
      for (int64_t r = 0; r < O - full_rows; ++r) y_edge[k * MR + r] = Y[k * O + full_rows + r];
  }
  if (full_cols < D) {
    x_edge.assign(N * W, T(0));
    for (int64_t k = 0; k < N; ++k) std::memcpy(x_edge.data() + k * W, X + k * D + full_cols, sizeof(T) * (D - full_cols));
  }
  at::parallel_for(0, row_tiles, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> out(MR * W, T(0));
    for (int64_t k0 = 0; k0 < N; k0 += KC) {
      const int64_t kn = std::min(KC, N - k0);
      for (int64_t i = t0; i < t1; ++i) {
        const int64_t r0 = i * MR, rows = std::min<int64_t>(MR, O - r0);
        const T* a = rows == MR ? Y + k0 * O + r0 : y_edge.data() + k0 * MR;
        const int64_t ak = rows == MR ? O : MR;  // A = Y^T: its row r is a column of Y
        for (int64_t c0 = 0; c0 < D; c0 += W) {
          const int64_t n = std::min(W, D - c0);
          const T* b = n == W ? X + k0 * D + c0 : x_edge.data() + k0 * W;
          const int64_t ldb = n == W ? D : W;
          if (rows == MR && n == W) {
            TL::product(kn, a, 1, ak, b, ldb, C + r0 * D + c0, D, k0 > 0);
            continue;
          }
          if (k0 > 0)
            for (int64_t r = 0; r < rows; ++r) std::memcpy(out.data() + r * W, C + (r0 + r) * D + c0, sizeof(T) * n);
          TL::product(kn, a, 1, ak, b, ldb, out.data(), W, k0 > 0);
          for (int64_t r = 0; r < rows; ++r) std::memcpy(C + (r0 + r) * D + c0, out.data() + r * W, sizeof(T) * n);
        }
      }
    }
  });
}

// W_hh [G*H, H] -> forward panels [ceil(H/PL), H, G, PL] (PL = P*L units per panel; units past
// H are zero): panel p, row k holds W_hh[g*H + p*PL + j, k] for every gate g and j < PL.
// A transpose of PL x H blocks, one (panel, gate) per task over torch's threads.
template <typename T>
at::Tensor pack_forward(const at::Tensor& w_hh, int64_t G, int64_t PL) {
  const int64_t H = w_hh.size(1), np = (H + PL - 1) / PL;
  at::Tensor out = np * PL == H ? at::empty({np, H, G, PL}, w_hh.options()) : at::zeros({np, H, G, PL}, w_hh.options());
  const T* w = w_hh.data_ptr<T>();
  T* o = out.data_ptr<T>();
  at::parallel_for(0, np * G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t pg = begin; pg < end; ++pg) {
      const int64_t p = pg / G, g = pg % G, n = std::min(PL, H - p * PL);
      const T* src = w + (g * H + p * PL) * H;  // the block's first row of W_hh
      T* dst = o + p * H * G * PL + g * PL;
      for (int64_t k = 0; k < H; ++k)
        for (int64_t j = 0; j < n; ++j) dst[k * G * PL + j] = src[j * H + k];
    }
  });
  return out;
}

// W_hh [G*H, H] -> backward panels [ceil(H/WB), G*H, WB]: panel p, row k holds W_hh[k, p*WB + j].
inline at::Tensor pack_backward(const at::Tensor& w_hh, int64_t WB) {
  const int64_t GH = w_hh.size(0), H = w_hh.size(1), np = (H + WB - 1) / WB;
  // [G*H, np*WB]: zero columns only where H is not a multiple of WB (padding by none still copies)
  const at::Tensor w = np * WB == H ? w_hh : at::constant_pad_nd(w_hh, {0, np * WB - H});
  return w.view({GH, np, WB}).permute({1, 0, 2}).contiguous();
}

// The backward's step product of one block: C[M, U] += A[M, K] @ W_hh[:, the block's U units],
// W_hh given as pack_backward's panels, starting at the block's first unit (a multiple of WB).
template <typename T>
class TiledProduct {
 public:
  using TL = Tile<T, kBackwardMR, kBackwardNV>;

  TiledProduct(int64_t M, int64_t U, int64_t K, const T* panels)
      : M_(M), U_(U), K_(K), panels_(panels), out_(kBackwardMR * TL::W) {}

  void add(const T* A, int64_t lda, T* C, int64_t ldc) {
    for (int64_t c0 = 0; c0 < U_; c0 += TL::W) {
      const int64_t n = std::min<int64_t>(TL::W, U_ - c0);
      const T* panel = panels_ + (c0 / TL::W) * K_ * TL::W;
      for (int64_t r0 = 0; r0 < M_; r0 += kBackwardMR) {
        const int64_t rows = std::min<int64_t>(kBackwardMR, M_ - r0);
        product_rows<T, kBackwardNV, kBackwardMR>(rows, K_, A + r0 * lda, lda, panel, out_.data(), TL::W, false);
        for (int64_t r = 0; r < rows; ++r) {
          T* c = C + (r0 + r) * ldc + c0;
          const T* o = out_.data() + r * TL::W;
          for (int64_t j = 0; j < n; ++j) c[j] += o[j];
        }
      }
    }
  }

 private:
  int64_t M_, U_, K_;
  const T* panels_;
  std::vector<T> out_;
};

}  // namespace rnn_kernels
