"""Text in, token ids out: which files (sources), reading and normalising them (corpus), pinyin
conversion (pinyin, conversion), the streamed prepare step that writes a cached, memory-mapped token
file (stream, prepare; the `prepare` command in cli), the character vocabulary (vocab), the
train / val / test split (dataset), and how a split is cut into (X, Y) batches (batching)."""
