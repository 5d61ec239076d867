"""The NumPy BPTT reference (rnn_train/teaching/bptt/) is PyTorch's RNN/GRU/LSTM, gradient for gradient.

Specification in four parts:
1. On random shapes, the forward outputs and every gradient equal torch.autograd on
   nn.RNN / nn.GRU / nn.LSTM with the same weights (float64, 1e-10) and equal centred finite
   differences; float32 runs in float32 and matches too.
2. Three small worked examples, their numbers derived by hand in each test, reproduce exactly.
3. The small helpers (linear, softmax cross-entropy, torch name conversion) and input checks.
4. `python -m rnn_train bptt` prints the comparison table and exits 0 only when all match.

The torch reference below is written independently of the CLI's, so the tests do not trust
the code they check.
"""
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rnn_train.teaching import bptt
from rnn_train.teaching.bptt.compare import main as compare_main

ROOT = Path(__file__).resolve().parents[1]
TORCH_MODULES = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}
DTYPES = {np.float64: torch.float64, np.float32: torch.float32}


# ----------------------------------------------------------------------------- shared fixtures


def make_problem(cell, T, B, I, H, seed, dtype=np.float64, bias=True):
    """Random weights, inputs, initial state and upstream gradients (on every step and on the final state)."""
    rng = np.random.default_rng(seed)
    p = {
        "params": bptt.init_params(cell, I, H, rng, bias=bias, dtype=dtype),
        "x": rng.standard_normal((T, B, I)).astype(dtype),
        "h0": rng.standard_normal((B, H)).astype(dtype),
        "dhs": rng.standard_normal((T, B, H)).astype(dtype),
        "dh_T": rng.standard_normal((B, H)).astype(dtype),
        "c0": None,
        "dc_T": None,
    }
    if cell == "lstm":
        p["c0"] = rng.standard_normal((B, H)).astype(dtype)
        p["dc_T"] = rng.standard_normal((B, H)).astype(dtype)
    return p


def numpy_run(cell, p, activation="tanh"):
    """Our forward + backward; returns {quantity name: array}."""
    hs, h_T, c_T, cache = bptt.forward(cell, p["x"], p["h0"], p["params"], c0=p["c0"], activation=activation)
    dx, dh0, dc0, grads = bptt.backward(p["dhs"], cache, p["dh_T"], p["dc_T"])
    out = {"hs": hs, "h_T": h_T, "dx": dx, "dh0": dh0, **{"d" + k: v for k, v in grads.items()}}
    if cell == "lstm":
        out.update(c_T=c_T, dc0=dc0)
    return out


def torch_run(cell, p, activation="tanh"):
    """torch.autograd on nn.RNN/GRU/LSTM loaded with the same weights; L = <hs, dhs> + <h_T, dh_T> (+ <c_T, dc_T>)."""
    dtype = DTYPES[p["x"].dtype.type]
    kwargs = {"nonlinearity": activation} if cell == "rnn" else {}
    module = TORCH_MODULES[cell](p["x"].shape[2], p["h0"].shape[1], bias="b_ih" in p["params"], **kwargs).to(dtype)
    state = {
        {"W_ih": "weight_ih_l0", "W_hh": "weight_hh_l0", "b_ih": "bias_ih_l0", "b_hh": "bias_hh_l0"}[k]: torch.tensor(v)
        for k, v in p["params"].items()
    }
    module.load_state_dict(state)  # strict: every torch parameter must be supplied
    x = torch.tensor(p["x"], requires_grad=True)
    h0 = torch.tensor(p["h0"][None], requires_grad=True)
    if cell == "lstm":
        c0 = torch.tensor(p["c0"][None], requires_grad=True)
        hs, (hn, cn) = module(x, (h0, c0))
        extra = (cn[0] * torch.tensor(p["dc_T"])).sum()
    else:
        hs, hn = module(x, h0)
        extra = 0
    loss = (hs * torch.tensor(p["dhs"])).sum() + (hn[0] * torch.tensor(p["dh_T"])).sum() + extra
    loss.backward()
    names = {"weight_ih_l0": "dW_ih", "weight_hh_l0": "dW_hh", "bias_ih_l0": "db_ih", "bias_hh_l0": "db_hh"}
    out = {"hs": hs.detach().numpy(), "h_T": hn[0].detach().numpy(), "dx": x.grad.numpy(), "dh0": h0.grad[0].numpy()}
    out.update({names[k]: v.grad.numpy() for k, v in module.named_parameters()})
    if cell == "lstm":
        out.update(c_T=cn[0].detach().numpy(), dc0=c0.grad[0].numpy())
    return out


