"""The per-step GEMM alone, on one thread: csrc/tiled.h's register tiles against torch.mm (MKL).

Why: a time step multiplies a few batch rows by W_hh, and whether a hand-written tile beats the
BLAS library on those shapes is a property of the CPU. This builds a small extension around
tiled.h itself (its Tile, with the forward's and the backward's tile shapes for this CPU),
times C[M, N] = A[M, K] @ W[K, N] with W packed once, and prints GFLOP/s for both.

    python benchmarks/tile_bench.py                 # the GRU-256 step shapes, B = 32 on 2 threads
    python benchmarks/tile_bench.py --shapes 16x512x1536,16x1536x512
    python benchmarks/tile_bench.py --shapes 32x512x2048,32x2048x512 --gates 4   # an LSTM-512's
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CSRC = ROOT / "rnn_train" / "kernels" / "csrc"

SOURCE = r"""
#include <torch/extension.h>
#include <chrono>
#include "tiled.h"
using namespace rnn_kernels;

template <int MR, int NV>
double run(const torch::Tensor& a, const torch::Tensor& panels, torch::Tensor& c, int64_t reps) {
  using TL = Tile<float, MR, NV>;
  const int64_t M = a.size(0), K = a.size(1), N = c.size(1);
  std::vector<float> out(MR * TL::W);
  const float* A = a.data_ptr<float>();
  const float* P = panels.data_ptr<float>();
  float* C = c.data_ptr<float>();
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t rep = 0; rep < reps; ++rep)
    for (int64_t c0 = 0; c0 < N; c0 += TL::W)
      for (int64_t r0 = 0; r0 < M; r0 += MR) {
        const int64_t rows = std::min<int64_t>(MR, M - r0);
        product_rows<float, NV, MR>(rows, K, A + r0 * K, K, P + (c0 / TL::W) * K * TL::W, out.data(), TL::W, false);
        for (int64_t r = 0; r < rows; ++r) std::memcpy(C + (r0 + r) * N + c0, out.data() + r * TL::W, sizeof(float) * TL::W);
      }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
}

// The forward's tile of a cell of G gate blocks (1: Elman, 3: GRU, 4: LSTM), and its panel width.
template <int G>
double forward_of(const torch::Tensor& a, const torch::Tensor& p, torch::Tensor& c, int64_t reps) {
  return run<ForwardTile<G>::MR, ForwardTile<G>::NV>(a, p, c, reps);
}
template <int G>
int64_t width_of() { return Tile<float, ForwardTile<G>::MR, ForwardTile<G>::NV>::W; }
double forward(torch::Tensor a, torch::Tensor p, torch::Tensor c, int64_t reps, int64_t G) {
  TORCH_CHECK(G == 1 || G == 3 || G == 4, "gate blocks: 1, 3 or 4");
  return G == 1 ? forward_of<1>(a, p, c, reps) : G == 4 ? forward_of<4>(a, p, c, reps) : forward_of<3>(a, p, c, reps);
}
double backward(torch::Tensor a, torch::Tensor p, torch::Tensor c, int64_t reps) {
  return run<kBackwardMR, kBackwardNV>(a, p, c, reps);
}
int64_t forward_width(int64_t G) { return G == 1 ? width_of<1>() : G == 4 ? width_of<4>() : width_of<3>(); }
int64_t backward_width() { return Tile<float, kBackwardMR, kBackwardNV>::W; }
// The training kernels' own packers, so that benchmarks/ceiling.py can charge a tile the packing of its operand:
// pack_t: W [G*K, K] -> panels of W^T (tiled.h pack_forward); pack_n: W [K, N] -> panels of W (pack_backward).
torch::Tensor pack_t(torch::Tensor w, int64_t G, int64_t PL) { return pack_forward<float>(w, G, PL); }
torch::Tensor pack_n(torch::Tensor w, int64_t width) { return pack_backward(w, width); }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward); m.def("backward", &backward);
  m.def("forward_width", &forward_width); m.def("backward_width", &backward_width);
  m.def("pack_t", &pack_t); m.def("pack_n", &pack_n);
}
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="16x256x768,16x768x256,32x256x768,32x768x256",
                   help="MxKxN list: M rows, K inner, N columns (768 = 3 x 256: a GRU-256's gates)")
    p.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    p.add_argument("--gates", type=int, choices=(1, 3, 4), default=3,
                   help="the forward tile of which cell: its gate blocks (1 Elman, 3 GRU, 4 LSTM)")
    a = p.parse_args()
    from rnn_train.kernels.build import compile_flags  # noqa: E402 (the flags the training kernels are built with)
    ext = cpp_extension.load_inline("rnn_train_tile_bench", SOURCE, extra_cflags=[*compile_flags(), f"-I{CSRC}"],
                                    extra_ldflags=["-fopenmp"])
    torch.set_num_threads(1)
    for shape in a.shapes.split(","):
        M, K, N = (int(v) for v in shape.split("x"))
        x, w = torch.randn(M, K), torch.randn(K, N) / K ** 0.5
        want = x @ w
        row = {"shape": [M, K, N]}
        for kind in ("forward", "backward"):
            gates = (a.gates,) if kind == "forward" else ()
            width = getattr(ext, f"{kind}_width")(*gates)
            if N % width:
                continue
            panels = w.view(K, N // width, width).permute(1, 0, 2).contiguous()  # [N/width][K][width]
            c = torch.empty(M, N)
            fn = (lambda f, g: lambda *args: f(*args, *g))(getattr(ext, kind), gates)
            reps = max(1, int(a.seconds / max(fn(x, panels, c, 3), 1e-6)))
            seconds = min(fn(x, panels, c, reps) for _ in range(3))
            assert torch.allclose(c, want, atol=1e-4), "the tile computed a wrong product"
            row[f"tiled_{kind}_gflops"] = round(2 * M * K * N / seconds / 1e9, 1)
        c = torch.empty(M, N)
        for _ in range(10):
            torch.mm(x, w, out=c)
        best = float("inf")
        for _ in range(3):
            reps = 200
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.mm(x, w, out=c)
            best = min(best, (time.perf_counter() - t0) / reps)
        row["torch_mm_gflops"] = round(2 * M * K * N / best / 1e9, 1)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
