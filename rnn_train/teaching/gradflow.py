"""Gradient flow through time, measured: ||dL/dh_t|| and ||dL_T/dh_t|| for every step t of a window.

    python -m rnn_train gradflow --checkpoint runs/gradflow_rnn/best.pt --steps 100
    python -m rnn_train gradflow --checkpoint runs/gradflow_rnn --steps 100 --untrained --seed 1
    python -m rnn_train gradflow --compare runs/gradflow_rnn runs/gradflow_gru runs/gradflow_lstm --steps 100

h_t is the top layer's output at step t (what nn.RNN / GRU / LSTM return, and what the decoder
reads). Two losses on the same B windows of T characters from the checkpoint's own validation
split, zero initial state, dropout off:

    L   = mean cross-entropy over all B·T positions (the training loss)
    L_T = mean cross-entropy over the B positions of the last step only

||dL/dh_t|| is what training actually feeds back into step t; ||dL_T/dh_t|| isolates how far back
one error signal reaches: it is the last step's gradient pushed through T - t Jacobians
dh_{s}/dh_{s-1}, and for a vanilla RNN each of those is diag(1 - h_s²) · W_hh.

Why the recurrence is stepped by hand: nn.RNN runs all T steps in one fused op, and the gradient
autograd reports for its `output` tensor is only the part that reaches the loss through the
decoder at that step (`dhs[t]` in rnn_train/teaching/bptt/). The route through h_{t+1}, h_{t+2}, ... is
inside the op, so `output.retain_grad()` would show dL_T/dh_t = 0 for every t < T. Here the core
is called one step at a time and the very tensor that goes to the decoder is also the next step's
state, so autograd returns the total derivative through both routes.

Clipping: `clip_grad_norm_` rescales the *parameter* gradient by one factor
c = min(1, clip / ||grad||). A gradient times c is the gradient of c·L, and the gradient of c·L
with respect to every h_t is c·dL/dh_t: clipping acts as if every per-step gradient had been
multiplied by the same c. So the "clipped" columns are the unclipped ones times c (each loss gets
the coefficient its own parameter gradient would get). An explosion is bounded; a vanished gradient
stays vanished, because c <= 1 and every ratio ||dL_T/dh_t|| / ||dL_T/dh_T|| is unchanged.

Norms are Frobenius norms of the [B, H] slice at step t; the measurement runs in float64 by default
so that a gradient that has decayed to 1e-40 is not rounded to zero.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rnn_train.cli import ArgumentParser, seed_arg
from rnn_train.config import MAX_THREADS
from rnn_train.errors import UserError, integer
from rnn_train.files import output_arg, shell_word
from rnn_train.model import cells
from rnn_train.runfiles import GRADFLOW
from rnn_train.training.schedule import clip_coefficient

THRESHOLDS = (1e-1, 1e-2, 1e-3)  # "steps back until ||dL_T/dh_t|| falls below this share of its t=T value"
TAGS = ("dL_dh", "dL_dh_clipped", "dLT_dh", "dLT_dh_clipped", "dLT_dh_ratio")


# ----------------------------------------------------------------------------------------------
# pure measurement


@dataclass
class FlowResult:
    """Per-step gradient norms of one window batch; index i of each list is step t = i + 1."""

    steps: int
    batch: int
    loss: float  # L, mean CE over all steps
    loss_last: float  # L_T, mean CE at the last step
    dL_dh: list[float]  # ||dL/dh_t||, t = 1..T
    dLT_dh: list[float]  # ||dL_T/dh_t||
    grad_norm: float  # global parameter gradient norm of L, before clipping
    grad_norm_last: float  # same for L_T
    clip: float  # max norm (0 = no clipping)
    clip_coef: float  # min(1, clip / grad_norm), 1 when clip = 0
    clip_coef_last: float
    dL_dh_clipped: list[float] = field(default_factory=list)
    dLT_dh_clipped: list[float] = field(default_factory=list)
    ratio: list[float] = field(default_factory=list)  # ||dL_T/dh_t|| / ||dL_T/dh_T||
    steps_below: dict[str, int | None] = field(default_factory=dict)  # threshold -> first T - t below it
    per_step_factor: float = math.nan  # geometric mean shrink (<1) or growth (>1) per step back
    meta: dict[str, Any] = field(default_factory=dict)  # where the numbers came from (checkpoint, cell, ...)

    def __post_init__(self) -> None:
        self.dL_dh_clipped = [v * self.clip_coef for v in self.dL_dh]
        self.dLT_dh_clipped = [v * self.clip_coef_last for v in self.dLT_dh]
        last = self.dLT_dh[-1]
        self.ratio = [v / last if last > 0 else math.nan for v in self.dLT_dh]
        self.steps_below = {f"{th:g}": steps_back_below(self.ratio, th) for th in THRESHOLDS}
        r1 = self.ratio[0]
        self.per_step_factor = r1 ** (1.0 / (self.steps - 1)) if self.steps > 1 and r1 > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON; a NaN or infinity (e.g. the per-step factor of a 1-step window) becomes None."""
        return _finite(asdict(self))


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def steps_back_below(ratio: Sequence[float], threshold: float) -> int | None:
    """Smallest k = T - t with ratio[t] < threshold, scanning back from t = T; None if it never falls below."""
    for k, r in enumerate(reversed(ratio)):
        if r < threshold:
            return k
    return None


