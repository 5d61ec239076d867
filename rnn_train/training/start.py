"""How a run starts from a checkpoint: `--resume` continues it, `--init-from` fine-tunes its weights.

    --resume RUN      the same run, continued: its stored config (overrides may extend limits), its
                      weights, optimiser, schedule, counters, carried state and RNG. The data keys
                      are fixed (they define the batches; data.paths may name the same text where it
                      lies now) and so is the model. Ends exactly where an uninterrupted run would.
    --init-from CK    a new run (step 0, fresh optimiser and schedule, its own config and corpus) whose
                      weights and vocab come from CK. The model's shape keys must match CK's; a
                      character of the new corpus outside CK's vocab becomes <unk>.

The checks here are pure comparisons of configs, made before anything is deleted or written.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from rnn_train.config import Config
from rnn_train.errors import UserError
from rnn_train.model.charrnn import DTYPES
from rnn_train.model.checkpoint import load_checkpoint
from rnn_train.training.protocol import Learner
from rnn_train.training.rundir import RunDir, config_changes, normalised
from rnn_train.runtime import derived_seed
from rnn_train.training.state import RunState, restore_rng, state_to
from rnn_train.training.world import World

SHAPE_KEYS = ("model.cell", "model.hidden_size", "model.num_layers", "model.embedding", "model.embed_dim")
"""Model keys that change the weights' shapes: a checkpoint's weights fit only the same values."""


def _saved(ckpt: dict[str, Any]) -> dict[str, Any]:
    return normalised(ckpt["config"], "the checkpoint's config")


RUN_KEYS = ("data", "model", "train.seed")
"""What makes a run the run it is: the data keys define its batches, the model keys its weights
(model.kernel, the path that computes them, excepted), train.seed its random draws (the generators'
states are restored, so a new seed would only misname the run)."""
RESUME_FIXED = (*RUN_KEYS, "log.dir", "log.name")
"""What --resume's overrides cannot change: RUN_KEYS, and log.dir and log.name, where it lives. The
limits, the schedule, the optimiser and its settings and the logging can change."""


def _changed(old: dict[str, Any], new: dict[str, Any], keys: tuple[str, ...], free: tuple[str, ...] = ()) -> list[str]:
    """The dotted keys among `keys` whose values differ between two config dicts, but those in `free`."""
    return [key for key in (c.split(":")[0] for c in config_changes(old, new, keys=keys)) if key not in free]


def check_resume_config(ckpt: dict[str, Any], cfg: Config) -> None:
    """One line naming every override of a RESUME_FIXED key (nothing is written). `data.paths` may
    name the corpus where it lies now when the checkpoint records its digest: the trainer then
    refuses a text that is not the same (data.dataset.changed_since)."""
    free = ("model.kernel", "data.paths") if ckpt.get("corpus_sha256") else ("model.kernel",)
    saved = _saved(ckpt)
    if os.path.normpath(str(saved.get("log", {}).get("dir"))) == os.path.normpath(cfg.log.dir):
        free += ("log.dir",)  # the same directory spelt otherwise: ./runs, runs/
    changed = _changed(saved, cfg.to_dict(), RESUME_FIXED, free)
    if changed:
        raise UserError(f"{', '.join(changed)} cannot change on --resume (the data keys define the run's batches, "
                        f"the model keys its weights, train.seed its random draws, log.dir and log.name where it "
                        f"lives); start a new run "
                        f"instead (--config with --init-from this run starts from its weights)")


def check_own_run(rd: RunDir, ckpt: dict[str, Any]) -> None:
    """A resume writes into `rd`: refuse a directory that holds another run (its config.yaml and the
    checkpoint's config differ in RUN_KEYS; not in data.paths, which may name the same text
    elsewhere, nor in model.kernel)."""
    stored = rd.stored_config()
    if stored is None or not rd.holds_run():
        return
    try:
        saved = _saved(ckpt)
    except (UserError, KeyError, TypeError):
        return  # load_checkpoint checked it; resume_state names a damaged one
    differ = _changed(stored, saved, RUN_KEYS, ("data.paths", "model.kernel"))
    if differ:
        raise UserError(f"{rd} holds another run ({', '.join(differ)} differ from the checkpoint's); resume a "
                        f"checkpoint in its own run directory (or replace that run: clear=True from Python)")


def check_best(rd: RunDir) -> None:
    """A resumed run is reported with its best.pt (the test split is scored with it; the last line
    names it): a damaged one is said before anything is written, where it was found after the
    training, with the run's metrics.json already set aside."""
    if rd.best.is_file():
        try:
            load_checkpoint(rd.best)
        except UserError as e:
            raise UserError(f"{e}; it is this run's best.pt: restore it, or move it away to resume "
                            f"without it") from None


