// The time loops of one RNN / GRU / LSTM layer on the CPU, forward and backward (BPTT).
//
// Why C++: in Python every time step costs a GEMM plus ~10 element-wise torch ops, each a
// dispatcher call and a pass over memory. Here a step is one GEMM and ONE loop over the step's
// gates (cells.h) that applies all the gate arithmetic at once, so what is left per step is the
// GEMM itself. The GEMM is a BLAS call, or on the tiled path tiled.h's register tiles, whose
// forward applies the cell to each tile while its gates are still in registers. The all-steps
// work (input projection, weight gradients) is one large GEMM each, run from Python (on the
// tiled path the weight gradients by tiled.h's weight_grad, an op below). Equations and gate
// layouts are PyTorch's (nn.RNN, nn.GRU, nn.LSTM); rnn_train/kernels/cpp_layers.py documents
// the tensors each op takes and returns.
//
// One generic loop per direction (forward_block, backward_block) runs every cell; a cell enters
// as a lambda that applies cells.h to one row and a run of units. How the loop is split over
// threads is common.h's `Threads`.
#include <torch/library.h>

#include <numeric>
#include <optional>
#include <tuple>
#include <vector>

#include "bf16.h"
#include "cells.h"
#include "common.h"
#include "tiled.h"

namespace rnn_kernels {
namespace {

// ------------------------------------------------------------------------------------------ loops

// Where row r (step t, batch row b: r = t*B + b) of the input projection x W_ih^T + biases [G*H]
// lies: row ids[r] of the gather table W_ih^T + biases [V, G*H] for one-hot input, else row r of
// the all-steps projection [T*B, G*H]. The cells read it there: copying each table row into a
// [T, B, G*H] buffer first made a one-thread LSTM-256 training step on the tiled path 7% slower
// (docs/kernels.md).
template <typename T>
struct Inputs {
  const T* rows;
  const int64_t* ids;  // null: row r is rows' row r
  int64_t width;       // G*H

