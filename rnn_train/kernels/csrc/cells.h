// The gate arithmetic of one step for one batch row and a run of n hidden units: PyTorch's
// equations (nn.RNN, nn.GRU, nn.LSTM) forward, and their derivatives backward.
//
// The count n is an int64_t, or a std::integral_constant where the caller knows it at compile
// time (the tiled loop's full panels): then the loop compiles to straight-line vector code.
// Pointers point at the run's first unit. A [G*H] row holds G gate blocks (PyTorch's order)
// `gs` apart: H for the [T, B, G*H] tensors and for the one-hot gather table [V, G*H]. `x`, the
// row of x W_ih^T + biases, is read where it lies (a table row for one-hot input: no copy of it
// per step); `q`, the row of h_{t-1} W_hh^T, has its blocks `qs` apart (the block's own GEMM
// output). Raw pointers only, no Tensor accessors: anything that may throw inside a loop stops
// GCC from vectorising it.
#pragma once

#include "common.h"

namespace rnn_kernels {

template <typename T, typename N>
inline void rnn_cell_forward(N n, bool relu, const T* __restrict x, const T* __restrict q, T* __restrict h) {
  if (relu) {
    for (int64_t j = 0; j < n; ++j) h[j] = std::max(x[j] + q[j], T(0));
  } else {
    for (int64_t j = 0; j < n; ++j) h[j] = tanh_poly(x[j] + q[j]);
  }
}

template <typename T>
void rnn_cell_backward(int64_t n, bool relu, const T* __restrict h, const T* __restrict dh, const T* __restrict d_out_prev,
                       T* __restrict da, T* __restrict nx) {
  if (relu) {  // relu' read off the output: h > 0
    for (int64_t j = 0; j < n; ++j) da[j] = h[j] > T(0) ? dh[j] : T(0);
  } else {  // tanh' = 1 - h^2
    for (int64_t j = 0; j < n; ++j) da[j] = dh[j] * (T(1) - h[j] * h[j]);
  }
  std::memcpy(nx, d_out_prev, sizeof(T) * n);  // dh_{t-1} before the GEMM adds da W_hh
}

template <typename T, typename N>
inline void gru_cell_forward(N n, int64_t gs, int64_t qs, const T* __restrict x, T* __restrict g, const T* __restrict q,
                             const T* __restrict bn, const T* __restrict h_prev, T* __restrict h, T* __restrict nt) {
  // x: (W_ir x + b_ir + b_hr, W_iz x + b_iz + b_hz, W_in x + b_in); g receives (r, z, W_hn h + b_hn)
  for (int64_t j = 0; j < n; ++j) {
    T r = sigmoid(x[j] + q[j]);
    T z = sigmoid(x[gs + j] + q[qs + j]);
    T ghn = q[2 * qs + j] + bn[j];
    T nn = tanh_poly(x[2 * gs + j] + r * ghn);
    g[j] = r;
    g[gs + j] = z;
    g[2 * gs + j] = ghn;
    nt[j] = nn;
    h[j] = nn + z * (h_prev[j] - nn);
  }
}

template <typename T>
void gru_cell_backward(int64_t n, int64_t gs, const T* __restrict g, const T* __restrict nt, const T* __restrict h_prev,
                       const T* __restrict dh, const T* __restrict d_out_prev, T* __restrict hid, T* __restrict inp,
                       T* __restrict nx) {
  for (int64_t j = 0; j < n; ++j) {
    T r = g[j], z = g[gs + j], ghn = g[2 * gs + j], nn = nt[j], d = dh[j];
    T da_n = d * (T(1) - z) * (T(1) - nn * nn);
    T da_z = d * (h_prev[j] - nn) * z * (T(1) - z);
    T da_r = da_n * ghn * r * (T(1) - r);
    hid[j] = da_r;  // dL/d(h W_hh^T + b_hh)
    hid[gs + j] = da_z;
    hid[2 * gs + j] = da_n * r;
    inp[j] = da_r;  // dL/d(x W_ih^T + b_ih)
    inp[gs + j] = da_z;
    inp[2 * gs + j] = da_n;
    nx[j] = d_out_prev[j] + d * z;  // dh_{t-1} before the GEMM adds dgh W_hh
  }
}

template <typename T, typename N>
inline void lstm_cell_forward(N n, int64_t gs, int64_t qs, const T* __restrict x, T* __restrict g, const T* __restrict q,
                              const T* __restrict c_prev, T* __restrict c, T* __restrict tc, T* __restrict h) {
  // x: x W_ih^T + b_ih + b_hh; g receives the activated gates (i, f, g, o)
  for (int64_t j = 0; j < n; ++j) {
    T i = sigmoid(x[j] + q[j]);
    T f = sigmoid(x[gs + j] + q[qs + j]);
    T gg = tanh_poly(x[2 * gs + j] + q[2 * qs + j]);
    T o = sigmoid(x[3 * gs + j] + q[3 * qs + j]);
    T cv = f * c_prev[j] + i * gg;
    T t = tanh_poly(cv);
    g[j] = i;
    g[gs + j] = f;
    g[2 * gs + j] = gg;
    g[3 * gs + j] = o;
    c[j] = cv;
    tc[j] = t;
    h[j] = o * t;
  }
}

template <typename T>
void lstm_cell_backward(int64_t n, int64_t gs, const T* __restrict g, const T* __restrict c_prev, const T* __restrict tc,
                        const T* __restrict dh, T* __restrict dc, const T* __restrict d_out_prev, T* __restrict da,
                        T* __restrict nx) {
  // dc: dL/dc_t from the future on entry, dL/dc_{t-1} on exit
  for (int64_t j = 0; j < n; ++j) {
    T i = g[j], f = g[gs + j], gg = g[2 * gs + j], o = g[3 * gs + j], t = tc[j], d = dh[j];
    T dcv = dc[j] + d * o * (T(1) - t * t);
    da[j] = dcv * gg * i * (T(1) - i);
    da[gs + j] = dcv * c_prev[j] * f * (T(1) - f);
    da[2 * gs + j] = dcv * i * (T(1) - gg * gg);
    da[3 * gs + j] = d * t * o * (T(1) - o);
    dc[j] = dcv * f;
    nx[j] = d_out_prev[j];  // dh_{t-1} before the GEMM adds da W_hh
  }
}

}  // namespace rnn_kernels
