"""A failed write is one line: `error: cannot write <path> (<reason>)`, exit status 2, the file it was
replacing intact, no temporary file left, wherever the project writes (rnn_train.files).

The failures are real: a file size limit (RLIMIT_FSIZE) makes a write past it fail with EFBIG
("File too large") the way a full disk fails with ENOSPC, and a directory standing where a file is
to be renamed to makes the rename fail ("Is a directory"). SIGXFSZ, which the limit would send to
kill the process, is ignored wherever the limit is set.
"""
import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnn_train.cli import run
from rnn_train.config import config_to_yaml
from rnn_train.data.prepare import prepare_corpus
from rnn_train.errors import UserError
from rnn_train.files import WriteError, atomic_write_bytes, atomic_write_files, atomic_write_text, save_figure, \
    summary_writer, event_file, writing
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


def test_files_that_belong_together_are_replaced_together_or_not_at_all(tmp_path):
    """An export's graph and its metadata: the one written first is not renamed before the other is complete."""
    meta, graph = tmp_path / "model.json", tmp_path / "model.onnx"
    meta.write_text("old metadata")
    graph.write_text("old graph")
    with pytest.raises(WriteError, match=re.escape(f"cannot write {graph} (File too large)")), file_size_limit(1000):
        atomic_write_files([(meta, lambda f: f.write(b"new metadata")), (graph, lambda f: f.write(b"w" * 5000))])
    assert meta.read_text() == "old metadata" and graph.read_text() == "old graph" and temp_files(tmp_path) == []
    atomic_write_files([(meta, lambda f: f.write(b"new metadata")), (graph, lambda f: f.write(b"new graph"))])
    assert (meta.read_text(), graph.read_text()) == ("new metadata", "new graph") and temp_files(tmp_path) == []


