"""Text in, token ids out: reading and normalising corpora (with pinyin conversion), the character
vocabulary, the train / val / test split, and how an encoded split is cut into (X, Y) batches."""
