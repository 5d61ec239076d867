"""Learning-rate schedules and metrics as pure functions of explicit arguments.

Why pure: a schedule is easiest to trust when it can be tabulated without a model, and a
checkpoint only has to store plain numbers (the step, the plateau state) to resume it exactly.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

LN2 = math.log(2.0)


def lr_at(step: int, lr: float, schedule: str, warmup_steps: int = 0, total_steps: int = 0,
          min_lr: float = 0.0, plateau_scale: float = 1.0) -> float:
    """LR for update number `step` (0-based).

    - warmup: linear from lr/warmup to lr over the first `warmup_steps` updates;
    - constant: lr;  plateau: lr × plateau_scale (the scale is cut by `plateau_step`);
    - cosine: from lr down to min_lr at `total_steps`, then held at min_lr.
    """
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "cosine":
        span = max(total_steps - warmup_steps, 1)
        progress = min(max(step - warmup_steps, 0) / span, 1.0)
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    if schedule == "plateau":
        return lr * plateau_scale
    return lr


@dataclass
class PlateauState:
    best: float = math.inf
    bad_evals: int = 0
    scale: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def plateau_step(state: PlateauState, val_loss: float, factor: float, patience: int) -> PlateauState:
    """Reduce-on-plateau: after more than `patience` validations without improvement, scale *= factor."""
    if val_loss < state.best:
        return PlateauState(val_loss, 0, state.scale)
    bad = state.bad_evals + 1
    if bad > patience:
        return PlateauState(state.best, 0, state.scale * factor)
    return PlateauState(state.best, bad, state.scale)


def clip_coefficient(norm: float, max_norm: float) -> float:
    """The factor `torch.nn.utils.clip_grad_norm_` scales every gradient by: max_norm / (norm + 1e-6),
    capped at 1 (gradients inside the ball are left alone); 1 when clipping is off (max_norm <= 0).
    A NaN norm gives NaN, as in torch."""
    if max_norm <= 0:
        return 1.0
    coef = max_norm / (norm + 1e-6)
    return coef if not coef >= 1.0 else 1.0


def perplexity(mean_ce: float) -> float:
    """exp(mean cross-entropy in nats); inf rather than an overflow error for a diverged run."""
    return math.exp(mean_ce) if mean_ce < 700 else math.inf


def ppl_text(ppl: float) -> str:
    """A perplexity as log lines print it: 3 decimals, or 4 significant digits from a million up (a
    diverging run's 7e41 would otherwise be a 42-digit number)."""
    return f"{ppl:.3f}" if ppl < 1e6 else f"{ppl:.4g}"


def bits_per_char(mean_ce: float) -> float:
    return mean_ce / LN2
