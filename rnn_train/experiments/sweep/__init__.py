"""Grid sweeps: one recipe, the cross product of a few settings, the same budget for every run.

    python -m rnn_train sweep --config configs/pinyin_gru.yaml \\
        --grid data.num_steps=5,10,20,35,70,140 model.cell=rnn,gru data.partition=random,sequential \\
        --budget tokens:2M --out runs/sweep_pinyin  model.hidden_size=128 train.threads=1

Layout of the sweep directory (`--out`):

    runs/sweep_pinyin/
        sweep.json                                   what was asked (recipe, grid, budget, overrides, study)
        study.db                                     the Optuna study (SQLite; or --storage URL)
        num_steps=5,cell=rnn,partition=random/       one ordinary run directory per grid point:
            config.yaml best.pt last.pt metrics.json events.out.tfevents.*
        ...
        results.csv results.json results.md         one row per finished run
        val_ppl.png tokens_per_s.png val_curves.png  plots (matplotlib, Agg)

`tensorboard --logdir runs/sweep_pinyin` shows every run's curves, and its HPARAMS tab puts the
runs side by side: each run writes an hparams record (its whole config and final metrics).

The budget. Every run gets the same budget, and the budget is the only limit:

* `tokens:N` sets `train.max_tokens=N`: each run reads N training characters (targets). This is
  the fair comparison across `data.num_steps`: one update reads batch_size × num_steps tokens, so
  a budget in *updates* (max_steps) would give the num_steps=140 runs 28 times the data of the
  num_steps=5 runs, and a budget in *epochs* hides the opposite effect: short windows make many
  small updates per epoch, long windows few large ones. With a fixed number of tokens every run
  sees the same text; what differs is how it is cut up: many updates with short gradient horizons,
  or few updates with long ones. That trade-off is what a num_steps sweep measures. (A run stops
  at the first update that reaches N, so it may read up to one batch more: 2,002,560 tokens for
  N = 2M with batches of 32 × 140.)
* `time:S` sets `train.max_time=S` seconds of training (validation excluded): the fair comparison
  when the question is "what is best for my compute?" (a cheap cell makes up for its weakness by
  reading more tokens). Time budgets depend on the machine and its load; tokens do not.

Either way the recipe's other limits (`train.epochs`, `train.max_steps`, the other budget) and
early stopping (`train.patience`) are set to 0, so that no run stops early. Giving one of those
keys yourself, as an override or in the grid, is an error rather than a silent loss.

Validation frequency. With a token budget the number of updates per run varies with num_steps
(and batch_size), so a fixed `train.eval_every` would validate one run fifty times and another
once. The sweep therefore sets `train.eval_every` per run so that each run validates `--evals`
times (default 4), evenly over its budget, plus once at the end. Passing `train.eval_every`
yourself (override or grid) keeps your value; with a time budget the recipe's value is kept.

Validation of the whole sweep comes first: every run's config is built (grid values are converted
and checked exactly like `train.py` overrides) and every distinct corpus is prepared before the
first run starts, so a typo in the grid fails at once with one `error: ...` line and exit status 2,
and nothing is written.

The engine. A sweep is an Optuna study whose sampler is Optuna's GridSampler over the grid: the
study (in `study.db`, or `--storage URL`) knows which grid points are finished, running or left, and
each trial trains its grid point's run directory with the project's trainer (study/trials.py). The
runs are drawn in the grid sampler's order; the tables list them in grid order. `--workers K` trains
K grid points at once, and the same command on several machines sharing a `--storage` splits the
grid between them (rnn_train.experiments.study, docs/tune.md).

Resuming. Rerun the same command after an interruption (Ctrl-C finishes the step in flight and
saves `last.pt`, as in train.py; so does SIGTERM, and after SIGKILL the dead process's trial is
found at once): finished grid points are kept, and the interrupted one is queued again and resumes
from its `last.pt` (the trainer's exact resume: the same result as an uninterrupted run).

A run directory that already holds a finished run of the planned config is taken as it is, even
from another study: adding a value to the grid makes a new study (its name comes from the recipe,
overrides, grid and budget), whose old grid points are found finished and only the new ones train.
A run directory holding a *different* config (the recipe or budget changed since) is an error unless
`--force` is given, which retrains it. "Equal" ignores `train.threads`, `train.device` and the `log`
section, which do not change what a run computes.

The corpus is read, encoded and split once per distinct corpus (data settings other than
batch_size, num_steps and partition, which only cut it into batches) and handed to every run.
"""
from rnn_train.experiments.study.budget import DEFAULT_EVALS, Budget, parse_budget
from rnn_train.experiments.sweep.plan import PlannedRun, SweepPlan, parse_grid, plan_sweep, run_name, short_labels
from rnn_train.experiments.sweep.plots import plot_results, read_val_curve
from rnn_train.experiments.sweep.report import markdown_table, write_results
from rnn_train.experiments.sweep.run import SweepOutcome, run_sweep
from rnn_train.experiments.sweep.cli import main

__all__ = ["DEFAULT_EVALS", "Budget", "PlannedRun", "SweepPlan", "SweepOutcome", "parse_budget", "parse_grid",
           "plan_sweep", "run_name", "short_labels", "plot_results", "read_val_curve", "markdown_table",
           "write_results", "run_sweep", "main"]
