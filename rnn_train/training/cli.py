"""`rnn-train train` / `python train.py`: train a character-level RNN/GRU/LSTM from a YAML recipe.

    python train.py --config configs/pinyin_gru.yaml [section.key=value ...]
    python train.py --resume runs/pinyin_gru [train.max_steps=4000]
    python train.py --config configs/shakespeare_gru.yaml --init-from runs/pinyin_gru/best.pt data.paths=...
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import signal
import sys
import threading
from pathlib import Path

from rnn_train.cli import ArgumentParser, Once, report
from rnn_train.files import output_arg, shell_word
from rnn_train.config import build_config, load_config
from rnn_train.model.checkpoint import load_checkpoint, resolve_checkpoint
from rnn_train.training.schedule import ppl_text

EPILOG = """\
--resume RUN continues the same run: its stored config (overrides may extend the limits, e.g.
  train.max_steps, or change the schedule, the optimiser and the logging), weights, optimiser,
  schedule, position in the epoch and RNG; it ends exactly where an uninterrupted run would. The
  data keys (but data.paths, where it names byte-identical files elsewhere), the model (but
  model.kernel), train.seed and where the run lives cannot change.
--init-from CK starts a new run (step 0, fresh optimiser and schedule) with --config's settings
  and corpus, from CK's weights and vocab (fine-tuning). The model's shape keys (cell,
  hidden_size, num_layers, embedding, embed_dim) must be CK's; characters of the new corpus that
  CK's vocab lacks read as <unk>, and their count is reported.
"""


def _parse(argv: list[str] | None, prog: str):
    from rnn_train.recipes import recipes_epilog

    ap = ArgumentParser(prog=prog, description=__doc__.split("\n")[0].split(": ", 1)[1],
                        epilog=f"{EPILOG}\n{recipes_epilog()}",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action=Once, help="a recipe by name (`recipes` lists them) or a YAML file")
    ap.add_argument("--resume", metavar="RUN_DIR_OR_CKPT", help="continue a run from its last.pt (or a given .pt)")
    ap.add_argument("--init-from", metavar="CKPT", help="start a new run from this checkpoint's weights and vocab")
    ap.add_argument("--force", action="store_true", help="start afresh even if the run directory holds a run")
    ap.add_argument("--quiet", action="store_true", help="print only the final summary and errors")
    ap.add_argument("--cache-dir", default="data/cache", type=output_arg,
                    help="the corpus cache: pinyin conversions and prepared token files (default data/cache)")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.lr=0.5 model.cell=rnn")
    args = ap.parse_intermixed_args(argv)  # overrides may come before or after options
    if args.init_from and not args.config:
        ap.error("--init-from starts a new run: give its --config (to continue a run, use --resume alone)")
    if not args.config and not args.resume:
        ap.error("give --config FILE (a new run) or --resume RUN_DIR (continue one)")
    if args.config and args.resume:
        ap.error("--resume takes the config stored in the checkpoint; drop --config and pass overrides instead")
    if args.force and args.resume:
        ap.error("--force starts a run afresh and --resume continues one: give one of them")
    return args


def main(argv: list[str] | None = None, prog: str = "train.py") -> int:
    """SIGTERM is Ctrl-C for the whole command: in the training loop both save last.pt and stop
    (the trainer's own handler); before it (imports, corpus preparation) and after it (the test
    split, metrics.json) both are `error: interrupted` and status 130, where SIGTERM's default
    would end the process silently with -15."""
    # only over the default: a SIGTERM ignored by whoever started us (or a handler of a library
    # caller's) stays as it was; and only from the main thread, where signals are handled
    ours = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    if ours:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return _main(argv, prog)
    finally:  # put back, unless a finished torchrun rank has just set it to be ignored (see _main)
        if ours and signal.getsignal(signal.SIGTERM) is signal.default_int_handler:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _main(argv: list[str] | None, prog: str) -> int:
    from rnn_train.training.distributed import world_from_env

    world = world_from_env()  # rank 0 of 1 without torchrun
    with _quiet_unless(world.is_writer):  # a usage error is printed once, by rank 0
        args = _parse(argv, prog)
    # after argument checks: importing torch takes a second
    from rnn_train.errors import UserError
    from rnn_train.training.distributed import leave, process_group
    from rnn_train.training.trainer import train

    try:
        with process_group(world), contextlib.ExitStack() as held:  # held: rank 0's lock on the run directory
            cfg, run_dir, resume = world.from_writer(lambda: _setup(args, held))
            # --force deletes the earlier run inside `train`, after every check of the corpus, device and checkpoint;
            # so does a new start where a run died before its first checkpoint (its event files would mix in)
            clear = not resume and (args.force or not run_dir.holds_run())
            result = train(cfg, run_dir.path, resume=resume, init_from=args.init_from, clear=clear,
                           quiet=args.quiet, cache_dir=Path(args.cache_dir), world=world)
            status = _summary(result, run_dir, args.quiet, world, prog) if world.is_writer else _status(result)
            world.barrier()  # no rank exits (torchrun then stops the others) before rank 0 has saved and printed
            if world.distributed:  # done: the status is the run's, not that of torchrun stopping a finished rank
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except UserError as e:
        if not world.distributed:
            raise  # printed as one line `error: ...` by rnn_train.cli.run
        status = report(e) if world.is_writer else 2  # the other ranks: the same error, printed by rank 0
    except RuntimeError as e:
        if not (world.distributed and _peer_gone(e)):
            raise
        # a rank that ended first (its own error, a kill, Ctrl-C while preparing) closed its connections:
        # what happened is in that rank's output and torchrun's summary, not in this rank's traceback
        if world.is_writer:
            print("error: another process of this job stopped first (its output above, or torchrun's summary, "
                  "says why); the run directory holds the last checkpoint it saved", file=sys.stderr)
        status = 1
    if world.distributed:
        leave(status)  # without the interpreter's shutdown, where torch's gloo threads can abort a finished rank
    return status


def _peer_gone(error: RuntimeError) -> bool:
    """Whether a collective failed because another rank's process ended (gloo closes its sockets)."""
    text = str(error)
    return "Connection closed by peer" in text or "Connection reset by peer" in text


