"""`rnn-train tune`: a recipe's hyperparameters searched by an Optuna study (docs/tune.md).

    space.py   the search space file (keys -> lists or ranges), its checks, the default space
    plan.py    the recipe, overrides, space and budget; each trial's config; all checked up front
    report.py  results.csv, best.yaml, and Optuna's plots of the study
    cli.py     the command line

The study itself (storage, workers, resume, pruning through the trainer) is rnn_train.experiments.study.
"""