def _top_replaced(state: Any, h_top: torch.Tensor) -> Any:
    """`state` with its top layer's h replaced by `h_top` [B, H] (c of an LSTM is kept)."""
    if isinstance(state, tuple):
        h, *rest = state
        return (torch.cat([h[:-1], h_top.unsqueeze(0)]), *rest)
    return torch.cat([state[:-1], h_top.unsqueeze(0)])


def unrolled_outputs(core: nn.Module, inputs: torch.Tensor, state: Any) -> list[torch.Tensor]:
    """Run `core` one step at a time on inputs [B, T, I]; returns [h_1 .. h_T], each [B, H].

    Each returned h_t is both the decoder's input at t and (as the top layer of the state) the
    recurrence's input at t+1, so a gradient taken with respect to it is the total derivative."""
    hs = []
    for t in range(inputs.shape[1]):
        x_t = inputs[:, t:t + 1] if core.batch_first else inputs[:, t].unsqueeze(0)
        out, state = core(x_t, state)  # out [B, 1, H] (or [1, B, H])
        h_t = out[:, 0] if core.batch_first else out[0]  # [B, H]
        state = _top_replaced(state, h_t)
        hs.append(h_t)
    return hs


def measure(core: nn.Module, decoder: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
            targets: torch.Tensor, state: Any, params: Sequence[torch.Tensor], clip: float = 0.0) -> FlowResult:
    """Gradient norms for inputs [B, T, I] (already encoded), targets [B, T] class ids, initial state.

    `decoder` maps h [B, T, H] to logits [B, T, V]; `params` are the parameters whose global gradient
    norm clipping would look at (all of the model's, as in the trainer)."""
    B, T = targets.shape
    hs = unrolled_outputs(core, inputs, state)
    logits = decoder(torch.stack(hs, dim=1))  # [B, T, V]
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
    loss_last = F.cross_entropy(logits[:, -1], targets[:, -1])
    params = list(params)

    def grads(objective: torch.Tensor, retain: bool) -> tuple[list[float], float]:
        g = torch.autograd.grad(objective, hs + params, retain_graph=retain, allow_unused=True)
        per_step = [float(torch.linalg.vector_norm(gi)) if gi is not None else 0.0 for gi in g[:T]]
        param_norm = math.sqrt(sum(float(gi.double().pow(2).sum()) for gi in g[T:] if gi is not None))
        return per_step, param_norm

    dL_dh, grad_norm = grads(loss, retain=True)
    dLT_dh, grad_norm_last = grads(loss_last, retain=False)
    return FlowResult(steps=T, batch=B, loss=loss.item(), loss_last=loss_last.item(), dL_dh=dL_dh, dLT_dh=dLT_dh,
                      grad_norm=grad_norm, grad_norm_last=grad_norm_last, clip=clip,
                      clip_coef=clip_coefficient(grad_norm, clip),
                      clip_coef_last=clip_coefficient(grad_norm_last, clip))


