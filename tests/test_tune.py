"""Specification of `rnn-train tune` and the study engine it shares with the sweep: the search space
and its checks, the budget's steps, pruning through the trainer, the study's outputs, and what
happens to a trial that does not finish. Studies here are a few trials of about a second each, in
this process; tests/test_tune_workers.py runs them in several processes, killed at random moments,
against SQLite and PostgreSQL."""
import csv
import importlib.util
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from rnn_train.cli import run
from rnn_train.config import load_config
from rnn_train.errors import UserError
from rnn_train.experiments.study import engine, liveness, session
from rnn_train.experiments.study.budget import Budget, budget_step, parse_budget, spread_evals
from rnn_train.experiments.study.storage import absolute, default_url, open_storage, study_name, with_driver
from rnn_train.experiments.study.trials import Datasets, Reporter, TrialRunner
from rnn_train.experiments.tune import cli as tune_cli
from rnn_train.experiments.tune.plan import plan_tune
from rnn_train.experiments.tune.space import default_specs, parse_space, read_space_file, to_yaml
from rnn_train.training.rundir import RunDir
from tests.conftest import ROOT
from tests.helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEBUG = str(ROOT / "configs" / "debug.yaml")
SPACE = """\
# a small space over the built-in pinyin corpus: trials of about a second
model.hidden_size: {int: [8, 16], step: 8}
train.lr: {float: [3.0e-3, 3.0e-2], log: true}
model:
  cell: [rnn, gru]
"""
# 30 updates of 4 x 10 tokens per trial, validated at updates 8, 16, 24 and 30
FIXED = ["data.batch_size=4", "data.num_steps=10", "data.val_fraction=0.002", "train.threads=1",
         "model.kernel=native", "log.sample_length=0", "log.log_every=5"]  # validation: 1,174 characters
BUDGET = "tokens:1200"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def space_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "space.yaml"
    path.write_text(SPACE)
    return path


def tune_argv(out, cache, space_file, *extra, trials=3):
    return ["--config", DEBUG, "--space", str(space_file), "--trials", str(trials), "--trial-budget", BUDGET,
            "--evals", "4", "--out", str(out), "--cache-dir", str(cache), "--seed", "0", *FIXED, *extra]


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, cache, space_file):
    """One finished study of three trials, through the command's entry point in this process."""
    out = tmp_path_factory.mktemp("tune") / "out"
    assert run(tune_cli.main, tune_argv(out, cache, space_file)) == 0
    return out


def test_a_sweep_into_a_tunes_out_is_refused_and_the_tunes_files_are_kept(study_dir, cache, capsys):
    """tune and sweep both write results.csv and study.db: one --out holds one command's work."""
    from rnn_train.experiments import sweep

    before = {p.name: p.read_bytes() for p in study_dir.iterdir() if p.is_file()}
    argv = ["--config", DEBUG, "--grid", "model.dropout=0.0,0.1", "--budget", "tokens:240", "--out", str(study_dir),
            "--cache-dir", str(cache), *FIXED]
    for extra in ([], ["--dry-run"]):
        assert run(sweep.main, argv + extra) == 2
        err = capsys.readouterr().err
        assert err == f"error: {study_dir} holds the runs and results of a tune ({study_dir / 'study.json'}); " \
                      f"use another --out for this sweep\n"
    assert {p.name: p.read_bytes() for p in study_dir.iterdir() if p.is_file()} == before


def load(out):
    """The study of a --out, as a user would open it (the name is in study.json)."""
    marker = json.loads((out / "study.json").read_text())
    return optuna.load_study(study_name=marker["study"], storage=default_url(out))


# ---------------------------------------------------------------------------------------------
# the search space


def test_space_file_forms_and_types(space_file):
    space = parse_space(read_space_file(space_file), "space", [])
    assert list(space) == ["model.hidden_size", "train.lr", "model.cell"]  # nested sections read as dotted keys
    h, lr, cell = space.values()
    assert (h.low, h.high, h.step, h.log) == (8, 16, 8, False)
    assert (lr.low, lr.high, lr.log) == (3e-3, 3e-2, True)  # `3.0e-3` read as a number
    assert cell.choices == ("rnn", "gru")
    # a string that YAML 1.1 does not read as a number is converted like an override
    assert parse_space({"train.lr": {"float": ["1e-4", "1e-2"]}}, "s", [])["train.lr"].low == 1e-4
    assert to_yaml(space) == ("model.hidden_size: {int: [8, 16], step: 8}\n"
                              "train.lr: {float: [0.003, 0.03], log: true}\nmodel.cell: [rnn, gru]\n")
    assert parse_space(yaml.safe_load(to_yaml(space)), "s", []) == space  # what --dry-run prints reads back


@pytest.mark.parametrize("spec, message", [
    ({"model.hidden_sise": {"int": [8, 16]}}, "unknown key model.hidden_sise (did you mean model.hidden_size?)"),
    ({"model.cell": ["rnn", "grux"]}, "model.cell must be one of rnn | gru | lstm, got 'grux'"),
    ({"model.num_layers": {"int": [3, 1]}}, "model.num_layers: the range [3, 1] is reversed: write [1, 3]"),
    ({"model.num_layers": {"int": [2, 2]}}, "model.num_layers: the range [2, 2] needs low < high"),
    ({"model.hidden_size": {"float": [8, 16]}}, "model.hidden_size takes whole numbers: give {int: [low, high]}"),
    ({"model.cell": {"int": [1, 2]}}, "model.cell is not a number: give its values as a list"),
    ({"train.lr": {"float": [0, 1], "log": True}}, "train.lr: a log range needs low > 0"),
    ({"train.lr": {"float": [1e-3, 1e-2], "stp": 2}}, "(unknown stp)"),
    ({"train.max_tokens": [100, 200]}, "train.max_tokens is set by --trial-budget"),
    ({"log.log_every": [1, 2]}, "log.log_every is the run's logging"),
    ({"data.paths": [["a"], ["b"]]}, "data.paths is a list-valued key"),
    ({"train.lr": 0.01}, "train.lr: 0.01 is one value, an override"),
    ({"model.cell": ["rnn", "rnn"]}, "model.cell: lists rnn more than once"),
    ({"data.batch_size": [4, 8]}, "data.batch_size is both in the search space and an override"),
])
def test_space_problems_are_named(spec, message):
    with pytest.raises(UserError) as e:
        parse_space(spec, "--space s.yaml", ["data.batch_size=4"])
    assert str(e.value).startswith("--space s.yaml: ") and message in str(e.value)