def check_init_config(ckpt: dict[str, Any], cfg: Config, source: str) -> None:
    """--init-from: the config's model must have the checkpoint's shape (one line naming the keys)."""
    saved, mine = _saved(ckpt), cfg.to_dict()
    one_hot = saved["model"].get("embedding") == mine["model"]["embedding"] == "one_hot"
    keys = tuple(k for k in SHAPE_KEYS if not (one_hot and k == "model.embed_dim"))  # no weights of that size then
    changed = config_changes(saved, mine, keys=keys)
    if changed:
        raise UserError(f"--init-from {source}: the config's model does not fit the checkpoint's weights "
                        f"({'; '.join(changed)}); set them as the checkpoint has them")


def _weights_do_not_fit(ckpt: dict[str, Any], cfg: Config) -> UserError:
    changed = _changed(_saved(ckpt), cfg.to_dict(), ("model",))
    return UserError("the checkpoint's weights do not fit this config's model"
                     + (f" ({', '.join(changed)} changed; keep them as saved)" if changed else ""))


def resume_state(learner: Learner, ckpt: dict[str, Any], cfg: Config, device: torch.device,
                 world: World = World()) -> tuple[RunState, str]:
    """Load weights and optimiser into `learner`, restore the RNG; the RunState to continue from,
    holding this rank's rows of the saved (global) hidden state, and a note for the user ("" if
    none: where train.optimizer changed to another kind, whose state starts fresh)."""
    try:
        carried = learner.load_state_dict({"model": ckpt["model"], "optimizer": ckpt["optimizer"]})
    except (KeyError, RuntimeError, ValueError):
        raise _weights_do_not_fit(ckpt, cfg) from None
    except (TypeError, AttributeError, IndexError) as e:  # an optimizer state that is not one
        raise _damaged("optimizer state", e) from None
    try:
        state = RunState.from_checkpoint(ckpt)
        state.hidden = world.state_rows(state_to(state.hidden, device, DTYPES[cfg.model.dtype]))
        restore_rng(state.rng, device, world.rank, world.size, derived_seed(cfg.train.seed, world.rank, state.step))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as e:
        raise _damaged("run state (counters, schedule, hidden state, random generators)", e) from None
    note = "" if carried else (f"train.optimizer is {cfg.train.optimizer}, the run trained with "
                               f"{_saved(ckpt)['train'].get('optimizer', 'another')}: the optimiser's state "
                               "(momentum or moments) starts fresh; the weights, schedule and counters go on")
    return state, note


def _damaged(what: str, error: Exception) -> UserError:
    """The one line of a checkpoint that load_checkpoint took but whose `what` cannot be resumed
    from (a file edited or damaged after training wrote it)."""
    reason = f"{error.__class__.__name__}: {str(error).splitlines()[0][:120]}" if str(error) else error.__class__.__name__
    return UserError(f"the checkpoint's {what} is damaged ({reason}); resume from another checkpoint, or start "
                     f"a new run from its weights (--config ... --init-from)")


def init_weights(learner: Learner, ckpt: dict[str, Any], cfg: Config, source: str) -> None:
    """Copy a checkpoint's weights into a freshly built learner (its optimiser stays fresh)."""
    check_init_config(ckpt, cfg, source)
    try:
        learner.torch_model().load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError, ValueError):
        raise _weights_do_not_fit(ckpt, cfg) from None
