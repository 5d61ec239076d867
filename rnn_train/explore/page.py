"""The explorer's page: one self-contained HTML file holding the model, the texts and the script.

    page = build_page(model, vocab, cfg, run, documents)      -> str (UTF-8 HTML)

What goes in (everything inline: the page loads nothing and its Content-Security-Policy forbids
any request, so it works from file:// offline):

    the weights       float32, base64, laid out for the page's matrix-vector product
                      (wasm.py): each matrix [W | b | 0...] with rows padded to 8 columns, and
                      layer 0's input projection as a lookup table [V, G] (one-hot: W_ih^T + b_ih;
                      learned embedding: E W_ih^T + b_ih, as the stepper does)
    the cell's step   its CellSpec hook "js" (cells_js.py), checked in the page against the
                      spec's gate and state names
    the texts         as the model reads them (`score`'s preparation), each from a zero state
    gradient flow     ||dL_T/dh_t|| for this model on these texts, from teaching/gradflow.py
    pinyin tables     for pinyin models: Chinese typed in the page converts as `predict` does
                      (pinyin_table.py)

Everything else (the trace, surprisal, units, saturation, matches) the page computes when it
opens, from the weights, so that its numbers are one model's numbers: tests/test_explore.py
holds them to rnn_train.prediction.trace and to `predict` and `score`.
"""
from __future__ import annotations

import base64
import copy
import math
import re
from dataclasses import dataclass
from importlib.resources import files

import numpy as np
import torch

from rnn_train.explore import wasm
from rnn_train.errors import UserError
from rnn_train.model.charrnn import check_vocab

PAD = 8  # columns of every stored matrix are padded to a multiple of this (the product's step)
GRADFLOW_STEPS, GRADFLOW_BATCH = 100, 16


@dataclass
class Document:
    name: str  # the file it came from, or what it is ("validation text of ...")
    text: str  # as the model reads it


def _static(name: str) -> str:
    return (files(__package__) / "static" / name).read_text(encoding="utf-8")


def _padded(w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """W [R, C], b [R] -> [W | b | 0...] [R, ceil8(C + 1)] float32."""
    rows, cols = w.shape
    out = np.zeros((rows, -(-(cols + 1) // PAD) * PAD), np.float32)
    out[:, :cols], out[:, cols] = w, b
    return out


def pack_weights(model) -> dict:
    """The model's weights as the page's script reads them: one float32 buffer (base64) and an
    index name -> [offset, rows, cols] in floats. Names: table, wih<l> (l >= 1), whh<l>, dec."""
    p = {name: t.detach().cpu().double().numpy() for name, t in model.named_parameters()}
    rnn, G = model.rnn, model.spec.num_blocks * model.rnn.hidden_size
    zeros = np.zeros(G)
    b_ih0 = p.get("rnn.bias_ih_l0", zeros)
    if model.embed is not None:
        table = p["embed.weight"] @ p["rnn.weight_ih_l0"].T + b_ih0  # [V, G]
    else:
        table = p["rnn.weight_ih_l0"].T + b_ih0
    mats = {"table": table.astype(np.float32)}
    for layer in range(rnn.num_layers):
        if layer:
            mats[f"wih{layer}"] = _padded(p[f"rnn.weight_ih_l{layer}"], p.get(f"rnn.bias_ih_l{layer}", zeros))
        mats[f"whh{layer}"] = _padded(p[f"rnn.weight_hh_l{layer}"], p.get(f"rnn.bias_hh_l{layer}", zeros))
    mats["dec"] = _padded(p["decoder.weight"], p["decoder.bias"])
    index, parts, offset = {}, [], 0
    for name, m in mats.items():
        flat = np.zeros(-(-m.size // PAD) * PAD, np.float32)  # every matrix starts 32-byte aligned
        flat[:m.size] = m.ravel()
        index[name] = [offset, int(m.shape[0]), int(m.shape[1])]
        parts.append(flat)
        offset += flat.size
    data = np.concatenate(parts).astype("<f4").tobytes()
    return {"b64": base64.b64encode(data).decode("ascii"), "index": index, "floats": offset}


def gradient_flow(model, ids: np.ndarray, text: str, seed: int = 0) -> dict | None:
    """||dL_T/dh_t|| / ||dL_T/dh_T|| for t = 1..T on B windows of one text, ids (named `text` on the
    page; teaching/gradflow.py, float64, zero state, no clipping); None when the text is too short for
    a window of 2."""
    from rnn_train.teaching.gradflow import measure_char_rnn, sample_windows

    steps = min(GRADFLOW_STEPS, len(ids) - 1)
    if steps < 2:
        return None
    batch = min(GRADFLOW_BATCH, len(ids) - steps)
    x, y = sample_windows(ids, batch, steps, seed)
    m = copy.deepcopy(model).double().eval()
    with torch.backends.cudnn.flags(enabled=False):
        r = measure_char_rnn(m, torch.from_numpy(x), torch.from_numpy(y))
    return {"steps": r.steps, "batch": r.batch, "seed": seed, "text": text, "ratio": r.ratio, "dL_dh": r.dL_dh,
            "per_step_factor": r.per_step_factor if math.isfinite(r.per_step_factor) else None,
            "steps_below": r.steps_below}


def _json_for_script(value) -> str:
    """JSON safe inside <script>: no '<' at all (so no '</script>'), strict (no NaN)."""
    from rnn_train.files import strict_json

    return strict_json(value).replace("<", "\\u003c")


def page_start() -> bytes:
    """The bytes every page this module writes starts with (its head up to the title): how
    `explore --out` knows an earlier page, which it may replace, from any other file."""
    return _static("explore.html").split("<title>")[0].encode("utf-8")


def build_page(model, vocab, cfg, run: dict, documents: list[Document], pinyin_table: dict | None = None,
               gradflow: dict | None = None) -> str:
    """The HTML page; `run` says where the model came from (checkpoint, step, loss, tensorboard,
    the command, what was cut), shown in its header."""
    check_vocab(model, vocab)
    spec = model.spec
    js = spec.hook("js")
    if js is None:
        raise UserError(f"cell {spec.name!r} has no JavaScript step (CellSpec hook \"js\"): the page cannot run it; "
                        f"register one (see rnn_train/explore/cells_js.py)")
    data = {
        "model": {"cell": spec.name, "gates": list(spec.gates), "state": list(spec.state), "layers": model.rnn.num_layers,
                  "hidden": model.rnn.hidden_size, "blocks": spec.num_blocks, "embedding": model.embedding_kind,
                  "vocab": vocab.itos, "kind": cfg.data.kind, "tones": cfg.data.tones,
                  "letters_only": cfg.data.letters_only},
        "weights": pack_weights(model),
        "wasm": wasm.module_base64(),
        "run": run,
        "docs": [{"name": d.name, "text": d.text} for d in documents],
        "gradflow": gradflow,
        "pinyin": pinyin_table,
    }
    title = f"{spec.name.upper()} {model.rnn.hidden_size}x{model.rnn.num_layers}: {run.get('checkpoint', '')}"
    values = {"TITLE": _escape(title), "CSS": _static("explore.css"), "DATA": _json_for_script(data),
              "CELL": js, "SCRIPT": _static("explore.js")}
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], _static("explore.html"))  # one pass


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
