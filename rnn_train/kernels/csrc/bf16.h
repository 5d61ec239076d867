// Matrix products in bfloat16 with float32 sums, on Intel's AMX tiles: the C++ loop's step GEMM
// path kBf16 and the all-steps GEMMs of a layer training in bf16 (train.precision=bf16); the
// generation steps' bf16 path (decode.cpp) uses the tile set-up and the product below too.
//
// Why: a time step multiplies a few batch rows by W_hh (16 per thread at B=32 on two threads).
// In float32 tiled.h's register tiles reach ~115 GFLOP/s per core on those shapes; one AMX
// instruction (TDPBF16PS) multiplies a 16 x 32 bf16 block by a 32 x 16 one into 16 x 16 float32
// sums, and on the Xeon of docs/kernels.md the step products below ran at 240-300 G
// multiply-adds/s per core (CPU time), 4-5x the float32 tiles. Everything else stays float32:
// the states, the gates and the cell's arithmetic (cells.h), the deltas, and the sums inside each
// product; only the two operands of a product are rounded to bf16 (8 bits of mantissa, to
// nearest even), as torch.autocast does for a matrix product. The results are float32, where
// autocast would round them to bf16 as well.
//
// Layout. An AMX product C[16, 16] += A[16, 32] B[32, 16] reads A as 16 rows of 32 bf16 and B in
// the "VNNI" order: 16 rows, row i holding the pairs (B[2i, n], B[2i+1, n]) for n = 0..15. A
// weight is packed once per call into such B blocks, each 1 KiB and contiguous (loading a block
// straight from W's own rows, 4 KiB apart, made the loads alias in the L1 cache and halved the
// rate); the rows of a step's A are rounded into a zero-padded [16i, 32j] buffer before the product.
//
// Built only where the compiler targets AMX-BF16 and AVX512-BF16 (-march=native on such a CPU);
// elsewhere `bf16_available()` is false and the Python side never asks for kBf16 (the packing
// below still compiles, in plain C++, so that the loops need no #if). Linux makes a process ask
// for the tile registers once (arch_prctl), which `bf16_available()` does.
#pragma once

#include <vector>

#include "common.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__linux__)
#define RNN_KERNELS_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define RNN_KERNELS_AMX 0
#endif

namespace rnn_kernels {

constexpr int64_t kAmxRows = 16, kAmxK = 32, kAmxCols = 16, kAmxBlock = kAmxK * kAmxCols;  // bf16 per B block
constexpr int kAmxTiles = 4;  // C tiles of one step product: 4 x 16 columns (tmm0-3; A in tmm4, B in tmm5-7)

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// ------------------------------------------------------------------------------------------ rounding

// float -> bf16 bits, to nearest even (what the hardware's conversion does; NaN stays NaN)
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// Two runs of n <= 16 floats -> 16 32-bit words, word j = (bf16 of lo[j], bf16 of hi[j]): one row of
// a VNNI block (lo, hi: rows 2i and 2i+1 of B) or 16 pairs of a row of A. Past n: zero.
inline void round_pairs(const float* lo, const float* hi, int64_t n, uint32_t* out) {
#if RNN_KERNELS_AMX
  const __mmask16 m = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
  const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m, hi), _mm512_maskz_loadu_ps(m, lo));
  // v holds lo[0..15] then hi[0..15]; interleave them
  const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21,
                                         5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  _mm512_storeu_si512(out, _mm512_permutexvar_epi16(order, (__m512i)v));
#else
  for (int64_t j = 0; j < 16; ++j)
    out[j] = j < n ? uint32_t(to_bf16(lo[j])) | uint32_t(to_bf16(hi[j])) << 16 : 0u;
#endif
}

// n <= 32 consecutive floats -> n bf16 (past n: zero, up to 32).
inline void round_run(const float* src, int64_t n, uint16_t* out) {
#if RNN_KERNELS_AMX
  const __mmask16 lo = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
  const __mmask16 hi = n >= 32 ? __mmask16(0xffff) : n <= 16 ? __mmask16(0) : __mmask16((1u << (n - 16)) - 1);
  const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, src + 16), _mm512_maskz_loadu_ps(lo, src));
  _mm512_storeu_si512(out, (__m512i)v);
