"""`python -m rnn_train.docs`: the older spelling of `python -m rnn_train config` (the config reference)."""
import sys

from rnn_train.commands import run_command

if __name__ == "__main__":
    sys.exit(run_command("config", sys.argv[1:], prog="python -m rnn_train.docs"))
