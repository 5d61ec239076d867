"""The fused CPU layers (rnn_train/kernels/fused.py) are nn.RNN / nn.GRU / nn.LSTM, gradient for gradient,
whichever path runs them: the Python loop (any GEMM backend) or the C++ loop (each GEMM path,
row blocks on threads or not).

Specification:
1. float64: outputs and every gradient (dx or, for one-hot ids, dW_ih; dW_hh, db_ih, db_hh, dh0,
   dc0) equal torch.autograd on the nn module with the same weights to 1e-10, on random shapes
   (T=1, T=50, B=1, odd H), both layouts, with a random upstream gradient on every output step
   and on the final state; gradcheck agrees on tiny cases.
2. The one-hot ids path equals feeding F.one_hot(ids).to(dtype) to the nn module.
3. float32 agrees with the nn module to ~1e-5 with every GEMM choice; a path is deterministic.
4. fused_rnn is a drop-in for module(inp, hx): several layers, dropout between them, eval.
5. Only what requires grad gets a gradient; no-grad calls build no graph; misuse is refused.

The reference is always the nn module through autograd; nothing here reuses the kernels' code.
The C++ paths need the built extension; where it cannot be built they skip, saying why.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnn_train.kernels.build import extension
from rnn_train.kernels.fused import FusedPath, can_fuse, fused_rnn, fused_rnn_layer, loop_cells
from rnn_train.kernels.gemm import onednn_available

MODULES = {"gru": nn.GRU, "rnn": nn.RNN, "lstm": nn.LSTM}
PARAM_NAMES = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
PYTHON = FusedPath("python", "blas")
PATHS = {
    "python": PYTHON,
    "cpp-rows": FusedPath("cpp", "blas", "blas", threads="rows"),  # a block of batch rows per thread
    "cpp-units": FusedPath("cpp", "blas", "blas", threads="units"),  # a block of hidden units per thread
    "cpp-serial": FusedPath("cpp", "blas", "blas", threads="blas"),
    "cpp-aten": FusedPath("cpp", "blas", "aten", threads="rows"),
    "cpp-tiled-rows": FusedPath("cpp", "tiled", "tiled", threads="rows"),  # csrc/tiled.h, rows per thread
    "cpp-tiled-units": FusedPath("cpp", "blas", "tiled", threads="units"),  # csrc/tiled.h, whole panels per thread
    "cpp-tiled-serial": FusedPath("cpp", "blas", "tiled", threads="blas"),
    "python-tiled": FusedPath("python", "tiled"),  # the Python loop with the tiled weight gradients
}
F32_GEMMS = ["blas", "auto", "tiled", "auto-tiled"] + (["onednn"] if onednn_available() else [])


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # one torch thread per test (conftest)


def usable(path: FusedPath) -> FusedPath:
    """`path`, or a skip saying why the C++ loop cannot run here; two threads where blocks run on
    threads, so that they really are split (B >= 8 rows or H >= 32 units in the tests that
    exercise them)."""
    if path.loop == "cpp" and extension() is None:
        pytest.skip("the C++ kernels could not be built on this machine (see the note on stderr)")
    if path.threads != "blas":
        torch.set_num_threads(2)
    return path


def path_cells(paths, cells=("gru", "rnn", "lstm")):
    """(path name, cell) pairs that exist: the Python loop has no LSTM."""
    return [(p, c) for p in paths for c in cells if c in loop_cells(PATHS[p].loop)]


def make_case(cell, B, T, I, H, *, seed, dtype=torch.float64, batch_first=True, one_hot=False, bias=True,
              nonlinearity="tanh", scale=1.0):
    """An nn module with random weights, an input, h0 (c0) and upstream gradients for out and the final state.

    Weights ~ U(-scale, scale): the float64 tests use 1, wider than PyTorch's 1/sqrt(H), so every
    gate saturates somewhere; float32 uses PyTorch's, where rounding does not grow chaotically."""
    g = torch.Generator().manual_seed(seed)
    kwargs = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
    module = MODULES[cell](I, H, batch_first=batch_first, bias=bias, **kwargs).to(dtype)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((torch.rand(p.shape, generator=g, dtype=dtype) * 2 - 1) * scale)
    lead = (B, T) if batch_first else (T, B)
    ids = torch.randint(0, I, lead, generator=g)
    x = torch.randn(*lead, I, generator=g, dtype=dtype)
    case = {
        "cell": cell,
        "module": module,
        "ids": ids,
        "x": F.one_hot(ids, I).to(dtype) if one_hot else x,
        "h0": torch.randn(B, H, generator=g, dtype=dtype),
        "d_out": torch.randn(*lead, H, generator=g, dtype=dtype),
        "d_hT": torch.randn(B, H, generator=g, dtype=dtype),
    }
    if cell == "lstm":
        case["c0"] = torch.randn(B, H, generator=g, dtype=dtype)
        case["d_cT"] = torch.randn(B, H, generator=g, dtype=dtype)
    return case