#else
  for (int64_t j = 0; j < 32; ++j) out[j] = j < n ? to_bf16(src[j]) : 0;
#endif
}

// dst[c * ds + r] = src[r * ss + c] for a 16 x 16 block of 32-bit words (bf16 pairs): in registers,
// 32-bit then 64-bit interleaves, then two rounds of 128-bit lane shuffles.
inline void transpose_words(const uint32_t* src, int64_t ss, uint32_t* dst, int64_t ds) {
#if RNN_KERNELS_AMX
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_castsi512_ps(_mm512_loadu_si512(src + i * ss));
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
    const __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int h = 0; h < 16; h += 8)
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
    }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_si512(dst + i * ds, _mm512_castps_si512(r[i]));
#else
  for (int64_t r = 0; r < 16; ++r)
    for (int64_t c = 0; c < 16; ++c) dst[c * ds + r] = src[r * ss + c];
#endif
}

// ------------------------------------------------------------------------------------------ A rows

// A [M, K] float32, rows `ld` apart -> bf16 rows [M][Kp] (Kp = K rounded up to 32; the padding is zero).
inline void round_rows(int64_t M, int64_t K, const float* src, int64_t ld, uint16_t* dst, int64_t Kp) {
  for (int64_t r = 0; r < M; ++r)
    for (int64_t k = 0; k < Kp; k += kAmxK) round_run(src + r * ld + k, std::min<int64_t>(kAmxK, K - k), dst + r * Kp + k);
}

// The same for A given by columns: A[m, k] = src[k * ld + m] (a transposed view, as dW's Y^T).
// 16 rows x 32 columns at a time: the column pairs as VNNI words, then a word transpose. The
// columns are read along their length (32 sequential streams), not 16 floats from each of
// thousands of columns: those are 4-8 KiB apart and thrashed the cache (twice the time).
inline void round_columns(int64_t M, int64_t K, const float* src, int64_t ld, uint16_t* dst, int64_t Kp) {
  const std::vector<float> zeros(16, 0.0f);
  uint32_t pairs[16 * 16];
  for (int64_t k0 = 0; k0 < Kp; k0 += kAmxK)
    for (int64_t m0 = 0; m0 < M; m0 += 16) {
      const int64_t n = std::min<int64_t>(16, M - m0);
      for (int64_t i = 0; i < 16; ++i) {  // pairs[i][m] = (A[m, k0 + 2i], A[m, k0 + 2i + 1])
        const int64_t k = k0 + 2 * i;
        round_pairs(k < K ? src + k * ld + m0 : zeros.data(), k + 1 < K ? src + (k + 1) * ld + m0 : zeros.data(), n,
                    pairs + i * 16);
      }
      if (n == 16) {  // straight into the 16 rows of dst: word i of row m
        transpose_words(pairs, 16, reinterpret_cast<uint32_t*>(dst + m0 * Kp + k0), Kp / 2);
        continue;
      }
      uint32_t block[16 * 16];
      transpose_words(pairs, 16, block, 16);  // block[m][i]
      for (int64_t m = 0; m < n; ++m) std::memcpy(dst + (m0 + m) * Kp + k0, block + m * 16, 64);
    }
}

// ------------------------------------------------------------------------------------------ B blocks