def measure_char_rnn(model, x: torch.Tensor, y: torch.Tensor, clip: float = 0.0) -> FlowResult:
    """`measure` on a CharRNN: ids x, y [B, T], zero initial state, eval mode (no dropout; the model
    is left in the mode it came in)."""
    from rnn_train.prediction.generate import eval_mode

    with eval_mode(model):
        return measure(model.rnn, model.decoder, model.encode_input(x), y, model.begin_state(x.shape[0]),
                       [p for p in model.parameters() if p.requires_grad], clip)


def sample_windows(data: np.ndarray, batch: int, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """B windows of `steps` inputs (+1 target) at random starts drawn with `seed` -> X, Y [B, T] int64."""
    n_starts = len(data) - steps
    if n_starts < 1:
        raise ValueError("data too short")  # callers check first and raise a UserError with context
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.choice(n_starts, size=batch, replace=batch > n_starts))
    idx = starts[:, None] + np.arange(steps)  # [B, T]
    return data[idx].astype(np.int64), data[idx + 1].astype(np.int64)


# ----------------------------------------------------------------------------------------------
# from a checkpoint


@dataclass
class Probe:
    checkpoint: str
    steps: int = 100
    batch: int = 32
    seed: int = 0
    clip: float | None = None  # None: the checkpoint's train.clip_norm
    untrained: bool = False
    split: str = "val"
    dtype: str = "float64"
    device: str = "cpu"
    cache_dir: str | None = "data/cache"
    whh_scale: float = 1.0  # multiply every recurrent weight matrix by this (a what-if knob; 1 = as loaded)
    keep_bias: float = 0.0  # add this to the bias of the gate that keeps the past (LSTM f, GRU z); what-if knob

    def __post_init__(self):
        """The flags' rules, for a Probe built from Python too (one UserError, before any work;
        NumPy numbers taken as the Python numbers they stand for)."""
        for name in ("steps", "batch", "seed"):
            setattr(self, name, integer(getattr(self, name), f"--{name}"))
        for name in ("clip", "whh_scale", "keep_bias"):
            value = getattr(self, name)
            if not (name == "clip" and value is None):  # None: the checkpoint's train.clip_norm
                try:
                    setattr(self, name, float(value))
                except (TypeError, ValueError):
                    raise UserError(f"--{name.replace('_', '-')} must be a number, got {value!r}") from None
        for flag, value in (("--steps", self.steps), ("--batch", self.batch)):
            if value < 1:
                raise UserError(f"{flag} must be >= 1, got {value}")
        if self.clip is not None and not self.clip >= 0:
            raise UserError("--clip must be >= 0 (0 = no clipping)")
        if not (math.isfinite(self.whh_scale) and math.isfinite(self.keep_bias)):
            raise UserError("--whh-scale and --keep-bias must be finite numbers")
        for flag, value, allowed in (("--split", self.split, ("train", "val", "test")),
                                     ("--dtype", self.dtype, ("float64", "float32"))):
            if value not in allowed:
                raise UserError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")


def add_keep_gate_bias(core: nn.Module, value: float) -> None:
    """Push the gate that carries the old state forward towards 1, in place, every layer: the
    cell's CellSpec.keep_gate, e.g. LSTM's forget gate f (c' = f c + i g) or GRU's update gate z
    (h' = (1 - z) n + z h)."""
    spec = cells.of_module(core)
    if spec.keep_gate is None:
        gated = [name for name in cells.names() if cells.get(name).keep_gate]
        raise UserError(f"--keep-bias needs a cell with a gate that keeps the past ({' or '.join(gated)}); "
                        f"this checkpoint's cell is {spec.name}")
    H, k = core.hidden_size, spec.blocks.index(spec.keep_gate)
    with torch.no_grad():
        for layer in range(core.num_layers):
            getattr(core, f"bias_ih_l{layer}")[k * H:(k + 1) * H] += value


