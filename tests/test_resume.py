"""An interrupted then resumed run ends with exactly the weights of one that never stopped."""
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rnn_train.errors import UserError
from rnn_train.model.checkpoint import load_checkpoint
from rnn_train.training.learner import make_learner
from rnn_train.training.start import resume_state
from rnn_train.training.trainer import train
from tests.helpers import ROOT, read_events, scalar_series, tiny_config


def interrupt_at(k):
    """An on_step hook that delivers a real SIGINT (what Ctrl-C sends) after update k."""
    def hook(step):
        if step == k:
            os.kill(os.getpid(), signal.SIGINT)
    return hook


def weights(path):
    return load_checkpoint(path)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def small_text(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(("the quick brown fox jumps over the lazy dog; " * 40 + "\n") * 3)
    return path


CASES = {
    # sequential GRU with dropout: carried hidden state + torch RNG must both be restored
    "sequential_gru_dropout": ["data.partition=sequential", "model.num_layers=2", "model.dropout=0.3"],
    # random LSTM, interrupted in the 2nd epoch of a small corpus, plateau schedule, eval each epoch
    "random_lstm_epochs": ["model.cell=lstm", "data.partition=random", "train.max_steps=0", "train.epochs=3",
                           "train.eval_every=0", "train.schedule=plateau", "train.plateau_patience=0"],
    # cosine with warmup and SGD momentum
    "cosine_sgd": ["train.optimizer=sgd", "train.momentum=0.9", "train.lr=0.5", "train.schedule=cosine",
                   "train.warmup_steps=5"],
}


@pytest.mark.parametrize("case", CASES)
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, case):
    extra = CASES[case] + (["data.kind=text", f"data.paths={small_text(tmp_path)}", "data.val_fraction=0.1"]
                           if case == "random_lstm_epochs" else [])
    cfg = tiny_config(tmp_path, *extra)
    full = train(cfg, tmp_path / "full", quiet=True, cache_dir=tmp_path / "c")

    stop_at = 2 * full.step // 3 + 1  # not on a validation step
    part = train(cfg, tmp_path / "split", quiet=True, cache_dir=tmp_path / "c", on_step=interrupt_at(stop_at))
    assert part.interrupted and part.step == stop_at
    assert load_checkpoint(tmp_path / "split" / "last.pt")["step"] == stop_at
    resumed = train(cfg, tmp_path / "split", quiet=True, cache_dir=tmp_path / "c",
                    resume=load_checkpoint(tmp_path / "split" / "last.pt"))

    assert resumed.step == full.step and resumed.epoch == full.epoch
    assert resumed.val_loss == full.val_loss
    assert_same_weights(weights(tmp_path / "full" / "last.pt"), weights(tmp_path / "split" / "last.pt"))
    # the resumed run's TensorBoard curves continue where the first half stopped, without duplicates,
    # and the interval it was stopped in averages the same updates (tokens/s alone is the clock's)
    for series in ("train/loss", "train/grad_norm", "train/clipped_fraction"):
        assert scalar_series(tmp_path / "split", series) == scalar_series(tmp_path / "full", series), series
    reported = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("full", "split")]
    assert reported[0]["clipped_fraction"] == reported[1]["clipped_fraction"]