// B [K, N] -> bf16 VNNI blocks [Np/16][Kp/32][16][32] (Kp, Np: K and N rounded up to 32 and to
// n_padded's multiple of 16; rows past K and columns past N are zero). B is given either by
// columns, col(n) -> K contiguous floats (null: a zero column), or by rows, row(k) -> N contiguous
// floats; both are converted 32 or 16 floats at a time. Blocks of 16 columns over the threads.
template <typename Col>
at::Tensor pack_columns(int64_t K, int64_t N, int64_t n_padded, const Col& col) {
  const int64_t Kp = round_up(K, kAmxK), kb = Kp / kAmxK, nb = round_up(n_padded, kAmxCols) / kAmxCols;
  at::Tensor out = at::empty({nb * kb * kAmxBlock}, at::TensorOptions().dtype(at::kBFloat16));
  auto* o = reinterpret_cast<uint32_t*>(out.data_ptr());
  at::parallel_for(0, nb, 1, [&](int64_t begin, int64_t end) {
    uint32_t words[16 * 16];  // words[n][i] = (B[k0 + 2i, n], B[k0 + 2i + 1, n])
    for (int64_t j = begin; j < end; ++j)
      for (int64_t k0 = 0; k0 < Kp; k0 += kAmxK) {
        for (int64_t c = 0; c < kAmxCols; ++c) {
          const float* p = j * kAmxCols + c < N ? col(j * kAmxCols + c) : nullptr;
          if (p == nullptr) {
            std::memset(words + c * 16, 0, 64);
          } else {
            round_run(p + k0, std::min<int64_t>(kAmxK, K - k0), reinterpret_cast<uint16_t*>(words + c * 16));
          }
        }
        transpose_words(words, 16, o + (j * kb + k0 / kAmxK) * kAmxBlock / 2, 16);
      }
  });
  return out;
}

// (pack_rows reads each pair of rows along its length: reading 16 floats from each of thousands of
// rows 2-8 KiB apart, block by block, thrashed the cache.)
template <typename Row>
at::Tensor pack_rows(int64_t K, int64_t N, int64_t n_padded, const Row& row) {
  const int64_t Kp = round_up(K, kAmxK), kb = Kp / kAmxK, nb = round_up(n_padded, kAmxCols) / kAmxCols;
  at::Tensor out = at::empty({nb * kb * kAmxBlock}, at::TensorOptions().dtype(at::kBFloat16));
  auto* o = reinterpret_cast<uint32_t*>(out.data_ptr());
  at::parallel_for(0, Kp / 2, 16, [&](int64_t begin, int64_t end) {
    const std::vector<float> zeros(16, 0.0f);
    for (int64_t i = begin; i < end; ++i) {  // rows 2i and 2i + 1
      const int64_t k = 2 * i;
      for (int64_t j = 0; j < nb; ++j) {
        const int64_t n0 = j * kAmxCols, n = std::max<int64_t>(0, std::min<int64_t>(kAmxCols, N - n0));
        const float* lo = k < K && n > 0 ? row(k) + n0 : zeros.data();
        const float* hi = k + 1 < K && n > 0 ? row(k + 1) + n0 : zeros.data();
        round_pairs(lo, hi, n, o + (j * kb + k / kAmxK) * kAmxBlock / 2 + (k % kAmxK) / 2 * 16);
      }
    }
  });
  return out;
}

// The forward's panels: every gate of PL = 16 * P consecutive units side by side, P = the unit
// blocks per gate that fill the kAmxTiles C tiles (so that a product's output row is a whole step
// of those units' gates, ready for cells.h, as in tiled.h's forward panels).
template <int G>
struct Bf16Forward {
  static_assert(G >= 1 && G <= kAmxTiles, "the bf16 forward holds every gate of a panel in the C tiles");
  static constexpr int P = kAmxTiles / G;
  static constexpr int64_t PL = P * kAmxCols;  // units per panel
  static constexpr int64_t W = G * PL;         // columns of a panel: the output row width
};

// W_hh [G*H, H] -> B = W_hh^T with its columns in panel order: column p*W + g*PL + j is unit p*PL + j
// of gate g, i.e. row g*H + p*PL + j of W_hh (contiguous in k).
template <int G>
at::Tensor pack_bf16_forward(const at::Tensor& w_hh) {
  using F = Bf16Forward<G>;
  const int64_t H = w_hh.size(1), np = (H + F::PL - 1) / F::PL;
  const float* w = w_hh.data_ptr<float>();
  return pack_columns(H, np * F::W, np * F::W, [&](int64_t n) -> const float* {
    const int64_t p = n / F::W, g = n % F::W / F::PL, u = p * F::PL + n % F::PL;
    return u < H ? w + (g * H + u) * H : nullptr;
  });
}