def test_every_problem_of_a_space_is_reported_at_once():
    with pytest.raises(UserError) as e:
        parse_space({"model.hidden_sise": [8], "model.cell": ["grux"], "train.lr": 0.1}, "--space s.yaml", [])
    assert str(e.value).count("; ") == 2


def test_a_packaged_space_is_taken_by_name_from_any_directory(tmp_path, monkeypatch):
    """configs/spaces/ ships with the recipes: an installed user has no configs/ directory to name,
    and the README's `--space configs/spaces/X.yaml` run elsewhere says which name to give."""
    from rnn_train.recipes import resolve_space

    monkeypatch.chdir(tmp_path)
    packaged = ROOT / "configs" / "spaces" / "shakespeare_10min.yaml"
    by_name = plan_tune(DEBUG, [], "shakespeare_10min", parse_budget("tokens:1k"), 4, tmp_path / "out")
    by_path = plan_tune(DEBUG, [], str(packaged), parse_budget("tokens:1k"), 4, tmp_path / "out")
    assert by_name.identity() == by_path.identity()  # the same space: the same study
    with pytest.raises(UserError) as e:
        resolve_space("configs/spaces/shakespeare_10min.yaml")
    assert str(e.value) == ("search space file configs/spaces/shakespeare_10min.yaml does not exist (the packaged "
                            "space of that name is --space shakespeare_10min)")
    (tmp_path / "shakespeare_10min.yaml").write_text("train.lr: [0.01, 0.02]\n")  # a file of one's own wins
    assert resolve_space("shakespeare_10min.yaml") == Path("shakespeare_10min.yaml")
    assert resolve_space("mine.yaml") == Path("mine.yaml")  # missing and no packaged one: the reader says so


def test_a_space_key_given_twice_is_named_with_its_line(tmp_path):
    space = tmp_path / "s.yaml"
    space.write_text("train.lr: [0.01, 0.02]\nmodel.cell: [rnn, gru]\ntrain.lr: [0.1, 0.2]\n")
    with pytest.raises(UserError, match=r"s\.yaml: invalid YAML at line 3, column 1: the key 'train.lr' is given twice"):
        plan_tune(DEBUG, [], str(space), parse_budget("tokens:1k"), 4, tmp_path / "out")
    space.write_text("train.lr: {float: [1.0e-3, 1.0e-2]}\ntrain: {lr: [0.1], momentum: [0.0, 0.9]}\n")
    with pytest.raises(UserError, match=r"s\.yaml: train\.lr is given twice \(once dotted, once inside its section\)"):
        plan_tune(DEBUG, [], str(space), parse_budget("tokens:1k"), 4, tmp_path / "out")


