"""CharRNN: shapes, zero initial state, ln(V) at initialisation, carried state is exact."""
import math

import pytest
import torch
import torch.nn.functional as F

from rnn_train.config import ModelConfig
from rnn_train.kernels.build import extension
from rnn_train.kernels.fused import FusedPath, loop_cells
from rnn_train.model.charrnn import CharRNN


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("embedding", ["one_hot", "learned"])
def test_forward_shapes_for_every_cell(cell, embedding):
    model = CharRNN(vocab_size=11, cell=cell, hidden_size=16, num_layers=2, dropout=0.1, embedding=embedding,
                    embed_dim=5)
    logits, state = model(torch.randint(0, 11, (3, 7)))
    assert logits.shape == (3, 7, 11)
    if cell == "lstm":
        assert isinstance(state, tuple) and [s.shape for s in state] == [(2, 3, 16)] * 2
    else:
        assert state.shape == (2, 3, 16)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_begin_state_is_zeros_and_state_none_means_zeros(cell):
    model = CharRNN(vocab_size=5, cell=cell, hidden_size=4)
    zero = model.begin_state(2)
    for s in zero if isinstance(zero, tuple) else (zero,):
        assert s.shape == (1, 2, 4) and not s.any()
    x = torch.randint(0, 5, (2, 3))
    assert torch.equal(model(x)[0], model(x, zero)[0])


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_untrained_loss_is_close_to_ln_v(cell):
    torch.manual_seed(0)
    v = 60
    model = CharRNN(vocab_size=v, cell=cell, hidden_size=64)
    x = torch.randint(0, v, (16, 32))
    logits, _ = model(x)
    loss = F.cross_entropy(logits.reshape(-1, v), torch.randint(0, v, (16 * 32,)))
    assert abs(loss.item() - math.log(v)) < 0.1


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_running_in_two_halves_with_carried_state_equals_one_pass(cell):
    model = CharRNN(vocab_size=9, cell=cell, hidden_size=8, num_layers=2).eval()
    x = torch.randint(0, 9, (2, 10))
    whole, _ = model(x)
    first, state = model(x[:, :4])
    second, _ = model(x[:, 4:], state)
    assert torch.allclose(torch.cat([first, second], dim=1), whole, atol=1e-6)


def test_one_hot_input_is_exactly_a_one_hot_vector():
    model = CharRNN(vocab_size=6, cell="rnn", hidden_size=3)
    enc = model.encode_input(torch.tensor([[0, 5, 2]]))
    assert enc.shape == (1, 3, 6) and torch.equal(enc.sum(-1), torch.ones(1, 3))
    assert enc[0, 1, 5] == 1


def test_from_config_applies_dtype():
    m = CharRNN.from_config(7, ModelConfig(cell="lstm", hidden_size=5, dtype="float64"))
    assert m.decoder.weight.dtype == torch.float64
    assert m.begin_state(1)[0].dtype == torch.float64


TRAINING_PATHS = [FusedPath("python", "blas"), FusedPath("cpp", "blas", "blas", threads="rows"),
                  FusedPath("cpp", "blas", "blas", threads="units"), FusedPath("cpp", "auto", "tiled", threads="units"),
                  FusedPath("cpp", "auto", "aten", threads="blas")]


@pytest.mark.parametrize("path,cell", [(p, c) for p in TRAINING_PATHS for c in loop_cells(p.loop)],
                         ids=lambda v: v.label() if isinstance(v, FusedPath) else v)
