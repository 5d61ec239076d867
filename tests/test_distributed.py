"""Data-parallel training under torchrun: 2 gloo ranks on the CPU compute what one process does.

Each torchrun test starts a real job (`python -m torch.distributed.run --standalone
--nproc_per_node=2`, one thread per rank) on a tiny model; the one-process runs it is compared
with run in this process. Equal means within 1e-4: the ranks add the same numbers in another order.
"""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from rnn_train.config import build_config, config_to_yaml
from rnn_train.errors import UserError
from rnn_train.model.checkpoint import load_checkpoint
from rnn_train.runtime import available_cores, derived_seed, resolve_device, set_threads
from rnn_train.training.distributed import check_world, world_from_env
from rnn_train.training.state import capture_rng, combine_rng, restore_rng
from rnn_train.training.trainer import train
from rnn_train.training.world import World
from tests.helpers import ROOT, scalar_series, tiny_config

TOL = 1e-4
TIMEOUT = 180  # seconds: a job that hangs fails the test instead of the suite
SEQUENTIAL = ["data.partition=sequential", "model.kernel=fused"]  # the fused autograd Functions under DDP
RANDOM = ["data.partition=random", "model.cell=lstm", "model.kernel=native", "data.test_fraction=0.01"]


def torchrun(tmp_path, args, fault=None):
    """A 2-rank job of train.py's main (tests/ddp_worker.py, with a fault if given) -> CompletedProcess,
    plus `.shutdowns`: the ranks that ran Python's interpreter shutdown (a finished rank must not:
    see rnn_train.training.distributed.leave)."""
    marks = tmp_path / f"shutdown-{len(list(tmp_path.glob('shutdown-*')))}"
    marks.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "DDP_SHUTDOWN_MARK": str(marks)}
    env.pop("DDP_FAULT", None)
    if fault:
        env["DDP_FAULT"] = fault
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "tests/ddp_worker.py",
           *args, "--cache-dir", str(tmp_path.parent / "cache")]
    job = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    job.shutdowns = sorted(int(p.name[4:]) for p in marks.iterdir())
    return job


