"""Prediction from a prefix: warm the state up once, then step one character at a time.

Why carry the state: after the prefix has been read, the hidden state summarises it. Each new
character costs one cell step on that state; re-running the whole prefix for every generated
character (the naive loop) costs O(K·(P+K)) steps instead of O(P+K).

    prefix "zhong g"  ──one forward over P chars──>  state_P, logits_P  ──sample──> c1
    c1 ──one step──> state_{P+1}, logits ──sample──> c2 ──one step──> ...

Everything here takes a model, a vocab and plain values; nothing is read from files or globals.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from rnn_train.errors import UserError
from rnn_train.model.charrnn import CharRNN, State
from rnn_train.data.vocab import UNK, Vocab


def encode_prefix(vocab: Vocab, prefix: str, unk: str = "error") -> torch.Tensor:
    """prefix -> ids [1, P]. Unknown characters raise a UserError naming them, or with
    unk="replace" become <unk>. An empty prefix starts from a newline when the vocab has one."""
    if not prefix:
        if "\n" not in vocab:
            raise UserError("the prefix is empty and the vocab has no newline to start from; give --prefix")
        prefix = "\n"
    missing = vocab.unknown_chars(prefix)
    if missing and unk != "replace":
        shown = ", ".join(repr(c) for c in missing[:10])
        raise UserError(f"prefix characters not in the model's vocab: {shown} "
                        f"(use --unk replace to map them to {UNK})")
    return torch.as_tensor(vocab.encode(prefix).astype("int64"))[None, :]


@torch.no_grad()
def warm_up(model: CharRNN, ids: torch.Tensor) -> tuple[torch.Tensor, State]:
    """Run the prefix ids [1, P] once -> (logits of the next character [V], state after the prefix)."""
    device = model.decoder.weight.device
    logits, state = model(ids.to(device))
    return logits[0, -1], state


def _real_char_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits [V] with <unk> masked out: it is a placeholder, never a character to predict or emit."""
    if not torch.isfinite(logits[1:]).all():
        raise UserError("the model's outputs are not finite (a diverged checkpoint?); use an earlier checkpoint")
    logits = logits.clone()
    logits[0] = float("-inf")
    return logits


def _choose(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator | None) -> int:
    """Greedy when temperature == 0, else sample from softmax(logits / T) restricted to the top k."""
    logits = _real_char_logits(logits)
    if temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits.float() / temperature
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits[logits < kth] = float("-inf")
    probs = torch.softmax(logits, dim=-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """Evaluation mode for the block, then the mode the caller had (the trainer's model stays in train)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@dataclass
class Prediction:
    prefix: str
    next_chars: list[tuple[str, float]]  # top-n (character, probability) after the prefix
    continuation: str  # the K generated characters


@torch.no_grad()
def next_char_distribution(model: CharRNN, vocab: Vocab, prefix: str, top_n: int = 5,
                           unk: str = "error") -> list[tuple[str, float]]:
    """Single step: the top_n most likely next characters and their probabilities (<unk> excluded,
    so these are exactly the probabilities sampling at temperature 1 draws from)."""
    with _eval_mode(model):
        logits, _ = warm_up(model, encode_prefix(vocab, prefix, unk))
    probs = torch.softmax(_real_char_logits(logits).float(), dim=-1)
    values, idx = torch.topk(probs, min(top_n, len(vocab) - 1))
    return [(vocab.itos[int(i)], float(v)) for v, i in zip(values, idx)]


@torch.no_grad()
def generate(model: CharRNN, vocab: Vocab, prefix: str, k: int, temperature: float = 0.0, top_k: int = 0,
             seed: int | None = None, unk: str = "error") -> str:
    """K steps: return the k characters that follow `prefix` (greedy by default).

    Sampling uses its own generator (seeded by `seed`), so calling this never disturbs the global
    torch RNG: a sample logged during training leaves the training run's randomness unchanged."""
    if k < 0:
        raise UserError(f"-k must be >= 0, got {k}")
    if not (0 <= temperature < float("inf")):
        raise UserError(f"--temperature must be a finite number >= 0, got {temperature}")
    generator = None
    if temperature > 0:
        generator = torch.Generator()
        # os.urandom when unseeded: torch.seed() would reseed (and so disturb) the global RNG.
        generator.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(7), "little"))
    device = model.decoder.weight.device
    out: list[int] = []
    with _eval_mode(model):  # no dropout while generating, even when called mid-training
        logits, state = warm_up(model, encode_prefix(vocab, prefix, unk))
        for _ in range(k):
            idx = _choose(logits, temperature, top_k, generator)
            out.append(idx)
            step_logits, state = model(torch.tensor([[idx]], device=device), state)  # one cell step
            logits = step_logits[0, -1]
    return vocab.decode(out)


def predict(model: CharRNN, vocab: Vocab, prefix: str, k: int = 50, top_n: int = 5, temperature: float = 0.0,
            top_k: int = 0, seed: int | None = None, unk: str = "error") -> Prediction:
    """Both predictions for one prefix: the Python API behind predict.py."""
    return Prediction(prefix, next_char_distribution(model, vocab, prefix, top_n, unk),
                      generate(model, vocab, prefix, k, temperature, top_k, seed, unk))
