"""RunDir: the files of a run directory, clearing for --force, the status a sweep reads, config
comparison; and strict JSON (null, never NaN) in every JSON file a run writes."""
import json
import math
from pathlib import Path

import pytest

from rnn_train.config import build_config
from rnn_train.errors import UserError
from rnn_train.files import atomic_write_json, strict_json
from rnn_train.runfiles import EXPLORE_MARK
from rnn_train.training.rundir import RunDir, comparable, config_changes, normalised
from rnn_train.training.trainer import train
from tests.helpers import tiny_config


def strict_loads(text):
    """json.loads that refuses NaN / Infinity (what jq and JavaScript refuse)."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def cfg_of(**train):
    return build_config({"train": {"max_steps": 10, **train}})


def fill(path, names):
    path.mkdir(parents=True, exist_ok=True)
    for name in names:
        (path / name).write_text("x")


def test_clear_removes_the_run_files_and_nothing_else(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.clear()  # no directory yet: nothing to do
    fill(rd.path, ["best.pt", "last.pt", "metrics.json", "config.yaml", "events.out.tfevents.1.host",
                   "sweep_run.json", "notes.txt"])
    fill(rd.path / "val", ["events.out.tfevents.2.host"])
    fill(rd.path / "mine", ["events.out.tfevents.4.host"])  # not a run file: kept
    assert rd.existing() == ["best.pt", "last.pt", "metrics.json", "config.yaml"] and rd.holds_run()
    rd.clear()
    assert sorted(p.name for p in rd.path.iterdir()) == ["mine", "notes.txt", "sweep_run.json"]
    assert rd.existing() == [] and not rd.holds_run()


def explore_page(path):
    path.write_bytes(b"<!doctype html>\n<html>\n<head>\n<title>a run</title>\n" + EXPLORE_MARK + b"\n</head></html>")


def test_replacing_a_run_removes_the_page_and_curves_made_from_its_weights_and_nothing_else(tmp_path):
    """explore's page and gradflow's curves of weights that are gone would describe another model
    (a page scored 5.00 bits/char where the new run scored 5.80): they go with the checkpoints. A
    page of that name that explore did not write stays, as does a directory that holds no run."""
    rd = RunDir(tmp_path / "run")
    fill(rd.path, ["best.pt", "last.pt"])
    explore_page(rd.path / "explore.html")
    fill(rd.path / "gradflow" / "best_T100", ["events.out.tfevents.3.host"])
    fill(rd.path / "gradflow" / "mine", ["notes.txt"])
    rd.clear()
    assert sorted(p.relative_to(rd.path).as_posix() for p in rd.path.rglob("*")) == [
        "gradflow", "gradflow/mine", "gradflow/mine/notes.txt"]  # emptied directories go too

    written_by_hand = RunDir(tmp_path / "hand")
    fill(written_by_hand.path, ["best.pt", "explore.html"])
    written_by_hand.clear()
    assert [p.name for p in written_by_hand.path.iterdir()] == ["explore.html"]

    no_run = RunDir(tmp_path / "no_run")  # a run that died before its first checkpoint: not its page
    no_run.path.mkdir()
    explore_page(no_run.path / "explore.html")
    fill(no_run.path / "gradflow" / "other", ["events.out.tfevents.5.host"])
    no_run.clear()
    assert sorted(p.name for p in no_run.path.rglob("*")) == ["events.out.tfevents.5.host", "explore.html",
                                                               "gradflow", "other"]


def test_clearing_never_goes_through_a_link_to_a_directory(tmp_path):
    """A split's or gradflow's directory that is a link to another disk: nothing behind it is
    removed (nor the link), and the rest of the run is cleared."""
    outside = tmp_path / "outside"
    fill(outside / "val", ["events.out.tfevents.1.host"])
    fill(outside / "gradflow" / "best_T100", ["events.out.tfevents.2.host"])
    rd = RunDir(tmp_path / "run")
    fill(rd.path, ["best.pt", "last.pt", "config.yaml"])
    (rd.path / "val").symlink_to(outside / "val")
    (rd.path / "gradflow").symlink_to(outside / "gradflow")
    rd.clear()
    assert sorted(p.name for p in rd.path.iterdir()) == ["gradflow", "val"]
    assert (outside / "val" / "events.out.tfevents.1.host").exists()
    assert (outside / "gradflow" / "best_T100" / "events.out.tfevents.2.host").exists()


def test_a_file_that_cannot_be_removed_is_named_and_the_checkpoints_are_kept(tmp_path, monkeypatch):
    rd = RunDir(tmp_path / "run")
    fill(rd.path, ["best.pt", "last.pt", "config.yaml", "metrics.json"])
    explore_page(rd.path / "explore.html")
    unlink, refused = Path.unlink, []

    def refuse(self, missing_ok=False):
        if self.name in refused:
            raise PermissionError(1, "Operation not permitted")
        unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse)
    refused.append("explore.html")
    with pytest.raises(UserError, match=r"cannot write .*run/explore.html \(Operation not permitted\)"):
        rd.clear()
    assert rd.existing() == ["best.pt", "last.pt", "metrics.json", "config.yaml"]  # the page goes first
    refused[:] = ["metrics.json"]
    with pytest.raises(UserError, match="metrics.json"):
        rd.clear()
    assert rd.existing() == ["best.pt", "last.pt", "metrics.json", "config.yaml"]  # the checkpoints go last
    assert not (rd.path / "explore.html").exists()


def test_a_config_or_metrics_alone_is_not_a_run_to_protect(tmp_path):
    rd = RunDir(tmp_path)
    fill(tmp_path, ["config.yaml", "metrics.json"])
    assert not rd.holds_run()
    fill(tmp_path, ["best.pt"])
    assert rd.holds_run()


def test_create_writes_the_resolved_config_or_fails_in_one_line(tmp_path):
    cfg = cfg_of(lr=0.5)
    rd = RunDir(tmp_path / "a" / "b")
    rd.create(cfg)
    assert rd.stored_config() == cfg.to_dict()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write the run directory"):
        RunDir(blocker / "run").create(cfg)


def test_a_resumed_run_removes_the_temp_file_a_killed_checkpoint_write_left(tmp_path):
    """SIGKILL during torch.save leaves `.last.pt.XXXX.tmp` (megabytes) beside the intact last.pt:
    the next run in the directory, resumed or new, removes such files, and nothing else."""
    from rnn_train.model.checkpoint import load_checkpoint

    train(tiny_config(tmp_path, "train.max_steps=10"), tmp_path / "r", quiet=True, cache_dir=tmp_path / "c")
    left = [tmp_path / "r" / name for name in (".last.pt.k1ll3d.tmp", ".best.pt.x_9.tmp", ".metrics.json.a.tmp")]
    others = [tmp_path / "r" / name for name in ("notes.tmp", ".mine.pt.a.tmp")]
    for f in left + others:
        f.write_bytes(b"partial")
    train(tiny_config(tmp_path, "train.max_steps=20"), tmp_path / "r", quiet=True, cache_dir=tmp_path / "c",
          resume=load_checkpoint(tmp_path / "r" / "last.pt"))
    assert not any(f.exists() for f in left) and all(f.exists() for f in others)


def test_status_follows_what_the_directory_holds(tmp_path):
    cfg = cfg_of()
    rd = RunDir(tmp_path / "r")
    assert rd.status(cfg) == "new"
    rd.create(cfg)
    assert rd.status(cfg) == "new"  # a config alone: nothing to resume
    fill(rd.path, ["last.pt"])
    assert rd.status(cfg) == "resume"
    rd.write_metrics({"step": 10, "interrupted": False, "val_loss": math.nan})
    assert rd.status(cfg) == "done"
    # threads, device and the log section do not change what a run computes
    same = build_config(cfg.to_dict(), ["train.threads=2", "train.device=cpu", "log.name=other", "log.log_every=7"])
    assert rd.status(same) == "done"
    other = build_config(cfg.to_dict(), ["train.max_steps=20", "model.cell=rnn"])
    assert rd.status(other) == "mismatch"
    assert rd.config_diff(other) == "model.cell: 'gru' -> 'rnn', train.max_steps: 10 -> 20"


def test_config_changes_compare_normalised_dicts_and_can_be_limited():
    new = build_config({"model": {"hidden_size": 16}, "data": {"batch_size": 8}, "train": {"max_steps": 5}})
    old = new.to_dict()
    del old["model"]["kernel"]  # a key an older version did not write: its default
    assert config_changes(normalised(old, "old"), new.to_dict()) == []
    newer = build_config(new.to_dict(), ["model.hidden_size=32", "data.batch_size=4", "train.lr=0.5"]).to_dict()
    assert config_changes(new.to_dict(), newer) == ["data.batch_size: 8 -> 4", "model.hidden_size: 16 -> 32",
                                                    "train.lr: 0.002 -> 0.5"]
    assert config_changes(new.to_dict(), newer, keys=("data",)) == ["data.batch_size: 8 -> 4"]
    assert config_changes(new.to_dict(), newer, keys=("model.cell", "model.hidden_size")) == [
        "model.hidden_size: 16 -> 32"]
    assert "log" not in comparable(newer) and "threads" not in comparable(newer)["train"]


# ---- strict JSON -------------------------------------------------------------------------------------


def test_strict_json_writes_null_for_non_finite_numbers(tmp_path):
    value = {"a": math.nan, "b": [1.5, math.inf, {"c": -math.inf}], "d": (2, "x"), "e": None, "f": True}
    assert strict_loads(strict_json(value)) == {"a": None, "b": [1.5, None, {"c": None}], "d": [2, "x"],
                                                "e": None, "f": True}
    atomic_write_json(tmp_path / "x.json", value)
    assert strict_loads((tmp_path / "x.json").read_text())["a"] is None
    rd = RunDir(tmp_path)
    rd.write_metrics({"val_loss": math.nan, "step": 3})
    assert math.isnan(rd.read_metrics()["val_loss"]) and rd.read_metrics()["step"] == 3  # null reads back as NaN
    rd.write_metrics({"val_loss": 800.0, "val_ppl": math.inf, "test_loss": math.nan, "test_ppl": math.nan})
    back = rd.read_metrics()  # a diverged run: its loss is a number whose exp overflowed
    assert back["val_ppl"] == math.inf and math.isnan(back["test_ppl"]) and back["val_loss"] == 800.0


def test_metrics_json_of_a_run_without_validation_split_is_strict_json(tmp_path):
    cfg = tiny_config(tmp_path, "data.val_fraction=0", "train.max_steps=5", "train.eval_every=5")
    r = train(cfg, tmp_path / "run", quiet=True, cache_dir=tmp_path / "c")
    assert r.stopped_by == "max_steps" and math.isnan(r.val_loss)  # no split is not a divergence
    metrics = strict_loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["val_loss"] is None and metrics["val_ppl"] is None and metrics["test_loss"] is None
    assert metrics["best_val_loss"] is None and metrics["step"] == 5
    assert RunDir(tmp_path / "run").existing() == ["best.pt", "last.pt", "metrics.json", "config.yaml"]