def assert_all_close(ours, theirs, atol):
    """Same quantities, same shapes, max |difference| <= atol for each; the message names the culprit."""
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        assert ours[name].shape == theirs[name].shape, name
        diff = np.max(np.abs(ours[name] - theirs[name]))
        assert diff <= atol, f"{name}: max |numpy - torch| = {diff:.3e} > {atol:g}"


def expected_quantities(cell, bias=True):
    names = ["hs", "h_T", "dx", "dh0", "dW_ih", "dW_hh"] + (["db_ih", "db_hh"] if bias else [])
    return sorted(names + (["c_T", "dc0"] if cell == "lstm" else []))


# ----------------------------------------------------------------------------- 1. equal to torch.autograd

# (cell, T, B, I, H, seed): one step, a long sequence, batch 1, odd sizes; kept few so the file stays fast.
RANDOM_CASES = [
    (cell, *shape)
    for cell in bptt.CELLS
    for shape in [(1, 1, 1, 1, 0), (7, 3, 4, 5, 1), (50, 4, 6, 8, 2), (13, 1, 10, 3, 3), (24, 8, 2, 16, 4)]
]


@pytest.mark.parametrize("cell,T,B,I,H,seed", RANDOM_CASES)
def test_outputs_and_every_gradient_equal_torch_autograd_in_float64(cell, T, B, I, H, seed):
    p = make_problem(cell, T, B, I, H, seed)
    ours = numpy_run(cell, p)
    assert sorted(ours) == expected_quantities(cell)
    assert_all_close(ours, torch_run(cell, p), atol=1e-10)


@pytest.mark.parametrize("cell", bptt.CELLS)
def test_cells_without_biases_equal_torch_with_bias_false(cell):
    p = make_problem(cell, 9, 2, 3, 4, seed=10, bias=False)
    ours = numpy_run(cell, p)
    assert sorted(ours) == expected_quantities(cell, bias=False)  # no db_* for a bias-free cell
    assert_all_close(ours, torch_run(cell, p), atol=1e-10)


def test_relu_rnn_equals_torch_nonlinearity_relu():
    p = make_problem("rnn", 20, 3, 4, 6, seed=11)
    assert_all_close(numpy_run("rnn", p, "relu"), torch_run("rnn", p, "relu"), atol=1e-10)


def scalar_loss(cell, p, activation):
    """The scalar whose gradient backward computes: L = <hs, dhs> + <h_T, dh_T> (+ <c_T, dc_T>)."""
    hs, h_T, c_T, _ = bptt.forward(cell, p["x"], p["h0"], p["params"], c0=p["c0"], activation=activation)
    loss = np.sum(hs * p["dhs"]) + np.sum(h_T * p["dh_T"])
    return loss + (np.sum(c_T * p["dc_T"]) if cell == "lstm" else 0.0)


