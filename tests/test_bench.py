"""The speed benchmark end to end, briefly: both sides run on the same corpus for the same time
budget, and every line it prints is strict JSON."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

REFERENCE = ROOT.parent / "shared" / "bench" / "reference_loop.py"


def refuse(name):
    raise ValueError(f"non-standard JSON constant {name}")


def test_bench_prints_strict_json_lines_and_runs_the_time_budget(tmp_path):
    if not REFERENCE.exists():
        pytest.skip(f"{REFERENCE} is absent (../shared is only beside the project's own checkout)")
    # from a directory other than the checkout, a recipe by name: as an installed rnn-train runs it
    out = subprocess.run([sys.executable, "-m", "rnn_train", "bench", "--config", "debug", "--reference", str(REFERENCE),
                          "--corpus", str(ROOT / "tests/fixtures/v1/corpus.txt"), "--seconds", "1", "--rounds", "1",
                          "--threads", "1", "model.hidden_size=8", "data.batch_size=4", "data.num_steps=10"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line, parse_constant=refuse) for line in out.stdout.strip().splitlines()]
    ref, ours, summary = lines
    assert ref["impl"] != "rnn-train" and ours["impl"] == "rnn-train"
    assert ours["train_seconds"] >= 1.0 and ours["steps"] > 0  # the 1 s budget ended the run
    assert ours["kernel"] and ours["precision"] == "fp32"  # what its autos took (too small for bf16 to be measured)
    assert summary["rounds"] == 1 and summary["tokens_per_s_ratio_median"] > 0


@pytest.mark.parametrize("args,needle", [
    (["--seconds", "nan"], "--seconds must be a number in (0, 3.4e38], got nan"),
    (["--seconds", "inf"], "--seconds must be a number in (0, 3.4e38], got inf"),
    (["--seconds", "1e300"], "--seconds must be a number in (0, 3.4e38], got 1e+300"),  # was refused after the reference ran
    (["--threads", "-1"], "--threads must be in [0, 1024] (0 = torch's default), got -1"),
    (["--rounds", "0"], "--rounds must be >= 1, got 0"),
    (["--corpus", "docs"], "corpus docs is not a file"),
    # what bench sets itself: a log.* override pointed its --force at a user's run, a limit made the ratios meaningless
    (["log.name=mine"], "override log.name: bench sets it itself"),
    (["train.max_steps=1"], "override train.max_steps: bench sets it itself"),
    (["data.val_fraction=0"], "data.val_fraction is 0: bench compares the two sides' validation perplexities"),
    (["--reference", "nowhere.py"], "reference loop (--reference) nowhere.py does not exist"),
])
def test_bad_bench_arguments_are_one_line_before_anything_runs(args, needle):
    out = subprocess.run([sys.executable, "-m", "rnn_train", "bench", "--config", "debug", "--corpus", "README.md", *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("error: ") and needle in out.stderr



def test_a_corpus_bench_cannot_decode_is_named_with_its_byte_before_anything_runs(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xffdef" * 100)
    out = subprocess.run([sys.executable, "-m", "rnn_train", "bench", "--config", "debug", "--corpus", str(bad)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"error: {bad}: byte 0xff at offset 3"), out.stderr


def test_an_installed_bench_without_the_textbook_loop_beside_it_says_to_give_its_path(monkeypatch, tmp_path, capsys):
    from rnn_train.cli import run as cli_run
    from rnn_train.experiments import bench

    monkeypatch.setattr(bench, "DEFAULT_REFERENCE", tmp_path / "shared" / "bench" / "reference_loop.py")
    assert cli_run(bench.main, ["--config", "debug", "--corpus", str(ROOT / "README.md")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not beside this installation" in err and "give its path with --reference" in err


def _train_speed():
    """benchmarks/train_speed.py as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_speed", ROOT / "benchmarks" / "train_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("hardware,amx,left_out", [
    (None, True, []),                                           # an AMX Xeon: every variant runs
    (None, False, ["cpp-tiled-rows:bf16"]),                     # AVX512-BF16 without AMX (AMD Zen 4/5)
    ("this CPU has no bf16 instructions", False, ["native:bf16", "cpp-tiled-rows:bf16"]),  # AVX2 only
])
def test_the_step_benchmark_leaves_out_with_a_note_what_a_cpu_class_cannot_run(monkeypatch, capsys, hardware, amx,
                                                                                 left_out):
    ts = _train_speed()
    monkeypatch.setattr(ts, "bf16_hardware", lambda device: hardware)
    monkeypatch.setattr(ts, "fused_bf16_available", lambda: amx)
    variants = ["reference", "native", "cpp-tiled-rows", "native:bf16", "cpp-tiled-rows:bf16", "auto"]
    kept = [v for v in variants if ts.runnable(v, "lstm")]
    assert kept == [v for v in variants if v not in left_out]
    notes = capsys.readouterr().err.splitlines()
    assert len(notes) == len(left_out)
    for note, v in zip(notes, left_out):
        assert note.startswith(f"note: leaving out {v}: ")
    if hardware:
        assert notes[0].endswith(hardware)  # the reason bf16_hardware gave
    assert ts.runnable("python", "lstm") is False and ts.runnable("python", "gru") is True


@pytest.mark.parametrize("variant", ["cpp-tild", "cpp-tiled+mkl", "auto+onednn", "native+onednn:bf16"])
def test_the_step_benchmark_refuses_an_unknown_variant_in_one_line(variant):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--variants", f"native,{variant}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith(f"train_speed.py: error: unknown variant '{variant}'")


def test_the_step_benchmark_runs_a_path_with_its_decoder_on_onednn():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--json", "--hidden", "32",
                          "--rounds", "2", "--warmup", "1", "--variants", "native,native+onednn"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["variants"]
    assert rows["native"]["path"] == "native fp32" and rows["native+onednn"]["path"] == "native decoder=onednn fp32"
