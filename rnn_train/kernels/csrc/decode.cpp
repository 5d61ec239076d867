// Generation and scoring steps: a trained CharRNN run forward one character at a time for a batch
// of independent rows (samples, or segments of a text being scored), with no autograd and nothing
// kept for a backward pass.
//
// Why its own loop: the training forward (recurrence.cpp) packs W_hh on every call and keeps
// every step's gates, which is right for 35 steps of 32 rows and wrong for one step: called at
// T = 1 it cost 145-200 us, against 20 us for the NumPy stepper. Here the weights are packed ONCE
// per stepper (decode_pack_gates, decode_pack_decoder) and one call runs many steps: a whole chunk
// of sampling (choosing each character and feeding it back) or a whole scored segment, so the
// Python overhead is paid once per chunk, not per character.
//
// Batch invariance by construction: a tile of MR rows (tiled.h) computes each row with the same
// instruction sequence whatever the other rows, and a group of rows that does not fill a tile runs
// on a tile of exactly that many rows (not a zero-padded one), so a row's numbers do not depend on
// the batch size, on how the rows are split over threads or on which tile holds it: sample i of N
// is bit for bit sample i of any other N on one machine. Rows never wait for each other, so the
// threads take blocks of rows and run each for the whole call, with no barrier between steps.
//
// Per step and row tile, for each layer: for each panel of PL hidden units, the recurrent product
// [h, .] @ W_hh^T (and for layers above the first the input product h_below @ W_ih^T) of every gate
// of those units lands in a small buffer, and the cell's equations (PyTorch's, as in cells.h but
// without the values a backward needs) run on it at once. Layer 0's input projection of one-hot or
// embedded input is a row of `table` [V, G*H] (W_ih^T + b_ih, or E W_ih^T + b_ih). Then the decoder
// panels give the logits, and sampling / scoring reads them.
//
// Precision: float32 (or float64) by default, the products on tiled.h's register tiles. With the
// weights packed as bfloat16 (decode_pack_* with bf16=true, where the CPU has AMX tiles and the
// build targets them) the products of W_hh, W_ih and the decoder run on AMX tiles instead: bf16
// weights and bf16 copies of the states, float32 sums; the cells, the states and the logits stay
// float32. That is a precision choice (the probabilities move by ~1e-3, not 1e-5), made
// explicitly by whoever builds the stepper (predict.py --precision bf16), never silently.
//
// Sampling is choose.py's Gumbel-max draw, its noise made here from the row's counter-based random
// stream (splitmix64 of the row's key and the position), which choose.py computes alike in NumPy:
// a row's random numbers depend only on its key and its position, never on the batch or the path.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <omp.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#if defined(__AVX512F__)
// The cells' loops over a panel's units in 512-bit vectors: GCC's tuning for most AVX-512 CPUs
// prefers 256-bit ones for loops it vectorises itself, and the cells took ~14% of a GRU-256 step
// in them. Set here, before the project's headers, so their inline functions get it too.
#pragma GCC target("prefer-vector-width=512")
#endif

// The bf16 path needs AMX tiles and AVX512-BF16 where the build targets them (-march=native on such
// a CPU; not under the ATEN_CPU_CAPABILITY=avx2 cap) and, at run time, the kernel's permission to
// use the tile registers (the op bf16_available): bf16.h's, as the training products'.
#include "bf16.h"
#include "common.h"
#include "tiled.h"

namespace rnn_kernels {
namespace decode {

enum Cell : int64_t { kRnn = 0, kGru = 1, kLstm = 2 };  // rnn_train/prediction/kernel_stepper.py

constexpr int64_t gates_of(int64_t cell) { return cell == kRnn ? 1 : (cell == kGru ? 3 : 4); }
constexpr int kDecoderNV = 3;  // vectors per decoder panel: fits every cell's tile rows (tile_rows(3) >= MR)

// The tile of one cell: P vectors of units per gate (tiled.h's ForwardTile), NV = G * P vectors.
template <typename T, int G>
struct Shape {
  static constexpr int P = ForwardTile<G>::P;
  static constexpr int NV = ForwardTile<G>::NV;
  static constexpr int MR = ForwardTile<G>::MR;
  static constexpr int64_t PL = P * lanes<T>();  // units per panel
  static constexpr int64_t W = NV * lanes<T>();  // columns of a panel: every gate of PL units
};

template <typename T>
constexpr int64_t decoder_width() {
  return kDecoderNV * lanes<T>();
}

// ------------------------------------------------------------------------------------------ packing

// w [G*H, K] (PyTorch's gate rows), b [G*H] -> panels [np, K, G*PL], bias [np, G*PL]: panel p, row k
// holds w[g*H + p*PL + j, k] for each gate g and j < PL (zero past H), as tiled.h's pack_forward.
template <typename T, int G>
std::tuple<at::Tensor, at::Tensor> pack_gates_t(const at::Tensor& w, const at::Tensor& b) {
  using S = Shape<T, G>;
  const int64_t H = w.size(0) / G, K = w.size(1), np = (H + S::PL - 1) / S::PL;
  at::Tensor panels = at::zeros({np, K, G * S::PL}, w.options()), bias = at::zeros({np, G * S::PL}, w.options());
  const T* src = w.data_ptr<T>();
  const T* bs = b.data_ptr<T>();
  T* dst = panels.data_ptr<T>();
  T* bd = bias.data_ptr<T>();
  for (int64_t p = 0; p < np; ++p)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t j = 0; j < S::PL && p * S::PL + j < H; ++j) {
        const int64_t row = g * H + p * S::PL + j;
        bd[p * G * S::PL + g * S::PL + j] = bs[row];
        for (int64_t k = 0; k < K; ++k) dst[(p * K + k) * G * S::PL + g * S::PL + j] = src[row * K + k];
      }
  return {panels, bias};
}

std::tuple<at::Tensor, at::Tensor> pack_gates(const at::Tensor& w, const at::Tensor& b, int64_t cell) {
  const int64_t G = gates_of(cell);
  TORCH_CHECK(cell == kRnn || cell == kGru || cell == kLstm, "unknown cell id ", cell);
  TORCH_CHECK(w.dim() == 2 && w.size(0) % G == 0 && w.is_contiguous(), "w must be contiguous [G*H, K]");
  TORCH_CHECK(b.dim() == 1 && b.size(0) == w.size(0) && b.is_contiguous() && b.scalar_type() == w.scalar_type(),
              "b must be contiguous [G*H] of w's dtype");
  std::tuple<at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "decode_pack_gates", [&] {
    if (cell == kRnn) out = pack_gates_t<scalar_t, 1>(w, b);
    if (cell == kGru) out = pack_gates_t<scalar_t, 3>(w, b);
    if (cell == kLstm) out = pack_gates_t<scalar_t, 4>(w, b);
  });
  return out;
}

