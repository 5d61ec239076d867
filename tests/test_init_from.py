"""Fine-tuning: `--init-from CK` starts a new run (step 0, fresh optimiser and schedule) from CK's
weights and vocab on another corpus; characters outside that vocab read as <unk>, counted."""
import hashlib
import io
import json
import subprocess
import sys

import pytest
import torch

from rnn_train.cli import run as cli_run
from rnn_train.errors import UserError
from rnn_train.model.checkpoint import load_checkpoint
from rnn_train.training.cli import main as train_main
from rnn_train.training.trainer import train
from tests.helpers import ROOT, scalar_series, tiny_config

TEXT = "Ni hao 2024, zhong guo! Hello World.\n" * 60  # upper case and digits are not in the pinyin vocab


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A GRU trained for 20 steps on the built-in pinyin corpus: the checkpoint to fine-tune."""
    tmp = tmp_path_factory.mktemp("src")
    train(tiny_config(tmp, "train.max_steps=20", name="src"), tmp / "src", quiet=True, cache_dir=tmp / "c")
    corpus = tmp / "new.txt"
    corpus.write_text(TEXT)
    return tmp


def fine_tune_config(source, *overrides, name="ft"):
    return tiny_config(source, "data.kind=text", f"data.paths={source / 'new.txt'}", "data.val_fraction=0.1",
                       *overrides, name=name)


def test_a_new_run_starts_from_the_checkpoint_weights_and_vocab(source, tmp_path):
    best = source / "src" / "best.pt"
    src = load_checkpoint(best)
    cfg = fine_tune_config(source, "train.optimizer=sgd", "train.lr=1e-9", "train.clip_norm=0", "train.max_steps=2",
                           "train.eval_every=2", "train.warmup_steps=2", "log.log_every=1")
    err = io.StringIO()
    r = train(cfg, tmp_path / "ft", init_from=best, cache_dir=tmp_path / "c", stream=err)
    ckpt = load_checkpoint(tmp_path / "ft" / "last.pt")
    assert r.step == ckpt["step"] == 2 and r.init_from == str(best)
    assert ckpt["vocab"] == src["vocab"]  # the checkpoint's vocab, not one built from the new corpus
    for key, value in src["model"].items():  # an lr of 1e-9 leaves the weights where the checkpoint had them
        torch.testing.assert_close(ckpt["model"][key], value, rtol=0, atol=1e-6)
    scratch = train(cfg, tmp_path / "scratch", quiet=True, cache_dir=tmp_path / "c")
    w_hh = load_checkpoint(tmp_path / "scratch" / "last.pt")["model"]["rnn.weight_hh_l0"]  # [3H, H], as the source's
    assert scratch.init_from == "" and not torch.allclose(w_hh, src["model"]["rnn.weight_hh_l0"], atol=1e-3)
    assert [lr for _, lr in scalar_series(tmp_path / "ft", "train/lr")] == pytest.approx([5e-10, 1e-9])  # fresh warmup
    unknown = sum(c not in src["vocab"] for c in TEXT)
    assert unknown >= 60 * len("NH2024W")
    assert f"note: {unknown:,} characters of the corpus" in err.getvalue() and "<unk>" in err.getvalue()
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["init_from"] == str(best)
    # resumed, it is still a fine-tuning of that checkpoint (its metrics.json said "" once resumed)
    longer = fine_tune_config(source, "train.optimizer=sgd", "train.lr=1e-9", "train.clip_norm=0", "train.max_steps=3",
                              "train.eval_every=2", "train.warmup_steps=2", "log.log_every=1")
    resumed = train(longer, tmp_path / "ft", resume=ckpt, quiet=True, cache_dir=tmp_path / "c")
    assert resumed.step == 3 and resumed.init_from == str(best)
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["init_from"] == str(best)


def test_embed_dim_is_no_shape_of_a_one_hot_model(source, tmp_path):
    """The config reference says model.embed_dim is ignored for one_hot: a one-hot checkpoint has no
    weights of that size, so another value fine-tunes it (it was refused as a shape change)."""
    cfg = fine_tune_config(source, "model.embed_dim=8", "train.max_steps=2", "train.eval_every=2")
    best = source / "src" / "best.pt"
    assert train(cfg, tmp_path / "ft", init_from=best, quiet=True, cache_dir=tmp_path / "c").step == 2
    with pytest.raises(UserError, match="model.embedding: 'one_hot' -> 'learned'; model.embed_dim: 64 -> 8"):
        train(fine_tune_config(source, "model.embedding=learned", "model.embed_dim=8"), tmp_path / "ft2",
              init_from=source / "src" / "best.pt", quiet=True, cache_dir=tmp_path / "c")


def test_the_optimiser_starts_fresh(source, tmp_path):
    src = load_checkpoint(source / "src" / "last.pt")
    assert all(int(s["step"]) == 20 for s in src["optimizer"]["state"].values())
    train(fine_tune_config(source, "train.max_steps=3"), tmp_path / "ft", init_from=source / "src" / "last.pt",
          quiet=True, cache_dir=tmp_path / "c")
    ckpt = load_checkpoint(tmp_path / "ft" / "last.pt")
    assert ckpt["step"] == 3 and all(int(s["step"]) == 3 for s in ckpt["optimizer"]["state"].values())


# ---- the command line ---------------------------------------------------------------------------------


def run(*args):
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_fine_tunes_and_reports_the_unknown_characters_even_when_quiet(source, tmp_path):
    out = run("--config", "configs/debug.yaml", "--init-from", str(source / "src"), "--quiet",
              "--cache-dir", str(tmp_path / "c"), f"log.dir={tmp_path}", "log.name=ft", "data.kind=text",
              f"data.paths={source / 'new.txt'}", "model.hidden_size=16", "model.cell=gru", "data.batch_size=4",
              "data.num_steps=12", "train.max_steps=4", "train.threads=1", "data.min_freq=3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("done: 4 steps")
    assert f"note: data.min_freq=3 not applied: the vocab is {source / 'src' / 'best.pt'}'s, as its weights need" \
        in out.stderr
    vocab = load_checkpoint(source / "src" / "best.pt")["vocab"]  # the run directory means its best.pt
    assert f"note: {sum(c not in vocab for c in TEXT):,} characters of the corpus" in out.stderr
    assert load_checkpoint(tmp_path / "ft" / "last.pt")["vocab"] == vocab


def test_cli_mistakes_with_init_from_are_one_line_and_damage_nothing(source, tmp_path, capsys):
    """In-process through the entry point's error handling (rnn_train.cli.run): one `error:` line, status 2."""
    def fails(*argv, needle):
        try:
            status = cli_run(train_main, list(argv))
        except SystemExit as e:  # argparse-level mistakes exit from the parser
            status = e.code
        lines = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    base = ["--config", str(ROOT / "configs" / "debug.yaml"), "--quiet", "--cache-dir", str(tmp_path / "c"), f"log.dir={tmp_path}",
            "model.cell=gru", "model.hidden_size=16", "data.batch_size=4", "data.num_steps=12", "train.threads=1"]
    fails(*base, "--init-from", str(junk), needle="not an rnn-train checkpoint")
    fails(*base, "--init-from", str(tmp_path / "none.pt"), needle="does not exist")
    fails(*base, "--init-from", str(source / "src" / "best.pt"), "model.hidden_size=17", "model.num_layers=2",
          needle="model.hidden_size: 16 -> 17; model.num_layers: 1 -> 2")
    fails("--init-from", str(source / "src" / "best.pt"), needle="--init-from starts a new run")
    fails("--resume", str(source / "src"), "--init-from", str(source / "src" / "best.pt"),
          needle="--init-from starts a new run")
    assert not (tmp_path / "debug").exists()

    # --force with a checkpoint that does not fit: the run already there is left as it was
    existing = source / "src"
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in existing.iterdir() if p.is_file()}
    copy = tmp_path / "copy.pt"
    copy.write_bytes((existing / "best.pt").read_bytes())
    fails(*base, f"log.dir={source}", "log.name=src", "--force", "--init-from", str(copy),
          "model.embedding=learned", needle="model.embedding: 'one_hot' -> 'learned'")
    # --force clearing the very run the weights come from: it trained from them and deleted them
    for source_in_run in (existing / "best.pt", existing):
        fails(*base, f"log.dir={source}", "log.name=src", "--force", "--init-from", str(source_in_run),
              needle=f"--init-from {existing / 'best.pt'} is a file of the run in {existing}, which --force "
                     "clears first")
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in existing.iterdir() if p.is_file()} == before


