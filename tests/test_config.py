"""The config is typed, validated once, and a user's typo is never silently accepted."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rnn_train.config import Config, build_config, config_to_yaml, describe_fields, load_config
from rnn_train.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.log.name == path.stem


def test_required_recipes_exist_with_the_d2l_settings():
    names = {p.stem for p in (ROOT / "configs").glob("*.yaml")}
    assert {"pinyin_gru", "pinyin_rnn", "timemachine_gru", "shakespeare_gru", "debug"} <= names
    tm = load_config(ROOT / "configs" / "timemachine_gru.yaml")
    assert (tm.model.cell, tm.model.hidden_size, tm.data.batch_size, tm.data.num_steps) == ("gru", 256, 32, 35)
    assert (tm.train.optimizer, tm.train.lr, tm.train.clip_norm, tm.data.partition) == ("sgd", 1.0, 1.0, "sequential")
    assert load_config(ROOT / "configs" / "pinyin_gru.yaml").data.paths == []  # the built-in corpus


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(UserError, match=r"unknown key train\.lrr \(did you mean train\.lr\?\)"):
        build_config({"train": {"lrr": 0.1, "max_steps": 1}})


def test_unknown_section_is_reported():
    with pytest.raises(UserError, match=r"unknown section 'trian' \(did you mean train\?\)"):
        build_config({"trian": {"lr": 0.1}})


def test_all_problems_are_reported_together_with_dotted_paths():
    with pytest.raises(UserError) as e:
        build_config({"data": {"batch_size": 0, "partition": "shuffled"},
                      "model": {"cell": "lstmm", "dropout": 1.5},
                      "train": {"lr": "fast", "max_steps": 10, "clip": 1}})
    msg = str(e.value)
    for part in ("data.batch_size must be >= 1", "data.partition must be one of random | sequential",
                 "model.cell must be one of rnn | gru | lstm", "model.dropout must be in [0, 1)",
                 "train.lr must be a number", "unknown key train.clip"):
        assert part in msg
    assert "\n" not in msg  # one line


def test_wrong_types_are_rejected_not_coerced():
    for raw in ({"train": {"max_steps": 2.5}}, {"train": {"max_steps": True}}, {"log": {"tensorboard": "yes"}},
                {"data": {"paths": {"a": 1}}}):
        with pytest.raises(UserError):
            build_config(raw)


def test_a_number_beyond_float32_is_refused_by_name_not_left_to_overflow_in_training():
    """Training computes in float32: 1e39 would be inf there (a traceback from torch, before)."""
    for raw, key in (({"train": {"lr": 1e39, "max_steps": 5}}, "train.lr"),
                     ({"train": {"weight_decay": -1e300, "max_steps": 5}}, "train.weight_decay")):
        with pytest.raises(UserError, match=rf"{key} must be a number of float32's range \(\|x\| <= 3.4e38\)"):
            build_config(raw)
    assert build_config({"train": {"weight_decay": 3.0e38, "max_steps": 5}}).train.weight_decay == 3.0e38


def test_a_learning_rate_past_any_use_is_refused_before_the_optimizer_overflows():
    """Adam's first update at lr 4e37 overflowed float32 inside torch (a traceback, before)."""
    with pytest.raises(UserError, match=re.escape("train.lr must be in (0, 3e+37], got 4e+37")):
        build_config({"train": {"lr": 4e37, "max_steps": 5}})
    assert build_config({"train": {"lr": 3e37, "max_steps": 5}}).train.lr == 3e37  # and that diverges cleanly (tests/test_training.py)


def test_run_directory_names_the_file_system_cannot_take_are_refused_by_key():
    for log, key in (({"name": "a\0b"}, "log.name must be a plain directory name"),
                     ({"name": "x" * 256}, "log.name must be at most 255 bytes long, got 256"),
                     ({"dir": "runs\0"}, "log.dir must be a directory path"),
                     ({"dir": " "}, "log.dir must be a directory path (. for the current directory;"),
                     ({"dir": None}, "in YAML a bare ~ is null: write '~' for the home directory), got ''"),
                     # YAML's "\ud800": no byte of any name (os.fsencode raised UnicodeEncodeError measuring it)
                     ({"name": "\ud800"}, "log.name must be UTF-8 text (TensorBoard cannot write under it)")):
        with pytest.raises(UserError, match=re.escape(key)):
            build_config({"train": {"max_steps": 5}, "log": log})
    assert build_config({"train": {"max_steps": 5}, "log": {"name": "x" * 255, "dir": "."}}).log.dir == "."
    home = build_config({"train": {"max_steps": 5}, "log": {"dir": "~/my_runs"}}).log.dir  # as data.paths reads ~
    assert home == str(Path.home() / "my_runs")