@pytest.mark.parametrize("embedding", ["one_hot", "learned"])
def test_cpu_training_path_gives_the_module_path_gradients(path, cell, embedding):
    """Training on the CPU runs a fused path; whichever it is, it must equal the nn module to float64 precision."""
    if path.loop == "cpp" and extension() is None:
        pytest.skip("the C++ kernels could not be built on this machine (see the note on stderr)")
    torch.manual_seed(0)
    model = CharRNN(vocab_size=9, cell=cell, hidden_size=40, num_layers=2, embedding=embedding, embed_dim=4).double()
    model.use_training_path(path)
    assert model.training_kernel == path.label()
    x, y = torch.randint(0, 9, (10, 7)), torch.randint(0, 9, (10, 7))
    h0 = torch.randn(2, 10, 40, dtype=torch.float64)
    state0 = (h0, torch.randn_like(h0)) if cell == "lstm" else h0
    results = []
    for fused in (True, False):
        model.zero_grad()
        if fused:
            logits, state = model(x, state0)
        else:  # the module path, as evaluation runs it, but with autograd on
            out, state = model.rnn(model.encode_input(x), state0)
            logits = model.decoder(out)
        final = state if isinstance(state, tuple) else (state,)
        (F.cross_entropy(logits.reshape(-1, 9), y.reshape(-1)) + sum(s.sum() for s in final)).backward()
        results.append((logits.detach(), [s.detach() for s in final], [p.grad.clone() for p in model.parameters()]))
    (l1, s1, g1), (l2, s2, g2) = results
    assert torch.allclose(l1, l2, atol=1e-10)
    for a, b in zip(s1 + g1, s2 + g2, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_a_model_trains_through_its_module_until_a_training_path_is_chosen_for_it():
    """Choosing a kernel is explicit (rnn_train.kernels.resolve_kernel, called by whoever builds the
    model for training): a forward never resolves, measures or builds anything itself."""
    model = CharRNN(vocab_size=5, cell="gru", hidden_size=4)
    assert model.training_kernel == "native" and model.path is None
    logits, _ = model(torch.randint(0, 5, (2, 3)))
    assert logits.grad_fn is not None and "Fused" not in type(logits.grad_fn).__name__


@pytest.mark.parametrize("path", [None, FusedPath("cpp", "tiled", "tiled")], ids=["module", "fused"])
def test_the_decoder_on_onednn_gives_nn_linears_logits_and_gradients_to_float32_rounding(path):
    """decoder="onednn" (chosen by measurement where it is faster) computes the same products as
    nn.Linear in another order: logits and every gradient agree to float32 rounding, the label says
    which ran, and evaluation (no grad) still runs the nn.Linear itself."""
    from rnn_train.kernels.gemm import onednn_available

    if not onednn_available() or (path is not None and extension() is None):
        pytest.fail("this torch build has no oneDNN linear, or the C++ kernels did not build here")
    torch.manual_seed(0)
    model = CharRNN(vocab_size=11, cell="lstm", hidden_size=48, num_layers=2, dropout=0.0)
    x, y = torch.randint(0, 11, (6, 9)), torch.randint(0, 11, (6, 9))
    results = []
    for decoder in ("blas", "onednn"):
        model.use_training_path(path, "fp32", decoder)
        model.zero_grad()
        logits, _ = model(x)
        F.cross_entropy(logits.reshape(-1, 11), y.reshape(-1)).backward()
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
        assert (type(logits.grad_fn).__name__ == "_LinearBackward") == (decoder == "onednn")
    assert model.training_kernel.endswith(" decoder=onednn")
    assert model.training_kernel.startswith("native" if path is None else "fused-cpp(")
    (l1, g1), (l2, g2) = results
    assert torch.allclose(l1, l2, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(model(x)[0], F.linear(model.rnn(model.encode_input(x))[0], model.decoder.weight,
                                                 model.decoder.bias))


def test_the_decoder_choice_is_checked():
    model = CharRNN(vocab_size=5, cell="gru", hidden_size=4)
    with pytest.raises(ValueError, match="decoder must be one of"):
        model.use_training_path(None, "fp32", "mkl")
    with pytest.raises(ValueError, match="in bf16 only blas"):
        model.use_training_path(None, "bf16", "onednn")


@pytest.mark.parametrize("overrides", [["model.cell=lstm", "model.num_layers=3"],
                                       ["model.cell=rnn", "model.dtype=float64"],
                                       ["model.cell=gru", "model.embedding=learned", "model.embed_dim=8"]])
def test_the_weight_estimate_that_refuses_a_model_past_memory_is_the_models_own_size(overrides):
    from rnn_train.config import load_config
    from rnn_train.training.learner import make_learner, weight_bytes

    cfg = load_config("debug", overrides)
    model = make_learner(cfg, 29, torch.device("cpu")).torch_model()
    assert weight_bytes(cfg, 29) == sum(p.numel() * p.element_size() for p in model.parameters())
