"""`python -m rnn_train.sweep`: the older spelling of `python -m rnn_train sweep` (rnn_train.commands)."""
import sys

from rnn_train.commands import run_command

if __name__ == "__main__":
    sys.exit(run_command("sweep", sys.argv[1:], prog="python -m rnn_train.sweep"))
