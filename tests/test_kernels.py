"""Choosing and building the training kernels: the C++ build cache, the fallback when it cannot be
built, and the autotuner's stored decisions.

Specification:
1. The build is keyed on everything the binary depends on: source, flags (torch's ISA cap
   ATEN_CPU_CAPABILITY changes them), CPU, torch and Python versions.
2. Where the build fails (no compiler, no ninja, ...) training still works on the Python loop and
   says so in ONE stderr line; the failure is remembered, so later processes do not retry.
   RNN_TRAIN_NO_CPP=1 turns the C++ path off without a note.
3. The autotuner stores one decision per machine and shapes and reuses it (same config + seed,
   same path, same losses); measuring leaves the global RNG and the model's gradients alone. The
   decoder's products are measured with the module's path, stored beside it, and a path stored
   before that choice existed keeps nn.Linear.
4. model.kernel=fused refuses what no fused loop can run; auto falls back to the module.

These tests point the cache at a temporary directory where they write, and never depend on
which path the autotuner picks.
"""
import json
import os
import sys
import time

import pytest
import torch
from torch import nn

from rnn_train.errors import UserError
from rnn_train.kernels import TrainingPath, autotune, build, resolve_decoder, resolve_kernel
from rnn_train.kernels.fused import FusedPath
from rnn_train.model.charrnn import CharRNN


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # one torch thread per test (conftest)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """A fresh cache directory; the process's memory of builds and decisions is reset around the test."""
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "cache"))
    build.extension.cache_clear()
    saved = dict(autotune._MEMORY)
    autotune._MEMORY.clear()
    yield tmp_path / "cache"
    build.extension.cache_clear()
    autotune._MEMORY.clear()
    autotune._MEMORY.update(saved)


@pytest.fixture
def no_compiler(tmp_cache, monkeypatch):
    """A machine without a C++ compiler (torch.utils.cpp_extension compiles with $CXX)."""
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    monkeypatch.setattr(build, "_compile", lambda *a: pytest.fail("no build without a compiler"))


@pytest.fixture
def failing_build(tmp_cache, monkeypatch):
    """A machine where the compiler exists but the build fails; counts the attempts."""
    calls = []

    def fail(directory, name):
        calls.append(name)
        raise RuntimeError("Error building extension 'rnn_train_kernels':\nrecurrence.cpp:1: error: something broke")

    monkeypatch.setattr(build, "missing_tool", lambda: None)
    monkeypatch.setattr(build, "_compile", fail)
    return calls


# ----------------------------------------------------------------------------- 1. the build key


def test_the_build_is_keyed_on_flags_cpu_source_and_versions(monkeypatch, tmp_path):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    native = build.compile_flags()
    assert "-march=native" in native and "-O3" in native
    key = build.build_key()
    assert build.build_key() == key  # stable
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    capped = build.compile_flags()
    assert "-march=native" not in capped and "-mavx2" in capped and "-mfma" in capped
    assert build.build_key() != key
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    monkeypatch.setattr(build, "cpu_signature", lambda: "model name: another CPU\nflags: sse2")
    assert build.build_key() != key
    monkeypatch.undo()
    edited = tmp_path / "recurrence.cpp"
    edited.write_text(build.SOURCE.read_text() + "\n// an edit\n")
    monkeypatch.setattr(build, "SOURCE", edited)
    assert build.build_key() != key
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert build.build_key() != key
    monkeypatch.undo()
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert build.build_key() == key


def test_the_cpu_signature_names_the_model_and_its_features():
    sig = build.cpu_signature()
    assert sig.strip()
    if "flags" in sig:  # Linux x86: the features decide what -march=native emits
        assert len(sig.splitlines()) <= 3


def test_a_build_removes_the_builds_left_unused_for_a_month(tmp_path):
    day = 86400
    def build_dir(name, mark, age_days):
        d = tmp_path / name
        d.mkdir()
        if mark:
            (d / mark).write_text("x")
            os.utime(d / mark, (time.time() - age_days * day,) * 2)
        os.utime(d, (time.time() - age_days * day,) * 2)
        return d
    current = build_dir("kernels-current", build._OK, 0)
    old = build_dir("kernels-old", build._OK, 40)
    old_failure = build_dir("kernels-oldfail", build._FAILED, 40)
    died_midway = build_dir("kernels-midway", None, 40)  # a build killed before it wrote either mark
    recent = build_dir("kernels-recent", build._OK, 5)
    (tmp_path / "autotune.json").write_text("{}")
    os.utime(tmp_path / "autotune.json", (time.time() - 400 * day,) * 2)
    assert sorted(build.prune_stale_builds(current, days=30)) == sorted([old, old_failure, died_midway])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["autotune.json", "kernels-current", "kernels-recent"]
    old_but_loaded = build_dir("kernels-loaded", build._OK, 40)
    build._mark_used(old_but_loaded)  # what loading a build does
    assert build.prune_stale_builds(current, days=30) == [] and old_but_loaded.exists() and recent.exists()