@pytest.mark.parametrize("cell,activation", [("rnn", "tanh"), ("rnn", "identity"), ("gru", "tanh"), ("lstm", "tanh")])
def test_gradients_equal_centred_finite_differences(cell, activation):
    p = make_problem(cell, 4, 2, 3, 3, seed=20)
    cache = bptt.forward(cell, p["x"], p["h0"], p["params"], c0=p["c0"], activation=activation).cache
    dx, dh0, dc0, grads = bptt.backward(p["dhs"], cache, p["dh_T"], p["dc_T"])
    analytic = {"x": dx, "h0": dh0, **grads}
    arrays = {"x": p["x"], "h0": p["h0"], **p["params"]}
    if cell == "lstm":
        analytic["c0"], arrays["c0"] = dc0, p["c0"]
    eps = 1e-6
    for name, array in arrays.items():  # perturb in place: forward reads these very arrays
        numeric = np.zeros_like(array)
        for idx in np.ndindex(array.shape):
            keep = array[idx]
            array[idx] = keep + eps
            up = scalar_loss(cell, p, activation)
            array[idx] = keep - eps
            down = scalar_loss(cell, p, activation)
            array[idx] = keep
            numeric[idx] = (up - down) / (2 * eps)
        diff = np.max(np.abs(numeric - analytic[name]))
        assert diff < 1e-7, f"d{name}: max |finite difference - backward| = {diff:.3e}"


@pytest.mark.parametrize("cell", bptt.CELLS)
def test_float32_inputs_compute_in_float32_and_match_torch_float32(cell):
    p = make_problem(cell, 30, 4, 5, 7, seed=30, dtype=np.float32)
    ours = numpy_run(cell, p)
    assert {v.dtype for v in ours.values()} == {np.dtype(np.float32)}
    assert_all_close(ours, torch_run(cell, p), atol=5e-5)


def test_integer_one_hot_inputs_compute_in_the_weights_dtype():
    ids = np.array([[0, 2], [1, 1], [2, 0]])  # [T=3, B=2] character ids
    one_hot = np.eye(3, dtype=np.int64)[ids]  # [T, B, V=3] built as ints
    params = bptt.init_params("gru", 3, 4, np.random.default_rng(44), dtype=np.float32)
    hs = bptt.gru_forward(one_hot, None, params).hs
    assert hs.dtype == np.float32
    np.testing.assert_array_equal(hs, bptt.gru_forward(one_hot.astype(np.float32), None, params).hs)


def test_missing_final_state_gradients_mean_zero():
    p = make_problem("lstm", 5, 2, 3, 4, seed=40)
    cache = bptt.lstm_forward(p["x"], p["h0"], p["c0"], p["params"]).cache
    implicit = bptt.lstm_backward(p["dhs"], cache)
    explicit = bptt.lstm_backward(p["dhs"], cache, np.zeros_like(p["h0"]), np.zeros_like(p["c0"]))
    for a, b in zip(implicit[:3], explicit[:3]):
        np.testing.assert_array_equal(a, b)
    for name in explicit.params:
        np.testing.assert_array_equal(implicit.params[name], explicit.params[name])


def test_missing_initial_state_means_zeros():
    p = make_problem("gru", 5, 2, 3, 4, seed=41)
    hs_default = bptt.gru_forward(p["x"], None, p["params"]).hs
    hs_zeros = bptt.gru_forward(p["x"], np.zeros_like(p["h0"]), p["params"]).hs
    np.testing.assert_array_equal(hs_default, hs_zeros)


def test_dispatcher_matches_the_cell_functions():
    for cell, run in [("rnn", bptt.rnn_forward), ("gru", bptt.gru_forward)]:
        p = make_problem(cell, 3, 2, 3, 4, seed=42)
        dispatched = bptt.forward(cell, p["x"], p["h0"], p["params"]).hs
        np.testing.assert_array_equal(dispatched, run(p["x"], p["h0"], p["params"]).hs)
    p = make_problem("lstm", 3, 2, 3, 4, seed=42)
    np.testing.assert_array_equal(
        bptt.forward("lstm", p["x"], p["h0"], p["params"], c0=p["c0"]).c_T,
        bptt.lstm_forward(p["x"], p["h0"], p["c0"], p["params"]).c_T,
    )


