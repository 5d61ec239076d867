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
RUN_FILES = (BEST, LAST, METRICS, CONFIG, EVENTS, *(f"{split}/{EVENTS}" for split in SPLITS))
"""What a training run writes (glob patterns): what starting afresh in its directory removes."""
EXPLORE_PAGE, GRADFLOW = "explore.html", "gradflow"
"""What explore and gradflow write beside the checkpoint they read, unless told otherwise."""
EXPLORE_MARK = b'<meta name="generator" content="rnn-train explore">'
"""In the head of every page explore writes (right after its title): how a page of ours is told
from a file of the same name that someone else wrote."""
DERIVED = (EXPLORE_PAGE, f"{GRADFLOW}/*/{EVENTS}")
"""What the tools wrote from a run's checkpoints (glob patterns): replacing the run removes them
with the checkpoints, or a page and curves of weights that are gone would stay beside the new ones."""