  const T* row(int64_t r) const { return rows + (ids != nullptr ? ids[r] : r) * width; }
};

// The forward loop of one block: per step, q = h_{t-1}[rows] W_hh^T[:, the block's units of every
// gate] (one GEMM), then cell(t, b, u0, n, q_row, qs) for each row.
// w_t: W_hh^T [H, G*H] for blocks of all units (null in units mode, where each block packs its own).
template <typename T, typename Cell>
void forward_block(const Block& blk, int64_t path, int64_t steps, int64_t B, int64_t H, int64_t G, const T* w_hh,
                   const T* w_t, const T* hs, const Cell& cell) {
  const int64_t U = blk.u1 - blk.u0, M = blk.b1 - blk.b0, N = G * U;
  std::vector<T> w, q(M * N);  // w: W_hh^T restricted to the block's units, gate by gate: [H, G*U]
  if (w_t == nullptr || U != H) {
    w.resize(H * N);
    for (int64_t g = 0; g < G; ++g)
      for (int64_t j = 0; j < U; ++j)
        for (int64_t i = 0; i < H; ++i) w[i * N + g * U + j] = w_hh[(g * H + blk.u0 + j) * H + i];
    w_t = w.data();
  }
  const StepGemm<T> gemm(path, M, N, H, w_t, N);
  for (int64_t t = 0; t < steps; ++t) {
    if (M > 0 && U > 0) {
      gemm(hs + (t * B + blk.b0) * H, H, q.data(), N, false);
      for (int64_t b = blk.b0; b < blk.b1; ++b) cell(t, b, blk.u0, U, q.data() + (b - blk.b0) * N, U);
    }
    step_barrier(blk);  // the next GEMM reads every unit of h_t
  }
}

// The forward loop of one block on the tiled path: per step, for each panel of PL units
// (tiled.h's pack_forward) and each tile of rows, the tile computes every gate of those units
// in registers and the cell runs on them at once; the pre-activations never pass through memory.
template <typename T, int G, typename Cell>
void forward_block_tiled(const Block& blk, int64_t steps, int64_t B, int64_t H, const T* panels, const T* hs,
                         const Cell& cell) {
  using F = ForwardTile<G>;
  using TL = Tile<T, F::MR, F::NV>;
  const int64_t PL = forward_panel_units<T, G>();
  std::vector<T> out(F::MR * TL::W);
  for (int64_t t = 0; t < steps; ++t) {
    const T* prev = hs + t * B * H;
    for (int64_t u0 = blk.u0; u0 < blk.u1; u0 += PL) {
      const int64_t n = std::min(PL, blk.u1 - u0);
      const T* panel = panels + (u0 / PL) * H * TL::W;
      for (int64_t b0 = blk.b0; b0 < blk.b1; b0 += F::MR) {
        const int64_t rows = std::min<int64_t>(F::MR, blk.b1 - b0);
        product_rows<T, F::NV, F::MR>(rows, H, prev + b0 * H, H, panel, out.data(), TL::W, false);
        for (int64_t r = 0; r < rows; ++r) {
          if (n == PL) {  // a full panel: the count is a compile-time constant (cells.h)
            const std::integral_constant<int64_t, forward_panel_units<T, G>()> full;
            cell(t, b0 + r, u0, full, out.data() + r * TL::W, PL);
          } else {
            cell(t, b0 + r, u0, n, out.data() + r * TL::W, PL);
          }
        }
      }
    }
    step_barrier(blk);  // the next step reads every unit of h_t
  }
}

// The same on the bf16 path: per step the block's rows of h_{t-1} are rounded to bf16 once, and
// each product (bf16.h) of a panel and 16 rows leaves every gate of those units in a buffer for
// the cell. The cell reads the previous product's buffer while the tiles compute the next one:
// reading a buffer straight after the tile store that filled it stalled on the store (a quarter
// of the loop's time for LSTM-256).
template <int G, typename Cell>
void forward_block_bf16(const Block& blk, int64_t steps, int64_t B, int64_t H, const uint16_t* packed,
                        const float* hs, const Cell& cell) {
  using F = Bf16Forward<G>;
  const int64_t M = blk.b1 - blk.b0;
  const AmxScope amx;
  Bf16Rows a(M, H);
  const int64_t bs = a.kblocks() * kAmxBlock;  // one column block of the packed W_hh^T
  std::vector<float> out(2 * kAmxRows * F::W);
  struct Job {
    int64_t u0, r0;
  };
  auto cells = [&](int64_t t, const Job& job, const float* q) {
    const int64_t n = std::min(F::PL, blk.u1 - job.u0);
    for (int64_t r = 0; r < std::min(kAmxRows, M - job.r0); ++r) {
      const int64_t b = blk.b0 + job.r0 + r;
      if (n == F::PL) {
        const std::integral_constant<int64_t, F::PL> full;
        cell(t, b, job.u0, full, q + r * F::W, F::PL);
      } else {
        cell(t, b, job.u0, n, q + r * F::W, F::PL);
      }
    }
  };
  for (int64_t t = 0; t < steps; ++t) {
    if (M > 0) {
      a.fill(hs + (t * B + blk.b0) * H, H);
      int64_t issued = 0;
      Job last{0, 0};
      for (int64_t u0 = blk.u0; u0 < blk.u1; u0 += F::PL) {
        const uint16_t* panel = packed + (u0 / F::PL) * (F::W / kAmxCols) * bs;
        for (int64_t r0 = 0; r0 < M; r0 += kAmxRows, ++issued) {
          float* q = out.data() + (issued % 2) * kAmxRows * F::W;
          amx_product<G * F::P>(a.kblocks(), a.row(r0), a.stride(), panel, kAmxBlock, bs, q, F::W);
          if (issued > 0) cells(t, last, out.data() + ((issued - 1) % 2) * kAmxRows * F::W);
          last = Job{u0, r0};
        }
      }
      if (issued > 0) cells(t, last, out.data() + ((issued - 1) % 2) * kAmxRows * F::W);
    }
    step_barrier(blk);  // the next step reads every unit of h_t
  }
}

// One block's forward on the path asked for: forward_block, or forward_block_tiled /
// forward_block_bf16 with W_hh packed (`panels`, once per call, shared by the blocks).
template <typename T, int G, typename Cell>
void forward_any(const Block& blk, int64_t path, int64_t steps, int64_t B, int64_t H, const T* w_hh, const T* w_t,
                 const void* panels, const T* hs, const Cell& cell) {
  if (path == kTiled) {
    forward_block_tiled<T, G>(blk, steps, B, H, static_cast<const T*>(panels), hs, cell);
  } else if (path == kBf16) {
    if constexpr (std::is_same_v<T, float>)
      forward_block_bf16<G>(blk, steps, B, H, static_cast<const uint16_t*>(panels), hs, cell);
  } else {
    forward_block<T>(blk, path, steps, B, H, G, w_hh, w_t, hs, cell);
  }
}

// The backward loop of one block, from dh_T = d_out[T-1] + d_hT: per step, cell(t, b, u0, n,
// dh_row, nx_row, d_out_prev_row) writes the step's hidden-side deltas and dh_{t-1} without its
// recurrent term into nx; then nx += deltas_t W_hh[:, the block's units] (one GEMM, or on the
// tiled path the product with `panels`, tiled.h's pack_backward of W_hh).
// d_out rows are `so` (step) and `sb` (row) apart; dh / next are [B, H] buffers shared by the
// blocks (each touches its own rows and units).
// dh0 (null when h0 needs no gradient, which also spares the step-0 GEMM) receives dL/dh_0.
template <typename T, typename Cell>
void backward_block(const Block& blk, int64_t path, int64_t steps, int64_t B, int64_t H, int64_t G, const T* d_out,
                    int64_t so, int64_t sb, const T* d_hT, const T* w_hh, const void* panels, const T* deltas, T* dh,
                    T* next, T* dh0, const Cell& cell) {
  const int64_t U = blk.u1 - blk.u0, M = blk.b1 - blk.b0;
  const std::vector<T> zeros(H, T(0));
  for (int64_t b = blk.b0; b < blk.b1; ++b) {
    const T* o = d_out + (steps - 1) * so + b * sb;
    for (int64_t j = blk.u0; j < blk.u1; ++j) dh[b * H + j] = o[j] + d_hT[b * H + j];
  }
  const StepGemm<T> gemm(path, M, U, G * H, w_hh + blk.u0, H);
  std::optional<TiledProduct<T>> tiled;
  if (path == kTiled) tiled.emplace(M, U, G * H, static_cast<const T*>(panels) + blk.u0 * G * H);
  std::optional<Bf16Product> bf16;  // blk.u0 is 0: the bf16 path splits rows, never units
  std::optional<AmxScope> amx;
  if constexpr (std::is_same_v<T, float>) {
    if (path == kBf16) {
      amx.emplace();
      bf16.emplace(M, U, G * H, static_cast<const uint16_t*>(panels));
    }
  }
  for (int64_t t = steps - 1; t >= 0; --t) {
    if (M > 0 && U > 0) {
      for (int64_t b = blk.b0; b < blk.b1; ++b) {
        const T* o = t > 0 ? d_out + (t - 1) * so + b * sb + blk.u0 : zeros.data();
        cell(t, b, blk.u0, U, dh + b * H + blk.u0, next + b * H + blk.u0, o);
      }
    }
    step_barrier(blk);  // the GEMM reads every unit of the step's deltas
    if (M > 0 && U > 0 && (t > 0 || dh0 != nullptr)) {
      const T* a = deltas + (t * B + blk.b0) * G * H;
      T* c = next + blk.b0 * H + blk.u0;
      if (tiled) {
        tiled->add(a, G * H, c, H);
      } else if (bf16) {
        if constexpr (std::is_same_v<T, float>) bf16->add(a, G * H, c, H);
      } else {
        gemm(a, G * H, c, H, true);
      }
    }
    std::swap(dh, next);
  }
  if (dh0 == nullptr) return;
  for (int64_t b = blk.b0; b < blk.b1; ++b) std::memcpy(dh0 + b * H + blk.u0, dh + b * H + blk.u0, sizeof(T) * U);
}

// ------------------------------------------------------------------------------------------ checks

void check_path(int64_t path, int64_t threads, const Tensor& like) {
  TORCH_CHECK(path == kAten || path == kTiled || (path == kBlas && blas_available()) ||
                  (path == kBf16 && bf16_available() && like.scalar_type() == at::kFloat),
              "GEMM path ", path, " is not available", path == kBf16 ? " (bf16: float32 tensors, built with AMX)" : "");
  TORCH_CHECK(threads == kBlasThreads || threads == kRows || (threads == kUnits && (path == kBlas || path == kTiled)),
              "threads mode ", threads, " is not available with GEMM path ", path);
}

// x: the input projection, either the gather table W_ih^T + biases [V, G*H] with ids [T, B] (one-hot
// input) or all steps' [T, B, G*H] without ids. Returns T, the steps.
int64_t check_forward(const Tensor& x, const std::optional<Tensor>& ids, int64_t gates, const Tensor& w_hh,
                      const Tensor& h0, int64_t path, int64_t threads) {
  TORCH_CHECK(x.device().is_cpu() && w_hh.device().is_cpu() && h0.device().is_cpu() &&
                  (!ids.has_value() || ids->device().is_cpu()) &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "float32 / float64 CPU tensors only");
  check_path(path, threads, x);
  const int64_t H = w_hh.size(1);
  TORCH_CHECK(w_hh.is_contiguous() && w_hh.dim() == 2 && w_hh.size(0) == gates * H, "w_hh must be contiguous [G*H, H]");
  TORCH_CHECK(h0.is_contiguous() && h0.dim() == 2 && h0.size(1) == H, "h0 must be [B, H]");
  TORCH_CHECK(w_hh.scalar_type() == x.scalar_type() && h0.scalar_type() == x.scalar_type(), "one dtype for all tensors");
  TORCH_CHECK(x.is_contiguous() && x.size(-1) == gates * H, "x must be contiguous with rows of G*H");
  if (!ids.has_value()) {
    TORCH_CHECK(x.dim() == 3 && x.size(1) == h0.size(0), "x must be [T, B, G*H] where there are no ids");
    return x.size(0);
  }
  TORCH_CHECK(x.dim() == 2, "x must be the table [V, G*H] where there are ids");
  TORCH_CHECK(ids->dim() == 2 && ids->scalar_type() == at::kLong && ids->is_contiguous() && ids->size(1) == h0.size(0),
              "ids must be contiguous int64 [T, B]");
  TORCH_CHECK(ids->numel() == 0 || (ids->min().item<int64_t>() >= 0 && ids->max().item<int64_t>() < x.size(0)),
              "ids out of range for a table of ", x.size(0), " rows");
  return ids->size(0);
}

template <typename T>
Inputs<T> inputs_of(const Tensor& x, const std::optional<Tensor>& ids) {
  return {x.data_ptr<T>(), ids.has_value() ? ids->data_ptr<int64_t>() : nullptr, x.size(-1)};
}

// The deltas go into buffers the caller owns: it reuses them across calls, so that the backward
// does not touch fresh pages (see rnn_train/kernels/cpp_layers.py).
void check_backward(const Tensor& d_out, const Tensor& d_hT, const Tensor& w_hh, const Tensor& deltas, const Tensor& like,
                    int64_t G, int64_t path, int64_t threads) {
  const int64_t H = d_hT.size(1);
  TORCH_CHECK(w_hh.is_contiguous() && w_hh.dim() == 2 && w_hh.size(0) == G * H && w_hh.size(1) == H &&
                  w_hh.scalar_type() == like.scalar_type(),
              "w_hh must be contiguous [G*H, H]");
  check_path(path, threads, like);
  TORCH_CHECK(d_out.dim() == 3 && d_out.size(1) == d_hT.size(0) && d_out.size(2) == H && d_hT.dim() == 2,
              "d_out must be [T, B, H] and d_hT [B, H]");
  TORCH_CHECK(d_out.scalar_type() == like.scalar_type() && d_hT.scalar_type() == like.scalar_type(),
              "one dtype for all tensors");
  TORCH_CHECK(deltas.is_contiguous() && deltas.dim() == 3 && deltas.size(0) == d_out.size(0) &&
                  deltas.size(1) == d_out.size(1) && deltas.size(2) == G * H && deltas.scalar_type() == like.scalar_type(),
              "delta buffers must be contiguous [T, B, G*H] of the gates' dtype");
}

Tensor rows_contiguous(const Tensor& d_out) { return d_out.stride(2) == 1 ? d_out : d_out.contiguous(); }

// dst [C, R] = src [R, C] transposed, plus add[r] on every element of column r where add is given:
// in square blocks of kTile x kTile. A plain transpose reads a column of src per output row, one
// element from each of R cache lines; a block reads kTile lines and writes kTile lines, each used
// whole. Threads take blocks of src rows.
template <typename T>
void transpose_in_blocks(const T* src, T* dst, int64_t R, int64_t C, const T* add) {
  constexpr int64_t kTile = 16;
  at::parallel_for(0, (R + kTile - 1) / kTile, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r0 = begin * kTile; r0 < std::min(R, end * kTile); r0 += kTile) {
      const int64_t r1 = std::min(R, r0 + kTile);
      for (int64_t c0 = 0; c0 < C; c0 += kTile) {
        const int64_t c1 = std::min(C, c0 + kTile);
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t r = r0; r < r1; ++r) dst[c * R + r] = add ? src[r * C + c] + add[r] : src[r * C + c];
      }
    }
  });
}

