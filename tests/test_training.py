"""Training end to end: the loss falls, runs are reproducible, TensorBoard and checkpoints are real."""
import io
import json
import math

import pytest
import torch

from rnn_train.model.checkpoint import load_checkpoint, load_model
from rnn_train.config import build_config
from rnn_train.data.dataset import prepare_data
from rnn_train.training.events import series_names
from rnn_train.training.trainer import train

from tests.conftest import shared_corpus
from tests.helpers import read_events, scalar_series, tiny_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    cfg = tiny_config(tmp, "train.max_steps=60")
    result = train(cfg, tmp / "run", quiet=True, cache_dir=tmp / "cache")
    return cfg, tmp / "run", result


def test_loss_falls_from_about_ln_v(tiny_run):
    cfg, run_dir, result = tiny_run
    losses = [v for _, v in scalar_series(run_dir, "train/loss")]
    vocab_size = len(load_checkpoint(run_dir / "last.pt")["vocab"])
    assert abs(losses[0] - math.log(vocab_size)) < 0.6  # first 5 steps: still near chance
    assert losses[-1] < losses[0] - 0.5
    assert result.step == 60 and result.stopped_by == "max_steps"


def test_tensorboard_events_hold_every_promised_series(tiny_run):
    _, run_dir, result = tiny_run
    acc = read_events(run_dir)
    names = series_names(run_dir)
    for name in ("train/loss", "train/ppl", "train/bpc", "train/grad_norm", "train/clipped_fraction", "train/lr",
                 "train/tokens_per_s", "val/loss", "val/ppl", "val/bpc", "val/best_loss"):
        assert name in names, name
    assert [s for s, _ in scalar_series(run_dir, "train/loss")] == list(range(5, 61, 5))
    assert [s for s, _ in scalar_series(run_dir, "val/loss")] == [20, 40, 60]
    for (_, loss), (_, ppl) in zip(scalar_series(run_dir, "val/loss"), scalar_series(run_dir, "val/ppl")):
        assert ppl == pytest.approx(math.exp(loss), rel=1e-5)
    samples = acc.Tensors("sample/text_summary")
    assert [s.step for s in samples] == [20, 40, 60]
    assert len(samples[-1].tensor_proto.string_val[0].decode()) > 20
    # the hparams record, and no one-point scalar charts: its metrics are the series' last points
    plugin = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugin and "_hparams_/session_end_info" in plugin
    assert acc.Tags()["scalars"] == []  # the run directory itself holds no chart
    assert scalar_series(run_dir, "val/ppl")[-1][1] == pytest.approx(result.val_ppl, rel=1e-5)
    assert scalar_series(run_dir, "val/best_loss")[-1][1] == pytest.approx(result.best_val_loss, rel=1e-6)


def test_training_and_validation_loss_share_a_chart(tiny_run):
    """One tag per quantity, one directory per split: TensorBoard overlays train/ and val/ on one chart."""
    _, run_dir, _ = tiny_run
    from rnn_train.training.events import location

    for metric in ("loss", "bpc", "ppl"):
        (train_dir, train_tag), (val_dir, val_tag) = location(f"train/{metric}"), location(f"val/{metric}")
        assert train_tag == val_tag and train_tag.startswith("loss/") and (train_dir, val_dir) == ("train", "val")
        assert train_tag in read_events(run_dir / "train").Tags()["scalars"]
        assert val_tag in read_events(run_dir / "val").Tags()["scalars"]