def recurrent_singular_value(core: nn.Module) -> float | None:
    """Largest singular value of a vanilla RNN's top-layer W_hh (||W_hh||_2); None for gated cells.
    Below 1 it guarantees vanishing for tanh (|tanh'| <= 1); above 1 is needed, not enough, to explode."""
    if not cells.of_module(core).elman:
        return None
    w = getattr(core, f"weight_hh_l{core.num_layers - 1}").detach().double().cpu()
    return float(torch.linalg.matrix_norm(w, ord=2))


def recurrent_spectral_radius(core: nn.Module) -> float | None:
    """max |eigenvalue| of the top layer's W_hh for a vanilla RNN; None for gated cells (their W_hh
    stacks several gates' blocks and is not the step Jacobian's matrix)."""
    if not cells.of_module(core).elman:
        return None
    w = getattr(core, f"weight_hh_l{core.num_layers - 1}").detach().double().cpu()
    return float(torch.linalg.eigvals(w).abs().max())


def check_memory(model, vocab_size: int, p: Probe) -> None:
    """A probe too large for this machine is a UserError naming --batch and --steps, before it
    starts (Linux would let it grow until the machine swaps or kills it). The estimate per
    character: its one-hot input and its logits with their gradients (4 x V), and per layer the
    saved gates, states and their gradients (2 x (G + 2) x H), times the dtype's bytes."""
    from rnn_train.runtime import refuse_beyond_free

    rnn = model.rnn
    per_char = 4 * vocab_size + 2 * rnn.num_layers * (model.spec.num_blocks + 2) * rnn.hidden_size
    need = p.batch * p.steps * per_char * (8 if p.dtype == "float64" else 4)
    refuse_beyond_free(need, f"--batch {p.batch} x --steps {p.steps} needs", "make them smaller")


def run_probe(p: Probe) -> tuple[FlowResult, Path]:
    """Load, pick windows, measure. Returns the result and the checkpoint file it came from."""
    from rnn_train.model.checkpoint import load_model, resolve_checkpoint
    from rnn_train.data.dataset import checkpoint_splits
    from rnn_train.model.charrnn import CharRNN
    from rnn_train.runtime import resolve_device

    device = resolve_device(p.device, "--device")
    ckpt_path = resolve_checkpoint(p.checkpoint)
    model, vocab, cfg, ckpt = load_model(ckpt_path, device)
    if p.untrained:
        torch.manual_seed(p.seed)
        model = CharRNN.from_config(len(vocab), cfg.model).to(device)
    model = model.to(torch.float64 if p.dtype == "float64" else torch.float32).eval()
    if p.whh_scale != 1.0:
        with torch.no_grad():
            for name, w in model.rnn.named_parameters():
                if name.startswith("weight_hh"):
                    w.mul_(p.whh_scale)
    if p.keep_bias:
        add_keep_gate_bias(model.rnn, p.keep_bias)
    data, _ = checkpoint_splits(cfg.data, ckpt, ckpt_path, Path(p.cache_dir) if p.cache_dir else None, vocab, p.split)
    split = getattr(data, p.split)
    if not len(split):  # no --steps can help
        fraction = f"data.{p.split}_fraction"
        others = " or ".join(s for s in ("train", "val", "test") if s != p.split and len(getattr(data, s)))
        raise UserError(f"{ckpt_path}'s run has no {p.split} split ({fraction} "
                        f"{getattr(cfg.data, p.split + '_fraction')}): use --split {others}")
    if len(split) < p.steps + 1:
        raise UserError(f"the {p.split} split of {ckpt_path}'s corpus has {len(split)} characters, fewer than "
                        f"--steps + 1 = {p.steps + 1}; lower --steps or use --split train")
    check_memory(model, len(vocab), p)
    x, y = next(data.checked([sample_windows(split, p.batch, p.steps, p.seed)]))  # a damaged id: one line
    clip = cfg.train.clip_norm if p.clip is None else p.clip
    x_t, y_t = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    # cuDNN's RNN backward refuses to run in eval mode; the native kernels give the same numbers.
    with torch.backends.cudnn.flags(enabled=False):
        result = measure_char_rnn(model, x_t, y_t, clip)
    if not all(math.isfinite(v) for v in (result.loss, result.grad_norm, *result.dL_dh, *result.dLT_dh)):
        scaled = f" (W_hh scaled by --whh-scale {p.whh_scale:g})" if p.whh_scale != 1 else ""
        raise UserError(f"the measurement is not finite (loss {result.loss:.4g}, gradient norm "
                        f"{result.grad_norm:.4g}): the model's numbers{scaled} overflow {p.dtype}")
    m = cfg.model
    result.meta = {"checkpoint": str(ckpt_path), "run": ckpt_path.parent.name, "cell": m.cell,
                   "hidden_size": m.hidden_size, "num_layers": m.num_layers,
                   "trained_steps": 0 if p.untrained else int(ckpt["step"]), "untrained": p.untrained,
                   "seed": p.seed, "split": p.split, "dtype": p.dtype, "whh_scale": p.whh_scale,
                   "keep_bias": p.keep_bias, "spectral_radius": recurrent_spectral_radius(model.rnn),
                   "singular_value": recurrent_singular_value(model.rnn),
                   "clip_source": "checkpoint train.clip_norm" if p.clip is None else "--clip"}
    return result, ckpt_path