// W_hh^T [H, G*H] once per call where blocks span all units (one copy shared by the row blocks).
// In blocks (transpose_in_blocks): w_hh.t().contiguous() took 1.6-2.0 ms per LSTM-512 / GRU-512
// forward inside a training step (about 3% of it).
Tensor transposed_weight(const Tensor& w_hh, int64_t threads, int64_t path) {
  if (threads == kUnits || path == kTiled || path == kBf16) return Tensor();
  const int64_t R = w_hh.size(0), C = w_hh.size(1);
  Tensor out = at::empty({C, R}, w_hh.options());
  AT_DISPATCH_FLOATING_TYPES(w_hh.scalar_type(), "transposed_weight", [&] {
    transpose_in_blocks<scalar_t>(w_hh.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), R, C, nullptr);
  });
  return out;
}

// A tensor's data, or null for an undefined tensor (a buffer the path asked for does not use).
template <typename T>
const T* data_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// tiled.h's packed W_hh for the tiled path (undefined on the others), once per call.
// (bf16.h's bf16 blocks on the bf16 path.)
template <typename T, int G>
Tensor forward_panels(const Tensor& w_hh, int64_t path) {
  if (path == kBf16) return pack_bf16_forward<G>(w_hh);
  return path == kTiled ? pack_forward<T>(w_hh, G, forward_panel_units<T, G>()) : Tensor();
}

