"""`rnn-train export`: a model's one-character step as an ONNX graph, for onnxruntime and the others.

    rnn-train export --checkpoint runs/pinyin_gru --format onnx --out model.onnx

The graph is one step of the model, the state carried by the caller (B is dynamic):

    (ids [B] int64, h [L, B, H] (, c [L, B, H] for an LSTM)) -> (logits [B, V], h_next (, c_next))

The inputs after `ids` are the cell's state parts, named as its CellSpec names them (`state`), the
outputs the same names + "_next". The logits are the model's own: id 0 is <unk>, a placeholder a
sampler must never pick (predict sets its logit to -inf). The vocab and a description of the model
travel in the file (ONNX metadata "vocab": JSON list id -> character; "model": JSON of cell, sizes,
state names, dtype, corpus, steps, losses: checkpoint.describe) and in a JSON beside it (model.json
for model.onnx) for readers without an ONNX parser. README.md samples from it with onnxruntime and
NumPy alone.

Why one step, built from the CellSpec: `OneStep` runs the cell's reference `step` (cells.py, torch
ops) on the model's own weights, so every registered cell (one registered in a test included),
one-hot or learned input and any number of layers exports through one path with nothing per cell,
and a runtime that steps it needs no loop over time in the graph.

Exporter: `torch.onnx.export(dynamo=True)` (torch.export + onnxscript), the one torch develops. The
TorchScript-based exporter also works in torch 2.13 and is much faster (0.2-0.8 s against 12-36 s
for a 2-layer model of 16 on a busy 2-core machine; about 2-3 s when it is quiet), but warns that it
will be removed; an export is done once per model.

Checked before anything is written: onnxruntime steps CHECK_STEPS characters of two greedy texts
(the batch axis used) and the model's own module steps the same characters; logits further apart
than the tolerance are an error and nothing is written. tests/test_export.py holds every cell to
1e-5 over 1,000 steps of held-out text and to the same greedy text as predict.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rnn_train.cli import ArgumentParser
from rnn_train.errors import UserError
from rnn_train.files import output_arg
from rnn_train.model.cells import torch_ops
from rnn_train.model.charrnn import CharRNN

CHECK_STEPS = 200  # characters stepped by onnxruntime and torch before the file is written
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9}
"""Largest |logit difference| the check accepts, per unit of the logits' scale (the largest |logit|,
at least 1): rounding grows with the numbers rounded, and a model with large weights was refused at
3.6e-4 of logits in the thousands, 1e-7 of them. The characters' logits only: <unk>'s is never
sampled, and a huge one (its bias at -20000) let a graph of other weights pass."""
EXAMPLE_BATCH = 2  # the batch the graph is traced with (B is dynamic in the graph)

OPSET = 20  # the ONNX operator set the graph asks of a runtime (torch 2.13's default, named so it stays)


class OneStep(nn.Module):
    """forward(ids [B], *state parts [L, B, H]) -> (logits [B, V], *new state parts): one character
    through `model` with its CellSpec's reference step. Evaluation only (no dropout)."""

    def __init__(self, model: CharRNN):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, *state: torch.Tensor):
        m, ops = self.model, torch_ops()
        rnn, spec = m.rnn, m.spec
        x = m.embed(ids) if m.embed is not None else None  # [B, E], or None: one-hot
        new: list[list[torch.Tensor]] = [[] for _ in spec.state]
        for k in range(rnn.num_layers):
            w_ih, w_hh = getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}")
            b_ih, b_hh = getattr(rnn, f"bias_ih_l{k}", None), getattr(rnn, f"bias_hh_l{k}", None)
            if x is None:  # one-hot input: W_ih @ onehot(id) is column id of W_ih
                gi = F.embedding(ids, w_ih.t()) + (b_ih if b_ih is not None else 0)  # [B, G*H]
            else:
                gi = F.linear(x, w_ih, b_ih)
            parts = tuple(p[k] for p in state)  # each [B, H]
            parts, _ = spec.step(ops, gi, F.linear(parts[0], w_hh, b_hh), parts)
            for kept, part in zip(new, parts):
                kept.append(part)
            x = parts[0]  # h: the next layer's input
        return (m.decoder(x), *(torch.stack(p) for p in new))


