"""Prediction from a prefix: warm the state up once, then step one character at a time.

Why carry the state: after the prefix has been read, the hidden state summarises it. Each new
character costs one cell step on that state; re-running the whole prefix for every generated
character (the naive loop) costs O(K·(P+K)) steps instead of O(P+K).

    prefix "zhong g"  ──one module call over P chars──>  state_P, logits_P  ──choose──> c1
    c1 ──one NumPy step──> state_{P+1}, logits ──choose──> c2 ──one NumPy step──> ...

The prefix is read by the torch module (one call, whatever its length); the K steps after it run
in NumPy (`stepper`), because calling a module per character costs far more than the step's
arithmetic. `predict` warms up once and uses the same logits for the top-n list and the first
generated character.

Everything here takes a model, a vocab and plain values; nothing is read from files or globals.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from rnn_train.data.vocab import UNK, Vocab
from rnn_train.errors import UserError, integer
from rnn_train.model.charrnn import CharRNN, State, check_vocab
from rnn_train.prediction.choose import Chooser, SamplingOptions
from rnn_train.prediction.sampler import RuleState, StopRules, sample_chunks
from rnn_train.model.checkpoint import refuse_not_finite
from rnn_train.prediction.stepper import UNK_LOGIT, check_rows, make_stepper


def encode_prefix(vocab: Vocab, prefix: str, unk: str = "error") -> torch.Tensor:
    """prefix -> ids [1, P]. Unknown characters raise a UserError naming them, or with
    unk="replace" become <unk>. An empty prefix starts from a newline when the vocab has one."""
    if unk not in ("error", "replace"):
        raise UserError(f"--unk must be error or replace, got {unk!r}")
    if not prefix:
        if "\n" not in vocab:
            raise UserError("the prefix is empty and the vocab has no newline to start from; give --prefix")
        prefix = "\n"
    shown = vocab.unknown_shown(prefix)
    if shown and unk != "replace":
        raise UserError(f"prefix characters not in the model's vocab: {shown} "
                        f"(use --unk replace to map them to {UNK})")
    return torch.as_tensor(vocab.encode(prefix).astype("int64"))[None, :]


@torch.no_grad()
def warm_up(model: CharRNN, ids: torch.Tensor) -> tuple[torch.Tensor, State]:
    """Run the prefix ids [1, P] once -> (logits of the next character [V], state after the prefix)."""
    device = model.decoder.weight.device
    with eval_mode(model):
        logits, state = model(ids.to(device))
    return logits[0, -1], state


def _real_char_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits [V] with <unk> masked out: it is a placeholder, never a character to predict or emit."""
    refuse_not_finite([logits[1:]])
    logits = logits.clone()
    logits[0] = float("-inf")
    return logits


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
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


def top_chars(vocab: Vocab, logits: torch.Tensor, top_n: int) -> list[tuple[str, float]]:
    """The top_n most likely next characters and their probabilities (<unk> excluded, so these are
    exactly the probabilities sampling at temperature 1 draws from)."""
    if integer(top_n, "--top-n") < 1:
        raise UserError(f"--top-n must be an integer >= 1, got {top_n!r}")
    probs = torch.softmax(_real_char_logits(logits).float(), dim=-1)
    values, idx = torch.topk(probs, min(top_n, len(vocab) - 1))
    return [(vocab.itos[int(i)], float(v)) for v, i in zip(values, idx)]


def next_char_distribution(model: CharRNN, vocab: Vocab, prefix: str, top_n: int = 5,
                           unk: str = "error") -> list[tuple[str, float]]:
    """Single step: the top_n most likely next characters after `prefix`, with probabilities."""
    check_vocab(model, vocab)
    logits, _ = warm_up(model, encode_prefix(vocab, prefix, unk))
    return top_chars(vocab, logits, top_n)


