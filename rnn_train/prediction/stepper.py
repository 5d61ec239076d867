"""A CharRNN's cells copied to NumPy: one generation step for a whole batch, no module call.

`make_stepper` gives the C++ stepper (kernel_stepper.KernelStepper: faster, and a row's numbers
do not depend on the batch) wherever the C++ kernels are built and the cell has a "decode" hook,
else a stepper from this module; both have the same public methods (step, load_state, state,
copy_rows, rows). This module is what runs where there is no compiler, and the reference the
tests hold the C++ steps to.

Each cell's step comes from its CellSpec (rnn_train/model/cells.py): a cell whose spec names a
"stepper" hook gets that class, tuned below for its equations; any other cell gets
`GenericStepper`, which runs the spec's reference `step` on the same buffers (slower, same
numbers to rounding). tests/test_cells.py holds every stepper to the reference.

Why: a GRU-256 step is about 0.4 MFLOP, microseconds of arithmetic, yet calling the torch module for
one character costs far more in dispatch than in maths. Generation therefore extracts the weights
once and steps in NumPy with preallocated buffers and in-place ufuncs: per step one GEMM per
matrix and about a dozen elementwise calls on [B, H] arrays, nothing allocated.

The equations are torch's (gate layout included); the weights are rearranged once so that each
step does the least work, every change exact or within float rounding of torch:

- One-hot input: W_ih @ onehot(x) is column x of W_ih, so layer 0's input projection is a row
  gather from `table = W_ih^T + b_ih` [V, G]. A learned embedding is a lookup followed by a linear
  map, which is again a lookup: `table = E @ W_ih^T + b_ih`.
- Biases ride inside the GEMM: every hidden state is stored as [h, 1] ([B, H+1]) and each matrix
  as [W^T; b] ([H+1, G]).
- sigmoid(s) = 0.5·tanh(s/2) + 0.5, with the /2 folded into the sigmoid gates' rows (scaling by a
  power of two is exact), so a cell's sigmoid gates cost one tanh, not exp + add + reciprocal.
- LSTM gates are reordered i,f,g,o -> i,f,o,g so the three sigmoid gates are contiguous.
- Decoder: logits = [h, 1] @ [W_d^T; b_d]; <unk>'s bias is set to -1e30, so it is never chosen
  and gets probability exactly 0 (it is a placeholder). The logits are the model's: sampling scales
  its noise by the temperature instead (choose.py), so rows of different temperatures share a step.
- A batch's GEMMs run in blocks of rows whose size is measured once per machine, model shape and
  batch (`gemm_rows`, stored with the training kernels' decisions); a batch of 1 or 2 is one call.
  Which size is fastest depends on the shapes and on OpenBLAS's own paths and threads: blocks of 4
  rows, the fixed choice before, suit a GRU-256 up to 8 rows, but a [4 x 257] x [257 x 1024]
  product (LSTM-256) leaves OpenBLAS's small-matrix path (65 us, against 16 for 768 columns), and
  sampling an LSTM-256 at 32 rows ran 3.1x faster in one call (`python benchmarks/sample_bench.py
  --cells lstm --batch-cell lstm`, which also times blocks of 4; figures in docs/prediction.md#speed).
- OpenBLAS rounds a row's products differently with the rows in the call (1 vs 4, and 2 vs 4 for a
  narrow decoder), so a row's logits depend on the batch size in the last bits. Padding every
  batch to blocks of exactly 4 rows made them equal, but batch 1 fell from 42.9k to 26.4k chars/s
  for a GRU-256 and from 34.3k to 9.0k for an LSTM-256 (`python benchmarks/sample_bench.py
  --cells lstm,gru --batches 1`), so it was not kept; benchmarks/sample_drift.py measures what the
  rounding does to samples. The stored block size keeps a seed's samples the same from run to run.

Nothing is checked per step: the weights are checked finite once. With finite weights the states
stay finite (tanh and sigmoid are bounded), so every logit is finite too.
"""
from __future__ import annotations

import copy
import hashlib
import os
import sys
import time

import numpy as np
import torch

from rnn_train.model.cells import NUMPY_OPS
from rnn_train.model.charrnn import CharRNN, State
from rnn_train.model.checkpoint import refuse_not_finite