def test_forward_returns_final_state_equal_to_last_step_output():
    p = make_problem("lstm", 6, 2, 3, 4, seed=43)
    hs, h_T, c_T, cache = bptt.lstm_forward(p["x"], p["h0"], p["c0"], p["params"])
    assert hs.shape == (6, 2, 4) and h_T.shape == c_T.shape == (2, 4)
    np.testing.assert_array_equal(h_T, hs[-1])
    np.testing.assert_array_equal(c_T, cache.saved["cs"][-1])


# ----------------------------------------------------------------------------- 2. worked examples


def test_worked_example_one_unit_linear_rnn_with_softmax_and_one_sgd_step():
    """hidden = W.[h_prev, x], output = V.h, two steps, CE against class 0 on the last output.

    The published numbers reproduce only when W's first column multiplies h_prev (it is our
    W_hh) and its second multiplies x (W_ih): h1 = 0.2170*2 = 0.434,
    h2 = -0.3435*0.434 + 0.2170*3 = 0.501921. The last assertion shows the swapped reading
    gives a different output, so the interpretation is forced, not a guess.
    """
    W = np.array([[-0.3435, 0.2170]])
    V = np.array([[0.5131], [-0.7451]])  # nn.Linear layout [out=2, in=1]
    params = {"W_hh": W[:, :1].copy(), "W_ih": W[:, 1:].copy()}  # identity activation, no biases
    x = np.array([2.0, 3.0]).reshape(2, 1, 1)  # [T=2, B=1, I=1]
    h0 = np.zeros((1, 1))

    hs, h_T, _, cache = bptt.rnn_forward(x, h0, params, activation="identity")
    logits = bptt.linear_forward(h_T, V)  # [1, 2]
    loss, dlogits = bptt.softmax_cross_entropy(logits, np.array([0]))
    dh_T, dV, _ = bptt.linear_backward(dlogits, h_T, V)
    _, _, _, grads = bptt.rnn_backward(np.zeros_like(hs), cache, dh_T)  # loss only on the last step
    dW = np.hstack([grads["W_hh"], grads["W_ih"]])

    np.testing.assert_allclose(logits, [[0.257536, -0.373981]], atol=1e-6)
    assert loss == pytest.approx(0.426433, abs=1e-6)
    np.testing.assert_allclose(dW, [[-0.189573, -1.010330]], atol=1e-6)
    np.testing.assert_allclose(dV, [[-0.174250], [0.174250]], atol=1e-6)
    lr = 0.1
    np.testing.assert_allclose(W - lr * dW, [[-0.324543, 0.318033]], atol=1e-6)
    np.testing.assert_allclose(V - lr * dV, [[0.530525], [-0.762525]], atol=1e-6)

    swapped = {"W_hh": W[:, 1:].copy(), "W_ih": W[:, :1].copy()}
    h_swapped = bptt.rnn_forward(x, h0, swapped, activation="identity").h_T
    assert np.abs(bptt.linear_forward(h_swapped, V) - [[0.257536, -0.373981]]).max() > 0.1