def test_loading_the_build_marks_it_used():
    build.extension.cache_clear()
    before = time.time() - 1
    assert build.extension() is not None  # built by now, or built here
    build.extension.cache_clear()
    assert (build.build_dir() / build._OK).stat().st_mtime >= before


# ----------------------------------------------------------------------------- 2. fallback


def test_without_a_compiler_training_uses_the_python_loop_and_says_so_once(no_compiler, capsys):
    assert build.extension() is None
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("note: C++ kernels unavailable (") and "no-such-compiler-here" in line and "Python" in line
    model = CharRNN(vocab_size=7, cell="gru", hidden_size=8)
    path = resolve_kernel("auto", model.rnn, 4, 5, True)
    assert path is None or path.label() in ("fused-python(gemm=blas)", "fused-python(gemm=auto)")
    model.use_training_path(FusedPath("python", "blas"))
    logits, _ = model(torch.randint(0, 7, (4, 5)))
    logits.sum().backward()
    assert model.rnn.weight_hh_l0.grad is not None
    assert capsys.readouterr().err == ""  # said once per process: extension() remembers its answer


def test_a_failed_build_says_why_and_is_not_retried(failing_build, capsys):
    assert build.extension() is None
    building, failed = capsys.readouterr().err.strip().splitlines()
    assert building.startswith("note: building the C++ kernels")
    assert failed.startswith("note: C++ kernels unavailable (recurrence.cpp:1: error: something broke)")
    [marker] = build.cache_root().glob("kernels-*/build.failed")
    assert "something broke" in marker.read_text()
    build.extension.cache_clear()  # a new process: the failure is remembered, nothing is rebuilt
    assert build.extension() is None and len(failing_build) == 1
    [again] = capsys.readouterr().err.strip().splitlines()
    assert "something broke" in again and f"Delete {marker.parent} to retry" in again


def test_the_c_plus_plus_path_can_be_turned_off(tmp_cache, monkeypatch, capsys):
    monkeypatch.setenv(build.OFF_ENV, "1")
    monkeypatch.setattr(build, "_compile", lambda *a: pytest.fail("no build when turned off"))
    assert build.extension() is None
    assert capsys.readouterr().err == ""
    rnn = nn.LSTM(3, 4, batch_first=True)
    assert resolve_kernel("auto", rnn, 2, 3, False) is None  # LSTM has only the C++ fused loop
    with pytest.raises(UserError, match="model.kernel=fused"):
        resolve_kernel("fused", rnn, 2, 3, False)


# ----------------------------------------------------------------------------- 3. the autotuner


def test_a_decision_is_stored_per_machine_and_shape_and_reused(decisions, monkeypatch):
    rnn = nn.GRU(6, 192, batch_first=True)  # big enough to be measured (SMALL_STEP_WORK)
    first = autotune.choose(rnn, 16, 5, True, with_native=False)
    assert isinstance(first, FusedPath)  # without native, always a fused path
    [(key, entry)] = json.loads(decisions.read_text()).items()
    assert key.startswith(autotune.machine_key() + "/") and "gru-L1-I6-H192-B16-T5" in key
    assert first.label() in entry["ms"]
    autotune._MEMORY.clear()  # a new process: the file answers, nothing is measured
    with monkeypatch.context() as m:
        m.setattr(autotune, "measure", lambda *a: pytest.fail("measured again"))
        assert autotune.choose(rnn, 16, 5, True, with_native=False) == first
    other = autotune.choose(rnn, 24, 5, True, with_native=False)  # another batch size: its own entry
    assert isinstance(other, FusedPath)
    assert len(json.loads(decisions.read_text())) == 2


def test_an_entry_from_another_version_is_measured_again(decisions):
    rnn = nn.RNN(3, 320, batch_first=True)
    key = f"{autotune.machine_key()}/{autotune.shape_key(rnn, 16, 3, True, False)}"
    decisions.write_text(json.dumps({key: {"choice": {"loop": "cpp", "parallel": True}}}))
    path = autotune.choose(rnn, 16, 3, True, with_native=False)
    assert isinstance(path, FusedPath)
    assert json.loads(decisions.read_text())[key]["choice"]["loop"] == path.loop


