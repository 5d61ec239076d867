"""The HTTP API of `rnn-train serve`: `create_app(model, vocab, cfg, ckpt, limits)` -> a FastAPI app.

    POST /v1/next      {prefix, top_n}                         -> {"prefix", "next": [[char, prob], ...]}
    POST /v1/generate  {prefix, k, temperature, top_k, top_p, num_samples, seed, stop_at, max_lines, stream}
                                                               -> {"prefix", "samples": [...]}, or Server-Sent Events
    POST /v1/score     {text}                                  -> {"chars", "scored", "unk", "loss", "perplexity", ...}
    GET  /v1/model     the model: cell, sizes, vocab, corpus kind, steps, validation loss; the limits
    GET  /healthz      {"status": "ok", "batching": counts of the batcher}
    GET  /docs, /openapi.json   the schema FastAPI derives from the request models below

Every endpoint computes what the CLI computes, through the same functions: the prefix is converted
(pinyin models) and warmed up as `predict` does it, /v1/next is `top_chars` of that warm-up,
/v1/generate runs through the batcher (scheduler.py, the same choice code as predict), /v1/score is
`score_pieces` of the text prepared as `rnn-train score` prepares a file.

A bad request is a 4xx JSON answer naming the field, {"error": "k: ...", "field": "k"}, and
nothing else: request models are strict (no "5" for 5, no unknown fields), limits are part of the
schema, and a value only the model can judge (a character its vocab lacks) is checked before any
work. docs/serve.md is the reference.

(No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run time,
and the request models are local to `create_app`.)
"""
import asyncio
import contextlib
import json
import math
import threading
import weakref
from dataclasses import asdict, dataclass
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from rnn_train.data.vocab import Vocab
from rnn_train.errors import UserError
from rnn_train.files import strict_json
from rnn_train.model.charrnn import CharRNN, check_vocab
from rnn_train.model.checkpoint import describe
from rnn_train.prediction.choose import MAX_SEED, MAX_TEMPERATURE, SamplingOptions
from rnn_train.prediction.cli import LONG_K
from rnn_train.prediction.generate import encode_prefix, sampler_logits, top_chars, warm_up
from rnn_train.prediction.sampler import RuleState, StopRules
from rnn_train.prediction.score import score_pieces
from rnn_train.prediction.stepper import check_rows
from rnn_train.prediction.textstream import corpus_text, is_converted_stop, text_pieces
from rnn_train.runtime import available_cores
from rnn_train.serve.scheduler import Batcher, Job, Unavailable
from rnn_train.training.schedule import perplexity

DEFAULT_K = 50  # as predict's -k


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; each is a command-line option of `rnn-train serve`."""

    max_prefix: int = 4096  # characters of a prefix or of stop_at
    max_k: int = 2000  # characters per sample
    max_samples: int = 16  # samples per request
    max_body: int = 1 << 20  # bytes of a request body (bounds /v1/score's text)
    max_batch: int = 64  # rows stepped together: the samples of all requests in flight

    def __post_init__(self):
        for name, value in asdict(self).items():
            if value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.max_samples > self.max_batch:
            raise UserError(f"--max-samples ({self.max_samples}) cannot exceed --max-batch ({self.max_batch})")


class FieldError(Exception):
    """A request the model cannot serve as asked: 422 naming the field."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(message)
        self.field, self.message, self.status = field, message, status


class StrictJSONResponse(JSONResponse):
    """JSON every reader accepts (a NaN validation loss is null; files.strict_json), UTF-8 as is."""

    def render(self, content: Any) -> bytes:
        return strict_json(content, ascii_only=False).encode("utf-8")