def test_a_checkpoint_of_the_users_own_in_the_run_directory_is_no_file_of_the_run(source, tmp_path):
    """Only the run's own files are cleared (best.pt, last.pt, ...): a pretrained.pt put there is read and kept."""
    run_dir = tmp_path / "ft"
    run_dir.mkdir()
    own = run_dir / "pretrained.pt"
    own.write_bytes((source / "src" / "best.pt").read_bytes())
    out = run("--config", str(ROOT / "configs" / "debug.yaml"), "--quiet", "--cache-dir", str(tmp_path / "c"),
              f"log.dir={tmp_path}", "log.name=ft", "--init-from", str(own), "model.hidden_size=16",
              "data.batch_size=4", "data.num_steps=12", "train.threads=1", "train.max_steps=2", "--force")
    assert out.returncode == 0, out.stderr
    assert own.read_bytes() == (source / "src" / "best.pt").read_bytes() and (run_dir / "best.pt").exists()
    # the run's best.pt a link to the user's file elsewhere: clearing removes the link, not the file
    elsewhere = tmp_path / "model.pt"
    own.rename(elsewhere)
    (run_dir / "best.pt").unlink()
    (run_dir / "best.pt").symlink_to(elsewhere)
    out = run("--config", str(ROOT / "configs" / "debug.yaml"), "--quiet", "--cache-dir", str(tmp_path / "c"),
              f"log.dir={tmp_path}", "log.name=ft", "--init-from", str(elsewhere), "model.hidden_size=16",
              "data.batch_size=4", "data.num_steps=12", "train.threads=1", "train.max_steps=2", "--force")
    assert out.returncode == 0, out.stderr
    assert elsewhere.read_bytes() == (source / "src" / "best.pt").read_bytes()
    assert not (run_dir / "best.pt").is_symlink()
