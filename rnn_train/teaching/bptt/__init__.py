"""NumPy reference RNN / GRU / LSTM with hand-written backpropagation through time (BPTT).

Why this module exists: autograd hides how a gradient reaches step 1 from a loss at step T.
Here every cell's forward pass is written as the equations PyTorch documents, and every
backward pass as the derivation: walk time in reverse, add the gradient arriving from the
step's own output to the one carried back from the future (``dh_next``), push it through the
cell's local derivatives, accumulate the parameter gradients, and hand ``dh_next`` (and
``dc_next`` for the LSTM) to the previous step. ``tests/test_bptt.py`` proves every number
equal to ``torch.autograd`` on ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM``; ``docs/bptt.md`` has the
derivation. This package imports NumPy only (`rnn-train bptt`, in compare.py, imports torch to
compare against it).

Public API
----------
Cells (single layer, time-major; G = 1, 3, 4 gate blocks for "rnn", "gru", "lstm"; each cell's
step is its CellSpec's in rnn_train/model/cells.py, and the registry points back here with the
hook "bptt")::

    rnn_forward(x, h0, params, activation="tanh")  -> ForwardResult(hs, h_T, None, cache)
    gru_forward(x, h0, params)                     -> ForwardResult(hs, h_T, None, cache)
    lstm_forward(x, h0, c0, params)                -> ForwardResult(hs, h_T, c_T, cache)
    rnn_backward(dhs, cache, dh_T=None)            -> Gradients(dx, dh0, None, params)
    gru_backward(dhs, cache, dh_T=None)            -> Gradients(dx, dh0, None, params)
    lstm_backward(dhs, cache, dh_T=None, dc_T=None) -> Gradients(dx, dh0, dc0, params)

    forward(cell, x, h0, params, c0=None, activation="tanh")  dispatches on `cell`
    backward(dhs, cache, dh_T=None, dc_T=None)     dispatches on the cell recorded in `cache`

Parameters and helpers::

    init_params(cell, input_size, hidden_size, rng, bias=True, dtype=np.float64) -> params
    params_from_torch(state_dict, prefix="") -> params   ("weight_ih_l0" -> "W_ih", ...)
    params_to_torch(params, prefix="")       -> state_dict
    linear_forward(x, W, b=None)  -> y                   y = x W^T + b (nn.Linear layout)
    linear_backward(dy, x, W)     -> (dx, dW, db)
    softmax_cross_entropy(logits [N, V], targets [N]) -> (mean loss, dlogits [N, V])

Conventions
-----------
- ``params`` is a plain dict with PyTorch's single-layer names and shapes:
  ``W_ih`` [G*H, I], ``W_hh`` [G*H, H] and, optionally (``bias=False`` leaves them out),
  ``b_ih`` [G*H], ``b_hh`` [G*H]. Gate blocks are stacked along rows in PyTorch's order:
  GRU (r, z, n), LSTM (i, f, g, o).
- ``x`` [T, B, I] is time-major; ``h0``/``c0`` [B, H] (``None`` means zeros);
  ``hs`` [T, B, H] holds every step's hidden output, so ``hs[-1]`` equals ``h_T``.
- Arithmetic runs in ``x``'s floating dtype (float64 or float32); parameters and states are
  cast to it, and every returned array has it. An integer ``x`` (a one-hot array built as
  ints) takes the dtype of ``W_hh``.
- ``dhs`` [T, B, H] is the upstream gradient dL/dh_t of a scalar loss L on every step's
  output; ``dh_T``/``dc_T`` [B, H] add a gradient on the final state (``None`` means zero).
  The gradient w.r.t. ``h_T`` is therefore ``dhs[-1] + dh_T``, exactly as autograd sums it
  when both ``output`` and ``h_n`` of a PyTorch RNN feed the loss.
"""

from rnn_train.teaching.bptt.common import (ACTIVATIONS, BpttCell, Cache, ForwardResult, Gradients, bptt_cells,
                                            cell_spec, has_cell_state, init_params, linear_backward, linear_forward,
                                            params_from_torch, params_to_torch, sigmoid, softmax_cross_entropy)
from rnn_train.teaching.bptt.gru import gru_backward, gru_forward
from rnn_train.teaching.bptt.lstm import lstm_backward, lstm_forward
from rnn_train.teaching.bptt.rnn import rnn_backward, rnn_forward

__all__ = [
    "ACTIVATIONS",
    "BpttCell",
    "CELLS",
    "ForwardResult",
    "Gradients",
    "Cache",
    "rnn_forward",
    "rnn_backward",
    "gru_forward",
    "gru_backward",
    "lstm_forward",
    "lstm_backward",
    "forward",
    "backward",
    "bptt_cells",
    "init_params",
    "params_from_torch",
    "params_to_torch",
    "linear_forward",
    "linear_backward",
    "softmax_cross_entropy",
    "sigmoid",
]

CELLS = bptt_cells()
"""The cells registered with a hand-written BPTT when this package was imported."""


def forward(cell: str, x, h0, params: dict, c0=None, activation: str = "tanh") -> ForwardResult:
    """Run ``cell`` (a registered cell with a BPTT: "rnn", "gru", "lstm") over ``x`` [T, B, I];
    see the cell functions for equations.

    ``h0``/``c0`` may be None (zeros); ``c0`` is only accepted for a cell with a cell state (the
    LSTM) and ``activation`` only changes the Elman RNN.
    """
    spec = cell_spec(cell)
    if c0 is not None and not has_cell_state(cell):
        raise ValueError(f"c0 is only meaningful for a cell with a cell state (LSTM), not for cell {cell!r}")
    if activation != "tanh" and not spec.elman:
        raise ValueError(f"activation {activation!r} applies to the Elman RNN only, not to cell {cell!r}")
    return spec.hook("bptt").forward(x, h0, c0, params, activation)


def backward(dhs, cache: Cache, dh_T=None, dc_T=None) -> Gradients:
    """BPTT for whichever cell produced ``cache``; see the cell functions for the derivations."""
    if dc_T is not None and not has_cell_state(cache.cell):
        raise ValueError(f"dc_T is only meaningful for a cell with a cell state (LSTM), not for cell {cache.cell!r}")
    return cell_spec(cache.cell).hook("bptt").backward(dhs, cache, dh_T, dc_T)