class BodyLimit:
    """ASGI middleware: a request body past `max_body` bytes is a 413 naming the limit, whether its
    Content-Length says so (answered before reading) or its chunks add up to it (stopped there)."""

    def __init__(self, app, max_body: int):
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"larger than this server's limit of {self.max_body:,} bytes (--max-body)"
        length = dict(scope.get("headers", ())).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await _error(413, "body", too_large)(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise HTTPException(413, too_large)  # inside the body's parsing: FastAPI passes it on
            return message

        await self.app(scope, limited, send)


class ErrorBody(BaseModel):
    """Every error answer's body (_install_error_handlers)."""
    error: str = Field(description="what is wrong: '<field>: <message>' where a field is at fault")
    field: str | None = Field(description="the field at fault ('body': the body as a whole), or null")


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The body is no JSON (malformed, or not UTF-8)"},
    413: {"model": ErrorBody, "description": "The body is larger than --max-body"},
    422: {"model": ErrorBody, "description": "A field's value cannot be served (named in `field`)"},
    503: {"model": ErrorBody, "description": "The server stopped before the request finished"},
}
"""The error answers of the POST endpoints, for the schema (/openapi.json, /docs): without them it
listed FastAPI's own 422 body, {"detail": [...]}, which this server never sends."""


SCORES_AT_ONCE = 20
"""At most this many scores at a time, whatever the cores: half of the 40 threads of the pool that
also answers /v1/next and the warm-ups of generate."""


class _Halted(Exception):
    """A score stopped because the server is stopping (its client gets the stop's 503)."""


def _error(status: int, field: str | None, message: str) -> JSONResponse:
    return StrictJSONResponse({"error": f"{field}: {message}" if field else message, "field": field}, status)


def request_models(limits: Limits, vocab_size: int):
    """The request bodies, with this server's limits and vocab in their schema."""

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

    class NextRequest(Strict):
        prefix: str = Field(max_length=limits.max_prefix,
                            description="text to read first ('' = the start of a line); Chinese characters are "
                                        "converted to pinyin for a pinyin model, as predict does")
        top_n: int = Field(5, ge=1, le=vocab_size - 1, description="how many next characters to list")

    class GenerateRequest(Strict):
        prefix: str = Field(max_length=limits.max_prefix, description="as for /v1/next")
        k: int | None = Field(None, ge=0, le=limits.max_k,
                              description=f"characters per sample (default {DEFAULT_K}; "
                                          f"{min(LONG_K, limits.max_k)} with stop_at or max_lines)")
        temperature: float = Field(0.0, ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False,
                                   description="0 = greedy; > 0 samples from softmax(logits / temperature)")
        top_k: int = Field(0, ge=0, description="sample among the k most likely characters only (0 = all)")
        top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False,
                             description="sample among the fewest most likely characters whose probabilities "
                                         "reach p (1 = all)")
        num_samples: int = Field(1, ge=1, le=limits.max_samples, description="samples of this prefix")
        seed: int | None = Field(None, ge=0, le=MAX_SEED,
                                 description="sample i draws what predict --seed draws for sample i")
        stop_at: str = Field("", max_length=limits.max_prefix,
                             description="end a sample right after it generates this string")
        max_lines: int = Field(0, ge=0, le=limits.max_k, description="end a sample after its N-th newline (0 = off)")
        stream: bool = Field(False, description="answer with Server-Sent Events as the text is made")

    class ScoreRequest(Strict):
        text: str = Field(description="scored as `rnn-train score` scores a UTF-8 file holding it")

    return NextRequest, GenerateRequest, ScoreRequest