template <typename T>
Tensor backward_panels(const Tensor& w_hh, int64_t path) {
  if (path == kBf16) return pack_bf16_backward(w_hh);
  return path == kTiled ? pack_backward(w_hh, backward_panel_units<T>()) : Tensor();
}

// A packed weight's data (T for the tiled path, bf16 bits for the bf16 path), or null.
inline const void* panel_data(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// How many units a block of units mode holds (but the last): on the tiled path a whole number of
// the forward's panels and of the backward's, so that each block packs nothing of its own and
// computes the same tiles as one block would (the same rounding for every split).
template <typename T, int G>
int64_t unit_align(int64_t path) {
  return path == kTiled ? std::lcm(forward_panel_units<T, G>(), backward_panel_units<T>()) : kMinUnits;
}

Tensor first_state(const Tensor& h0, int64_t steps) {  // [T+1, B, H] with [0] = h0
  Tensor hs = at::empty({steps + 1, h0.size(0), h0.size(1)}, h0.options());
  hs[0].copy_(h0);
  return hs;
}

// ------------------------------------------------------------------------------------------ RNN

// x, ids: check_forward's. Returns hs [T+1, B, H] (the Elman backward needs nothing else).
Tensor rnn_forward(const Tensor& x, const std::optional<Tensor>& ids, const Tensor& h0, const Tensor& w_hh, bool relu,
                   int64_t path, int64_t threads) {
  const int64_t steps = check_forward(x, ids, 1, w_hh, h0, path, threads), B = h0.size(0), H = w_hh.size(1);
  Tensor hs = first_state(h0, steps), w_t = transposed_weight(w_hh, threads, path);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnn_forward", [&] {
    using T = scalar_t;
    const Inputs<T> in = inputs_of<T>(x, ids);
    T* h = hs.data_ptr<T>();
    const T* w = w_hh.data_ptr<T>();
    const T* wt = data_or_null<T>(w_t);
    const Tensor panels = forward_panels<T, 1>(w_hh, path);
    const void* pk = panel_data(panels);
    run_blocks(threads, B, H, [&](const Block& blk) {
      forward_any<T, 1>(blk, path, steps, B, H, w, wt, pk, h,
                       [&](int64_t t, int64_t b, int64_t u0, auto n, const T* q, int64_t) {
                         const int64_t row = t * B + b;
                         rnn_cell_forward<T>(n, relu, in.row(row) + u0, q, h + (row + B) * H + u0);
                       });
    }, unit_align<T, 1>(path));
  });
  return hs;
}

