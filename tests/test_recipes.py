"""Recipes are found by name from any directory, listed one line each, and a wrong name suggests the right one."""
import os
import subprocess
import sys

import pytest

from rnn_train.config import load_config
from rnn_train.errors import UserError
from rnn_train.recipes import description, find_recipe, recipe_dir, recipe_names, recipes_epilog, resolve_recipe
from tests.helpers import ROOT


def rnn_train(*args, cwd):
    return subprocess.run([sys.executable, "-m", "rnn_train", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_the_recipes_are_the_files_of_configs():
    assert recipe_dir().resolve() == (ROOT / "configs").resolve()  # the checkout: configs/ is the one source
    assert recipe_names() == sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    assert {"debug", "pinyin_gru", "timemachine_gru", "shakespeare_gru"} <= set(recipe_names())


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")))
def test_every_recipe_opens_with_a_one_line_description(name):
    path = ROOT / "configs" / f"{name}.yaml"
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# ") and description(path) == first[2:].strip()
    assert 20 <= len(description(path)) <= 100, description(path)


def test_resolution_prefers_an_existing_path_then_a_recipe_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_recipe("debug") == resolve_recipe("debug.yaml") == recipe_dir() / "debug.yaml"
    mine = tmp_path / "mine.yaml"
    mine.write_text("train:\n  max_steps: 1\n")
    assert resolve_recipe("mine.yaml") == mine.relative_to(tmp_path) and resolve_recipe(mine) == mine
    (tmp_path / "debug").mkdir()  # a directory named like a recipe does not hide it
    assert resolve_recipe("debug") == recipe_dir() / "debug.yaml"
    (tmp_path / "debug.yaml").write_text("")
    assert resolve_recipe("debug.yaml").resolve() == (tmp_path / "debug.yaml").resolve()
    assert find_recipe("debug.yaml") == recipe_dir() / "debug.yaml"  # `recipes NAME` never reads the cwd


@pytest.mark.parametrize("given, message", [
    ("pinyn_gru", r"unknown recipe 'pinyn_gru' \(did you mean pinyin_gru\?\)"),
    ("timemachine", r"unknown recipe 'timemachine' \(did you mean timemachine_gru\?\)"),
    ("zzz", r"unknown recipe 'zzz'; .* recipes` lists them"),
    ("nowhere.yaml", r"config file nowhere\.yaml does not exist$"),
    ("configs/debug.yaml", r"configs/debug\.yaml does not exist \(the packaged recipe of that name is --config debug\)"),
    ("a/b/pinyin_gru.yml", r"does not exist \(the packaged recipe of that name is --config pinyin_gru\)"),
])
def test_a_wrong_name_or_path_is_one_user_error(given, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here, as outside the checkout
    with pytest.raises(UserError, match=message) as e:
        resolve_recipe(given)
    assert "\n" not in str(e.value)


def test_epilog_names_the_subcommand_and_every_recipe():
    text = recipes_epilog()
    assert "rnn-train train" in text and "python -m rnn_train train" in text
    for name in recipe_names():
        assert f"  {name} " in text


def test_recipes_command_lists_one_line_each_and_prints_one(tmp_path):
    out = rnn_train("recipes", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines] == recipe_names()
    assert any(line.startswith("timemachine_gru") and "download timemachine" in line for line in lines)
    shown = rnn_train("recipes", "pinyin_gru", cwd=tmp_path)
    assert shown.stdout == (ROOT / "configs" / "pinyin_gru.yaml").read_text(encoding="utf-8")
    assert load_config(ROOT / "configs" / "pinyin_gru.yaml") == load_config("pinyin_gru")


def test_unknown_recipe_from_the_train_command_is_one_line_with_status_2(tmp_path):
    said = "error: unknown recipe 'pinyn_gru' (did you mean pinyin_gru?); `python -m rnn_train recipes` lists them"
    for argv, tail in ((["recipes", "pinyn_gru"], ""),  # `recipes NAME` takes names only
                       (["train", "--config", "pinyn_gru", f"log.dir={tmp_path}"], ", or give a path to a YAML file")):
        out = rnn_train(*argv, cwd=tmp_path)
        assert out.returncode == 2
        assert out.stderr.strip().splitlines() == [said + tail]
    assert not list(tmp_path.iterdir())  # nothing written


def test_dispatcher_without_a_command_is_one_error_line_naming_them_and_a_typo_suggests(tmp_path):
    out = rnn_train(cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == "" and len(out.stderr.splitlines()) == 1
    assert out.stderr.startswith("error: no command given") and "recipes" in out.stderr and "download" in out.stderr
    typo = rnn_train("recipe", cwd=tmp_path)
    assert typo.returncode == 2 and "did you mean recipes?" in typo.stderr and len(typo.stderr.splitlines()) == 1