def write_config(tmp_path, cfg, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(config_to_yaml(cfg))
    return path


def one_process(tmp_path, cfg, name, resume=None):
    return train(cfg, tmp_path / name, quiet=True, cache_dir=tmp_path.parent / "cache", resume=resume)


def resume_in_process(tmp_path, run, steps):
    ckpt = load_checkpoint(tmp_path / run / "last.pt")
    cfg = build_config(ckpt["config"], [f"train.max_steps={steps}"])
    return one_process(tmp_path, cfg, run, resume=ckpt)


def assert_close_runs(a, b, tags=("train/loss", "train/grad_norm", "val/loss")):
    """Same logged steps and values, same final weights, optimiser moments and carried state (<= TOL)."""
    for tag in tags:
        sa, sb = scalar_series(a, tag), scalar_series(b, tag)
        assert [s for s, _ in sa] == [s for s, _ in sb], tag
        assert np.allclose([v for _, v in sa], [v for _, v in sb], rtol=0, atol=TOL), (tag, sa, sb)
    ca, cb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert (ca["step"], ca["epoch"], ca["batch_in_epoch"], ca["tokens"]) == \
        (cb["step"], cb["epoch"], cb["batch_in_epoch"], cb["tokens"])
    for k in ca["model"]:
        assert torch.allclose(ca["model"][k], cb["model"][k], rtol=0, atol=TOL), k
    for i, state in ca["optimizer"]["state"].items():
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(state[k], cb["optimizer"]["state"][i][k], rtol=0, atol=TOL), (i, k)
    ha, hb = ca["hidden"], cb["hidden"]
    if ha is None:
        assert hb is None
    else:
        assert ha.shape == hb.shape and torch.allclose(ha, hb, rtol=0, atol=TOL)
    return ca, cb


# ---------------------------------------------------------------------------------------------
# equal to one process, and checkpoints that resume on either


@pytest.fixture(scope="module")
def sequential_runs(tmp_path_factory):
    """40 updates on 2 ranks and on 1 process, and 80 on 1 process (what a resumed run must end as)."""
    tmp = tmp_path_factory.mktemp("ddp") / "runs"
    tmp.mkdir()
    cfg = tiny_config(tmp, *SEQUENTIAL, name="two")
    job = torchrun(tmp, ["--config", str(write_config(tmp, cfg))])
    assert job.returncode == 0, job.stderr[-3000:]
    assert job.shutdowns == []
    one_process(tmp, cfg, "one")
    one_process(tmp, tiny_config(tmp, *SEQUENTIAL, "train.max_steps=80"), "one80")
    return tmp, job


def test_two_ranks_train_like_one_process_sequential(sequential_runs):
    tmp, job = sequential_runs
    two, one = assert_close_runs(tmp / "two", tmp / "one")
    assert two["step"] == 40 and two["hidden"].shape == (1, 4, 16)  # all 4 rows of the global batch
    assert "rank" not in job.stdout and job.stdout.count("done: 40 steps") == 1  # rank 0 alone prints
    assert sorted(f.name.endswith(".hparams") for f in (tmp / "two").glob("events.out.tfevents.*")) == [False, True]
    # rank 0 alone writes: one file of samples and the hparams record's own
    assert len(two["rng"]["ranks"]) == 2 and not torch.equal(two["rng"]["ranks"][0]["torch"],
                                                             two["rng"]["ranks"][1]["torch"])


def test_a_run_of_two_ranks_resumes_on_one(sequential_runs):
    tmp, _ = sequential_runs
    shutil.copytree(tmp / "two", tmp / "two_then_one")
    result = resume_in_process(tmp, "two_then_one", 80)
    assert result.step == 80
    assert_close_runs(tmp / "two_then_one", tmp / "one80")


def test_a_run_of_one_process_resumes_on_two_ranks(sequential_runs):
    tmp, _ = sequential_runs
    shutil.copytree(tmp / "one", tmp / "one_then_two")
    job = torchrun(tmp, ["--resume", str(tmp / "one_then_two"), "train.max_steps=80"])
    assert job.returncode == 0, job.stderr[-3000:]
    assert job.shutdowns == []
    assert "resumed at step 40" in job.stderr
    assert_close_runs(tmp / "one_then_two", tmp / "one80")


def test_a_state_only_rank_1_cannot_restore_is_one_line_from_rank_0(sequential_runs):
    """Each rank restores its own generators on --resume: rank 1's damaged state is said once, by rank
    0 (before, rank 1 stopped silently and rank 0 printed a traceback of the closed connection)."""
    tmp, _ = sequential_runs
    shutil.copytree(tmp / "two", tmp / "two_damaged")
    ckpt = torch.load(tmp / "two_damaged" / "last.pt", weights_only=True)
    ckpt["rng"]["ranks"][1]["torch"] = torch.zeros(3, dtype=torch.uint8)
    torch.save(ckpt, tmp / "two_damaged" / "last.pt")
    job = torchrun(tmp, ["--resume", str(tmp / "two_damaged"), "train.max_steps=80"])
    assert job.returncode != 0 and "exitcode  : 2" in job.stderr
    errors = [line for line in job.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: the checkpoint's run state (counters, schedule, hidden "
                                                     "state, random generators) is damaged"), job.stderr[-3000:]
    assert "[rank" not in job.stderr and job.shutdowns == []


def test_two_ranks_train_like_one_process_random_with_a_test_split(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    cfg = tiny_config(runs, *RANDOM, "train.max_steps=48", "train.eval_every=16", name="two")
    job = torchrun(runs, ["--config", str(write_config(runs, cfg))])
    assert job.returncode == 0, job.stderr[-3000:]
    one = one_process(runs, cfg, "one")
    two, _ = assert_close_runs(runs / "two", runs / "one")
    assert two["hidden"] is None
    test_loss = json.loads((runs / "two" / "metrics.json").read_text())["test_loss"]
    assert math.isfinite(one.test_loss) and abs(test_loss - one.test_loss) <= TOL


# ---------------------------------------------------------------------------------------------
# stopping together, failing together, one-line errors


def test_ctrl_c_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    cfg = tiny_config(runs, "data.partition=sequential", "model.kernel=native", "train.max_steps=100000", name="stop")
    job = torchrun(runs, ["--config", str(write_config(runs, cfg))], fault="sigint:1:7")
    assert job.returncode != 0  # torchrun: a worker ended with 130
    assert job.stdout.count("interrupted at step 7:") == 1
    assert "continue with: torchrun --standalone --nproc_per_node=2" in job.stdout
    assert "exitcode  : 130" in job.stderr and "[rank" not in job.stderr  # no traceback from a worker
    assert job.shutdowns == []  # an interrupted rank leaves like a finished one
    ckpt = load_checkpoint(runs / "stop" / "last.pt")
    # both ranks stopped after update 7: their rows were gathered into one global state
    assert ckpt["step"] == 7 and ckpt["hidden"].shape == (1, 4, 16)
    assert not (runs / "stop" / "metrics.json").exists()


def test_sigterm_to_every_process_of_the_job_at_once_stops_it_with_its_checkpoint(tmp_path):
    """As scancel or a systemd stop does it: each rank gets the signal, then torchrun's forwarded copy,
    which is the same stop (it was taken for a second Ctrl-C: no checkpoint, `error: interrupted`)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    cfg = tiny_config(runs, "data.partition=sequential", "model.kernel=native", "train.max_steps=100000", name="stop")
    job = torchrun(runs, ["--config", str(write_config(runs, cfg))], fault="group:1:6")
    assert job.stdout.count("interrupted at step") == 1, (job.stdout, job.stderr[-2000:])
    assert "error: interrupted" not in job.stderr
    assert load_checkpoint(runs / "stop" / "last.pt")["step"] >= 6


def test_a_rank_that_fails_brings_the_job_down_with_its_error(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    cfg = tiny_config(runs, "model.kernel=native", "train.max_steps=100000", name="crash")
    job = torchrun(runs, ["--config", str(write_config(runs, cfg))], fault="raise:1:7")  # TIMEOUT: no hang
    assert job.returncode != 0
    assert "RuntimeError: injected failure on rank 1 at step 7" in job.stderr
    assert 1 in job.shutdowns  # a crash is not a finished run: Python's own exit prints the traceback
    assert "[rank0]:" not in job.stderr  # rank 0, whose peer closed its connections: one line, no traceback


def test_batch_size_that_does_not_split_is_one_line_from_rank_0(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    cfg = tiny_config(runs, "data.batch_size=5", name="odd")
    job = torchrun(runs, ["--config", str(write_config(runs, cfg))])
    assert job.returncode != 0 and "exitcode  : 2" in job.stderr
    errors = [line for line in job.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: data.batch_size=5 does not split over 2 processes: each takes batch_size / 2 rows; "
                      "use a multiple of 2 (e.g. 4 or 6)"]
    assert "[rank" not in job.stderr and not (runs / "odd").exists()
    assert job.shutdowns == []  # and so does a rank that stops on a user error


def test_numpy_backend_and_too_few_gpus_are_user_errors(monkeypatch, tmp_path):
    numpy_cfg = tiny_config(tmp_path, "model.backend=numpy", "model.cell=rnn", "train.optimizer=sgd")
    check_world(numpy_cfg, World())  # one process: fine
    with pytest.raises(UserError, match="model.backend=numpy cannot train on 2 processes"):
        check_world(numpy_cfg, World(1, 2, 1, 2))
    odd = tiny_config(tmp_path, "data.batch_size=3")  # a run of 3 rows resumed on 2: say what --resume allows
    with pytest.raises(UserError, match=re.escape("data.batch_size=3, the run's, does not split over 2 processes, "
                                                  "and --resume keeps it: resume on 1 or 3 processes")):
        check_world(odd, World(1, 2, 1, 2), resuming=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda", local_rank=0, local_size=1) == torch.device("cuda")
    with pytest.raises(UserError, match=r"train.device is cuda with 2 processes on this machine, but it has 1 GPU: "
                                        r"start at most 1 \(torchrun --nproc_per_node=1\)"):
        resolve_device("auto", local_rank=1, local_size=2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda", local_rank=1, local_size=2) == torch.device("cuda", 1)


# ---------------------------------------------------------------------------------------------
# the pieces, in one process


def test_world_from_torchrun_environment():
    assert world_from_env({}) == World()
    assert world_from_env({"WORLD_SIZE": "1", "RANK": "0"}) == World()
    w = world_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (w.rank, w.size, w.local_rank, w.local_size, w.is_writer, w.distributed) == (3, 4, 1, 2, False, True)


def test_evaluation_shares_cover_every_row_once():
    for n in range(0, 9):
        for size in (1, 2, 3):
            rows = [list(range(n))[World(r, size, r, size).share(n)] for r in range(size)]
            assert sum(rows, []) == list(range(n)), (n, size)


def test_each_rank_takes_its_rows_of_the_global_hidden_state():
    h = torch.arange(2 * 4 * 3.0).reshape(2, 4, 3)  # [L, B, H]
    parts = [World(r, 2, r, 2).state_rows((h, -h)) for r in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts], 1), h) and torch.equal(parts[1][1], -h[:, 2:])
    assert World().state_rows(h) is h


def test_generator_states_resume_per_rank_and_reseed_on_another_world_size():
    cpu = torch.device("cpu")
    states = []
    for rank in range(2):
        torch.manual_seed(derived_seed(7, rank))
        states.append(capture_rng(cpu))
    saved = combine_rng(states)
    assert torch.equal(saved["torch"], states[0]["torch"]) and len(saved["ranks"]) == 2
    restore_rng(saved, cpu, rank=1, size=2)
    assert torch.equal(torch.get_rng_state(), states[1]["torch"])  # the same world: its own stream
    restore_rng(saved, cpu, rank=0, size=1)
    assert torch.equal(torch.get_rng_state(), states[0]["torch"])  # fewer ranks: rank 0 continues rank 0's
    restore_rng(saved, cpu, rank=2, size=3, reseed=derived_seed(7, 2, 40))
    draw = torch.rand(3)
    torch.manual_seed(derived_seed(7, 2, 40))
    assert torch.equal(draw, torch.rand(3))  # a rank that did not exist draws from (seed, rank, step)
    assert len({derived_seed(7, r) for r in range(4)} | {7, 8}) == 6


def test_leave_flushes_and_exits_with_the_status_without_python_shutdown(tmp_path):
    mark = tmp_path / "shutdown-ran"
    code = ("import atexit, pathlib, sys\n"
            f"atexit.register(pathlib.Path({str(mark)!r}).touch)\n"
            "from rnn_train.training.distributed import leave\n"
            "print('done: no newline yet', end='')\n"
            "print('note: on stderr', end='', file=sys.stderr)\n"
            "leave(3)\n"
            "print('not reached')\n")
    job = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert job.returncode == 3
    assert job.stdout == "done: no newline yet" and job.stderr == "note: on stderr"  # flushed from the pipes' buffers
    assert not mark.exists()


def test_sigterm_stops_a_run_like_ctrl_c(tmp_path):
    def hook(step):
        if step == 9:
            os.kill(os.getpid(), signal.SIGTERM)
    cfg = tiny_config(tmp_path, "train.max_steps=1000")
    result = train(cfg, tmp_path / "run", quiet=True, cache_dir=tmp_path / "cache", on_step=hook)
    assert result.interrupted and result.step == 9
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 9


def test_each_rank_takes_its_share_of_the_cores_unless_threads_is_set():
    before = torch.get_num_threads()
    try:
        set_threads(0, local_size=2)
        assert torch.get_num_threads() == max(1, available_cores() // 2)
        set_threads(3, local_size=2)
        assert torch.get_num_threads() == 3  # train.threads wins
        torch.set_num_threads(before)
        set_threads(0, local_size=1)
        assert torch.get_num_threads() == before  # one process: torch's default, untouched
    finally:
        torch.set_num_threads(before)


# ---- CUDA's rules, checked on the CPU (no GPU here: each test fakes the one fact it needs)

def test_a_rank_alone_on_its_machine_takes_an_indexed_gpu(monkeypatch):
    """Several machines with one process each (torchrun --nnodes=2 --nproc_per_node=1): the rank's
    device must carry an index, which torch.cuda.set_device requires (a bare "cuda" was a ValueError)."""
    from rnn_train.training.trainer import _device

    taken = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", taken.append)
    cfg = build_config({"train": {"device": "cuda", "max_steps": 1}})
    assert _device(cfg, World(rank=1, size=2, local_rank=0, local_size=1)) == torch.device("cuda", 0)
    assert taken == [torch.device("cuda", 0)] and taken[0].index == 0


def test_a_run_saved_on_the_cpu_and_resumed_on_a_gpu_reseeds_the_gpus_generator(monkeypatch):
    """The checkpoint holds no CUDA generator state: the GPU's dropout stream is seeded from the
    run's seed, rank and step, not left to repeat the masks of step 0."""
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed", seeded.append)
    restore_rng(capture_rng(torch.device("cpu")), torch.device("cuda"), reseed=derived_seed(5, 0, 120))
    assert seeded == [derived_seed(5, 0, 120)]