// W_hh [G*H, H] -> B = W_hh (K = G*H, N = H, padded to whole products of kAmxTiles * 16 columns).
inline at::Tensor pack_bf16_backward(const at::Tensor& w_hh) {
  const int64_t GH = w_hh.size(0), H = w_hh.size(1);
  const float* w = w_hh.data_ptr<float>();
  return pack_rows(GH, H, round_up(H, kAmxTiles * kAmxCols), [&](int64_t k) { return w + k * H; });
}

// ------------------------------------------------------------------------------------------ products

#if RNN_KERNELS_AMX

inline bool bf16_available() {
  static const bool ok = [] {
    constexpr long kRequestPermission = 0x1023, kTileData = 18;  // ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
    return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
  }();
  return ok;
}

struct TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Configures this thread's tile registers: tmm0-4 (the C tiles and A) `rows` rows of 64 bytes,
// tmm5-7 (B) 16 rows. A tile of fewer rows reads and computes only those (the generation steps of
// decode.cpp run a group of fewer than 16 rows so).
inline void configure_amx(int rows) {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = uint8_t(t < 5 ? rows : kAmxRows);
    cfg.colsb[t] = 64;
  }
  // GCC 12 does not know that ldtilecfg reads all 64 bytes and dropped the stores above without this
  // (seen in the generation steps)
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

// Releases the tile registers, so that the OS does not save 8 KiB of tile state at every context
// switch after.
inline void release_amx() { _tile_release(); }

// configure_amx(16) for a scope, release_amx() at its end.
class AmxScope {
 public:
  AmxScope() { configure_amx(kAmxRows); }
  ~AmxScope() { release_amx(); }
};

// out[16][NT * 16] (float32, row stride ldo) = A[16][Kp] (bf16, row stride lda) @ NT column blocks
// of B: block n's K-block k at b + k * ks + n * ns (the training products store a column block's
// K-blocks together, ks = kAmxBlock, ns = its length; the generation steps a K-block's column
// blocks together, ns = kAmxBlock). NT <= 4: C in tmm0-3, A in tmm4, B through tmm5-7 in turn (a
// load into the register the previous product still reads would wait for it).
template <int NT>
inline void amx_product(int64_t kb, const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ks, int64_t ns,
                        float* out, int64_t ldo) {
  static_assert(NT >= 1 && NT <= kAmxTiles, "1 to 4 C tiles");
  _tile_zero(0);
  if constexpr (NT > 1) _tile_zero(1);
  if constexpr (NT > 2) _tile_zero(2);
  if constexpr (NT > 3) _tile_zero(3);
  for (int64_t k = 0; k < kb; ++k) {
    _tile_loadd(4, a + k * kAmxK, lda * 2);
    const uint16_t* bk = b + k * ks;
    _tile_loadd(5, bk, 64);
    _tile_dpbf16ps(0, 4, 5);
    if constexpr (NT > 1) {
      _tile_loadd(6, bk + ns, 64);
      _tile_dpbf16ps(1, 4, 6);
    }
    if constexpr (NT > 2) {
      _tile_loadd(7, bk + 2 * ns, 64);
      _tile_dpbf16ps(2, 4, 7);
    }
    if constexpr (NT > 3) {
      _tile_loadd(5, bk + 3 * ns, 64);
      _tile_dpbf16ps(3, 4, 5);
    }
  }
  _tile_stored(0, out, ldo * 4);
  if constexpr (NT > 1) _tile_stored(1, out + kAmxCols, ldo * 4);
  if constexpr (NT > 2) _tile_stored(2, out + 2 * kAmxCols, ldo * 4);
  if constexpr (NT > 3) _tile_stored(3, out + 3 * kAmxCols, ldo * 4);
}