// w [V, H], b [V] -> panels [nd, H, WD], bias [nd * WD] (columns past V are zero; never read back).
std::tuple<at::Tensor, at::Tensor> pack_decoder(const at::Tensor& w, const at::Tensor& b) {
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "w must be contiguous [V, H]");
  TORCH_CHECK(b.dim() == 1 && b.size(0) == w.size(0) && b.is_contiguous() && b.scalar_type() == w.scalar_type(),
              "b must be contiguous [V] of w's dtype");
  std::tuple<at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "decode_pack_decoder", [&] {
    using T = scalar_t;
    const int64_t V = w.size(0), H = w.size(1), WD = decoder_width<T>(), nd = (V + WD - 1) / WD;
    at::Tensor panels = at::zeros({nd, H, WD}, w.options()), bias = at::zeros({nd * WD}, w.options());
    const T* src = w.data_ptr<T>();
    T* dst = panels.data_ptr<T>();
    for (int64_t v = 0; v < V; ++v)
      for (int64_t k = 0; k < H; ++k) dst[((v / WD) * H + k) * WD + v % WD] = src[v * H + k];
    std::memcpy(bias.data_ptr<T>(), b.data_ptr<T>(), sizeof(T) * V);
    out = {panels, bias};
  });
  return out;
}

// ------------------------------------------------------------------------------------------ cells
// R rows at once, a run of n units of each. x[i]: row i's input projection of unit 0 of gate 0,
// gates xs apart (with b_ih); q + i * qr: its recurrent projection (with b_hh), gates qs apart;
// h_prev + i * hr: h_{t-1}; c + i * hr: c (an LSTM's, in place); h + i * hr: h_t.
//
// Why R rows: a row's gates are a chain of dependent exp and divide steps (~150 cycles for a GRU
// unit vector), and the core overlaps chains only as far as it sees ahead. With the rows' statements
// interleaved in program order, 4 GRU rows at a time made a 1-thread 32-row GRU-256 sampling step
// ~4.5% faster (perf: step_group, mostly the cells, 14.6% -> 11.7% of the samples; kCellRows
// below). A row's arithmetic is the same for any R (each value is the same expression), so batch
// invariance holds (tests/test_sampling.py).

template <typename T, int R, typename N>
inline void rnn_cell(N n, const T* const* x, int64_t, const T* __restrict q, int64_t, int64_t qr,
                     const T* __restrict, T* __restrict, T* __restrict h, int64_t hr) {
  for (int64_t j = 0; j < n; ++j)
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) h[i * hr + j] = tanh_poly(x[i][j] + q[i * qr + j]);
}

template <typename T, int R, typename N>
inline void gru_cell(N n, const T* const* x, int64_t xs, const T* __restrict q, int64_t qs, int64_t qr,
                     const T* __restrict h_prev, T* __restrict, T* __restrict h, int64_t hr) {
  for (int64_t j = 0; j < n; ++j) {
    T r[R], z[R], nn[R];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) r[i] = sigmoid(x[i][j] + q[i * qr + j]);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) z[i] = sigmoid(x[i][xs + j] + q[i * qr + qs + j]);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) nn[i] = tanh_poly(x[i][2 * xs + j] + r[i] * q[i * qr + 2 * qs + j]);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) h[i * hr + j] = nn[i] + z[i] * (h_prev[i * hr + j] - nn[i]);
  }
}

template <typename T, int R, typename N>
inline void lstm_cell(N n, const T* const* x, int64_t xs, const T* __restrict q, int64_t qs, int64_t qr,
                      const T* __restrict, T* __restrict c, T* __restrict h, int64_t hr) {
  for (int64_t j = 0; j < n; ++j) {
    T in[R], f[R], g[R], o[R], cv[R];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) in[i] = sigmoid(x[i][j] + q[i * qr + j]);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) f[i] = sigmoid(x[i][xs + j] + q[i * qr + qs + j]);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) g[i] = tanh_poly(x[i][2 * xs + j] + q[i * qr + 2 * qs + j]);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) o[i] = sigmoid(x[i][3 * xs + j] + q[i * qr + 3 * qs + j]);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      cv[i] = f[i] * c[i * hr + j] + in[i] * g[i];
      c[i * hr + j] = cv[i];
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) h[i * hr + j] = o[i] * tanh_poly(cv[i]);
  }
}

template <typename T, int G, int R, typename N>
inline void cell_step(N n, const T* const* x, int64_t xs, const T* q, int64_t qs, int64_t qr, const T* h_prev, T* c,
                      T* h, int64_t hr) {
  if constexpr (G == 1) rnn_cell<T, R>(n, x, xs, q, qs, qr, h_prev, c, h, hr);
  if constexpr (G == 3) gru_cell<T, R>(n, x, xs, q, qs, qr, h_prev, c, h, hr);
  if constexpr (G == 4) lstm_cell<T, R>(n, x, xs, q, qs, qr, h_prev, c, h, hr);
}

// Rows per cell_step on a full panel, measured per cell (1 thread, 32 rows, CPU time per character
// against one row at a time): GRU 4 rows -4.5%, 8 rows +60% (spills); RNN 2 rows -2.5 to -4%, 4
// rows no gain; LSTM 2 rows no gain, 4 rows +50% (its five exps per unit hold more values per row).
template <int G>
constexpr int kCellRows = G == 3 ? 4 : (G == 1 ? 2 : 1);

// The cells of one panel's m rows: row r's input projection x_of(r) (gates xs apart), its recurrent
// projection at q + r * qr, its h_{t-1}, c and h_t at h_prev, c, h + r * hr. kCellRows rows at a
// time where the panel is full (n == PL, its loops unrolled at compile time), the rest one by one.
template <typename T, int G, int64_t PL, typename X>
inline void panel_cells(int64_t m, int64_t n, const X& x_of, int64_t xs, const T* q, int64_t qs, int64_t qr,
                        const T* h_prev, T* c, T* h, int64_t hr) {
  auto rows = [&](auto count, auto units, int64_t r) {
    constexpr int R = decltype(count)::value;
    const T* x[R];
    for (int i = 0; i < R; ++i) x[i] = x_of(r + i);
    cell_step<T, G, R>(units, x, xs, q + r * qr, qs, qr, h_prev + r * hr, c != nullptr ? c + r * hr : nullptr,
                       h + r * hr, hr);
  };
  const std::integral_constant<int64_t, PL> full{};
  int64_t r = 0;
  if (n == PL)
    for (; r + kCellRows<G> <= m; r += kCellRows<G>) rows(std::integral_constant<int, kCellRows<G>>{}, full, r);
  for (; r < m; ++r) {
    if (n == PL)
      rows(std::integral_constant<int, 1>{}, full, r);
    else
      rows(std::integral_constant<int, 1>{}, n, r);
  }
}

// ------------------------------------------------------------------------------------------ the network

// The packed weights, read from the op's weight list:
//   [table [Vin, G*H], dec [nd, H, WD], dec_bias [nd*WD],
//    then per layer l: w_hh panels [np, H, W], b_hh [np, W], and for l > 0 w_ih panels, b_ih]
template <typename T>
struct Net {
  int64_t G = 0, H = 0, layers = 0, V = 0, Vin = 0, np = 0, nd = 0;
  const T* table = nullptr;
  const T* dec = nullptr;
  const T* dec_bias = nullptr;
  std::vector<const T*> w_hh, b_hh, w_ih, b_ih;
};