def names(model: CharRNN) -> tuple[list[str], list[str]]:
    """The graph's input and output names: ids and the state parts; logits and the parts + _next."""
    parts = list(model.spec.state)
    return ["ids", *parts], ["logits", *(f"{p}_next" for p in parts)]


def to_onnx(model: CharRNN) -> bytes:
    """The serialized ONNX model of one step (no metadata); a UserError says why it cannot be made."""
    step = OneStep(model).eval()
    state = model.spec.unpack(model.begin_state(EXAMPLE_BATCH))
    ids = torch.arange(1, EXAMPLE_BATCH + 1) % model.vocab_size
    batch = torch.export.Dim("batch")
    inputs, outputs = names(model)
    quiet = logging.getLogger("torch")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # the exporter's progress, its notes, the graph of a failed trace
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(step, (ids, *state), None, input_names=inputs, output_names=outputs,
                                        dynamic_shapes={"ids": {0: batch}, "state": tuple({1: batch} for _ in state)},
                                        dynamo=True, verbose=False, opset_version=OPSET)
        return program.model_proto.SerializeToString()
    except Exception as e:  # the exporter's many ways to fail: say the innermost, which names the cause
        if any(isinstance(c, KeyboardInterrupt) for c in _chain(e)):  # a Ctrl-C the exporter wrapped: no failure
            raise KeyboardInterrupt from None
        raise UserError(f"cannot export the {model.cell} model to ONNX ({_innermost(e)})") from None
    finally:
        quiet.setLevel(level)


def _chain(error: BaseException) -> list[BaseException]:
    """The error and each it was raised from or while handling, outermost first."""
    chain = [error]
    while (error.__cause__ or error.__context__) is not None and len(chain) < 100:
        error = error.__cause__ or error.__context__
        chain.append(error)
    return chain


def _innermost(error: BaseException) -> str:
    """'Type: first line' of the last exception in the chain (the exporter wraps the cause twice)."""
    error = _chain(error)[-1]
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{error.__class__.__name__}: {line[:240]}" if line else error.__class__.__name__


def with_metadata(graph: bytes, info: dict) -> bytes:
    """The ONNX model with the vocab and the model's description in its metadata_props."""
    import onnx

    proto = onnx.load_from_string(graph)
    onnx.helper.set_model_props(proto, {"vocab": json.dumps(info["vocab"], ensure_ascii=False),
                                        "model": json.dumps({k: v for k, v in info.items() if k != "vocab"},
                                                            ensure_ascii=False)})
    proto.producer_name = "rnn-train"
    return proto.SerializeToString()


@torch.no_grad()
def check(model: CharRNN, graph: bytes, steps: int = CHECK_STEPS) -> float:
    """Step onnxruntime and the model's module through `steps` characters of greedy text from two
    starts (a batch of 2); the largest |logit difference|, or a UserError past the tolerance."""
    import onnxruntime as ort

    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    inputs, _ = names(model)
    ids = np.arange(1, EXAMPLE_BATCH + 1) % model.vocab_size
    state = model.begin_state(EXAMPLE_BATCH)
    feeds = {name: part.numpy() for name, part in zip(inputs[1:], model.spec.unpack(state))}
    worst, scale = 0.0, 1.0
    for _ in range(steps):
        logits, *parts = session.run(None, {"ids": ids.astype(np.int64), **feeds})
        expected, state = model(torch.as_tensor(ids, dtype=torch.int64)[:, None], state)
        real = expected[:, 0, 1:]  # the characters' logits: <unk>'s is never sampled, whatever its size
        worst = max(worst, float(np.abs(logits[:, 1:] - real.numpy()).max()))
        scale = max(scale, float(real.abs().max()))
        feeds = dict(zip(inputs[1:], parts))
        logits[:, 0] = -np.inf  # <unk>
        ids = logits.argmax(axis=1)
    limit = TOLERANCE[model.decoder.weight.dtype] * scale
    if not worst <= limit:
        raise UserError(f"the exported graph's logits differ from the model's by {worst:.3g} "
                        f"(> {limit:.3g}: {TOLERANCE[model.decoder.weight.dtype]:g} of the largest |logit|, "
                        f"{scale:.3g}); nothing written")
    return worst