def test_measuring_leaves_the_global_rng_and_the_gradients_alone(decisions):
    rnn = nn.GRU(5, 160, num_layers=2, dropout=0.5, batch_first=True)
    before = torch.random.get_rng_state()
    autotune.choose(rnn, 16, 4, True, with_native=True)
    assert len(json.loads(decisions.read_text())) == 1  # it was measured
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(p.grad is None for p in rnn.parameters())
    assert rnn.training  # the model itself is not switched to eval


def test_a_stored_decision_decides_the_models_training_path(decisions):
    model = CharRNN(vocab_size=6, cell="rnn", hidden_size=320)
    label = resolve_kernel("fused", model.rnn, 16, 4, True).label()
    assert label.startswith("fused-")
    [entry] = json.loads(decisions.read_text()).values()
    assert label in entry["ms"]
    autotune._MEMORY.clear()
    again = CharRNN(vocab_size=6, cell="rnn", hidden_size=320)
    assert resolve_kernel("fused", again.rnn, 16, 4, True).label() == label


def test_a_small_model_takes_one_block_of_the_fused_loop_without_measuring(decisions, monkeypatch):
    monkeypatch.setattr(autotune, "measure", lambda *a: pytest.fail("a small model is not measured"))
    rnn = nn.GRU(7, 32, batch_first=True)  # 8 x 3 x 32^2 multiply-adds per step
    path = autotune.choose(rnn, 8, 16, True, with_native=True)
    want = "cpp" if build.extension() is not None else "python"
    assert isinstance(path, FusedPath) and path.loop == want and path.threads == "blas"
    assert autotune.choose(rnn, 8, 16, True, with_native=True) == path and not decisions.exists()


def test_the_decoder_is_measured_with_the_modules_path_and_stored_beside_it(decisions, monkeypatch):
    rnn = nn.GRU(6, 192, batch_first=True)
    fresh = TrainingPath(autotune.choose(rnn, 16, 5, True, with_native=True), "fp32")
    monkeypatch.setattr(autotune, "race", lambda runs: {"blas": 2.0, "onednn": 1.0})  # onednn the faster
    assert resolve_decoder("auto", fresh, rnn, 6, 16, 5, True) == "onednn"
    table = json.loads(decisions.read_text())
    [(key, entry)] = [(k, v) for k, v in table.items() if "/decoder-" in k]
    assert key.endswith("gru-L1-I6-H192-B16-T5-float32-ids-bias-tanh-native/decoder-V6")
    assert entry["choice"] == "onednn" and entry["ms"] == {"blas": 2000.0, "onednn": 1000.0}
    autotune._MEMORY.clear()  # a new process: both decisions come from the file
    monkeypatch.setattr(autotune, "measure_decoder", lambda *a: pytest.fail("measured again"))
    path = autotune.choose(rnn, 16, 5, True, with_native=True)
    assert resolve_decoder("auto", TrainingPath(path, "fp32"), rnn, 6, 16, 5, True) == "onednn"


def test_a_run_whose_decoder_runs_on_onednn_says_so_where_it_logs_its_kernel(tmp_path, decisions, monkeypatch, capsys):
    from rnn_train.training.trainer import train
    from tests.helpers import read_events, tiny_config

    race = autotune.race
    monkeypatch.setattr(autotune, "race", lambda runs: {"blas": 2.0, "onednn": 1.0} if set(runs) == {"blas", "onednn"}
                        else race(runs))
    cfg = tiny_config(tmp_path, "data.batch_size=16", "model.hidden_size=192", "train.max_steps=6",
                      "train.eval_every=6", "train.precision=fp32")
    result = train(cfg, tmp_path / "run", cache_dir=tmp_path / "cache")
    first = capsys.readouterr().err.splitlines()[0]
    assert result.kernel.endswith(" decoder=onednn") and f"kernel {result.kernel}, precision fp32" in first
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["kernel"] == result.kernel
    session = read_events(tmp_path / "run").PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert b"decoder=onednn" in session