Tensor rnn_backward(const Tensor& d_out, const Tensor& d_hT, const Tensor& w_hh, const Tensor& hs, Tensor da, bool relu,
                    bool need_dh0, int64_t path, int64_t threads) {
  const Tensor d = rows_contiguous(d_out), e = d_hT.contiguous();
  check_backward(d, e, w_hh, da, hs, 1, path, threads);
  const int64_t B = hs.size(1), H = hs.size(2);
  Tensor dh0 = at::empty({B, H}, hs.options());
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "rnn_backward", [&] {
    using T = scalar_t;
    std::vector<T> dh(B * H), next(B * H);
    const T* h = hs.data_ptr<T>();
    T* a = da.data_ptr<T>();
    const T* dp = d.data_ptr<T>();  // every pointer is taken before the threads start: nothing there may throw
    const T* ep = e.data_ptr<T>();
    const T* w = w_hh.data_ptr<T>();
    const Tensor panels = backward_panels<T>(w_hh, path);
    const void* pk = panel_data(panels);
    T* d0 = need_dh0 ? dh0.data_ptr<T>() : nullptr;
    run_blocks(threads, B, H, [&](const Block& blk) {
      backward_block<T>(blk, path, d.size(0), B, H, 1, dp, d.stride(0), d.stride(1), ep, w, pk, a, dh.data(),
                        next.data(), d0,
                        [&](int64_t t, int64_t b, int64_t u0, int64_t n, const T* dhr, T* nx, const T* o) {
                          const int64_t row = t * B + b;
                          rnn_cell_backward<T>(n, relu, h + (row + B) * H + u0, dhr, o, a + row * H + u0, nx);
                        });
    }, unit_align<T, 1>(path));
  });
  return dh0;
}

// ------------------------------------------------------------------------------------------ GRU

