"""Page faults per training step, with and without rnn_train.runtime.keep_freed_memory().

Each measurement is a fresh process that builds the bench's learner (shakespeare_gru: GRU-256,
B 32 × T 35, SGD), warms up, and counts minor page faults over 200 steps on random batches;
several processes per setting, since the heap's layout (and with it the count) varies from one
process to the next. Prints one JSON line per setting with the per-process counts and their median.

    python benchmarks/page_faults.py
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import resource, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[3])
from rnn_train.config import load_config
from rnn_train.model.charrnn import detach_state
from rnn_train.runtime import keep_freed_memory
from rnn_train.training.learner import TorchLearner
if sys.argv[1] == "keep":
    assert keep_freed_memory()
cfg = load_config(sys.argv[3] + "/configs/shakespeare_gru.yaml", ["train.optimizer=sgd", "train.lr=1.0"])
torch.set_num_threads(2)
learner = TorchLearner(cfg, 66, torch.device("cpu"))
learner.kernel  # resolve (and if needed measure) the training path first
rng, state = np.random.default_rng(0), None
def step():
    global state
    x, y = rng.integers(0, 66, (32, 35)), rng.integers(0, 66, (32, 35))
    _, _, state = learner.train_step(x, y, state)
    state = detach_state(state)
for _ in range(20):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
n = int(sys.argv[2])
for _ in range(n):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=5)
    p.add_argument("--steps", type=int, default=200)
    a = p.parse_args()
    for mode in ("default", "keep"):
        counts = [float(subprocess.run([sys.executable, "-c", CHILD, mode, str(a.steps), str(ROOT)], check=True,
                                       capture_output=True, text=True).stdout.strip().splitlines()[-1])
                  for _ in range(a.processes)]
        print(json.dumps({"malloc": mode, "faults_per_step": [round(c, 1) for c in counts],
                          "median": round(statistics.median(counts), 1)}))


if __name__ == "__main__":
    main()
