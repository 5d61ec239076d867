"""`rnn-train serve`: the real server, started on a free loopback port in a subprocess and spoken to
over HTTP. It answers what the CLI prints (next characters, greedy and seeded continuations, scores),
steps concurrent requests together, answers every bad request with a 4xx naming the field and keeps
serving, refuses a broken checkpoint in one line before listening, and ends in-flight requests
before exiting 0 on SIGTERM or Ctrl-C. The batcher and the stepper views it steps are checked
in-process against predict's own code."""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import torch

from rnn_train.commands import run_command
from rnn_train.kernels.build import build_dir, extension
from rnn_train.model import cells
from rnn_train.model.charrnn import CharRNN
from rnn_train.model.checkpoint import load_model
from rnn_train.prediction.choose import SamplingOptions
from rnn_train.prediction.generate import encode_prefix, predict, sampler_logits, samples, warm_up
from rnn_train.prediction.sampler import RuleState, StopRules
from rnn_train.prediction.score import score_file
from rnn_train.prediction.stepper import make_stepper
from rnn_train.serve.cli import exposure_warning
from rnn_train.serve.scheduler import Batcher, Job
from rnn_train.training.trainer import train
from tests.helpers import ROOT, tiny_config
from tests.test_cells import NEW_CELLS

LIMITS = ["--max-k", "1200", "--max-samples", "4", "--max-prefix", "64", "--max-body", "2048", "--max-batch", "32"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A GRU trained for seconds on the built-in pinyin corpus (pinyin: Chinese prefixes convert)."""
    tmp = tmp_path_factory.mktemp("serve")
    train(tiny_config(tmp, "train.max_steps=80", "model.hidden_size=24"), tmp / "run", quiet=True, cache_dir=tmp / "c")
    return tmp / "run"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The server's and the CLI's environment: one decisions cache, and the server's BLAS setting
    (one OpenBLAS thread), under which a request alone is predict --seed to the bit. The cache is
    seeded with this machine's C++ build (linked), so that the processes do not build it again."""
    cache = tmp_path_factory.mktemp("cache")
    if extension() is not None:
        (cache / build_dir().name).symlink_to(build_dir())
    return {**os.environ, "RNN_TRAIN_CACHE": str(cache), "OPENBLAS_NUM_THREADS": "1"}


_STARTED: list = []  # every Server, so that a test that fails before stopping its own leaves none running


@pytest.fixture(autouse=True)
def no_server_left_behind():
    """Kill the servers a test started (not the module's, which started before it) if it did not stop
    them: one left generating 10^8 characters for a failed test took a core from the tests after it."""
    before = len(_STARTED)
    yield
    for s in _STARTED[before:]:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()
    del _STARTED[before:]


class Server:
    """`python -m rnn_train serve --port 0 ...` in a subprocess; its URL read from its first line."""

    def __init__(self, checkpoint, env, *args, preexec_fn=None):
        self.proc = subprocess.Popen([sys.executable, "-m", "rnn_train", "serve", "--checkpoint", str(checkpoint),
                                      "--port", "0", *args], cwd=ROOT, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec_fn)
        _STARTED.append(self)
        line = self.proc.stdout.readline()
        if "http://127.0.0.1:" not in line:
            self.proc.kill()
            pytest.fail(f"the server did not start: {line!r} {self.proc.stderr.read()}")
        self.url = "http://" + line.split("http://")[1].split()[0]

    def post(self, path, body, **kwargs):
        return httpx.post(self.url + path, json=body, timeout=60, **kwargs)

    def get(self, path):
        return httpx.get(self.url + path, timeout=60)

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(30)


@pytest.fixture(scope="module")
def server(run, env):
    s = Server(run, env, *LIMITS)
    yield s
    assert s.stop() == 0


def cli_predict(run, env, *args) -> str:
    out = subprocess.run([sys.executable, "-m", "rnn_train", "predict", "--checkpoint", str(run), *args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def as_cli_prints(prefix: str, next_chars, samples_: list[str]) -> tuple[str, str]:
    """The server's answers in predict's format: (the top-n block, the text after 'continuation ...:')."""
    top = "".join(f"  {c!r:>8}  {p:.4f}\n" for c, p in next_chars)
    if len(samples_) == 1:
        text = prefix + samples_[0]
        return top, text + ("" if text.endswith("\n") else "\n")
    texts = [prefix + s for s in samples_]
    return top, "".join(f"--- sample {i + 1}\n{t}" + ("" if t.endswith("\n") else "\n") for i, t in enumerate(texts))


def cli_parts(stdout: str) -> tuple[str, str]:
    head, tail = stdout.split("\ncontinuation (", 1)
    return head.split("):\n", 1)[1] + "\n", tail.split(":\n", 1)[1]


# ------------------------------------------------------------------------------ the same as the CLI


def test_a_chinese_prefix_gives_predicts_next_characters_and_greedy_text(server, run, env):
    top = server.post("/v1/next", {"prefix": "中国", "top_n": 5}).json()
    gen = server.post("/v1/generate", {"prefix": "中国", "k": 300}).json()
    assert top["prefix"] == gen["prefix"] == "zhong guo "  # converted as predict converts it
    cli_top, cli_text = cli_parts(cli_predict(run, env, "--prefix", "中国", "-k", "300"))
    assert as_cli_prints(gen["prefix"], top["next"], gen["samples"]) == (cli_top, cli_text)
    model, vocab, _, _ = load_model(run)
    expected = predict(model, vocab, "zhong guo ", k=0, top_n=5).next_chars
    assert [c for c, _ in top["next"]] == [c for c, _ in expected]
    np.testing.assert_allclose([p for _, p in top["next"]], [p for _, p in expected], rtol=0, atol=1e-5)


def test_a_letters_only_model_reads_the_prefix_as_predict_does(tmp_path, env):
    text = tmp_path / "text.txt"
    text.write_text("The Time Traveller (for so it will be convenient to speak of him) was expounding a "
                    "recondite matter to us. His grey eyes shone and twinkled.\n" * 40)
    train(tiny_config(tmp_path, "data.kind=text", f"data.paths={text}", "data.letters_only=true",
                      "data.val_fraction=0.1", "train.max_steps=20"), tmp_path / "run", quiet=True,
          cache_dir=tmp_path / "c")
    s = Server(tmp_path / "run", env)
    try:
        top = s.post("/v1/next", {"prefix": "The Time-Traveller, ", "top_n": 3}).json()
        stopped = s.post("/v1/generate", {"prefix": "The", "stop_at": "Eyes.", "k": 50})  # read as 'eyes '
    finally:
        assert s.stop() == 0
    assert top["prefix"] == "the time traveller "
    assert stopped.status_code == 200, stopped.text
    cli_top, _ = cli_parts(cli_predict(tmp_path / "run", env, "--prefix", "The Time-Traveller, ", "--top-n", "3"))
    assert as_cli_prints(top["prefix"], top["next"], [""])[0] == cli_top


def test_a_seeded_request_alone_is_predict_seed_to_the_bit(server, run, env):
    options = {"temperature": 0.9, "top_k": 8, "top_p": 0.95, "seed": 7, "num_samples": 3, "stop_at": "ma",
               "max_lines": 3}
    got = server.post("/v1/generate", {"prefix": "ni hao", "k": 400, **options}).json()
    stdout = cli_predict(run, env, "--prefix", "ni hao", "-k", "400", "--temperature", "0.9", "--top-k", "8",
                         "--top-p", "0.95", "--seed", "7", "--num-samples", "3", "--stop-at", "ma", "--max-lines", "3")
    assert as_cli_prints("ni hao", [], got["samples"])[1] == cli_parts(stdout)[1]
    assert len(set(got["samples"])) == 3  # three streams, not one
    again = server.post("/v1/generate", {"prefix": "ni hao", "k": 400, **options}).json()
    assert again == got


def test_unseeded_requests_differ_and_k_0_is_empty(server):
    a, b = (server.post("/v1/generate", {"prefix": "ni", "k": 60, "temperature": 1.0}).json()["samples"]
            for _ in range(2))
    assert a != b
    assert server.post("/v1/generate", {"prefix": "ni", "k": 0, "num_samples": 2}).json()["samples"] == ["", ""]


def in_own_loop(coroutine_function):
    """Run an in-process client scenario in a thread of its own, with its own event loop (the tests
    before may leave one running in this thread, where asyncio.run refuses to start)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine_function()).result()


def test_a_health_check_is_answered_while_more_scores_than_the_thread_pool_holds_are_running(run, monkeypatch):
    """Scores ran on the thread pool that answered everything else: 41 long ones at once held all 40
    threads, and /healthz went unanswered until one ended (a supervisor would restart the server)."""
    import asyncio

    from rnn_train.serve import app as served

    release = threading.Event()
    scoring = []

    def slow(*args, **kwargs):
        scoring.append(1)
        release.wait(30)
        return score_pieces(*args, **kwargs)

    score_pieces = served.score_pieces
    monkeypatch.setattr(served, "score_pieces", slow)
    model, vocab, cfg, ckpt = load_model(run / "best.pt")
    app = served.create_app(model, vocab, cfg, ckpt)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            scores = [asyncio.create_task(client.post("/v1/score", json={"text": "ni hao zhong guo"}))
                      for _ in range(45)]
            while not scoring:
                await asyncio.sleep(0.01)
            health = await asyncio.wait_for(client.get("/healthz"), 10)
            model_info = await asyncio.wait_for(client.get("/v1/model"), 10)
            release.set()
            answers = await asyncio.gather(*scores)
            return health, model_info, answers

    try:
        health, model_info, answers = in_own_loop(scenario)
    finally:
        release.set()
    assert health.status_code == 200 and health.json()["status"] == "ok" and model_info.status_code == 200
    assert [a.status_code for a in answers] == [200] * 45 and len({a.json()["loss"] for a in answers}) == 1


def test_scores_that_wait_for_a_core_are_served_on_every_event_loop_the_app_runs_on(run, monkeypatch):
    """An asyncio.Semaphore belongs to the first loop that waits on it: the app served on a second
    loop (a test client's, a program's) answered every score that had to wait with a 500."""
    import asyncio

    from rnn_train.serve import app as served

    monkeypatch.setattr(served, "available_cores", lambda: 1)  # so that two of three scores wait
    model, vocab, cfg, ckpt = load_model(run / "best.pt")
    app = served.create_app(model, vocab, cfg, ckpt)

    async def three_scores():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            answers = await asyncio.gather(*(client.post("/v1/score", json={"text": "ni hao zhong guo " * 200})
                                             for _ in range(3)))
            return [a.status_code for a in answers]

    assert in_own_loop(three_scores) == [200] * 3
    assert in_own_loop(three_scores) == [200] * 3


def test_a_score_running_when_the_server_stops_gets_the_stops_answer_and_its_thread_ends(run, monkeypatch):
    """At the end of the grace uvicorn cancelled a score still running: a plain-text 500, a CancelledError
    traceback on stderr, and the process computed on after `stopped` until the score ended."""
    import asyncio

    from rnn_train.serve import app as served
    from rnn_train.serve.scheduler import Unavailable

    started, ended = threading.Event(), threading.Event()

    def endless(model, vocab, pieces, rows=None, **kwargs):  # a score that ends only where it is told to
        started.set()
        try:
            while True:
                rows("x", np.zeros(1))
                time.sleep(0.005)
        finally:
            ended.set()

    monkeypatch.setattr(served, "score_pieces", endless)
    model, vocab, cfg, ckpt = load_model(run / "best.pt")
    app = served.create_app(model, vocab, cfg, ckpt)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            answers = [asyncio.create_task(client.post("/v1/score", json={"text": "ni hao"})) for _ in range(4)]
            while not started.is_set():
                await asyncio.sleep(0.01)
            app.state.stop(Unavailable("the server stopped before this request finished"))
            return await asyncio.wait_for(asyncio.gather(*answers), 10)

    answers = in_own_loop(scenario)
    assert [a.status_code for a in answers] == [503] * 4  # the running one and those waiting for a core
    assert answers[0].json() == {"error": "the server stopped before this request finished", "field": None}
    assert ended.wait(5)


def test_scores_equal_rnn_train_score(server, run, env, tmp_path):
    texts = {"plain": "ni hao\nzhong guo ren min\n" * 5, "crlf": "ni hao\r\nzhong guo\r\n" * 4,
             "chinese": "中国人民\n你好世界\n" * 3}
    paths = [tmp_path / f"{name}.txt" for name in texts]
    for path, text in zip(paths, texts.values()):
        path.write_bytes(text.encode("utf-8"))
    out = subprocess.run([sys.executable, "-m", "rnn_train", "score", "--checkpoint", str(run), *map(str, paths)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    model, vocab, cfg, _ = load_model(run)
    for path, text, line in zip(paths, texts.values(), out.stdout.strip().splitlines()):
        got = server.post("/v1/score", {"text": text}).json()
        assert line.startswith(f"{path}: ")
        assert f"loss {got['loss']:.4f} | ppl {got['perplexity']:.3f} | {got['bits_per_char']:.3f} bits/char" in line
        assert f"{got['chars']:,} chars ({got['scored']:,} scored, {got['unk'] / got['chars']:.2%} <unk>)" in line
        expected = score_file(model, vocab, cfg.data, str(path))
        assert (got["chars"], got["scored"], got["unk"]) == (expected.chars, expected.scored, expected.unk)
        assert got["loss"] == pytest.approx(expected.loss, rel=1e-6)
        assert got["bits_per_char"] == pytest.approx(expected.loss / math.log(2), rel=1e-6)


def test_the_model_the_schema_and_the_docs_are_served(server, run):
    info = server.get("/v1/model").json()
    _, vocab, cfg, ckpt = load_model(run)
    assert info["cell"] == "gru" and info["hidden_size"] == 24 and info["vocab"] == list(vocab.itos)
    assert info["corpus"]["kind"] == "pinyin" and info["steps"] == ckpt["step"] == 80
    assert info["val_loss"] == pytest.approx(float(ckpt["val_loss"]))
    assert info["limits"]["max_k"] == 1200
    schema = server.get("/openapi.json").json()
    assert {"/v1/next", "/v1/generate", "/v1/score", "/v1/model", "/healthz"} <= set(schema["paths"])
    generate = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    assert generate["num_samples"]["maximum"] == 4 and generate["top_p"]["exclusiveMinimum"] == 0
    assert "swagger" in server.get("/docs").text.lower()
    assert server.get("/healthz").json()["status"] == "ok"


def test_streaming_sends_the_text_as_it_is_made_then_the_samples(server):
    body = {"prefix": "zhong", "k": 500, "temperature": 0.8, "seed": 3, "num_samples": 2}
    with httpx.stream("POST", server.url + "/v1/generate", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [e for e in r.read().decode().split("\n\n") if e]
    pieces = [json.loads(e.removeprefix("data: "))["text"] for e in events[:-1]]
    assert events[-1].startswith("event: done\n") and len(pieces) >= 500 // 64
    done = json.loads(events[-1].split("data: ", 1)[1])
    assert ["".join(p[i] for p in pieces) for i in range(2)] == done["samples"]
    assert done["samples"] == server.post("/v1/generate", body).json()["samples"]


# ------------------------------------------------------------------------------ batching


def test_concurrent_requests_are_stepped_together_and_each_gets_its_own_text(server):
    bodies = [{"prefix": p, "k": 1000} for p in ("zhong", "ni hao", "shi ", "ren min", "a", "")] + \
             [{"prefix": "zhong guo", "k": 1000, "temperature": t, "seed": s, "num_samples": n, "top_k": tk}
              for s, (t, n, tk) in enumerate([(0.7, 1, 0), (1.0, 2, 5), (1.3, 1, 0), (0.5, 3, 0), (0.9, 1, 3),
                                              (1.1, 2, 0), (0.8, 1, 0), (1.2, 4, 0), (0.6, 1, 10), (1.0, 1, 0)])]
    before = server.get("/healthz").json()["batching"]
    answers: list = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def client(i):
        start.wait()
        answers[i] = server.post("/v1/generate", bodies[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = server.get("/healthz").json()["batching"]
    assert [a.status_code for a in answers] == [200] * len(bodies)
    steps = after["steps"] - before["steps"]
    assert after["largest_batch"] >= 8 and steps < 0.5 * sum(b["k"] for b in bodies)  # shared steps
    # every row was stepped once per character but its last: none skipped, none twice
    assert after["rows_stepped"] - before["rows_stepped"] == sum((b["k"] - 1) * b.get("num_samples", 1) for b in bodies)
    for body, answer in zip(bodies, answers):
        alone = server.post("/v1/generate", body).json()["samples"]
        got = answer.json()["samples"]
        assert [len(s) for s in got] == [body["k"]] * body.get("num_samples", 1)
        if "seed" not in body or after["stepper"] == "cpp":
            assert got == alone  # greedy, or any on the C++ steps (a row's numbers do not depend on the batch)
        else:  # NumPy stepper: the text can part at a near tie (OpenBLAS rounds with the rows per call)
            assert [s[0] for s in got] == [s[0] for s in alone]  # the same random streams, row by row


# ------------------------------------------------------------------------------ bad requests


BAD = [  # (path, body as JSON text, status, field)
    ("/v1/generate", '{"prefix": "ni",', 400, "body"),
    ("/v1/generate", '[1, 2]', 422, "body"),
    ("/v1/generate", '', 422, "body"),
    ("/v1/generate", '{"k": 5}', 422, "prefix"),
    ("/v1/generate", '{"prefix": 3}', 422, "prefix"),
    ("/v1/generate", '{"prefix": "ni", "k": "5"}', 422, "k"),
    ("/v1/generate", '{"prefix": "ni", "k": 5.0}', 422, "k"),
    ("/v1/generate", '{"prefix": "ni", "stream": "yes"}', 422, "stream"),
    ("/v1/generate", '{"prefix": "ni", "kk": 5}', 422, "kk"),
    ("/v1/generate", '{"prefix": "ni", "k": -1}', 422, "k"),
    ("/v1/generate", '{"prefix": "ni", "k": 1201}', 422, "k"),
    ("/v1/generate", '{"prefix": "ni", "temperature": -0.5}', 422, "temperature"),
    ("/v1/generate", '{"prefix": "ni", "temperature": NaN}', 422, "temperature"),
    ("/v1/generate", '{"prefix": "ni", "temperature": Infinity}', 422, "temperature"),
    ("/v1/generate", '{"prefix": "ni", "top_p": 0}', 422, "top_p"),
    ("/v1/generate", '{"prefix": "ni", "top_p": 1.5}', 422, "top_p"),
    ("/v1/generate", '{"prefix": "ni", "top_k": -2}', 422, "top_k"),
    ("/v1/generate", '{"prefix": "ni", "num_samples": 0}', 422, "num_samples"),
    ("/v1/generate", '{"prefix": "ni", "num_samples": 5}', 422, "num_samples"),
    ("/v1/generate", '{"prefix": "ni", "seed": -1}', 422, "seed"),
    ("/v1/generate", '{"prefix": "NI HAO"}', 422, "prefix"),
    ("/v1/generate", '{"prefix": "ni", "stop_at": "!"}', 422, "stop_at"),
    ("/v1/generate", json.dumps({"prefix": "ni " * 22}), 422, "prefix"),  # 66 characters > --max-prefix 64
    ("/v1/next", json.dumps({"prefix": "中国" * 10}), 422, "prefix"),  # 20 typed, ~100 read as pinyin
    ("/v1/generate", json.dumps({"prefix": "ni", "stop_at": "中国" * 10}), 422, "stop_at"),
    ("/v1/next", '{"prefix": "ni", "top_n": 0}', 422, "top_n"),
    ("/v1/next", '{"prefix": "ni", "top_n": 1000}', 422, "top_n"),  # more than the vocab's characters
    ("/v1/next", '{"prefix": "ni", "top_n": true}', 422, "top_n"),
    ("/v1/score", '{"text": "a"}', 422, "text"),
    ("/v1/score", '{"text": "ni\\u0000hao"}', 422, "text"),
    ("/v1/score", '{"text": "\\udc00\\udc00ni hao"}', 422, "text"),  # lone surrogates: no text holds them
    ("/v1/score", '{"text": "ni \udcff hao"}', 400, "body"),  # byte 0xff (sent surrogate-escaped): not JSON at all
    ("/v1/score", json.dumps({"text": "ni hao " * 400}), 413, "body"),  # 2,815 bytes > --max-body 2048
    ("/v1/next", '{"prefix": "ni", "top_n": ' + "[" * 1000 + "]" * 1000 + "}", 400, "body"),  # too deep to read
]


@pytest.mark.parametrize("path,raw,status,field", BAD, ids=[f"{p}:{r[:30]}" for p, r, _, _ in BAD])
def test_a_bad_request_is_a_4xx_naming_the_field_and_the_server_goes_on(server, path, raw, status, field):
    content = raw.encode("utf-8", "surrogateescape")  # "\udcff" in raw: the byte 0xff itself
    r = httpx.post(server.url + path, content=content, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["field"] == field and body["error"].startswith(f"{field}: ")
    if status == 400:
        assert body["error"].startswith("body: malformed JSON (") or "not UTF-8" in body["error"], body
    if "\udcff" in raw:
        at = content.index(b"\xff")
        assert body["error"] == f"body: not UTF-8: byte 0xff at offset {at} (JSON is sent as UTF-8)"
    assert server.post("/v1/next", {"prefix": "ni"}).status_code == 200


def test_answers_are_utf_8_as_is_and_a_health_check_may_ask_with_head(server):
    r = httpx.post(server.url + "/v1/next", json={"prefix": "né"}, timeout=60)  # a character the vocab lacks
    assert r.status_code == 422 and "'é'" in r.json()["error"]
    assert "é" in r.content.decode("utf-8") and "\\u00e9" not in r.text  # as it is, not \u00e9
    assert httpx.head(server.url + "/healthz", timeout=60).status_code == 200
    assert list(server.get("/openapi.json").json()["paths"]["/healthz"]) == ["get"]  # one operation, one id


def test_the_schema_describes_the_error_answers_the_server_sends(server):
    """/openapi.json listed FastAPI's own 422 body, {"detail": [...]}, which the server never sends."""
    schema = server.get("/openapi.json").json()
    for path in ("/v1/next", "/v1/generate", "/v1/score"):
        answers = schema["paths"][path]["post"]["responses"]
        assert {"400", "413", "422", "503"} <= set(answers), path
        for status in ("400", "413", "422", "503"):
            assert answers[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert set(schema["components"]["schemas"]["ErrorBody"]["properties"]) == {"error", "field"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    wrong = server.post("/v1/generate", {"prefix": "ni", "k": "x"})
    assert wrong.status_code == 422 and set(wrong.json()) == {"error", "field"}  # as described


def test_a_body_past_the_limit_without_a_length_or_not_labelled_json_is_refused_too(server):
    def chunks():
        yield b'{"text": "'
        for _ in range(30):
            yield b"ni hao " * 20
        yield b'"}'

    r = httpx.post(server.url + "/v1/score", content=chunks(), headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["field"] == "body"
    for label in ({}, {"content-type": "application/jsonfoo"}, {"content-type": "text/json"}):  # not read as JSON
        r = httpx.post(server.url + "/v1/next", content=b'{"prefix": "ni"}', timeout=60, headers=label)
        assert r.status_code == 422 and r.json()["field"] == "body" and "Content-Type: application/json" in \
            r.json()["error"], (label, r.json())
    r = httpx.post(server.url + "/v1/next", content=b'{"prefix": "ni"}', timeout=60,
                   headers={"content-type": "application/vnd.api+json; charset=utf-8"})  # read as JSON by FastAPI
    assert r.status_code == 200, r.json()
    assert httpx.get(server.url + "/v1/nowhere", timeout=60).json() == {"error": "Not Found", "field": None}


# ------------------------------------------------------------------------------ the process


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_finishes_the_requests_in_flight_and_exits_0(run, env, sig):
    s = Server(run, env, *LIMITS)
    body = {"prefix": "zhong", "k": 1200, "num_samples": 4, "temperature": 1.0, "seed": 1, "stream": True}
    with httpx.stream("POST", s.url + "/v1/generate", json=body, timeout=60) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")  # the request is in flight
        s.proc.send_signal(sig)
        time.sleep(0.5)  # a slow reader: the server must wait for it
        rest = list(lines)
    started = time.monotonic()
    assert s.proc.wait(15) == 0 and time.monotonic() - started < 10
    done = json.loads(rest[rest.index("event: done") + 1].removeprefix("data: "))
    assert [len(t) for t in done["samples"]] == [1200] * 4
    out = s.proc.stdout.read()
    assert f"stopped (signal {sig.name}" in out, out
    assert s.proc.stderr.read() == ""
    with pytest.raises(httpx.ConnectError):
        httpx.get(s.url + "/healthz", timeout=5)


def stopped_while_busy(s: Server, stop) -> tuple[str, httpx.Response, float]:
    """A plain and a streamed generate request that never end by themselves, both in flight (8 + 8
    rows of 16) when `stop()` signals the server: the stream's error and the plain answer, and when
    the stop began."""
    body = {"prefix": "zhong", "k": 100_000_000, "num_samples": 8, "temperature": 1.0}
    plain = {}
    waiter = threading.Thread(target=lambda: plain.update(r=s.post("/v1/generate", body)))
    waiter.start()
    with httpx.stream("POST", s.url + "/v1/generate", json={**body, "stream": True}, timeout=60) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        deadline = time.monotonic() + 30
        while s.get("/healthz").json()["batching"]["live_jobs"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = stop()
        rest = list(lines)
    waiter.join(30)
    return json.loads(rest[rest.index("event: error") + 1].removeprefix("data: "))["error"], plain["r"], started


def test_requests_still_running_at_the_end_of_the_grace_get_an_answer_not_a_cancelled_task(run, env):
    """Past the grace (serve/cli.py GRACE), a plain request gets a 503 saying the server stopped and a
    stream its 'error' event; nothing on stderr (no cancelled task's traceback), exit 0."""
    s = Server(run, env, "--max-k", "100000000", "--max-samples", "8", "--max-batch", "16")

    def stop():
        s.proc.send_signal(signal.SIGTERM)
        return time.monotonic()

    error, plain, started = stopped_while_busy(s, stop)
    assert s.proc.wait(15) == 0 and time.monotonic() - started < 10
    assert error.startswith("the server stopped before this request finished")
    assert plain.status_code == 503 and plain.json() == {"error": error, "field": None}
    assert s.proc.stderr.read() == ""
    assert "stopped (signal SIGTERM; 0 generate requests served)" in s.proc.stdout.read()


def test_a_second_ctrl_c_while_stopping_answers_the_requests_still_running_at_once(run, env):
    """uvicorn's own answer to it ("force quit") skipped the shutdown: a bare 500, a cut stream,
    tracebacks on stderr, once an abort (exit status 134). Now each request gets its answer at once,
    well before the grace would have ended them, and the server exits 0."""
    s = Server(run, env, "--max-k", "100000000", "--max-samples", "8", "--max-batch", "16")

    def twice():
        s.proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        s.proc.send_signal(signal.SIGINT)
        return time.monotonic()

    error, plain, started = stopped_while_busy(s, twice)
    assert s.proc.wait(15) == 0 and time.monotonic() - started < 3  # the grace would have taken 4 s more
    assert error.startswith("the server was stopped at once, before this request finished")
    assert plain.status_code == 503 and plain.json() == {"error": error, "field": None}
    assert s.proc.stderr.read() == ""
    assert "stopped (signal SIGINT; 0 generate requests served)" in s.proc.stdout.read()


def test_a_plain_request_whose_client_left_is_cancelled_and_frees_its_rows(run, env):
    """Not generated to the end for nobody: its rows go to the requests still waited for."""
    s = Server(run, env, "--max-k", "100000000", "--max-samples", "8", "--max-batch", "16")
    body = {"prefix": "zhong", "k": 100_000_000, "num_samples": 8, "temperature": 1.0}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
        httpx.post(s.url + "/v1/generate", json=body, timeout=1.0)
    deadline = time.monotonic() + 10
    while (stats := s.get("/healthz").json()["batching"])["jobs_cancelled"] < 1:
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)
    assert stats["live_jobs"] == 0 and stats["live_rows"] == 0 and stats["jobs_done"] == 0
    assert s.stop() == 0 and s.proc.stderr.read() == ""


def test_a_signal_as_soon_as_the_first_line_is_printed_stops_the_server_as_any_later_one(run, env):
    """A supervisor stops the server when it likes, the moment it reads "serving ..." included: the
    signal then ends it as one during serving does (it once killed the process, or was recorded and
    never acted on while uvicorn started, and the server ran on)."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM, signal.SIGTERM):
        s = Server(run, env)
        s.proc.send_signal(sig)  # at once: uvicorn has not taken the signals over yet
        assert s.proc.wait(30) == 0
        assert s.proc.stdout.read().startswith(f"stopped (signal {sig.name}; 0 generate requests served)")
        assert s.proc.stderr.read() == ""


def test_a_missing_or_broken_checkpoint_or_a_taken_port_is_one_line_before_listening(run, tmp_path, capsys):
    garbage = tmp_path / "broken.pt"
    garbage.write_bytes(b"not a checkpoint")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    cases = {"missing": (["--checkpoint", str(tmp_path / "nope")], "does not exist"),
             "broken": (["--checkpoint", str(garbage)], "is not an rnn-train checkpoint"),
             "port": (["--checkpoint", str(run), "--port", str(taken.getsockname()[1])], "cannot listen on 127.0.0.1:"),
             "limits": (["--checkpoint", str(run), "--max-samples", "9", "--max-batch", "8"], "--max-samples (9)")}
    try:
        for name, (args, needle) in cases.items():
            assert run_command("serve", args) == 2, name
            out, err = capsys.readouterr()
            assert out == "" and err.count("\n") == 1 and err.startswith("error: ") and needle in err, (name, err)
    finally:
        taken.close()


def test_an_ipv6_address_in_brackets_as_the_first_line_shows_it_is_taken(run, env):
    """`--host [::1]`, the form the server's own first line prints, was "Name or service not known"."""
    proc = subprocess.Popen([sys.executable, "-m", "rnn_train", "serve", "--checkpoint", str(run), "--port", "0",
                             "--host", "[::1]"], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        assert " on http://[::1]:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = "http://" + line.split("http://")[1].split()[0]
        assert httpx.get(url + "/healthz", timeout=30).json()["status"] == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_only_a_loopback_bind_is_silent():
    for host in ("127.0.0.1", "127.0.0.5", "::1", "localhost"):
        assert exposure_warning(host, 8000) is None
    for host, shown in (("0.0.0.0", "0.0.0.0"), ("::", "[::]"), ("192.168.1.7", "192.168.1.7"),
                        ("example.org", "example.org")):
        warning = exposure_warning(host, 8000)
        assert warning.startswith(f"warning: listening on {shown}:8000, ") and "\n" not in warning


# ------------------------------------------------------------------------------ in-process: the batcher


@pytest.mark.parametrize("kernel", ["numpy", "cpp"])
def test_a_stepper_view_of_n_rows_steps_as_a_stepper_made_for_n_rows(run, kernel):
    if kernel == "cpp" and extension() is None:
        pytest.fail("the C++ kernels did not build here (see the note on stderr)")
    model, vocab, _, _ = load_model(run)
    _, state = warm_up(model, encode_prefix(vocab, "zhong guo"))
    big = make_stepper(model, 9, rows=4, kernel=kernel)
    for n, rows in ((1, 4), (3, 2), (5, 5), (9, 4)):
        view, own = big.rows(n, rows), make_stepper(model, n, rows=rows, kernel=kernel)
        view.load_state(state, slice(0, n))
        own.load_state(state)
        ids = np.arange(n, dtype=np.int64) % (len(vocab) - 1) + 1
        for _ in range(20):
            a, b = view.step(ids), own.step(ids)
            assert np.array_equal(a, b) and a.shape == (n, len(vocab))
            ids = a.argmax(axis=1)
    big.load_state(big.spec.pack(tuple(torch.full_like(p, 0.5) for p in big.spec.unpack(state))), slice(3, 6))
    big.load_state(state, slice(0, 3))
    big.copy_rows(slice(3, 6), slice(1, 4))  # overlapping: rows 3..5 move up to 1..3
    h = big.spec.unpack(big.state())[0]  # [L, B, H]
    assert (h[:, 1:4] == 0.5).all() and not (h[:, 0] == 0.5).all()


def test_the_batcher_leaves_a_core_to_the_event_loop_and_the_threads_change_no_bit(run):
    if extension() is None:
        pytest.fail("the C++ kernels did not build here (see the note on stderr)")
    model, vocab, _, _ = load_model(run)
    batcher = Batcher(model, vocab, capacity=8, exact=4)
    assert batcher.kernel == "cpp" and batcher.base.threads == max(1, len(os.sched_getaffinity(0)) - 1)
    assert batcher._view(5).threads == batcher.base.threads
    _, state = warm_up(model, encode_prefix(vocab, "zhong guo"))
    logits = []
    for threads in (1, 2, 3):
        stepper = make_stepper(model, 8, rows=4, kernel="cpp")
        stepper.threads = threads
        stepper.load_state(state)
        ids = np.arange(8, dtype=np.int64) % (len(vocab) - 1) + 1
        for _ in range(10):
            ids = stepper.step(ids).argmax(axis=1)
        logits.append(stepper.logits.copy())
    assert np.array_equal(logits[0], logits[1]) and np.array_equal(logits[0], logits[2])


def _job(model, vocab, batcher, prefix, k, options, rows=1, rules=StopRules()):
    logits, state = warm_up(model, encode_prefix(vocab, prefix))
    done = threading.Event()
    rule_state = RuleState(rules, vocab, rows, k, prefix[-1:]) if rules.used else None
    job = Job(sampler_logits(logits, batcher.dtype), state, k, options, rule_state, rows, on_end=lambda e: done.set())
    batcher.submit(job)
    return job, done


def test_a_cancelled_job_leaving_mid_batch_changes_nothing_of_the_jobs_whose_rows_move_up(run):
    """A job whose client left leaves before the step's characters are chosen: the rows after it move
    up with their state, noise and logits (the logits stayed behind once, and each moved row chose
    from another row's: text no request alone would get)."""
    model, vocab, _, _ = load_model(run)
    batcher = Batcher(model, vocab, capacity=8, exact=4)
    batcher.start()
    try:
        first, _ = _job(model, vocab, batcher, "zhong", 100_000, SamplingOptions(1.0, seed=1), 3)
        while not batcher.stats()["live_rows"]:
            time.sleep(0.001)
        cases = [("ni", SamplingOptions(), 2), ("hao ", SamplingOptions(0.9, seed=5), 2)]
        later = [_job(model, vocab, batcher, prefix, 400, options, rows) for prefix, options, rows in cases]
        while batcher.stats()["live_rows"] < 7:  # all three in the batch, the first job's rows first
            time.sleep(0.001)
        first.cancelled = True
        for (prefix, options, rows), (job, done) in zip(cases, later):
            assert done.wait(60)
            if options.greedy or batcher.kernel == "cpp":  # on the C++ steps sharing the batch changes nothing
                assert job.samples() == samples(model, vocab, prefix, 400, options, num_samples=rows), prefix
        assert batcher.stats()["jobs_cancelled"] == 1
    finally:
        batcher.close()


@pytest.fixture(params=["gru2_learned", "lstm", *(c.name for c in NEW_CELLS)])
def model_and_vocab(request, run):
    """Models of every cell kind (random weights scaled up, so that their text is not all one letter)."""
    _, vocab, _, _ = load_model(run)
    spec = next((c for c in NEW_CELLS if c.name == request.param), None)
    if spec is not None:
        cells.register(spec)
    torch.manual_seed(0)
    cell, layers, embedding = {"gru2_learned": ("gru", 2, "learned"), "lstm": ("lstm", 1, "one_hot")}.get(
        request.param, (request.param, 2, "one_hot"))
    model = CharRNN(len(vocab), cell, 16, layers, embedding=embedding, embed_dim=8).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    yield model, vocab
    if spec is not None:
        cells.unregister(spec.name)


def test_the_batcher_gives_each_job_alone_what_predict_gives(model_and_vocab):
    model, vocab = model_and_vocab
    batcher = Batcher(model, vocab, capacity=12, exact=4)
    batcher.start()
    try:
        cases = [("ni", 150, SamplingOptions(), 1, StopRules()),
                 ("zhong ", 150, SamplingOptions(0.8, seed=5), 4, StopRules()),
                 ("hao", 120, SamplingOptions(1.4, top_k=5, top_p=0.9, seed=2), 3, StopRules()),
                 ("", 300, SamplingOptions(1.0, seed=9), 3, StopRules(stop_at="ng", max_lines=2))]
        for prefix, k, options, rows, rules in cases:
            job, done = _job(model, vocab, batcher, prefix, k, options, rows, rules)
            assert done.wait(60)
            assert job.samples() == samples(model, vocab, prefix, k, options, rules, rows), (prefix, options)
        counts = batcher.stats()
        assert counts["largest_batch"] == 4 and counts["jobs_done"] == len(cases)
    finally:
        batcher.close()


def test_jobs_join_and_leave_a_running_batch(run):
    model, vocab, _, _ = load_model(run)
    batcher = Batcher(model, vocab, capacity=6, exact=3)
    batcher.start()
    try:
        specs = [(1 + i % 3, 40 + 37 * i, SamplingOptions() if i % 2 else
                  SamplingOptions(0.9, top_k=5 if i % 4 else 0, seed=i)) for i in range(12)]  # 24 rows, 6 at a time
        jobs = [_job(model, vocab, batcher, "zhong", k, options, rows) for rows, k, options in specs]
        for job, done in jobs:
            assert done.wait(60)
        for (rows, k, options), (job, _) in zip(specs, jobs):
            if options.greedy or batcher.kernel == "cpp":  # on the C++ steps sharing the batch changes nothing
                assert job.samples() == samples(model, vocab, "zhong", k, options, num_samples=rows)
        counts = batcher.stats()
        assert counts["largest_batch"] <= 6 and counts["live_rows"] == 0 and counts["waiting_jobs"] == 0
        assert counts["steps"] < sum(k for _, k, _ in specs)  # jobs shared steps
    finally:
        batcher.close()