def _states(case):
    h0 = case["h0"].clone().requires_grad_()
    c0 = case["c0"].clone().requires_grad_() if "c0" in case else None
    return h0, c0


def _loss(case, out, h_T, c_T):
    loss = (out * case["d_out"]).sum() + (h_T * case["d_hT"]).sum()
    return loss + (c_T * case["d_cT"]).sum() if c_T is not None else loss


def reference(case):
    """nn module + autograd: {name: tensor} for outputs and every gradient."""
    m = case["module"]
    x = case["x"].clone().requires_grad_()
    h0, c0 = _states(case)
    if c0 is None:
        out, h_n = m(x, h0[None])
        c_T = None
    else:
        out, (h_n, c_n) = m(x, (h0[None], c0[None]))
        c_T = c_n[0]
    params = [getattr(m, n) for n in PARAM_NAMES if getattr(m, n, None) is not None]
    wrt = [x, h0] + ([c0] if c0 is not None else []) + params
    grads = torch.autograd.grad(_loss(case, out, h_n[0], c_T), wrt)
    names = ["dx", "dh0"] + (["dc0"] if c0 is not None else []) + ["d" + n for n in PARAM_NAMES[: len(params)]]
    result = {"out": out.detach(), "h_T": h_n[0].detach(), **dict(zip(names, grads))}
    if c_T is not None:
        result["c_T"] = c_T.detach()
    return result


def fused_run(case, *, one_hot_ids=False, path=PYTHON):
    """The fused layer on the same weights; same keys as `reference` (no dx for ids)."""
    m, cell = case["module"], case["cell"]
    params = [getattr(m, n, None) for n in PARAM_NAMES]
    inp = case["ids"] if one_hot_ids else case["x"].clone().requires_grad_()
    h0, c0 = _states(case)
    out, h_T, *c = fused_rnn_layer(cell, inp, h0, *params, c0=c0, one_hot_ids=one_hot_ids, batch_first=m.batch_first,
                                   nonlinearity=getattr(m, "nonlinearity", "tanh"), path=path)
    c_T = c[0] if c else None
    live = [p for p in params if p is not None]
    wrt = ([] if one_hot_ids else [inp]) + [h0] + ([c0] if c0 is not None else []) + live
    grads = torch.autograd.grad(_loss(case, out, h_T, c_T), wrt)
    names = (([] if one_hot_ids else ["dx"]) + ["dh0"] + (["dc0"] if c0 is not None else [])
             + ["d" + n for n in PARAM_NAMES[: len(live)]])
    result = {"out": out.detach(), "h_T": h_T.detach(), **dict(zip(names, grads))}
    if c_T is not None:
        result["c_T"] = c_T.detach()
    return result


def flat(state):
    """The final state as a tuple: (h_n,) or (h_n, c_n)."""
    return state if isinstance(state, tuple) else (state,)


def maxdiff(a, b):
    return float((a.detach() - b.detach()).abs().max())


def assert_same(ours, theirs, tol, rel=False):
    """Every quantity of `ours` matches `theirs`: same shape, max |diff| <= tol (x max(1, max|theirs|) if rel)."""
    assert ours.keys() <= theirs.keys()
    for name, value in ours.items():
        want = theirs[name]
        assert value.shape == want.shape, name
        scale = max(1.0, float(want.abs().max())) if rel else 1.0
        diff = maxdiff(value, want)
        assert diff <= tol * scale, f"{name}: max |diff| {diff:.3e} > {tol * scale:.1e}"


SHAPES = [  # (B, T, I, H)
    (3, 1, 5, 4),  # one step
    (1, 50, 7, 9),  # one sequence, long: gradients cross 50 steps
    (11, 13, 6, 17),  # odd H, B not a multiple of the row blocks
    (9, 7, 5, 40),  # two unit blocks of unequal size (32 + 8)
    (5, 50, 3, 1),  # H = 1
]


