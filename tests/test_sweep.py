"""Specification of `rnn-train sweep`: grid/budget parsing, up-front validation, results, plots, resume
(the sweep is an Optuna study with a grid sampler: tests/test_tune.py specifies the engine itself)."""
import csv
import json
import math
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rnn_train.experiments import sweep
from rnn_train.cli import run
from rnn_train.errors import UserError
from tests.conftest import ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A 2×2 grid of tiny models on the built-in pinyin corpus: 12 updates of 4×5 or 3 of 4×20 tokens each.
GRID = ["data.num_steps=5,20", "model.cell=rnn,gru"]
FIXED = ["model.hidden_size=8", "data.batch_size=4", "train.threads=1", "log.sample_length=0", "log.log_every=2"]
NAMES = ["num_steps=5,cell=rnn", "num_steps=5,cell=gru", "num_steps=20,cell=rnn", "num_steps=20,cell=gru"]


def sweep_argv(out: Path, cache: Path, *extra: str) -> list[str]:
    return ["--config", str(ROOT / "configs" / "debug.yaml"), "--grid", *GRID, "--budget", "tokens:240",
            "--out", str(out), "--cache-dir", str(cache), *FIXED, *extra]


def plan_for(out: Path, grid=GRID) -> sweep.SweepPlan:
    return sweep.plan_sweep(str(ROOT / "configs" / "debug.yaml"), sweep.parse_grid(list(grid)),
                            sweep.parse_budget("tokens:240"), FIXED, out)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One corpus cache for the module: the built-in corpus is converted once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache):
    """One complete sweep, run through the command-line entry point in-process."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    assert run(sweep.main, sweep_argv(out, cache)) == 0
    return out


# ---------------------------------------------------------------------------------------------
# parsing


def test_parse_budget_units():
    assert sweep.parse_budget("tokens:2M") == sweep.Budget("tokens", 2_000_000)
    assert sweep.parse_budget("tokens:500k") == sweep.Budget("tokens", 500_000)
    assert sweep.parse_budget("tokens:1500") == sweep.Budget("tokens", 1500)
    assert sweep.parse_budget("time:90") == sweep.Budget("time", 90)
    assert sweep.parse_budget("time:1.5m") == sweep.Budget("time", 90)
    for bad in ("2M", "tokens:", "tokens:1.5", "tokens:2q", "time:0", "steps:100", "time:-3",
                "tokens:1e400", "time:1e400"):  # amounts that parse to inf
        with pytest.raises(UserError):
            sweep.parse_budget(bad)


def test_budget_is_the_only_limit():
    assert sweep.Budget("tokens", 1000).overrides() == [
        "train.epochs=0", "train.max_steps=0", "train.max_tokens=1000", "train.max_time=0", "train.patience=0"]
    assert "train.max_time=30" in sweep.Budget("time", 30).overrides()


def test_parse_grid_and_names():
    grid = sweep.parse_grid(["data.num_steps=5, 35", "model.cell=rnn,gru"])
    assert grid == {"data.num_steps": ["5", "35"], "model.cell": ["rnn", "gru"]}
    labels = sweep.short_labels(list(grid))
    assert sweep.run_name({"data.num_steps": "35", "model.cell": "gru"}, labels) == "num_steps=35,cell=gru"
    # clashing tails keep the whole key; unsafe characters become _
    assert sweep.short_labels(["data.x", "model.x", "train.lr"]) == {"data.x": "data.x", "model.x": "model.x",
                                                                     "train.lr": "lr"}
    assert sweep.run_name({"log.sample_prefix": "a/b c"}, {"log.sample_prefix": "sample_prefix"}) == "sample_prefix=a_b_c"
    for bad in (["num_steps=5"], ["data.num_steps"], ["data.num_steps=5,,6"], ["data.num_steps=5,5"],
                ["model.cell=rnn", "model.cell=gru"]):
        with pytest.raises(UserError):
            sweep.parse_grid(bad)


def test_plan_builds_every_config_with_the_budget(tmp_path):
    plan = plan_for(tmp_path / "out")
    assert [r.name for r in plan.runs] == NAMES
    for r in plan.runs:
        t = r.cfg.train
        assert (t.max_tokens, t.max_steps, t.epochs, t.max_time, t.patience) == (240, 0, 0, 0.0, 0)
        updates = 240 // (4 * r.cfg.data.num_steps)
        assert t.eval_every == math.ceil(updates / sweep.DEFAULT_EVALS)  # 4 validations per run
        assert r.run_dir == tmp_path / "out" / r.name and r.cfg.log.name == r.name
    assert plan.runs[3].grid_values() == {"data.num_steps": 20, "model.cell": "gru"}
    assert not (tmp_path / "out").exists()


def test_time_budget_and_eval_every_rules(tmp_path):
    recipe = str(ROOT / "configs" / "debug.yaml")  # eval_every: 30
    grid = sweep.parse_grid(["data.num_steps=5,20"])
    timed = sweep.plan_sweep(recipe, grid, sweep.parse_budget("time:1.5m"), [], tmp_path / "a")
    for r in timed.runs:
        t = r.cfg.train
        assert (t.max_time, t.max_tokens, t.max_steps, t.epochs, t.eval_every) == (90.0, 0, 0, 0, 30)
    mine = sweep.plan_sweep(recipe, grid, sweep.parse_budget("tokens:8k"), ["train.eval_every=7"], tmp_path / "b")
    assert [r.cfg.train.eval_every for r in mine.runs] == [7, 7]  # the user's value wins
    kept = sweep.plan_sweep(recipe, grid, sweep.parse_budget("tokens:8k"), [], tmp_path / "c", evals=0)
    assert [r.cfg.train.eval_every for r in kept.runs] == [30, 30]  # --evals 0: the recipe's
    two = sweep.plan_sweep(recipe, grid, sweep.parse_budget("tokens:8k"), [], tmp_path / "d", evals=2)
    assert [r.cfg.train.eval_every for r in two.runs] == [100, 25]  # 200 and 50 updates, 2 validations


@pytest.mark.parametrize("grid, fixed, message", [
    (["data.num_stepz=5,10"], [], "unknown key data.num_stepz (did you mean data.num_steps?)"),
    (["model.cell=rnn,grux"], [], "model.cell must be one of"),
    (["train.max_steps=10,20"], [], "the sweep sets train.max_steps itself"),
    (["data.paths=a,b"], [], "list-valued keys cannot be gridded"),
    (["model.cell=rnn,gru"], ["model.cell=lstm"], "both a grid key and a fixed override"),
    (["model.cell=rnn,gru"], ["train.epochs=3"], "override train.epochs: the sweep sets it itself"),
    (["train.lr=0.1,0.10,1e-1,0.5"], [], "--grid train.lr: 0.1, 0.10, 1e-1 are one value"),  # the same run 3 times
    (["model.hidden_size=16,16.0"], [], "--grid model.hidden_size: 16, 16.0 are one value"),
])
def test_plan_rejects_bad_grids(tmp_path, grid, fixed, message):
    with pytest.raises(UserError, match=None) as e:
        sweep.plan_sweep(str(ROOT / "configs" / "debug.yaml"), sweep.parse_grid(grid),
                         sweep.parse_budget("tokens:100"), fixed, tmp_path / "out")
    assert message in str(e.value)


def test_bad_grid_key_fails_at_once_with_nothing_written(tmp_path):
    """The real entry point: one `error: ...` line, exit status 2, no sweep directory."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "rnn_train", "sweep", "--config", "configs/debug.yaml",
                           "--grid", "data.num_steps=5,10", "model.cel=rnn,gru", "--budget", "tokens:1k",
                           "--out", str(out), "--cache-dir", str(tmp_path / "cache")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "unknown key model.cel (did you mean model.cell?)" in proc.stderr
    assert proc.stdout == ""
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_corpus_too_short_for_a_grid_point_fails_before_training(tmp_path, cache, capsys):
    out = tmp_path / "out"
    argv = ["--config", str(ROOT / "configs" / "debug.yaml"), "--grid", "data.num_steps=5,100000",
            "--budget", "tokens:1k", "--out", str(out), "--cache-dir", str(cache)]
    assert run(sweep.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: corpus too short: run num_steps=100000") and not out.exists()


def test_a_grid_point_too_large_for_memory_stops_the_sweep_naming_it(tmp_path, cache, capsys):
    """Unlike a search, a sweep asks for every grid point: one that cannot be allocated is an error
    naming its run, and the rerun meets it again (the grid is what has to change)."""
    argv = ["--config", str(ROOT / "configs" / "debug.yaml"), "--grid", "model.hidden_size=8,100000000",
            "--budget", "tokens:240", "--out", str(tmp_path / "out"), "--cache-dir", str(cache), *FIXED[1:]]
    for _ in range(2):
        assert run(sweep.main, argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: trial ") and "(hidden_size=100000000): not enough memory for the model" in err


def test_a_grid_point_whose_directory_another_training_writes_is_left_alone(tmp_path, cache, capsys):
    """The trial takes the run directory's lock before it reads or clears anything there."""
    import threading

    from rnn_train.training.rundir import claimed

    busy = tmp_path / "out" / "hidden_size=8"
    busy.mkdir(parents=True)
    (busy / "config.yaml").write_text("another training's\n")
    (busy / "last.pt").write_bytes(b"its checkpoint")
    argv = ["--config", str(ROOT / "configs" / "debug.yaml"), "--grid", "model.hidden_size=8",
            "--budget", "tokens:240", "--out", str(tmp_path / "out"), "--cache-dir", str(cache), *FIXED[1:]]
    held, release = threading.Event(), threading.Event()

    def hold():  # as a training in another thread (or process) holds it
        with claimed(busy):
            held.set()
            release.wait(60)
    holder = threading.Thread(target=hold)
    holder.start()
    try:
        held.wait(10)
        assert run(sweep.main, argv) == 2
    finally:
        release.set()
        holder.join()
    assert "is in use: another training on this machine" in capsys.readouterr().err
    assert (busy / "config.yaml").read_text() == "another training's\n" and (busy / "last.pt").read_bytes() == b"its checkpoint"


# ---------------------------------------------------------------------------------------------
# a whole sweep


def test_sweep_writes_one_row_per_run(finished):
    with open(finished / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == NAMES
    numeric = ("val_loss", "val_ppl", "val_bpc", "best_val_loss", "tokens_per_s", "train_s", "wall_s", "grad_norm")
    for r in rows:
        for column in numeric:
            assert math.isfinite(float(r[column])) and float(r[column]) > 0, (r["run"], column)
        assert r["stopped_by"] == "max_tokens" and int(r["tokens"]) == 240
        assert int(r["steps"]) == 240 // (4 * int(r["num_steps"]))
        assert float(r["val_bpc"]) == pytest.approx(float(r["val_loss"]) / math.log(2))

    payload = json.loads((finished / "results.json").read_text())
    assert payload["sweep"]["grid"] == {"data.num_steps": ["5", "20"], "model.cell": ["rnn", "gru"]}
    assert [(r["num_steps"], r["cell"]) for r in payload["runs"]] == [(5, "rnn"), (5, "gru"), (20, "rnn"), (20, "gru")]
    for r in payload["runs"]:
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))

    table = (finished / "results.md").read_text().splitlines()
    body = [line for line in table if line.startswith("| ") and not line.startswith("| num_steps")]
    assert table[2].startswith("| num_steps | cell | val loss | val ppl | bits/char | tokens/s")
    assert len(body) == 4 and sum("**" in line for line in body) == 1  # the best ppl in bold

    for name in ("val_ppl.png", "tokens_per_s.png", "val_curves.png"):
        data = (finished / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    for name in NAMES:
        for f in ("config.yaml", "best.pt", "last.pt", "metrics.json"):
            assert (finished / name / f).is_file(), (name, f)
    assert (finished / "study.db").is_file()  # the study: Optuna's SQLite storage in the sweep directory
    assert payload["sweep"]["study"].startswith("sweep-debug-")


def test_every_run_has_its_hparams_record(finished):
    """TensorBoard's HPARAMS tab pointed at the sweep directory sees one session per run, with the grid values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    seen = {}
    for name in NAMES:
        ea = EventAccumulator(str(finished / name))
        ea.Reload()
        content = ea.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hp = start.session_start_info.hparams
        seen[name] = (int(hp["data.num_steps"].number_value), hp["model.cell"].string_value,
                      int(hp["train.max_tokens"].number_value))
        assert "_hparams_/session_end_info" in content
        metrics = json.loads((finished / name / "metrics.json").read_text())
        from rnn_train.training.events import read_series

        # the HPARAMS metrics are the series' last points (rnn_train/training/events.py)
        assert read_series(finished / name, "val/ppl")[-1][1] == pytest.approx(metrics["val_ppl"], rel=1e-5)
    assert seen == {"num_steps=5,cell=rnn": (5, "rnn", 240), "num_steps=5,cell=gru": (5, "gru", 240),
                    "num_steps=20,cell=rnn": (20, "rnn", 240), "num_steps=20,cell=gru": (20, "gru", 240)}


def test_rerun_skips_everything_and_a_changed_budget_is_refused(finished, cache, capsys):
    mtimes = {n: (finished / n / "metrics.json").stat().st_mtime_ns for n in NAMES}
    assert run(sweep.main, sweep_argv(finished, cache)) == 0
    out = capsys.readouterr().out
    assert ": training " not in out and "4 of 4 trials finished; 4 of 4 runs in the tables" in out
    assert {n: (finished / n / "metrics.json").stat().st_mtime_ns for n in NAMES} == mtimes

    argv = sweep_argv(finished, cache)
    argv[argv.index("tokens:240")] = "tokens:480"
    assert run(sweep.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 4 run directories hold runs made with another config") and "--force" in err
    assert "train.max_tokens: 240 -> 480" in err
    assert {n: (finished / n / "metrics.json").stat().st_mtime_ns for n in NAMES} == mtimes


def test_a_tune_into_a_sweeps_out_is_refused_and_the_sweeps_files_are_kept(finished, cache, capsys, tmp_path):
    """tune and sweep both write results.csv and study.db: one --out holds one command's work."""
    from rnn_train.experiments.tune import cli as tune_cli

    before = {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()}
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {float: [0.003, 0.03], log: true}\n")
    argv = ["--config", str(ROOT / "configs" / "debug.yaml"), "--space", str(space), "--trials", "2",
            "--trial-budget", "tokens:240", "--out", str(finished), "--cache-dir", str(cache), *FIXED]
    for extra in ([], ["--dry-run"]):
        assert run(tune_cli.main, argv + extra) == 2
        err = capsys.readouterr().err
        assert err == f"error: {finished} holds the runs and results of a sweep ({finished / 'sweep.json'}); " \
                      f"use another --out for this tune\n"
    assert {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()} == before


def test_overrides_typed_right_after_the_grid_are_grid_keys_of_one_value_which_a_note_says(tmp_path, cache, capsys):
    """--grid takes every word after it: `--grid model.cell=rnn,gru train.lr=0.1` makes train.lr a key
    of the grid (in every run's name). Still allowed (a grid that grows from one value is a way to
    start), but said, with where a fixed override goes."""
    argv = ["--config", str(ROOT / "configs" / "debug.yaml"), "--budget", "tokens:240", "--out", str(tmp_path / "o"),
            "--cache-dir", str(cache), "--dry-run", "--grid", "model.cell=rnn,gru", "train.lr=0.1"]
    assert run(sweep.main, argv) == 0
    out, err = capsys.readouterr()
    assert "cell=rnn,lr=0.1" in out
    assert err == ("note: --grid train.lr=0.1: one value, so a grid key all the same, in every run's name and the "
                   "tables; a fixed override goes before --grid or after another option\n")
    assert run(sweep.main, [*argv[:-3], "train.lr=0.1", "--grid", "model.cell=rnn,gru"]) == 0
    assert capsys.readouterr().err == ""
    assert run(sweep.main, [*argv[:-3], "--grid", "model.cell=gru"]) == 0  # one run, on purpose
    assert capsys.readouterr().err == ""


def test_an_out_in_a_training_run_or_in_another_study_is_refused_and_nothing_is_written(finished, cache, capsys,
                                                                                       tmp_path):
    """A sweep written into a trial's run directory, or below a tune's --out, mixes into their
    results and TensorBoard views; so does one into a training run's directory."""
    run_dir = finished / NAMES[0]  # a run directory of the finished sweep: config.yaml and best.pt in it
    for out, said in ((run_dir, f"{run_dir} holds a training run; use another --out"),
                      (run_dir / "sub", f"{run_dir / 'sub'} lies inside {run_dir}, which holds a training run"),
                      (finished / "more", f"{finished / 'more'} lies inside {finished}, which holds a sweep")):
        before = sorted(p.name for p in out.parent.iterdir())
        for extra in ([], ["--dry-run"]):
            assert run(sweep.main, sweep_argv(out, cache, *extra)) == 2
            assert capsys.readouterr().err.startswith(f"error: {said}")
        assert sorted(p.name for p in out.parent.iterdir()) == before
    # files that only bear those names are no run or study; a sweep already in its --out goes on
    other = tmp_path / "elsewhere"
    (other / "proj").mkdir(parents=True)
    (other / "study.json").write_text("[1, 2]")
    (other / "last.pt").write_bytes(b"not a run")
    assert run(sweep.main, sweep_argv(other / "proj" / "s", cache, "--dry-run")) == 0
    copy = tmp_path / "wrapped" / "s"
    shutil.copytree(finished, copy)
    (copy.parent / "study.json").write_text('{"study": "a tune put around it later"}')
    assert run(sweep.main, sweep_argv(copy, cache, "--dry-run")) == 0
    capsys.readouterr()


def test_the_summary_of_failed_trials_points_where_the_command_keeps_them():
    """A tune's results.csv lists failed trials and why; a sweep's lists finished runs only."""
    import optuna
    from optuna.trial import TrialState

    from rnn_train.experiments.study import session

    class Handle:
        def trials(self):
            return [optuna.trial.create_trial(state=TrialState.FAIL),
                    optuna.trial.create_trial(state=TrialState.COMPLETE, value=1.0)]
    assert session.summary(Handle(), 2) == ("1 of 2 trials finished; 1 failed (results.csv says why, and which trial "
                                            "continues each)")
    assert session.summary(Handle(), 2, reasons_in_results=False) == (
        "1 of 2 trials finished; 1 failed (runs interrupted or stopped; the same command again continues them)")

    class Continued:  # the failed run was continued to its end by trial 1: nothing is left to say
        def trials(self):
            failed = optuna.trial.create_trial(state=TrialState.FAIL)
            failed.number = 0
            copy = optuna.trial.create_trial(state=TrialState.COMPLETE, value=1.0,
                                             system_attrs={"retry_history": [0]})
            copy.number = 1
            return [failed, copy]
    assert session.summary(Continued(), 1, reasons_in_results=False) == "1 of 1 trials finished"


def test_adding_a_grid_value_trains_only_the_new_runs(tmp_path, finished, cache, capsys):
    """A wider grid is another study, but its old grid points find their finished run directories."""
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    argv = sweep_argv(out, cache)
    argv[argv.index("model.cell=rnn,gru")] = "model.cell=rnn,gru,lstm"
    assert run(sweep.main, argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished; taken as it is") == 4
    assert printed.count(": training ") == 2 and "6 of 6 trials finished" in printed
    rows = json.loads((out / "results.json").read_text())["runs"]
    assert [r["run"] for r in rows] == ["num_steps=5,cell=rnn", "num_steps=5,cell=gru", "num_steps=5,cell=lstm",
                                        "num_steps=20,cell=rnn", "num_steps=20,cell=gru", "num_steps=20,cell=lstm"]


def test_a_wider_grid_may_not_join_the_narrower_grids_study_by_name(tmp_path, finished, cache, capsys):
    """--study naming a study planned from another grid is refused: its trials are another grid's."""
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    name = json.loads((out / "sweep.json").read_text())["study"]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    argv = sweep_argv(out, cache, "--study", name)
    argv[argv.index("model.cell=rnn,gru")] = "model.cell=rnn,gru,lstm"
    assert run(sweep.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: the study {name} in ")
    assert "planned with another set of runs (their grid, budget or overrides)" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not any(out.glob("*cell=lstm"))


@pytest.mark.parametrize("how", ["signal", "exception"])
def test_interrupted_sweep_resumes_without_redoing_finished_runs(tmp_path, finished, cache, capsys, how):
    """Ctrl-C in a run (the trainer finishes the update and saves last.pt at step 7), or an interruption the
    trainer does not catch (last.pt of the validation at step 6 stays): the rerun resumes that run and
    keeps the finished ones; the results equal the uninterrupted sweep's (the trainer's exact resume)."""
    out = tmp_path / "out"
    plan = plan_for(out)
    victim = "num_steps=5,cell=gru"  # 12 updates, validated every 3

    def on_step(name, step):
        if name == victim and step == 7:
            if how == "signal":
                signal.raise_signal(signal.SIGINT)
            else:
                raise KeyboardInterrupt

    outcome = sweep.run_sweep(plan, cache_dir=cache, log=lambda m: None, on_step=on_step)
    assert outcome.interrupted and "1 failed" in outcome.summary
    before = {r["run"] for r in outcome.rows}
    assert victim not in before and (out / victim / "last.pt").exists() and not (out / victim / "metrics.json").exists()
    stamp = {n: (out / n / "metrics.json").stat().st_mtime_ns for n in before}

    assert run(sweep.main, sweep_argv(out, cache)) == 0
    printed = capsys.readouterr().out
    assert f"({victim}): resuming {out / victim} from last.pt at step {7 if how == 'signal' else 6}" in printed
    assert printed.count(": training ") == 4 - len(before) - 1
    assert {n: (out / n / "metrics.json").stat().st_mtime_ns for n in before} == stamp

    mine = json.loads((out / "results.json").read_text())["runs"]
    ref = json.loads((finished / "results.json").read_text())["runs"]
    assert [r["run"] for r in mine] == NAMES
    for a, b in zip(mine, ref):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6), a["run"]
        assert a["steps"] == b["steps"]


def test_plots_without_num_steps_use_the_first_grid_key(tmp_path):
    """Plotting needs only rows: a grid over cell and num_layers, fake metrics, no training."""
    plan = plan_for(tmp_path, grid=["model.cell=rnn,gru,lstm", "model.num_layers=1,2"])
    rows = [{"run": r.name, "cell": r.cfg.model.cell, "num_layers": r.cfg.model.num_layers,
             "val_ppl": 5.0 + i, "tokens_per_s": 1000.0 * (i + 1)} for i, r in enumerate(plan.runs)]
    rows[2]["val_ppl"] = math.nan  # a diverged run is left out of its line, not a crash
    tmp_path.mkdir(exist_ok=True)
    files = sweep.plot_results(plan, rows)
    assert [f.name for f in files] == ["val_ppl.png", "tokens_per_s.png"]  # no events: no val curves
    assert all(f.read_bytes().startswith(PNG_MAGIC) for f in files)
    assert sweep.markdown_table([], ["cell"]).count("\n") == 2


def test_every_json_file_of_a_sweep_is_strict_json(finished):
    """NaN (here: each run's test_loss, without a test split) is written as null, never as NaN."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    files = sorted(finished.rglob("*.json"))
    names = {f.name for f in files}
    assert {"sweep.json", "results.json", "metrics.json"} <= names
    for f in files:
        json.loads(f.read_text(), parse_constant=refuse)
    metrics = json.loads((finished / NAMES[0] / "metrics.json").read_text())
    assert metrics["test_loss"] is None and math.isfinite(metrics["val_loss"])


def test_a_run_whose_wall_time_is_not_known_shows_a_question_mark_not_nan():
    """A study rebuilt after its study.db was lost takes finished runs from disk, which never said
    how long they took on the clock."""
    from rnn_train.experiments.sweep.report import markdown_table

    row = {"cell": "gru", "val_loss": 1.5, "val_ppl": 4.48, "val_bpc": 2.16, "tokens_per_s": 1000.0, "train_s": 2.0,
           "wall_s": math.nan, "steps": 12, "grad_norm": 0.5}
    line = markdown_table([row], ["cell"]).splitlines()[-1]
    assert line == "| gru | 1.5000 | **4.480** | 2.160 | 1,000 | 2.0 | ? | 12 | 0.500 |"