template <typename T>
Net<T> read_net(const std::vector<at::Tensor>& w, int64_t cell, int64_t V) {
  Net<T> net;
  TORCH_CHECK(cell == kRnn || cell == kGru || cell == kLstm, "unknown cell id ", cell);
  TORCH_CHECK(w.size() >= 5 && (w.size() - 3) % 2 == 0, "weights: table, decoder, decoder bias, then the layers' panels");
  for (const auto& t : w)
    TORCH_CHECK(t.is_contiguous() && t.device().is_cpu() && t.scalar_type() == c10::CppTypeToScalarType<T>::value,
                "every weight must be a contiguous CPU tensor of the state's dtype");
  net.G = gates_of(cell);
  net.layers = ((int64_t)w.size() - 3 + 2) / 4;
  TORCH_CHECK((int64_t)w.size() == 3 + 2 + 4 * (net.layers - 1), "weights: 2 tensors for layer 0, 4 per later layer");
  const at::Tensor& table = w[0];
  TORCH_CHECK(table.dim() == 2 && table.size(1) % net.G == 0, "table must be [V, G*H]");
  net.H = table.size(1) / net.G;
  net.Vin = table.size(0);
  net.V = V;
  const int64_t WD = decoder_width<T>();
  net.nd = (V + WD - 1) / WD;
  TORCH_CHECK(w[1].dim() == 3 && w[1].size(0) == net.nd && w[1].size(1) == net.H && w[1].size(2) == WD,
              "decoder panels must be [", net.nd, ", ", net.H, ", ", WD, "] (decode_pack_decoder)");
  TORCH_CHECK(w[2].numel() == net.nd * WD, "decoder bias must hold ", net.nd * WD, " values");
  net.table = table.data_ptr<T>();
  net.dec = w[1].data_ptr<T>();
  net.dec_bias = w[2].data_ptr<T>();
  const int64_t P = net.G == 1 ? 3 : 1, PL = P * lanes<T>(), Wg = net.G * PL;
  net.np = (net.H + PL - 1) / PL;
  size_t i = 3;
  for (int64_t l = 0; l < net.layers; ++l) {
    const int pairs = l == 0 ? 1 : 2;
    for (int k = 0; k < pairs; ++k, i += 2) {
      TORCH_CHECK(w[i].dim() == 3 && w[i].size(0) == net.np && w[i].size(1) == net.H && w[i].size(2) == Wg,
                  "gate panels must be [", net.np, ", ", net.H, ", ", Wg, "] (decode_pack_gates)");
      TORCH_CHECK(w[i + 1].numel() == net.np * Wg, "gate bias panels must hold ", net.np * Wg, " values");
      (k == 0 ? net.w_hh : net.w_ih).push_back(w[i].data_ptr<T>());
      (k == 0 ? net.b_hh : net.b_ih).push_back(w[i + 1].data_ptr<T>());
    }
    if (l == 0) {
      net.w_ih.push_back(nullptr);
      net.b_ih.push_back(nullptr);
    }
  }
  return net;
}

// The state: h [layers, B, H] and, for an LSTM, c [layers, B, H]; read and written in place. Layer
// l's rows start `ls` values after layer l - 1's (B * H for a whole buffer, more for a view of its
// first B rows: KernelStepper.rows, which the server steps).
template <typename T>
struct State {
  T* h;
  T* c;  // null for cells without one
  int64_t B, ls;
  int64_t at(int64_t l, int64_t b, int64_t H) const { return l * ls + b * H; }  // offset of row b of layer l
};

// The rows [b0, b1) of one thread, as tiles of at most MR rows sized as evenly as possible, and
// the buffers one step of them needs.
template <typename T>
struct Group {
  int64_t b0, m;                            // first row, rows
  std::vector<std::pair<int64_t, int>> tiles;  // (offset in the group, rows)
  int64_t ld;                                // logits row length, nd*WD
  std::vector<T> gh, gi, hn, logits;         // [m, W], [m, W], [m, H], [m, ld]

  Group(int64_t b0_, int64_t b1, int64_t MR, int64_t W, int64_t H, int64_t nd)
      : b0(b0_), m(b1 - b0_), ld(nd * decoder_width<T>()), gh(m * W), gi(m * W), hn(m * H), logits(m * ld) {
    const int64_t count = (m + MR - 1) / MR;
    for (int64_t t = 0, start = 0; t < count; ++t) {
      const int rows = (int)(m / count + (t < m % count ? 1 : 0));
      tiles.emplace_back(start, rows);
      start += rows;
    }
  }
};

// out[m rows, ldc apart] += a[m rows, lda apart] @ panel [K, NV * L], tile by tile.
// (Taking k in passes of 64 or 128 over all the group's tiles, so that a pass's part of the panel
// stays in L1 for every tile, measured no faster: 1.02-1.05x, within noise, for a GRU-256.)
template <typename T, int NV, int MR>
void group_product(const Group<T>& grp, int64_t K, const T* a, int64_t lda, const T* panel, T* out, int64_t ldc,
                   int64_t ldb = NV * lanes<T>()) {
  for (const auto& [o, rows] : grp.tiles)
    product_rows<T, NV, MR>(rows, K, a + o * lda, lda, panel, out + o * ldc, ldc, true, ldb);
}

// One decoder panel [K, NV * L] of which the first `nv` vectors hold outputs (the last panel's
// columns past V are zeros): a tile of those vectors only. V = 66 in panels of 48 is 96 columns
// computed for 66 with full tiles, 80 this way; every logit's sum is the same.
template <typename T, int NV, int MR>
void decoder_panel(int64_t nv, const Group<T>& grp, int64_t K, const T* a, const T* panel, T* out, int64_t ldc) {
  if constexpr (NV > 1) {
    if (nv < NV) {
      decoder_panel<T, NV - 1, MR>(nv, grp, K, a, panel, out, ldc);
      return;
    }
  }
  group_product<T, NV, MR>(grp, K, a, K, panel, out, ldc, decoder_width<T>());
}

// One step of the group's rows: ids[r * ids_stride] is row r's input; the new state goes back
// into `st`; with `decode`, the logits of the new state into grp.logits [m, nd*WD].
template <typename T, int G>
void step_group(const Net<T>& net, State<T>& st, Group<T>& grp, const int64_t* ids, int64_t ids_stride, bool decode) {
  using S = Shape<T, G>;
  const int64_t H = net.H, m = grp.m;
  if (m <= 0) return;
  for (int64_t l = 0; l < net.layers; ++l) {
    T* h = st.h + st.at(l, grp.b0, H);
    T* c = st.c != nullptr ? st.c + st.at(l, grp.b0, H) : nullptr;
    const T* below = l > 0 ? st.h + st.at(l - 1, grp.b0, H) : nullptr;  // already at step t
    for (int64_t p = 0; p < net.np; ++p) {
      const int64_t u0 = p * S::PL, n = std::min<int64_t>(S::PL, H - u0);
      for (int64_t r = 0; r < m; ++r) std::memcpy(grp.gh.data() + r * S::W, net.b_hh[l] + p * S::W, sizeof(T) * S::W);
      group_product<T, S::NV, S::MR>(grp, H, h, H, net.w_hh[l] + p * H * S::W, grp.gh.data(), S::W);
      if (l > 0) {
        for (int64_t r = 0; r < m; ++r) std::memcpy(grp.gi.data() + r * S::W, net.b_ih[l] + p * S::W, sizeof(T) * S::W);
        group_product<T, S::NV, S::MR>(grp, H, below, H, net.w_ih[l] + p * H * S::W, grp.gi.data(), S::W);
      }
      const T* gi = grp.gi.data();
      const T* table = net.table + u0;
      auto x_of = [&](int64_t r) { return l > 0 ? gi + r * S::W : table + ids[r * ids_stride] * G * H; };
      panel_cells<T, G, S::PL>(m, n, x_of, l > 0 ? S::PL : H, grp.gh.data(), S::PL, S::W, h + u0,
                               c != nullptr ? c + u0 : nullptr, grp.hn.data() + u0, H);
    }
    std::memcpy(h, grp.hn.data(), sizeof(T) * m * H);
  }
  if (!decode) return;
  const int64_t WD = decoder_width<T>(), ld = net.nd * WD;
  const T* top = st.h + st.at(net.layers - 1, grp.b0, H);
  for (int64_t r = 0; r < m; ++r) std::memcpy(grp.logits.data() + r * ld, net.dec_bias, sizeof(T) * ld);
  for (int64_t d = 0; d < net.nd; ++d)
    decoder_panel<T, kDecoderNV, S::MR>((net.V - d * WD + lanes<T>() - 1) / lanes<T>(), grp, H, top,
                                         net.dec + d * H * WD, grp.logits.data() + d * WD, ld);
}

