"""`rnn-train predict` / `python predict.py`: the next character and a K-character continuation of a prefix.

    python predict.py --checkpoint runs/pinyin_gru/best.pt --prefix "zhong guo" -k 50
    python predict.py --checkpoint runs/pinyin_gru --prefix "ni hao" --temperature 0.8 --top-k 5 --seed 1
    python predict.py --checkpoint runs/pinyin_gru --line-starts 春,风,十,里 --temperature 0.8 --seed 1
"""
from __future__ import annotations

import itertools
import sys

from rnn_train.cli import ArgumentParser
from rnn_train.errors import UserError

LONG_K = 2000  # -k when a stopping rule is given and -k is not: the rule decides, this only bounds it


def line_starts(spec: str, cfg) -> tuple[str, ...]:
    """'春,风,十,里' -> the text forced at each line start. For a pinyin model each entry is a whole
    syllable: Chinese characters become syllables like its corpus ('chun', or 'chun1' with tone
    numbers), and the space after the syllable is forced too, so that 'li' (里) cannot grow into
    'liu'. For any other model the entries are kept as they are."""
    from rnn_train.data.corpus import contains_han, hanzi_to_pinyin
    from rnn_train.prediction.textstream import check_typed

    check_typed(spec, "--line-starts")
    items = tuple(s.strip() for s in spec.split(","))
    if not all(items):
        raise UserError(f"--line-starts {spec!r} has an empty entry (entries are separated by commas)")
    if cfg.data.kind != "pinyin":
        return items
    out = []
    for item in items:
        converted = hanzi_to_pinyin(item, cfg.data.tones).strip() if contains_han(item) else item
        if not converted:
            raise UserError(f"--line-starts entry {item!r} has no pinyin reading")
        out.append(converted if converted.endswith(" ") else converted + " ")
    return tuple(out)


def _parser(prog: str) -> ArgumentParser:
    ap = ArgumentParser(prog=prog, description=__doc__.split("\n")[0].split(": ", 1)[1])
    ap.add_argument("--checkpoint", required=True, help="a .pt file or a run directory (uses its best.pt)")
    ap.add_argument("--prefix", default="",
                    help="text to warm the state up on (default: none, i.e. the start of a line), read like the "
                         "model's corpus: for a pinyin model Chinese characters become pinyin (followed by a "
                         "space: the next syllable starts); for a data.letters_only model it is lowercased and "
                         "each run of non-letters becomes one space")
    ap.add_argument("-k", type=int, default=None,
                    help=f"characters to generate per sample (default 50; {LONG_K} with --stop-at, --max-lines or "
                         "--line-starts, which end a sample earlier)")
    ap.add_argument("--top-n", type=int, default=5, help="next-character candidates to list (default 5)")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    ap.add_argument("--top-k", type=int, default=0, help="sample among the k most likely only (0 = all)")
    ap.add_argument("--top-p", type=float, default=1.0,
                    help="sample among the most likely characters whose probabilities add up to p (nucleus; "
                         "default 1 = all)")
    ap.add_argument("--seed", type=int, default=None,
                    help="seed for sampling: the same seed gives the same output (sample i of --num-samples "
                         "draws the same random numbers whatever N)")
    ap.add_argument("--num-samples", type=int, default=1, help="samples generated together as one batch (default 1)")
    ap.add_argument("--stop-at", default="",
                    help="end a sample right after it generates this string (read like --prefix; converted from "
                         "Chinese, it matches whole syllables: 安 is 'an ' and stops at 'an\\n' or 'an,' too, never "
                         "inside 'nan')")
    ap.add_argument("--max-lines", type=int, default=0, help="end a sample after its N-th newline (0 = off)")
    ap.add_argument("--line-starts", default="",
                    help="comma-separated: each generated line begins with the next one, then the model "
                         "continues the line; the sample ends after the last. Characters or syllables; for a "
                         "pinyin model Chinese characters are converted like its corpus (e.g. 春,风,十,里)")
    ap.add_argument("--unk", choices=["error", "replace"], default="error",
                    help="a prefix character missing from the vocab: error (default) or replace with <unk>")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="the generation steps' matrix products: fp32 (default; probabilities equal the model's "
                         "to 1e-5) or bf16 on AMX tiles (Intel Xeon 4th generation and later: faster, "
                         "probabilities to ~1e-3; elsewhere a note and fp32)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                    help="where the prefix is read (default cpu); generation steps run on the CPU")
    return ap