// x, ids: check_forward's; x's rows are x W_ih^T + b_ih (+ b_hh on the r, z blocks). Returns hs
// [T+1, B, H], the gates [T, B, 3H] as (r, z, W_hn h + b_hn) and the candidates n [T, B, H].
std::tuple<Tensor, Tensor, Tensor> gru_forward(const Tensor& x, const std::optional<Tensor>& ids, const Tensor& h0,
                                               const Tensor& w_hh, const Tensor& b_hn, int64_t path, int64_t threads) {
  const int64_t steps = check_forward(x, ids, 3, w_hh, h0, path, threads), B = h0.size(0), H = w_hh.size(1);
  TORCH_CHECK(b_hn.is_contiguous() && b_hn.numel() == H && b_hn.scalar_type() == x.scalar_type(), "b_hn must be [H]");
  Tensor hs = first_state(h0, steps), n = at::empty({steps, B, H}, x.options());
  Tensor gates = at::empty({steps, B, 3 * H}, x.options()), w_t = transposed_weight(w_hh, threads, path);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gru_forward", [&] {
    using T = scalar_t;
    const Inputs<T> in = inputs_of<T>(x, ids);
    T* g = gates.data_ptr<T>();
    T* h = hs.data_ptr<T>();
    T* nn = n.data_ptr<T>();
    const T* bn = b_hn.data_ptr<T>();
    const T* w = w_hh.data_ptr<T>();
    const T* wt = data_or_null<T>(w_t);
    const Tensor panels = forward_panels<T, 3>(w_hh, path);
    const void* pk = panel_data(panels);
    run_blocks(threads, B, H, [&](const Block& blk) {
      forward_any<T, 3>(blk, path, steps, B, H, w, wt, pk, h,
                       [&](int64_t t, int64_t b, int64_t u0, auto cnt, const T* q, int64_t qs) {
                         const int64_t row = t * B + b;
                         gru_cell_forward<T>(cnt, H, qs, in.row(row) + u0, g + row * 3 * H + u0, q, bn + u0,
                                             h + row * H + u0, h + (row + B) * H + u0, nn + row * H + u0);
                       });
    }, unit_align<T, 3>(path));
  });
  return {hs, gates, n};
}

Tensor gru_backward(const Tensor& d_out, const Tensor& d_hT, const Tensor& w_hh, const Tensor& hs, const Tensor& gates,
                    const Tensor& n, Tensor dgh, Tensor dgi, bool need_dh0, int64_t path, int64_t threads) {
  const Tensor d = rows_contiguous(d_out), e = d_hT.contiguous();
  check_backward(d, e, w_hh, dgh, gates, 3, path, threads);
  check_backward(d, e, w_hh, dgi, gates, 3, path, threads);
  const int64_t B = hs.size(1), H = hs.size(2);
  Tensor dh0 = at::empty({B, H}, hs.options());
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "gru_backward", [&] {
    using T = scalar_t;
    std::vector<T> dh(B * H), next(B * H);
    const T* g = gates.data_ptr<T>();
    const T* nn = n.data_ptr<T>();
    const T* h = hs.data_ptr<T>();
    T* hid = dgh.data_ptr<T>();
    T* inp = dgi.data_ptr<T>();
    const T* dp = d.data_ptr<T>();  // every pointer is taken before the threads start: nothing there may throw
    const T* ep = e.data_ptr<T>();
    const T* w = w_hh.data_ptr<T>();
    const Tensor panels = backward_panels<T>(w_hh, path);
    const void* pk = panel_data(panels);
    T* d0 = need_dh0 ? dh0.data_ptr<T>() : nullptr;
    run_blocks(threads, B, H, [&](const Block& blk) {
      backward_block<T>(blk, path, d.size(0), B, H, 3, dp, d.stride(0), d.stride(1), ep, w, pk, hid, dh.data(),
                        next.data(), d0,
                        [&](int64_t t, int64_t b, int64_t u0, int64_t cnt, const T* dhr, T* nx, const T* o) {
                          const int64_t row = t * B + b;
                          gru_cell_backward<T>(cnt, H, g + row * 3 * H + u0, nn + row * H + u0, h + row * H + u0, dhr,
                                               o, hid + row * 3 * H + u0, inp + row * 3 * H + u0, nx);
                        });
    }, unit_align<T, 3>(path));
  });
  return dh0;
}

// ------------------------------------------------------------------------------------------ LSTM

// x, ids: check_forward's; x's rows are x W_ih^T + b_ih + b_hh. Returns hs and cs [T+1, B, H], tc =
// tanh(c_t) [T, B, H] and the activated gates (i, f, g, o) [T, B, 4H].
std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_forward(const Tensor& x, const std::optional<Tensor>& ids,
                                                        const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                                                        int64_t path, int64_t threads) {
  const int64_t steps = check_forward(x, ids, 4, w_hh, h0, path, threads), B = h0.size(0), H = w_hh.size(1);
  TORCH_CHECK(c0.sizes() == h0.sizes() && c0.scalar_type() == h0.scalar_type(), "c0 must be like h0");
  Tensor hs = first_state(h0, steps), cs = first_state(c0.contiguous(), steps);
  Tensor tc = at::empty({steps, B, H}, x.options()), gates = at::empty({steps, B, 4 * H}, x.options());
  Tensor w_t = transposed_weight(w_hh, threads, path);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_forward", [&] {
    using T = scalar_t;
    const Inputs<T> in = inputs_of<T>(x, ids);
    T* g = gates.data_ptr<T>();
    T* h = hs.data_ptr<T>();
    T* c = cs.data_ptr<T>();
    T* th = tc.data_ptr<T>();
    const T* w = w_hh.data_ptr<T>();
    const T* wt = data_or_null<T>(w_t);
    const Tensor panels = forward_panels<T, 4>(w_hh, path);
    const void* pk = panel_data(panels);
    run_blocks(threads, B, H, [&](const Block& blk) {
      forward_any<T, 4>(blk, path, steps, B, H, w, wt, pk, h,
                       [&](int64_t t, int64_t b, int64_t u0, auto cnt, const T* q, int64_t qs) {
                         const int64_t row = t * B + b;
                         lstm_cell_forward<T>(cnt, H, qs, in.row(row) + u0, g + row * 4 * H + u0, q, c + row * H + u0,
                                              c + (row + B) * H + u0, th + row * H + u0, h + (row + B) * H + u0);
                       });
    }, unit_align<T, 4>(path));
  });
  return {hs, cs, tc, gates};
}