def test_worked_example_tanh_rnn_cell_with_both_biases_equals_torch_rnn_4_5():
    """torch.nn.RNN(4, 5), 3 steps, batch 3, random h0, random upstream gradient on every step's output."""
    torch.manual_seed(0)
    rnn = torch.nn.RNN(4, 5).double()
    params = bptt.params_from_torch({k: v.detach().numpy() for k, v in rnn.state_dict().items()})
    assert sorted(params) == ["W_hh", "W_ih", "b_hh", "b_ih"]
    x = torch.randn(3, 3, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 3, 5, dtype=torch.float64, requires_grad=True)
    dhs = torch.randn(3, 3, 5, dtype=torch.float64)
    hs, _ = rnn(x, h0)
    hs.backward(dhs)

    ours_hs, _, _, cache = bptt.rnn_forward(x.detach().numpy(), h0[0].detach().numpy(), params)
    dx, dh0, _, grads = bptt.rnn_backward(dhs.numpy(), cache)
    np.testing.assert_allclose(ours_hs, hs.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(dx, x.grad.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(dh0, h0.grad[0].numpy(), rtol=0, atol=1e-12)
    theirs = bptt.params_from_torch({k: v.grad.numpy() for k, v in rnn.named_parameters()})
    for name in ("W_ih", "W_hh", "b_ih", "b_hh"):
        np.testing.assert_allclose(grads[name], theirs[name], rtol=0, atol=1e-12, err_msg=name)


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def test_worked_example_two_step_binary_addition_network_hand_derivation_equals_autograd():
    """Row-vector network: h1 = x1 W_ih + h0 W_hh, h2 = x2 W_ih + h1 W_hh (no activation),
    g = sigmoid(h2), y = sigmoid(g W_ho), L = 0.5 ||y* - y||^2.

    Hand derivation (delta = dL/d(pre-activation), a row vector; every weight gradient is an
    outer product state^T delta):
        delta_y  = (y - y*) * y (1 - y)                 [1, 8]
        dW_ho    = g^T delta_y                          [16, 8]
        delta_h2 = (delta_y W_ho^T) * g (1 - g)          [1, 16]
        delta_h1 = delta_h2 W_hh^T                       h1 reaches L only through h2
        dW_ih    = x2^T delta_h2 + x1^T delta_h1         summed over the two steps
        dW_hh    = h1^T delta_h2 + h0^T delta_h1
        dh0      = delta_h1 W_hh^T,  dx1 = delta_h1 W_ih^T,  dx2 = delta_h2 W_ih^T
    h0 is random (not zero) so that the h0^T delta_h1 term is exercised.
    """
    rng = np.random.default_rng(7)
    x1, x2 = (rng.integers(0, 2, (1, 8)).astype(np.float64) for _ in range(2))  # bits
    y_star = rng.integers(0, 2, (1, 8)).astype(np.float64)
    h0 = rng.standard_normal((1, 16))
    W_ih, W_hh, W_ho = rng.normal(0, 0.5, (8, 16)), rng.normal(0, 0.3, (16, 16)), rng.normal(0, 0.5, (16, 8))

    h1 = x1 @ W_ih + h0 @ W_hh
    h2 = x2 @ W_ih + h1 @ W_hh
    g = _sigmoid(h2)
    y = _sigmoid(g @ W_ho)
    loss = 0.5 * np.sum((y_star - y) ** 2)
    delta_y = (y - y_star) * y * (1 - y)
    dW_ho = g.T @ delta_y
    delta_h2 = (delta_y @ W_ho.T) * g * (1 - g)
    delta_h1 = delta_h2 @ W_hh.T
    dW_ih = x2.T @ delta_h2 + x1.T @ delta_h1
    dW_hh = h1.T @ delta_h2 + h0.T @ delta_h1
    dh0, dx1, dx2 = delta_h1 @ W_hh.T, delta_h1 @ W_ih.T, delta_h2 @ W_ih.T

    leaves = dict(x1=x1, x2=x2, h0=h0, W_ih=W_ih, W_hh=W_hh, W_ho=W_ho)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in leaves.items()}
    t_h2 = t["x2"] @ t["W_ih"] + (t["x1"] @ t["W_ih"] + t["h0"] @ t["W_hh"]) @ t["W_hh"]
    t_y = torch.sigmoid(torch.sigmoid(t_h2) @ t["W_ho"])
    t_loss = 0.5 * ((torch.tensor(y_star) - t_y) ** 2).sum()
    t_loss.backward()
    assert loss == pytest.approx(t_loss.item(), abs=1e-12)
    hand = dict(x1=dx1, x2=dx2, h0=dh0, W_ih=dW_ih, W_hh=dW_hh, W_ho=dW_ho)
    for name, grad in hand.items():
        np.testing.assert_allclose(grad, t[name].grad.numpy(), rtol=0, atol=1e-12, err_msg=name)

    # The same two steps are our identity-activation RNN in column convention: W_ih^T, W_hh^T.
    params = {"W_ih": W_ih.T.copy(), "W_hh": W_hh.T.copy()}
    hs, h_T, _, cache = bptt.rnn_forward(np.stack([x1, x2]), h0, params, activation="identity")
    np.testing.assert_allclose(hs, np.stack([h1, h2]), rtol=0, atol=1e-12)
    dx, ours_dh0, _, grads = bptt.rnn_backward(np.zeros_like(hs), cache, dh_T=delta_h2)
    np.testing.assert_allclose(grads["W_ih"], dW_ih.T, rtol=0, atol=1e-12)
    np.testing.assert_allclose(grads["W_hh"], dW_hh.T, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours_dh0, dh0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dx, np.stack([dx1, dx2]), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- 3. helpers and input checks


def test_linear_forward_and_backward_equal_nn_linear_on_time_major_states():
    rng = np.random.default_rng(50)
    hs, dy = rng.standard_normal((6, 3, 5)), rng.standard_normal((6, 3, 7))  # [T, B, H], [T, B, V]
    W, b = rng.standard_normal((7, 5)), rng.standard_normal(7)
    y = bptt.linear_forward(hs, W, b)
    dhs, dW, db = bptt.linear_backward(dy, hs, W)

    t_hs, t_W, t_b = (torch.tensor(a, requires_grad=True) for a in (hs, W, b))
    t_y = torch.nn.functional.linear(t_hs, t_W, t_b)
    t_y.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, t_y.detach().numpy(), rtol=0, atol=1e-12)
    for ours, theirs in [(dhs, t_hs), (dW, t_W), (db, t_b)]:
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(bptt.linear_forward(hs, W), hs @ W.T)  # b=None: no bias


def test_softmax_cross_entropy_equals_torch_mean_cross_entropy_even_for_huge_logits():
    rng = np.random.default_rng(51)
    logits = rng.standard_normal((9, 6)) * 3
    logits[0] += 1000.0  # a naive exp() would overflow
    targets = rng.integers(0, 6, 9)
    loss, dlogits = bptt.softmax_cross_entropy(logits, targets)

    t_logits = torch.tensor(logits, requires_grad=True)
    t_loss = torch.nn.functional.cross_entropy(t_logits, torch.tensor(targets))
    t_loss.backward()
    assert isinstance(loss, float) and np.isfinite(loss)
    assert loss == pytest.approx(t_loss.item(), abs=1e-12)
    np.testing.assert_allclose(dlogits, t_logits.grad.numpy(), rtol=0, atol=1e-12)


def test_untrained_uniform_logits_give_log_vocabulary_size():
    loss, dlogits = bptt.softmax_cross_entropy(np.zeros((4, 27)), np.array([0, 5, 26, 3]))
    assert loss == pytest.approx(np.log(27), abs=1e-12)
    np.testing.assert_allclose(dlogits.sum(axis=1), 0, atol=1e-15)  # p - onehot sums to zero per row


@pytest.mark.parametrize(
    "logits,targets,match",
    [
        (np.zeros((3, 4)), np.array([0, 1]), r"\[N, V\]"),
        (np.zeros((2, 4)), np.array([0, 4]), r"\[0, 4\)"),
        (np.zeros((2, 4)), np.array([0.0, 1.0]), "integer"),
    ],
)
def test_softmax_cross_entropy_rejects_bad_targets(logits, targets, match):
    with pytest.raises(ValueError, match=match):
        bptt.softmax_cross_entropy(logits, targets)


def test_torch_state_dict_converts_to_params_and_back():
    gru = torch.nn.GRU(3, 4)
    state = {k: v.detach().numpy() for k, v in gru.state_dict().items()}
    params = bptt.params_from_torch(state)
    assert {k: v.shape for k, v in params.items()} == {"W_ih": (12, 3), "W_hh": (12, 4), "b_ih": (12,), "b_hh": (12,)}
    assert params["W_ih"] is state["weight_ih_l0"]  # renamed, not copied
    back = bptt.params_to_torch(params)
    assert sorted(back) == sorted(state) and all(back[k] is state[k] for k in state)


def test_torch_conversion_selects_a_submodule_by_prefix_and_handles_bias_false():
    model = torch.nn.ModuleDict({"rnn": torch.nn.LSTM(2, 3, bias=False), "head": torch.nn.Linear(3, 5)})
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    params = bptt.params_from_torch(state, prefix="rnn.")
    assert sorted(params) == ["W_hh", "W_ih"]
    assert sorted(bptt.params_to_torch(params, prefix="rnn.")) == ["rnn.weight_hh_l0", "rnn.weight_ih_l0"]


def test_torch_conversion_refuses_to_drop_a_second_layer_silently():
    state = {k: v.detach().numpy() for k, v in torch.nn.RNN(2, 3, num_layers=2).state_dict().items()}
    with pytest.raises(ValueError, match="weight_ih_l1"):
        bptt.params_from_torch(state)
    with pytest.raises(KeyError, match="weight_hh_l0"):
        bptt.params_from_torch({"weight_ih_l0": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="unknown parameter"):
        bptt.params_to_torch({"W_xh": np.zeros((3, 2))})


def test_init_params_have_pytorch_shapes_and_scale():
    params = bptt.init_params("lstm", 7, 16, np.random.default_rng(0), dtype=np.float32)
    assert {k: v.shape for k, v in params.items()} == {"W_ih": (64, 7), "W_hh": (64, 16), "b_ih": (64,), "b_hh": (64,)}
    assert all(v.dtype == np.float32 and np.abs(v).max() <= 0.25 for v in params.values())  # U(-1/sqrt(16), 1/sqrt(16))


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda p: p.update(x=p["x"][0]), r"\[T, B, I\]"),
        (lambda p: p["params"].update(W_hh=np.zeros((12, 4))), "W_hh must have shape"),  # RNN wants [4, 4]
        (lambda p: p["params"].update(W_ih=np.zeros((4, 5))), "W_ih must have shape"),
        (lambda p: p["params"].pop("b_hh"), "both b_ih and b_hh"),
        (lambda p: p.update(h0=np.zeros((3, 4))), r"h0 must be \[B, H\]"),
    ],
)
def test_forward_rejects_mismatched_shapes_with_a_message(change, match):
    p = make_problem("rnn", 3, 2, 3, 4, seed=60)
    change(p)
    with pytest.raises(ValueError, match=match):
        bptt.rnn_forward(p["x"], p["h0"], p["params"])