// ------------------------------------------------------------------------------------------ bf16 on AMX
// A tile register holds up to 16 rows of 64 bytes: C tiles 16 rows x 16 float32 sums, A tiles 16 rows
// x 32 bf16 of the states, B tiles 16 rows of 16 column pairs (VNNI: the bf16 of k and k+1 side by
// side). A panel is NT C tiles: every gate of UA units (16, or 64 for the one-gate RNN), as the
// float path's panels, so the cells read the same [gate][unit] layout. K is padded to whole
// 32-blocks with zeros. Rows of a tile are computed independently of each other, so the bf16
// path too gives a row the same numbers whatever the batch.

template <int G>
struct AmxShape {
  static constexpr int PA = G == 1 ? 4 : 1;  // 16-unit blocks per panel
  static constexpr int64_t UA = 16 * PA;     // units per panel
  static constexpr int NT = G * PA;          // C tiles per panel (<= 4)
  static constexpr int64_t WA = NT * 16;     // columns per panel
};
constexpr int64_t kDecoderTiles = 4;    // C tiles per decoder panel (64 columns)

inline int64_t k_blocks(int64_t K) { return (K + 31) / 32; }

// Columns [n0, n0 + 16 * tiles) of the product's B (column c holds the weights that give output c)
// as B tiles for every 32-block of k: [nkb, tiles, 16, 32] bf16 at dst.
template <typename Weight>
void pack_b_tiles(int64_t K, int64_t tiles, const Weight& weight, uint16_t* dst) {
  for (int64_t kb = 0; kb < k_blocks(K); ++kb)
    for (int64_t t = 0; t < tiles; ++t)
      for (int64_t kk = 0; kk < 32; ++kk)
        for (int64_t col = 0; col < 16; ++col) {
          const int64_t k = kb * 32 + kk;
          const float w = k < K ? weight(t * 16 + col, k) : 0.0f;
          dst[((kb * tiles + t) * 16 + kk / 2) * 32 + col * 2 + kk % 2] = to_bf16(w);
        }
}

template <int G>
std::tuple<at::Tensor, at::Tensor> pack_gates_bf16_t(const at::Tensor& w, const at::Tensor& b) {
  using A = AmxShape<G>;
  const int64_t H = w.size(0) / G, K = w.size(1), np = (H + A::UA - 1) / A::UA, nkb = k_blocks(K);
  at::Tensor panels = at::empty({np, nkb, A::NT, 16, 32}, w.options().dtype(at::kBFloat16));
  at::Tensor bias = at::zeros({np, A::WA}, w.options());
  const float* src = w.data_ptr<float>();
  const float* bs = b.data_ptr<float>();
  for (int64_t p = 0; p < np; ++p) {
    // output column c of the panel: gate c / UA, unit p * UA + c % UA
    auto weight = [&](int64_t c, int64_t k) {
      const int64_t g = c / A::UA, unit = p * A::UA + c % A::UA;
      return unit < H ? src[(g * H + unit) * K + k] : 0.0f;
    };
    pack_b_tiles(K, A::NT, weight, reinterpret_cast<uint16_t*>(panels.data_ptr()) + p * nkb * A::NT * kAmxBlock);
    for (int64_t c = 0; c < A::WA; ++c) {
      const int64_t g = c / A::UA, unit = p * A::UA + c % A::UA;
      bias.data_ptr<float>()[p * A::WA + c] = unit < H ? bs[g * H + unit] : 0.0f;
    }
  }
  return {panels, bias};
}

std::tuple<at::Tensor, at::Tensor> pack_decoder_bf16(const at::Tensor& w, const at::Tensor& b) {
  const int64_t V = w.size(0), H = w.size(1), nd = (V + 63) / 64, nkb = k_blocks(H);
  at::Tensor panels = at::empty({nd, nkb, kDecoderTiles, 16, 32}, w.options().dtype(at::kBFloat16));
  at::Tensor bias = at::zeros({nd * 64}, w.options());
  const float* src = w.data_ptr<float>();
  for (int64_t d = 0; d < nd; ++d) {
    auto weight = [&](int64_t c, int64_t k) { return d * 64 + c < V ? src[(d * 64 + c) * H + k] : 0.0f; };
    pack_b_tiles(H, kDecoderTiles, weight,
                 reinterpret_cast<uint16_t*>(panels.data_ptr()) + d * nkb * kDecoderTiles * kAmxBlock);
  }
  std::memcpy(bias.data_ptr<float>(), b.data_ptr<float>(), sizeof(float) * V);
  return {panels, bias};
}

// The bf16 network: panels as above, biases and the table in float32.
struct AmxNet {
  int64_t G = 0, H = 0, layers = 0, V = 0, Vin = 0, np = 0, nd = 0, nkb = 0;
  const float* table = nullptr;
  const uint16_t* dec = nullptr;
  const float* dec_bias = nullptr;
  std::vector<const uint16_t*> w_hh, w_ih;
  std::vector<const float*> b_hh, b_ih;
};

#if RNN_KERNELS_AMX
template <int NT>
inline void amx_product_upto(int tiles, int64_t nkb, const uint16_t* a, int64_t lda, const uint16_t* panel,
                             int64_t slots, float* out, int64_t ldo) {
  if constexpr (NT > 1) {
    if (tiles < NT) {
      amx_product_upto<NT - 1>(tiles, nkb, a, lda, panel, slots, out, ldo);
      return;
    }
  }
  amx_product<NT>(nkb, a, lda, panel, slots * kAmxBlock, kAmxBlock, out, ldo);
}
#endif

// One thread's rows for the bf16 path: tiles of 16 rows (the last one's extra rows are zero states
// whose results are never read), the states' bf16 copies and the float buffers.
struct AmxGroup {
  int64_t b0, m, rows, mp, kp, ld;  // first row, rows, rows per tile, m padded to whole tiles, K padded, logits row
  std::vector<uint16_t> a_rec, a_in;  // [mp, kp] bf16 copies of h and of the layer below's h
  std::vector<float> gh, gi, hn, logits;  // [mp, WA], [mp, WA], [m, H], [mp, ld]

  AmxGroup(int64_t b0_, int64_t b1, int64_t WA, int64_t H, int64_t nd)
      : b0(b0_), m(b1 - b0_), rows(std::min<int64_t>(16, b1 - b0_)), mp((m + 15) / 16 * 16), kp(k_blocks(H) * 32),
        ld(nd * 64), a_rec(mp * kp, 0), a_in(mp * kp, 0), gh(mp * WA), gi(mp * WA), hn(m * H), logits(mp * ld) {}
};