# ----------------------------------------------------------------------------- 1. float64 equality


@pytest.mark.parametrize("path,cell", path_cells(["python", "cpp-rows", "cpp-units", "cpp-serial", "cpp-tiled-rows",
                                                 "cpp-tiled-units", "cpp-tiled-serial", "python-tiled"]))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_T{}_I{}_H{}".format(*s))
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_major"])
def test_float64_outputs_and_every_gradient_equal_nn(path, cell, shape, batch_first):
    path = usable(PATHS[path])
    case = make_case(cell, *shape, seed=sum(shape), batch_first=batch_first)
    ref = reference(case)
    ours = fused_run(case, path=path)
    want = {"out", "h_T", "dx", "dh0", "dweight_ih_l0", "dweight_hh_l0", "dbias_ih_l0", "dbias_hh_l0"}
    assert set(ours) == (want | {"c_T", "dc0"} if cell == "lstm" else want)
    assert_same(ours, ref, 1e-10)


@pytest.mark.parametrize("path,cell", path_cells(["cpp-aten"]))
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_major"])
def test_float64_equality_holds_for_the_aten_step_gemm(path, cell, batch_first):
    path = usable(PATHS[path])
    case = make_case(cell, *SHAPES[2], seed=2, batch_first=batch_first)  # rows split, the ATen GEMM
    assert_same(fused_run(case, path=path), reference(case), 1e-10)


@pytest.mark.parametrize("path", ["python", "cpp-rows", "cpp-tiled-rows"])
def test_relu_rnn_and_bias_free_layers_equal_nn(path):
    path = usable(PATHS[path])
    relu = make_case("rnn", 3, 20, 4, 6, seed=1, nonlinearity="relu")
    assert_same(fused_run(relu, path=path), reference(relu), 1e-10)
    for cell in ("gru", "rnn", "lstm"):
        if cell not in loop_cells(path.loop):
            continue
        case = make_case(cell, 3, 20, 4, 6, seed=2, bias=False)
        ours = fused_run(case, path=path)
        assert "dbias_ih_l0" not in ours
        assert_same(ours, reference(case), 1e-10)


@pytest.mark.parametrize("path,cell", path_cells(["python", "cpp-serial", "cpp-tiled-serial"]))
def test_gradcheck_on_a_tiny_case(path, cell):
    path = usable(PATHS[path])
    case = make_case(cell, 2, 4, 3, 3, seed=3)
    m = case["module"]
    params = [getattr(m, n).detach().clone().requires_grad_() for n in PARAM_NAMES]
    x, (h0, c0) = case["x"].clone().requires_grad_(), _states(case)
    states = (h0,) if c0 is None else (h0, c0)

    def f(x, *rest):
        st, p = rest[: len(states)], rest[len(states):]
        return fused_rnn_layer(cell, x, st[0], *p, c0=st[1] if len(st) > 1 else None, path=path)

    assert torch.autograd.gradcheck(f, (x, *states, *params))

    def f_ids(*rest):  # the ids path: gradients w.r.t. the states and the weights
        st, p = rest[: len(states)], rest[len(states):]
        return fused_rnn_layer(cell, case["ids"], st[0], *p, c0=st[1] if len(st) > 1 else None, one_hot_ids=True,
                               path=path)

    assert torch.autograd.gradcheck(f_ids, (*states, *params))


# ----------------------------------------------------------------------------- 2. one-hot ids


@pytest.mark.parametrize("path,cell", path_cells(["python", "cpp-rows", "cpp-tiled-rows"]))
@pytest.mark.parametrize("shape", [(9, 13, 6, 17), (1, 50, 66, 8), (6, 1, 2, 5)],
                         ids=lambda s: "B{}_T{}_V{}_H{}".format(*s))
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_major"])
def test_one_hot_ids_equal_nn_on_one_hot_input(path, cell, shape, batch_first):
    path = usable(PATHS[path])
    case = make_case(cell, *shape, seed=7 + sum(shape), batch_first=batch_first, one_hot=True)
    ref = reference(case)  # nn module fed F.one_hot(ids).double()
    ours = fused_run(case, one_hot_ids=True, path=path)
    assert "dx" not in ours and "dweight_ih_l0" in ours
    assert_same(ours, ref, 1e-10)