def test_cell_state_arguments_are_refused_for_cells_without_one():
    p = make_problem("gru", 3, 2, 3, 4, seed=61)
    with pytest.raises(ValueError, match="c0 is only meaningful"):
        bptt.forward("gru", p["x"], p["h0"], p["params"], c0=p["h0"])
    cache = bptt.forward("gru", p["x"], p["h0"], p["params"]).cache
    with pytest.raises(ValueError, match="dc_T is only meaningful"):
        bptt.backward(p["dhs"], cache, dc_T=p["h0"])
    with pytest.raises(ValueError, match="dhs must match"):
        bptt.backward(p["dhs"][:-1], cache)
    with pytest.raises(ValueError, match="unknown cell"):
        bptt.forward("transformer", p["x"], p["h0"], p["params"])


def test_module_imports_torch_only_inside_the_cli_comparison():
    owners, torch_imports = {}, []
    for path in sorted((ROOT / "rnn_train" / "teaching" / "bptt").glob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef):
                for node in ast.walk(fn):
                    owners[id(node)] = f"{path.stem}.{fn.name}"
        torch_imports += [
            node
            for node in ast.walk(tree)
            if (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "torch" for a in node.names))
            or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch")
        ]
    assert torch_imports, "the CLI must import torch somewhere to compare against it"
    assert {owners.get(id(node)) for node in torch_imports} == {"compare._compare_with_torch"}