// bf16 copies of m rows of h [m, H] into a [., kp] (the padding stays zero).
inline void to_bf16_rows(const float* h, int64_t m, int64_t H, uint16_t* a, int64_t kp) {
  for (int64_t r = 0; r < m; ++r)
    for (int64_t k = 0; k < H; ++k) a[r * kp + k] = to_bf16(h[r * H + k]);
}

template <int G>
void step_group_amx(const AmxNet& net, State<float>& st, AmxGroup& grp, const int64_t* ids, int64_t ids_stride,
                    bool decode) {
#if RNN_KERNELS_AMX
  using A = AmxShape<G>;
  const int64_t H = net.H, m = grp.m, kp = grp.kp;
  if (m <= 0) return;
  for (int64_t l = 0; l < net.layers; ++l) {
    float* h = st.h + st.at(l, grp.b0, H);
    float* c = st.c != nullptr ? st.c + st.at(l, grp.b0, H) : nullptr;
    to_bf16_rows(h, m, H, grp.a_rec.data(), kp);
    if (l > 0) to_bf16_rows(st.h + st.at(l - 1, grp.b0, H), m, H, grp.a_in.data(), kp);
    for (int64_t p = 0; p < net.np; ++p) {
      const int64_t u0 = p * A::UA, n = std::min<int64_t>(A::UA, H - u0);
      for (int64_t t0 = 0; t0 < m; t0 += 16) {
        amx_product<A::NT>(net.nkb, grp.a_rec.data() + t0 * kp, kp, net.w_hh[l] + p * net.nkb * A::NT * kAmxBlock,
                           A::NT * kAmxBlock, kAmxBlock, grp.gh.data() + t0 * A::WA, A::WA);
        if (l > 0)
          amx_product<A::NT>(net.nkb, grp.a_in.data() + t0 * kp, kp, net.w_ih[l] + p * net.nkb * A::NT * kAmxBlock,
                             A::NT * kAmxBlock, kAmxBlock, grp.gi.data() + t0 * A::WA, A::WA);
      }
      const float* bh = net.b_hh[l] + p * A::WA;
      const float* bi = l > 0 ? net.b_ih[l] + p * A::WA : nullptr;
      for (int64_t r = 0; r < m; ++r) {  // the biases, then the cells as the float path's
        float* q = grp.gh.data() + r * A::WA;
        for (int64_t j = 0; j < A::WA; ++j) q[j] += bh[j];
        if (l > 0) {
          float* xi = grp.gi.data() + r * A::WA;
          for (int64_t j = 0; j < A::WA; ++j) xi[j] += bi[j];
        }
      }
      const float* gi = grp.gi.data();
      const float* table = net.table + u0;
      auto x_of = [&](int64_t r) { return l > 0 ? gi + r * A::WA : table + ids[r * ids_stride] * G * H; };
      panel_cells<float, G, A::UA>(m, n, x_of, l > 0 ? A::UA : H, grp.gh.data(), A::UA, A::WA, h + u0,
                                   c != nullptr ? c + u0 : nullptr, grp.hn.data() + u0, H);
    }
    std::memcpy(h, grp.hn.data(), sizeof(float) * m * H);
  }
  if (!decode) return;
  to_bf16_rows(st.h + st.at(net.layers - 1, grp.b0, H), m, H, grp.a_rec.data(), kp);
  for (int64_t d = 0; d < net.nd; ++d) {
    const int tiles = (int)std::min<int64_t>(kDecoderTiles, (net.V - d * 64 + 15) / 16);
    for (int64_t t0 = 0; t0 < m; t0 += 16)
      amx_product_upto<kDecoderTiles>(tiles, net.nkb, grp.a_rec.data() + t0 * kp, kp,
                                      net.dec + d * net.nkb * kDecoderTiles * kAmxBlock, kDecoderTiles,
                                      grp.logits.data() + t0 * grp.ld + d * 64, grp.ld);
  }
  for (int64_t r = 0; r < m; ++r)
    for (int64_t v = 0; v < net.V; ++v) grp.logits[r * grp.ld + v] += net.dec_bias[v];
#endif
}

// ------------------------------------------------------------------------------------------ engines
// What the ops run on: the float tiles or the AMX tiles. Each gives a thread's row group, runs a step
// of it, and says where a row's logits are; begin/end bracket a thread's work (the AMX tile config).

template <typename T, int G>
struct FloatEngine {
  const Net<T>& net;
  using Grp = Group<T>;
  using Scalar = T;
  static constexpr int64_t block = Shape<T, G>::MR;  // rows per block of work: one tile
  Grp group(int64_t b0, int64_t b1) const { return Grp(b0, b1, Shape<T, G>::MR, Shape<T, G>::W, net.H, net.nd); }
  void begin(const Grp&) const {}
  void end() const {}
  void step(State<T>& st, Grp& grp, const int64_t* ids, int64_t stride, bool decode) const {
    step_group<T, G>(net, st, grp, ids, stride, decode);
  }
};

template <int G>
struct AmxEngine {
  const AmxNet& net;
  using Grp = AmxGroup;
  using Scalar = float;
  static constexpr int64_t block = 16;  // one tile
  Grp group(int64_t b0, int64_t b1) const { return Grp(b0, b1, AmxShape<G>::WA, net.H, net.nd); }
  void begin(const Grp& grp) const {
#if RNN_KERNELS_AMX
    configure_amx((int)grp.rows);
#endif
  }
  void end() const {
#if RNN_KERNELS_AMX
    release_amx();
#endif
  }
  void step(State<float>& st, Grp& grp, const int64_t* ids, int64_t stride, bool decode) const {
    step_group_amx<G>(net, st, grp, ids, stride, decode);
  }
};

// ------------------------------------------------------------------------------------------ threads

// Run f(b0, b1) over the rows in blocks of at most `block` rows (sizes as even as possible; at least
// one block per thread where there are rows enough), handed to the threads one at a time as they
// come free. Rows are independent, so nothing waits between blocks; and where the machine is
// busy and one thread gets little CPU time, the other takes more blocks instead of waiting for
// it at the end of the call (a fixed half per thread made two threads slower than one there).
// `threads` 0 = torch's number of threads.
template <typename F>
void over_row_blocks(int64_t B, int64_t block, const F& f, int64_t threads = 0) {
  threads = std::min<int64_t>(threads > 0 ? threads : at::get_num_threads(), B);
  const int64_t blocks = std::max((B + block - 1) / block, threads);
  auto bounds = [&](int64_t i) { return i * (B / blocks) + std::min(i, B % blocks); };
  if (threads <= 1) {
    for (int64_t i = 0; i < blocks; ++i) f(bounds(i), bounds(i + 1));
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t i = 0; i < blocks; ++i) f(bounds(i), bounds(i + 1));
}

// ------------------------------------------------------------------------------------------ choosing

inline uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ULL;  // splitmix64's counter increment