def test_run_dir_holds_resolved_config_and_metrics(tiny_run):
    cfg, run_dir, result = tiny_run
    from rnn_train.config import load_config

    assert load_config(run_dir / "config.yaml") .to_dict()["model"] == cfg.to_dict()["model"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 60 and math.isfinite(metrics["val_loss"])


def test_checkpoint_is_plain_data_loadable_with_weights_only(tiny_run):
    cfg, run_dir, _ = tiny_run
    ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    for key in ("model", "optimizer", "plateau", "step", "epoch", "batch_in_epoch", "best_val_loss", "config",
                "vocab", "rng"):
        assert key in ckpt, key
    assert ckpt["config"] == cfg.to_dict()
    assert ckpt["vocab"][0] == "<unk>" and all(isinstance(c, str) for c in ckpt["vocab"])
    model, vocab, loaded_cfg, _ = load_model(run_dir)
    assert loaded_cfg == cfg and len(vocab) == len(ckpt["vocab"])


def test_best_checkpoint_has_the_lowest_validation_loss(tiny_run):
    _, run_dir, result = tiny_run
    vals = [v for _, v in scalar_series(run_dir, "val/loss")]
    assert load_checkpoint(run_dir / "best.pt")["best_val_loss"] == pytest.approx(min(vals), rel=1e-6)
    assert result.best_val_loss == pytest.approx(min(vals), rel=1e-6)


def test_same_config_and_seed_give_the_same_losses(tmp_path):
    runs = [train(tiny_config(tmp_path, "train.max_steps=20", name=f"r{i}"), tmp_path / f"r{i}", quiet=True,
                  cache_dir=tmp_path / "c") for i in range(2)]
    a, b = (scalar_series(tmp_path / f"r{i}", "train/loss") for i in range(2))
    assert a == b and runs[0].val_loss == runs[1].val_loss
    other = train(tiny_config(tmp_path, "train.max_steps=20", "train.seed=1", name="r2"), tmp_path / "r2",
                  quiet=True, cache_dir=tmp_path / "c")
    assert scalar_series(tmp_path / "r2", "train/loss") != a and other.val_loss != runs[0].val_loss


def test_clipping_is_applied_and_its_fraction_logged(tmp_path):
    train(tiny_config(tmp_path, "train.clip_norm=0.01", "train.max_steps=10"), tmp_path / "c1", quiet=True,
          cache_dir=tmp_path / "c")
    assert all(v == 1.0 for _, v in scalar_series(tmp_path / "c1", "train/clipped_fraction"))
    assert all(v > 0.01 for _, v in scalar_series(tmp_path / "c1", "train/grad_norm"))  # the pre-clip norm
    train(tiny_config(tmp_path, "train.clip_norm=0", "train.max_steps=10", name="c0"), tmp_path / "c0", quiet=True,
          cache_dir=tmp_path / "c")
    assert all(v == 0.0 for _, v in scalar_series(tmp_path / "c0", "train/clipped_fraction"))


def test_token_budget_and_epoch_limits_stop_training(tmp_path):
    r = train(tiny_config(tmp_path, "train.max_steps=0", "train.max_tokens=480"), tmp_path / "t", quiet=True,
              cache_dir=tmp_path / "c")
    assert r.stopped_by == "max_tokens" and r.tokens == 480 and r.step == 10  # 4 x 12 tokens per step


def test_cosine_schedule_with_warmup_is_what_gets_logged(tmp_path):
    train(tiny_config(tmp_path, "train.schedule=cosine", "train.warmup_steps=10", "train.max_steps=40",
                      "log.log_every=1", "train.min_lr=0.001"), tmp_path / "cos", quiet=True, cache_dir=tmp_path / "c")
    lrs = dict(scalar_series(tmp_path / "cos", "train/lr"))
    assert lrs[1] == pytest.approx(0.001) and lrs[10] == pytest.approx(0.01)
    assert lrs[40] == pytest.approx(0.001 + 0.5 * 0.009 * (1 + math.cos(math.pi * 29 / 30)), rel=1e-5)


def test_early_stopping_and_plateau_react_to_validation(tmp_path):
    # SGD at lr 50 (clipped) cannot settle: validation stops improving within a few evaluations
    r = train(tiny_config(tmp_path, "train.lr=50", "train.optimizer=sgd", "train.clip_norm=1", "train.patience=2",
                          "train.eval_every=5", "train.max_steps=400", "train.schedule=plateau",
                          "train.plateau_patience=0"), tmp_path / "es", quiet=True, cache_dir=tmp_path / "c")
    vals = [v for _, v in scalar_series(tmp_path / "es", "val/loss")]
    assert r.stopped_by == "early_stopping" and r.step == 5 * len(vals) < 400
    assert len(vals) - 1 - vals.index(min(vals)) == 2  # stopped exactly `patience` validations after the best
    lrs = [v for _, v in scalar_series(tmp_path / "es", "train/lr")]
    assert lrs[0] == 50 and lrs[-1] < 50  # the plateau schedule cut the learning rate
    assert set(lrs) <= {50 * 0.5 ** k for k in range(10)}


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_other_cells_and_learned_embeddings_train(tmp_path, cell):
    r = train(tiny_config(tmp_path, f"model.cell={cell}", "model.embedding=learned", "model.embed_dim=8",
                          "model.num_layers=2", "model.dropout=0.1", "data.partition=random"),
              tmp_path / cell, quiet=True, cache_dir=tmp_path / "c")
    assert math.isfinite(r.val_loss) and r.train_loss < math.log(30)


# ---- real corpora (skip where ../shared is absent) -----------------------------------------------

REAL = [
    ("timemachine/timemachine.txt", ["data.kind=text", "data.letters_only=true"], 0.55),
    ("tinyshakespeare/input.txt", ["data.kind=text"], 0.6),
    ("hongloumeng/hongloumeng.pinyin.txt", ["data.kind=pinyin"], 0.55),
]


@pytest.mark.parametrize("relpath,extra,ratio", REAL, ids=[r[0].split("/")[0] for r in REAL])
def test_real_corpus_loss_falls_well_below_ln_v(tmp_path, relpath, extra, ratio):
    path = shared_corpus(relpath)
    cfg = build_config({"data": {"paths": [str(path)], "val_fraction": 0.02, "batch_size": 32, "num_steps": 35,
                                 "partition": "sequential"},
                        "model": {"cell": "gru", "hidden_size": 128},
                        "train": {"optimizer": "adam", "lr": 0.005, "max_steps": 300, "eval_every": 300,
                                  "threads": 2},
                        "log": {"dir": str(tmp_path), "name": "real", "sample_length": 0}}, extra)
    r = train(cfg, tmp_path / "real", quiet=True, cache_dir=tmp_path / "cache")
    vocab_size = len(load_checkpoint(tmp_path / "real" / "best.pt")["vocab"])
    assert r.val_loss < ratio * math.log(vocab_size), (r.val_loss, math.log(vocab_size))


def test_chinese_corpus_is_converted_to_pinyin_for_training(tmp_path):
    path = shared_corpus("hongloumeng/hongloumeng.zh.txt")
    cfg = build_config({"data": {"paths": [str(path)], "kind": "pinyin"}, "train": {"max_steps": 1}})
    data = prepare_data(cfg.data, tmp_path / "cache")
    assert set(data.vocab.itos[1:]) <= set("abcdefghijklmnopqrstuvwxyz ,.!?:;\"'\n")
    assert data.unk_fraction == 0


def test_a_test_split_is_scored_once_with_the_best_weights(tmp_path):
    cfg = tiny_config(tmp_path, "data.test_fraction=0.01", "train.max_steps=40")
    r = train(cfg, tmp_path / "t", quiet=True, cache_dir=tmp_path / "c")
    assert math.isfinite(r.test_loss) and r.test_ppl == pytest.approx(math.exp(r.test_loss))
    assert scalar_series(tmp_path / "t", "test/loss") == [(40, pytest.approx(r.test_loss, rel=1e-6))]
    assert scalar_series(tmp_path / "t", "test/bpc") == [(40, pytest.approx(r.test_loss / math.log(2), rel=1e-6))]
    assert r.test_bpc == pytest.approx(r.test_loss / math.log(2))
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["test_loss"] == pytest.approx(r.test_loss)
    # the test text is neither trained nor validated on
    data = prepare_data(cfg.data, tmp_path / "c")
    assert len(data.train) + len(data.test) + len(data.val) == data.text_chars and len(data.test) > 0


@pytest.mark.parametrize("overrides", [
    ["train.optimizer=sgd", "model.cell=rnn", "train.max_steps=200", "train.eval_every=10"],
    # no validation split, so no validation loss to find it: Adam's first steps made the weights inf
    # between two logged losses, and the run ended "done" (max_steps), its best.pt and last.pt NaN, or
    # wrote a NaN last.pt at each epoch's end
    ["train.optimizer=adam", "data.val_fraction=0", "train.max_steps=5", "log.log_every=10"],
    ["train.optimizer=adam", "data.val_fraction=0", "data.batch_size=32", "data.num_steps=32", "train.max_steps=0",
     "train.epochs=3", "train.eval_every=0", "log.log_every=50"],
], ids=["validated", "no-validation-split", "no-validation-split-epochs"])
def test_a_diverging_run_stops_and_never_saves_non_finite_weights(tmp_path, overrides):
    text = tmp_path / "s.txt"  # 19 batches of 32 x 32 an epoch
    text.write_text(shared_corpus("tinyshakespeare/input.txt").read_text(encoding="utf-8")[:20000], encoding="utf-8")
    cfg = tiny_config(tmp_path, "data.kind=text", f"data.paths={text}", "train.lr=3e37", "train.clip_norm=0",
                      "model.hidden_size=32", *overrides)
    r = train(cfg, tmp_path / "div", quiet=True, cache_dir=tmp_path / "c")
    assert r.stopped_by == "diverged" and r.step < 200
    for name in ("best.pt", "last.pt"):
        if (tmp_path / "div" / name).exists():
            ckpt = load_checkpoint(tmp_path / "div" / name)
            assert all(torch.isfinite(t).all() for t in ckpt["model"].values()), name


def test_each_epoch_is_validated_once_and_a_finished_run_can_be_extended(tmp_path):
    from tests.helpers import ROOT  # noqa: F401
    path = tmp_path / "small.txt"
    path.write_text("a quick brown fox jumps over the lazy dog\n" * 60)
    cfg = tiny_config(tmp_path, "data.kind=text", f"data.paths={path}", "data.val_fraction=0.2",
                      "train.max_steps=0", "train.epochs=2", "train.eval_every=0", "train.patience=1")
    r = train(cfg, tmp_path / "ep", quiet=True, cache_dir=tmp_path / "c")
    steps = [s for s, _ in scalar_series(tmp_path / "ep", "val/loss")]
    assert len(steps) == 2 and len(set(steps)) == 2 and r.stopped_by == "epochs"
    longer = tiny_config(tmp_path, "data.kind=text", f"data.paths={path}", "data.val_fraction=0.2",
                         "train.max_steps=0", "train.epochs=4", "train.eval_every=0", "train.patience=1")
    more = train(longer, tmp_path / "ep", quiet=True, cache_dir=tmp_path / "c",
                 resume=load_checkpoint(tmp_path / "ep" / "last.pt"))
    assert more.step > r.step


def test_a_sample_prefix_outside_the_vocab_is_reported_once_and_training_goes_on(tmp_path):
    """The logged samples read unknown prefix characters as <unk>; the run says so on its first lines."""
    err = io.StringIO()
    cfg = tiny_config(tmp_path, "train.max_steps=20", "log.sample_prefix=Zh\u00e9ng Zhong ")
    result = train(cfg, tmp_path / "run", cache_dir=tmp_path / "cache", stream=err)
    notes = [line for line in err.getvalue().splitlines() if "log.sample_prefix" in line]
    assert result.step == 20 and len(notes) == 1, err.getvalue()
    assert "('Z', '\u00e9')" in notes[0] and "<unk>" in notes[0]
    sample = read_events(tmp_path / "run").Tensors("sample/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "Zh\u00e9ng Zhong " in sample  # the prefix as given, then what the model drew


@pytest.mark.parametrize("prefix,overrides", [
    ("zhong ", []),
    ("Zh\u00e9ng ", ["data.val_fraction=0", "train.max_steps=12"]),  # no validation split: no sample is ever logged
])
def test_a_sample_prefix_inside_the_vocab_or_never_sampled_brings_no_note(tmp_path, prefix, overrides):
    err = io.StringIO()
    train(tiny_config(tmp_path, "train.max_steps=20", f"log.sample_prefix={prefix}", *overrides), tmp_path / "run",
          cache_dir=tmp_path / "cache", stream=err)
    assert "log.sample_prefix" not in err.getvalue()


def test_a_chinese_sample_prefix_is_read_as_predict_reads_it(tmp_path):
    err = io.StringIO()
    train(tiny_config(tmp_path, "train.max_steps=20", "log.sample_prefix=\u4e2d\u56fd"), tmp_path / "run",
          cache_dir=tmp_path / "cache", stream=err)
    assert "log.sample_prefix" not in err.getvalue()
    sample = read_events(tmp_path / "run").Tensors("sample/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "zhong guo " in sample  # converted to pinyin like the corpus, as predict --prefix 中国 is


def test_a_corpus_file_whose_name_is_not_utf8_trains_and_resumes(tmp_path):
    """Linux names are bytes: the cache keys, meta.json and TensorBoard's hparams take the name as it is
    (hparams with \\udcXX escapes); a run name must be UTF-8, since TensorBoard writes only such paths."""
    import os

    from rnn_train.errors import UserError
    from rnn_train.model.checkpoint import load_checkpoint

    odd = tmp_path / os.fsdecode(b"bad\xffname.txt")
    odd.write_text("ni hao zhong guo\n" * 300)
    cfg = tiny_config(tmp_path, "data.kind=text", f"data.paths={odd}", "train.max_steps=20")
    assert train(cfg, tmp_path / "run", quiet=True, cache_dir=tmp_path / "cache").step == 20
    longer = tiny_config(tmp_path, "data.kind=text", f"data.paths={odd}", "train.max_steps=25")
    resumed = train(longer, tmp_path / "run", quiet=True, cache_dir=tmp_path / "cache",
                    resume=load_checkpoint(tmp_path / "run" / "last.pt"))
    assert resumed.step == 25
    with pytest.raises(UserError, match="log.name must be UTF-8 text"):
        tiny_config(tmp_path, "log.name=" + os.fsdecode(b"n\xffame"))


def test_a_sample_longer_than_any_use_is_noted_and_a_checkpoint_holding_it_still_loads(tmp_path):
    """Not refused: a bound in the config would make a checkpoint saved with a longer sample unloadable."""
    lines = io.StringIO()
    train(tiny_config(tmp_path, "train.max_steps=2", "log.sample_length=100001", "train.eval_every=0"), tmp_path / "r",
          cache_dir=tmp_path / "c", stream=lines)
    assert "note: log.sample_length=100,001: every validation generates that many characters" in lines.getvalue()
    assert load_model(tmp_path / "r")[2].log.sample_length == 100_001


def test_a_momentum_that_does_nothing_or_diverges_is_noted(tmp_path):
    """Adam and AdamW have no momentum setting (their betas play that part), and SGD's velocity with
    momentum >= 1 sums every past gradient undamped. Noted, not refused, as with log.sample_length."""
    said = {}
    for name, overrides in (("adam", ["train.optimizer=adam", "train.momentum=0.9"]),
                            ("sgd2", ["train.optimizer=sgd", "train.momentum=2"]),
                            ("sgd", ["train.optimizer=sgd", "train.momentum=0.9"])):
        lines = io.StringIO()
        train(tiny_config(tmp_path, "train.max_steps=2", *overrides), tmp_path / name, cache_dir=tmp_path / "c",
              stream=lines)
        said[name] = [line for line in lines.getvalue().splitlines() if line.startswith("note: train.momentum")]
    assert said["adam"] == ["note: train.momentum=0.9 is SGD's: train.optimizer=adam does not use it"]
    assert said["sgd2"] == ["note: train.momentum=2: at 1 or more SGD's velocity never forgets a gradient and the "
                            "steps grow without bound (the usual value is 0.9)"]
    assert said["sgd"] == []


def test_early_stopping_or_a_plateau_schedule_without_a_validation_split_is_noted(tmp_path):
    """Both follow the validation loss: with data.val_fraction=0 they never act."""
    said = {}
    for name, overrides in (("both", ["train.patience=1", "train.schedule=plateau"]), ("plain", [])):
        lines = io.StringIO()
        train(tiny_config(tmp_path, "train.max_steps=2", "data.val_fraction=0", *overrides), tmp_path / name,
              cache_dir=tmp_path / "c", stream=lines)
        said[name] = [line for line in lines.getvalue().splitlines() if line.startswith("note: no validation")]
    assert said["both"] == ["note: no validation split (data.val_fraction=0), so train.patience and "
                            "train.schedule=plateau never act (they follow the validation loss)"]
    assert said["plain"] == []
    lines = io.StringIO()  # a split of a few characters chooses best.pt on a few predictions
    train(tiny_config(tmp_path, "train.max_steps=2", "data.val_fraction=1e-6"), tmp_path / "tiny",
          cache_dir=tmp_path / "c", stream=lines)
    assert [line for line in lines.getvalue().splitlines() if line.startswith("note: the validation split")] == [
        "note: the validation split has 2 characters (data.val_fraction=1e-06): the validation loss, which chooses "
        "best.pt, is the mean of 1 prediction"]


def test_more_threads_than_cores_is_noted_with_the_count_that_would_use_them(tmp_path):
    """They are allowed (a machine shared on purpose), but each step then waits for threads taking
    turns: 20 steps of a tiny model took 25 s with 1000 threads on 2 cores, 0.1 s with 2."""
    from rnn_train.runtime import available_cores

    cores, before = available_cores(), torch.get_num_threads()
    try:
        lines = io.StringIO()
        train(tiny_config(tmp_path, "train.max_steps=2", f"train.threads={cores + 1}"), tmp_path / "r",
              cache_dir=tmp_path / "c", stream=lines)
        assert (f"note: train.threads={cores + 1} on {cores} CPU core{'s' if cores > 1 else ''}: threads beyond the "
                f"cores take turns and slow every step; {cores} would use them all") in lines.getvalue()
        lines = io.StringIO()
        train(tiny_config(tmp_path, "train.max_steps=2", f"train.threads={cores}"), tmp_path / "r2",
              cache_dir=tmp_path / "c", stream=lines)
        assert "threads beyond the cores" not in lines.getvalue()
    finally:
        torch.set_num_threads(before)  # train() leaves the count it set


def test_a_stop_during_a_long_logged_sample_ends_the_sample_and_the_run(tmp_path, monkeypatch):
    """A validation's text sample (log.sample_length) is made chunk by chunk, and a SIGTERM or Ctrl-C
    ends it: the part made so far is logged and the run stops there with its checkpoint. It went on
    to the sample's end (log.sample_length=1e20 sampled for ever; a SIGTERM did nothing)."""
    import os
    import signal

    from rnn_train.training import trainer as trainer_module

    def endless(model, vocab, prefix, k, options, unk):
        os.kill(os.getpid(), signal.SIGTERM)  # asked to stop while the sample is being made
        for _ in range(1000):
            yield ["ab"]
        raise AssertionError("the sample went on after the stop")

    monkeypatch.setattr(trainer_module, "stream", endless)
    cfg = tiny_config(tmp_path, "train.max_steps=1000", "train.eval_every=5", "log.sample_length=1000000000")
    result = train(cfg, tmp_path / "run", quiet=True, cache_dir=tmp_path / "cache")
    assert result.interrupted and result.step == 5
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 5
    sample = read_events(tmp_path / "run").Tensors("sample/text_summary")[-1].tensor_proto.string_val[0].decode()
    text = sample.removeprefix("```\n").removesuffix("\n```")  # the event's Markdown code block
    assert text.endswith("ab") and not text.endswith("abab")  # one chunk made after the stop, then no more