// C [32, 32] (float32, rows ldc apart) = A rows a0 (16) and a1 (16) [.][Kp] (bf16, lda) @ the two
// column blocks b0, b1 of B: 2 x 2 C tiles, so that every A and B tile loaded serves two products.
inline void amx_product_2x2(int64_t kb, const uint16_t* a0, const uint16_t* a1, int64_t lda, const uint16_t* b0,
                            const uint16_t* b1, float* c, int64_t ldc) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t k = 0; k < kb; ++k) {
    _tile_loadd(4, a0 + k * kAmxK, lda * 2);
    _tile_loadd(6, b0 + k * kAmxBlock, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, b1 + k * kAmxBlock, 64);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, a1 + k * kAmxK, lda * 2);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, ldc * 4);
  _tile_stored(1, c + kAmxCols, ldc * 4);
  _tile_stored(2, c + kAmxRows * ldc, ldc * 4);
  _tile_stored(3, c + kAmxRows * ldc + kAmxCols, ldc * 4);
}

#else

inline bool bf16_available() { return false; }

class AmxScope {};

template <int NT>
inline void amx_product(int64_t, const uint16_t*, int64_t, const uint16_t*, int64_t, int64_t, float*, int64_t) {
  TORCH_CHECK(false, "bf16 products are not built here");
}

inline void amx_product_2x2(int64_t, const uint16_t*, const uint16_t*, int64_t, const uint16_t*, const uint16_t*,
                            float*, int64_t) {
  TORCH_CHECK(false, "bf16 products are not built here");
}

#endif

// C[M, N] = A[M, K] @ Bt[N, K]^T in bf16 products with float32 sums and a float32 result: the
// all-steps GEMMs of the bf16 path (the input projection, the weight and input gradients). The
// operands are read in place whichever of their strides is 1 and rounded once, A into bf16 rows,
// B into VNNI blocks; then each task multiplies 32 rows by 32 columns (amx_product_2x2).
inline at::Tensor bf16_matmul(const at::Tensor& a_in, const at::Tensor& bt_in) {
  TORCH_CHECK(a_in.dim() == 2 && bt_in.dim() == 2 && a_in.size(1) == bt_in.size(1) &&
                  a_in.scalar_type() == at::kFloat && bt_in.scalar_type() == at::kFloat && a_in.device().is_cpu() &&
                  bt_in.device().is_cpu(),
              "bf16_matmul takes float32 CPU matrices [M, K] and [N, K]");
  const at::Tensor a = a_in.stride(1) == 1 || a_in.stride(0) == 1 ? a_in : a_in.contiguous();
  const at::Tensor bt = bt_in.stride(1) == 1 || bt_in.stride(0) == 1 ? bt_in : bt_in.contiguous();
  const int64_t M = a.size(0), K = a.size(1), N = bt.size(0), Kp = round_up(K, kAmxK), kb = Kp / kAmxK;
  at::Tensor c = at::empty({M, N}, a.options());
  if (M == 0 || N == 0) return c;
  if (K == 0) return c.zero_();
  const int64_t Mp = round_up(M, 2 * kAmxRows), Np = round_up(N, 2 * kAmxCols);
  std::vector<uint16_t> rows(Mp * Kp);
  std::memset(rows.data() + M * Kp, 0, sizeof(uint16_t) * (Mp - M) * Kp);
  const float* pa = a.data_ptr<float>();
  at::parallel_for(0, (M + kAmxRows - 1) / kAmxRows, 1, [&](int64_t begin, int64_t end) {
    const int64_t m0 = begin * kAmxRows, m1 = std::min(M, end * kAmxRows);
    if (a.stride(1) == 1) {
      round_rows(m1 - m0, K, pa + m0 * a.stride(0), a.stride(0), rows.data() + m0 * Kp, Kp);
    } else {
      round_columns(m1 - m0, K, pa + m0, a.stride(1), rows.data() + m0 * Kp, Kp);
    }
  });
  const float* pb = bt.data_ptr<float>();
  const int64_t s0 = bt.stride(0), s1 = bt.stride(1);
  const at::Tensor packed = s1 == 1 ? pack_columns(K, N, Np, [&](int64_t n) { return pb + n * s0; })
                                    : pack_rows(K, N, Np, [&](int64_t k) { return pb + k * s1; });
  const auto* blocks = reinterpret_cast<const uint16_t*>(packed.data_ptr());
  float* out = c.data_ptr<float>();
  const int64_t mt = Mp / (2 * kAmxRows), nt = Np / (2 * kAmxCols);
  at::parallel_for(0, mt * nt, 1, [&](int64_t begin, int64_t end) {
    const AmxScope amx;
    float edge[2 * kAmxRows * 2 * kAmxCols];
    for (int64_t task = begin; task < end; ++task) {
      // consecutive tasks share their rows of A (kept in cache) and walk the columns of B
      const int64_t m0 = task / nt * 2 * kAmxRows, n0 = task % nt * 2 * kAmxCols;
      const uint16_t* b0 = blocks + (n0 / kAmxCols) * kb * kAmxBlock;
      const bool whole = m0 + 2 * kAmxRows <= M && n0 + 2 * kAmxCols <= N;
      float* dst = whole ? out + m0 * N + n0 : edge;
      const int64_t ld = whole ? N : 2 * kAmxCols;
      amx_product_2x2(kb, rows.data() + m0 * Kp, rows.data() + (m0 + kAmxRows) * Kp, Kp, b0, b0 + kb * kAmxBlock, dst,
                      ld);
      if (!whole)
        for (int64_t m = m0; m < std::min(M, m0 + 2 * kAmxRows); ++m)
          std::memcpy(out + m * N + n0, edge + (m - m0) * ld, sizeof(float) * std::min(2 * kAmxCols, N - n0));
    }
  });
  return c;
}

