"""What a sweep finds on disk for each planned run: finished, resumable, new, or another config."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from rnn_train.config import build_config
from rnn_train.errors import UserError
from rnn_train.experiments.sweep.plan import PlannedRun

IGNORED_IN_MATCH = {("train", "threads"), ("train", "device")}
"""Config keys that do not change what a run computes; a finished run made with other values still counts."""



def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """A config dict without the keys that do not change what a run computes."""
    out = {}
    for section, body in cfg_dict.items():
        if section == "log" or not isinstance(body, dict):
            continue
        out[section] = {k: v for k, v in body.items() if (section, k) not in IGNORED_IN_MATCH}
    return out


def _stored_config(path: Path) -> dict[str, Any] | None:
    """The config dict of a run directory's config.yaml, normalised through build_config; None if unreadable."""
    try:
        return build_config(yaml.safe_load(path.read_text(encoding="utf-8")), source=str(path)).to_dict()
    except (OSError, yaml.YAMLError, UserError):
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def run_status(r: PlannedRun) -> str:
    """'done' | 'resume' | 'new' | 'mismatch' (the directory holds a run of another config)."""
    want = _comparable(r.cfg.to_dict())
    stored = _stored_config(r.run_dir / "config.yaml")
    metrics = _read_json(r.run_dir / "metrics.json")
    if stored is not None and _comparable(stored) != want and (metrics is not None or (r.run_dir / "last.pt").exists()):
        return "mismatch"
    if metrics is not None and stored is not None and not metrics.get("interrupted", False):
        return "done"
    if (r.run_dir / "last.pt").exists():
        return "resume"
    return "new"


def _config_diff(r: PlannedRun) -> str:
    stored = _stored_config(r.run_dir / "config.yaml") or {}
    a, b = _comparable(stored), _comparable(r.cfg.to_dict())
    diffs = [f"{s}.{k}: {a.get(s, {}).get(k)!r} -> {v!r}" for s in b for k, v in b[s].items()
             if a.get(s, {}).get(k) != v]
    return ", ".join(diffs[:4]) + (" ..." if len(diffs) > 4 else "")