@pytest.mark.parametrize("path,cell", path_cells(["cpp-rows", "cpp-units", "cpp-tiled-rows", "cpp-tiled-units"]))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_ids_and_their_one_hot_rows_run_the_same_arithmetic(path, cell, dtype):
    """The C++ loop reads a step's input projection where it lies: the gather table's row for ids,
    the all-steps projection for float input. A one-hot row's projection is that same table row
    (a sum with one nonzero term), so both give the same outputs bit for bit."""
    path = usable(PATHS[path])
    case = make_case(cell, 9, 6, 7, 40, seed=12, dtype=dtype, one_hot=True, scale=40**-0.5)
    params = [getattr(case["module"], n) for n in PARAM_NAMES]
    c0 = {"c0": case["c0"]} if cell == "lstm" else {}
    with torch.no_grad():
        from_ids = fused_rnn_layer(cell, case["ids"], case["h0"], *params, one_hot_ids=True, path=path, **c0)
        from_rows = fused_rnn_layer(cell, case["x"], case["h0"], *params, path=path, **c0)
    assert len(from_ids) == len(from_rows) == (3 if cell == "lstm" else 2)
    for name, a, b in zip(("out", "h_T", "c_T"), from_ids, from_rows):
        assert torch.equal(a, b), name


def test_ids_of_any_integer_type_give_the_same_result():
    case = make_case("gru", 3, 9, 6, 5, seed=8, one_hot=True)
    m = case["module"]
    params = [getattr(m, n) for n in PARAM_NAMES]
    want = fused_rnn_layer("gru", case["ids"], case["h0"], *params, one_hot_ids=True)
    for dtype in (torch.uint8, torch.int16, torch.int32):
        got = fused_rnn_layer("gru", case["ids"].to(dtype), case["h0"], *params, one_hot_ids=True)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), dtype


@pytest.mark.parametrize("path", ["python", "cpp-rows", "cpp-units", "cpp-tiled-rows"])
def test_ids_beyond_the_vocabulary_are_refused(path):
    path = usable(PATHS[path])
    case = make_case("gru", 9, 3, 4, 40, seed=0)
    m = case["module"]
    p = [getattr(m, n) for n in PARAM_NAMES]
    for bad in (case["ids"] + 4, case["ids"] - 5):
        with pytest.raises((IndexError, RuntimeError)):
            fused_rnn_layer("gru", bad, case["h0"], *p, one_hot_ids=True, path=path)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_the_one_hot_row_ops_give_the_torch_ops_results_bit_for_bit(threads, dtype):
    """The C++ loop's one-hot table (W_ih^T + bias) and its dW_ih (deltas summed by id) are the
    same adds as torch.add and index_add_, in the same order: equal bit for bit, on any threads."""
    ops = extension()
    if ops is None:
        pytest.fail("the C++ kernels did not build here (see the note on stderr)")
    g = torch.Generator().manual_seed(3)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n, c, rows in ((1120, 1024, 65), (300, 700, 4000), (5, 3, 2), (0, 8, 5)):
            ids = torch.randint(0, rows, (n,), generator=g)
            src = torch.randn(n, c, generator=g, dtype=dtype) * 10 ** torch.randint(-3, 4, (n, 1), generator=g)
            want = torch.zeros(rows, c, dtype=dtype).index_add_(0, ids, src)
            assert torch.equal(ops.rows_added(ids, src, rows), want)
            assert torch.equal(ops.rows_added(ids.int(), src, rows), want)
        w, b = torch.randn(96, 65, generator=g, dtype=dtype), torch.randn(96, generator=g, dtype=dtype)
        assert torch.equal(ops.gather_table(w, b), torch.add(w.t(), b))
        assert torch.equal(ops.gather_table(w, None), w.t().contiguous())
    finally:
        torch.set_num_threads(before)
    with pytest.raises(RuntimeError, match=r"id 5 is outside \[0, 5\)"):
        ops.rows_added(torch.tensor([0, 5]), torch.randn(2, 3), 5)


# ----------------------------------------------------------------------------- 3. float32


def float32_case(cell, one_hot_ids):
    return make_case(cell, 8, 35, 30, 64, seed=11, dtype=torch.float32, one_hot=one_hot_ids, scale=64**-0.5)


