"""Process-wide settings a run makes (rnn_train/runtime.py): malloc keeping freed memory."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# 20 training steps of a GRU-256 (B32 T35, torch's own modules), counting the page faults they
# cost once the process is in its steady state
PROBE = textwrap.dedent("""
    import resource, sys, torch
    from rnn_train.runtime import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rnn, dec = torch.nn.GRU(66, 256, batch_first=True), torch.nn.Linear(256, 66)
    x = torch.nn.functional.one_hot(torch.randint(0, 66, (32, 35)), 66).float()
    y = torch.randint(0, 66, (32 * 35,))
    def step():
        out, _ = rnn(x)
        torch.nn.functional.cross_entropy(dec(out).reshape(-1, 66), y).backward()
    for _ in range(5):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def page_faults_per_step(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, cwd=ROOT)
    return int(out.stdout.strip()) / 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings: Linux only")
def test_training_steps_reuse_freed_memory_instead_of_faulting_in_fresh_pages():
    default, kept = page_faults_per_step("default"), page_faults_per_step("keep")
    assert kept < default / 4  # measured here: ~257 faults per step by default, ~27 kept
