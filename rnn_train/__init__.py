"""rnn-train: config-driven character-level RNN/GRU/LSTM language models, with a NumPy BPTT reference."""

__version__ = "0.1.0"
