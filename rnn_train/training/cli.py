"""`rnn-train train` / `python train.py`: train a character-level RNN/GRU/LSTM from a YAML recipe.

    python train.py --config configs/pinyin_gru.yaml [section.key=value ...]
    python train.py --resume runs/pinyin_gru [train.max_steps=4000]
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

from rnn_train.cli import ArgumentParser
from rnn_train.config import build_config, load_config
from rnn_train.data.dataset import prepare_data
from rnn_train.data.vocab import Vocab
from rnn_train.errors import UserError
from rnn_train.model.checkpoint import load_checkpoint, resolve_checkpoint


def main(argv: list[str] | None = None, prog: str = "train.py") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__.split("\n")[0].split(": ", 1)[1])
    ap.add_argument("--config", help="YAML recipe (see configs/)")
    ap.add_argument("--resume", metavar="RUN_DIR_OR_CKPT", help="continue a run from its last.pt (or a given .pt)")
    ap.add_argument("--force", action="store_true", help="start afresh even if the run directory holds a run")
    ap.add_argument("--quiet", action="store_true", help="print only the final summary and errors")
    ap.add_argument("--cache-dir", default="data/cache", help="where converted corpora are cached (default data/cache)")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.lr=0.5 model.cell=rnn")
    args = ap.parse_intermixed_args(argv)  # overrides may come before or after options
    if not args.config and not args.resume:
        ap.error("give --config FILE (a new run) or --resume RUN_DIR (continue one)")
    if args.config and args.resume:
        ap.error("--resume takes the config stored in the checkpoint; drop --config and pass overrides instead")

    # after argument checks: importing torch takes a second
    from rnn_train.runtime import resolve_device
    from rnn_train.training.trainer import clear_run_files, train

    resume = None
    if args.resume:
        ckpt_path = resolve_checkpoint(args.resume, prefer="last.pt")
        resume = load_checkpoint(ckpt_path)
        if Path(args.resume).is_dir() and ckpt_path.name != "last.pt":
            print(f"note: {args.resume} has no last.pt; resuming from {ckpt_path.name} at step {resume['step']}",
                  file=sys.stderr)
        cfg = build_config(resume["config"], args.overrides, source=f"{ckpt_path} + overrides")
        saved_data = build_config(resume["config"], source=str(ckpt_path)).data
        changed = [f"data.{k}" for k, v in vars(cfg.data).items() if getattr(saved_data, k) != v]
        if changed:
            raise UserError(f"{', '.join(changed)} cannot change on --resume: the run's batches are defined by "
                            f"them; start a new run (log.name=...) instead")
        run_dir = ckpt_path.parent
        data = prepare_data(cfg.data, Path(args.cache_dir), Vocab.from_list(resume["vocab"]))
    else:
        cfg = load_config(args.config, args.overrides)
        run_dir = Path(cfg.log.dir) / cfg.log.name
        existing = [f for f in ("best.pt", "last.pt", "metrics.json", "config.yaml") if (run_dir / f).exists()]
        if any(f.endswith(".pt") for f in existing) and not args.force:
            raise UserError(f"{run_dir} already holds a run ({', '.join(existing)}); continue it with "
                            f"--resume {run_dir}, pick another log.name=..., or overwrite with --force")
        data = prepare_data(cfg.data, Path(args.cache_dir))  # user errors surface before anything is deleted
        resolve_device(cfg.train.device)
        if args.force:
            clear_run_files(run_dir)

    result = train(cfg, run_dir, resume=resume, quiet=args.quiet, cache_dir=Path(args.cache_dir), data=data)
    if result.interrupted:
        print(f"interrupted at step {result.step}: checkpoint saved to {run_dir / 'last.pt'}; "
              f"continue with: python train.py --resume {run_dir}", flush=True)
        return 130
    best = run_dir / "best.pt"
    if result.stopped_by == "diverged":
        kept = f"; the checkpoints of step <= {result.step} before it are kept" if best.exists() else ""
        print(f"diverged at step {result.step}: the loss is not finite (lower train.lr, set train.clip_norm){kept}")
        return 1
    val = f"val loss {result.val_loss:.4f} (ppl {result.val_ppl:.3f}, {result.val_bpc:.3f} bpc)" \
        if math.isfinite(result.val_loss) else "no validation split"
    if math.isfinite(result.test_loss):
        val += f"; test loss {result.test_loss:.4f} (ppl {result.test_ppl:.3f})"
    print(f"done: {result.step} steps, {result.tokens:,} tokens in {result.train_seconds:.1f}s "
          f"({result.tokens_per_s:,.0f} tok/s), stopped by {result.stopped_by}; {val}; best checkpoint {best}")
    if not args.quiet:
        print(f"predict with: python predict.py --checkpoint {best} --prefix \"...\" -k 50")
    return 0