// The step's rows of A rounded to bf16, 16 rows per product: [round_up(M, 16), Kp], zero padded.
class Bf16Rows {
 public:
  Bf16Rows(int64_t M, int64_t K) : M_(M), K_(K), Kp_(round_up(K, kAmxK)), data_(round_up(M, kAmxRows) * Kp_, 0) {}

  void fill(const float* src, int64_t ld) { round_rows(M_, K_, src, ld, data_.data(), Kp_); }
  const uint16_t* row(int64_t r) const { return data_.data() + r * Kp_; }
  int64_t stride() const { return Kp_; }
  int64_t kblocks() const { return Kp_ / kAmxK; }

 private:
  int64_t M_, K_, Kp_;
  std::vector<uint16_t> data_;
};

// The backward's step product of one block: C[M, U] += A[M, K] @ W_hh[:, the block's U units], A
// float32 rounded to bf16 here, W_hh given as pack_bf16_backward's blocks (U starting at unit 0).
class Bf16Product {
 public:
  Bf16Product(int64_t M, int64_t U, int64_t K, const uint16_t* packed)
      : M_(M), U_(U), a_(M, K), packed_(packed), out_(kAmxRows * kAmxTiles * kAmxCols) {}

  void add(const float* A, int64_t lda, float* C, int64_t ldc) {
    constexpr int64_t W = kAmxTiles * kAmxCols;
    a_.fill(A, lda);
    const int64_t kb = a_.kblocks(), bs = kb * kAmxBlock;
    for (int64_t c0 = 0; c0 < U_; c0 += W) {
      const int64_t n = std::min(W, U_ - c0);
      for (int64_t r0 = 0; r0 < M_; r0 += kAmxRows) {
        amx_product<kAmxTiles>(kb, a_.row(r0), a_.stride(), packed_ + (c0 / kAmxCols) * bs, kAmxBlock, bs,
                               out_.data(), W);
        const int64_t rows = std::min(kAmxRows, M_ - r0);
        for (int64_t r = 0; r < rows; ++r) {
          float* c = C + (r0 + r) * ldc + c0;
          const float* o = out_.data() + r * W;
          for (int64_t j = 0; j < n; ++j) c[j] += o[j];
        }
      }
    }
  }

 private:
  int64_t M_, U_;
  Bf16Rows a_;
  const uint16_t* packed_;
  std::vector<float> out_;
};

}  // namespace rnn_kernels
