"""`rnn-train serve`: a model behind an HTTP API (FastAPI on uvicorn), requests batched together.

    rnn-train serve --checkpoint runs/pinyin_gru
    rnn-train serve --checkpoint runs/pinyin_gru/best.pt --port 8080 --max-k 500

Safe by default: it listens on 127.0.0.1 only (another --host prints a one-line warning: the API
has no authentication); a missing or broken checkpoint, a bad limit or a port in use is one
`error:` line, exit 2, before anything listens; SIGTERM or Ctrl-C stops accepting connections,
lets the requests in flight finish (up to GRACE seconds; those still running then get a 503, or their
stream an 'error' event) and exits 0.
"""
from __future__ import annotations

import ipaddress
import os
import signal
import socket
import sys

from rnn_train.cli import ArgumentParser, signals_handled
from rnn_train.errors import UserError

GRACE = 5  # seconds the requests in flight get to finish after SIGTERM / Ctrl-C
ANSWER_S = 1.0  # of which the last: the requests still running are ended (503) and answered in it


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def exposure_warning(host: str, port: int) -> str | None:
    """The one-line warning for a bind other machines can reach, or None."""
    if is_loopback(host):
        return None
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address, as a URL writes it
    return (f"warning: listening on {shown}:{port}, reachable from other machines; the API has no authentication "
            f"(the default --host 127.0.0.1 is this machine only)")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket (ours, so that a port in use is one line and --port 0 picks a free one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"--host {host!r}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # Nagle holds a response's body until the client ACKs its headers (+40 ms a request, measured)
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock


def _unbracketed(host: str) -> str:
    """An IPv6 address as a URL writes it, [::1], is the address: the server's own first line shows it
    so, and copied back it was refused ("Name or service not known")."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _parser(prog: str) -> ArgumentParser:
    from rnn_train.serve.app import Limits

    d = Limits()
    ap = ArgumentParser(prog=prog, description=__doc__.split("\n")[0].split(": ", 1)[1])
    ap.add_argument("--checkpoint", required=True, help="a .pt file or a run directory (uses its best.pt)")
    ap.add_argument("--host", default="127.0.0.1", type=_unbracketed,
                    help="address to listen on (default 127.0.0.1: this machine only; IPv6 as ::1 or [::1])")
    ap.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port, printed)")
    ap.add_argument("--max-prefix", type=int, default=d.max_prefix, help=f"characters of a prefix or stop_at (default {d.max_prefix})")
    ap.add_argument("--max-k", type=int, default=d.max_k, help=f"characters per sample (default {d.max_k})")
    ap.add_argument("--max-samples", type=int, default=d.max_samples, help=f"samples per request (default {d.max_samples})")
    ap.add_argument("--max-body", type=int, default=d.max_body, help=f"bytes of a request body (default {d.max_body})")
    ap.add_argument("--max-batch", type=int, default=d.max_batch,
                    help=f"samples stepped together, all requests in flight (default {d.max_batch}); more wait")
    return ap


def quiet_threads() -> None:
    """Thread settings for a server, unless the environment sets them; before NumPy and torch load.

    Why: the batcher's thread steps the model while the event loop parses requests and torch warms
    prefixes up, and threads that spin waiting for work take the cores from them.
    - NumPy's OpenBLAS on one thread (OPENBLAS_NUM_THREADS=1): the batcher is one thread of work,
      and the other core is the event loop's. Two BLAS threads buy the batcher little: on a busy
      2-core machine OpenBLAS's threaded path for one 64-row GRU-256 call was far slower, so the
      measured block size (stepper.gemm_rows, stored per setting of this variable) fell back to
      blocks of 4 rows: `python benchmarks/sample_bench.py --cells gru --batches 1,64
      --compare-rows 0 --blas-threads 2` gave 38.7k chars/s at N=64 in blocks of 4, and with
      `--blas-threads 1` 34.5k in one call of 64, on that machine at load 7.
      (That is the NumPy stepper's setting; the C++ generation steps, where they are built, split
      the rows over all cores but one, scheduler.engine_threads, and do not use OpenBLAS.)
    - torch's OpenMP threads sleep when idle (OMP_WAIT_POLICY=PASSIVE) instead of spinning after
      every warm-up; their number, and so a warm-up's rounding, stays predict's."""
    if "numpy" in sys.modules or "torch" in sys.modules:
        return  # too late to matter (in-process, after they were imported: tests)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _server(uvicorn, app, config, early: list[int]):
    """uvicorn's Server, which ends the generate requests still running ANSWER_S before its grace
    runs out. Why: at the end of the grace uvicorn cancels the requests' tasks, and a cancelled
    request is a 500 with a traceback on stderr (a stream just stops); ended first by the batcher,
    each gets its answer: a 503 saying the server stopped, or the stream's 'error' event.

    `early`: the signals caught before uvicorn took them over (from the "serving" line on, which
    a supervisor may answer at once), handed to it as it does: it then starts, stops and ends as
    for any signal, where they were recorded and never acted on (the server ran on)."""
    import asyncio
    import contextlib
    import threading

    from rnn_train.serve.scheduler import Unavailable

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            # a signal the process was started with ignored stays so (cli.signals_handled): uvicorn takes both
            ignored = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is signal.SIG_IGN]
            with super().capture_signals():
                if threading.current_thread() is threading.main_thread():
                    for s in ignored:
                        signal.signal(s, signal.SIG_IGN)
                for sig in list(early):
                    self.handle_exit(sig, None)
                yield

        def handle_exit(self, sig, frame) -> None:
            """A second Ctrl-C while stopping ends the requests still running at once, each with its
            answer (uvicorn's own "force quit" then skipped this shutdown: its clients got a bare 500
            or a cut stream, stderr tracebacks, and once an abort, exit status 134). A SIGTERM again
            is the same stop, as for uvicorn (a supervisor may deliver one stop twice)."""
            if self.should_exit and sig == signal.SIGINT:
                self._captured_signals.append(sig)
                stop = Unavailable("the server was stopped at once, before this request finished (a second "
                                   "Ctrl-C)")
                try:  # from the event loop, not from inside whatever this handler interrupted
                    asyncio.get_running_loop().call_soon_threadsafe(app.state.stop, stop)
                except RuntimeError:  # no loop running (yet, or any more)
                    app.state.stop(stop)
                return
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets=None) -> None:
            stop = Unavailable(f"the server stopped before this request finished (it waited {GRACE - ANSWER_S:g} s)")
            timer = asyncio.get_running_loop().call_later(GRACE - ANSWER_S, app.state.stop, stop)
            try:
                await super().shutdown(sockets)
            finally:
                timer.cancel()

    return Server(config)


def main(argv: list[str] | None = None, prog: str = "rnn-train serve") -> int:
    quiet_threads()  # first: the parser's defaults come from serve.app, which imports NumPy and torch
    args = _parser(prog).parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")

    import uvicorn

    from rnn_train.model.checkpoint import load_model
    from rnn_train.serve.app import Limits, create_app

    limits = Limits(args.max_prefix, args.max_k, args.max_samples, args.max_body, args.max_batch)
    model, vocab, cfg, ckpt = load_model(args.checkpoint)
    app = create_app(model, vocab, cfg, ckpt, limits)  # refuses a model it cannot step, before listening
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    warning = exposure_warning(args.host, port)
    if warning:
        print(warning, file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    caught: list[int] = []
    # uvicorn handles SIGINT / SIGTERM itself (stop accepting, finish what is in flight), then raises
    # the signal again to the handler it found: ours records it, so the process ends with 0, not 130/143.
    # Ours is in place before the first line, which is when a supervisor may stop the server.
    try:
        with signals_handled(lambda s, frame: caught.append(s), signal.SIGINT, signal.SIGTERM):
            print(f"serving {cfg.model.cell} model ({cfg.model.num_layers}x{cfg.model.hidden_size}, {len(vocab)} "
                  f"chars, step {ckpt.get('step', 0)}) on http://{shown}:{port}  (API reference: /docs; stop: Ctrl-C)",
                  flush=True)
            server = _server(uvicorn, app, uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                                          timeout_graceful_shutdown=GRACE), caught)
            server.run(sockets=[sock])
    finally:
        sock.close()
    served = app.state.batcher.counts["jobs_done"]
    print(f"stopped ({'signal ' + signal.Signals(caught[0]).name if caught else 'server ended'}; "
          f"{served} generate request{'s' if served != 1 else ''} served)", flush=True)
    return 0 if server.started else 1
