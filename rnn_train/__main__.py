"""`python -m rnn_train <command>`: see rnn_train.commands."""
import sys

from rnn_train.commands import main

sys.exit(main())