# ----------------------------------------------------------------------------------------------
# reports


def table_rows(steps: int, all_rows: bool = False) -> list[int]:
    """Step indices t (1-based) to print: T, T-1, T-2, T-5, T-10, T-20, T-50, T-100, ... and 1."""
    if all_rows:
        return list(range(steps, 0, -1))
    backs = [0, 1, 2, 5]
    k = 10
    while k < steps:
        backs += [k, 2 * k, 5 * k]
        k *= 10
    ts = sorted({steps - b for b in backs if b < steps} | {1}, reverse=True)
    return ts


def _e(v: float) -> str:
    return f"{v:.3e}" if math.isfinite(v) else "nan"


def describe(r: FlowResult) -> str:
    m = r.meta
    what = "untrained (seed {})".format(m.get("seed")) if m.get("untrained") else f"trained {m.get('trained_steps')} steps"
    if m.get("whh_scale", 1.0) != 1.0:
        what += f", W_hh x {m['whh_scale']:g}"
    if m.get("keep_bias"):
        what += f", keep-gate bias {m['keep_bias']:+g}"
    if m.get("spectral_radius") is not None:
        whose = "the top layer's W_hh" if (m.get("num_layers") or 1) > 1 else "W_hh"  # the layer whose h_t is measured
        what += (f", {whose} spectral radius {_figure(m['spectral_radius'])}, largest singular value "
                 f"{_figure(m['singular_value'])}")
    return f"{m.get('cell', '?').upper()} {m.get('hidden_size', '?')}x{m.get('num_layers', '?')}, {what}"


def _figure(x: float) -> str:
    """3 decimals, or 4 significant digits where that would be a long number (a --whh-scale of 1e300)."""
    return f"{x:.3f}" if abs(x) < 1e6 else f"{x:.4g}"


