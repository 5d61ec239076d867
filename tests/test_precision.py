"""train.precision: bf16 matrix products where the hardware has them, float32 everything else.

Specification:
1. `fp32` trains exactly as before precision existed (the float32 path is resolve_kernel's), and so
   does `auto` wherever it keeps float32 (a model too small to measure always does).
2. bf16 is only taken on hardware that has it (CPU flags AVX512-BF16 / AMX-BF16, honouring torch's
   and oneDNN's ISA caps; CUDA: is_bf16_supported); asked for bf16 without it, a run says so in one
   note line and trains in float32. `auto` takes bf16 only where it measured at least BF16_MARGIN
   faster, and remembers the decision beside the float32 one.
3. The fused bf16 kernels compute what they claim: each product of bf16-rounded operands with float32
   sums (against the same products done in float64 on rounded operands), and their gradients stay
   within the bf16 tolerance of float32's (docs/kernels.md, "Mixed precision", says why 3e-2).
   Where this machine has no bf16 kernels, asking a fused layer for bf16 is refused instead.
4. A bf16 run logs its precision (first line, metrics.json, TensorBoard hparams), keeps float32
   weights in its checkpoints, evaluates in float32, and resumes exactly.

bf16 needs hardware only for speed: torch's autocast runs (emulated) on any CPU, so the run-level
tests pretend the hardware is there and train through whichever bf16 path this machine has.
"""
import json
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnn_train.config import build_config
from rnn_train.errors import UserError
from rnn_train.kernels import autotune, precision, resolve_kernel, resolve_training_path
from rnn_train.kernels.fused import FusedPath, bf16_linear, fused_rnn
from rnn_train.model import cells
from rnn_train.model.charrnn import CharRNN
from rnn_train.model.checkpoint import load_checkpoint
from rnn_train.training.trainer import train
from tests.helpers import read_events, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HAS_KERNELS = precision.fused_bf16_available()  # this machine's C++ build has the AMX bf16 products


def bf16(t: torch.Tensor) -> torch.Tensor:
    """t rounded to bf16 (to nearest even), in t's dtype."""
    return t.to(torch.bfloat16).to(t.dtype)


@pytest.fixture
def bf16_hardware(monkeypatch):
    """Pretend the CPU multiplies bf16 in hardware (autocast emulates it where it does not)."""
    monkeypatch.setattr(precision, "bf16_hardware", lambda device: None)


# ------------------------------------------------------------------------------------ config, hardware


def test_precision_is_a_validated_config_key_defaulting_to_auto():
    def config(*overrides):
        return build_config({"train": {"max_steps": 1}}, list(overrides))

    assert config().train.precision == "auto"
    assert config("train.precision=bf16").train.precision == "bf16"
    with pytest.raises(UserError, match=re.escape("train.precision must be one of auto | fp32 | bf16")):
        config("train.precision=fp16")
    with pytest.raises(UserError, match="train.precision=bf16 needs model.dtype=float32"):
        config("train.precision=bf16", "model.dtype=float64")
    with pytest.raises(UserError, match="train.precision=bf16 needs model.backend=torch"):
        config("train.precision=bf16", "model.backend=numpy", "train.optimizer=sgd")


def test_bf16_hardware_reads_the_cpu_flags_and_honours_the_isa_caps(monkeypatch):
    cpu = torch.device("cpu")
    for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKLDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx2", "avx512f", "amx_bf16", "amx_tile"})
    assert precision.bf16_hardware(cpu) is None
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert precision.bf16_hardware(cpu) is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert precision.bf16_hardware(cpu) is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in precision.bf16_hardware(cpu)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "avx512_core")  # oneDNN's older name for the same cap
    assert "DNNL_MAX_CPU_ISA=AVX512_CORE" in precision.bf16_hardware(cpu)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # where both are set, oneDNN reads this one
    assert precision.bf16_hardware(cpu) is None
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("MKLDNN_MAX_CPU_ISA", "AVX2")  # torch copies it over DNNL_MAX_CPU_ISA when imported
    assert "MKLDNN_MAX_CPU_ISA=AVX2" in precision.bf16_hardware(cpu)
    monkeypatch.delenv("MKLDNN_MAX_CPU_ISA")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert "ATEN_CPU_CAPABILITY=avx2" in precision.bf16_hardware(cpu)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx2", "avx512f"})
    assert "no bf16 instructions" in precision.bf16_hardware(cpu)


