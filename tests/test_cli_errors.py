"""Every user mistake ends in one line `error: ...`, exit status 2, no traceback, nothing damaged."""
import hashlib
import os
import shutil
import subprocess
import sys

import pytest
import torch

from rnn_train.training.trainer import train
from tests.helpers import ROOT, tiny_config


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)


def assert_user_error(out, needle):
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in out.stderr


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("err")
    train(tiny_config(tmp, "train.max_steps=10", name="done"), tmp / "done", quiet=True, cache_dir=tmp / "c")
    return tmp


def digest(run_dir):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.iterdir()) if p.is_file()}


def test_mistakes_in_train_py(tmp_path):
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes("中文语料".encode("gbk") * 100)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    short = tmp_path / "short.txt"
    short.write_text("abc" * 20)
    base = ["train.py", "--config", "configs/debug.yaml", f"log.dir={tmp_path}", "--cache-dir", str(tmp_path / "c")]
    assert_user_error(run("train.py", "--config", str(tmp_path / "missing.yaml")), "missing.yaml does not exist")
    assert_user_error(run(*base, "data.paths=nope.txt", "data.kind=text"), "nope.txt")
    assert_user_error(run(*base, f"data.paths={gbk}", "data.kind=text"), "offset 0")
    assert_user_error(run(*base, f"data.paths={empty}", "data.kind=text"), "empty.txt")
    assert_user_error(run(*base, f"data.paths={short}", "data.kind=text"), "corpus too short")
    assert_user_error(run(*base, "train.lr=-1"), "train.lr must be in (0, 3e+37]")
    assert_user_error(run(*base, "lr=1"), "section.key=value")
    assert_user_error(run("train.py"), "--config")
    assert_user_error(run("train.py", "--resume", str(tmp_path / "nothing")), "does not exist")
    assert_user_error(run("train.py", "--resume", str(tmp_path / "nothing"), "--force"),
                      "--force starts a run afresh and --resume continues one: give one of them")
    assert_user_error(run(*base, "train.seed=-1"), "train.seed must be in [0, 2^63)")
    assert_user_error(run(*base, "model.hidden_size=1e400"), "model.hidden_size must be an integer")
    assert_user_error(run(*base, "train.lr=inf"), "train.lr must be a finite number")
    assert_user_error(run(*base, "model.hidden_size=100000000"), "not enough memory for the model")
    # sizes past any memory: refused from the sizes (torch's storage size overflowed; 1e18 layers built for ever)
    assert_user_error(run(*base, "model.hidden_size=1e18"), "not enough memory for the model")
    assert_user_error(run(*base, "model.num_layers=1e18"), "not enough memory for the model")
    assert_user_error(run(*base, "model.embedding=learned", "model.embed_dim=1000000000"),
                      "not enough memory for the model (model.embed_dim=1000000000, model.hidden_size=")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(run(*base, f"log.dir={blocker}"), "cannot write the run directory")
    assert_user_error(run(*base, "log.name=file"), f"the run directory {blocker} is a file (log.dir / log.name); "
                                                   "pick another log.name")
    assert blocker.read_text() == "x" and not (tmp_path / "debug").exists()  # nothing was written by any of these
    assert_user_error(run("-m", "rnn_train", "download", "timemachine", "--url", ""), "--url is empty")