// log x for a positive normal float, branch-free so that a loop calling it vectorises: x = m 2^e
// with m in [sqrt(1/2), sqrt(2)), log x = e ln2 + log1p(f), f = m - 1, and log1p(f) = f - f^2/2 +
// f^3 q(f), q a degree-8 polynomial fitted to it on that interval (<= 1.5 ulp against log).
inline float log_poly(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  int32_t e = ((bits >> 23) & 0xff) - 127;
  bits = (bits & 0x007fffff) | 0x3f800000;
  float m;
  std::memcpy(&m, &bits, sizeof m);  // [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1 : e;
  const float f = m - 1.0f, z = f * f;
  float q = 0.07055386900901794f;
  q = q * f - 0.11419478803873062f;
  q = q * f + 0.11628054827451706f;
  q = q * f - 0.12429936975240707f;
  q = q * f + 0.14254947006702423f;
  q = q * f - 0.16667811572551727f;
  q = q * f + 0.20000553131103516f;
  q = q * f - 0.24999995529651642f;
  q = q * f + 0.3333333134651184f;
  const float ef = (float)e;
  return ef * 0.693359375f + (ef * -2.12194440e-4f + (f + (-0.5f * z + z * f * q)));  // ln2 in two parts
}

// The Gumbel noise of one row for its character at `position`, times the row's temperature:
// g[v] = T * -log(-log(U_v)) with U_v from the row's counter-based stream
// (rnn_train/prediction/choose.py spells out the same numbers). Not inlined: the sampling chunk and
// the op decode_gumbel_noise (what Python adds where it chooses: filters, forced characters, the
// server) run this one compiled function, so their noise is the same to the bit.
__attribute__((noinline)) void gumbel_noise(uint64_t key, uint64_t position, int64_t V, float T,
                                            float* __restrict g) {
  const uint64_t first = position * (uint64_t)V + 1;
  for (int64_t v = 0; v < V; ++v) {
    const uint64_t z = splitmix64(key + (first + (uint64_t)v) * kGamma);
    const float u = ((float)(int32_t)(z >> 41) + 0.5f) * (1.0f / 8388608.0f);  // (k + 1/2) / 2^23, exact
    g[v] = T * -log_poly(-log_poly(u));
  }
}

// The first index of the largest l[v] + g[v] (g null: of l[v]): NumPy's argmax, and with the Gumbel
// noise g a draw from softmax(l) (the Gumbel-max trick). The largest value is found a vector at a
// time (a max is exact whatever the order, so it is the value a scan in order finds), then its first
// index; a scan keeping the best so far waits on each comparison (~5 cycles per logit, 4% of a GRU-256
// sampling step at 32 rows). A NaN as the first value wins as in that scan; NaNs elsewhere never do.
template <typename T>
int64_t first_max(const T* __restrict l, const float* __restrict g, int64_t V) {
  auto at = [&](int64_t v) { return g != nullptr ? l[v] + (T)g[v] : l[v]; };
  const T x0 = at(0);
  if (x0 != x0) return 0;
  T top = x0;
  int64_t v = 1;
  if constexpr (std::is_same_v<T, float>) {
    constexpr int64_t L = lanes<float>();
    typedef float Vec __attribute__((vector_size(kVectorBytes)));
    if (V >= L) {
      Vec best, x, noise{};
      std::memcpy(&best, l, sizeof best);
      if (g != nullptr) std::memcpy(&noise, g, sizeof noise);
      best += noise;
      for (v = L; v + L <= V; v += L) {
        std::memcpy(&x, l + v, sizeof x);
        if (g != nullptr) std::memcpy(&noise, g + v, sizeof noise);
        x += noise;
        best = x > best ? x : best;
      }
      for (int64_t i = 0; i < L; ++i) top = best[i] > top ? best[i] : top;
    }
  }
  for (; v < V; ++v) top = at(v) > top ? at(v) : top;
  for (v = 0; v < V; ++v)
    if (at(v) == top) return v;
  return 0;
}

// Logits of the tile's row r into out (V values), <unk> (index 0) set to unk_logit.
template <typename T>
inline void emit_logits(const T* src, int64_t V, std::optional<double> unk, T* out) {
  std::copy(src, src + V, out);
  if (unk.has_value()) out[0] = (T)*unk;
}

struct RowChoice {  // per row: the temperature (0 = greedy), RNG key and position
  const double* temperature;
  const int64_t* keys;
  const int64_t* counters;
};

// ------------------------------------------------------------------------------------------ ops

template <typename T>
State<T> read_state(const at::Tensor& h, const std::optional<at::Tensor>& c, int64_t layers, int64_t H, int64_t cell) {
  // [layers, B, H] with rows contiguous within a layer: a whole buffer, or the first B rows of one
  auto rows_packed = [&](const at::Tensor& t) {
    return t.stride(2) == 1 && t.stride(1) == H && t.stride(0) >= t.size(1) * H;
  };
  TORCH_CHECK(h.dim() == 3 && h.size(0) == layers && h.size(2) == H && rows_packed(h) &&
                  h.scalar_type() == c10::CppTypeToScalarType<T>::value,
              "h must be [layers, B, H] of the table's dtype, rows contiguous (a buffer or its first B rows)");
  const bool needs_c = cell == kLstm;
  TORCH_CHECK(c.has_value() == needs_c, needs_c ? "an LSTM needs c" : "only an LSTM takes c");
  if (needs_c)
    TORCH_CHECK(c->sizes() == h.sizes() && c->strides() == h.strides() && c->scalar_type() == h.scalar_type(),
                "c must be laid out like h");
  return {h.data_ptr<T>(), needs_c ? c->data_ptr<T>() : nullptr, h.size(1), h.stride(0)};
}

// ids within [low, high): checked before any thread starts (nothing may throw inside the loops).
void check_ids(const at::Tensor& ids, int64_t low, int64_t high, const char* what) {
  TORCH_CHECK(ids.scalar_type() == at::kLong && ids.is_contiguous(), what, " must be contiguous int64");
  if (ids.numel() > 0)
    TORCH_CHECK(ids.min().item<int64_t>() >= low && ids.max().item<int64_t>() < high, what, " out of range [", low,
                ", ", high, ")");
}

void check_rows(const at::Tensor& t, int64_t B, at::ScalarType type, const char* what) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == B && t.is_contiguous() && t.scalar_type() == type, what,
              " must be a contiguous [B] tensor of ", type);
}

