"""A failed write is one line: `error: cannot write <path> (<reason>)`, exit status 2, the file it was
replacing intact, no temporary file left, wherever the project writes (rnn_train.files).

The failures are real: a file size limit (RLIMIT_FSIZE) makes a write past it fail with EFBIG
("File too large") the way a full disk fails with ENOSPC, and a directory standing where a file is
to be renamed to makes the rename fail ("Is a directory"). SIGXFSZ, which the limit would send to
kill the process, is ignored wherever the limit is set.
"""
import contextlib
import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnn_train.cli import run
from rnn_train.config import config_to_yaml
from rnn_train.data.prepare import prepare_corpus
from rnn_train.errors import UserError
from rnn_train.files import WriteError, atomic_write_bytes, atomic_write_text, save_figure, summary_writer, \
    event_file, writing
from rnn_train.model.checkpoint import load_checkpoint, save_checkpoint
from rnn_train.training.trainer import train
from tests.helpers import ROOT, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHECKPOINT_LIMIT = 30_000  # a tiny run's checkpoint is ~51 kB, its config.yaml and events a few kB
EVENTS_LIMIT = 60_000  # above a checkpoint, below the events of a few hundred steps logged each step
NATIVE = "model.kernel=native"  # nothing measured or compiled (a build would fail under the limit)


