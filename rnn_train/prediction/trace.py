"""A model traced over a text: every state part and gate activation of every layer at every step.

    tr = trace(model, ids)            ids [T] -> tr.logits [T, V], tr.layers[l]["h" | "c" | gate] [T, H]

Row t holds what the model computed after reading character t: its state, its gates, and the
logits of character t + 1. The state starts at zero. The equations are the cell's CellSpec
`step` (rnn_train/model/cells.py) run in NumPy, in float64 by default, layer after layer (each
layer's input projections for the whole text are one product), so it works for every registered
cell and gives the gates, which the torch module does not return. tests/test_explore.py holds it
to the module's logits and final state, and the explorer's page to it.

Why not the stepper: it is tuned for sampling (halved sigmoid rows, reordered LSTM gates, no
activations kept); this is the plain reference, for analysis and for tests.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rnn_train.model.cells import NUMPY_OPS


@dataclass
class Trace:
    logits: np.ndarray  # [T, V]: row t predicts character t + 1
    layers: list[dict[str, np.ndarray]]  # per layer: each state part ("h", "c") and gate -> [T, H]

    def bits(self, ids: np.ndarray) -> np.ndarray:
        """Surprisal in bits of characters 1..T-1 given those before them [T - 1] (what `score` sums)."""
        logits = self.logits[:-1]
        m = logits.max(axis=1, keepdims=True)
        log_z = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
        return (log_z - logits[np.arange(len(logits)), ids[1:]]) / np.log(2.0)


def _param(params: dict, name: str, rows: int, dtype) -> np.ndarray:
    return params[name].astype(dtype) if name in params else np.zeros(rows, dtype)


def trace(model, ids: np.ndarray, dtype=np.float64) -> Trace:
    """Run `model` (a CharRNN) over ids [T] from a zero state; see the module docstring."""
    spec, rnn = model.spec, model.rnn
    params = {name: p.detach().cpu().numpy() for name, p in model.named_parameters()}
    ids = np.asarray(ids, dtype=np.int64)
    T, H = len(ids), rnn.hidden_size
    if model.embed is not None:
        inputs = params["embed.weight"].astype(dtype)[ids]  # [T, E]
    else:
        inputs = np.eye(model.vocab_size, dtype=dtype)[ids]  # [T, V] one-hot
    layers = []
    for layer in range(rnn.num_layers):
        w_ih = params[f"rnn.weight_ih_l{layer}"].astype(dtype)
        w_hh = params[f"rnn.weight_hh_l{layer}"].astype(dtype)
        G = w_ih.shape[0]
        gi_all = inputs @ w_ih.T + _param(params, f"rnn.bias_ih_l{layer}", G, dtype)  # [T, G]
        b_hh = _param(params, f"rnn.bias_hh_l{layer}", G, dtype)
        state = tuple(np.zeros((1, H), dtype) for _ in spec.state)
        out = {name: np.empty((T, H), dtype) for name in (*spec.state, *spec.gates)}
        for t in range(T):
            gh = state[0] @ w_hh.T + b_hh  # [1, G]
            state, acts = spec.step(NUMPY_OPS, gi_all[t:t + 1], gh, state)
            for name, value in zip(spec.state, state):
                out[name][t] = value[0]
            for name, value in acts.items():
                out[name][t] = value[0]
        layers.append(out)
        inputs = out["h"]
    logits = inputs @ params["decoder.weight"].astype(dtype).T + params["decoder.bias"].astype(dtype)
    return Trace(logits, layers)