def test_bf16_hardware_on_cuda_asks_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert precision.bf16_hardware(torch.device("cuda", 0)) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert precision.bf16_hardware(torch.device("cuda", 0)) == "Some GPU has no bf16 arithmetic"


# ------------------------------------------------------------------------------------ resolution


def big_gru():
    """A GRU above the size below which nothing is measured (autotune.SMALL_STEP_WORK)."""
    torch.manual_seed(0)
    return nn.GRU(7, 128, batch_first=True)


def test_fp32_keeps_the_float32_path(decisions):
    rnn = big_gru()
    assert resolve_training_path("native", "fp32", rnn, 32, 5, True) == (None, "fp32", "")
    tiny = nn.GRU(7, 8, batch_first=True)  # too small to measure: auto is fp32 without a measurement
    assert resolve_training_path("auto", "auto", tiny, 4, 5, True) == (resolve_kernel("auto", tiny, 4, 5, True),
                                                                        "fp32", "")
    assert not decisions.exists()


def test_bf16_without_hardware_is_one_note_and_float32(decisions, monkeypatch):
    monkeypatch.setattr(precision, "bf16_hardware", lambda device: "this CPU has no bf16 instructions (...)")
    rnn = big_gru()
    path, taken, note = resolve_training_path("native", "bf16", rnn, 32, 5, True)
    assert (path, taken) == (None, "fp32")
    assert note == "train.precision=bf16: this CPU has no bf16 instructions (...); training in float32"
    assert "\n" not in note
    assert resolve_training_path("native", "auto", rnn, 32, 5, True) == (None, "fp32", "")  # auto: no note


def test_an_isa_cap_stands_in_for_a_cpu_without_bf16(decisions, monkeypatch):
    """The real probe under the cap the AVX2 runs use: on any CPU, bf16 is one note and float32."""
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    rnn = big_gru()
    assert resolve_training_path("native", "bf16", rnn, 32, 5, True) == (
        None, "fp32", "train.precision=bf16: ATEN_CPU_CAPABILITY=avx2 caps torch below bf16 instructions; "
                      "training in float32")
    assert resolve_training_path("native", "auto", rnn, 32, 5, True) == (None, "fp32", "")
    assert not decisions.exists()  # nothing raced: bf16 was never a candidate


def test_auto_takes_bf16_only_where_it_wins_by_the_margin_and_remembers(decisions, bf16_hardware, monkeypatch):
    rnn = big_gru()
    timings = {"native fp32": 10e-3, "native bf16": 10e-3 / precision.BF16_MARGIN * 1.01}
    calls = []

    def race(runs):
        calls.append(sorted(runs))
        return {name: timings[name] for name in runs}
    monkeypatch.setattr(autotune, "race", race)
    assert resolve_training_path("native", "auto", rnn, 32, 5, True)[:2] == (None, "fp32")  # wins, but too little
    timings["native bf16"] = 10e-3 / precision.BF16_MARGIN * 0.99
    assert resolve_training_path("native", "auto", rnn, 32, 6, True)[:2] == (None, "bf16")
    assert calls == [["native bf16", "native fp32"]] * 2
    autotune._MEMORY.clear()  # a new process: the file answers, nothing is measured again
    assert resolve_training_path("native", "auto", rnn, 32, 6, True)[:2] == (None, "bf16")
    assert len(calls) == 2
    entry = next(v for k, v in json.loads(decisions.read_text()).items() if "precision-auto" in k and "-T6-" in k)
    assert entry["precision"] == "bf16" and set(entry["ms"]) == {"native fp32", "native bf16"}
    # asked for bf16, the fastest bf16 candidate is taken whatever float32 does
    timings["native bf16"] = 1.0
    assert resolve_training_path("native", "bf16", rnn, 32, 5, True)[:2] == (None, "bf16")


