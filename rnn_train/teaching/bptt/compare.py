"""`python -m rnn_train bptt`: the NumPy BPTT and torch.autograd on the same problem, side by side."""
from __future__ import annotations

import numpy as np

from rnn_train.cli import ArgumentParser, seed_arg
from rnn_train.errors import UserError
from rnn_train.model import cells
from rnn_train.runtime import out_of_memory
from rnn_train.teaching import bptt
from rnn_train.teaching.bptt.common import (bptt_cells, has_cell_state, init_params, params_from_torch,
                                            params_to_torch)

_DEFAULT_TOL = {"float64": 1e-10, "float32": 1e-5}


def _parse_args(argv, prog):
    parser = ArgumentParser(
        prog=prog,
        description="Run the NumPy BPTT and torch.autograd on the same random weights, inputs and "
        "upstream gradients, and print every output and gradient side by side.",
    )
    parser.add_argument("--cell", choices=bptt_cells(), default="gru", help="which recurrent cell (default gru)")
    parser.add_argument("--steps", type=int, default=10, help="sequence length T (default 10)")
    parser.add_argument("--batch", type=int, default=3, help="batch size B (default 3)")
    parser.add_argument("--input", type=int, default=4, help="input size I (default 4)")
    parser.add_argument("--hidden", type=int, default=5, help="hidden size H (default 5)")
    parser.add_argument("--seed", type=seed_arg, default=0, help="seed for weights, inputs and upstream gradients")
    parser.add_argument("--dtype", choices=tuple(_DEFAULT_TOL), default="float64", help="compute dtype")
    parser.add_argument(
        "--activation", choices=("tanh", "relu"), default="tanh", help="vanilla RNN nonlinearity (--cell rnn)"
    )
    parser.add_argument("--no-bias", action="store_true", help="leave out b_ih and b_hh (bias=False)")
    parser.add_argument(
        "--tol",
        type=float,
        default=None,
        help="pass if max |numpy - torch| <= tol * max(1, max |torch|) "
        f"(default {_DEFAULT_TOL['float64']:g} for float64, {_DEFAULT_TOL['float32']:g} for float32)",
    )
    args = parser.parse_args(argv)
    for name in ("steps", "batch", "input", "hidden"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.tol is not None and not 0 <= args.tol < float("inf"):
        parser.error(f"--tol must be a finite number >= 0, got {args.tol}")
    if args.activation != "tanh" and not cells.get(args.cell).elman:
        parser.error("--activation applies to --cell rnn only")
    return args


def _compare_with_torch(args) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Same problem through this module and through torch.autograd: [(name, numpy, torch), ...]."""
    import torch  # the comparison needs torch; the reference itself never does

    spec, with_c = cells.get(args.cell), has_cell_state(args.cell)
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(args.seed)
    T, B, I, H = args.steps, args.batch, args.input, args.hidden
    params = init_params(args.cell, I, H, rng, bias=not args.no_bias, dtype=dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    c0 = rng.standard_normal((B, H)).astype(dtype) if with_c else None
    dhs = rng.standard_normal((T, B, H)).astype(dtype)  # upstream gradient on every step's output
    dh_T = rng.standard_normal((B, H)).astype(dtype)  # ... and on the final state
    dc_T = rng.standard_normal((B, H)).astype(dtype) if with_c else None

    hs, h_T, c_T, cache = bptt.forward(args.cell, x, h0, params, c0=c0, activation=args.activation)
    dx, dh0, dc0, dparams = bptt.backward(dhs, cache, dh_T, dc_T)

    kwargs = {"nonlinearity": args.activation} if spec.elman else {}
    module = getattr(torch.nn, spec.hooks["native"])(I, H, bias=not args.no_bias, **kwargs)
    module = module.to(getattr(torch, args.dtype))
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in params_to_torch(params).items()})
    x_t = torch.tensor(x, requires_grad=True)
    h0_t = torch.tensor(h0[None], requires_grad=True)  # torch wants [layers, B, H]
    if with_c:
        c0_t = torch.tensor(c0[None], requires_grad=True)
        out, (hn, cn) = module(x_t, (h0_t, c0_t))
        loss = (out * torch.from_numpy(dhs)).sum() + (hn[0] * torch.from_numpy(dh_T)).sum()
        loss = loss + (cn[0] * torch.from_numpy(dc_T)).sum()
    else:
        out, hn = module(x_t, h0_t)
        loss = (out * torch.from_numpy(dhs)).sum() + (hn[0] * torch.from_numpy(dh_T)).sum()
    loss.backward()

    torch_grads = params_from_torch({k: p.grad.numpy() for k, p in module.named_parameters()})
    rows = [("hs", hs, out.detach().numpy()), ("h_T", h_T, hn[0].detach().numpy())]
    if with_c:
        rows.append(("c_T", c_T, cn[0].detach().numpy()))
    rows += [("dx", dx, x_t.grad.numpy()), ("dh0", dh0, h0_t.grad[0].numpy())]
    if with_c:
        rows.append(("dc0", dc0, c0_t.grad[0].numpy()))
    rows += [("d" + name, dparams[name], torch_grads[name]) for name in dparams]
    return rows


def _check_memory(args) -> None:
    """Sizes too large for this machine's free memory are one UserError before anything is made
    (Linux lets the arrays grow until the machine kills the process: --input 100000000 reached 23 GB).
    The estimate, generous: both sides keep per step the input, every gate, the states and their
    gradients (6 x (I + (G + 2) H) values per row), and the weights with their gradients and copies."""
    from rnn_train.runtime import refuse_beyond_free

    G, I, H = cells.get(args.cell).num_blocks, args.input, args.hidden
    values = 6 * args.steps * args.batch * (I + (G + 2) * H) + 6 * G * H * (I + H + 2)
    refuse_beyond_free(values * np.dtype(args.dtype).itemsize,
                       f"--steps {args.steps} --batch {args.batch} --input {I} --hidden {H} need", "make them smaller")


def main(argv=None, prog: str = "python -m rnn_train bptt") -> int:
    """Print NumPy vs PyTorch side by side; exit 0 if all match, else 1."""
    args = _parse_args(argv, prog)
    tol = _DEFAULT_TOL[args.dtype] if args.tol is None else args.tol
    _check_memory(args)
    try:
        rows = _compare_with_torch(args)
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        raise UserError(f"not enough memory for --steps {args.steps} --batch {args.batch} --input {args.input} "
                        f"--hidden {args.hidden}; make them smaller") from None

    cfg = f"cell={args.cell} steps={args.steps} batch={args.batch} input={args.input} hidden={args.hidden}"
    cfg += f" seed={args.seed} dtype={args.dtype} bias={not args.no_bias}"
    if cells.get(args.cell).elman:
        cfg += f" activation={args.activation}"
    print(f"NumPy BPTT vs torch.autograd: {cfg}")
    print("upstream gradient: random on every step's output and on the final state")
    print(f"pass if max|diff| <= tol * max(1, max|torch|), tol={tol:g}")
    header = (
        f"{'quantity':<9} {'shape':<14} {'numpy mean':>13} {'numpy norm':>12} "
        f"{'torch mean':>13} {'torch norm':>12} {'max|diff|':>10}  result"
    )
    print(header)
    print("-" * len(header))
    failures = 0
    for name, ours, theirs in rows:
        ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
        same_shape = ours.shape == theirs.shape
        diff = float(np.max(np.abs(ours - theirs))) if same_shape else float("inf")
        scale = max(1.0, float(np.max(np.abs(theirs)))) if theirs.size else 1.0
        ok = same_shape and diff <= tol * scale  # NaN compares False, so it fails too
        failures += not ok
        shape = "[" + ", ".join(map(str, ours.shape)) + "]"
        print(
            f"{name:<9} {shape:<14} {ours.mean():>+13.6e} {np.linalg.norm(ours):>12.6e} "
            f"{theirs.mean():>+13.6e} {np.linalg.norm(theirs):>12.6e} {diff:>10.2e}  {'PASS' if ok else 'FAIL'}"
        )
    verdict = "all match" if not failures else f"{failures} of {len(rows)} differ"
    print(f"{verdict}: {len(rows) - failures}/{len(rows)} quantities within tolerance")
    return 0 if not failures else 1

