"""`rnn-train predict` / `python predict.py`: the next character and a K-character continuation of a prefix.

    python predict.py --checkpoint runs/pinyin_gru/best.pt --prefix "zhong guo" -k 50
    python predict.py --checkpoint runs/pinyin_gru --prefix "ni hao" --temperature 0.8 --top-k 5 --seed 1
"""
from __future__ import annotations

from rnn_train.cli import ArgumentParser


def pinyin_prefix(prefix: str, cfg) -> str:
    """A pinyin model given a prefix in Chinese characters: convert it the way its corpus was."""
    from rnn_train.data.corpus import contains_han, hanzi_to_pinyin

    if cfg.data.kind != "pinyin" or not contains_han(prefix):
        return prefix
    converted = hanzi_to_pinyin(prefix, cfg.data.tones).rstrip("\n")
    # the converter ends every syllable run without a trailing space; a prefix usually continues
    return converted + " " if prefix[-1:] == " " or contains_han(prefix[-1]) else converted


def main(argv: list[str] | None = None, prog: str = "predict.py") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__.split("\n")[0].split(": ", 1)[1])
    ap.add_argument("--checkpoint", required=True, help="a .pt file or a run directory (uses its best.pt)")
    ap.add_argument("--prefix", required=True,
                    help="text to warm the state up on; for a pinyin model, Chinese characters are converted "
                         "to pinyin like its corpus (followed by a space: the next syllable starts)")
    ap.add_argument("-k", type=int, default=50, help="characters to generate (default 50)")
    ap.add_argument("--top-n", type=int, default=5, help="next-character candidates to list (default 5)")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    ap.add_argument("--top-k", type=int, default=0, help="sample among the k most likely only (0 = all)")
    ap.add_argument("--seed", type=int, default=None, help="seed for sampling (reproducible output)")
    ap.add_argument("--unk", choices=["error", "replace"], default="error",
                    help="a prefix character missing from the vocab: error (default) or replace with <unk>")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="default cpu")
    args = ap.parse_args(argv)
    if args.k < 0 or args.top_n < 1 or args.top_k < 0 or not 0 <= args.temperature < float("inf"):
        ap.error("-k, --top-k and --temperature must be >= 0 (temperature finite) and --top-n >= 1")

    from rnn_train.model.checkpoint import load_model
    from rnn_train.prediction.generate import predict
    from rnn_train.runtime import resolve_device

    model, vocab, cfg, _ = load_model(args.checkpoint, resolve_device(args.device, "--device"))
    prefix = pinyin_prefix(args.prefix, cfg)
    if prefix != args.prefix:
        print(f"prefix in Chinese characters converted to pinyin like the corpus ({cfg.data.tones} tones)")
    args.prefix = prefix
    p = predict(model, vocab, args.prefix, args.k, args.top_n, args.temperature, args.top_k, args.seed, args.unk)
    print(f"prefix: {p.prefix!r}")
    print(f"next character (top {len(p.next_chars)}):")
    for ch, prob in p.next_chars:
        print(f"  {ch!r:>8}  {prob:.4f}")
    how = "greedy" if args.temperature == 0 else f"sampled, temperature {args.temperature}" + \
        (f", top-k {args.top_k}" if args.top_k else "") + (f", seed {args.seed}" if args.seed is not None else "")
    print(f"continuation ({how}, {args.k} chars):")
    print(p.prefix + p.continuation)
    return 0