def test_a_training_limit_is_required():
    with pytest.raises(UserError, match="set at least one limit"):
        build_config({})
    from rnn_train.config import TrainConfig

    with pytest.raises(UserError, match="set at least one limit"):  # a section built directly, from Python
        TrainConfig(max_steps=0)
    from rnn_train.config import DataConfig

    for one in ("book.txt", Path("book.txt")):  # one path, from Python: a list of it, as build_config makes it
        assert DataConfig(paths=one, kind="text").paths == ["book.txt"]


def test_overrides_are_converted_with_the_field_type_and_win_over_the_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  lr: 0.1\n  max_steps: 5\nmodel:\n  cell: gru\n")
    cfg = load_config(path, ["train.lr=3e-3", "model.cell=rnn", "train.max_steps=1e3", "log.tensorboard=false",
                             "data.paths=a.txt,b.txt"])
    assert cfg.train.lr == 0.003 and isinstance(cfg.train.lr, float)
    assert cfg.model.cell == "rnn"
    assert cfg.train.max_steps == 1000 and isinstance(cfg.train.max_steps, int)
    assert cfg.log.tensorboard is False
    assert cfg.data.paths == ["a.txt", "b.txt"]


def test_malformed_override_is_a_user_error():
    with pytest.raises(UserError, match="section.key=value"):
        build_config({"train": {"max_steps": 1}}, ["lr0.5"])
    with pytest.raises(UserError, match=r"unknown key train\.lrate"):
        build_config({"train": {"max_steps": 1}}, ["train.lrate=0.5"])


def test_a_problem_an_override_brought_names_the_override_not_the_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  lrr: 0.1\n  max_steps: 5\n")
    with pytest.raises(UserError) as e:
        load_config(path, ["train.bogus=1", "model.cell=lsmt", "trian.lr=1"])
    msg = str(e.value)
    assert msg.startswith(f"{path}: unknown key train.lrr (did you mean train.lr?)")  # the file's own typo
    for part in ("override 'train.bogus=1': unknown key train.bogus",
                 "override 'model.cell=lsmt': model.cell must be one of rnn | gru | lstm, got 'lsmt' (did you mean lstm?)",
                 "override 'trian.lr=1': unknown section 'trian' (did you mean train?)"):
        assert part in msg
    assert msg.count(str(path)) == 1 and "\n" not in msg
    path.write_text("train:\n  max_steps: 5\n")
    with pytest.raises(UserError) as e:  # a clean file is not named at all
        load_config(path, ["train.lr=fast"])
    assert str(e.value) == "override 'train.lr=fast': train.lr must be a number, got 'fast'"
    path.write_text("train:\n  max_steps: 5\ndata:\n  batch_size: 0\n")
    with pytest.raises(UserError) as e:  # a range problem goes to whoever set the key
        load_config(path, ["model.hidden_size=0"])
    assert str(e.value) == (f"{path}: data.batch_size must be >= 1, got 0; "
                            "override 'model.hidden_size=0': model.hidden_size must be >= 1, got 0")