def test_the_older_cap_names_key_the_timings_only_where_set(monkeypatch):
    """A machine without them keeps the key its decisions were stored under (a new key would time
    every shape again, and may pick other paths: other float32 rounding for the same config)."""
    import hashlib
    import os

    from rnn_train.kernels import build

    for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKLDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
                 "MKL_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(name, raising=False)
    cpp = build.build_key() if build.extension() is not None else "no-cpp"
    before = [build.cpu_signature(), torch.__version__, str(torch.get_num_threads()), cpp,  # the key as first kept
              *(f"{k}=" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"))]
    assert autotune.machine_key() == hashlib.sha256("\0".join(before).encode()).hexdigest()[:16]
    keys = {autotune.machine_key()}
    for name in ("DNNL_MAX_CPU_ISA", "MKLDNN_MAX_CPU_ISA"):
        monkeypatch.setenv(name, "AVX2")
        keys.add(autotune.machine_key())
    assert len(keys) == 3
    assert os.environ["DNNL_MAX_CPU_ISA"] == "AVX2"


def test_bf16_asked_for_times_no_float32_path(decisions, bf16_hardware, monkeypatch):
    """The float32 decision serves `auto` (the race bf16 must win) and a fallback; bf16 asked for
    and available needs neither: nothing float32 is timed, and one candidate is taken untimed."""
    import rnn_train.kernels as kernels

    rnn, calls = big_gru(), []
    monkeypatch.setattr(autotune, "choose", lambda *a, **k: calls.append("fp32 decision"))
    monkeypatch.setattr(autotune, "race", lambda runs: calls.append(sorted(runs)) or {n: 1.0 for n in runs})
    assert resolve_training_path("auto", "bf16", rnn, 32, 5, True)[:2] == (None, "bf16")
    assert calls == [] and not decisions.exists()
    two = [FusedPath("cpp", "blas", "tiled", "blas"), None]  # an AMX machine's: the C++ tiles and autocast
    monkeypatch.setattr(kernels, "bf16_candidates", lambda kernel, rnn: two)
    monkeypatch.setattr(autotune, "runs_here", lambda rnn, path, one_hot, precision: True)
    resolve_training_path("auto", "bf16", rnn, 32, 5, True)
    assert calls == [["fused-cpp(step=tiled, threads=blas, gemm=blas) bf16", "native bf16"]]  # float32 not raced


def test_a_new_float32_decision_measures_the_precision_again(decisions, bf16_hardware, monkeypatch):
    rnn = big_gru()
    monkeypatch.setattr(autotune, "race", lambda runs: {name: (1.0 if "fp32" in name else 0.1) for name in runs})
    key = f"{autotune.machine_key()}/{autotune.shape_key(rnn, 32, 5, True, True)}/precision-auto-native-cpu"
    assert resolve_training_path("native", "auto", rnn, 32, 5, True)[:2] == (None, "bf16")
    table = json.loads(decisions.read_text())
    table[key]["fp32"] = {"loop": "python", "gemm": "blas", "step": "blas", "threads": "blas"}  # another fp32 path
    table[key]["precision"] = "stale"
    decisions.write_text(json.dumps(table))
    autotune._MEMORY.clear()
    assert resolve_training_path("native", "auto", rnn, 32, 5, True)[:2] == (None, "bf16")
    assert json.loads(decisions.read_text())[key]["precision"] == "bf16"


def test_a_bf16_path_that_fails_here_is_no_candidate(decisions, bf16_hardware, monkeypatch):
    rnn = big_gru()
    monkeypatch.setattr(autotune, "runs_here", lambda rnn, path, one_hot, precision: False)
    path, taken, note = resolve_training_path("native", "bf16", rnn, 32, 5, True)
    assert (path, taken) == (None, "fp32")
    assert note == ("train.precision=bf16: model.kernel=native has no bf16 path that runs this model here; "
                    "training in float32")


def test_bf16_asked_for_without_the_c_loops_bf16_products_says_autocast_may_lose(decisions, bf16_hardware,
                                                                                   monkeypatch):
    """On a CPU with bf16 instructions but no AMX, bf16 is autocast around the module, which can be
    slower than the C++ loop's float32 (kernels.md): an explicit bf16 says so; model.kernel=native,
    whose float32 is the module too, does not."""
    import rnn_train.kernels as kernels

    monkeypatch.setattr(kernels, "bf16_candidates", lambda kernel, rnn: [None])
    monkeypatch.setattr(autotune, "runs_here", lambda rnn, path, one_hot, precision: True)
    rnn = big_gru()
    path, taken, note = resolve_training_path("auto", "bf16", rnn, 32, 5, True)
    assert (path, taken) == (None, "bf16")
    assert note.startswith("train.precision=bf16 here is torch's autocast around the module") and "auto" in note
    assert resolve_training_path("native", "bf16", rnn, 32, 5, True) == (None, "bf16", "")
    # where the C++ tiles were a candidate (AMX) and autocast won their race, nothing to say
    monkeypatch.setattr(kernels, "bf16_candidates", lambda kernel, rnn: [FusedPath("cpp", "blas", "tiled", "blas"), None])
    monkeypatch.setattr(autotune, "choose_precision", lambda *a, **k: (None, "bf16"))
    assert resolve_training_path("auto", "bf16", rnn, 32, 5, True) == (None, "bf16", "")


# ------------------------------------------------------------------------------------ the kernels


class RoundedProduct(torch.autograd.Function):
    """x @ w^T with both operands rounded to bf16, in the forward and in both products of the backward:
    what the bf16 kernels promise, computed in float64 by torch."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return bf16(x) @ bf16(w).t()

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        return bf16(dy) @ bf16(w), bf16(dy).t() @ bf16(x)


def rounded_reference(module: nn.Module, inp: torch.Tensor, one_hot: bool, state0: tuple):
    """The module's forward in float64 with every matrix product on bf16-rounded operands (the one-hot
    input projection is a row gather, exact): (out, final state, {name: float64 parameter})."""
    spec, ops = cells.of_module(module), cells.torch_ops()
    params = {n: p.detach().double().requires_grad_() for n, p in module.named_parameters()}
    x = inp if one_hot else inp.double()
    B, T = inp.shape[0], inp.shape[1]
    finals = []
    for k in range(module.num_layers):
        w_ih, w_hh, b_ih, b_hh = (params[f"{n}_l{k}"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        if one_hot and k == 0:
            gi = F.embedding(x, w_ih.t()) + b_ih
        else:
            gi = RoundedProduct.apply(x.reshape(B * T, -1), w_ih).view(B, T, -1) + b_ih
        state = tuple(s[k] for s in state0)
        hs = []
        for t in range(T):
            state, _ = spec.step(ops, gi[:, t], RoundedProduct.apply(state[0], w_hh) + b_hh, state)
            hs.append(state[0])
        x = torch.stack(hs, 1)
        finals.append(state)
    return x, finals, params


CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


def bf16_case(cell: str, one_hot: bool, T: int, seed: int = 0):
    torch.manual_seed(seed)
    module = CELLS[cell](11, 48, 2, batch_first=True)
    inp = torch.randint(0, 11, (20, T)) if one_hot else torch.randn(20, T, 11)
    spec = cells.of_module(module)
    state0 = tuple(torch.randn(2, 20, 48) * 0.5 for _ in spec.state)
    return module, inp, spec, state0


def run_fused(module, inp, one_hot, spec, state0, path, precision_):
    h0 = tuple(s.clone().requires_grad_() for s in state0)
    out, _ = fused_rnn(module, inp, spec.pack(h0), one_hot_ids=one_hot, path=path, precision=precision_)
    return out, h0


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("one_hot", [True, False], ids=["ids", "dense"])
def test_one_bf16_step_is_the_product_of_rounded_operands(cell, one_hot):
    """T = 1 from a random state: nothing recurs, so nothing can round differently upstream."""
    module, inp, spec, state0 = bf16_case(cell, one_hot, T=1)
    path = FusedPath("cpp", "blas", "tiled", "rows")
    if not HAS_KERNELS:
        with pytest.raises(ValueError, match="cannot compute in bf16 here"):
            run_fused(module, inp, one_hot, spec, state0, path, "bf16")
        return
    weight = torch.randn(20, 1, 48)
    out, h0 = run_fused(module, inp, one_hot, spec, state0, path, "bf16")
    (out * weight).sum().backward()
    ref, _, params = rounded_reference(module, inp, one_hot, tuple(s.double().requires_grad_() for s in state0))
    (ref * weight.double()).sum().backward()
    assert (out.double() - ref).abs().max() < 2e-6
    for name, p in module.named_parameters():
        want = params[name].grad
        assert (p.grad.double() - want).norm() <= 1e-5 * want.norm() + 1e-7, name


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("threads", ["blas", "rows"])
def test_bf16_gradients_stay_within_the_bf16_tolerance_of_float32(cell, threads):
    """Nine steps, two layers, ids and dense input: relative gradient error below 3e-2 against float32
    (measured 2e-3 to 5e-3 here), and the rounded reference followed far more closely."""
    if not HAS_KERNELS:
        module, inp, spec, state0 = bf16_case(cell, True, T=9)
        with pytest.raises(ValueError, match="cannot compute in bf16 here"):
            run_fused(module, inp, True, spec, state0, FusedPath("cpp", "blas", "tiled", threads), "bf16")
        return
    for one_hot in (True, False):
        module, inp, spec, state0 = bf16_case(cell, one_hot, T=9)
        weight = torch.randn(20, 9, 48)
        grads = {}
        for prec in ("fp32", "bf16"):
            module.zero_grad()
            out, _ = run_fused(module, inp, one_hot, spec, state0, FusedPath("cpp", "blas", "tiled", threads), prec)
            (out * weight).sum().backward()
            grads[prec] = {n: p.grad.clone() for n, p in module.named_parameters()}
        ref, _, params = rounded_reference(module, inp, one_hot, tuple(s.double() for s in state0))
        (ref * weight.double()).sum().backward()
        for name in grads["fp32"]:
            g32, g16, gref = grads["fp32"][name], grads["bf16"][name], params[name].grad
            assert (g16 - g32).norm() < 3e-2 * g32.norm(), name
            assert (g16.double() - gref).norm() < 2e-3 * gref.norm(), name


def test_bf16_matmul_and_linear_are_products_of_rounded_operands():
    if not HAS_KERNELS:
        with pytest.raises(ValueError, match="cannot compute in bf16 here"):
            fused_rnn(nn.GRU(3, 4), torch.randn(2, 1, 3), path=FusedPath("cpp", "blas", "tiled"), precision="bf16")
        return
    from rnn_train.kernels.build import extension

    torch.manual_seed(0)
    for M, K, N in ((1, 1, 1), (33, 70, 17), (64, 256, 96), (5, 1120, 40)):
        a, b = torch.randn(M, K), torch.randn(N, K)
        want = bf16(a.double()) @ bf16(b.double()).t()
        for x, y in ((a, b), (a.t().contiguous().t(), b.t().contiguous().t())):  # row- and column-major operands
            got = extension().bf16_matmul(x, y)
            assert got.dtype == torch.float32 and (got.double() - want).abs().max() < 1e-5 * (1 + want.abs().max())
    x = torch.randn(4, 6, 10, requires_grad=True)
    w, bias = torch.randn(7, 10, requires_grad=True), torch.randn(7, requires_grad=True)
    y = bf16_linear(x, w, bias)
    dy = torch.randn(4, 6, 7)
    y.backward(dy)
    xd, wd, dyd = x.detach().double(), w.detach().double(), dy.double()
    assert torch.allclose(y.double(), bf16(xd) @ bf16(wd).t() + bias.detach().double(), atol=1e-5)
    assert torch.allclose(x.grad.double(), bf16(dyd) @ bf16(wd), atol=1e-5)
    assert torch.allclose(w.grad.double(), bf16(dyd).reshape(-1, 7).t() @ bf16(xd).reshape(-1, 10), atol=1e-4)
    assert torch.allclose(bias.grad, dy.sum((0, 1)), atol=1e-5)


# ------------------------------------------------------------------------------------ the model, the run


@pytest.mark.parametrize("cell,fused", [("gru", False), ("lstm", True)], ids=["module+autocast", "fused"])
def test_a_bf16_model_returns_float32_and_evaluates_as_float32(cell, fused):
    """(A GRU under autocast: torch's bf16 LSTM needs oneDNN's bf16 ISA, which an ISA-capped run lacks.)"""
    if fused and not HAS_KERNELS:
        return  # the fused bf16 path does not exist here (the kernel tests check it is refused)
    torch.manual_seed(0)
    model = CharRNN(20, cell, 32, 2)
    x = torch.randint(0, 20, (3, 5))
    with torch.no_grad():
        want, _ = model(x)
    model.use_training_path(FusedPath("cpp", "blas", "tiled", "rows") if fused else None, "bf16")
    logits, state = model(x)
    assert logits.dtype == torch.float32 and all(s.dtype == torch.float32 for s in model.spec.unpack(state))
    assert (logits - want).abs().max() < 0.05  # bf16 products: close to, not equal to, float32
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():  # evaluation and generation: the module in float32, bit for bit
        assert torch.equal(model(x)[0], want)


def test_a_bf16_run_logs_its_precision_and_keeps_float32_weights(tmp_path, decisions, bf16_hardware, capsys):
    cfg = tiny_config(tmp_path, "train.precision=bf16", "train.max_steps=20")
    result = train(cfg, tmp_path / "run", cache_dir=tmp_path / "cache")
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("run ") and first.endswith(f"kernel {result.kernel}, precision bf16")
    assert result.precision == "bf16"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["precision"] == "bf16"
    session = read_events(tmp_path / "run").PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert b"run.precision" in session and b"bf16" in session
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert all(t.dtype == torch.float32 for t in ckpt["model"].values())


def test_bf16_asked_for_without_hardware_notes_it_and_trains_float32(tmp_path, decisions, monkeypatch, capsys):
    monkeypatch.setattr(precision, "bf16_hardware", lambda device: "this CPU has no bf16 instructions (test)")
    cfg = tiny_config(tmp_path, "train.precision=bf16", "train.max_steps=5", "train.eval_every=5")
    result = train(cfg, tmp_path / "run", cache_dir=tmp_path / "cache")
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: train.precision")]
    assert notes == ["note: train.precision=bf16: this CPU has no bf16 instructions (test); training in float32"]
    assert result.precision == "fp32"


def test_auto_on_a_model_too_small_to_measure_is_float32_bit_for_bit(tmp_path, decisions):
    runs = {p: train(tiny_config(tmp_path, f"train.precision={p}", "train.max_steps=10", name=p), tmp_path / p,
                     quiet=True, cache_dir=tmp_path / "cache") for p in ("fp32", "auto")}
    assert runs["auto"].precision == "fp32"
    a, b = (load_checkpoint(tmp_path / p / "last.pt")["model"] for p in ("fp32", "auto"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_bf16_run_equals_an_uninterrupted_one(tmp_path, decisions, bf16_hardware):
    import os
    import signal

    cfg = tiny_config(tmp_path, "train.precision=bf16", "data.partition=sequential", "model.num_layers=2")
    full = train(cfg, tmp_path / "full", quiet=True, cache_dir=tmp_path / "c")
    assert full.precision == "bf16"

    def interrupt(step):
        if step == 17:
            os.kill(os.getpid(), signal.SIGINT)
    part = train(cfg, tmp_path / "split", quiet=True, cache_dir=tmp_path / "c", on_step=interrupt)
    assert part.interrupted and part.step == 17
    resumed = train(cfg, tmp_path / "split", quiet=True, cache_dir=tmp_path / "c",
                    resume=load_checkpoint(tmp_path / "split" / "last.pt"))
    assert resumed.step == full.step
    a, b = (load_checkpoint(tmp_path / r / "last.pt")["model"] for r in ("full", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_that_takes_another_precision_says_so(tmp_path, decisions, bf16_hardware, capsys):
    """Exact resume holds within one precision. Resumed on a machine without bf16, under a cap, or
    with train.precision changed, the run goes on in another one: the first lines say so, from the
    precision the checkpoint records having taken (its config may say only `auto`)."""
    cfg = tiny_config(tmp_path, "train.precision=bf16", "train.max_steps=10", "train.eval_every=5")
    train(cfg, tmp_path / "r", quiet=True, cache_dir=tmp_path / "c")
    assert load_checkpoint(tmp_path / "r" / "last.pt")["precision"] == "bf16"
    capsys.readouterr()
    for precision_now, steps in (("bf16", 15), ("fp32", 20)):
        more = tiny_config(tmp_path, f"train.precision={precision_now}", f"train.max_steps={steps}", "train.eval_every=5")
        train(more, tmp_path / "r", cache_dir=tmp_path / "c", resume=load_checkpoint(tmp_path / "r" / "last.pt"))
        notes = [line for line in capsys.readouterr().err.splitlines() if "goes on in" in line]
        assert notes == ([] if precision_now == "bf16" else [
            "note: the run trained in bf16 until step 15 and goes on in fp32: its losses from here are not those of "
            "an uninterrupted run (a resume is exact within one precision)"])
    assert load_checkpoint(tmp_path / "r" / "last.pt")["precision"] == "fp32"
    (tmp_path / "r" / "metrics.json").unlink()  # stopped before its report: a resume has nothing to train
    more = tiny_config(tmp_path, "train.precision=bf16", "train.max_steps=20", "train.eval_every=5")
    train(more, tmp_path / "r", cache_dir=tmp_path / "c", resume=load_checkpoint(tmp_path / "r" / "last.pt"))
    assert "goes on in" not in capsys.readouterr().err  # nothing goes on


# ---- CUDA's rules, checked on the CPU (no GPU here: each test fakes the one fact it needs)

def test_autocast_is_kept_off_a_cudnn_rnn_on_cuda_and_reaches_everything_else():
    """torch's autocast runs cuDNN's RNNs in float16 whatever dtype it is given, and float16
    without loss scaling is not bf16: on CUDA such a module trains in float32, the decoder in bf16."""
    class OnCuda:  # a parameter as a GPU model's would be, for the one fact the rule reads
        device = torch.device("cuda")

    def on_cuda(module: nn.Module) -> nn.Module:
        module.parameters = lambda recurse=True: iter([OnCuda()])
        return module

    assert not precision.autocast_reaches(on_cuda(nn.GRU(4, 4))) and not precision.autocast_reaches(on_cuda(nn.LSTM(4, 4)))
    assert precision.autocast_reaches(nn.GRU(4, 4))  # on the CPU: oneDNN's bf16 RNNs
    assert precision.autocast_reaches(on_cuda(nn.Linear(4, 4)))  # not cuDNN's RNN: autocast's bf16


def test_the_copy_autotune_times_trains_as_the_run_does_without_dropout():
    """cuDNN's RNN backward refuses a module in eval mode: the timed copy is in training mode, and
    without dropout, so that timing it draws no random number."""
    rnn = nn.GRU(4, 8, num_layers=2, dropout=0.5, batch_first=True)
    copy_, inp = autotune._measured_copy(rnn, 3, 5, one_hot=True)
    assert copy_.training and copy_.dropout == 0.0 and rnn.dropout == 0.5 and inp.shape == (3, 5)