@contextlib.contextmanager
def _quiet_unless(speak: bool):
    if speak:
        yield
    else:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield


def _setup(args, held: contextlib.ExitStack):
    """(config, run directory, checkpoint to resume or None) from the command line; on rank 0 only,
    with several processes (the others receive it), so only rank 0 needs the config file, the run
    directory and its checkpoints."""
    from rnn_train.errors import UserError
    from rnn_train.runfiles import LAST
    from rnn_train.training.rundir import RunDir, claimed

    resume = None
    if args.resume:
        ckpt_path = resolve_checkpoint(args.resume, prefer=LAST)
        run_dir = RunDir(ckpt_path.parent)
        held.enter_context(claimed(run_dir.path))  # before reading: a training writing it would move past it
        resume = load_checkpoint(ckpt_path)
        if Path(args.resume).is_dir() and ckpt_path.name != LAST:
            print(f"note: {args.resume} has no last.pt; resuming from {ckpt_path.name} at step {resume['step']}",
                  file=sys.stderr)
        cfg = build_config(resume["config"], args.overrides, source=f"{ckpt_path} + overrides")
    else:
        cfg = load_config(args.config, args.overrides)
        run_dir = RunDir(Path(cfg.log.dir) / cfg.log.name)
        held.enter_context(claimed(run_dir.path))  # before the check: two starts cannot both pass it
        if run_dir.holds_run() and not args.force:
            raise UserError(f"{run_dir} already holds a run ({', '.join(run_dir.existing())}); continue it with "
                            f"--resume {shell_word(run_dir)}, pick another log.name=..., or overwrite with --force")
    return cfg, run_dir, resume


def _status(result) -> int:
    """The exit status: 0 done, 1 diverged, 130 interrupted."""
    if result.interrupted:
        return 130
    return 1 if result.stopped_by == "diverged" else 0


def _summary(result, run_dir, quiet: bool, world, prog: str) -> int:
    """The last line(s) of a run, and the exit status (`_status`); `prog` is how the user called us."""
    if result.interrupted:
        script = prog.endswith(".py")  # train.py, else `rnn-train train` / `python -m rnn_train train`
        if world.distributed:  # one machine: --standalone; several: the user's own rendezvous options
            launcher = ("torchrun --standalone" if world.size == world.local_size
                        else "torchrun (your --nnodes/--rdzv options)")
            again = f"{launcher} --nproc_per_node={world.local_size} {prog if script else '-m rnn_train train'}"
        else:
            again = f"python {prog}" if script else prog
        print(f"interrupted at step {result.step}: checkpoint saved to {run_dir.last}; "
              f"continue with: {again} --resume {shell_word(run_dir)}", flush=True)
        return _status(result)
    if result.stopped_by == "diverged":
        kept = f"; the checkpoints of step <= {result.step} before it are kept" if run_dir.best.exists() else ""
        print(f"diverged at step {result.step}: the loss is not finite (lower train.lr, set train.clip_norm){kept}")
        return _status(result)
    val = f"val loss {result.val_loss:.4f} (ppl {ppl_text(result.val_ppl)}, {result.val_bpc:.3f} bpc)" \
        if math.isfinite(result.val_loss) else "no validation split"
    if math.isfinite(result.test_loss):
        val += f"; test loss {result.test_loss:.4f} (ppl {ppl_text(result.test_ppl)})"
    # a run resumed from a lone last.pt that never beat its best has no best.pt here: name what exists
    best = run_dir.best if run_dir.best.exists() else run_dir.last
    print(f"done: {result.step} steps, {result.tokens:,} tokens in {result.train_seconds:.1f}s "
          f"({result.tokens_per_s:,.0f} tok/s), stopped by {result.stopped_by}; {val}; "
          f"{'best' if best == run_dir.best else 'last'} checkpoint {best}")
    if not quiet:
        predict = "python predict.py" if prog.endswith(".py") else prog.rsplit(" ", 1)[0] + " predict"
        print(f"predict with: {predict} --checkpoint {shell_word(best)} --prefix \"...\" -k 50")
    return 0
