"""Shared fixtures: where the real corpora live and a skip marker for when they are absent."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "corpora"


def shared_corpus(relpath: str) -> Path:
    """Path to a corpus in ../shared/corpora, or skip the test (a user's fresh clone has none)."""
    path = SHARED / relpath
    if not path.exists():
        pytest.skip(f"real corpus {path} is absent (../shared is only beside the project's own checkout)")
    return path