def export_onnx(model: CharRNN, info: dict, out: str | Path) -> float:
    """Write `out` (the graph with its metadata) and `out`.json (the metadata) after the onnxruntime
    check, atomically and together (on a full disk the old pair stays); -> the check's largest logit
    difference. The model is traced in eval mode and left in the mode it came in."""
    from rnn_train.files import atomic_write_files, strict_json
    from rnn_train.prediction.generate import eval_mode

    out = Path(out)
    with eval_mode(model):
        graph = with_metadata(to_onnx(model), info)
        worst = check(model, graph)
    inputs, outputs = names(model)
    meta = strict_json({"onnx": out.name, "inputs": inputs, "outputs": outputs, "unk_id": 0, **info}, indent=2)
    atomic_write_files([(out, lambda f: f.write(graph)),
                        (out.with_suffix(".json"), lambda f: f.write((meta + "\n").encode("utf-8")))])
    return worst


def is_export_metadata(path: Path) -> bool:
    """Whether `path` is the metadata file of an earlier export (a JSON object naming its graph)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("onnx"), str) and "inputs" in meta


def is_earlier_export(graph: Path) -> bool:
    """Whether `graph` is the graph of an earlier export: the metadata file beside it names it."""
    meta = graph.with_suffix(".json")
    return is_export_metadata(meta) and json.loads(meta.read_text(encoding="utf-8"))["onnx"] == graph.name


def main(argv: list[str] | None = None, prog: str = "rnn-train export") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__.split("\n")[0].split(": ", 1)[1])
    ap.add_argument("--checkpoint", required=True, help="a .pt file or a run directory (uses its best.pt)")
    ap.add_argument("--format", required=True, choices=["onnx"], help="onnx (the only one)")
    ap.add_argument("--out", required=True, type=lambda text: Path(output_arg(text)),
                    help="the .onnx file to write; the vocab and the model's description also go beside it "
                         "as <out without .onnx>.json")
    args = ap.parse_args(argv)
    if args.out.name.lower() == ".onnx":  # a hidden file's name to Python: no suffix
        raise UserError(f"--out {args.out}: give the graph a name before .onnx (e.g. model.onnx)")
    if args.out.suffix.lower() != ".onnx":
        raise UserError(f"--out {args.out}: the graph's file name ends in .onnx (its metadata goes beside it as .json)")

    from rnn_train.files import refuse_replacing
    from rnn_train.model.checkpoint import describe, load_model, resolve_checkpoint

    checkpoint = resolve_checkpoint(args.checkpoint)
    refuse_replacing(args.out, "--out", reads=(checkpoint,), own=is_earlier_export,
                     kind="an earlier export's graph (no metadata .json beside it names it)")
    refuse_replacing(args.out.with_suffix(".json"), "--out's metadata file", reads=(checkpoint,),
                     own=is_export_metadata, kind="an earlier export's metadata")
    model, vocab, cfg, ckpt = load_model(checkpoint)
    worst = export_onnx(model, describe(model, vocab, cfg, ckpt), args.out)
    inputs, outputs = names(model)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes) and {args.out.with_suffix('.json')}: one step of "
          f"the {cfg.model.cell} model, ({', '.join(inputs)}) -> ({', '.join(outputs)}), batch dynamic")
    print(f"checked with onnxruntime: {CHECK_STEPS} steps, batch {EXAMPLE_BATCH}, largest logit difference "
          f"{worst:.2g}")
    return 0
