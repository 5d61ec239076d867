"""Where a run computes: the device, the seeds and the CPU threads, each set in one place."""
from __future__ import annotations

import random

import numpy as np
import torch

from rnn_train.errors import UserError


def set_seed(seed: int) -> None:
    """One call seeds every generator the pipeline uses: Python, NumPy's legacy global, torch (CPU+CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """auto | cpu | cuda -> a device; `key` is how the user set it, for the error message."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key} is cuda but no CUDA device is available (use auto or cpu)")
    return torch.device(name)