AmxNet read_amx_net(const std::vector<at::Tensor>& w, int64_t cell, int64_t V) {
  TORCH_CHECK(bf16_available(), "bf16 steps need AMX tiles, which this build or CPU does not have");
  AmxNet net;
  TORCH_CHECK(cell == kRnn || cell == kGru || cell == kLstm, "unknown cell id ", cell);
  net.G = gates_of(cell);
  net.layers = ((int64_t)w.size() - 3 + 2) / 4;
  TORCH_CHECK(w.size() >= 5 && (int64_t)w.size() == 3 + 2 + 4 * (net.layers - 1),
              "weights: table, decoder, decoder bias, 2 tensors for layer 0, 4 per later layer");
  for (size_t i = 0; i < w.size(); ++i) {
    const bool panel = i == 1 || (i >= 3 && (i - 3) % 2 == 0);
    TORCH_CHECK(w[i].is_contiguous() && w[i].device().is_cpu() &&
                    w[i].scalar_type() == (panel ? at::kBFloat16 : at::kFloat),
                "bf16 weights: bfloat16 panels (decode_pack_* with bf16), float32 table and biases");
  }
  const int64_t UA = net.G == 1 ? 64 : 16, NT = net.G == 1 ? 4 : net.G;
  TORCH_CHECK(w[0].dim() == 2 && w[0].size(1) % net.G == 0, "table must be [V, G*H]");
  net.H = w[0].size(1) / net.G;
  net.Vin = w[0].size(0);
  net.V = V;
  net.nd = (V + 63) / 64;
  net.nkb = k_blocks(net.H);
  net.np = (net.H + UA - 1) / UA;
  TORCH_CHECK(w[1].dim() == 5 && w[1].size(0) == net.nd && w[1].size(1) == net.nkb && w[1].size(2) == kDecoderTiles,
              "decoder panels must be [", net.nd, ", ", net.nkb, ", 4, 16, 32] (decode_pack_decoder, bf16)");
  TORCH_CHECK(w[2].numel() == net.nd * 64, "decoder bias must hold ", net.nd * 64, " values");
  net.table = w[0].data_ptr<float>();
  net.dec = reinterpret_cast<const uint16_t*>(w[1].data_ptr());
  net.dec_bias = w[2].data_ptr<float>();
  size_t i = 3;
  for (int64_t l = 0; l < net.layers; ++l) {
    for (int k = 0; k < (l == 0 ? 1 : 2); ++k, i += 2) {
      TORCH_CHECK(w[i].dim() == 5 && w[i].size(0) == net.np && w[i].size(1) == net.nkb && w[i].size(2) == NT,
                  "gate panels must be [", net.np, ", ", net.nkb, ", ", NT, ", 16, 32] (decode_pack_gates, bf16)");
      TORCH_CHECK(w[i + 1].numel() == net.np * NT * 16, "gate bias panels must hold ", net.np * NT * 16, " values");
      (k == 0 ? net.w_hh : net.w_ih).push_back(reinterpret_cast<const uint16_t*>(w[i].data_ptr()));
      (k == 0 ? net.b_hh : net.b_ih).push_back(w[i + 1].data_ptr<float>());
    }
    if (l == 0) {
      net.w_ih.push_back(nullptr);
      net.b_ih.push_back(nullptr);
    }
  }
  return net;
}

bool is_bf16(const std::vector<at::Tensor>& w) { return w.size() > 1 && w[1].scalar_type() == at::kBFloat16; }

// f(engine) for the weights' kind (float tiles of the table's dtype, or AMX) and the cell's gate count.
template <typename F>
void with_engine(const std::vector<at::Tensor>& weights, int64_t cell, int64_t V, const F& f) {
  TORCH_CHECK(!weights.empty(), "no weights");
  auto gates = [&](auto run) {
    if (cell == kRnn) run(std::integral_constant<int, 1>{});
    if (cell == kGru) run(std::integral_constant<int, 3>{});
    if (cell == kLstm) run(std::integral_constant<int, 4>{});
  };
  if (is_bf16(weights)) {
    const AmxNet net = read_amx_net(weights, cell, V);
    gates([&](auto g) { f(AmxEngine<decltype(g)::value>{net}, net.layers, net.H, net.Vin); });
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(weights[0].scalar_type(), "decode", [&] {
    const Net<scalar_t> net = read_net<scalar_t>(weights, cell, V);
    gates([&](auto g) { f(FloatEngine<scalar_t, decltype(g)::value>{net}, net.layers, net.H, net.Vin); });
  });
}

// A block of rows: its group (buffers), the tile config around the work.
template <typename E, typename F>
void on_row_blocks(const E& engine, int64_t B, const F& f, int64_t threads = 0) {
  over_row_blocks(B, E::block, [&](int64_t b0, int64_t b1) {
    auto grp = engine.group(b0, b1);
    if (grp.m <= 0) return;
    engine.begin(grp);
    f(grp);
    engine.end();
  }, threads);
}

// One step for every row: logits [B, V] of the next character, the rows split over `threads`
// threads (0 = torch's: a server passes fewer, see serve/scheduler.py).
void decode_step(const std::vector<at::Tensor>& weights, int64_t cell, at::Tensor h, std::optional<at::Tensor> c,
                 const at::Tensor& ids, std::optional<double> unk_logit, at::Tensor logits, int64_t threads) {
  TORCH_CHECK(logits.dim() == 2 && logits.is_contiguous() && logits.scalar_type() == h.scalar_type(),
              "logits must be contiguous [B, V] of the state's dtype");
  const int64_t V = logits.size(1);
  with_engine(weights, cell, V, [&](const auto& engine, int64_t layers, int64_t H, int64_t Vin) {
    using T = typename std::decay_t<decltype(engine)>::Scalar;
    State<T> st = read_state<T>(h, c, layers, H, cell);
    const int64_t B = st.B;
    TORCH_CHECK(logits.size(0) == B, "logits must have a row per state row");
    check_rows(ids, B, at::kLong, "ids");
    check_ids(ids, 0, Vin, "ids");
    const int64_t* id = ids.data_ptr<int64_t>();
    T* out = logits.data_ptr<T>();
    on_row_blocks(engine, B, [&](auto& grp) {
      State<T> mine = st;
      engine.step(mine, grp, id + grp.b0, 1, true);
      for (int64_t r = 0; r < grp.m; ++r)
        emit_logits<T>(grp.logits.data() + r * grp.ld, V, unk_logit, out + (grp.b0 + r) * V);
    }, threads);
  });
}

// `n` characters per row: choice j is drawn from the current logits [B, V] (greedy for rows of
// temperature 0, else argmax(logits + T * G) with the row's Gumbel noise G for position
// counters[row] + j: a draw from softmax(logits / T)) into out[j, row]; for j < advance it is then
// fed to the model, whose new logits (the model's own, <unk> masked) replace the current ones. The
// state and the logits are left after the last step.
void decode_sample(const std::vector<at::Tensor>& weights, int64_t cell, at::Tensor h, std::optional<at::Tensor> c,
                   at::Tensor logits, const at::Tensor& temperature, const at::Tensor& keys, const at::Tensor& counters,
                   std::optional<double> unk_logit, int64_t n, int64_t advance, at::Tensor out) {
  TORCH_CHECK(logits.dim() == 2 && logits.is_contiguous() && logits.scalar_type() == h.scalar_type(),
              "logits must be contiguous [B, V] of the state's dtype");
  const int64_t V = logits.size(1);
  with_engine(weights, cell, V, [&](const auto& engine, int64_t layers, int64_t H, int64_t Vin) {
    using T = typename std::decay_t<decltype(engine)>::Scalar;
    State<T> st = read_state<T>(h, c, layers, H, cell);
    const int64_t B = st.B;
    TORCH_CHECK(logits.size(0) == B, "logits must have a row per state row");
    TORCH_CHECK(V <= Vin, "the decoder has more outputs than the table has inputs");
    check_rows(temperature, B, at::kDouble, "temperature");
    check_rows(keys, B, at::kLong, "keys");
    check_rows(counters, B, at::kLong, "counters");
    TORCH_CHECK(n >= 0 && advance >= 0 && advance <= n, "need 0 <= advance <= n");
    TORCH_CHECK(out.dim() == 2 && out.size(0) >= n && out.size(1) == B && out.is_contiguous() &&
                    out.scalar_type() == at::kLong,
                "out must be contiguous int64 [>= n, B]");
    const RowChoice rc{temperature.data_ptr<double>(), keys.data_ptr<int64_t>(), counters.data_ptr<int64_t>()};
    T* lg = logits.data_ptr<T>();
    int64_t* ids = out.data_ptr<int64_t>();
    on_row_blocks(engine, B, [&](auto& grp) {
      std::vector<float> g(V);
      State<T> mine = st;
      const int64_t b0 = grp.b0, b1 = grp.b0 + grp.m;
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t b = b0; b < b1; ++b) {
          const T* row = lg + b * V;
          if (rc.temperature[b] > 0) {
            gumbel_noise((uint64_t)rc.keys[b], (uint64_t)(rc.counters[b] + j), V, (float)rc.temperature[b], g.data());
            ids[j * B + b] = first_max<T>(row, g.data(), V);
          } else {
            ids[j * B + b] = first_max<T>(row, nullptr, V);
          }
        }
        if (j >= advance) continue;
        engine.step(mine, grp, ids + j * B + b0, 1, true);
        for (int64_t b = b0; b < b1; ++b)
          emit_logits<T>(grp.logits.data() + (b - b0) * grp.ld, V, unk_logit, lg + b * V);
      }
    });
  });
}