def test_mistakes_in_predict_py(tmp_path, finished_run):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert_user_error(run("predict.py", "--checkpoint", str(junk), "--prefix", "a"), "not an rnn-train checkpoint")
    assert_user_error(run("predict.py", "--checkpoint", "configs/debug.yaml", "--prefix", "a"), "not an rnn-train")
    whole = (finished_run / "done" / "best.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])  # a copy that stopped half way
    assert_user_error(run("predict.py", "--checkpoint", str(tmp_path / "cut.pt"), "--prefix", "a"),
                      f"(it ends after {len(whole) // 2:,} bytes, before a checkpoint's end: a copy or a write that "
                      "stopped early?)")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert_user_error(run("predict.py", "--checkpoint", str(tmp_path / "empty.pt"), "--prefix", "a"),
                      "not an rnn-train checkpoint (the file is empty)")
    assert_user_error(run("predict.py", "--checkpoint", str(tmp_path / "none.pt"), "--prefix", "a"), "does not exist")
    assert_user_error(run("predict.py", "--checkpoint", str(tmp_path), "--prefix", "a"), "without a checkpoint")
    assert_user_error(run("predict.py", "--prefix", "a"), "--checkpoint")
    assert_user_error(run("predict.py", "--checkpoint", "", "--prefix", "a"), "--checkpoint is empty")
    damaged = torch.load(finished_run / "done" / "best.pt", weights_only=True)
    damaged["model"] = None
    torch.save(damaged, tmp_path / "damaged.pt")
    assert_user_error(run("predict.py", "--checkpoint", str(tmp_path / "damaged.pt"), "--prefix", "a"),
                      "damaged rnn-train checkpoint: its 'model' is not a mapping of names to tensors")
    damaged = torch.load(finished_run / "done" / "best.pt", weights_only=True)
    damaged["vocab"] = ["a", "a"]
    torch.save(damaged, tmp_path / "vocab.pt")
    assert_user_error(run("predict.py", "--checkpoint", str(tmp_path / "vocab.pt"), "--prefix", "a"),
                      f"{tmp_path / 'vocab.pt'}: vocab must start with '<unk>'")
    for vocab, message in ((5, "vocab must be a list of characters, not int"),
                           (None, "vocab must be a list of characters, not NoneType"),
                           (torch.tensor(3), "vocab must be a list of characters, not Tensor"),
                           (["<unk>", "a", "\ud800"], "vocab holds a lone surrogate")):  # were tracebacks
        damaged["vocab"] = vocab
        torch.save(damaged, tmp_path / "vocab.pt")
        for command in (["predict.py", "--prefix", "a"],
                        ["-m", "rnn_train", "export", "--format", "onnx", "--out", str(tmp_path / "x.onnx")]):
            assert_user_error(run(*command, "--checkpoint", str(tmp_path / "vocab.pt")), f"vocab.pt: {message}")
    assert not (tmp_path / "x.onnx").exists()
    damaged = torch.load(finished_run / "done" / "best.pt", weights_only=True)
    damaged["step"], damaged["best_val_loss"] = "x", 1.5
    torch.save(damaged, tmp_path / "step.pt")
    damaged["step"], damaged["best_val_loss"] = 3, "low"
    torch.save(damaged, tmp_path / "loss.pt")
    # one load_checkpoint serves every command: predict for one, export (a ValueError before) for the other
    assert_user_error(run("predict.py", "--checkpoint", str(tmp_path / "step.pt"), "--prefix", "a"),
                      f"{tmp_path / 'step.pt'} is a damaged rnn-train checkpoint: its 'step' is 'x', not a count")
    assert_user_error(run("-m", "rnn_train", "export", "--checkpoint", str(tmp_path / "loss.pt"), "--format", "onnx",
                          "--out", str(tmp_path / "m.onnx")),
                      f"{tmp_path / 'loss.pt'} is a damaged rnn-train checkpoint: its 'best_val_loss' is 'low', not a number")


def test_seeds_outside_what_the_generators_take_and_empty_output_paths(tmp_path, finished_run):
    rnn = ["-m", "rnn_train"]
    for seed in ("-1", str(2**32)):
        assert_user_error(run(*rnn, "bptt", "--seed", seed), f"argument --seed: must be in [0, 2^32), got {seed}")
        assert_user_error(run(*rnn, "gradflow", "--checkpoint", str(finished_run / "done"), "--seed", seed),
                          "argument --seed: must be in [0, 2^32)")
    assert_user_error(run(*rnn, "sweep", "--config", "configs/debug.yaml", "--grid", "model.hidden_size=8,16",
                          "--out", ""), "argument --out: an empty path")
    assert_user_error(run(*rnn, "prepare", "--config", "configs/debug.yaml", "--cache-dir", " "),
                      "argument --cache-dir: an empty path")
    assert_user_error(run(*rnn, "bptt", "--tol", "nan"), "--tol must be a finite number >= 0, got nan")
    # a negative number in exponent form is the option's value, checked as such (argparse read it as an option)
    assert_user_error(run(*rnn, "bptt", "--tol", "-1e-3"), "--tol must be a finite number >= 0, got -0.001")
    # as train.threads: libgomp fails to start that many, or segfaults
    assert_user_error(run(*rnn, "gradflow", "--checkpoint", str(finished_run / "done"), "--threads", "100000"),
                      "--threads must be in [0, 1024] (0 = torch's default), got 100000")
    assert_user_error(run(*rnn, "bench", "--config", "configs/debug.yaml", "--corpus", "README.md", "--threads", "2000"),
                      "--threads must be in [0, 1024] (0 = torch's default), got 2000")
    assert_user_error(run(*rnn, "bptt", "--hidden", "1000000"), "--steps 10 --batch 3 --input 4 --hidden 1000000 need about")
    assert_user_error(run(*rnn, "bptt", "--input", "100000000"), "--input 100000000 --hidden 5 need about")  # was 23 GB, then killed
    # Linux overcommits: without a check this one grows until the machine swaps
    assert_user_error(run(*rnn, "gradflow", "--checkpoint", str(finished_run / "done"), "--batch", "1000000000",
                          "--steps", "10"), "--batch 1000000000 x --steps 10 needs about")
    # and these size the buffers of the samples stepped together, before any output or listening
    assert_user_error(run("predict.py", "--checkpoint", str(finished_run / "done"), "--prefix", "a",
                          "--num-samples", "100000000000"), "--num-samples 100,000,000,000 needs about")
    assert_user_error(run(*rnn, "serve", "--checkpoint", str(finished_run / "done"), "--port", "0",
                          "--max-batch", "100000000000"), "--max-batch 100,000,000,000 needs about")


def test_negative_numbers_in_every_spelling_are_values_and_options_stay_options():
    from rnn_train.cli import ArgumentParser

    ap = ArgumentParser(prog="t")
    ap.add_argument("--x", type=float)
    ap.add_argument("-k", type=int)
    for text in ("-5", "-0.5", "-.5", "-1e10", "-2.5E-3", "-inf", "-Infinity"):
        assert ap.parse_args(["--x", text]).x == float(text)
    assert ap.parse_args(["--x", "-1", "-k", "3"]).k == 3
    with pytest.raises(SystemExit):
        ap.parse_args(["--x", "-k"])  # an option is not a value


def test_an_input_that_is_a_pipe_or_a_device_is_refused_instead_of_read_forever(tmp_path, finished_run):
    """Reading a FIFO blocks until someone writes to it, /dev/zero never ends: both are refused up front."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    rnn, done = ["-m", "rnn_train"], str(finished_run / "done")
    cases = [(["train.py", "--config", str(fifo)], "config file"),
             (["train.py", "--config", "/dev/zero"], "config file /dev/zero is not a regular file"),
             (["predict.py", "--checkpoint", str(fifo), "--prefix", "a"], "checkpoint"),
             ([*rnn, "score", "--checkpoint", done, str(fifo)], "text file"),
             ([*rnn, "tune", "--config", "configs/debug.yaml", "--space", str(fifo), "--trials", "2",
               "--trial-budget", "tokens:1k", "--out", str(tmp_path / "t"), "--dry-run"], "search space file")]
    for args, needle in cases:
        out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert_user_error(out, needle)
        assert "is not a regular file (a pipe or a device)" in out.stderr
    assert not (tmp_path / "t").exists()


def test_a_checkpoint_damaged_to_hold_a_nan_weight_is_refused_by_every_command_that_loads_one(tmp_path, finished_run):
    """Training stops at a divergence and never saves such weights; export had checked a graph of NaN
    outputs as matching (max(0, nan) is 0), explore and gradflow had drawn them."""
    source = finished_run / "done" / ("best.pt" if (finished_run / "done" / "best.pt").exists() else "last.pt")
    ckpt = torch.load(source, weights_only=True)
    name = next(k for k in ckpt["model"] if "weight_hh" in k)
    ckpt["model"][name][0, 0] = float("nan")
    damaged = tmp_path / "damaged.pt"
    torch.save(ckpt, damaged)
    text = tmp_path / "t.txt"
    text.write_text("the time machine " * 10)
    rnn = ["-m", "rnn_train"]
    for args in (["predict.py", "--checkpoint", str(damaged), "--prefix", "t"],
                 [*rnn, "export", "--checkpoint", str(damaged), "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
                 [*rnn, "explore", "--checkpoint", str(damaged), str(text), "--out", str(tmp_path / "p.html")],
                 [*rnn, "gradflow", "--checkpoint", str(damaged), "--steps", "5", "--batch", "2", "--no-tensorboard"]):
        assert_user_error(run(*args), f"{damaged}: the model's weights are not all finite (a damaged checkpoint)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.pt", "t.txt"]
    # nor trained on: --init-from, and --resume of a run whose last.pt is the damaged one
    assert_user_error(run("train.py", "--config", "configs/debug.yaml", "--init-from", str(damaged),
                          f"log.dir={tmp_path}", "log.name=fine_tuned", "--cache-dir", str(tmp_path / "c")),
                      f"{damaged}: the model's weights are not all finite")
    resumed = tmp_path / "resumed"
    shutil.copytree(finished_run / "done", resumed)
    shutil.copy(damaged, resumed / "last.pt")
    before = digest(resumed)
    assert_user_error(run("train.py", "--resume", str(resumed), "train.max_steps=20"),
                      f"{resumed / 'last.pt'}: the model's weights are not all finite")
    assert digest(resumed) == before and not (tmp_path / "fine_tuned").exists()


@pytest.mark.parametrize("damage, needle", [
    (lambda c: c.pop("rng"), "the checkpoint's run state (counters, schedule, hidden state, random generators) is "
                             "damaged (KeyError: 'rng')"),
    (lambda c: c.update(plateau={"x": 1}), "the checkpoint's run state"),
    (lambda c: c.update(rng={}), "the checkpoint's run state"),
    (lambda c: c.update(log={"loss": 1.0}), "the checkpoint's run state"),
    (lambda c: c.update(optimizer="x"), "the checkpoint's optimizer state is damaged"),
    (lambda c: c.update(step=-5), "last.pt is a damaged rnn-train checkpoint: its 'step' is -5, not a count"),
    (lambda c: c.update(step=10**30), "its 'step' is 1000000000000000000000000000000, not a count"),
    (lambda c: c.update(vocab=c["vocab"][:-1] + [c["vocab"][1]]), "last.pt: vocab has duplicate entries"),
], ids=["no-rng", "plateau", "rng", "log", "optimizer", "negative-step", "huge-step", "vocab"])
def test_resuming_from_a_checkpoint_damaged_after_training_is_one_line_and_leaves_the_run(tmp_path, finished_run,
                                                                                          damage, needle, capsys):
    """In-process through the entry point's error handling (rnn_train.cli.run), as a command runs."""
    from rnn_train.cli import run as cli_run
    from rnn_train.training.cli import main as train_main

    resumed = tmp_path / "resumed"
    shutil.copytree(finished_run / "done", resumed)
    ckpt = torch.load(resumed / "last.pt", weights_only=True)
    damage(ckpt)
    torch.save(ckpt, resumed / "last.pt")
    before = digest(resumed)
    assert cli_run(train_main, ["--resume", str(resumed), "train.max_steps=20"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert digest(resumed) == before


def test_a_damaged_best_pt_is_said_before_a_resume_trains_and_nothing_is_written(tmp_path, finished_run):
    """It was found at the end, scoring the test split, after the training had rewritten last.pt and
    set metrics.json aside; and without a test split the run's last line named it as the best."""
    resumed = tmp_path / "resumed"
    shutil.copytree(finished_run / "done", resumed)
    (resumed / "best.pt").write_text("garbage\n")
    before = digest(resumed)
    assert_user_error(run("train.py", "--resume", str(resumed), "train.max_steps=20"),
                      f"{resumed / 'best.pt'} is not an rnn-train checkpoint (not a PyTorch checkpoint file at all); "
                      "it is this run's best.pt: restore it, or move it away to resume without it")
    assert digest(resumed) == before


def test_a_training_into_a_run_directory_another_is_writing_stops_with_one_line(tmp_path, finished_run):
    from rnn_train.training.rundir import claimed

    common = ["train.max_steps=2", "train.eval_every=1", "--cache-dir", str(tmp_path / "c")]
    (tmp_path / "alias").symlink_to(tmp_path)
    with claimed(tmp_path / "busy"):  # as a training running in another process holds it
        for spelled in (tmp_path, tmp_path / "sub" / "..", tmp_path / "alias"):  # the same directory, every spelling
            assert_user_error(run("train.py", "--config", "configs/debug.yaml", f"log.dir={spelled}", "log.name=busy",
                                  *common, "--force"), f"{spelled / 'busy'} is in use: another training on this machine")
    assert not (tmp_path / "busy").exists()
    before = digest(finished_run / "done")
    with claimed(finished_run / "done"):
        assert_user_error(run("train.py", "--resume", str(finished_run / "done"), "train.max_steps=20"),
                          "is in use: another training on this machine")
    assert digest(finished_run / "done") == before


def test_a_new_start_where_a_run_died_before_its_first_checkpoint_leaves_none_of_its_files(tmp_path):
    """Its event files would otherwise mix the dead run's curves into the new run's in TensorBoard."""
    dead = tmp_path / "again"
    dead.mkdir()
    (dead / "config.yaml").write_text("model: {hidden_size: 99}\n")
    (dead / "events.out.tfevents.1.dead").write_bytes(b"a dead run's events")
    (dead / "notes.txt").write_text("mine")  # not a run's file: kept
    out = run("train.py", "--config", "configs/debug.yaml", f"log.dir={tmp_path}", "log.name=again", "train.max_steps=2",
              "train.eval_every=1", "--cache-dir", str(tmp_path / "c"))
    assert out.returncode == 0, out.stderr
    assert not (dead / "events.out.tfevents.1.dead").exists() and (dead / "notes.txt").read_text() == "mine"
    assert "hidden_size: 99" not in (dead / "config.yaml").read_text() and (dead / "last.pt").exists()


def test_ctrl_c_while_the_command_still_imports_is_one_line(tmp_path):
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "train.py", "--config", "configs/debug.yaml", f"log.dir={tmp_path}",
                             "--cache-dir", str(tmp_path / "c")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(0.3)  # the interpreter is up; torch (a second or more) is still being imported
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "error: interrupted\n", err


def test_ctrl_c_during_a_commands_import_waits_for_the_import_to_end(tmp_path, monkeypatch):
    """torch's import runs C++ that calls back into Python: a KeyboardInterrupt raised inside it
    aborted the process or was lost (the test above met both, now and then). So Ctrl-C is held
    while a command's modules import, and raised once they have."""
    import signal

    from rnn_train.commands import import_holding_ctrl_c

    (tmp_path / "slow_import.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGINT)\nFINISHED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        import_holding_ctrl_c("slow_import")
    assert sys.modules["slow_import"].FINISHED and signal.getsignal(signal.SIGINT) is handler
    monkeypatch.delitem(sys.modules, "slow_import")


def test_an_existing_run_is_never_damaged_by_a_failed_start(finished_run):
    run_dir = finished_run / "done"
    before = digest(run_dir)
    common = ["--cache-dir", str(finished_run / "c")]
    # same run dir again without --resume/--force: refused
    assert_user_error(run("train.py", "--config", "configs/debug.yaml", f"log.dir={finished_run}", "log.name=done",
                          *common), "already holds a run")
    # --force with a broken corpus: the error comes before anything is deleted
    assert_user_error(run("train.py", "--config", "configs/debug.yaml", f"log.dir={finished_run}", "log.name=done",
                          "--force", "data.kind=text", "data.paths=missing.txt", *common), "missing.txt")
    # --force with a config error raised only when training starts (backend rules, device)
    assert_user_error(run("train.py", "--config", "configs/debug.yaml", f"log.dir={finished_run}", "log.name=done",
                          "--force", "model.backend=numpy", "model.cell=rnn", *common), "plain SGD")
    if not torch.cuda.is_available():
        assert_user_error(run("train.py", "--config", "configs/debug.yaml", f"log.dir={finished_run}",
                              "log.name=done", "--force", "train.device=cuda", *common), "no CUDA device")
    # resuming with a different batch layout: the saved position and state would not fit
    assert_user_error(run("train.py", "--resume", str(run_dir), "data.batch_size=3", *common),
                      "data.batch_size cannot change on --resume")
    # resuming with a typo in an override
    assert_user_error(run("train.py", "--resume", str(run_dir), "train.max_stepz=5", *common), "did you mean")
    # resuming with an architecture that does not fit the checkpoint
    assert_user_error(run("train.py", "--resume", str(run_dir), "model.hidden_size=99", *common),
                      "model.hidden_size cannot change on --resume")
    # nor the model's other keys, nor where the run lives (they were taken, or stored and ignored)
    assert_user_error(run("train.py", "--resume", str(run_dir), "model.dtype=float64", "model.dropout=0.5",
                          "log.name=elsewhere", "train.seed=5", *common),
                      "model.dropout, model.dtype, train.seed, log.name cannot change on --resume")
    assert digest(run_dir) == before


def test_ctrl_c_before_training_under_torchrun_is_said_once_by_rank_0(monkeypatch, capsys):
    """torchrun hands a Ctrl-C to every rank: one line, not one per rank."""
    from rnn_train.cli import run as run_main

    def interrupted(argv):
        raise KeyboardInterrupt
    monkeypatch.setenv("RANK", "1")  # set by something other than torchrun: said
    assert run_main(interrupted, []) == 130 and capsys.readouterr().err == "error: interrupted\n"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    for rank, said in (("1", ""), ("0", "error: interrupted\n")):
        monkeypatch.setenv("RANK", rank)
        assert run_main(interrupted, []) == 130
        assert capsys.readouterr().err == said


@pytest.mark.parametrize("args", [["--config", "{long}.yaml"], ["--config", "debug", "log.dir={long}"],
                                  ["--config", "debug", "data.kind=text", "data.paths={long}.txt"],
                                  ["--resume", "{long}"]])
def test_a_path_past_the_file_systems_name_length_is_one_line(tmp_path, args):
    """Path.exists and is_file raise ENAMETOOLONG where they return False for a missing file."""
    long = str(tmp_path / ("x" * 300))
    assert_user_error(run("train.py", *(a.replace("{long}", long) for a in args)), ": file name too long")


@pytest.mark.parametrize("command", ["train", "prepare", "tune", "sweep", "bench"])
def test_a_config_given_twice_is_an_error_not_the_last_one_silently(command):
    assert_user_error(run("-m", "rnn_train", command, "--config", "debug", "--config", "pinyin_gru"),
                      "--config is given twice ('debug' and 'pinyin_gru'): give it once")
