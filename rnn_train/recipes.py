"""Recipes: the YAML files of configs/, found by name from any directory.

    rnn-train recipes                 one line per recipe (its first comment line)
    rnn-train recipes pinyin_gru      the recipe's YAML, to read or to copy and edit
    rnn-train train --config debug    a recipe by name; a path to your own YAML works the same

Why here and not in config.py: a recipe name is resolved in one place for every command that takes
`--config` (train, sweep, bench), and the listing is also the epilog of `train.py --help`.

configs/ is the single source. In the checkout it sits beside the package; `pip install .` maps it
into the package as `rnn_train/configs` (pyproject.toml `package-dir`), so nothing is copied by hand.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path

from rnn_train.cli import program
from rnn_train.errors import UserError

_PACKAGE = Path(__file__).resolve().parent
_SUFFIXES = (".yaml", ".yml")


def recipe_dir() -> Path:
    """Where the recipes are: inside the installed package, else configs/ of the checkout."""
    installed = _PACKAGE / "configs"
    return installed if installed.is_dir() else _PACKAGE.parent / "configs"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def description(path: Path) -> str:
    """The recipe's first comment line, which each file in configs/ keeps as its one-line summary."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            return line.strip().lstrip("#").strip() if line.lstrip().startswith("#") else ""
    return ""


def _looks_like_a_name(text: str) -> bool:
    return "/" not in text and "\\" not in text


def find_recipe(name: str, paths_too: bool = True) -> Path:
    """The packaged recipe called `name` (`debug` or `debug.yaml`), or a UserError suggesting the closest
    (and, where the caller also takes a file, `paths_too`, saying a path works)."""
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix in _SUFFIXES else name
    path = recipe_dir() / f"{stem}.yaml"
    if _looks_like_a_name(name) and os.path.isfile(path):  # False, not ENAMETOOLONG, for a long name
        return path
    close = difflib.get_close_matches(stem, recipe_names(), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise UserError(f"unknown recipe {name!r}{hint}; `{program()} recipes` lists them"
                    + (", or give a path to a YAML file" if paths_too else ""))


def resolve_recipe(name_or_path: str | Path) -> Path:
    """A file that exists wins; else a bare name (`debug`, `debug.yaml`) is a packaged recipe.

    Anything else is a UserError: an unknown name suggests the closest recipe; a missing path says
    so, and when its file name is a recipe's, how to take the packaged one instead (a README command
    `--config configs/debug.yaml` run outside the checkout). A directory that happens to bear a
    recipe's name (a run called debug/) does not hide the recipe.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    packaged = recipe_dir() / f"{path.stem}.yaml"
    if _looks_like_a_name(text) and (os.path.isfile(packaged) or (path.suffix not in _SUFFIXES and not path.exists())):
        return find_recipe(text)
    if path.exists():
        return path  # not a file: load_config says what it is
    also = f" (the packaged recipe of that name is --config {path.stem})" if os.path.isfile(packaged) else ""
    raise UserError(f"config file {text} does not exist{also}")


def resolve_space(name_or_path: str | Path) -> Path:
    """A search space file for `tune --space`: a path that exists, else a packaged space by name
    (configs/spaces/, shipped with the recipes: `--space shakespeare_10min`). A missing path is
    returned as it is (the reader says it does not exist), with, where its file name is a packaged
    space's, how to take that one instead (the README's `--space configs/spaces/...` run outside
    the checkout)."""
    path = Path(name_or_path)
    stem = path.stem if path.suffix in _SUFFIXES else path.name
    packaged = recipe_dir() / "spaces" / f"{stem}.yaml"
    if path.exists() or not os.path.isfile(packaged):
        return path
    if _looks_like_a_name(str(name_or_path)):
        return packaged
    raise UserError(f"search space file {path} does not exist (the packaged space of that name is --space {stem})")


def space_names() -> list[str]:
    return sorted(p.stem for p in (recipe_dir() / "spaces").glob("*.yaml"))


def recipe_table(indent: str = "  ") -> str:
    """`name  description` for every recipe, one line each, names aligned."""
    names = recipe_names()
    width = max(map(len, names), default=0)
    return "\n".join(f"{indent}{n:<{width}}  {description(recipe_dir() / f'{n}.yaml')}" for n in names)


def recipes_epilog() -> str:
    """The end of `train.py --help`: the equivalent subcommand and the recipes `--config` takes by name."""
    return ("one command, three spellings: `rnn-train train` (after `pip install .`), `python -m rnn_train train`, "
            "`python train.py`\n\n"
            "recipes (--config NAME, or a path to a YAML file; `rnn-train recipes NAME` prints one):\n"
            f"{recipe_table()}")


def main(argv: list[str] | None = None, prog: str = "python -m rnn_train recipes") -> int:
    """`rnn-train recipes [NAME]`: list the recipes, or print one (to copy into your own YAML)."""
    from rnn_train.cli import ArgumentParser

    ap = ArgumentParser(prog=prog, description="List the packaged recipes (configs/*.yaml), or print one.")
    ap.add_argument("name", nargs="?", help="print this recipe's YAML (e.g. `%(prog)s pinyin_gru > mine.yaml`)")
    args = ap.parse_args(argv)
    if args.name is None:
        print(recipe_table(indent=""))
        return 0
    print(find_recipe(args.name, paths_too=False).read_text(encoding="utf-8"), end="")
    return 0