def _describe(args, k: int, n: int, bf16: bool, syllables: bool) -> str:
    """The line above the continuation: how it was made (`bf16`: the steps ran in bf16;
    `syllables`: the stop matches whole syllables, StopRules.syllables)."""
    how = "greedy" if args.temperature == 0 else f"sampled, temperature {args.temperature}" + \
        (f", top-k {args.top_k}" if args.top_k else "") + (f", top-p {args.top_p}" if args.top_p < 1 else "") + \
        (f", seed {args.seed}" if args.seed is not None else "")
    how += ", bf16 steps" if bf16 else ""
    limits = [f"stop at {'whole syllables ' if syllables else ''}{args.stop_at!r}"] if args.stop_at else []
    limits += [f"{args.max_lines} line{'s' if args.max_lines != 1 else ''}"] if args.max_lines else []
    limits += [f"line starts {args.line_starts}"] if args.line_starts else []
    chars = f"{k} char{'s' if k != 1 else ''}"
    size = f"up to {chars}, {', '.join(limits)}" if limits else chars
    return f"continuation ({how}, {size})" + (f", {n} samples:" if n > 1 else ":")


def main(argv: list[str] | None = None, prog: str = "predict.py") -> int:
    ap = _parser(prog)
    args = ap.parse_args(argv)
    rules_given = bool(args.stop_at or args.max_lines or args.line_starts)
    k = args.k if args.k is not None else (LONG_K if rules_given else 50)
    for flag, ok, rule, value in (("-k", k >= 0, ">= 0", k), ("--top-n", args.top_n >= 1, ">= 1", args.top_n),
                                  ("--top-k", args.top_k >= 0, ">= 0", args.top_k),
                                  ("--num-samples", args.num_samples >= 1, ">= 1", args.num_samples)):
        if not ok:
            ap.error(f"{flag} must be {rule}, got {value}")

    from rnn_train.data.corpus import contains_han
    from rnn_train.data.vocab import char_shown
    from rnn_train.model.checkpoint import load_model
    from rnn_train.prediction.choose import SamplingOptions
    from rnn_train.prediction.generate import top_chars, encode_prefix, stream_after, warm_up
    from rnn_train.prediction.sampler import StopRules
    from rnn_train.prediction.stepper import bf16_steps
    from rnn_train.prediction.textstream import corpus_text, is_converted_stop
    from rnn_train.runtime import resolve_device

    options = SamplingOptions(args.temperature, args.top_k, args.top_p, args.seed, args.precision)  # bad values: one line
    model, vocab, cfg, _ = load_model(args.checkpoint, resolve_device(args.device, "--device"))
    prefix, said = corpus_text(args.prefix, cfg, "prefix")
    syllables = is_converted_stop(args.stop_at, cfg)
    args.stop_at, said_too = corpus_text(args.stop_at, cfg, "--stop-at")  # as the rules and the header read it
    starts = line_starts(args.line_starts, cfg) if args.line_starts else ()
    if starts and cfg.data.kind == "pinyin" and contains_han(args.line_starts):  # said as the prefix's is
        said_too.append(f"--line-starts in Chinese characters converted to pinyin like the corpus ({cfg.data.tones} "
                        f"tones): {', '.join(map(repr, starts))}")
    for line in said + said_too:
        print(line)
    unused = [flag for flag, given in (("--top-k", args.top_k), ("--top-p", args.top_p < 1),
                                       ("--seed", args.seed is not None)) if given]
    if args.temperature == 0 and unused and k > 0:
        print(f"note: {', '.join(unused)} only matter{'s' if len(unused) == 1 else ''} when sampling, and "
              f"--temperature 0 is greedy: give a temperature > 0 to sample", file=sys.stderr)
    rules = StopRules(args.stop_at, args.max_lines, starts, syllables)
    logits, state = warm_up(model, encode_prefix(vocab, prefix, args.unk))
    chunks = stream_after(model, vocab, logits, state, k, options, rules, args.num_samples,
                          before=prefix[-1:])
    next_chars = top_chars(vocab, logits, args.top_n)
    first = next(chunks, None)  # errors in the rules (e.g. a character the vocab lacks) come before any output
    print(f"prefix: {prefix!r}")
    print(f"next character (top {len(next_chars)}):")
    for ch, prob in next_chars:
        print(f"  {char_shown(ch):>8}  {prob:.4f}")
    print(_describe(args, k, args.num_samples, args.precision == "bf16" and k > 0 and bf16_steps(model), syllables))
    _write_samples(prefix, itertools.chain([first] if first is not None else [], chunks), args.num_samples,
                   sys.stdout)
    return 0


def _write_samples(prefix: str, chunks, n: int, out) -> None:
    """One sample: written chunk by chunk as it is generated (flushed, so a terminal shows it
    growing; piped output is the same text). Several: generated together, then printed in turn."""
    if n == 1:
        last = prefix
        out.write(prefix)
        for chunk in chunks:
            out.write(chunk[0])
            out.flush()
            last = chunk[0] or last
        out.write("" if last.endswith("\n") else "\n")
        return
    texts: list[list[str]] = [[] for _ in range(n)]
    for chunk in chunks:
        for pieces, text in zip(texts, chunk):
            pieces.append(text)
    for i, pieces in enumerate(texts):
        text = prefix + "".join(pieces)
        out.write(f"--- sample {i + 1}\n{text}" + ("" if text.endswith("\n") else "\n"))