@pytest.mark.parametrize("path,cell", path_cells(["python", "cpp-rows", "cpp-units", "cpp-serial", "cpp-aten",
                                                 "cpp-tiled-rows", "cpp-tiled-units"]))
@pytest.mark.parametrize("one_hot_ids", [False, True], ids=["dense", "ids"])
def test_float32_agrees_with_nn(path, cell, one_hot_ids):
    path = usable(PATHS[path])
    case = float32_case(cell, one_hot_ids)
    ours = fused_run(case, one_hot_ids=one_hot_ids, path=path)
    assert ours["out"].dtype == torch.float32 and ours["dweight_hh_l0"].dtype == torch.float32
    assert_same(ours, reference(case), 1e-5, rel=True)


@pytest.mark.parametrize("loop", ["python", "cpp-serial"])
@pytest.mark.parametrize("gemm", F32_GEMMS)
@pytest.mark.parametrize("one_hot_ids", [False, True], ids=["dense", "ids"])
def test_float32_agrees_with_nn_with_every_gemm_backend(loop, gemm, one_hot_ids):
    # "onednn" forces oneDNN for every GEMM (too small for "auto" to pick it), "blas" forces torch.mm
    base = usable(PATHS[loop])
    case = float32_case("gru", one_hot_ids)
    ours = fused_run(case, one_hot_ids=one_hot_ids, path=FusedPath(base.loop, gemm, base.step, base.threads))
    assert_same(ours, reference(case), 1e-5, rel=True)


@pytest.mark.parametrize("path", list(PATHS), ids=str)
def test_a_path_gives_bit_identical_results_every_time(path):
    """Same config + seed, same losses: each path is deterministic for a given shape and thread count."""
    path = usable(PATHS[path])
    case = make_case("gru", 16, 20, 9, 24, seed=5, dtype=torch.float32, scale=24**-0.5)
    first, second = fused_run(case, path=path), fused_run(case, path=path)
    for name, value in first.items():
        assert torch.equal(value, second[name]), name