def test_values_are_checked_in_a_config_at_each_end_of_every_range(tmp_path):
    """dropout 1.5 is a valid float but not a valid dropout: caught before any trial, with the value."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("model.dropout: {float: [0.0, 1.5]}\ntrain.lr: [0.01, 0.02]\n")
    with pytest.raises(UserError) as e:
        plan_tune(DEBUG, [], str(bad), parse_budget("tokens:1k"), 4, tmp_path / "out")
    assert str(e.value) == (f"--space {bad}: with model.dropout=1.5: model.dropout must be in [0, 1), got 1.5")
    # the recipe's min_lr above the lowest lr: the two keys clash only at that end of the range
    with pytest.raises(UserError, match=r"with train.lr=0.001: override 'train.min_lr=0.005': "
                                         r"train.min_lr must be <= train.lr \(0.001\), got 0.005"):
        bad.write_text("train.lr: {float: [1.0e-3, 1.0e-2]}\n")
        plan_tune(DEBUG, ["train.min_lr=0.005"], str(bad), parse_budget("tokens:1k"), 4, tmp_path / "out")


def test_bad_space_fails_at_once_with_nothing_written(tmp_path, space_file):
    """The real entry point: one `error: ...` line, exit status 2, no output directory, no corpus cache."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(space_file.read_text() + "model.hidden_sise: {int: [8, 16]}\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "rnn_train", "tune", "--config", DEBUG, "--space", str(bad),
                           "--trials", "2", "--trial-budget", "tokens:1k", "--out", str(out),
                           "--cache-dir", str(tmp_path / "cache")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "unknown key model.hidden_sise (did you mean model.hidden_size?)" in proc.stderr
    assert not out.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("argv, message", [
    (["--trial-budget", "steps:10"], "--trial-budget 'steps:10' must be tokens:N or time:SECONDS"),
    (["--trial-budget", "tokens:1e400"], "--trial-budget 'tokens:1e400': the amount is too large"),
    (["--trials", "0"], "--trials must be >= 1"),
    (["--evals", "0"], "--evals must be >= 1"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--workers", "999"], "--workers 999 is more than the "),  # each trains with a thread at least
    (["train.max_steps=10"], "override train.max_steps: the tuner sets it itself"),
    (["data.val_fraction=0"], "data.val_fraction is 0: a study compares validation losses"),
    (["--storage", "nosuchdb://x"], "cannot open the study storage nosuchdb://x"),
    (["--storage", f"sqlite:///{DEBUG}/study.db"], f"the directory {DEBUG} is a file, not a directory"),
    (["--storage", "sqlite:////nonexistent/study.db"], "the directory /nonexistent does not exist"),
])
def test_bad_command_lines_are_one_error_line(tmp_path, cache, space_file, capsys, argv, message):
    base = tune_argv(tmp_path / "out", cache, space_file)
    for i, arg in enumerate(base):  # an option given again replaces the default
        if arg in argv[:1] and arg.startswith("--"):
            base[i + 1] = argv[1]
            argv = []
    assert run(tune_cli.main, base + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_default_space_follows_the_recipes_cell_and_sizes():
    gru = load_config(str(ROOT / "configs" / "shakespeare_best.yaml"))  # GRU 384 x 2, learned embedding
    specs = default_specs(gru, parse_budget("tokens:2M"))
    assert specs["model.hidden_size"] == {"int": [192, 768], "step": 24}
    assert specs["model.num_layers"] == {"int": [1, 3]}
    assert specs["train.lr"] == {"float": [0.0003, 0.03], "log": True}
    assert specs["data.batch_size"] == [32, 64, 128] and specs["model.embed_dim"] == [32, 64, 128]
    assert specs["train.schedule"] == ["constant", "cosine"] and "train.clip_norm" not in specs
    rnn = load_config(DEBUG, ["model.cell=rnn"])  # one-hot input: no embedding size to search
    timed = default_specs(rnn, parse_budget("time:60"))
    assert "train.clip_norm" in timed and "model.embed_dim" not in timed
    assert timed["train.schedule"] == ["constant", "plateau"]  # cosine needs a length a time budget lacks


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_default_space_is_valid_for_every_recipe(tmp_path, recipe):
    plan = plan_tune(str(ROOT / "configs" / recipe), [], None, parse_budget("tokens:1M"), 8, tmp_path)
    assert plan.space_source == "the default space" and len(plan.space) >= 6
    assert plan.recipe_values() is not None  # the recipe lies in its default space: trial 0 trains it


# ---------------------------------------------------------------------------------------------
# budget steps and validations


def test_validations_spread_over_the_budget_land_on_budget_steps():
    b = Budget("tokens", 12_000)
    for batch, steps in ((4, 10), (8, 5), (3, 7), (16, 30)):
        cfg = spread_evals(load_config(DEBUG, [f"data.batch_size={batch}", f"data.num_steps={steps}"]), b, 4)
        per = batch * steps
        updates = math.ceil(b.amount / per)
        at = [u for u in range(1, updates + 1) if u % cfg.train.eval_every == 0 or u == updates]
        reported = [budget_step(b, 4, u * per, 0.0) for u in at]
        assert reported[-1] == 4, (batch, steps)  # the end of the budget is the last step
        assert reported == sorted(set(reported)), (batch, steps)  # one validation per step
    t = Budget("time", 60.0)
    assert [budget_step(t, 8, 0, s) for s in (7.4, 7.5, 30.0, 59.9, 61.0)] == [0, 1, 4, 7, 8]


def test_a_pruned_run_ends_like_any_other_run(tmp_path, cache):
    """The trainer's on_validation hook stops the run with its reason: last.pt, metrics.json, status done."""
    from rnn_train.training.trainer import train

    cfg = tiny_config(tmp_path, "train.eval_every=10", "log.sample_length=0", "model.kernel=native",
                      "data.val_fraction=0.002")
    seen = []

    def hook(v):
        seen.append((v.step, v.tokens))
        return "pruned" if v.step == 20 else ""

    result = train(cfg, tmp_path / "run", quiet=True, cache_dir=cache, on_validation=hook)
    assert (result.stopped_by, result.step, result.interrupted) == ("pruned", 20, False)
    assert seen == [(10, 480), (20, 960)]
    rd = RunDir(tmp_path / "run")
    assert rd.read_metrics()["stopped_by"] == "pruned" and rd.status(cfg) == "done"
    from rnn_train.model.checkpoint import load_checkpoint

    assert load_checkpoint(rd.last)["step"] == 20 and rd.best.exists()


def test_reporter_reports_each_budget_step_once_and_asks_the_pruner():
    class FakeTrial:
        def __init__(self):
            self.reports = []

        def report(self, value, step):
            self.reports.append((step, value))

        def should_prune(self):
            return self.reports[-1][1] > 2.0

    class V:
        def __init__(self, tokens, loss):
            self.tokens, self.train_seconds, self.loss = tokens, 0.0, loss

    trial = FakeTrial()
    r = Reporter(trial, Budget("tokens", 1000), 4, reported={1})  # step 1 inherited from the trial it continues
    assert r(V(260, 1.5)) == ""  # step 1: reported before
    assert r(V(510, 1.4)) == "" and r(V(520, 1.3)) == ""  # step 2, then step 2 again
    assert r(V(760, 2.5)) == "pruned" and r.pruned_at == 3
    assert r(V(1000, 2.6)) == ""  # the end: reported, never pruned
    assert trial.reports == [(2, 1.4), (3, 2.5), (4, 2.6)]


# ---------------------------------------------------------------------------------------------
# a whole study


def test_study_writes_results_best_recipe_and_plots(study_dir):
    with open(study_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial"] for r in rows] == ["0", "1", "2"] and {r["state"] for r in rows} == {"COMPLETE"}
    assert list(rows[0])[:5] == ["trial", "state", "model.hidden_size", "train.lr", "model.cell"]
    for r in rows:
        assert int(r["tokens"]) == 1200 and r["stopped_by"] == "max_tokens" and r["run_dir"] == f"trial-000{r['trial']}"
        assert float(r["value"]) == float(r["best_val_loss"]) <= float(r["final_val_loss"]) + 1e-12
        assert float(r["wall_s"]) >= float(r["train_s"]) > 0
        assert r["model.cell"] in ("rnn", "gru") and r["model.hidden_size"] in ("8", "16")
        run_dir = RunDir(study_dir / r["run_dir"])
        assert run_dir.best.exists() and run_dir.last.exists()
        assert run_dir.read_metrics()["best_val_loss"] == pytest.approx(float(r["best_val_loss"]))
    for name in ("history.png", "importances.png", "curves.png"):
        data = (study_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    marker = json.loads((study_dir / "study.json").read_text())
    assert marker["study"].startswith("tune-debug-") and marker["dashboard"].startswith("optuna-dashboard sqlite:///")


def test_best_yaml_is_a_recipe_that_trains_the_best_trial(study_dir, tmp_path, cache):
    study = load(study_dir)
    best = study.best_trial
    text = (study_dir / "best.yaml").read_text()
    assert text.startswith(f"# The best of 3 finished trials of the study {study.study_name}") and \
        f"trial {best.number}" in text
    seconds = best.user_attrs["result"]["train_seconds"]  # a trial of a second or less is not "0 s" of training
    assert f"training tokens ({seconds:.1f} s of training)" in text and seconds < 5
    # the command as this program was called (rnn-train where installed): there is no train.py there
    from rnn_train.cli import program
    assert f"# Train it: {program()} train --config " in text and "train.py" not in text
    cfg = load_config(str(study_dir / "best.yaml"))
    trial_cfg = load_config(str(study_dir / f"trial-000{best.number}" / "config.yaml"))
    assert cfg.replace(log=trial_cfg.log) == trial_cfg  # the same run; only where it logs differs
    assert (cfg.log.dir, cfg.log.name) == ("runs", "best")
    from rnn_train.training.cli import main as train_main

    argv = ["--config", str(study_dir / "best.yaml"), "--quiet", f"log.dir={tmp_path}", "--cache-dir", str(cache)]
    assert run(lambda a: train_main(a, prog="train.py"), argv) == 0
    assert RunDir(tmp_path / "best").read_metrics()["best_val_loss"] == pytest.approx(best.value, rel=1e-6)


def test_best_yaml_stays_yaml_whatever_the_out_and_study_are_named(study_dir, tmp_path):
    from rnn_train.experiments.tune import report

    best = load(study_dir).best_trial
    out = tmp_path / "o\nx $y"
    out.mkdir()
    report.write_best(out, best, "a\nb", 3)
    text = (out / "best.yaml").read_text()
    assert all(line.startswith("# ") for line in text.splitlines()[:4])
    assert load_config(str(out / "best.yaml")).model == load_config(str(study_dir / "best.yaml")).model


def test_the_first_trial_is_the_recipe_itself_when_the_space_holds_it(tmp_path, cache):
    """debug.yaml's lr 0.01 and cell gru lie in this space: trial 0 trains them, the point to beat."""
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {float: [3.0e-3, 3.0e-2], log: true}\nmodel.cell: [rnn, gru]\n")
    assert run(tune_cli.main, tune_argv(tmp_path / "out", cache, space, trials=1)) == 0
    (trial,) = load(tmp_path / "out").trials
    assert trial.params == {"train.lr": 0.01, "model.cell": "gru"} and trial.state == TrialState.COMPLETE
    assert "the recipe's own values" in (tmp_path / "out" / "results.csv").read_text()


def test_a_trial_too_large_for_memory_fails_for_good_and_the_sampler_draws_others(tmp_path, cache, capsys):
    """A size this machine cannot allocate is a fact about the parameters, like two keys that clash:
    the trial fails once and is not queued again (a rerun would only fail it again, for ever), and
    the sampler draws other sizes until the study has its trials."""
    space = tmp_path / "space.yaml"
    space.write_text("model.hidden_size: [8, 100000000]\n")
    argv = tune_argv(tmp_path / "out", cache, space, trials=3)
    assert run(tune_cli.main, argv) == 0
    trials = load(tmp_path / "out").trials
    too_large = [t for t in trials if t.params["model.hidden_size"] == 100000000]
    assert too_large and {t.state for t in too_large} == {TrialState.FAIL}
    assert all("not enough memory for the model" in t.user_attrs["failure"] for t in too_large)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    assert not [t for t in trials if t.state == TrialState.WAITING]  # none queued again
    out, err = capsys.readouterr()
    assert f"3 of 3 trials finished; {len(too_large)} drew parameters that cannot train" in out
    assert out.count(": cannot train (not enough memory for the model (model.hidden_size=100000000") == len(too_large)
    assert "Warning" not in err  # Optuna's remarks on the plots go to the log
    assert run(tune_cli.main, argv) == 0
    assert ": training " not in capsys.readouterr().out and len(load(tmp_path / "out").trials) == len(trials)


def test_rerunning_a_finished_study_trains_nothing(study_dir, cache, space_file, capsys):
    stamps = {p: p.stat().st_mtime_ns for p in study_dir.glob("trial-*/metrics.json")}
    assert run(tune_cli.main, tune_argv(study_dir, cache, space_file)) == 0
    out = capsys.readouterr().out
    assert ": training " not in out and "3 of 3 trials finished;" in out
    assert {p: p.stat().st_mtime_ns for p in study_dir.glob("trial-*/metrics.json")} == stamps
    assert len(load(study_dir).trials) == 3
    assert run(tune_cli.main, tune_argv(study_dir, cache, space_file, trials=2)) == 0  # fewer asked for than it has
    assert "3 trials finished (2 asked for; the study had more from an earlier command)" in capsys.readouterr().out
    assert len(load(study_dir).trials) == 3


def test_study_name_comes_from_what_is_trained_never_from_where(tmp_path, cache, space_file, capsys):
    """Another --out, other threads: the same study (machines share it); another budget: another one,
    which an --out holding the first refuses (its run directories are named by trial number)."""
    def name_of(argv):
        assert run(tune_cli.main, argv + ["--dry-run"]) == 0
        return capsys.readouterr().out.split()[1]

    first = name_of(tune_argv(tmp_path / "a", cache, space_file))
    assert name_of(tune_argv(tmp_path / "b", cache, space_file, "train.threads=2")) == first
    other = name_of(tune_argv(tmp_path / "a", cache, space_file)[:-len(FIXED)] + FIXED[1:] + ["data.batch_size=8"])
    assert other != first and name_of(tune_argv(tmp_path / "a", cache, space_file, "--study", "mine")) == "mine"
    assert not (tmp_path / "a").exists()  # --dry-run writes nothing
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "study.json").write_text(json.dumps({"study": first}))
    argv = tune_argv(tmp_path / "a", cache, space_file)
    argv[argv.index(BUDGET)] = "tokens:2400"
    assert run(tune_cli.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'a'} holds the trials of the study {first}") and "--study" in err


def test_a_study_named_by_a_command_that_plans_other_trials_is_refused_with_nothing_written(
        study_dir, tmp_path, cache, space_file, capsys):
    """--study may join a study from another --out or machine, but only with the plan its trials came
    from: another space or budget would mix two searches under one best (and Optuna fails mid-trial
    on a parameter of another kind). The error names the parts that differ."""
    name = json.loads((study_dir / "study.json").read_text())["study"]
    other_space = tmp_path / "other.yaml"
    other_space.write_text(SPACE.replace("{int: [8, 16], step: 8}", "[8, 16]"))
    before = {p.name: p.read_bytes() for p in study_dir.iterdir() if p.is_file()}
    trials = [(t.number, t.state, t.params) for t in load(study_dir).trials]
    joined = ["--study", name, "--storage", default_url(study_dir)]
    for out, argv, differ in [
            (study_dir, tune_argv(study_dir, cache, other_space) + ["--study", name], "search space"),
            (tmp_path / "b", tune_argv(tmp_path / "b", cache, space_file) + joined, None),
            (tmp_path / "b", tune_argv(tmp_path / "b", cache, other_space) + joined, "search space"),
            (tmp_path / "b", [a if a != BUDGET else "tokens:2400" for a in tune_argv(tmp_path / "b", cache, other_space)]
             + joined, "search space, trial budget")]:
        if differ is None:  # the same plan from another --out: it joins the study (all 3 trials are done)
            assert run(tune_cli.main, argv) == 0
            assert "3 of 3 trials finished" in capsys.readouterr().out
            continue
        assert run(tune_cli.main, argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: the study {name} in ") and f"was planned with another {differ} than this " \
            "command's" in err and len(err.splitlines()) == 1, err
        assert [(t.number, t.state, t.params) for t in load(study_dir).trials] == trials
        assert {p.name: p.read_bytes() for p in study_dir.iterdir() if p.is_file()} == before
    assert not any(p.name.startswith("trial-") for p in (tmp_path / "b").iterdir())
    # a study made before studies kept their plan: nothing to compare, and the first command to open
    # it is not taken for the one that made it (it would then lock that one out)
    optuna.create_study(storage=default_url(tmp_path), study_name="older")
    assert run(tune_cli.main, tune_argv(tmp_path / "d", cache, space_file, trials=1) +
               ["--study", "older", "--storage", default_url(tmp_path)]) == 0
    capsys.readouterr()
    assert session.MADE_FROM not in optuna.load_study(study_name="older", storage=default_url(tmp_path)).user_attrs
    with pytest.raises(SystemExit) as usage:  # as argparse says it: one usage line and the error
        run(tune_cli.main, tune_argv(tmp_path / "c", cache, space_file) + ["--study", " "])
    assert usage.value.code == 2 and "--study: an empty name" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_dry_run_prints_the_default_space(tmp_path, capsys):
    argv = ["--config", str(ROOT / "configs" / "shakespeare_best.yaml"), "--trials", "20", "--trial-budget",
            "tokens:2M", "--out", str(tmp_path / "out"), "--dry-run"]
    assert run(tune_cli.main, argv) == 0
    out = capsys.readouterr().out
    assert "# search space (the default space)" in out and "model.hidden_size: {int: [192, 768], step: 24}" in out
    assert not (tmp_path / "out").exists()


def test_a_relative_sqlite_storage_is_named_by_its_absolute_path(tmp_path, capsys, monkeypatch):
    """As the study's records (sweep.json, the dashboard command) and a later run from elsewhere need it."""
    monkeypatch.chdir(tmp_path)
    argv = ["--config", str(ROOT / "configs" / "debug.yaml"), "--trials", "2", "--trial-budget", "tokens:1k",
            "--out", "o", "--storage", "sqlite:///rel.db", "--dry-run"]
    assert run(tune_cli.main, argv) == 0
    assert f" in sqlite:///{tmp_path / 'rel.db'}: 2 trials" in capsys.readouterr().out
    for url in ["sqlite:////abs/x.db", "sqlite:///:memory:", "postgresql://u:p@h/db", "not a url"]:
        assert absolute(url) == url


def test_dry_run_finds_what_the_real_run_would_refuse(tmp_path, capsys):
    blocker = tmp_path / "a file"
    blocker.write_text("x")
    base = ["--config", str(ROOT / "configs" / "debug.yaml"), "--trials", "2", "--trial-budget", "tokens:1k", "--dry-run"]
    for extra, needle in [(["--out", str(blocker)], "as the output directory (Not a directory)"),
                          (["--out", str(blocker / "sub")], f"({blocker} is not a directory)"),
                          (["--out", str(tmp_path / "o"), "--storage", "not a url"], "--storage 'not a url' is not a database URL"),
                          (["--out", str(tmp_path / "o"), "--storage", "foo://al:s3cret@bar/x"],
                           "cannot open the study storage foo://al:***@bar/x: "),  # as the real run says it
                          *[(["--out", str(tmp_path / "o"), "--storage", url], "is an in-memory SQLite database")
                            for url in ("sqlite://", "sqlite:///", "sqlite:///:memory:")]]:
        assert run(tune_cli.main, base + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    with pytest.raises(SystemExit) as stop:  # an empty URL: argparse's own one line
        tune_cli.main(base + ["--out", str(tmp_path / "o"), "--storage", ""])
    assert stop.value.code == 2 and "argument --storage: an empty URL" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a file"]


def test_the_default_storage_lies_in_out_whatever_characters_its_name_has(tmp_path):
    """A ? or # in --out is no query or fragment of the SQLite URL, and a % no escape."""
    from sqlalchemy.engine import make_url

    for name in ("q?x", "h#1", "p%41", "a b é"):
        out = tmp_path / name
        assert make_url(default_url(out)).database == str(out / "study.db")
        out.mkdir()
        open_storage(default_url(out))
        assert (out / "study.db").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["q?x", "h#1", "p%41", "a b é"])


def test_a_postgresql_url_without_a_driver_takes_one_that_is_installed():
    """`postgresql://...` as docs/tune.md gives it works whichever PostgreSQL driver pip installed
    (SQLAlchemy 2.1 would pick psycopg 3, requirements.txt installs psycopg2); the real server is
    tests/test_tune_workers.py's, reached through this bare form."""
    url = with_driver("postgresql://user:secret@dbhost:5433/rnn_study")
    scheme, rest = url.split("://")
    assert scheme.startswith("postgresql+") and importlib.util.find_spec(scheme.split("+")[1]) is not None
    assert rest == "user:secret@dbhost:5433/rnn_study"  # the password is kept: this URL connects
    for kept in ("postgresql+psycopg://u@h/db", "sqlite:////tmp/s.db", "mysql://a@b/c", "not a url"):
        assert with_driver(kept) == kept


# ---------------------------------------------------------------------------------------------
# the engine: pruning, interruptions, dead processes, the exact count


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def _handle(tmp_path, name="s", pruner=None, **storage):
    storage_ = open_storage(f"sqlite:///{tmp_path / 'study.db'}", retry=engine.queue_again, **storage)
    study = optuna.create_study(storage=storage_, study_name=name, direction="minimize", load_if_exists=True,
                                sampler=optuna.samplers.RandomSampler(seed=0), pruner=pruner)
    return engine.StudyHandle.of(study, storage_)


def _dead_worker() -> dict:
    """The WORKER record of a process of this machine that has ended."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    record = dict(liveness.whoami(), pid=dead.pid, started=liveness._start_ticks(dead.pid))
    dead.wait()
    return record


def _orphan(h) -> None:
    """A trial a process failed and was killed before it queued the copy (between fail's two writes)."""
    trial = h.study.ask()
    trial.suggest_int("n", 1, 9)
    h.set_system(trial.number, engine.WORKER, _dead_worker())
    engine.fail(h, trial.number, "interrupted", again=False)


def _plan(tmp_path, space_file, *extra):
    return plan_tune(DEBUG, [*FIXED, *extra], str(space_file), parse_budget(BUDGET), 4, tmp_path / "out")


def test_a_pruned_trial_keeps_its_run_directory_and_says_so(tmp_path, cache, space_file):
    h = _handle(tmp_path, pruner=AlwaysPrune())
    plan = _plan(tmp_path, space_file)
    lines = []
    result = engine.work(h, 2, TrialRunner(h, plan, Datasets(cache), cache, log=lines.append), log=lines.append)
    assert result.complete and result.ran == [0, 1]
    for t in h.trials():
        assert t.state == TrialState.PRUNED and list(t.intermediate_values) == [1]  # stopped at its first validation
        rd = RunDir(plan.out / t.user_attrs["run_dir"])
        assert rd.last.exists() and rd.read_metrics()["stopped_by"] == "pruned"
        assert t.user_attrs["result"]["step"] == 8 and t.value == t.intermediate_values[1]
    assert sum("pruned at 1/4 of its budget" in line for line in lines) == 2


def test_a_trial_another_process_failed_while_it_ran_stops_in_one_line_and_resumes_on_the_rerun(
        tmp_path, cache, space_file):
    """As when this process was stopped (Ctrl-Z) long enough for another to find its heartbeat late:
    the next report of a validation meets a finished trial; one line, and the rerun resumes the run."""
    h = _handle(tmp_path)
    plan = _plan(tmp_path, space_file)
    lines = []

    def stale(name, step):
        if name == "trial-0000" and step == 10:
            engine.fail(h, 0, "its heartbeat was late", again=True)  # what reap does in the other process

    runner = TrialRunner(h, plan, Datasets(cache), cache, log=lines.append, on_step=stale)
    with pytest.raises(UserError, match="trial 0: another process failed this trial while it ran"):
        engine.work(h, 1, runner, log=lines.append)
    runner.on_step = None
    again = engine.work(h, 1, runner, log=lines.append)
    assert again.complete and again.ran == [1]
    assert any(line.startswith("trial 1: resuming ") and line.endswith("trial-0000 from last.pt at step 8")
               for line in lines), lines


def test_an_interrupted_trial_is_queued_again_and_resumed_from_its_last_pt(tmp_path, cache, space_file):
    """Ctrl-C at update 12 of trial 1: the trainer saves last.pt; the trial is FAIL, a copy is queued;
    the next run resumes the copy in the same directory, and the study ends with exactly 3 finished."""
    h = _handle(tmp_path)
    plan = _plan(tmp_path, space_file)
    lines = []

    def ctrl_c(name, step):
        if name == "trial-0001" and step == 12:
            signal.raise_signal(signal.SIGINT)

    runner = TrialRunner(h, plan, Datasets(cache), cache, log=lines.append, on_step=ctrl_c)
    first = engine.work(h, 3, runner, log=lines.append)
    assert first.interrupted and first.ran == [0]
    states = {t.number: t.state for t in h.trials()}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.FAIL, 2: TrialState.WAITING}
    copy = h.frozen(2)
    assert copy.params == h.frozen(1).params and copy.system_attrs["retry_history"] == [1]
    assert h.frozen(1).user_attrs["failure"] == "interrupted at step 12 (last.pt saved)"

    runner.on_step = None
    second = engine.work(h, 3, runner, log=lines.append)
    assert second.complete and second.ran == [2, 3]
    assert "trial 2: resuming " + str(plan.out / "trial-0001") + " from last.pt at step 12" in lines
    trials = h.trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3 and not any(t.state == TrialState.RUNNING
                                                                                 for t in trials)
    assert h.frozen(2).user_attrs["run_dir"] == "trial-0001" and not (plan.out / "trial-0002").exists()
    # the resumed run ends where an uninterrupted run of the same config does
    from rnn_train.training.trainer import train

    cfg = load_config(str(plan.out / "trial-0001" / "config.yaml"), [f"log.dir={tmp_path}", "log.name=ref"])
    ref = train(cfg, tmp_path / "ref", quiet=True, cache_dir=cache)
    assert h.frozen(2).value == pytest.approx(ref.best_val_loss, rel=1e-6)


def test_a_trial_whose_process_died_on_this_machine_is_queued_again_at_once(tmp_path):
    h = _handle(tmp_path)
    record = _dead_worker()
    trial = h.study.ask()
    trial.suggest_float("x", 0, 1)
    h.set_system(trial.number, engine.WORKER, record)
    alive_trial = h.study.ask()  # this process: alive
    h.set_system(alive_trial.number, engine.WORKER, liveness.whoami())
    engine.reap(h, log=lambda m: None)
    assert [t.state for t in h.trials()] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert "ended without finishing it" in h.frozen(0).user_attrs["failure"]
    assert h.frozen(2).params == h.frozen(0).params and engine.WORKER not in h.frozen(2).system_attrs


@pytest.mark.parametrize("after", ["get_trial_id_from_study_id_trial_number", "set_trial_state_values"])
def test_a_ctrl_c_while_a_trial_is_failed_waits_until_its_copy_is_queued(tmp_path, monkeypatch, after):
    """A second Ctrl-C 10 ms after the first (or a stop signal delivered twice) came between the two
    writes of `fail` and left the trial FAIL with no copy: the rerun never ran it again. One that
    came while the trial's id was looked up, before either write, left it RUNNING."""
    h = _handle(tmp_path)
    trial = h.study.ask()
    trial.suggest_int("n", 1, 9)
    storage_call = getattr(h.storage, after)

    def then_ctrl_c(*args, **kwargs):
        done = storage_call(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)
        return done

    monkeypatch.setattr(h.storage, after, then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):  # raised once both are written
        engine.fail(h, trial.number, "interrupted", again=True)
    monkeypatch.undo()
    assert [t.state for t in h.trials()] == [TrialState.FAIL, TrialState.WAITING]
    assert h.frozen(1).system_attrs["retry_history"] == [0]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler put back


def test_a_trial_failed_without_its_copy_by_a_process_now_dead_is_queued_again_when_a_command_starts(tmp_path):
    """A SIGKILL between the two writes of `fail`: no handler can hold it, so the next command mends it."""
    h = _handle(tmp_path)
    record = _dead_worker()
    for who in (record, liveness.whoami(), record):  # died mid-fail; this process, alive, mid-fail; died, mended
        trial = h.study.ask()
        trial.suggest_int("n", 1, 9)
        h.set_system(trial.number, engine.WORKER, who)
        engine.fail(h, trial.number, "interrupted", again=False)  # as if killed before the copy
    engine.queue_again(h.study, h.frozen(2))  # trial 2's copy was queued after all
    h.study.tell(h.study.ask(), 1.0)  # trial 3, the copy, finished
    bad = h.study.ask()
    h.set_system(bad.number, engine.WORKER, record)
    engine.fail(h, bad.number, f"{engine.BAD_CONFIG} min_lr > lr", again=False)  # failed for good: no copy wanted
    lines: list[str] = []
    session.run_trials(h, 1, lambda trial: pytest.fail("nothing to run"), workers=1, is_worker=True,
                       child_argv=lambda i: [], log=lines.append)
    assert len(h.trials()) == 5  # a worker leaves mending to the command that started it
    ran = []
    session.run_trials(h, 2, lambda trial: ran.append(trial.params) or engine.Outcome(value=0.5), workers=1,
                       is_worker=False, child_argv=lambda i: [], log=lines.append)
    assert lines[0] == "trial 0: failed (interrupted) with no copy queued; queued again"
    assert ran == [h.frozen(0).params] and h.frozen(5).system_attrs["retry_history"] == [0]
    assert [t.state for t in h.trials()][5:] == [TrialState.COMPLETE]  # trial 1's process lives: left alone
    engine.requeue_orphans(h, lines.append)  # once: trial 0 is continued now
    assert len(h.trials()) == 6 and len(lines) == 1


def test_a_study_that_has_its_trials_needs_no_orphan_mended(tmp_path):
    """Its copy would be failed unrun as surplus, and results.csv would name that hidden trial as the
    one that continues the orphan."""
    h = _handle(tmp_path)
    _orphan(h)
    h.study.tell(h.study.ask(), 1.0)  # the sampler drew another, which finished: 1 of 1
    lines: list[str] = []
    assert session.run_trials(h, 1, lambda trial: pytest.fail("nothing to run"), workers=1, is_worker=False,
                              child_argv=lambda i: [], log=lines.append) == 0
    assert [t.state for t in h.study.get_trials()] == [TrialState.FAIL, TrialState.COMPLETE] and lines == []


def test_two_commands_mending_one_trial_at_once_leave_one_copy_of_it(tmp_path, monkeypatch):
    """Both read the study before either queued its copy: each keeps the first copy, fails the later unrun."""
    h = _handle(tmp_path)
    _orphan(h)
    queue_again = engine.queue_again

    def the_other_command_first(study, failed):
        queue_again(study, failed)  # the other command's copy, queued after this one read the study
        queue_again(study, failed)

    monkeypatch.setattr(engine, "queue_again", the_other_command_first)
    engine.requeue_orphans(h, log=lambda m: None)
    assert [t.state for t in h.trials()] == [TrialState.FAIL, TrialState.WAITING]  # the surplus one is hidden
    second = h.study.get_trials()[2]
    assert second.state == TrialState.FAIL
    assert second.user_attrs["failure"] == f"{engine.SURPLUS} a second copy of trial 0 (trial 1 continues it)"


def test_a_trial_of_another_machine_is_queued_again_when_its_heartbeat_stops(tmp_path):
    h = _handle(tmp_path, heartbeat_s=1, grace_s=1)
    trial = h.study.ask()
    trial.suggest_int("n", 1, 9)
    h.set_system(trial.number, engine.WORKER, dict(liveness.whoami(), machine="another-machine/1"))
    h.storage.record_heartbeat(h.trial_id(trial.number))
    engine.reap(h, log=lambda m: None)
    assert [t.state for t in h.trials()] == [TrialState.RUNNING]  # alive as far as we know
    time.sleep(2.5)
    engine.reap(h, log=lambda m: None)
    assert [t.state for t in h.trials()] == [TrialState.FAIL, TrialState.WAITING]
    assert h.frozen(1).params == h.frozen(0).params and h.frozen(1).system_attrs["retry_history"] == [0]


def test_a_trial_asked_for_but_never_claimed_is_queued_again_after_the_grace_period(tmp_path):
    """The process died between asking and claiming (milliseconds): no record, no heartbeat."""
    h = _handle(tmp_path, heartbeat_s=1, grace_s=1)
    h.study.ask().suggest_int("n", 1, 9)
    seen: dict[int, float] = {}
    engine.reap(h, log=lambda m: None, unclaimed=seen)
    assert [t.state for t in h.trials()] == [TrialState.RUNNING] and list(seen) == [0]
    time.sleep(1.5)
    engine.reap(h, log=lambda m: None, unclaimed=seen)
    assert [t.state for t in h.trials()] == [TrialState.FAIL, TrialState.WAITING] and seen == {}
    assert "no process claimed it" in h.frozen(0).user_attrs["failure"]


def test_no_trial_beyond_the_requested_number(tmp_path):
    """Two workers asking for the last trial at once: the later one is failed unrun, never counted."""
    h = _handle(tmp_path)
    for _ in range(2):
        h.study.tell(h.study.ask(), 1.0)
    late = [h.study.ask(), h.study.ask()]  # both asked when the study had 2 of 3
    assert not engine._surplus(h, late[0].number, 3) and engine._surplus(h, late[1].number, 3)
    h.study.tell(late[0], 0.5)
    engine.fail(h, late[1].number, "surplus", again=False)
    result = engine.work(h, 3, lambda trial: pytest.fail("nothing is left to run"), log=lambda m: None)
    assert result.complete and result.ran == []
    assert [t.state for t in h.trials()] == [TrialState.COMPLETE] * 3 + [TrialState.FAIL]


def test_summary_names_failed_trials(tmp_path):
    h = _handle(tmp_path)
    h.study.tell(h.study.ask(), 1.0)
    h.study.tell(h.study.ask(), state=TrialState.PRUNED)
    engine.fail(h, h.study.ask().number, "x", again=True)
    assert session.summary(h, 3) == ("2 of 3 trials finished (1 pruned); 1 waiting, 1 failed (results.csv says "
                                     "why, and which trial continues each)")


def test_study_name_is_a_digest_of_what_decides_the_trials():
    a = study_name("tune", "configs/x.yaml", {"space": {"a": "[1, 2]"}, "budget": "tokens:1"})
    assert a.startswith("tune-x-") and len(a) == len("tune-x-") + 10
    assert a == study_name("tune", "/elsewhere/configs/x.yaml", {"budget": "tokens:1", "space": {"a": "[1, 2]"}})
    assert a != study_name("tune", "configs/x.yaml", {"space": {"a": "[1, 3]"}, "budget": "tokens:1"})


def test_what_a_study_keeps_of_its_plan_leaves_out_where_the_corpus_lies(tmp_path, space_file):
    """Machines joining one study by --study may read the same text under other paths; any other
    key of the recipe is part of the plan."""
    here = _plan(tmp_path, space_file).parts()
    assert _plan(tmp_path, space_file, "data.paths=/elsewhere/corpus.txt").parts() == here
    assert _plan(tmp_path, space_file, "train.clip_norm=0.5").parts()["base"] != here["base"]


def test_a_surplus_trial_failed_unrun_is_not_a_trial_of_the_study(tmp_path):
    """Two workers asking for the last trial at once: the later one fails its trial unrun as
    surplus. It is left out of what the commands read (results.csv, the failed count); a trial that
    failed while running is not."""
    storage = optuna.storages.RDBStorage(default_url(tmp_path))
    study = optuna.create_study(storage=storage, study_name="s")
    h = engine.StudyHandle.of(study, storage)
    done, crashed, surplus = study.ask(), study.ask(), study.ask()
    study.tell(done, 1.0)
    assert engine.fail(h, crashed.number, "error: RuntimeError: boom", again=False)
    assert engine.fail(h, surplus.number, f"{engine.SURPLUS} the study had its 2 trials", again=False)
    assert [(t.number, t.state) for t in h.trials()] == [(0, TrialState.COMPLETE), (1, TrialState.FAIL)]
    assert "1 failed" in session.summary(h, 2)