// Teacher-forced scoring: row b reads ids[b, t] at step t; where targets[b, t] >= 0, nll[b, t] =
// logsumexp(logits) - logits[target] (nats, in double), elsewhere NaN (warm-up and padding; a
// step where no row of the thread has a target skips the decoder).
void decode_score(const std::vector<at::Tensor>& weights, int64_t cell, at::Tensor h, std::optional<at::Tensor> c,
                  int64_t vocab, const at::Tensor& ids, const at::Tensor& targets, at::Tensor nll) {
  TORCH_CHECK(ids.dim() == 2 && targets.sizes() == ids.sizes() && nll.sizes() == ids.sizes(),
              "ids, targets and nll must be [B, T] alike");
  TORCH_CHECK(nll.is_contiguous() && nll.scalar_type() == at::kDouble, "nll must be contiguous float64");
  with_engine(weights, cell, vocab, [&](const auto& engine, int64_t layers, int64_t H, int64_t Vin) {
    using T = typename std::decay_t<decltype(engine)>::Scalar;
    State<T> st = read_state<T>(h, c, layers, H, cell);
    const int64_t B = st.B, steps = ids.size(1), V = vocab;
    TORCH_CHECK(ids.size(0) == B, "ids must have a row per state row");
    check_ids(ids, 0, Vin, "ids");
    check_ids(targets, -1, V, "targets");
    const int64_t* id = ids.data_ptr<int64_t>();
    const int64_t* tg = targets.data_ptr<int64_t>();
    double* out = nll.data_ptr<double>();
    on_row_blocks(engine, B, [&](auto& grp) {
      std::vector<T> e(V);
      State<T> mine = st;
      const int64_t b0 = grp.b0, b1 = grp.b0 + grp.m;
      for (int64_t t = 0; t < steps; ++t) {
        bool any = false;
        for (int64_t b = b0; b < b1; ++b) any = any || tg[b * steps + t] >= 0;
        engine.step(mine, grp, id + b0 * steps + t, steps, any);
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t target = tg[b * steps + t];
          double& o = out[b * steps + t];
          if (target < 0) {
            o = std::numeric_limits<double>::quiet_NaN();
            continue;
          }
          const T* l = grp.logits.data() + (b - b0) * grp.ld;
          const T m = l[first_max<T>(l, nullptr, V)];
          for (int64_t v = 0; v < V; ++v) e[v] = exp_poly(l[v] - m);
          double total = 0;
          for (int64_t v = 0; v < V; ++v) total += (double)e[v];
          o = (double)m + std::log(total) - (double)l[target];
        }
      }
    });
  });
}

// out [B, steps, V] float32: row b's noise (times scales[b]) for positions positions[b] .. + steps - 1.
void gumbel_noise_op(const at::Tensor& keys, const at::Tensor& positions, const at::Tensor& scales, at::Tensor out) {
  TORCH_CHECK(out.dim() == 3 && out.is_contiguous() && out.scalar_type() == at::kFloat,
              "out must be contiguous float32 [B, steps, V]");
  const int64_t B = out.size(0), steps = out.size(1), V = out.size(2);
  check_rows(keys, B, at::kLong, "keys");
  check_rows(positions, B, at::kLong, "positions");
  check_rows(scales, B, at::kDouble, "scales");
  const int64_t* key = keys.data_ptr<int64_t>();
  const int64_t* pos = positions.data_ptr<int64_t>();
  const double* scale = scales.data_ptr<double>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, B * steps, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / steps, j = i % steps;
      gumbel_noise((uint64_t)key[b], (uint64_t)(pos[b] + j), V, (float)scale[b], o + i * V);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> pack_gates_any(const at::Tensor& w, const at::Tensor& b, int64_t cell, bool bf16) {
  if (!bf16) return pack_gates(w, b, cell);
  TORCH_CHECK(bf16_available(), "bf16 steps need AMX tiles, which this build or CPU does not have");
  TORCH_CHECK(w.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && w.dim() == 2 && w.is_contiguous() &&
                  b.is_contiguous() && b.numel() == w.size(0),
              "bf16 packing takes contiguous float32 w [G*H, K] and b [G*H]");
  TORCH_CHECK(cell == kRnn || cell == kGru || cell == kLstm, "unknown cell id ", cell);
  TORCH_CHECK(w.size(0) % gates_of(cell) == 0, "w must be [G*H, K]");
  if (cell == kRnn) return pack_gates_bf16_t<1>(w, b);
  if (cell == kGru) return pack_gates_bf16_t<3>(w, b);
  return pack_gates_bf16_t<4>(w, b);
}

std::tuple<at::Tensor, at::Tensor> pack_decoder_any(const at::Tensor& w, const at::Tensor& b, bool bf16) {
  if (!bf16) return pack_decoder(w, b);
  TORCH_CHECK(bf16_available(), "bf16 steps need AMX tiles, which this build or CPU does not have");
  TORCH_CHECK(w.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && w.dim() == 2 && w.is_contiguous() &&
                  b.is_contiguous() && b.numel() == w.size(0),
              "bf16 packing takes contiguous float32 w [V, H] and b [V]");
  return pack_decoder_bf16(w, b);
}

}  // namespace decode
}  // namespace rnn_kernels

TORCH_LIBRARY_FRAGMENT(rnn_train_kernels, m) {
  using namespace rnn_kernels::decode;
  m.def("decode_gumbel_noise(Tensor keys, Tensor positions, Tensor scales, Tensor(a!) out) -> ()", &gumbel_noise_op);
  m.def("decode_pack_gates(Tensor w, Tensor b, int cell, bool bf16=False) -> (Tensor, Tensor)", &pack_gates_any);
  m.def("decode_pack_decoder(Tensor w, Tensor b, bool bf16=False) -> (Tensor, Tensor)", &pack_decoder_any);
  m.def("decode_step(Tensor[] weights, int cell, Tensor(a!) h, Tensor(b!)? c, Tensor ids, float? unk_logit, "
        "Tensor(c!) logits, int threads=0) -> ()",
        &decode_step);
  m.def("decode_sample(Tensor[] weights, int cell, Tensor(a!) h, Tensor(b!)? c, Tensor(c!) logits, Tensor temperature, "
        "Tensor keys, Tensor counters, float? unk_logit, int n, int advance, Tensor(d!) out) -> ()",
        &decode_sample);
  m.def("decode_score(Tensor[] weights, int cell, Tensor(a!) h, Tensor(b!)? c, int vocab, Tensor ids, "
        "Tensor targets, Tensor(c!) nll) -> ()",
        &decode_score);
}
