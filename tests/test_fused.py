"""The fused CPU RNN/GRU layer (rnn_train/fused.py) is nn.RNN / nn.GRU, gradient for gradient.

Specification:
1. float64: outputs and every gradient (dx or, for one-hot ids, dW_ih; dW_hh, db_ih, db_hh, dh0)
   equal torch.autograd on nn.GRU / nn.RNN with the same weights to 1e-10, on random shapes
   (T=1, T=50, B=1, odd H), both layouts, with a random upstream gradient on every output step
   and on h_T; gradcheck agrees on tiny cases.
2. The one-hot ids path equals feeding F.one_hot(ids).to(dtype) to the nn module.
3. float32 agrees with nn.GRU to ~1e-5 with either GEMM backend.
4. fused_rnn is a drop-in for module(inp, hx): several layers, dropout between them, eval.
5. Only what requires grad gets a gradient; no-grad calls build no graph; misuse is refused.

The reference is always the nn module through autograd; nothing here reuses fused.py's code.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnn_train.kernels import fused
from rnn_train.kernels.fused import can_fuse, fused_rnn, fused_rnn_layer

MODULES = {"gru": nn.GRU, "rnn": nn.RNN}
PARAM_NAMES = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
GEMMS = ["blas", "auto"] + (["onednn"] if fused.onednn_available() else [])


def make_case(cell, B, T, I, H, *, seed, dtype=torch.float64, batch_first=True, one_hot=False, bias=True,
              nonlinearity="tanh", scale=1.0):
    """An nn module with random weights, an input, h0 and upstream gradients for out and h_T.

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
    return {
        "module": module,
        "ids": ids,
        "x": F.one_hot(ids, I).to(dtype) if one_hot else x,
        "h0": torch.randn(B, H, generator=g, dtype=dtype),
        "d_out": torch.randn(*lead, H, generator=g, dtype=dtype),
        "d_hT": torch.randn(B, H, generator=g, dtype=dtype),
    }


def reference(case):
    """nn module + autograd: {name: tensor} for outputs and every gradient."""
    m = case["module"]
    x = case["x"].clone().requires_grad_()
    h0 = case["h0"].clone().requires_grad_()
    out, h_n = m(x, h0[None])
    params = [getattr(m, n) for n in PARAM_NAMES if getattr(m, n, None) is not None]
    loss = (out * case["d_out"]).sum() + (h_n[0] * case["d_hT"]).sum()
    grads = torch.autograd.grad(loss, [x, h0, *params])
    names = ["dx", "dh0"] + ["d" + n for n in PARAM_NAMES[: len(params)]]
    return {"out": out.detach(), "h_T": h_n[0].detach(), **dict(zip(names, grads))}


def fused_run(case, *, one_hot_ids=False, gemm="auto"):
    """The fused layer on the same weights; same keys as `reference` (no dx for ids)."""
    m = case["module"]
    cell = "gru" if isinstance(m, nn.GRU) else "rnn"
    params = [getattr(m, n, None) for n in PARAM_NAMES]
    inp = case["ids"] if one_hot_ids else case["x"].clone().requires_grad_()
    h0 = case["h0"].clone().requires_grad_()
    out, h_T = fused_rnn_layer(cell, inp, h0, *params, one_hot_ids=one_hot_ids, batch_first=m.batch_first,
                               nonlinearity=getattr(m, "nonlinearity", "tanh"), gemm=gemm)
    live = [p for p in params if p is not None]
    loss = (out * case["d_out"]).sum() + (h_T * case["d_hT"]).sum()
    wrt = ([] if one_hot_ids else [inp]) + [h0, *live]
    grads = torch.autograd.grad(loss, wrt)
    names = ([] if one_hot_ids else ["dx"]) + ["dh0"] + ["d" + n for n in PARAM_NAMES[: len(live)]]
    return {"out": out.detach(), "h_T": h_T.detach(), **dict(zip(names, grads))}


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
    (4, 13, 6, 17),  # odd H
    (5, 50, 3, 1),  # H = 1
]


# ----------------------------------------------------------------------------- 1. float64 equality


