"""Each built-in cell's step in JavaScript, for the explorer's page: the CellSpec hook "js".

A cell's source is one JavaScript expression, an object with

    gates  the activations `step` fills, named as CellSpec.gates (GRU r, z, n; LSTM i, f, g, o)
    saturating  the gates that are sigmoids, whose saturation the page plots (GRU r, z; LSTM i, f, o)
    state  the parts of its state, named as CellSpec.state (("h",) or ("h", "c"))
    step(ops, gi, gh, state, acts)
           gi = x W_ih^T + b_ih and gh = h W_hh^T + b_hh of one row ([G*H] arrays), state the
           arrays [H] of its parts, updated in place, acts the gates' arrays [H] to fill;
           ops.sigmoid / ops.tanh the elementwise functions

which is `CellSpec.step(ops, gi, gh, state)` for one row, written out. The files live in
static/cells/; tests/test_explore.py runs them in Chromium against the Python reference. A cell
registered without a "js" hook cannot be explored (`rnn-train explore` says so in one line).
"""
from __future__ import annotations

from importlib.resources import files


def _source(name: str) -> str:
    return (files(__package__) / "static" / "cells" / f"{name}.js").read_text(encoding="utf-8")


RNN = _source("rnn")
GRU = _source("gru")
LSTM = _source("lstm")
