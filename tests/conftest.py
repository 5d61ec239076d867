"""Shared fixtures: where the real corpora live, a skip for when they are absent, one torch thread."""
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "corpora"


def shared_corpus(relpath: str) -> Path:
    """Path to a corpus in ../shared/corpora, or skip the test (a user's fresh clone has none)."""
    path = SHARED / relpath
    if not path.exists():
        pytest.skip(f"real corpus {path} is absent (../shared is only beside the project's own checkout)")
    return path


@pytest.fixture
def one_torch_thread():
    """One torch intra-op thread for the test, restored afterwards (other modules keep torch's default).
    For tiny models on a shared 2-core machine, where a second thread only spins; modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def decisions(tmp_path, monkeypatch):
    """The autotuner's decisions (and its lock) in a temporary file, so that a run measuring elsewhere
    on the machine cannot hold a test up; the process's memory of them reset around the test. The
    C++ build stays where it is."""
    from rnn_train.kernels import autotune

    path = tmp_path / "autotune.json"
    monkeypatch.setattr(autotune, "_cache_file", lambda: path)
    saved, measured = dict(autotune._MEMORY), set(autotune._MEASURED_HERE)
    autotune._MEMORY.clear()
    autotune._MEASURED_HERE.clear()
    yield path
    autotune._MEMORY.clear()
    autotune._MEMORY.update(saved)
    autotune._MEASURED_HERE.clear()
    autotune._MEASURED_HERE.update(measured)


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the whole session (tests/browser.py); a missing one fails the test."""
    from tests.browser import chromium

    with chromium() as b:
        yield b