def test_resume_can_extend_a_finished_run(tmp_path):
    cfg = tiny_config(tmp_path, "train.max_steps=20")
    train(cfg, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c")
    longer = tiny_config(tmp_path, "train.max_steps=30")
    r = train(longer, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c",
              resume=load_checkpoint(tmp_path / "r" / "last.pt"))
    assert r.step == 30
    train(longer, tmp_path / "straight", quiet=True, cache_dir=tmp_path / "c")
    assert_same_weights(weights(tmp_path / "r" / "last.pt"), weights(tmp_path / "straight" / "last.pt"))
    # TensorBoard's HPARAMS row is the run as it ended, not as its first session began
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = read_events(tmp_path / "r").PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["train.max_steps"].number_value == 30
    assert len(list((tmp_path / "r").glob("events.out.tfevents.*.hparams"))) == 1


def test_metrics_json_is_the_runs_end_never_an_earlier_one(tmp_path):
    """A run extended by --resume and interrupted before its new end has no metrics.json: the one
    of its earlier end (step 20, stopped by max_steps) would describe a run that no longer is."""
    train(tiny_config(tmp_path, "train.max_steps=20"), tmp_path / "r", quiet=True, cache_dir=tmp_path / "c")
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["step"] == 20
    longer = tiny_config(tmp_path, "train.max_steps=30")
    part = train(longer, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c", on_step=interrupt_at(25),
                 resume=load_checkpoint(tmp_path / "r" / "last.pt"))
    assert part.interrupted and not (tmp_path / "r" / "metrics.json").exists()
    train(longer, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c", resume=load_checkpoint(tmp_path / "r" / "last.pt"))
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["step"] == 30


def test_resume_takes_the_optimiser_settings_given_and_another_kind_of_optimiser_starts_fresh(tmp_path, capsys):
    """--resume may change the optimiser's settings: they are the config's, not the checkpoint's
    (torch's load_state_dict alone would bring the saved ones back). Another kind of optimiser
    (SGD -> Adam) cannot take the saved state: it starts fresh, with a note, and the run goes on."""
    sgd = ["train.optimizer=sgd", "train.momentum=0.9", "train.lr=0.5"]
    train(tiny_config(tmp_path, "train.max_steps=10", *sgd), tmp_path / "r", quiet=True, cache_dir=tmp_path / "c")
    ckpt = load_checkpoint(tmp_path / "r" / "last.pt")
    cpu = torch.device("cpu")

    changed = tiny_config(tmp_path, "train.max_steps=20", *sgd, "train.momentum=0.5", "train.weight_decay=0.01")
    learner = make_learner(changed, len(ckpt["vocab"]), cpu)
    _, note = resume_state(learner, ckpt, changed, cpu)
    group = learner.optimizer.param_groups[0]
    assert (group["momentum"], group["weight_decay"], note) == (0.5, 0.01, "")
    assert all("momentum_buffer" in s for s in learner.optimizer.state.values())  # the state carried

    adam = tiny_config(tmp_path, "train.max_steps=20", "train.optimizer=adam")
    learner = make_learner(adam, len(ckpt["vocab"]), cpu)
    _, note = resume_state(learner, ckpt, adam, cpu)
    assert not learner.optimizer.state and note.startswith("train.optimizer is adam, the run trained with sgd")
    capsys.readouterr()
    assert train(adam, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c", resume=ckpt).step == 20
    assert "note: train.optimizer is adam, the run trained with sgd: the optimiser's state" in capsys.readouterr().err


def test_a_resumed_runs_events_are_read_after_those_it_continues_even_within_one_second(tmp_path):
    """TensorBoard reads a directory's event files in name order, and a name begins with the
    second the file was opened, then host and pid: a run resumed within the second its events
    began must still sort after them. Forced here: the first run's files renamed to a second
    ahead of the clock, on a host name that sorts after any other."""
    cfg = tiny_config(tmp_path, "train.max_steps=20")
    train(cfg, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c")
    ahead = str(int(time.time()) + 1)
    for f in (tmp_path / "r").glob("**/events.out.tfevents.*"):
        parts = f.name.split(".")
        parts[3:5] = [ahead, "~~~~"]
        f.rename(f.with_name(".".join(parts)))
    train(tiny_config(tmp_path, "train.max_steps=30"), tmp_path / "r", quiet=True, cache_dir=tmp_path / "c",
          resume=load_checkpoint(tmp_path / "r" / "last.pt"))
    for series in ("train/loss", "val/loss"):
        steps = [s for s, _ in scalar_series(tmp_path / "r", series)]
        assert steps == sorted(set(steps)) and steps[-1] == 30, (series, steps)


def test_resuming_a_finished_run_writes_nothing_and_says_which_limit_to_raise(tmp_path):
    """Nothing to train: no validation booked into the state (patience, plateau), no file rewritten."""
    cfg = tiny_config(tmp_path, "train.max_steps=200", "train.eval_every=5", "train.patience=1", "train.optimizer=sgd",
                      "train.lr=1e-30")  # updates below every weight's last bit: no validation improves on the first
    first = train(cfg, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c")
    assert first.stopped_by == "early_stopping" and first.step == 10
    files = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    for _ in range(2):
        err = io.StringIO()
        again = train(cfg, tmp_path / "r", cache_dir=tmp_path / "c", resume=load_checkpoint(tmp_path / "r" / "last.pt"),
                      stream=err)
        assert again == first
        assert err.getvalue().startswith(f"note: {tmp_path / 'r'} already reached train.patience at step {first.step}")
        assert f"--resume {tmp_path / 'r'} train.patience=..." in err.getvalue()
        assert {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()} == files
    raised = train(cfg.replace(train=replace(cfg.train, patience=3)), tmp_path / "r", quiet=True,
                   cache_dir=tmp_path / "c", resume=load_checkpoint(tmp_path / "r" / "last.pt"))
    assert raised.step > first.step  # with the limit the note named raised, it trains on


def test_a_run_stopped_at_its_limit_before_reporting_is_reported_by_resume(tmp_path):
    """last.pt at the limit but no metrics.json (the process died in between): resume finishes the report."""
    cfg = tiny_config(tmp_path, "train.max_steps=20")  # log_every 5: step 20 logged its means, then saved
    train(cfg, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c")
    whole = json.loads((tmp_path / "r" / "metrics.json").read_text())
    (tmp_path / "r" / "metrics.json").unlink()
    r = train(cfg, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c",
              resume=load_checkpoint(tmp_path / "r" / "last.pt"))
    assert r.step == 20 and (tmp_path / "r" / "metrics.json").exists()
    reported = json.loads((tmp_path / "r" / "metrics.json").read_text())
    same = ("step", "train_loss", "grad_norm", "clipped_fraction", "val_loss", "best_val_loss")
    assert {k: reported[k] for k in same} == {k: whole[k] for k in same}  # not null: the checkpoint kept them
    # it validated at step 20 before it died: one validation point per step, not a second one at 20
    assert [step for step, _ in scalar_series(tmp_path / "r", "val/loss")] == [20]


def test_resume_refuses_a_corpus_that_changed_since_the_run_began_and_writes_nothing(tmp_path):
    from rnn_train.errors import UserError

    corpus = small_text(tmp_path)
    cfg = tiny_config(tmp_path, "train.max_steps=20", "data.kind=text", f"data.paths={corpus}", "data.val_fraction=0.1")
    train(cfg, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c")
    assert load_checkpoint(tmp_path / "r" / "last.pt")["corpus_sha256"]
    corpus.rename(tmp_path / "moved.txt")  # the same text elsewhere resumes
    moved = tiny_config(tmp_path, "train.max_steps=25", "data.kind=text", f"data.paths={tmp_path / 'moved.txt'}",
                        "data.val_fraction=0.1")
    assert train(moved, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c",
                 resume=load_checkpoint(tmp_path / "r" / "last.pt")).step == 25
    with open(tmp_path / "moved.txt", "a") as f:
        f.write("completely different text\n")
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()}
    longer = tiny_config(tmp_path, "train.max_steps=30", "data.kind=text", f"data.paths={tmp_path / 'moved.txt'}",
                         "data.val_fraction=0.1")
    with pytest.raises(UserError, match=r"moved\.txt\) is not the text this run trained on"):
        train(longer, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c",
              resume=load_checkpoint(tmp_path / "r" / "last.pt"))
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()} == before


def test_ctrl_c_saves_a_checkpoint_and_exits_with_a_message_then_resume_continues(tmp_path):
    cmd = [sys.executable, "train.py", "--config", "configs/debug.yaml", f"log.dir={tmp_path}", "log.name=ctrl c é",
           "train.max_steps=1000000", "train.eval_every=0", "log.log_every=5", "train.threads=1",
           "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until training has really started
        line = proc.stderr.readline()
        if line.startswith("step "):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at step" in out
    run = tmp_path / "ctrl c é"
    # the command as the user called it, quoted for a shell: pasted as printed, it resumes the run
    again = f"python train.py --resume {shlex.quote(str(run))}"
    assert f"continue with: {again}\n" in out
    assert "Traceback" not in err
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["step"] > 0
    pasted = again.replace("python", shlex.quote(sys.executable), 1)
    done = subprocess.run(f"{pasted} --quiet train.max_steps={ckpt['step'] + 10} --cache-dir {tmp_path / 'cache'}",
                          shell=True, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(run / "last.pt")["step"] == ckpt["step"] + 10


def test_a_ctrl_c_its_starter_ignored_is_ignored_throughout_the_run(tmp_path):
    """A shell ignores Ctrl-C for a script's `cmd &`: the run took one during its imports as
    `error: interrupted`, ignored one a second later, and stopped on one once the loop began."""
    cmd = [sys.executable, "train.py", "--config", "configs/debug.yaml", f"log.dir={tmp_path}", "log.name=bg",
           "train.max_steps=300", "train.eval_every=100", "log.log_every=5", "train.threads=1",
           "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # while importing
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stderr.readline()
        if line.startswith("step ") or not line:
            break
    proc.send_signal(signal.SIGINT)  # while training
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "done: 300 steps" in out and "interrupted" not in out + err


def test_sigterm_outside_the_training_loop_is_ctrl_c_there_too(tmp_path, monkeypatch, capsys):
    """Before the loop (imports, corpus preparation) SIGTERM's default ended the process silently
    (-15) where Ctrl-C said `error: interrupted` with status 130: now both say it. The handler the
    command found is put back when it returns."""
    import rnn_train.training.trainer as trainer
    from rnn_train.cli import run
    from rnn_train.training.cli import main as train_main

    def preparing(*args, **kwargs):  # a signal while the corpus is prepared
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        raise AssertionError("SIGTERM did not stop the command")
    monkeypatch.setattr(trainer, "train", preparing)
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        status = run(train_main, ["--config", str(ROOT / "configs" / "debug.yaml"), f"log.dir={tmp_path}", "--cache-dir",
                                  str(tmp_path / "c")])
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)
    assert status == 130
    assert capsys.readouterr().err == "error: interrupted\n"

    def ignored(*args, **kwargs):  # a SIGTERM ignored by whoever started the command stays ignored
        os.kill(os.getpid(), signal.SIGTERM)
        raise UserError("went on")
    monkeypatch.setattr(trainer, "train", ignored)
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        status = run(train_main, ["--config", str(ROOT / "configs" / "debug.yaml"), f"log.dir={tmp_path}",
                                  "--cache-dir", str(tmp_path / "c")])
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)
    assert (status, capsys.readouterr().err) == (2, "error: went on\n")


def _run_here_and_elsewhere(tmp_path, monkeypatch):
    """(home, other, cfg): a corpus.txt in home, the current directory; cfg reads it by its relative name."""
    home, other = tmp_path / "home", tmp_path / "other"
    home.mkdir(), other.mkdir()
    small_text(home)
    monkeypatch.chdir(home)
    return home, other, tiny_config(tmp_path, "train.max_steps=20", "data.kind=text", "data.paths=corpus.txt",
                                    "data.val_fraction=0.1")


def test_a_run_is_resumed_and_explored_from_another_directory_with_its_relative_corpus_path(tmp_path, monkeypatch,
                                                                                           capsys):
    """data.paths as the user typed them (relative) are read where the run trained when they name
    nothing where --resume, explore or gradflow run; the checkpoints keep saying where that is."""
    from rnn_train.explore.cli import validation_document
    from rnn_train.model.checkpoint import load_model
    from rnn_train.teaching.gradflow import Probe, run_probe

    home, other, cfg = _run_here_and_elsewhere(tmp_path, monkeypatch)
    train(cfg, tmp_path / "r", quiet=True, cache_dir=None)
    assert load_checkpoint(tmp_path / "r" / "last.pt")["workdir"] == str(home)
    monkeypatch.chdir(other)
    longer = replace(cfg, train=replace(cfg.train, max_steps=30))
    lines = io.StringIO()
    r = train(longer, tmp_path / "r", cache_dir=None, stream=lines, resume=load_checkpoint(tmp_path / "r" / "last.pt"))
    assert r.step == 30 and f"data.paths not found here, read where the run trained: {home / 'corpus.txt'}" in \
        lines.getvalue()
    ckpt = load_checkpoint(tmp_path / "r" / "last.pt")
    assert ckpt["workdir"] == str(home) and ckpt["config"]["data"]["paths"] == ["corpus.txt"]  # as typed
    _, vocab, loaded, ckpt = load_model(tmp_path / "r" / "best.pt")
    doc, length, _ = validation_document(loaded, vocab, ckpt, tmp_path / "r" / "best.pt", None, 100)
    assert length > 100 and "the lazy dog" in doc.text
    result, _ = run_probe(Probe(checkpoint=str(tmp_path / "r"), steps=10, batch=2, cache_dir=None))
    assert result is not None
    assert capsys.readouterr().err.count("read where the run trained") == 2  # explore's note and gradflow's
    assert not (other / "data").exists()  # and nothing was written here
    (home / "corpus.txt").unlink()  # gone from both places: the error says where it was looked for
    with pytest.raises(UserError, match=re.escape(f"corpus file not found: corpus.txt (looked for in {other} and in "
                                                  f"{home}, where the run last read it)")):
        train(longer, tmp_path / "r", cache_dir=None, resume=load_checkpoint(tmp_path / "r" / "last.pt"))


def test_a_run_used_elsewhere_reuses_the_corpus_prepared_where_it_trained_rather_than_preparing_it_here(
        tmp_path, monkeypatch, capsys):
    """A relative --cache-dir that names nothing here follows the run to where it trained: --resume,
    explore and gradflow started elsewhere neither write ./data/cache nor prepare the corpus again,
    for a relative corpus and for the built-in one alike."""
    from rnn_train.explore.cli import validation_document
    from rnn_train.model.checkpoint import load_model
    from rnn_train.teaching.gradflow import Probe, run_probe

    home, other, cfg = _run_here_and_elsewhere(tmp_path, monkeypatch)
    cache = Path("data/cache")  # the commands' default, relative
    train(cfg, tmp_path / "r", quiet=True, cache_dir=cache)
    prepared = sorted(p.relative_to(home) for p in (home / cache).rglob("*"))
    assert prepared
    monkeypatch.chdir(other)
    train(replace(cfg, train=replace(cfg.train, max_steps=30)), tmp_path / "r", quiet=True, cache_dir=cache,
          resume=load_checkpoint(tmp_path / "r" / "last.pt"))
    _, vocab, loaded, ckpt = load_model(tmp_path / "r" / "best.pt")
    doc, _, _ = validation_document(loaded, vocab, ckpt, tmp_path / "r" / "best.pt", str(cache), 100)
    assert "the lazy dog" in doc.text
    assert run_probe(Probe(checkpoint=str(tmp_path / "r"), steps=10, batch=2, cache_dir=str(cache)))[0] is not None
    assert not (other / "data").exists()
    assert sorted(p.relative_to(home) for p in (home / cache).rglob("*")) == prepared  # reused, nothing added
    monkeypatch.chdir(home)  # the built-in corpus (no data.paths to move) reuses the run's cache as well
    train(tiny_config(tmp_path, "train.max_steps=5"), tmp_path / "builtin", quiet=True, cache_dir=cache)
    prepared = sorted(p.relative_to(home) for p in (home / cache).rglob("*"))
    monkeypatch.chdir(other)
    _, vocab2, loaded2, ckpt2 = load_model(tmp_path / "builtin" / "best.pt")
    validation_document(loaded2, vocab2, ckpt2, tmp_path / "builtin" / "best.pt", str(cache), 100)
    assert not (other / "data").exists() and sorted(p.relative_to(home) for p in (home / cache).rglob("*")) == prepared
    (other / cache).mkdir(parents=True)  # a cache of that name here is this directory's own: used as given
    validation_document(loaded, vocab, ckpt, tmp_path / "r" / "best.pt", str(cache), 100)
    assert any((other / cache).iterdir())


def test_the_library_train_refuses_what_train_py_refuses_and_writes_nothing(tmp_path):
    """train() called from Python keeps train.py's promises: a run is not replaced without clear=True,
    --resume's fixed keys stay fixed, a run directory another process is writing is not entered."""
    from rnn_train.errors import UserError

    cfg = tiny_config(tmp_path, "train.max_steps=20")
    train(cfg, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c")
    files = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()}
    with pytest.raises(UserError, match=r"r already holds a run \(best\.pt, last\.pt, metrics\.json, config\.yaml\); "
                                        r"resume it, or pass clear=True"):
        train(cfg, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c")
    ckpt = load_checkpoint(tmp_path / "r" / "last.pt")
    longer = replace(cfg, train=replace(cfg.train, max_steps=30))
    with pytest.raises(UserError, match=r"data\.num_steps, train\.seed cannot change on --resume"):
        train(replace(longer, data=replace(cfg.data, num_steps=6), train=replace(longer.train, seed=5)), tmp_path / "r",
              quiet=True, cache_dir=tmp_path / "c", resume=ckpt)
    with pytest.raises(TypeError, match="resume is a loaded checkpoint"):
        train(longer, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c", resume=str(tmp_path / "r"))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom rnn_train.training.rundir import claimed\n"
         "with claimed(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(60)", str(tmp_path / "r")],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match="is in use: another training on this machine"):
            train(longer, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c", resume=ckpt)
    finally:
        holder.kill()
        holder.wait()
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()} == files
    # nor is another run's directory taken over by a resume, nor entered by a second thread
    other = tiny_config(tmp_path, "train.max_steps=20", "model.hidden_size=8", name="other")
    train(other, tmp_path / "other", quiet=True, cache_dir=tmp_path / "c")
    theirs = {p.name: p.read_bytes() for p in (tmp_path / "other").iterdir() if p.is_file()}
    with pytest.raises(UserError, match=r"other holds another run \(model\.hidden_size differ from the checkpoint's\)"):
        train(longer, tmp_path / "other", quiet=True, cache_dir=tmp_path / "c", resume=ckpt)
    assert {p.name: p.read_bytes() for p in (tmp_path / "other").iterdir() if p.is_file()} == theirs
    from rnn_train.training.rundir import claimed

    with claimed(tmp_path / "r"):  # held by this thread: train() in it goes on (the command's own claim)
        seen = []
        worker = threading.Thread(target=lambda: seen.append(_refusal(lambda: train(
            longer, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c", resume=ckpt))))
        worker.start()
        worker.join()
        assert "is in use: another training on this machine" in seen[0]  # another thread of this process
        assert train(longer, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c", resume=ckpt).step == 30


def _refusal(call) -> str:
    try:
        call()
    except UserError as e:
        return str(e)
    return ""


def test_resume_may_point_data_paths_at_the_same_text_elsewhere_but_not_at_other_text(tmp_path, capsys):
    """The checkpoint's corpus digest says whether the text is the same, wherever its file now lies."""
    from rnn_train.cli import run as cli_run
    from rnn_train.training.cli import main as train_main

    corpus = small_text(tmp_path)
    cfg = tiny_config(tmp_path, "train.max_steps=20", "data.kind=text", f"data.paths={corpus}", "data.val_fraction=0.1")
    train(cfg, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c")
    other = tmp_path / "elsewhere.txt"
    other.write_bytes(corpus.read_bytes())
    corpus.unlink()
    resume = ["--resume", str(tmp_path / "r"), "--quiet", "--cache-dir", str(tmp_path / "c")]
    assert cli_run(train_main, [*resume, f"data.paths={other}", "train.max_steps=25"]) == 0
    assert load_checkpoint(tmp_path / "r" / "last.pt")["step"] == 25
    capsys.readouterr()
    other.write_text("other text entirely; " * 200)
    assert cli_run(train_main, [*resume, f"data.paths={other}", "train.max_steps=30"]) == 2
    assert "is not the text this run trained on" in capsys.readouterr().err
    assert cli_run(train_main, [*resume, "data.num_steps=6", "train.max_steps=30"]) == 2
    assert "data.num_steps cannot change on --resume" in capsys.readouterr().err


def test_a_resume_may_spell_log_dir_otherwise_but_not_name_another(tmp_path):
    """./runs and runs/ are the directory the run lives in, as runs is: refused, they said log.dir changed."""
    cfg = tiny_config(tmp_path, "train.max_steps=4")
    train(cfg, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c")
    spelt = replace(cfg, log=replace(cfg.log, dir=f"{cfg.log.dir}/./"), train=replace(cfg.train, max_steps=6))
    resumed = train(spelt, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c",
                    resume=load_checkpoint(tmp_path / "r" / "last.pt"))
    assert resumed.step == 6
    other = replace(spelt, log=replace(cfg.log, dir=f"{cfg.log.dir}/x"), train=replace(cfg.train, max_steps=8))
    with pytest.raises(UserError, match=r"log\.dir cannot change on --resume"):
        train(other, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c",
              resume=load_checkpoint(tmp_path / "r" / "last.pt"))


def test_a_resume_without_best_pt_says_the_test_split_goes_unscored(tmp_path):
    """best.pt deleted, and no validation after the resume beats the old best: the test split was
    left out without a word (metrics.json's test_loss null)."""
    base = [sys.executable, "train.py", "--quiet", "--cache-dir", str(tmp_path / "c")]
    first = subprocess.run([*base, "--config", "configs/debug.yaml", f"log.dir={tmp_path}", "log.name=t",
                            "data.test_fraction=0.05", "train.max_steps=20", "train.eval_every=10"],
                           cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0 and "test loss" in first.stdout, first.stderr
    (tmp_path / "t" / "best.pt").unlink()
    last = torch.load(tmp_path / "t" / "last.pt", weights_only=True)
    last["best_val_loss"] = 0.0  # no validation of the resumed run beats it, so none writes best.pt again
    torch.save(last, tmp_path / "t" / "last.pt")
    again = subprocess.run([*base, "--resume", str(tmp_path / "t"), "train.max_steps=22"], cwd=ROOT,
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"note: {tmp_path / 't' / 'best.pt'} is missing (deleted?), so the test split is not scored" in again.stderr
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["test_loss"] is None
    # a run that diverged before its first validation never had a best.pt: nothing is missing
    diverged = subprocess.run([*base, "--config", "configs/debug.yaml", f"log.dir={tmp_path}", "log.name=d",
                               "data.test_fraction=0.05", "train.lr=1e37", "train.clip_norm=0", "train.eval_every=30"],
                              cwd=ROOT, capture_output=True, text=True)
    assert "diverged at step" in diverged.stdout + diverged.stderr and "is missing" not in diverged.stderr