def summary_line(r: FlowResult) -> str:
    """One line: how far back the last step's gradient reaches, and how clipping changes it (not at all)."""
    if r.steps < 2:
        return "summary: a 1-step window has no earlier step for the gradient to reach"
    backs = " / ".join(str(r.steps_below[f"{th:g}"]) if r.steps_below[f"{th:g}"] is not None else "never"
                       for th in THRESHOLDS)
    levels = " / ".join(f"{th:.0e}" for th in THRESHOLDS)
    if r.ratio[0] == 0:  # nothing of the signal is left at t=1, not even in float64
        trend = ("nothing is left of it (it vanished to exactly 0: below the smallest float, or through a factor "
                 "of 0 on the way, such as saturated units or a zero W_hh)")
    elif math.isfinite(r.per_step_factor):
        direction = "shrinks" if r.per_step_factor < 1 else "grows"
        trend = f"it {direction} x{r.per_step_factor:.3f} per step back on average"
    else:
        trend = "no per-step trend can be computed"
    return (f"summary: ||dL_T/dh_t|| first falls below {levels} of its t=T value {backs} steps back "
            f"(within {r.steps - 1}); at t=1 it is {_e(r.ratio[0])} of it: {trend}; clipping (coef {r.clip_coef_last:.3g}) scales every step alike and leaves "
            f"these ratios unchanged")


def format_report(r: FlowResult, all_rows: bool = False) -> str:
    m = r.meta
    clip = f"clip {r.clip:g}" if r.clip > 0 else "no clipping (clip 0)"
    lines = [
        f"gradient flow: {m.get('checkpoint', '?')} ({describe(r)})",
        f"  {r.batch} windows x {r.steps} steps from the {m.get('split', 'val')} split, seed {m.get('seed')}, "
        f"zero initial state, {m.get('dtype', '')}",
        f"  L   = mean CE over all {r.steps} steps = {r.loss:.4f}   global param grad norm {r.grad_norm:.4g}   "
        f"{clip} -> coef {r.clip_coef:.4g}",
        f"  L_T = mean CE at step {r.steps} only   = {r.loss_last:.4f}   global param grad norm {r.grad_norm_last:.4g}   "
        f"{clip} -> coef {r.clip_coef_last:.4g}",
        "",
        f"{'t':>6} {'T-t':>5}  {'||dL/dh_t||':>12} {'clipped':>10}  {'||dL_T/dh_t||':>13} {'clipped':>10}  {'ratio to t=T':>12}",
    ]
    for t in table_rows(r.steps, all_rows):
        i = t - 1
        lines.append(f"{t:>6} {r.steps - t:>5}  {_e(r.dL_dh[i]):>12} {_e(r.dL_dh_clipped[i]):>10}  "
                     f"{_e(r.dLT_dh[i]):>13} {_e(r.dLT_dh_clipped[i]):>10}  {_e(r.ratio[i]):>12}")
    lines += ["", "clipped = unclipped x the clip coefficient of that loss (one factor for all t); "
              "the ratio column is the same clipped or not.", summary_line(r)]
    return "\n".join(lines)