# ----------------------------------------------------------------------------- 4. the comparison CLI

TABLE_ROWS = {
    "rnn": ["hs", "h_T", "dx", "dh0", "dW_ih", "dW_hh", "db_ih", "db_hh"],
    "gru": ["hs", "h_T", "dx", "dh0", "dW_ih", "dW_hh", "db_ih", "db_hh"],
    "lstm": ["hs", "h_T", "c_T", "dx", "dh0", "dc0", "dW_ih", "dW_hh", "db_ih", "db_hh"],
}


def table_results(stdout):
    """{quantity: "PASS"/"FAIL"} from the CLI's table rows."""
    rows = {}
    for line in stdout.splitlines():
        words = line.split()
        if words and words[-1] in ("PASS", "FAIL"):
            rows[words[0]] = words[-1]
    return rows


@pytest.mark.parametrize("cell", bptt.CELLS)
def test_cli_prints_every_quantity_side_by_side_and_exits_0_when_all_match(cell, capsys):
    status = compare_main(["--cell", cell, "--steps", "6", "--batch", "2", "--input", "3", "--hidden", "4", "--seed", "5"])
    out = capsys.readouterr().out
    assert status == 0
    assert "numpy mean" in out and "torch mean" in out and "max|diff|" in out
    assert table_results(out) == {name: "PASS" for name in TABLE_ROWS[cell]}
    assert f"{len(TABLE_ROWS[cell])}/{len(TABLE_ROWS[cell])} quantities within tolerance" in out


