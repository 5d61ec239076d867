"""`rnn-train download`: the pinned texts reach data/ whole and checked, or nothing is kept.

No test touches the internet: a local HTTP server on 127.0.0.1 serves a copy of each corpus from
../shared (and a corrupted copy), and `--url` points the download at it.
"""
import functools
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rnn_train.config import load_config
from rnn_train.data.download import CORPORA, download, hint_for
from rnn_train.errors import UserError
from tests.conftest import SHARED as SHARED_ROOT, shared_corpus
from tests.helpers import ROOT

SHARED = {"timemachine": "timemachine/timemachine.txt", "tinyshakespeare": "tinyshakespeare/input.txt"}


@pytest.fixture(autouse=True)
def no_proxy_for_localhost(monkeypatch):
    """A proxy set in the environment must not intercept the local server (urllib honours no_proxy)."""
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Serve from 127.0.0.1 good and corrupted copies of the corpora in ../shared (where present) and two
    files that are no corpus (`wrong.txt` the Time Machine's size, `big.txt` three times it); yields the base URL."""
    root = tmp_path_factory.mktemp("www")
    for name, rel in SHARED.items():
        if (SHARED_ROOT / rel).exists():
            data = (SHARED_ROOT / rel).read_bytes()
            (root / f"{name}.txt").write_bytes(data)
            (root / f"{name}.corrupt.txt").write_bytes(data[:1000] + b"X" + data[1001:])  # same size, one byte off
    (root / "wrong.txt").write_bytes(b"not the book\n" * (CORPORA["timemachine"].size // 13))
    (root / "big.txt").write_bytes(b"x" * (3 * CORPORA["timemachine"].size))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: what an offline machine sees."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/timemachine.txt"


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "rnn_train", "download", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_the_registry_covers_every_file_a_recipe_names():
    named = {p for path in sorted((ROOT / "configs").glob("*.yaml")) for p in load_config(path).data.paths}
    assert named == {c.target for c in CORPORA.values()}  # data/timemachine.txt, data/tinyshakespeare/input.txt
    assert all(c.url.startswith("https://") for c in CORPORA.values())


@pytest.mark.parametrize("name", list(SHARED))
def test_the_registry_pins_the_shared_corpora(name):
    data = shared_corpus(SHARED[name]).read_bytes()
    assert (hashlib.sha256(data).hexdigest(), len(data)) == (CORPORA[name].sha256, CORPORA[name].size)


@pytest.mark.parametrize("name", list(SHARED))
def test_download_from_a_server_writes_the_checked_text_where_the_recipe_reads_it(name, server, tmp_path):
    original = shared_corpus(SHARED[name]).read_bytes()
    out = cli(name, "--url", f"{server}/{name}.txt", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    target = tmp_path / CORPORA[name].target
    assert target.read_bytes() == original
    assert out.stdout.splitlines() == [f"{CORPORA[name].target}: {CORPORA[name].size:,} bytes from "
                                       f"{server}/{name}.txt, SHA-256 ok"]
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temp file left
    again = cli(name, "--url", _closed_port_url(), cwd=tmp_path)  # a verified copy needs no network
    assert again.returncode == 0 and "already there (SHA-256 ok)" in again.stdout


@pytest.mark.parametrize("served", ["timemachine.corrupt.txt", "wrong.txt"])
def test_a_corrupted_download_is_one_checksum_error_and_nothing_is_kept(served, server, tmp_path):
    if served.endswith(".corrupt.txt"):
        shared_corpus(SHARED["timemachine"])  # skips without ../shared
    out = cli("timemachine", "--url", f"{server}/{served}", cwd=tmp_path)
    assert out.returncode == 2
    [line] = out.stderr.splitlines()
    assert line.startswith("error: ") and "SHA-256" in line and "nothing saved" in line
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*"))


def test_offline_is_one_line_saying_what_to_fetch_by_hand_and_where_to_put_it(tmp_path):
    out = cli("timemachine", "--url", _closed_port_url(), cwd=tmp_path)
    assert out.returncode == 2
    [line] = out.stderr.splitlines()
    assert "cannot reach" in line and CORPORA["timemachine"].url in line and "data/timemachine.txt" in line
    assert not (tmp_path / "data").exists()


def test_a_copy_fetched_by_hand_is_checked_through_a_file_url(tmp_path):
    copy = shared_corpus(SHARED["tinyshakespeare"])
    msg = download("tinyshakespeare", url=copy.as_uri(), root=tmp_path)
    assert msg.endswith("SHA-256 ok")
    assert (tmp_path / "data/tinyshakespeare/input.txt").read_bytes() == copy.read_bytes()


def test_http_error_and_bad_url_and_unknown_name_are_user_errors(server, tmp_path):
    with pytest.raises(UserError, match=r"answered HTTP 404"):
        download("timemachine", url=f"{server}/missing.txt", root=tmp_path)
    with pytest.raises(UserError, match=r"is not a URL"):
        download("timemachine", url="timemachine.txt", root=tmp_path)
    # no network was involved: neither is told "offline?"
    with pytest.raises(UserError, match=r"cannot read --url file:///.*/nowhere.txt \(No such file or directory\); "
                                        r"give the file:/// URL of the copy$"):
        download("timemachine", url=(tmp_path / "nowhere.txt").as_uri(), root=tmp_path)
    with pytest.raises(UserError, match=r"--url 'ftps://host/t.txt' has a scheme \(ftps:\) that cannot be fetched"):
        download("timemachine", url="ftps://host/t.txt", root=tmp_path)
    with pytest.raises(UserError, match=r"unknown corpus 'shakespeare' \(did you mean tinyshakespeare\?\)"):
        download("shakespeare", root=tmp_path)
    with pytest.raises(UserError, match=r"more than 357,958 bytes"):  # a wrong URL serving something big
        download("timemachine", url=f"{server}/big.txt", root=tmp_path)
    assert not (tmp_path / "data").exists()


def test_a_different_file_at_the_target_is_never_overwritten(server, tmp_path):
    target = tmp_path / "data" / "timemachine.txt"
    target.parent.mkdir()
    target.write_text("my own edition\n")
    with pytest.raises(UserError, match=r"exists but is not the expected timemachine text"):
        download("timemachine", url=f"{server}/timemachine.txt", root=tmp_path)
    assert target.read_text() == "my own edition\n"


def test_a_directory_at_the_target_is_one_line(server, tmp_path):
    target = tmp_path / "data" / "timemachine.txt"
    target.mkdir(parents=True)
    with pytest.raises(UserError, match=r"timemachine.txt is a directory, where the timemachine corpus file goes"):
        download("timemachine", url=f"{server}/timemachine.txt", root=tmp_path)
    assert target.is_dir() and list(target.iterdir()) == []


def test_hint_names_the_command_for_a_registered_target_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hint_for("data/timemachine.txt") == "run `python -m rnn_train download timemachine` to fetch it"
    assert hint_for(Path("./data/tinyshakespeare/input.txt")).endswith("download tinyshakespeare` to fetch it")
    assert hint_for(tmp_path / "data" / "timemachine.txt").endswith("download timemachine` to fetch it")
    assert hint_for("elsewhere/timemachine.txt") == "" and hint_for("data/mine.txt") == ""


def test_listing_shows_each_corpus_and_whether_it_is_present(tmp_path):
    out = cli(cwd=tmp_path)
    assert out.returncode == 0
    rows = {line.split()[0]: line.split()[1:3] for line in out.stdout.splitlines()}
    assert rows == {name: [c.target, "missing"] for name, c in CORPORA.items()}
    by_file = {path: sorted(p.stem for p in (ROOT / "configs").glob("*.yaml") if path in load_config(p).data.paths)
               for path in (c.target for c in CORPORA.values())}
    for line in out.stdout.splitlines():  # each row names the recipes that read its file
        assert line.endswith(f"({', '.join(by_file[line.split()[1]])})")
    assert "(shakespeare_best, shakespeare_gru)" in out.stdout  # two recipes read Tiny Shakespeare
    shared = shared_corpus("timemachine/timemachine.txt")
    target = tmp_path / CORPORA["timemachine"].target
    target.parent.mkdir(parents=True)
    target.write_bytes(shared.read_bytes())
    assert cli(cwd=tmp_path).stdout.splitlines()[[*CORPORA].index("timemachine")].split()[2] == "present"
    target.write_bytes(shared.read_bytes()[:500])  # a cut-off copy is no copy of the pinned text
    assert cli(cwd=tmp_path).stdout.splitlines()[[*CORPORA].index("timemachine")].split()[2] == "changed"


def test_a_recipe_whose_text_is_missing_names_the_download_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "rnn_train", "train", "--config", "timemachine_gru",
                          f"log.dir={tmp_path / 'runs'}"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == ("error: corpus file not found: data/timemachine.txt; "
                                  "run `python -m rnn_train download timemachine` to fetch it")
    assert not (tmp_path / "runs").exists()
