"""The study engine of `rnn-train tune` and `rnn-train sweep`: trials on Optuna, one run directory each.

    budget.py     tokens:N | time:S per trial, the validations spread over it, the steps reported at
    storage.py    Optuna's RDB storage: SQLite in --out (atomic transactions) or any URL; study names
    engine.py     the worker loop: ask, run, tell; every unfinished trial FAIL + queued again; exactly N
    liveness.py   is the process running a trial still alive (this machine: at once; others: heartbeats)
    trials.py     one trial = one ordinary run directory, trained by training.train, reporting to the pruner
    workers.py    --workers K: child processes on this machine, signals passed on
    session.py    what both commands do alike: open the study, run its trials, say where it stands

Optuna owns the trials (numbers, states, parameters, reported losses, the queue), the samplers (TPE
for tune, the grid sampler for sweep), the pruners and the storage; this package adds what makes a
trial a training run of this project, and the rules that keep the count exact when processes die
(docs/tune.md, "Interrupted is not lost").
"""