def test_torch_save_failing_names_the_file_and_why_and_keeps_the_old_one(tmp_path):
    """torch.save's own error is "[enforce fail at inline_container.cc] unexpected pos ..."."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {}, "config": {}, "vocab": ["<unk>", "a"], "step": 1})
    before = sha(path)
    big = {"model": {"w": torch.zeros(50_000)}, "config": {}, "vocab": ["<unk>", "a"], "step": 2}
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
    old = "file\tindex\tchar\tbits\nan earlier table\n"
    out.write_text(old)
    with file_size_limit(20_000):
        status = run(main, [str(text), "--checkpoint", str(trained / "run"), "--per-char", str(out)])
    assert status == 2
    assert capsys.readouterr().err == f"error: cannot write {out} (File too large)\n"
    assert out.read_text() == old and temp_files(tmp_path) == []


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


def test_an_explore_page_that_cannot_be_written_is_one_line_and_keeps_the_old_page(trained, tmp_path, capsys):
    from rnn_train.explore.cli import main

    text = tmp_path / "text.txt"
    text.write_text("zhong guo ren min " * 20)
    page = tmp_path / "page.html"
    argv = ["--checkpoint", str(trained / "run"), str(text), "--out", str(page)]
    assert run(main, argv) == 0  # a good page, ~1.5 MB (the weights, the texts, the script)
    before = sha(page)
    with file_size_limit(page.stat().st_size // 2):
        status = run(main, argv)
    assert status == 2
    assert capsys.readouterr().err == f"error: cannot write {page} (File too large)\n"
    assert sha(page) == before and temp_files(tmp_path) == []


def test_an_onnx_export_that_cannot_be_written_is_one_line_and_keeps_the_old_export(trained, tmp_path, capsys):
    """The graph (~29 kB) does not fit: neither it nor the JSON beside it is replaced."""
    from rnn_train.export import main

    onnx, meta = tmp_path / "model.onnx", tmp_path / "model.json"
    onnx.write_bytes(b"an older export")
    older = '{"onnx": "model.onnx", "inputs": ["ids", "h"], "older": true}\n'
    meta.write_text(older)
    with file_size_limit(10_000):
        status = run(main, ["--checkpoint", str(trained / "run"), "--format", "onnx", "--out", str(onnx)])
    assert status == 2
    assert capsys.readouterr().err == f"error: cannot write {onnx} (File too large)\n"
    assert onnx.read_bytes() == b"an older export" and meta.read_text() == older
    assert temp_files(tmp_path) == []


# tune: a study of one trial, then the same command again under a limit

TUNE_SPACE = "train.lr: {float: [3.0e-3, 3.0e-2], log: true}\n"
TUNE_FIXED = ["data.batch_size=4", "data.num_steps=10", "data.val_fraction=0.002", "train.threads=1", NATIVE,
              "log.sample_length=0", "model.hidden_size=96"]  # a checkpoint of ~0.9 MB, more than the study.db


def tune_argv(out: Path, cache: Path, trials: int) -> list[str]:
    return ["--config", str(ROOT / "configs" / "debug.yaml"), "--space", str(out.parent / "space.yaml"),
            "--trials", str(trials), "--trial-budget", "tokens:240", "--evals", "2", "--out", str(out),
            "--cache-dir", str(cache), "--seed", "0", *TUNE_FIXED]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, trained):
    """A finished study of one trial (the recipe's own lr) in tmp/out: study.db, study.json,
    results.csv, best.yaml, history.png, curves.png, trial-0000/."""
    from rnn_train.experiments.tune.cli import main

    tmp = tmp_path_factory.mktemp("tuned")
    (tmp / "space.yaml").write_text(TUNE_SPACE)
    assert run(main, tune_argv(tmp / "out", trained / "cache", trials=1)) == 0
    return tmp


def copy_study(tuned: Path, tmp_path: Path) -> Path:
    shutil.copytree(tuned, tmp_path, dirs_exist_ok=True)
    return tmp_path / "out"


def database_error(path: Path) -> str:
    """SQLite's words for EFBIG ("disk I/O error") or ENOSPC ("database or disk is full")."""
    return rf"error: cannot write {re.escape(str(path))} \((disk I/O error|database or disk is full)\)\n"


def study_trials(out: Path):
    import optuna

    from rnn_train.experiments.study.storage import default_url

    name = json.loads((out / "study.json").read_text())["study"]
    return optuna.load_study(study_name=name, storage=default_url(out)).trials


# written in this order when a finished study is run again (nothing trained): each limit lets the
# files before the one named through and stops that one
@pytest.mark.parametrize("name", ["study.json", "best.yaml", "history.png"])
def test_tune_outputs_that_cannot_be_written_are_one_line_and_keep_the_old_ones(trained, tuned, tmp_path, capsys,
                                                                               name):
    from rnn_train.experiments.tune.cli import main

    out = copy_study(tuned, tmp_path)
    order = ["study.json", "results.csv", "best.yaml", "history.png"]
    sizes = {n: (out / n).stat().st_size for n in order}
    earlier = max([sizes[n] for n in order[:order.index(name)]], default=0)
    assert earlier < sizes[name]
    before = {n: sha(out / n) for n in order}
    with file_size_limit((earlier + sizes[name]) // 2):
        status = run(main, tune_argv(out, trained / "cache", trials=1))
    assert status == 2
    assert capsys.readouterr().err == f"error: cannot write {out / name} (File too large)\n"
    assert sha(out / name) == before[name] and temp_files(tmp_path) == []


def test_tune_results_that_cannot_be_written_are_one_line(trained, tuned, tmp_path, capsys):
    """results.csv is smaller than study.json, written before it: a directory in its place stops it."""
    from rnn_train.experiments.tune.cli import main

    out = copy_study(tuned, tmp_path)
    (out / "results.csv").unlink()
    (out / "results.csv").mkdir()
    assert run(main, tune_argv(out, trained / "cache", trials=1)) == 2
    assert capsys.readouterr().err == f"error: cannot write {out / 'results.csv'} (Is a directory)\n"
    assert (out / "results.csv").is_dir() and temp_files(tmp_path) == []


def test_a_study_database_that_cannot_grow_is_one_line_and_keeps_its_trials(trained, tuned, tmp_path, capsys):
    """SQLite's error comes wrapped by SQLAlchemy and Optuna (which would retry it); it is the
    database's WriteError. Asking for trial 1 writes the journal, which the limit stops."""
    from rnn_train.experiments.tune.cli import main

    out = copy_study(tuned, tmp_path)
    with file_size_limit(8192):
        status = run(main, tune_argv(out, trained / "cache", trials=2))
    assert status == 2
    assert re.fullmatch(database_error(out / "study.db"), capsys.readouterr().err)
    with contextlib.closing(sqlite3.connect(out / "study.db")) as db:
        assert db.execute("pragma integrity_check").fetchall() == [("ok",)]
    (trial,) = study_trials(out)  # SQLite rolled the failed transaction back
    assert trial.state.name == "COMPLETE" and trial.value == study_trials(tuned / "out")[0].value
    assert temp_files(tmp_path) == [] and not (out / "study.db-journal").exists() and not (out / "trial-0001").exists()


def test_a_trial_checkpoint_that_cannot_be_written_is_one_line_and_the_trial_is_queued_again(trained, tuned,
                                                                                          tmp_path, capsys):
    """Trial 1 trains under a limit above the study.db and below a checkpoint: its run stops at the
    first checkpoint, the trial is failed and queued again (the next run of the command retries it)."""
    from rnn_train.experiments.tune.cli import main

    out = copy_study(tuned, tmp_path)
    old = sha(out / "trial-0000" / "best.pt")
    assert (out / "study.db").stat().st_size < 300_000 < (out / "trial-0000" / "best.pt").stat().st_size
    with file_size_limit(300_000):
        status = run(main, tune_argv(out, trained / "cache", trials=2))
    assert status == 2
    assert re.fullmatch(rf"error: cannot write {re.escape(str(out / 'trial-0001'))}/(best|last)\.pt "
                        rf"\(File too large\)\n", capsys.readouterr().err)
    assert sha(out / "trial-0000" / "best.pt") == old and temp_files(tmp_path) == []
    assert [t.state.name for t in study_trials(out)] == ["COMPLETE", "FAIL", "WAITING"]


def test_a_sweep_study_database_that_cannot_be_created_is_one_line(trained, tmp_path, capsys):
    """The tables of a new study.db do not fit: the sweep stops before writing anything else."""
    from rnn_train.experiments.sweep.cli import main

    out = tmp_path / "sweep"
    argv = ["--config", str(ROOT / "configs" / "debug.yaml"), "--grid", "model.cell=rnn", "--budget", "tokens:240",
            "--out", str(out), "--cache-dir", str(trained / "cache"), "model.hidden_size=8", "data.batch_size=4",
            "train.threads=1", "log.sample_length=0", NATIVE]
    with file_size_limit(8192):
        status = run(main, argv)
    assert status == 2
    assert re.fullmatch(database_error(out / "study.db"), capsys.readouterr().err)
    assert sorted(os.listdir(out)) == ["study.db"]  # no sweep.json, no run, no journal left
    with contextlib.closing(sqlite3.connect(out / "study.db")) as db:
        assert db.execute("pragma integrity_check").fetchall() == [("ok",)]  # usable once there is room


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


def test_a_full_disk_met_by_every_worker_is_one_line(trained, tuned, tmp_path, capsys):
    """`--workers 2`: both workers fail on the same database; the parent says it once and writes
    no tables after it."""
    from rnn_train.experiments.tune.cli import main

    out = copy_study(tuned, tmp_path)
    before = sha(out / "results.csv")
    with file_size_limit(8192):
        status = run(main, tune_argv(out, trained / "cache", trials=3) + ["--workers", "2"])
    assert status == 2
    assert re.fullmatch(database_error(out / "study.db"), capsys.readouterr().err)
    assert sha(out / "results.csv") == before and temp_files(tmp_path) == []


def test_a_file_where_the_path_needs_a_directory_is_named_not_called_file_exists(tmp_path):
    """mkdir says "File exists" (or "Not a directory") where a file stands in a path's way; the
    error names that file."""
    from rnn_train.files import writing

    (tmp_path / "notes").write_text("x")
    for out in (tmp_path / "notes" / "page.html", tmp_path / "notes" / "sub" / "page.html"):
        with pytest.raises(WriteError) as e, writing(out):
            out.parent.mkdir(parents=True, exist_ok=True)
        assert str(e.value) == f"cannot write {out} ({tmp_path / 'notes'} is a file, not a directory)"
    from rnn_train.files import refuse_replacing

    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for out, why in [(tmp_path / "notes" / "x.tsv", f"{tmp_path / 'notes'} is a file, not a directory"),
                     (tmp_path / "dangling" / "x.tsv", "is a device, a pipe or a dangling link, not a directory"),
                     (tmp_path / ("a" * 300 + ".tsv"), "File name too long; nothing written")]:
        with pytest.raises(UserError, match=re.escape(why)):
            refuse_replacing(out, "--per-char")
    os.mkfifo(tmp_path / "pipe.csv")  # a path that is itself in the way keeps its own reason
    with pytest.raises(WriteError, match=r"pipe\.csv \(it is a device, a pipe or a link"):
        atomic_write_bytes(tmp_path / "pipe.csv", b"x")


def test_a_path_in_a_printed_command_pastes_back_as_the_same_path():
    """Quoted where a shell would split or expand it, and a relative name starting with "-" made ./-x,
    which no option parser takes for an option."""
    import shlex

    from rnn_train.files import shell_word

    for path in ("runs/plain", "runs/ctrl c é", "-x", "-x/best.pt", "it's", "/abs/-y", "$HOME/r"):
        word = shell_word(path)
        assert shlex.split(word) == [path if not path.startswith("-") else "./" + path]
        assert not shlex.split(word)[0].startswith("-")
    assert shell_word("runs/plain") == "runs/plain"
