"""The names of the files in a run directory: a leaf, so that both the run directory's owner
(training/rundir.py: RunDir) and the checkpoint loader (model/checkpoint.py, which takes a run
directory for its best checkpoint) read them from one place without importing each other.

    runs/<log.name>/
        config.yaml               the resolved config (written first, before training starts)
        best.pt  last.pt          checkpoints (see training.state for what they hold)
        metrics.json              the TrainResult of a run that ended (not of an interrupted one)
        events.out.tfevents.*     TensorBoard: the hparams record and text samples
        train/ val/ test/         TensorBoard: each split's series (rnn_train/training/events.py)
        explore.html              `rnn-train explore`'s page of best.pt (by default)
        gradflow/<what>/          `rnn-train gradflow`'s TensorBoard series (by default)
"""

CONFIG, BEST, LAST, METRICS = "config.yaml", "best.pt", "last.pt", "metrics.json"
EVENTS = "events.out.tfevents.*"
SPLITS = ("train", "val", "test")
"""The subdirectories holding each split's TensorBoard series."""
EXPLORE_PAGE, GRADFLOW = "explore.html", "gradflow"
"""What explore and gradflow write beside the checkpoint they read, unless told otherwise."""
RUN_FILES = (BEST, LAST, METRICS, CONFIG, EVENTS, *(f"{split}/{EVENTS}" for split in SPLITS),
             EXPLORE_PAGE, f"{GRADFLOW}/*/{EVENTS}")
"""What a training run writes, and the tools write from its checkpoints (glob patterns): what starting
afresh in its directory removes (a page or gradient curves of the replaced weights would stay)."""