std::tuple<Tensor, Tensor> lstm_backward(const Tensor& d_out, const Tensor& d_hT, const Tensor& d_cT, const Tensor& w_hh,
                                         const Tensor& cs, const Tensor& gates, const Tensor& tc, Tensor dg, bool need_dh0,
                                         int64_t path, int64_t threads) {
  const Tensor d = rows_contiguous(d_out), e = d_hT.contiguous();
  check_backward(d, e, w_hh, dg, gates, 4, path, threads);
  const int64_t B = cs.size(1), H = cs.size(2);
  Tensor dh0 = at::empty({B, H}, cs.options());
  Tensor dc0 = d_cT.contiguous().clone();  // the carried dL/dc, ends as dL/dc_0
  AT_DISPATCH_FLOATING_TYPES(cs.scalar_type(), "lstm_backward", [&] {
    using T = scalar_t;
    std::vector<T> dh(B * H), next(B * H);
    const T* g = gates.data_ptr<T>();
    const T* c = cs.data_ptr<T>();
    const T* th = tc.data_ptr<T>();
    T* a = dg.data_ptr<T>();
    T* dc = dc0.data_ptr<T>();
    const T* dp = d.data_ptr<T>();  // every pointer is taken before the threads start: nothing there may throw
    const T* ep = e.data_ptr<T>();
    const T* w = w_hh.data_ptr<T>();
    const Tensor panels = backward_panels<T>(w_hh, path);
    const void* pk = panel_data(panels);
    T* d0 = need_dh0 ? dh0.data_ptr<T>() : nullptr;
    run_blocks(threads, B, H, [&](const Block& blk) {
      backward_block<T>(blk, path, d.size(0), B, H, 4, dp, d.stride(0), d.stride(1), ep, w, pk, a, dh.data(),
                        next.data(), d0,
                        [&](int64_t t, int64_t b, int64_t u0, int64_t cnt, const T* dhr, T* nx, const T* o) {
                          const int64_t row = t * B + b;
                          lstm_cell_backward<T>(cnt, H, g + row * 4 * H + u0, c + row * H + u0, th + row * H + u0, dhr,
                                                dc + b * H + u0, o, a + row * 4 * H + u0, nx);
                        });
    }, unit_align<T, 4>(path));
  });
  return {dh0, dc0};
}

// ------------------------------------------------------------------------------------------ weights

// dW = Y^T X over all T*B rows (Y [N, O] deltas, X [N, D] a layer's inputs or states): the tiled
// path's all-steps weight gradient (tiled.h).
Tensor weight_grad(const Tensor& y, const Tensor& x) {
  TORCH_CHECK(y.dim() == 2 && x.dim() == 2 && y.size(0) == x.size(0) && y.scalar_type() == x.scalar_type() &&
                  y.device().is_cpu() && x.device().is_cpu() &&
                  (y.scalar_type() == at::kFloat || y.scalar_type() == at::kDouble),
              "weight_grad takes float32 / float64 CPU tensors [N, O] and [N, D]");
  const Tensor a = y.contiguous(), b = x.contiguous();
  Tensor c = at::empty({y.size(1), x.size(1)}, y.options());
  if (y.size(0) == 0) return c.zero_();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "weight_grad", [&] {
    weight_grad_tiled<scalar_t>(a.size(0), a.size(1), b.size(1), a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                                c.data_ptr<scalar_t>());
  });
  return c;
}