GEMM_ROWS = 4  # rows per GEMM call where nothing was measured (see the module doc)
ROW_CANDIDATES = (2, 4, 8, 16, 32)  # block sizes `gemm_rows` measures, besides the whole batch
_STEPS_PER_RUN = 20  # steps per timed run of a candidate
UNK_LOGIT = -1e30  # <unk>'s logit: exp() of it is 0 in float32 and float64, and it never wins an argmax


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _blocks(a: np.ndarray, w: np.ndarray, out: np.ndarray, rows: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(a rows, w, out rows) for `a @ w -> out` in blocks of `rows` rows, made once."""
    return [(a[i:i + rows], w, out[i:i + rows]) for i in range(0, len(a), rows)]


def _gemm(blocks) -> None:
    for a, w, out in blocks:
        np.matmul(a, w, out=out)


def _augmented(w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """W [G, I], b [G] -> [W^T; b] [I+1, G]: multiplying [x, 1] by it adds the bias in the GEMM."""
    return np.ascontiguousarray(np.concatenate([w.T, b[None, :]], axis=0))


class Stepper:
    """The weights of one CharRNN as NumPy arrays, a batch of B states, and `step(ids) -> logits`.

    Subclasses say how the gate rows are laid out (`_arrange`) and how one layer updates its state
    from its input projection (`_update`); everything else (extraction, input, decoder, the state's
    parts) is shared. h lives in `h[layer]` as [h, 1]; the further parts of the cell's state (an
    LSTM's c) in `extra[layer]`."""

    def __init__(self, model: CharRNN, batch: int, gemm_rows: int = GEMM_ROWS):
        rnn, H, self.spec = model.rnn, model.rnn.hidden_size, model.spec
        params = {name: _np(p).copy() for name, p in model.named_parameters()}
        refuse_not_finite(params.values())
        self.dtype, self.batch, self.hidden, self.layers = params["decoder.weight"].dtype, batch, H, rnn.num_layers
        w_in, w_hh = [], []
        for layer in range(self.layers):
            wi = self._arrange(params[f"rnn.weight_ih_l{layer}"], H)
            bi = self._arrange(params.get(f"rnn.bias_ih_l{layer}", np.zeros(len(wi), self.dtype)), H)
            bh = self._arrange(params.get(f"rnn.bias_hh_l{layer}", np.zeros(len(wi), self.dtype)), H)
            w_hh.append(_augmented(self._arrange(params[f"rnn.weight_hh_l{layer}"], H), bh))
            w_in.append(_augmented(wi, bi))
        if model.embed is not None:  # lookup then linear map = one lookup table [V, G]
            self.table = np.ascontiguousarray(params["embed.weight"] @ w_in[0][:-1] + w_in[0][-1])
        else:
            self.table = np.ascontiguousarray(w_in[0][:-1] + w_in[0][-1])  # one-hot: rows of W_ih^T [V, G]
        self.w_in, self.w_hh = w_in, w_hh  # w_in[0] is unused: layer 0 reads `table`
        self.w_dec = _augmented(params["decoder.weight"], params["decoder.bias"])
        self.w_dec[-1, 0] = UNK_LOGIT
        G, V = self.spec.num_blocks * H, self.w_dec.shape[1]
        self.h = [np.zeros((batch, H + 1), self.dtype) for _ in range(self.layers)]  # [h, 1] per layer
        for h in self.h:
            h[:, -1] = 1
        self.extra = [[np.zeros((batch, H), self.dtype) for _ in self.spec.state[1:]] for _ in range(self.layers)]
        self.gi = [np.empty((batch, G), self.dtype) for _ in range(self.layers)]  # input projections
        self.gh = np.empty((batch, G), self.dtype)  # recurrent projection, reused by every layer
        self.logits = np.empty((batch, V), self.dtype)  # [B, V] of the next character
        self._bind(gemm_rows)

    def _bind(self, gemm_rows: int) -> None:
        """The views and GEMM blocks `step` works on, made once over the current buffers."""
        self.gemm_rows = gemm_rows
        self._views = [self._make_views(layer) for layer in range(self.layers)]
        self._input = [_blocks(self.h[layer - 1], self.w_in[layer], self.gi[layer], gemm_rows) if layer else []
                       for layer in range(self.layers)]
        self._recurrent = [_blocks(self.h[layer], self.w_hh[layer], self.gh, gemm_rows)
                           for layer in range(self.layers)]
        self._decoder = _blocks(self.h[-1], self.w_dec, self.logits, gemm_rows)

    # -- what a cell defines
    def _arrange(self, w: np.ndarray, H: int) -> np.ndarray:
        """torch's gate rows [G, ...] in this class's order and scale (identity: as torch has them)."""
        return w

    def _make_views(self, layer: int) -> tuple:
        """Slices of the buffers `_update` works on, made once (slicing per step costs time)."""
        return self.h[layer][:, :-1], self.gi[layer], self.gh

    def _update(self, layer: int) -> None:
        """The layer's state from its input projection gi and recurrent projection gh."""
        raise NotImplementedError

    # -- shared
    kernel, precision = "numpy", "fp32"

    def load_state(self, state: State, rows=None) -> None:
        """Set every row's state (or that of `rows`, an index array or slice) from a torch state of
        batch 1 (the prefix warm-up, broadcast) or of as many rows as are set."""
        where = slice(None) if rows is None else rows
        h, *extra = self.spec.unpack(state)
        for layer in range(self.layers):
            self.h[layer][where, :-1] = _np(h[layer])  # [1 or B, H] broadcast over the rows
            for mine, given in zip(self.extra[layer], extra):
                mine[where] = _np(given[layer])

    def copy_rows(self, src: slice, dst: slice) -> None:
        """Copy the state of rows `src` into rows `dst` (as many; they may overlap): a batch whose
        rows come and go keeps its live rows first (rnn_train/serve/scheduler.py)."""
        for layer in range(self.layers):
            self.h[layer][dst] = self.h[layer][src]
            for part in self.extra[layer]:
                part[dst] = part[src]

    def rows(self, n: int, gemm_rows: int | None = None) -> "Stepper":
        """A stepper over the first `n` rows of this one: the same weights and the same state buffers
        (views: nothing is copied, a row's state is shared), its GEMMs in blocks of `gemm_rows` rows
        (default GEMM_ROWS). Stepping it computes what a stepper made for `n` rows with those blocks
        computes, to the bit (tests/test_serve.py): a batch that grows and shrinks keeps its live rows
        first and steps the view of their number."""
        if not 0 < n <= self.batch:
            raise ValueError(f"rows({n}) of a stepper of {self.batch} rows")
        view = copy.copy(self)
        view.batch = n
        view.h = [h[:n] for h in self.h]
        view.extra = [[part[:n] for part in parts] for parts in self.extra]
        view.gi, view.gh, view.logits = [g[:n] for g in self.gi], self.gh[:n], self.logits[:n]
        view._bind(gemm_rows or GEMM_ROWS)
        return view

    def state(self) -> State:
        """The current state as torch tensors [L, B, H] (for tests and callers that continue in torch)."""
        h = torch.from_numpy(np.stack([h[:, :-1] for h in self.h]))
        extra = [torch.from_numpy(np.stack([e[j] for e in self.extra])) for j in range(len(self.spec.state) - 1)]
        return self.spec.pack((h, *extra))

    def step(self, ids: np.ndarray) -> np.ndarray:
        """ids [B] int64 -> logits [B, V] of the character after them (the returned buffer is reused)."""
        np.take(self.table, ids, axis=0, out=self.gi[0], mode="clip")  # ids are valid: no check
        for layer in range(self.layers):
            if layer:
                _gemm(self._input[layer])  # gi = [h_below, 1] @ [W_ih^T; b_ih]
            _gemm(self._recurrent[layer])  # gh = [h, 1] @ [W_hh^T; b_hh]
            self._update(layer)
        _gemm(self._decoder)
        return self.logits


class RNNStepper(Stepper):
    """h <- tanh(gi + gh): the Elman RNN."""

    def _update(self, layer):
        h, gi, gh = self._views[layer]
        np.add(gi, gh, out=gh)
        np.tanh(gh, out=h)


class GenericStepper(Stepper):
    """Any registered cell: its CellSpec's reference `step` in NumPy on the shared buffers."""

    def _update(self, layer):
        h, gi, gh = self._views[layer]
        state = (h, *self.extra[layer])
        new_state, _ = self.spec.step(NUMPY_OPS, gi, gh, state)
        for mine, value in zip(state, new_state):
            mine[...] = value


class GRUStepper(Stepper):
    """r, z = sigmoid(gi_rz + gh_rz); n = tanh(gi_n + r * gh_n); h = n + z * (h - n)  (torch's GRU)."""

    def _arrange(self, w, H):
        w = w.copy()
        w[:2 * H] *= 0.5  # sigmoid via tanh of half the pre-activation
        return w

    def _make_views(self, layer):
        H, gi, gh = self.hidden, self.gi[layer], self.gh
        rz = np.empty((self.batch, 2 * H), self.dtype)
        n, d = np.empty((self.batch, H), self.dtype), np.empty((self.batch, H), self.dtype)
        return (self.h[layer][:, :-1], gi[:, :2 * H], gi[:, 2 * H:], gh[:, :2 * H], gh[:, 2 * H:],
                rz, rz[:, :H], rz[:, H:], n, d)

    def _update(self, layer):
        h, gi_rz, gi_n, gh_rz, gh_n, rz, r, z, n, d = self._views[layer]
        np.add(gi_rz, gh_rz, out=rz)
        np.tanh(rz, out=rz)
        rz *= 0.5
        rz += 0.5  # rz = sigmoid(pre-activation)
        np.multiply(r, gh_n, out=n)
        n += gi_n
        np.tanh(n, out=n)
        np.subtract(h, n, out=d)
        d *= z
        np.add(n, d, out=h)


class LSTMStepper(Stepper):
    """i, f, o = sigmoid(.); g = tanh(.); c = f * c + i * g; h = o * tanh(c)  (torch's LSTM)."""

    def _arrange(self, w, H):
        i, f, g, o = w[:H], w[H:2 * H], w[2 * H:3 * H], w[3 * H:]
        return np.concatenate([0.5 * i, 0.5 * f, 0.5 * o, g])  # sigmoid gates first, halved

    def _make_views(self, layer):
        H, gh = self.hidden, self.gh
        c, t = self.extra[layer][0], np.empty((self.batch, H), self.dtype)
        return (self.h[layer][:, :-1], self.gi[layer], gh, gh[:, :3 * H], gh[:, :H], gh[:, H:2 * H],
                gh[:, 2 * H:3 * H], gh[:, 3 * H:], c, t)

    def _update(self, layer):
        h, gi, gh, sig, i, f, o, g, c, t = self._views[layer]
        gh += gi
        np.tanh(gh, out=gh)
        sig *= 0.5
        sig += 0.5  # i, f, o = sigmoid(.), g = tanh(.)
        c *= f
        np.multiply(i, g, out=t)
        c += t
        np.tanh(c, out=t)
        np.multiply(o, t, out=h)


def stepper_class(model: CharRNN) -> type[Stepper]:
    """The cell's own stepper (its CellSpec hook "stepper"), else the generic one."""
    if getattr(model.rnn, "nonlinearity", "tanh") != "tanh":
        raise ValueError("only tanh RNNs are supported")  # CharRNN builds only these
    return model.spec.hook("stepper") or GenericStepper


KERNELS = ("auto", "cpp", "numpy")


def check_rows(model: CharRNN, rows: int, flag: str) -> None:
    """`rows` samples stepped together (`flag`: --num-samples, --max-batch) too many for this
    machine's free memory is one UserError naming the flag, before anything is allocated (Linux
    would let the buffers grow until the machine swaps or kills the process, or torch's allocator
    raises). The estimate per row, generous: the state and its copies (2 per state tensor per
    layer), a NumPy step's gates (3 x G x H), and the logits with a chunk of noise (V x (CHUNK + 2))
    and of characters, in the model's dtype."""
    from rnn_train.prediction.sampler import CHUNK
    from rnn_train.runtime import refuse_beyond_free

    rnn, V = model.rnn, model.decoder.out_features
    values = (rnn.num_layers * rnn.hidden_size * 2 * len(model.spec.state) + 3 * model.spec.num_blocks * rnn.hidden_size
              + V * (CHUNK + 2))
    need = rows * (values * model.decoder.weight.element_size() + 8 * CHUNK)
    refuse_beyond_free(need, f"{flag} {rows:,} needs", "ask for fewer (the estimate is of their states and buffers)")


def make_stepper(model: CharRNN, batch: int, rows: int | None = None, kernel: str = "auto", precision: str = "fp32"):
    """A stepper of `model` for `batch` rows.

    kernel "auto": the C++ one (kernel_stepper.KernelStepper) where it runs this model here, else
    NumPy; "cpp" or "numpy" to ask for one. The NumPy stepper's GEMMs run in blocks of `rows` rows,
    by default the measured `gemm_rows(model, batch)`. precision "bf16" runs the C++ steps' products
    on AMX tiles in bfloat16 (probabilities to ~1e-3 instead of 1e-5, docs/prediction.md); where that
    cannot run (no AMX, no C++ kernels, a float64 model) one note says so and float32 is used."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    from rnn_train.prediction import kernel_stepper

    cpp = kernel != "numpy" and kernel_stepper.supports(model)
    if kernel == "cpp" and not cpp:
        raise RuntimeError("the C++ steps cannot run this model here (no C++ kernels, or a cell without a "
                           "'decode' hook)")
    if precision == "bf16" and not bf16_steps(model, kernel):
        _note_once("--precision bf16 needs the C++ kernels, a CPU with AMX tiles and a float32 model; "
                   "sampling in float32")
        precision = "fp32"
    if cpp:
        return kernel_stepper.KernelStepper(model, batch, precision=precision)
    return stepper_class(model)(model, batch, rows or gemm_rows(model, batch))


def bf16_steps(model: CharRNN, kernel: str = "auto") -> bool:
    """Whether precision "bf16" runs in bf16 for this model here: the C++ steps, AMX tiles and a
    float32 model; elsewhere make_stepper notes it and steps in float32 (and predict's header says
    what ran)."""
    from rnn_train.kernels.precision import fused_bf16_available
    from rnn_train.prediction import kernel_stepper

    return (kernel != "numpy" and kernel_stepper.supports(model) and fused_bf16_available()
            and model.decoder.weight.dtype == torch.float32)


_NOTES: set[str] = set()


def _note_once(message: str) -> None:
    """One stderr line per process and message (a server makes many steppers)."""
    if message not in _NOTES:
        _NOTES.add(message)
        print(f"note: {message}", file=sys.stderr, flush=True)


def sampling_key(model: CharRNN, batch: int) -> str:
    """What the best block size depends on: the CPU, NumPy's BLAS and its threads, the shapes."""
    from rnn_train.kernels.build import cpu_signature

    machine = [cpu_signature(), np.__version__, str(os.cpu_count()),
               *(f"{k}={os.environ.get(k, '')}" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"))]
    p = model.decoder.weight
    shape = [model.cell, f"L{model.rnn.num_layers}", f"H{model.rnn.hidden_size}", f"V{p.shape[0]}",
             f"I{model.rnn.input_size}", "embed" if model.embed is not None else "onehot", str(p.dtype).split(".")[-1],
             f"B{batch}"]
    return f"sampling/{hashlib.sha256(chr(0).join(machine).encode()).hexdigest()[:16]}/{'-'.join(shape)}"


def measure_gemm_rows(model: CharRNN, batch: int) -> dict:
    """Time a stepper of each candidate block size (interleaved runs of a few steps, the lower
    quartile of each: autotune.race) -> the decision entry {"rows", "us_per_step", ...}."""
    from rnn_train.kernels import autotune

    candidates = sorted({r for r in ROW_CANDIDATES if r < batch} | {batch})
    steppers = {r: stepper_class(model)(model, batch, r) for r in candidates}

    def sampling(s: Stepper) -> None:
        """Steps as sampling makes them: each step's input is chosen from the last logits. (Steps
        back to back, with nothing between them, timed an LSTM-256 at 4 rows alike in one call and
        in two, 70 us; with the choice between them, two calls took 72 us and one 99.)"""
        ids = np.zeros(batch, np.int64)
        for _ in range(_STEPS_PER_RUN):
            np.argmax(s.step(ids), axis=1, out=ids)

    runs = {str(r): (lambda s=s: sampling(s)) for r, s in steppers.items()}
    seconds = autotune.race(runs)
    best = min(seconds, key=seconds.get)
    return {"rows": int(best), "us_per_step": {r: round(t / _STEPS_PER_RUN * 1e6, 1) for r, t in seconds.items()},
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "load": round(os.getloadavg()[0], 2)}


def gemm_rows(model: CharRNN, batch: int) -> int:
    """Rows per GEMM call for sampling `batch` rows: measured once per machine, shape and batch, and
    stored (rnn_train.kernels.autotune's decisions file), so that a seed gives the same samples on
    every later run (the block size changes a row's rounding). A batch of 1 or 2 is one call."""
    if batch <= 2:
        return GEMM_ROWS
    from rnn_train.kernels import autotune

    def read(entry: dict) -> int:
        rows = int(entry["rows"])
        if rows < 1:
            raise ValueError(rows)
        return rows

    return autotune.stored_decision(sampling_key(model, batch), lambda: measure_gemm_rows(model, batch), read)
