"""The character-level language model (`CharRNN`) and its checkpoints."""