// out [R, C] with row r the sum of the rows src[i] whose ids[i] == r, each added in the order of i:
// a one-hot input's weight gradient (transposed) and index_add_(0, ids, src) on zeros, bit for bit.
// Threads take blocks of columns and walk every row in order, so each sum keeps that order;
// index_add_ (a scatter-add) walks the rows once per column, a stride of C elements per add,
// which took 0.43 ms of a one-thread LSTM-256 step on the AMD Zen 5 of docs/kernels.md.
Tensor rows_added(const Tensor& ids, const Tensor& src, int64_t R) {
  TORCH_CHECK(ids.dim() == 1 && src.dim() == 2 && ids.size(0) == src.size(0) && src.device().is_cpu() &&
                  (ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt) &&
                  (src.scalar_type() == at::kFloat || src.scalar_type() == at::kDouble),
              "rows_added takes int64/int32 ids [N] and float32/float64 CPU rows [N, C]");
  const Tensor idx = ids.to(at::kLong).contiguous(), rows = src.contiguous();
  const int64_t N = rows.size(0), C = rows.size(1);
  const int64_t* id = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < N; ++i)
    TORCH_CHECK(id[i] >= 0 && id[i] < R, "rows_added: id ", id[i], " is outside [0, ", R, ")");
  Tensor out = at::zeros({R, C}, rows.options());
  constexpr int64_t kBlock = 256;  // columns per task: 1 KiB of float32 per row
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "rows_added", [&] {
    const scalar_t* x = rows.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, (C + kBlock - 1) / kBlock, 1, [&](int64_t begin, int64_t end) {
      const int64_t c0 = begin * kBlock, c1 = std::min(C, end * kBlock);
      for (int64_t i = 0; i < N; ++i) {
        const scalar_t* xi = x + i * C;
        scalar_t* oi = o + id[i] * C;
        for (int64_t c = c0; c < c1; ++c) oi[c] += xi[c];
      }
    });
  });
  return out;
}

// out [I, O] = W^T + bias (W [O, I], bias [O] or undefined): the table a one-hot input's rows are
// gathered from, in blocks (transpose_in_blocks; torch.add on W's transposed view read a column of
// W per output row); the same single add per element as that.
Tensor gather_table(const Tensor& w, const std::optional<Tensor>& bias) {
  TORCH_CHECK(w.dim() == 2 && w.device().is_cpu() && (w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble),
              "gather_table takes a float32/float64 CPU weight [O, I]");
  const Tensor wc = w.contiguous();
  const int64_t O = wc.size(0), I = wc.size(1);
  Tensor b;
  if (bias.has_value() && bias->defined()) {
    b = bias->contiguous();
    TORCH_CHECK(b.dim() == 1 && b.size(0) == O && b.scalar_type() == w.scalar_type(), "gather_table: bias must be [O]");
  }
  Tensor out = at::empty({I, O}, wc.options());
  AT_DISPATCH_FLOATING_TYPES(wc.scalar_type(), "gather_table", [&] {
    transpose_in_blocks<scalar_t>(wc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), O, I,
                                  b.defined() ? b.data_ptr<scalar_t>() : nullptr);
  });
  return out;
}

}  // namespace
}  // namespace rnn_kernels

TORCH_LIBRARY(rnn_train_kernels, m) {
  using namespace rnn_kernels;
  m.def("blas_available() -> bool", [] { return blas_available(); });
  m.def("bf16_available() -> bool", [] { return bf16_available(); });
  m.def("weight_grad(Tensor y, Tensor x) -> Tensor", &weight_grad);
  m.def("rows_added(Tensor ids, Tensor src, int rows) -> Tensor", &rows_added);
  m.def("gather_table(Tensor w, Tensor? bias) -> Tensor", &gather_table);
  m.def("bf16_matmul(Tensor a, Tensor bt) -> Tensor", [](const Tensor& a, const Tensor& bt) {
    TORCH_CHECK(bf16_available(), "bf16 products are not available here");
    return bf16_matmul(a, bt);
  });
  m.def("rnn_forward(Tensor x, Tensor? ids, Tensor h0, Tensor w_hh, bool relu, int path, int threads) -> Tensor",
        &rnn_forward);
  m.def("rnn_backward(Tensor d_out, Tensor d_hT, Tensor w_hh, Tensor hs, Tensor(a!) da, bool relu, bool need_dh0, "
        "int path, int threads) -> Tensor",
        &rnn_backward);
  m.def("gru_forward(Tensor x, Tensor? ids, Tensor h0, Tensor w_hh, Tensor b_hn, int path, int threads) -> "
        "(Tensor, Tensor, Tensor)",
        &gru_forward);
  m.def("gru_backward(Tensor d_out, Tensor d_hT, Tensor w_hh, Tensor hs, Tensor gates, Tensor n, Tensor(a!) dgh, "
        "Tensor(b!) dgi, bool need_dh0, int path, int threads) -> Tensor",
        &gru_backward);
  m.def("lstm_forward(Tensor x, Tensor? ids, Tensor h0, Tensor c0, Tensor w_hh, int path, int threads) -> "
        "(Tensor, Tensor, Tensor, Tensor)",
        &lstm_forward);
  m.def("lstm_backward(Tensor d_out, Tensor d_hT, Tensor d_cT, Tensor w_hh, Tensor cs, Tensor gates, Tensor tc, "
        "Tensor(a!) dg, bool need_dh0, int path, int threads) -> (Tensor, Tensor)",
        &lstm_backward);
}