@contextlib.contextmanager
def file_size_limit(limit: int):
    """In this process, files may not grow past `limit` bytes for the duration."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def limited_cli(limit: int, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m rnn_train ARGS` with files limited to `limit` bytes (kernel cache kept in tmp_path)."""
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "RNN_TRAIN_CACHE": str(tmp_path / "kernels"), "RNN_TRAIN_NO_CPP": "1"}
    return subprocess.run([sys.executable, "-m", "rnn_train", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, preexec_fn=preexec, timeout=180)


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.name.endswith(".tmp"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run (40 steps, checkpoints at 20 and 40) and its corpus cache."""
    tmp = tmp_path_factory.mktemp("trained")
    train(tiny_config(tmp, NATIVE, name="run"), tmp / "run", quiet=True, cache_dir=tmp / "cache")
    return tmp


def copy_run(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    return tmp_path / "run"


# ---------------------------------------------------------------------------------------------
# the mechanism (rnn_train.files)


def test_a_write_error_is_a_user_error_and_an_os_error_naming_the_path(tmp_path):
    with pytest.raises(WriteError) as caught, file_size_limit(1000):
        atomic_write_text(tmp_path / "out.txt", "x" * 5000)
    error = caught.value
    assert isinstance(error, UserError) and isinstance(error, OSError)  # one line; caches may still shrug it off
    assert str(error) == f"cannot write {tmp_path / 'out.txt'} (File too large)"
    assert error.errno == 27 and error.filename == str(tmp_path / "out.txt")
    assert os.listdir(tmp_path) == []  # no temporary file, no half file


def test_torch_save_failing_names_the_file_and_why_and_keeps_the_old_one(tmp_path):
    """torch.save's own error is "[enforce fail at inline_container.cc] unexpected pos ..."."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {}, "config": {}, "vocab": [], "step": 1})
    before = sha(path)
    big = {"model": {"w": torch.zeros(50_000)}, "config": {}, "vocab": [], "step": 2}
    with pytest.raises(WriteError, match=re.escape(f"cannot write {path} (File too large)")), file_size_limit(20_000):
        save_checkpoint(path, big)
    assert sha(path) == before and load_checkpoint(path)["step"] == 1
    assert temp_files(tmp_path) == []


def test_an_error_of_the_callback_itself_is_not_blamed_on_the_file(tmp_path):
    def write(f):
        f.write(b"partial")
        raise ValueError("a bug in the caller")

    with pytest.raises(ValueError, match="a bug in the caller"):
        atomic_write_bytes(tmp_path / "a.bin", write)
    assert os.listdir(tmp_path) == []


def test_writing_turns_any_os_error_into_one_naming_the_path(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(WriteError, match=re.escape(f"cannot write {tmp_path / 'file' / 'x'} (")):
        with writing(tmp_path / "file" / "x"):
            (tmp_path / "file" / "x").mkdir(parents=True)


def test_a_figure_that_cannot_be_written_leaves_the_old_one(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot(range(100), [i * i for i in range(100)])
    path = tmp_path / "plot.png"
    path.write_bytes(b"old")
    with pytest.raises(WriteError, match=re.escape(f"cannot write {path} (File too large)")), file_size_limit(2000):
        save_figure(fig, path)
    plt.close(fig)
    assert path.read_bytes() == b"old" and temp_files(tmp_path) == []


def test_tensorboard_fails_late_in_its_thread_and_is_raised_as_one_error_without_its_traceback(tmp_path, capfd):
    with file_size_limit(5000):
        writer = summary_writer(tmp_path)
        events = event_file(writer)
        with pytest.raises(WriteError) as caught:
            with writing(events):
                for step in range(2000):
                    writer.add_scalar("loss", 1.0, step)
                writer.close()
    assert str(caught.value) == f"cannot write {events} (File too large)" and events.parent == tmp_path
    assert "Traceback" not in capfd.readouterr().err  # the writer thread's own print is silenced


# ---------------------------------------------------------------------------------------------
# training


def test_a_checkpoint_that_cannot_be_written_stops_training_with_one_line(trained, tmp_path):
    """The fault probe of issue 17: the disk fills while a checkpoint is written."""
    run_dir = copy_run(trained, tmp_path)
    before = sha(run_dir / "last.pt")
    job = limited_cli(CHECKPOINT_LIMIT, tmp_path, "train", "--resume", str(run_dir), "--cache-dir",
                      str(tmp_path / "cache"), "train.max_steps=80", "--quiet")
    assert job.returncode == 2 and job.stdout == ""
    assert re.fullmatch(rf"error: cannot write {re.escape(str(run_dir))}/(best|last)\.pt \(File too large\)\n",
                        job.stderr), job.stderr
    assert sha(run_dir / "last.pt") == before and load_checkpoint(run_dir / "last.pt")["step"] == 40
    assert temp_files(tmp_path) == []


def test_an_event_file_that_cannot_be_written_stops_training_with_one_line(trained, tmp_path):
    """TensorBoard's writer fails in its thread; the run stops at the step after, saves last.pt (it
    fits) and ends with the event file's error, without metrics.json (the run is not done)."""
    job = limited_cli(EVENTS_LIMIT, tmp_path, "train", "--config", "debug", "--cache-dir", str(trained / "cache"),
                      f"log.dir={tmp_path}", "log.name=tb", NATIVE, "model.hidden_size=16", "train.threads=1",
                      "train.max_steps=300", "train.eval_every=100", "log.log_every=1", "--quiet")
    run_dir = tmp_path / "tb"
    assert job.returncode == 2 and job.stdout == ""
    assert re.fullmatch(rf"error: cannot write {re.escape(str(run_dir))}/(train/|val/)?events\.out\.tfevents\.\S+ "
                        rf"\(File too large\)\n", job.stderr), job.stderr
    step = load_checkpoint(run_dir / "last.pt")["step"]
    assert 100 < step < 300  # stopped soon after the events outgrew the limit, not at the end
    assert not (run_dir / "metrics.json").exists() and temp_files(tmp_path) == []


def test_metrics_that_cannot_be_written_are_one_line_after_the_checkpoints(trained, tmp_path, capsys):
    from rnn_train.training.cli import main

    cfg = tiny_config(tmp_path, NATIVE, name="m")
    (tmp_path / "m" / "metrics.json").mkdir(parents=True)  # the rename onto it fails
    (tmp_path / "cfg.yaml").write_text(config_to_yaml(cfg))
    assert run(main, ["--config", str(tmp_path / "cfg.yaml"), "--cache-dir", str(trained / "cache"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: cannot write {tmp_path / 'm' / 'metrics.json'} (Is a directory)\n"
    assert load_checkpoint(tmp_path / "m" / "last.pt")["step"] == 40 and temp_files(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# the other commands


def test_sweep_results_that_cannot_be_written_are_one_line(trained, tmp_path, capsys):
    from rnn_train.experiments.sweep.cli import main

    out = tmp_path / "sweep"
    (out / "results.csv").mkdir(parents=True)
    argv = ["--config", str(ROOT / "configs" / "debug.yaml"), "--grid", "model.cell=rnn", "--budget", "tokens:240",
            "--out", str(out), "--cache-dir", str(trained / "cache"), "model.hidden_size=8", "data.batch_size=4",
            "train.threads=1", "log.sample_length=0", NATIVE]
    assert run(main, argv) == 2
    assert capsys.readouterr().err == f"error: cannot write {out / 'results.csv'} (Is a directory)\n"
    assert temp_files(out) == []


def test_score_per_char_that_cannot_be_written_is_one_line_and_keeps_the_old_file(trained, tmp_path, capsys):
    from rnn_train.prediction.score import main

    text = tmp_path / "text.txt"
    text.write_text("zhong guo ren min " * 300)  # ~5,400 rows of about 20 bytes
    out = tmp_path / "chars.tsv"
    out.write_text("old\n")
    with file_size_limit(20_000):
        status = run(main, [str(text), "--checkpoint", str(trained / "run"), "--per-char", str(out)])
    assert status == 2
    assert capsys.readouterr().err == f"error: cannot write {out} (File too large)\n"
    assert out.read_text() == "old\n" and temp_files(tmp_path) == []


def test_a_download_that_cannot_be_written_is_one_line(tmp_path):
    from rnn_train.data.download import download
    from tests.conftest import shared_corpus

    copy = shared_corpus("tinyshakespeare/input.txt")
    with pytest.raises(WriteError) as caught, file_size_limit(100_000):
        download("tinyshakespeare", url=copy.as_uri(), root=tmp_path)
    assert str(caught.value) == f"cannot write {tmp_path / 'data/tinyshakespeare/input.txt'} (File too large)"
    assert temp_files(tmp_path) == [] and not (tmp_path / "data/tinyshakespeare/input.txt").exists()


def test_gradflow_event_files_that_cannot_be_written_are_one_error(tmp_path):
    from rnn_train.teaching.gradflow import FlowResult, write_tensorboard

    steps = 2000
    ramp = [float(i) for i in range(steps)]
    r = FlowResult(steps=steps, batch=1, loss=1.0, loss_last=1.0, dL_dh=ramp, dLT_dh=ramp, grad_norm=1.0,
                   grad_norm_last=1.0, clip=0.0, clip_coef=1.0, clip_coef_last=1.0)
    with pytest.raises(WriteError, match=rf"cannot write {re.escape(str(tmp_path))}/g/events\.out\.tfevents\.\S+ "
                                         rf"\(File too large\)"), file_size_limit(20_000):
        write_tensorboard(r, tmp_path / "g")


def test_standard_output_on_a_full_disk_is_one_line():
    """/dev/full fails every write with ENOSPC, like a file on a full disk (`... > out.txt`)."""
    with open("/dev/full", "w") as full:
        job = subprocess.run([sys.executable, "-m", "rnn_train", "config"], cwd=ROOT, stdout=full,
                             stderr=subprocess.PIPE, text=True, timeout=60)
    assert job.returncode == 2
    assert job.stderr == "error: cannot write the standard output (No space left on device)\n"


# ---------------------------------------------------------------------------------------------
# torchrun: rank 0 writes, every rank stops


@pytest.mark.parametrize("what", ["checkpoint", "events"])
def test_under_torchrun_a_failed_write_on_rank_0_stops_every_rank_with_one_line(tmp_path, monkeypatch, what):
    from tests.test_distributed import torchrun, write_config

    runs = tmp_path / "runs"
    runs.mkdir()
    extra = ["train.max_steps=300", "train.eval_every=100", "log.log_every=1"] if what == "events" else []
    cfg = tiny_config(runs, NATIVE, *extra, name="full")
    prepare_corpus(cfg.data, tmp_path / "cache", progress=False)  # the ranks' cache (too big for the limit)
    monkeypatch.setenv("DDP_FILE_LIMIT", str(CHECKPOINT_LIMIT if what == "checkpoint" else EVENTS_LIMIT))
    monkeypatch.setenv("RNN_TRAIN_NO_CPP", "1")
    job = torchrun(runs, ["--config", str(write_config(runs, cfg)), "--quiet"])
    assert job.returncode != 0 and job.stderr.count("exitcode  : 2") == 2  # rank 1 stopped too, as from a user error
    # no traceback from a rank (torchrun's own, for a failed job, is torchrun's business)
    assert "[rank" not in job.stderr and f'File "{ROOT}' not in job.stderr, job.stderr[-3000:]
    errors = [line for line in job.stderr.splitlines() if line.startswith("error:")]
    run_dir = re.escape(str(runs / "full"))
    failed = r"best\.pt" if what == "checkpoint" else r"(train/|val/)?events\.out\.tfevents\.\S+"
    assert len(errors) == 1 and re.fullmatch(rf"error: cannot write {run_dir}/{failed} \(File too large\)",
                                             errors[0]), errors
    assert job.shutdowns == []  # both ranks left as from a user error
    assert temp_files(runs) == [] and not (runs / "full" / "metrics.json").exists()