def sampler_logits(logits: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """The warm-up's logits [V] as the sampler takes them: NumPy, <unk> at UNK_LOGIT like the
    stepper's (never chosen), a diverged model refused."""
    first = _real_char_logits(logits).cpu().numpy()
    return np.where(np.isfinite(first), first, UNK_LOGIT).astype(dtype)


def stream_after(model: CharRNN, vocab: Vocab, logits: torch.Tensor, state: State, k: int,
                 options: SamplingOptions = SamplingOptions(), rules: StopRules = StopRules(),
                 num_samples: int = 1, before: str = "") -> Iterator[list[str]]:
    """Continue from a warmed-up (logits [V], state): yield, chunk by chunk, the new text of each of
    `num_samples` samples (a list of num_samples strings per chunk). Up to k characters each.
    `before`: the prefix's last character (RuleState)."""
    check_vocab(model, vocab)
    for name, value, least in (("-k", k, 0), ("--num-samples", num_samples, 1)):
        if integer(value, name) < least:
            raise UserError(f"{name} must be >= {least}, got {value}")
    check_rows(model, num_samples, "--num-samples")
    # the model's logits (no temperature): the chooser scales its noise by the temperature instead
    stepper = make_stepper(model, num_samples, precision=options.precision)
    first = sampler_logits(logits, stepper.dtype)
    stepper.load_state(state)
    chooser = Chooser(options, num_samples, len(vocab), stepper.dtype)
    rule_state = RuleState(rules, vocab, num_samples, k, before) if rules.used else None
    for chunk in sample_chunks(stepper, chooser, np.broadcast_to(first, (num_samples, len(first))), k, rule_state):
        yield [vocab.decode(ids) for ids in chunk]


def stream(model: CharRNN, vocab: Vocab, prefix: str, k: int, options: SamplingOptions = SamplingOptions(),
           rules: StopRules = StopRules(), num_samples: int = 1, unk: str = "error") -> Iterator[list[str]]:
    """Warm up on `prefix`, then `stream_after`: the text of every sample, chunk by chunk."""
    check_vocab(model, vocab)
    logits, state = warm_up(model, encode_prefix(vocab, prefix, unk))
    return stream_after(model, vocab, logits, state, k, options, rules, num_samples,
                        before=prefix[-1:])


def samples(model: CharRNN, vocab: Vocab, prefix: str, k: int, options: SamplingOptions = SamplingOptions(),
            rules: StopRules = StopRules(), num_samples: int = 1, unk: str = "error") -> list[str]:
    """`num_samples` continuations of `prefix`, generated as one batch."""
    pieces: list[list[str]] = [[] for _ in range(num_samples)]
    for chunk in stream(model, vocab, prefix, k, options, rules, num_samples, unk):
        for sample, text in zip(pieces, chunk):
            sample.append(text)
    return ["".join(p) for p in pieces]


def generate(model: CharRNN, vocab: Vocab, prefix: str, k: int, temperature: float = 0.0, top_k: int = 0,
             seed: int | None = None, unk: str = "error", top_p: float = 1.0) -> str:
    """K steps: return the k characters that follow `prefix` (greedy by default).

    Sampling uses its own generator (seeded by `seed`), so calling this never disturbs the global
    torch or NumPy RNG: a sample logged during training leaves the training run's randomness unchanged."""
    return samples(model, vocab, prefix, k, SamplingOptions(temperature, top_k, top_p, seed), unk=unk)[0]


def predict(model: CharRNN, vocab: Vocab, prefix: str, k: int = 50, top_n: int = 5, temperature: float = 0.0,
            top_k: int = 0, seed: int | None = None, unk: str = "error", top_p: float = 1.0) -> Prediction:
    """Both predictions for one prefix from one warm-up: the Python API behind predict.py."""
    options = SamplingOptions(temperature, top_k, top_p, seed)  # checked before any work
    check_vocab(model, vocab)
    logits, state = warm_up(model, encode_prefix(vocab, prefix, unk))
    text = "".join(c[0] for c in stream_after(model, vocab, logits, state, k, options))
    return Prediction(prefix, top_chars(vocab, logits, top_n), text)