@pytest.mark.parametrize("cell", ["gru", "rnn", "lstm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_the_tiled_loop_splits_units_over_threads_without_changing_a_bit(cell, dtype):
    """Units mode hands each thread whole panels of the tiles one block would compute, so the
    split may change the speed, never the rounding (H = 100: unequal blocks, a partial last panel)."""
    one, units = usable(PATHS["cpp-tiled-serial"]), usable(PATHS["cpp-tiled-units"])
    case = make_case(cell, 9, 7, 6, 100, seed=3, dtype=dtype, scale=100**-0.5)
    torch.set_num_threads(2)  # for both: the all-steps GEMMs, threaded alike
    split, whole = fused_run(case, path=units), fused_run(case, path=one)
    for name, value in whole.items():
        assert torch.equal(value, split[name]), name


def test_onednn_gemm_is_refused_where_it_cannot_run():
    case = make_case("gru", 2, 3, 4, 5, seed=0)  # float64
    m = case["module"]
    with pytest.raises(ValueError, match="onednn"):
        fused_rnn_layer("gru", case["x"], case["h0"], *(getattr(m, n) for n in PARAM_NAMES),
                        path=FusedPath("python", "onednn"))
    with pytest.raises(ValueError, match="not a fused path"):
        FusedPath("python", "mkl")
    with pytest.raises(ValueError, match="not a fused path"):
        FusedPath("fortran")
    with pytest.raises(ValueError, match="not a fused path"):
        FusedPath("cpp", "blas", "aten", threads="units")  # torch.mm splits its own work: no units blocks


def test_auto_tiled_falls_back_to_what_the_tensors_and_the_build_allow(monkeypatch):
    """gemm="auto-tiled": oneDNN's products and the tiles' weight gradients on float32 CPU weights;
    float64 (which oneDNN does not take here) keeps the tiles, a machine without the C++ build keeps oneDNN."""
    from rnn_train.kernels import gemm

    w32, w64 = torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.float64)
    if not onednn_available() or extension() is None:
        pytest.fail("this machine should have both oneDNN and the C++ kernels")
    assert gemm.resolve_gemm("auto-tiled", w32) == gemm.AUTO_TILED
    assert gemm.resolve_gemm("auto-tiled", w64) == gemm.TILED
    monkeypatch.setattr(gemm, "tiled_available", lambda: False)
    assert gemm.resolve_gemm("auto-tiled", w32) == gemm.AUTO
    assert gemm.resolve_gemm("auto-tiled", w64) == gemm.BLAS
    big = 2 * gemm.ONEDNN_MIN_WORK_PER_THREAD * torch.get_num_threads()
    assert gemm._uses_onednn(gemm.AUTO_TILED, big, 1, 1) and not gemm._uses_onednn(gemm.AUTO_TILED, 1, 1, 1)
    monkeypatch.setattr(gemm, "tiled_available", lambda: pytest.fail("blas and auto never ask for the C++ build"))
    assert gemm.resolve_gemm("blas", w32) == gemm.BLAS and gemm.resolve_gemm("auto", w32) == gemm.AUTO


# ----------------------------------------------------------------------------- 4. the module drop-in


@pytest.mark.parametrize("path,cell", path_cells(["python", "cpp-rows"]))
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_major"])
def test_fused_rnn_is_a_drop_in_for_a_stacked_module(path, cell, batch_first):
    path = usable(PATHS[path])
    torch.manual_seed(0)
    m = MODULES[cell](5, 7, num_layers=3, batch_first=batch_first).double()
    lead = (10, 9) if batch_first else (9, 10)
    ids = torch.randint(0, 5, lead)
    hx = torch.randn(3, 10, 7, dtype=torch.float64)
    cx = torch.randn(3, 10, 7, dtype=torch.float64)
    d_out = torch.randn(*lead, 7, dtype=torch.float64)

    def run(fn):
        m.zero_grad()
        h, c = hx.clone().requires_grad_(), cx.clone().requires_grad_()
        out, state = fn((h, c) if cell == "lstm" else h)
        final = state if cell == "lstm" else (state,)
        ((out * d_out).sum() + sum(s.sum() for s in final)).backward()
        grads = [h.grad] + ([c.grad] if cell == "lstm" else [])
        return [out.detach(), *(s.detach() for s in final), *grads] + [p.grad.clone() for p in m.parameters()]

    ref = run(lambda st: m(F.one_hot(ids, 5).double(), st))
    ours = run(lambda st: fused_rnn(m, ids, st, one_hot_ids=True, path=path))
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape and maxdiff(a, b) <= 1e-10


@pytest.mark.parametrize("path", ["python", "cpp-rows"])
def test_dropout_between_layers_draws_the_same_masks_as_the_module(path):
    path = usable(PATHS[path])
    m = nn.GRU(5, 6, num_layers=2, dropout=0.5, batch_first=True).double().train().requires_grad_(False)
    x = torch.randn(3, 8, 5, dtype=torch.float64)
    torch.manual_seed(123)
    ref, _ = m(x)
    torch.manual_seed(123)
    ours, _ = fused_rnn(m, x, path=path)
    assert maxdiff(ours, ref) <= 1e-10
    torch.manual_seed(124)
    other, _ = fused_rnn(m, x, path=path)
    assert maxdiff(other, ref) > 1e-3  # the masks really are random
    m.eval()  # no dropout: no randomness
    assert maxdiff(fused_rnn(m, x, path=path)[0], m(x)[0]) <= 1e-10


@pytest.mark.parametrize("path,cell", path_cells(["python", "cpp-rows"]))
def test_state_defaults_to_zeros_and_no_grad_builds_no_graph(path, cell):
    path = usable(PATHS[path])
    m = MODULES[cell](4, 6, batch_first=True).double()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    ref_out, ref_state = m(x)
    out, state = fused_rnn(m, x, path=path)
    assert maxdiff(out, ref_out) <= 1e-10
    for a, b in zip(flat(state), flat(ref_state)):
        assert maxdiff(a, b) <= 1e-10
    with torch.no_grad():
        out2, state2 = fused_rnn(m, x, path=path)
    assert out2.grad_fn is None and all(s.grad_fn is None for s in flat(state2))
    assert torch.equal(out2, out.detach()) and all(torch.equal(a, b.detach()) for a, b in zip(flat(state2), flat(state)))
    # generation: one step at a time, carrying the state, gives the same states as one call
    st, steps = None, []
    with torch.no_grad():
        for t in range(5):
            o, st = fused_rnn(m, x[:, t : t + 1], st, path=path)
            steps.append(o)
    assert maxdiff(torch.cat(steps, 1), out) <= 1e-12


def test_can_fuse_says_where_each_loop_applies():
    assert can_fuse(nn.GRU(3, 4)) and can_fuse(nn.RNN(3, 4, nonlinearity="relu", num_layers=2))
    assert not can_fuse(nn.LSTM(3, 4)) and can_fuse(nn.LSTM(3, 4), loop="cpp")
    assert not can_fuse(nn.LSTM(3, 4, proj_size=2), loop="cpp")
    assert not can_fuse(nn.GRU(3, 4, bidirectional=True), loop="cpp")
    assert not can_fuse(nn.GRU(3, 4).half(), loop="cpp")
    with pytest.raises(ValueError, match="rnn/gru"):
        fused_rnn(nn.LSTM(3, 4), torch.randn(2, 3, 3))


# ----------------------------------------------------------------------------- 5. grads, graph, misuse


@pytest.mark.parametrize("path", ["python", "cpp-rows"])
def test_only_what_requires_grad_gets_a_gradient(path):
    path = usable(PATHS[path])
    case = make_case("gru", 3, 6, 4, 5, seed=4)
    m = case["module"]
    m.weight_ih_l0.requires_grad_(False)
    m.bias_hh_l0.requires_grad_(False)
    out, h_T = fused_rnn_layer("gru", case["x"], case["h0"], *(getattr(m, n) for n in PARAM_NAMES), path=path)
    (out.sum() + h_T.sum()).backward()
    assert m.weight_ih_l0.grad is None and m.bias_hh_l0.grad is None
    assert m.weight_hh_l0.grad is not None and m.bias_ih_l0.grad is not None
    ref_case = make_case("gru", 3, 6, 4, 5, seed=4)
    ref_out, ref_h = ref_case["module"](ref_case["x"], ref_case["h0"][None])
    (ref_out.sum() + ref_h.sum()).backward()
    assert maxdiff(m.weight_hh_l0.grad, ref_case["module"].weight_hh_l0.grad) <= 1e-10
    assert maxdiff(m.bias_ih_l0.grad, ref_case["module"].bias_ih_l0.grad) <= 1e-10


@pytest.mark.parametrize("path", ["python", "cpp-rows"])
def test_modifying_the_output_in_place_is_refused(path):
    """out views the states saved for backward: changing it in place would corrupt the gradients."""
    path = usable(PATHS[path])
    case = make_case("gru", 2, 4, 3, 5, seed=6)
    m = case["module"]
    out, _ = fused_rnn_layer("gru", case["x"], case["h0"], *(getattr(m, n) for n in PARAM_NAMES), path=path)
    with pytest.raises(RuntimeError, match="inplace"):
        out.mul_(2)
    out.detach().mul(2)  # out-of-place use is fine


def test_misuse_is_refused_with_a_message():
    case = make_case("gru", 2, 3, 4, 5, seed=0)
    m = case["module"]
    p = [getattr(m, n) for n in PARAM_NAMES]
    with pytest.raises(ValueError, match="cell"):
        fused_rnn_layer("lstm", case["x"], case["h0"], *p)  # the Python loop has no LSTM
    with pytest.raises(ValueError, match="cell"):
        fused_rnn_layer("elman", case["x"], case["h0"], *p, path=FusedPath("cpp"))
    with pytest.raises(ValueError, match="h0 must have shape"):
        fused_rnn_layer("gru", case["x"], case["h0"][:1], *p)
    with pytest.raises(ValueError, match="features"):
        fused_rnn_layer("gru", case["x"][..., :3], case["h0"], *p)
    with pytest.raises(ValueError, match="T >= 1"):
        fused_rnn_layer("gru", case["x"][:, :0], case["h0"], *p)
    with pytest.raises(ValueError, match="one dtype"):
        fused_rnn_layer("gru", case["x"], case["h0"].float(), *p)
    with pytest.raises(ValueError, match="integer ids"):
        fused_rnn_layer("gru", case["x"], case["h0"], *p, one_hot_ids=True)
    with pytest.raises(ValueError, match="nonlinearity"):
        fused_rnn_layer("gru", case["x"], case["h0"], *p, nonlinearity="relu")
    with pytest.raises(ValueError, match="both"):
        fused_rnn_layer("gru", case["x"], case["h0"], p[0], p[1], p[2], None)
    with pytest.raises(ValueError, match="c0"):
        fused_rnn_layer("gru", case["x"], case["h0"], *p, c0=case["h0"])