def create_app(model: CharRNN, vocab: Vocab, cfg, ckpt: dict, limits: Limits = Limits()) -> FastAPI:
    """The app for one loaded model (`checkpoint.load_model`). The batcher is built here, so a model
    that cannot be stepped is refused before any port opens; its thread runs in the app's lifespan."""
    check_vocab(model, vocab)
    check_rows(model, limits.max_batch, "--max-batch")
    batcher = Batcher(model, vocab, limits.max_batch, exact=limits.max_samples)
    batcher.prepare()
    info = describe(model, vocab, cfg, ckpt)
    NextRequest, GenerateRequest, ScoreRequest = request_models(limits, len(vocab))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await run_in_threadpool(batcher.close)

    app = FastAPI(title="rnn-train", version="1", lifespan=lifespan, default_response_class=StrictJSONResponse,
                  description=f"A {info['cell']} character model: next characters, continuations and scores. "
                              "Reference: docs/serve.md.")
    app.state.batcher = batcher
    halts: set[asyncio.Future] = set()  # one per score in progress: set, it answers 503 at once

    def stop(error: Unavailable) -> None:
        """End every request still running with `error` (a 503, a stream's 'error' event): the
        generate jobs by the batcher, the scores by their halts. Called in the event loop's thread."""
        batcher.abort(error)
        for halt in list(halts):
            if not halt.done():
                halt.set_exception(error)

    app.state.stop = stop
    app.add_middleware(BodyLimit, max_body=limits.max_body)
    _install_error_handlers(app)

    def read_prefix(raw: str) -> tuple[str, torch.Tensor]:
        """The prefix as predict reads it (pinyin conversion, letters-only, then the vocab) -> (text, ids [1, P])."""
        prefix, _ = corpus_text(raw, cfg, "prefix")
        _within(prefix, "prefix", limits.max_prefix)
        why = vocab.cannot_spell(prefix)
        if why:
            raise FieldError("prefix", why)
        if not prefix and "\n" not in vocab:
            raise FieldError("prefix", "is empty, and the model's vocab has no newline to start from")
        return prefix, encode_prefix(vocab, prefix)

    @app.post("/v1/next", summary="The most likely next characters after a prefix, with probabilities",
              responses=ERRORS)
    def next_chars(body: NextRequest) -> dict:
        prefix, ids = read_prefix(body.prefix)
        logits, _ = warm_up(model, ids)
        return {"prefix": prefix, "next": [[c, p] for c, p in top_chars(vocab, logits, body.top_n)]}

    @app.post("/v1/generate", summary="Continuations of a prefix (greedy or sampled), batched with other requests",
              responses={200: {"content": {"text/event-stream": {}},
                               "description": "JSON, or with stream: true Server-Sent Events: 'data' events "
                                              "{\"text\": [new text per sample]}, then 'done' {\"prefix\", "
                                              "\"samples\"} (or 'error' {\"error\"})"}, **ERRORS})
    async def generate(body: GenerateRequest, request: Request):
        prefix, ids = read_prefix(body.prefix)
        options = SamplingOptions(body.temperature, body.top_k, body.top_p, body.seed)
        rules = _stop_rules(body, vocab, cfg, limits.max_prefix)
        k = body.k if body.k is not None else min(LONG_K if rules.used else DEFAULT_K, limits.max_k)
        rule_state = RuleState(rules, vocab, body.num_samples, k, prefix[-1:]) if rules.used else None
        logits, state = await run_in_threadpool(warm_up, model, ids)
        job = Job(sampler_logits(logits, batcher.dtype), state, k, options, rule_state, body.num_samples)
        if body.stream:
            return StreamingResponse(_events(batcher, job, prefix), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        if k and not await _run(batcher, job, request):
            return Response(status_code=499)  # the client left: nobody reads this
        return {"prefix": prefix, "samples": job.samples() if k else [""] * body.num_samples}

    # Scores run on the thread pool that also answers /v1/next and every generate's warm-up (40
    # threads): 41 long scores at once held them all, and nothing else was answered until one ended.
    # So as many run at a time as there are cores (more would only share them), never more than half
    # the pool, the rest wait here without a thread, and one whose client left meanwhile is not run at
    # all. One gate per event loop: an asyncio.Semaphore belongs to the loop that first waits on it.
    gates: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def scoring() -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if loop not in gates:
            gates[loop] = asyncio.Semaphore(min(available_cores(), SCORES_AT_ONCE))
        return gates[loop]

    @app.post("/v1/score", summary="Loss, perplexity and bits per character of a text, as `rnn-train score`",
              responses=ERRORS)
    async def score(body: ScoreRequest, request: Request) -> dict:
        try:
            body.text.encode("utf-8")
        except UnicodeEncodeError as e:  # JSON's "\udc00" escapes can say what no text holds
            raise FieldError("text", f"holds a lone surrogate ({body.text[e.start]!r} at character {e.start}), "
                                     f"which is not text") from None
        halt = asyncio.get_running_loop().create_future()
        halts.add(halt)
        halted = threading.Event()
        try:
            async with scoring():
                if halt.done():
                    raise halt.exception()
                if await request.is_disconnected():
                    return Response(status_code=499)  # nobody reads this
                work = asyncio.ensure_future(run_in_threadpool(score_text, body.text, halted))
                await asyncio.wait({work, halt}, return_when=asyncio.FIRST_COMPLETED)
                if not work.done():  # the server is stopping: answered now; the thread ends at its next segment
                    halted.set()
                    work.add_done_callback(lambda done: done.cancelled() or done.exception())  # (its _Halted: seen)
                    raise halt.exception()
                return work.result()
        finally:
            halts.discard(halt)
            if halt.done():  # stopped as it ended: its error seen, or asyncio logs it as never retrieved
                halt.exception()

    def score_text(text: str, halted: threading.Event) -> dict:
        def go_on(chars: str, bits) -> None:  # told each scored segment: where a halted score stops
            if halted.is_set():
                raise _Halted

        try:
            result = score_pieces(model, vocab, text_pieces(text, cfg.data), rows=go_on)
        except UserError as e:
            raise FieldError("text", str(e)) from None
        if result.scored == 0:
            raise FieldError("text", "has fewer than two characters after preparation: nothing to score "
                                     "(the first is only context)")
        return {"chars": result.chars, "scored": result.scored, "unk": result.unk, "loss": result.loss,
                "perplexity": perplexity(result.loss), "bits_per_char": result.loss / math.log(2)}

    # these two on the event loop itself, not the thread pool: a health check is answered however busy the pool is
    @app.get("/v1/model", summary="The model served: cell, sizes, vocab, corpus, training steps, losses; the limits")
    async def model_info() -> dict:
        return {**info, "limits": asdict(limits)}

    @app.get("/healthz", summary="Liveness, and what the batcher has done")
    async def healthz() -> dict:
        return {"status": "ok", "batching": batcher.stats()}

    @app.head("/healthz", include_in_schema=False)  # what some health checkers send; one operation in the schema
    async def healthz_head() -> dict:
        return await healthz()

    return app


def _within(text: str, field: str, most: int) -> None:
    """--max-prefix holds for the text as the model reads it too: Chinese read as pinyin is about
    five times as long as typed (the field's own max_length checks it as typed)."""
    if len(text) > most:
        raise FieldError(field, f"is {len(text)} characters once read as the model's corpus (pinyin), "
                                f"past --max-prefix {most}")


def _stop_rules(body, vocab: Vocab, cfg, max_chars: int) -> StopRules:
    """StopRules of a request, stop_at read as predict reads --stop-at (textstream.corpus_text), each
    field checked against the vocab (as predict's RuleState does)."""
    stop_at = corpus_text(body.stop_at, cfg, "stop_at")[0] if body.stop_at else ""
    _within(stop_at, "stop_at", max_chars)
    why = vocab.cannot_spell(stop_at)
    if why:
        raise FieldError("stop_at", why)
    if body.max_lines and "\n" not in vocab:
        raise FieldError("max_lines", "needs a model whose vocab has a newline")
    return StopRules(stop_at, body.max_lines, syllables=is_converted_stop(body.stop_at, cfg))


def _to_loop(loop: asyncio.AbstractEventLoop, fn):
    """`fn(value)` called from the batcher's thread, run in the event loop's; dropped once the loop
    has closed (a client that left while the server stopped: nobody is waiting)."""

    def call(value) -> None:
        try:
            loop.call_soon_threadsafe(fn, value)
        except RuntimeError:
            pass

    return call


DISCONNECT_POLL_S = 0.25  # how often a plain request that is still running asks whether its client is there


async def _run(batcher: Batcher, job: Job, request: Request) -> bool:
    """Submit `job` and wait for its end -> True, or False where the client left first (the job is
    cancelled: its rows go to the requests still waited for; a stream notices the same by its
    failed writes). An engine failure is raised here: a 500; the server stopping first,
    Unavailable: a 503."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def settle(error):
        if not done.done():
            done.set_exception(error) if error is not None else done.set_result(None)

    job.on_end = _to_loop(loop, settle)
    batcher.submit(job)
    try:
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(done), DISCONNECT_POLL_S)
                return True
            except asyncio.TimeoutError:  # (not yet the builtin TimeoutError in Python 3.10)
                if await request.is_disconnected():
                    job.cancelled = True
                    return False
    except asyncio.CancelledError:
        job.cancelled = True
        raise


_END = object()


async def _events(batcher: Batcher, job: Job, prefix: str):
    """Server-Sent Events of a job: 'data' with each sample's new text, then 'done' or 'error'."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    job.on_text = _to_loop(loop, queue.put_nowait)
    job.on_end = _to_loop(loop, lambda error: queue.put_nowait((_END, error)))
    if job.k:
        batcher.submit(job)
    else:
        queue.put_nowait((_END, None))
    try:
        while True:
            item = await queue.get()
            if isinstance(item, tuple) and item[0] is _END:
                if item[1] is not None:
                    error = item[1]
                    yield _sse({"error": str(error) if isinstance(error, Unavailable) else f"internal error: {error}"},
                               "error")
                else:
                    samples = job.samples() if job.k else [""] * job.rows
                    yield _sse({"prefix": prefix, "samples": samples}, "done")
                return
            yield _sse({"text": item})
    finally:
        job.cancelled = True  # a client gone mid-stream frees its rows; a finished job has left already


def _sse(data: dict, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _install_error_handlers(app: FastAPI) -> None:
    """Every failure as {"error": "<field>: <message>", "field": <field or null>}."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        if first.get("type") == "json_invalid":
            reason = (first.get("ctx") or {}).get("error", "")
            return _error(400, "body", f"malformed JSON ({reason} at character {loc[0] if loc else '?'})")
        field = ".".join(loc) or "body"
        if first.get("type") == "extra_forbidden":
            return _error(422, field, "unknown field")
        if field == "body":
            kind = request.headers.get("content-type", "")
            main, _, subtype = kind.split(";")[0].strip().lower().partition("/")
            if main != "application" or (subtype != "json" and not subtype.endswith("+json")):  # as FastAPI reads JSON
                return _error(422, field, f"send a JSON object as Content-Type: application/json (got "
                                          f"{kind or 'no Content-Type'}; curl --json '{{...}}' does both)")
            return _error(422, field, "must be a JSON object" if first.get("type") != "missing"
                          else "a JSON object is required")
        return _error(422, field, first.get("msg", "invalid"))

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        return _error(422, None, str(exc))

    @app.exception_handler(FieldError)
    async def field_error(request: Request, exc: FieldError):
        return _error(exc.status, exc.field, exc.message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code in (400, 413):  # 400: a body that is not JSON at all (FastAPI's own parse)
            bad = exc.__cause__
            if isinstance(bad, UnicodeDecodeError):  # what FastAPI says of it is "There was an error parsing the body"
                return _error(400, "body", f"not UTF-8: byte 0x{bad.object[bad.start]:02x} at offset {bad.start} "
                                           "(JSON is sent as UTF-8)")
            if isinstance(bad, RecursionError):  # nested deeper than Python's JSON reader goes
                return _error(400, "body", "malformed JSON (nested too deeply)")
            if isinstance(bad, ValueError):  # e.g. an integer of more digits than Python converts
                return _error(400, "body", f"malformed JSON ({str(bad).splitlines()[0].split(';')[0]})")
            return _error(exc.status_code, "body", str(exc.detail))
        return _error(exc.status_code, None, str(exc.detail))

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, exc: Unavailable):
        return _error(503, None, str(exc))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        return _error(500, None, f"internal error: {exc.__class__.__name__}: {exc}")