def format_compare(results: Sequence[FlowResult], all_rows: bool = False) -> str:
    """One table, one pair of columns per checkpoint: ||dL/dh_t|| and ||dL_T/dh_t|| / ||dL_T/dh_T||."""
    steps = results[0].steps
    names = [f"{r.meta.get('run', '?')} ({r.meta.get('cell', '?')})" for r in results]
    if len(set(names)) < len(names):  # checkpoints of one run (best.pt, last.pt): their file names too
        names = [f"{r.meta.get('run', '?')}/{Path(str(r.meta.get('checkpoint'))).stem} ({r.meta.get('cell', '?')})"
                 for r in results]
    c = max(12, (max(len(n) for n in names) + 2) // 2)  # one sub-column; a checkpoint gets two
    w = 2 * c
    lines = [f"gradient flow, {results[0].batch} windows x {steps} steps, seed {results[0].meta.get('seed')}:"]
    lines += [f"  {n}: {r.meta.get('checkpoint')} ({describe(r)})" for n, r in zip(names, results)]
    lines.append("")
    lines.append(f"{'':>12}" + "".join(f"{n:>{w}}" for n in names))
    lines.append(f"{'t':>6} {'T-t':>5}" + "".join(f"{'||dL/dh_t||':>{c}}{'LT ratio':>{c}}" for _ in results))
    for t in table_rows(steps, all_rows):
        i = t - 1
        lines.append(f"{t:>6} {steps - t:>5}" + "".join(f"{_e(r.dL_dh[i]):>{c}}{_e(r.ratio[i]):>{c}}" for r in results))
    lines.append("")

    def row(label: str, fmt: Callable[[FlowResult], str]) -> str:
        return f"{label:<12}" + "".join(f"{fmt(r):>{w}}" for r in results)

    def back(r: FlowResult) -> str:
        k = r.steps_below["0.001"]
        return f"{k} steps back" if k is not None else f"not in {r.steps - 1}"

    lines += [
        row("L", lambda r: f"{r.loss:.4f}"),
        row("grad norm", lambda r: f"{r.grad_norm:.4g}"),
        row("L_T grad nrm", lambda r: f"{r.grad_norm_last:.4g}"),
        row("clip coef", lambda r: f"{r.clip_coef:.3g} / {r.clip_coef_last:.3g}"),
        row("factor/step", lambda r: f"x{r.per_step_factor:.4f}"),
        row("1e-3 reached", back),
        "",
        "LT ratio = ||dL_T/dh_t|| / ||dL_T/dh_T||; clip coef = for L / for L_T; factor/step = the ratio at t=1 "
        "to the power 1/(T-1).",
    ]
    return "\n".join(lines)


def write_tensorboard(r: FlowResult, logdir: Path) -> Path:
    """Scalars with the TensorBoard step axis = t; replaces events of an earlier identical measurement.
    A failed write (a full disk) is a one-line WriteError naming the event file."""
    from rnn_train.files import event_file, summary_writer, writing

    with writing(logdir):
        logdir.mkdir(parents=True, exist_ok=True)
        for old in logdir.glob("events.out.tfevents.*"):
            old.unlink()  # this folder is written only by gradflow: a rerun replaces, not doubles, the curves
    writer = summary_writer(logdir)
    columns = {"dL_dh": r.dL_dh, "dL_dh_clipped": r.dL_dh_clipped, "dLT_dh": r.dLT_dh,
               "dLT_dh_clipped": r.dLT_dh_clipped, "dLT_dh_ratio": r.ratio}
    with writing(event_file(writer)):
        for i in range(r.steps):
            for tag, values in columns.items():
                writer.add_scalar(f"gradflow/{tag}", values[i], i + 1)
        writer.add_text("gradflow/summary", "```\n" + format_report(r) + "\n```", 0)
        writer.close()
    return logdir


def run_folders(run_dirs: list[Path]) -> list[str]:
    """The subfolder of each run's curves under one --logdir of a --compare: the run directory's
    name, or as many of its last path parts as set it apart from the others' (sweeps/a/run0 and
    sweeps/b/run0: a/run0 and b/run0). By the name alone, the second run's curves replaced the first's."""
    # absolute, not resolved: a run given by a link (latest -> sweeps/a/run0) is named by the link,
    # as it was; less the root: a name is always relative
    full = [Path(os.path.abspath(d)).parts[1:] for d in run_dirs]
    names = ["/".join(parts) for parts in full]
    for k in range(1, max(map(len, full)) + 1):
        names = ["/".join(parts[-k:]) for parts in full]
        if len(set(names)) == len(set(full)):
            break
    return names


def variant_name(p: Probe, ckpt_path: Path) -> str:
    """Folder for one measurement, named after what was measured (best_T100, untrained_seed0_T100,
    best_keep+5_T100, best_T100_seed1_train, best_T100_B4_clip1_float32, ...; a setting at its
    default is left out), so that different measurements sit side by side and only a rerun of the
    same one replaces its curves. The device is no part of it: the same measurement anywhere."""
    what = f"untrained_seed{p.seed}" if p.untrained else ckpt_path.stem
    scale = f"_whh{p.whh_scale:g}" if p.whh_scale != 1.0 else ""
    keep = f"_keep{p.keep_bias:+g}" if p.keep_bias else ""
    windows = (f"_seed{p.seed}" if p.seed and not p.untrained else "") + (f"_{p.split}" if p.split != "val" else "")
    batch = f"_B{p.batch}" if p.batch != Probe.batch else ""
    clip = f"_clip{p.clip:g}" if p.clip is not None else ""
    dtype = f"_{p.dtype}" if p.dtype != Probe.dtype else ""
    return f"{what}{scale}{keep}_T{p.steps}{windows}{batch}{clip}{dtype}"


# ----------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None, prog: str = "python -m rnn_train gradflow") -> int:
    ap = ArgumentParser(prog=prog,
                        description="Per-step gradient norms ||dL/dh_t|| and ||dL_T/dh_t|| of a checkpoint, "
                                    "with and without clipping.")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a .pt file or a run directory (uses its best.pt)")
    which.add_argument("--compare", nargs="+", metavar="CKPT", help="several checkpoints in one table")
    ap.add_argument("--steps", type=int, default=100, help="window length T (default 100)")
    ap.add_argument("--batch", type=int, default=32, help="windows B (default 32)")
    ap.add_argument("--seed", type=seed_arg, default=0, help="picks the windows, and the weights with --untrained")
    ap.add_argument("--untrained", action="store_true", help="fresh weights for the same architecture (seeded)")
    ap.add_argument("--clip", type=float, default=None, help="max global grad norm (default: the checkpoint's "
                                                              "train.clip_norm; 0 = none)")
    ap.add_argument("--whh-scale", type=float, default=1.0, metavar="A",
                    help="what if: multiply the recurrent weights W_hh by A before measuring (default 1)")
    ap.add_argument("--keep-bias", type=float, default=0.0, metavar="B",
                    help="what if (gru, lstm): add B to the bias of the gate that keeps the old state "
                         "(LSTM forget gate, GRU update gate z) before measuring (default 0)")
    ap.add_argument("--split", choices=["val", "train", "test"], default="val", help="corpus split (default val)")
    ap.add_argument("--all", action="store_true", help="print every step t, not a selection")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument("--logdir", type=output_arg, help="TensorBoard folder (default <run_dir>/gradflow); "
                                     "each measurement goes to a subfolder such as best_T100")
    ap.add_argument("--no-tensorboard", action="store_true", help="write no event files")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                    help="precision of the measurement (default float64: tiny gradients do not underflow)")
    ap.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu", help="default cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--cache-dir", default="data/cache", type=output_arg,
                    help="the corpus cache: pinyin conversions and prepared token files (default data/cache)")
    args = ap.parse_args(argv)
    if not 0 <= args.threads <= MAX_THREADS:
        ap.error(f"--threads must be in [0, {MAX_THREADS}] (0 = torch's default), got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)

    from rnn_train.model.checkpoint import resolve_checkpoint

    paths = [args.checkpoint] if args.checkpoint else args.compare
    probes = [Probe(path, args.steps, args.batch, args.seed, args.clip, args.untrained, args.split, args.dtype,
                    args.device, args.cache_dir, args.whh_scale, args.keep_bias) for path in paths]
    # every checkpoint found before the first is measured (and its curves written)
    runs = run_folders([resolve_checkpoint(path).parent for path in paths])
    results: list[FlowResult] = []
    written: list[Path] = []
    for p, run in zip(probes, runs):
        result, ckpt_path = run_probe(p)
        result.meta["run"] = run  # the tables' and the JSON's name of it too
        results.append(result)
        if not args.no_tensorboard:
            base = Path(args.logdir) if args.logdir else ckpt_path.parent / GRADFLOW
            if args.logdir and args.compare:
                base = base / run
            written.append(write_tensorboard(result, base / variant_name(p, ckpt_path)))
            result.meta["logdir"] = str(written[-1])

    if args.json:
        doc: Any = results[0].to_dict() if args.checkpoint else {"results": [r.to_dict() for r in results]}
        print(json.dumps(doc, indent=1, allow_nan=False))
        return 0
    print(format_report(results[0], args.all) if args.checkpoint else format_compare(results, args.all))
    for d in written:
        print(f"tensorboard: {d}  (tensorboard --logdir {shell_word(d.parent)})")
    return 0