def test_cli_flags_a_wrong_gradient_and_exits_1(monkeypatch, capsys):
    import rnn_train.teaching.bptt.gru as gru_module

    real = gru_module.BPTT

    def broken(dhs, cache, dh_T=None, dc_T=None):  # a BPTT that forgets one step's contribution to dW_hh
        grads = real.backward(dhs, cache, dh_T, dc_T)
        grads.params["W_hh"] *= 0.999
        return grads

    monkeypatch.setattr(gru_module, "BPTT", bptt.BpttCell(real.forward, broken))  # the GRU's CellSpec hook
    status = compare_main(["--cell", "gru", "--steps", "4"])
    results = table_results(capsys.readouterr().out)
    assert status == 1
    assert results["dW_hh"] == "FAIL"
    assert [name for name, verdict in results.items() if verdict == "FAIL"] == ["dW_hh"]


def test_cli_float32_passes_at_its_looser_default_tolerance(capsys):
    assert compare_main(["--cell", "lstm", "--dtype", "float32", "--steps", "30", "--hidden", "16"]) == 0
    assert "dtype=float32" in capsys.readouterr().out


def test_cli_rejects_nonsense_arguments_with_one_error_line(capsys):
    for argv, needle in ((["--steps", "0"], "--steps must be >= 1, got 0"),
                         (["--cell", "gru", "--activation", "relu"], "--activation applies to --cell rnn only"),
                         (["--tol", "-1"], "--tol must be a finite number >= 0"), (["--cell", "gruu"], "invalid choice: 'gruu'")):
        with pytest.raises(SystemExit) as exc:
            compare_main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and needle in err, err


def test_python_dash_m_entry_point_runs_the_comparison():
    done = subprocess.run(
        [sys.executable, "-m", "rnn_train", "bptt", "--cell", "rnn", "--steps", "3", "--activation", "relu", "--no-bias"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert table_results(done.stdout) == {name: "PASS" for name in TABLE_ROWS["rnn"][:6]}