def test_a_rule_over_two_sections_is_blamed_on_an_override_that_set_one_of_its_keys(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  max_steps: 5\n")
    with pytest.raises(UserError) as e:  # the file sets neither key
        load_config(path, ["train.precision=bf16", "model.dtype=float64"])
    assert str(e.value) == "override 'train.precision=bf16': train.precision=bf16 needs model.dtype=float32"
    path.write_text("train:\n  max_steps: 5\n  precision: bf16\n")
    with pytest.raises(UserError) as e:  # the file set one, the override the other
        load_config(path, ["model.dtype=float64"])
    assert str(e.value) == "override 'model.dtype=float64': train.precision=bf16 needs model.dtype=float32"
    path.write_text("train:\n  max_steps: 5\n  precision: bf16\nmodel:\n  dtype: float64\n")
    with pytest.raises(UserError) as e:  # the file alone
        load_config(path, ["model.cell=lstm"])
    assert str(e.value) == f"{path}: train.precision=bf16 needs model.dtype=float32"
    with pytest.raises(UserError) as e:
        load_config(None, ["model.backend=numpy", "train.max_steps=5"])
    assert str(e.value).startswith("override 'model.backend=numpy': model.backend=numpy updates with plain SGD")
    path.write_text("model:\n  backend: numpy\n  cell: rnn\ntrain:\n  max_steps: 5\n  optimizer: adam\n"
                    "  momentum: 0.9\n")
    with pytest.raises(UserError) as e:  # an override that mends part of it is not what breaks it
        load_config(path, ["train.optimizer=sgd"])
    assert str(e.value).startswith(f"{path}: model.backend=numpy updates with plain SGD")


def test_a_rule_over_two_keys_of_one_section_is_blamed_on_an_override_of_either(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  max_steps: 5\ndata:\n  val_fraction: 0.5\n")
    with pytest.raises(UserError) as e:
        load_config(path, ["data.test_fraction=0.5"])
    assert str(e.value).startswith("override 'data.test_fraction=0.5': data.val_fraction + data.test_fraction must "
                                   "be below 1")
    path.write_text("train:\n  max_steps: 5\ndata:\n  val_fraction: 0.5\n  test_fraction: 0.5\n")
    with pytest.raises(UserError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: data.val_fraction + data.test_fraction must be below 1")


def test_a_base_60_number_in_a_file_is_refused_as_on_the_command_line(tmp_path):
    """YAML 1.1 reads 1:30 as 90; the config reads it as the text it looks like, which is no number."""
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  max_time: 1:30\n  max_steps: 5\n")
    with pytest.raises(UserError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: train.max_time must be a number, got '1:30'"
    with pytest.raises(UserError) as e:
        load_config(None, ["train.max_time=1:30", "train.max_steps=5"])
    assert str(e.value) == "override 'train.max_time=1:30': train.max_time must be a number, got '1:30'"
    path.write_text("train:\n  max_time: 90\n  lr: 1_0\n")
    assert load_config(path).train.max_time == 90 and load_config(path).train.lr == 10  # other numbers as before


def test_a_value_that_does_not_convert_is_not_reported_again_through_a_rule_over_it():
    with pytest.raises(UserError) as e:  # the only limit does not convert: no second error that all are 0
        load_config(None, ["train.max_time=1:30"])
    assert str(e.value) == "override 'train.max_time=1:30': train.max_time must be a number, got '1:30'"
    with pytest.raises(UserError) as e:  # but a problem of another key that stands on its own is still said
        load_config(None, ["train.lr=abc", "train.min_lr=-1", "train.max_steps=5"])
    assert str(e.value) == ("override 'train.lr=abc': train.lr must be a number, got 'abc'; "
                            "override 'train.min_lr=-1': train.min_lr must be >= 0, got -1.0")


def test_values_made_to_be_huge_or_deep_are_one_short_line(tmp_path):
    """A list nested past Python's recursion limit, aliases that multiply ("billion laughs") and a
    very long value: each a UserError of a few hundred characters, not a traceback or a megabyte."""
    deep = tmp_path / "deep.yaml"
    deep.write_text("data:\n  paths: " + "[" * 1000 + "]" * 1000 + "\n")
    with pytest.raises(UserError, match=re.escape(f"{deep}: invalid YAML: nested too deeply")):
        load_config(deep)
    with pytest.raises(UserError, match="data.paths: the list .* is nested too deeply") as e:
        load_config(None, ["train.max_steps=5", "data.paths=" + "[" * 20000 + "]" * 20000])
    assert len(str(e.value)) < 300
    laughs = tmp_path / "laughs.yaml"  # 9^9 strings if expanded
    laughs.write_text("a0: &a0 [x, x, x, x, x, x, x, x, x]\n"
                      + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9))
                      + "train:\n  lr: *a8\n")
    with pytest.raises(UserError, match="train.lr must be a finite number, got ") as e:
        load_config(laughs)
    assert len(str(e.value)) < 1000
    with pytest.raises(UserError, match="data.kind must be one of text | pinyin") as e:
        load_config(None, ["train.max_steps=5", "data.kind=" + "x" * 100_000])
    assert len(str(e.value)) < 300
    laughs.write_text(laughs.read_text().replace("train:\n  lr: *a8\n", "data: *a8\n"))  # a section of them
    with pytest.raises(UserError, match="data must be a mapping of keys, got ") as e:
        load_config(laughs)
    assert len(str(e.value)) < 1000


def test_an_integer_past_a_doubles_range_is_refused_by_name_and_any_other_taken(tmp_path):
    """10**400 was an OverflowError in the loader (and would be one in TensorBoard's hparams, which
    records every key as a double); a tighter bound would make checkpoints saved with a large limit
    (train.max_tokens=1e20, "no limit") unloadable."""
    big = tmp_path / "big.yaml"
    big.write_text(f"train:\n  max_steps: {10**400}\n")
    with pytest.raises(UserError, match="train.max_steps must be an integer within a double's range"):
        load_config(big)
    assert load_config(None, [f"train.max_steps={10**300}"]).train.max_steps == 10**300
    assert load_config(None, ["train.max_tokens=1e20"]).train.max_tokens == 10**20
    assert load_config(None, ["train.max_steps=1e3"]).train.max_steps == 1000  # a float that is an integer
    import numpy as np

    cfg = build_config({"train": {"max_steps": np.int64(5), "lr": np.float32(0.5)}})  # NumPy's, from Python
    assert (cfg.train.max_steps, cfg.train.lr) == (5, 0.5) and type(cfg.train.max_steps) is int


@pytest.mark.parametrize("typed, read_as", [("1.10", "float"), ("0x1F", "int"), ("2024-06-01", "date"),
                                            ("yes", "true or false")])
def test_a_text_key_yaml_reads_as_another_kind_asks_for_quotes(tmp_path, typed, read_as):
    """log.name: 1.10 became runs/1.1, 0x1F runs/31, a date an error without a way out; quoted, or
    on the command line, each stays as typed."""
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  max_steps: 5\nlog:\n  name: {typed}\n")
    with pytest.raises(UserError, match=f"log.name must be a string, got .*: YAML read it as {read_as}; quote it"):
        load_config(path)
    path.write_text(f"train:\n  max_steps: 5\nlog:\n  name: \"{typed}\"\n")
    assert load_config(path).log.name == typed == load_config(None, ["train.max_steps=5", f"log.name={typed}"]).log.name
    path.write_text(f"train:\n  max_steps: 5\ndata:\n  kind: text\n  paths: [a.txt, {typed}]\n")  # a file name too
    with pytest.raises(UserError, match=f"data.paths entry 2 must be a string, got .*: YAML read it as {read_as}; quote"):
        load_config(path)
    path.write_text(f"train:\n  max_steps: 5\ndata:\n  kind: text\n  paths: {typed}\n")  # one entry, no list
    with pytest.raises(UserError, match=f"data.paths entry 1 must be a string, got .*: YAML read it as {read_as}; quote"):
        load_config(path)


def test_an_empty_entry_of_a_yaml_list_of_paths_is_named_by_its_place(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: 5\ndata:\n  kind: text\n  paths: [a.txt, null]\n")
    with pytest.raises(UserError, match="data.paths entry 2 must be a string, got None$"):
        load_config(path)


def test_text_that_is_no_unicode_is_refused_while_the_config_is_read(tmp_path):
    """YAML's "\\ud800" or a command-line byte that is not UTF-8: a sample prefix of one failed with
    a traceback after --force had cleared the run."""
    path = tmp_path / "c.yaml"
    path.write_text('train:\n  max_steps: 5\nlog:\n  sample_prefix: "ab\\ud800"\n')
    with pytest.raises(UserError, match="log.sample_prefix holds a lone surrogate U\\+D800, at character 2"):
        load_config(path)
    with pytest.raises(UserError, match="log.sample_prefix holds the byte 0xe9, which is not UTF-8, at character 1"):
        load_config(None, ["train.max_steps=5", "log.sample_prefix=a\udce9"])
    # a file name that is not UTF-8 is one the file system takes (and a checkpoint may hold it)
    assert load_config(None, ["train.max_steps=5", "data.paths=a\udce9.txt"]).data.paths == ["a\udce9.txt"]


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: 0.1\n   max_steps: [\n")
    with pytest.raises(UserError, match=r"bad\.yaml: invalid YAML at line \d+"):
        load_config(path)


def test_a_config_file_that_is_not_text_or_not_a_file_says_so_in_words(tmp_path):
    (tmp_path / "bin.yaml").write_bytes(b"train:\n  max_steps: 5\n\xff\xfe")
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(UserError, match=re.escape(f"config file {tmp_path / 'bin.yaml'} is not UTF-8 text (byte 0xff "
                                                  "at offset 22): a recipe is a YAML file")):
        load_config(tmp_path / "bin.yaml")
    with pytest.raises(UserError, match=re.escape(f"config file {tmp_path / 'dir.yaml'} cannot be read (Is a directory)")):
        load_config(tmp_path / "dir.yaml")


def test_a_bad_value_is_reported_once_not_again_through_a_rule_that_relates_it_to_another_key():
    with pytest.raises(UserError) as e:
        load_config(None, ["train.lr=-1", "train.max_steps=5"])
    assert str(e.value) == "override 'train.lr=-1': train.lr must be in (0, 3e+37], got -1.0"  # min_lr = 0 is not blamed
    with pytest.raises(UserError) as e:
        load_config(None, ["data.val_fraction=1", "train.max_steps=5"])
    assert str(e.value) == "override 'data.val_fraction=1': data.val_fraction must be in [0, 1), got 1.0"
    with pytest.raises(UserError, match=r"data\.val_fraction \+ data\.test_fraction must be below 1"):
        load_config(None, ["data.val_fraction=0.6", "data.test_fraction=0.5", "train.max_steps=5"])


def test_an_empty_choice_says_null_rather_than_an_empty_string(tmp_path):
    path = tmp_path / "null.yaml"
    path.write_text("model:\n  cell: null\ntrain:\n  max_steps: 5\n")
    with pytest.raises(UserError, match=r"model\.cell must be one of rnn \| gru \| lstm, got nothing \(null\)$"):
        load_config(path)


def test_a_key_given_twice_is_an_error_not_the_last_one_silently(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("model:\n  hidden_size: 32\n  cell: gru\n  hidden_size: 64\n")
    with pytest.raises(UserError, match=r"twice\.yaml: invalid YAML at line 4, column 3: the key 'hidden_size' is given twice"):
        load_config(path)


def test_resolved_config_round_trips_through_yaml_and_dict(tmp_path):
    import yaml

    cfg = load_config(ROOT / "configs" / "pinyin_gru.yaml", ["train.lr=0.01"])
    assert build_config(cfg.to_dict()) == cfg
    assert build_config(yaml.safe_load(config_to_yaml(cfg))) == cfg


def test_every_field_has_a_docstring_for_the_reference():
    rows = describe_fields()
    assert len(rows) > 30
    assert all(doc for _, _, _, doc in rows), [key for key, _, _, doc in rows if not doc]


def test_cli_reports_config_errors_on_one_line_with_status_2(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  max_stepz: 10\n")
    out = subprocess.run([sys.executable, "train.py", "--config", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "did you mean train.max_steps?" in lines[0]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("value, paths", [
    ("[a.txt,b.txt]", ["a.txt", "b.txt"]),  # YAML flow list, as Hydra/OmegaConf users type it
    ("[ a.txt , 'b c.txt' ]", ["a.txt", "b c.txt"]),
    ("a.txt,b.txt", ["a.txt", "b.txt"]),  # the comma form keeps working
    ("a.txt", ["a.txt"]),
    ('["a,b.txt"]', ["a,b.txt"]),  # quoting keeps a comma inside a name
    ("[0x10, yes, null]", ["0x10", "yes", "null"]),  # items stay the text typed, not 16 / True / None
    ("[draft].txt", ["[draft].txt"]),  # brackets inside a file name: not a list
    ("./[x]", ["./[x]"]),  # a file literally named [x]
    ("[]", []),  # the empty list: for kind=pinyin, the built-in corpus
])
def test_list_overrides_take_yaml_flow_lists_and_commas(value, paths):
    assert build_config({"train": {"max_steps": 1}}, [f"data.paths={value}"]).data.paths == paths


@pytest.mark.parametrize("value, message", [
    ("[a.txt,b.txt", "has no closing ]"),
    ('[a, "b]', "is not a valid YAML list"),
    ("[a, [b]]", "must be a list of strings"),
    ("[a: 1]", "must be a list of strings"),
    ("", "data.paths is given no value; write data.paths=[] for an empty list"),  # `data.paths=$UNSET`
    (" ", "data.paths is given no value"),
    ("a.txt,,b.txt", "entry 2 of 3 is empty"),  # not the two files alone: a name was left out
    (",", "entry 1 of 2 is empty"),
])
def test_malformed_list_override_is_one_user_error_naming_the_key(value, message):
    with pytest.raises(UserError, match=r"data\.paths") as e:
        build_config({"train": {"max_steps": 1}}, [f"data.paths={value}"])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_load_config_takes_a_recipe_name_or_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a directory without configs/: names come from the package
    by_name = load_config("debug", ["train.max_steps=3"])
    assert by_name == load_config(ROOT / "configs" / "debug.yaml", ["train.max_steps=3"])
    assert by_name.log.name == "debug" and load_config("debug.yaml").log.name == "debug"
    (tmp_path / "debug.yaml").write_text("train:\n  max_steps: 7\n")  # a file that exists wins over the name
    assert load_config("debug.yaml").train.max_steps == 7
    with pytest.raises(UserError, match=r"unknown recipe 'pinyn_gru' \(did you mean pinyin_gru\?\)"):
        load_config("pinyn_gru")


def test_an_empty_corpus_entry_is_refused_with_the_config_not_when_the_corpus_is_read(tmp_path):
    """A run directory already holding a run answered first ("already holds a run"); an empty
    entry is the config's mistake (Path("") would be the current directory, read recursively)."""
    with pytest.raises(UserError, match=r"override 'data.paths=\[\"\"\]': data.paths entry 1 of 1 is empty"):
        load_config("debug", ['data.paths=[""]'])
    path = tmp_path / "c.yaml"
    path.write_text('data:\n  paths: [a.txt, " "]\ntrain:\n  max_steps: 1\n')
    with pytest.raises(UserError, match="data.paths entry 2 of 2 is only white space"):
        load_config(path)


def test_values_from_python_or_past_any_range_are_one_line_not_a_crash(tmp_path):
    """The Python API hands the loader what YAML never makes: arrays, NumPy strings, Fractions; and a
    YAML integer may be past Python's 4300 digits or a double's range."""
    import numpy as np
    from fractions import Fraction

    with pytest.raises(UserError, match="model.hidden_size must be an integer, got array"):
        build_config({"train": {"max_steps": 1}, "model": {"hidden_size": np.array(64.0)}})
    with pytest.raises(UserError, match="train.lr must be a number of float32's range"):
        build_config({"train": {"max_steps": 1, "lr": Fraction(10**400)}})
    with pytest.raises(UserError, match="train.max_time must be a number of float32's range"):
        build_config({"train": {"max_steps": 1, "max_time": 10**400}})
    paths = build_config({"data": {"kind": "text", "paths": [np.str_("a.txt")]}, "train": {"max_steps": 1}}).data.paths
    assert paths == ["a.txt"] and type(paths[0]) is str  # YAML-writable in config.yaml
    with pytest.raises(UserError, match="data.paths holds a lone surrogate U\\+D800"):  # no file name holds one
        build_config({"data": {"kind": "text", "paths": ["a\ud800.txt"]}, "train": {"max_steps": 1}})
    long = tmp_path / "long.yaml"
    long.write_text(f"train:\n  max_steps: 1{'0' * 5000}\n")
    with pytest.raises(UserError, match="invalid YAML: a number too long to read"):
        load_config(long)
