"""`rnn-train serve`: a model behind an HTTP API, its requests batched (docs/serve.md)."""