@pytest.mark.parametrize("cell", ["gru", "rnn"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_T{}_I{}_H{}".format(*s))
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_major"])
def test_float64_outputs_and_every_gradient_equal_nn(cell, shape, batch_first):
    case = make_case(cell, *shape, seed=sum(shape), batch_first=batch_first)
    ref = reference(case)
    ours = fused_run(case)
    assert set(ours) == {"out", "h_T", "dx", "dh0", "dweight_ih_l0", "dweight_hh_l0", "dbias_ih_l0", "dbias_hh_l0"}
    assert_same(ours, ref, 1e-10)


def test_relu_rnn_and_bias_free_layers_equal_nn():
    assert_same(fused_run(make_case("rnn", 3, 20, 4, 6, seed=1, nonlinearity="relu")),
                reference(make_case("rnn", 3, 20, 4, 6, seed=1, nonlinearity="relu")), 1e-10)
    for cell in ("gru", "rnn"):
        case = make_case(cell, 3, 20, 4, 6, seed=2, bias=False)
        ours = fused_run(case)
        assert "dbias_ih_l0" not in ours
        assert_same(ours, reference(case), 1e-10)


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_gradcheck_on_a_tiny_case(cell):
    case = make_case(cell, 2, 4, 3, 3, seed=3)
    m = case["module"]
    params = [getattr(m, n).detach().clone().requires_grad_() for n in PARAM_NAMES]
    x, h0 = case["x"].clone().requires_grad_(), case["h0"].clone().requires_grad_()

    def f(x, h0, *params):
        return fused_rnn_layer(cell, x, h0, *params)

    assert torch.autograd.gradcheck(f, (x, h0, *params))

    def f_ids(h0, *params):  # the ids path: gradients w.r.t. h0 and the weights
        return fused_rnn_layer(cell, case["ids"], h0, *params, one_hot_ids=True)

    assert torch.autograd.gradcheck(f_ids, (h0, *params))


# ----------------------------------------------------------------------------- 2. one-hot ids


@pytest.mark.parametrize("cell", ["gru", "rnn"])
@pytest.mark.parametrize("shape", [(4, 13, 6, 17), (1, 50, 66, 8), (6, 1, 2, 5)],
                         ids=lambda s: "B{}_T{}_V{}_H{}".format(*s))
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_major"])
def test_one_hot_ids_equal_nn_on_one_hot_input(cell, shape, batch_first):
    case = make_case(cell, *shape, seed=7 + sum(shape), batch_first=batch_first, one_hot=True)
    ref = reference(case)  # nn module fed F.one_hot(ids).double()
    ours = fused_run(case, one_hot_ids=True)
    assert "dx" not in ours and "dweight_ih_l0" in ours
    assert_same(ours, ref, 1e-10)


def test_ids_of_any_integer_type_give_the_same_result():
    case = make_case("gru", 3, 9, 6, 5, seed=8, one_hot=True)
    m = case["module"]
    params = [getattr(m, n) for n in PARAM_NAMES]
    want = fused_rnn_layer("gru", case["ids"], case["h0"], *params, one_hot_ids=True)
    for dtype in (torch.uint8, torch.int16, torch.int32):
        got = fused_rnn_layer("gru", case["ids"].to(dtype), case["h0"], *params, one_hot_ids=True)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), dtype


def test_ids_beyond_the_vocabulary_are_refused():
    case = make_case("gru", 2, 3, 4, 5, seed=0)
    m = case["module"]
    with pytest.raises((IndexError, RuntimeError)):
        fused_rnn_layer("gru", case["ids"] + 4, case["h0"], *(getattr(m, n) for n in PARAM_NAMES), one_hot_ids=True)


# ----------------------------------------------------------------------------- 3. float32


@pytest.mark.parametrize("cell", ["gru", "rnn"])
@pytest.mark.parametrize("gemm", GEMMS)
@pytest.mark.parametrize("one_hot_ids", [False, True], ids=["dense", "ids"])
def test_float32_agrees_with_nn(cell, gemm, one_hot_ids):
    # "onednn" forces oneDNN for every GEMM (too small for "auto" to pick it), "blas" forces torch.mm
    case = make_case(cell, 8, 35, 30, 64, seed=11, dtype=torch.float32, one_hot=one_hot_ids, scale=64**-0.5)
    ref = reference(case)
    ours = fused_run(case, one_hot_ids=one_hot_ids, gemm=gemm)
    assert ours["out"].dtype == torch.float32 and ours["dweight_hh_l0"].dtype == torch.float32
    assert_same(ours, ref, 1e-5, rel=True)


def test_onednn_gemm_is_refused_where_it_cannot_run():
    case = make_case("gru", 2, 3, 4, 5, seed=0)  # float64
    m = case["module"]
    with pytest.raises(ValueError, match="onednn"):
        fused_rnn_layer("gru", case["x"], case["h0"], *(getattr(m, n) for n in PARAM_NAMES), gemm="onednn")
    with pytest.raises(ValueError, match="gemm"):
        fused_rnn_layer("gru", case["x"], case["h0"], *(getattr(m, n) for n in PARAM_NAMES), gemm="mkl")


# ----------------------------------------------------------------------------- 4. the module drop-in


@pytest.mark.parametrize("cell", ["gru", "rnn"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_major"])
def test_fused_rnn_is_a_drop_in_for_a_stacked_module(cell, batch_first):
    torch.manual_seed(0)
    m = MODULES[cell](5, 7, num_layers=3, batch_first=batch_first).double()
    lead = (4, 9) if batch_first else (9, 4)
    ids = torch.randint(0, 5, lead)
    hx = torch.randn(3, 4, 7, dtype=torch.float64)
    d_out = torch.randn(*lead, 7, dtype=torch.float64)

    def run(fn):
        m.zero_grad()
        h = hx.clone().requires_grad_()
        out, h_n = fn(h)
        ((out * d_out).sum() + h_n.sum()).backward()
        return [out.detach(), h_n.detach(), h.grad] + [p.grad.clone() for p in m.parameters()]

    ref = run(lambda h: m(F.one_hot(ids, 5).double(), h))
    ours = run(lambda h: fused_rnn(m, ids, h, one_hot_ids=True))
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape and maxdiff(a, b) <= 1e-10


def test_dropout_between_layers_draws_the_same_masks_as_the_module():
    m = nn.GRU(5, 6, num_layers=2, dropout=0.5, batch_first=True).double().train().requires_grad_(False)
    x = torch.randn(3, 8, 5, dtype=torch.float64)
    torch.manual_seed(123)
    ref, _ = m(x)
    torch.manual_seed(123)
    ours, _ = fused_rnn(m, x)
    assert maxdiff(ours, ref) <= 1e-10
    torch.manual_seed(124)
    other, _ = fused_rnn(m, x)
    assert maxdiff(other, ref) > 1e-3  # the masks really are random
    m.eval()  # no dropout: no randomness
    assert maxdiff(fused_rnn(m, x)[0], m(x)[0]) <= 1e-10


def test_state_defaults_to_zeros_and_no_grad_builds_no_graph():
    m = nn.GRU(4, 6, batch_first=True).double()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    ref_out, ref_h = m(x)
    out, h_n = fused_rnn(m, x)
    assert maxdiff(out, ref_out) <= 1e-10 and maxdiff(h_n, ref_h) <= 1e-10
    with torch.no_grad():
        out2, h2 = fused_rnn(m, x)
    assert out2.grad_fn is None and h2.grad_fn is None
    assert torch.equal(out2, out.detach()) and torch.equal(h2, h_n.detach())
    # generation: one step at a time, carrying the state, gives the same states as one call
    h, steps = None, []
    with torch.no_grad():
        for t in range(5):
            o, h = fused_rnn(m, x[:, t : t + 1], h)
            steps.append(o)
    assert maxdiff(torch.cat(steps, 1), out) <= 1e-12


def test_can_fuse_says_where_the_fused_path_applies():
    assert can_fuse(nn.GRU(3, 4)) and can_fuse(nn.RNN(3, 4, nonlinearity="relu", num_layers=2))
    assert not can_fuse(nn.LSTM(3, 4))
    assert not can_fuse(nn.GRU(3, 4, bidirectional=True))
    assert not can_fuse(nn.GRU(3, 4).half())
    with pytest.raises(ValueError, match="nn.RNN / nn.GRU"):
        fused_rnn(nn.LSTM(3, 4), torch.randn(2, 3, 3))


# ----------------------------------------------------------------------------- 5. grads, graph, misuse


def test_only_what_requires_grad_gets_a_gradient():
    case = make_case("gru", 3, 6, 4, 5, seed=4)
    m = case["module"]
    m.weight_ih_l0.requires_grad_(False)
    m.bias_hh_l0.requires_grad_(False)
    out, h_T = fused_rnn_layer("gru", case["x"], case["h0"], *(getattr(m, n) for n in PARAM_NAMES))
    (out.sum() + h_T.sum()).backward()
    assert m.weight_ih_l0.grad is None and m.bias_hh_l0.grad is None
    assert m.weight_hh_l0.grad is not None and m.bias_ih_l0.grad is not None
    ref_case = make_case("gru", 3, 6, 4, 5, seed=4)
    ref_out, ref_h = ref_case["module"](ref_case["x"], ref_case["h0"][None])
    (ref_out.sum() + ref_h.sum()).backward()
    assert maxdiff(m.weight_hh_l0.grad, ref_case["module"].weight_hh_l0.grad) <= 1e-10
    assert maxdiff(m.bias_ih_l0.grad, ref_case["module"].bias_ih_l0.grad) <= 1e-10


def test_modifying_the_output_in_place_is_refused():
    """out views the states saved for backward: changing it in place would corrupt the gradients."""
    case = make_case("gru", 2, 4, 3, 5, seed=6)
    m = case["module"]
    out, _ = fused_rnn_layer("gru", case["x"], case["h0"], *(getattr(m, n) for n in PARAM_NAMES))
    with pytest.raises(RuntimeError, match="inplace"):
        out.mul_(2)
    out.detach().mul(2)  # out-of-place use is fine


def test_misuse_is_refused_with_a_message():
    case = make_case("gru", 2, 3, 4, 5, seed=0)
    m = case["module"]
    p = [getattr(m, n) for n in PARAM_NAMES]
    with pytest.raises(ValueError, match="cell"):
        fused_rnn_layer("lstm", case["x"], case["h0"], *p)
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