def test_a_path_decided_before_the_decoder_choice_keeps_nn_linear(decisions, monkeypatch):
    """Same config and seed, same losses: a machine whose decisions file already holds the module's
    path keeps the decoder those losses came from until the file is deleted."""
    rnn = nn.GRU(6, 192, batch_first=True)
    path = autotune.choose(rnn, 16, 5, True, with_native=False)
    table = {k: v for k, v in json.loads(decisions.read_text()).items()}
    autotune._MEMORY.clear()
    autotune._MEASURED_HERE.clear()
    decisions.write_text(json.dumps(table))  # as an earlier version left it: no decoder entry
    monkeypatch.setattr(autotune, "measure_decoder", lambda *a: pytest.fail("measured without the module's path"))
    assert resolve_decoder("fused", TrainingPath(autotune.choose(rnn, 16, 5, True, with_native=False), "fp32"), rnn,
                           6, 16, 5, True) == "blas"
    [entry] = [v for k, v in json.loads(decisions.read_text()).items() if "/decoder-" in k]
    assert entry["choice"] == "blas" and "decided before" in entry["kept"]
    assert path == autotune.choose(rnn, 16, 5, True, with_native=False)


def test_a_module_no_fused_loop_runs_still_has_its_decoder_measured(decisions, monkeypatch):
    """model.kernel=auto on a module without a fused loop takes the module unmeasured; its decoder
    has no earlier decision to keep, so it is measured."""
    monkeypatch.setattr(autotune, "race", lambda runs: {"blas": 2.0, "onednn": 1.0})
    rnn = nn.GRU(6, 192, batch_first=True)
    assert resolve_decoder("auto", TrainingPath(None, "fp32"), rnn, 6, 16, 5, True) == "onednn"
    [entry] = json.loads(decisions.read_text()).values()
    assert entry["ms"] == {"blas": 2000.0, "onednn": 1000.0}


def test_the_decoder_stays_nn_linear_for_native_bf16_small_and_float64_models(decisions, monkeypatch):
    monkeypatch.setattr(autotune, "measure_decoder", lambda *a: pytest.fail("no decoder to measure"))
    rnn = nn.GRU(6, 192, batch_first=True)
    assert resolve_decoder("native", TrainingPath(None, "fp32"), rnn, 6, 16, 5, True) == "blas"
    assert resolve_decoder("auto", TrainingPath(None, "bf16"), rnn, 6, 16, 5, True) == "blas"
    small = nn.GRU(6, 32, batch_first=True)
    assert resolve_decoder("auto", TrainingPath(None, "fp32"), small, 6, 8, 5, True) == "blas"
    assert resolve_decoder("auto", TrainingPath(None, "fp32"), rnn.double(), 6, 16, 5, True) == "blas"
    assert not decisions.exists()


def test_unknown_kernels_are_refused():
    with pytest.raises(ValueError, match="kernel must be one of"):
        resolve_kernel("fastest", nn.GRU(2, 3), 1, 1, False)


def test_the_timing_is_noted_once_on_a_terminal_and_never_in_a_log(monkeypatch, tmp_path):
    """It can take minutes with nothing else printed, which on a terminal reads as a hang."""
    import io

    from rnn_train.kernels import autotune

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(autotune, "_cache_file", lambda: tmp_path / "autotune.json")
    monkeypatch.setattr(autotune, "_SAID", set())
    for stream, notes in ((io.StringIO(), 0), (Terminal(), 1)):
        monkeypatch.setattr(sys, "stderr", stream)
        for key in ("a", "b"):  # two decisions measured: one note
            assert autotune.stored_decision(f"test/{type(stream).__name__}/{key}", lambda: {"v": 1},
                                            lambda entry: entry["v"]) == 1
        assert stream.getvalue().count("note: timing the kernel paths for this model's shape") == notes
    assert "machine was busy" not in stream.getvalue()  # no load recorded: nothing to say


def test_a_timing_on_a_busy_machine_says_how_to_time_again_on_a_terminal(monkeypatch, tmp_path):
    """The decision is kept for good (the same losses run after run), so one taken while other work
    ran, beside this process's own threads, may keep a slower path: the terminal is told so, once."""
    import io

    from rnn_train.kernels import autotune

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(autotune, "_cache_file", lambda: tmp_path / "autotune.json")
    monkeypatch.setattr(autotune, "_SAID", set())
    monkeypatch.setattr(sys, "stderr", Terminal())
    own = torch.get_num_threads()
    for key, load in (("quiet", own + 0.5), ("busy", own + 4.0), ("busy again", own + 4.0)):
        autotune.stored_decision(f"test/{key}", lambda: {"v": 1, "load": load}, lambda entry: entry["v"])
    said = [line for line in sys.stderr.getvalue().splitlines() if line.startswith("note: the machine was busy")]
    assert said == [f"note: the machine was busy while they were timed (load average {own + 4.0:.1f} on "
                    f"{os.cpu_count()} CPUs): the path kept may not be the fastest; delete "
                    f"{tmp_path / 'autotune.json'} to time them again when it is quiet"]
