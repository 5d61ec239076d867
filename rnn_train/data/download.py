"""Public corpora on demand: `rnn-train download NAME` puts the text a recipe reads where it reads it.

    rnn-train download                    the registry: name, target, present, changed (not the pinned text) or missing
    rnn-train download timemachine        -> data/timemachine.txt (the d2l book's file)
    rnn-train download tinyshakespeare    -> data/tinyshakespeare/input.txt (char-rnn's file)
    rnn-train download timemachine --url file:///media/usb/timemachine.txt   (a mirror, or a copy by hand)

Why a pinned SHA-256 rather than "whatever the URL serves today": the recipes' figures (vocab size,
perplexity) are for exactly these bytes, and a proxy error page or a truncated transfer must not
become a corpus. The bytes are checked in memory before anything is written, then written
atomically, so a failed or corrupted download leaves nothing behind. Targets are relative to the
working directory, as the recipes' `data.paths` are.
"""
from __future__ import annotations

import difflib
import hashlib
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from rnn_train.cli import program
from rnn_train.errors import UserError
from rnn_train.files import atomic_write_bytes


@dataclass(frozen=True)
class Corpus:
    url: str
    """Canonical public URL of the text."""
    sha256: str
    """Of the exact bytes the recipes were written for."""
    size: int
    """Bytes; a response longer than twice this is stopped early (a wrong URL, not a corpus)."""
    target: str
    """Where the recipes read it, relative to the working directory."""
    about: str
    """One line for the listing."""


CORPORA: dict[str, Corpus] = {
    "timemachine": Corpus(
        url="https://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt",
        sha256="8424dbd9532ac81f7e5f0b6add90e6952baea29158309d7d1bf3884f4e12c516",
        size=178_979, target="data/timemachine.txt",
        about="H. G. Wells, The Time Machine: the d2l book's file"),
    "tinyshakespeare": Corpus(
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        size=1_115_394, target="data/tinyshakespeare/input.txt",
        about="Tiny Shakespeare: char-rnn's 1.1M characters"),
}

_CHUNK = 1 << 16
_TIMEOUT_S = 30


def hint_for(path: str | Path) -> str:
    """For a missing corpus file: the command that fetches it there, or "" if no corpus lives there."""
    wanted = Path(path).resolve()
    for name, corpus in CORPORA.items():
        if Path(corpus.target).resolve() == wanted:
            return f"run `{program()} download {name}` to fetch it"
    return ""


def missing_corpus_error(path: str | Path) -> UserError:
    """The one message for a corpus file that is not there, naming the download command when one fetches it."""
    hint = hint_for(path)
    return UserError(f"corpus file not found: {path}" + (f"; {hint}" if hint else ""))


def corpus_named(name: str) -> Corpus:
    if name in CORPORA:
        return CORPORA[name]
    close = difflib.get_close_matches(name, list(CORPORA), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]}?)" if close else f"; one of {', '.join(CORPORA)}"
    raise UserError(f"unknown corpus {name!r}{hint}")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, limit: int, progress: TextIO | None) -> bytes:
    """The response body, read in chunks (progress on a terminal); OSError subclasses when unreachable."""
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0)
        chunks: list[bytes] = []
        got = 0
        while block := response.read(_CHUNK):
            chunks.append(block)
            got += len(block)
            if got > limit:
                raise UserError(f"{url} sent more than {limit:,} bytes: not the expected file (check --url)")
            if progress is not None:
                of = f" of {total / 1024:,.0f}" if total else ""
                print(f"\r  {got / 1024:,.0f}{of} KiB", end="", file=progress, flush=True)
        if progress is not None:
            print(file=progress)
    return b"".join(chunks)


def download(name: str, url: str | None = None, root: Path = Path("."), progress: TextIO | None = None) -> str:
    """Fetch corpus `name` into root/target unless a verified copy is there; return one line saying what happened.

    A target that exists is checked, never overwritten: a different file there may be the user's.
    """
    corpus = corpus_named(name)
    target = root / corpus.target
    if target.is_dir():
        raise UserError(f"{target} is a directory, where the {name} corpus file goes; nothing downloaded")
    if target.exists():
        if _sha256_file(target) == corpus.sha256:
            return f"{corpus.target}: already there (SHA-256 ok)"
        raise UserError(f"{target} exists but is not the expected {name} text (SHA-256 differs); move it away "
                        f"and run the download again, or keep it and point data.paths at it")
    source = url or corpus.url
    try:
        body = _fetch(source, 2 * corpus.size, progress)
    except urllib.error.HTTPError as e:
        raise UserError(f"{source} answered HTTP {e.code} {e.reason}; fetch {corpus.url} by hand and save it "
                        f"as {target}") from None
    except (urllib.error.URLError, socket.timeout, ConnectionError) as e:
        reason = getattr(e, "reason", None) or e
        scheme = urllib.parse.urlsplit(source).scheme.lower()
        if scheme == "file":  # no network involved: the copy named is not there (or not readable)
            why = getattr(reason, "strerror", None) or reason
            raise UserError(f"cannot read --url {source} ({why}); give the file:/// URL of the copy") from None
        if str(reason).startswith("unknown url type"):
            raise UserError(f"--url {source!r} has a scheme ({scheme}:) that cannot be fetched; "
                            f"e.g. https://... or file:///path/to/copy") from None
        what = "it" if source == corpus.url else corpus.url
        raise UserError(f"cannot reach {source} ({reason}); offline? fetch {what} on a machine that is online "
                        f"and save it as {target}, or pass --url file:///path/to/copy") from None
    except ValueError as e:  # urllib's "unknown url type"
        raise UserError(f"--url {source!r} is not a URL ({e}); e.g. https://... or file:///path/to/copy") from None
    digest = hashlib.sha256(body).hexdigest()
    if digest != corpus.sha256:
        raise UserError(f"{source}: SHA-256 {digest[:16]}... is not the pinned {corpus.sha256[:16]}... "
                        f"({len(body):,} bytes, expected {corpus.size:,}); nothing saved")
    atomic_write_bytes(target, lambda f: f.write(body))
    return f"{corpus.target}: {len(body):,} bytes from {source}, SHA-256 ok"


def readers(target: str) -> list[str]:
    """The built-in recipes whose data.paths name `target`: read off the files, so that a recipe
    added to configs/ is listed without a word here."""
    import yaml

    from rnn_train.recipes import recipe_dir, recipe_names

    def paths(name: str) -> list:
        data = (yaml.safe_load((recipe_dir() / f"{name}.yaml").read_text(encoding="utf-8")) or {}).get("data") or {}
        return data.get("paths") or []

    return [name for name in recipe_names() if target in paths(name)]


def registry_table(root: Path = Path(".")) -> str:
    width = max(map(len, CORPORA))
    rows = []
    for name, c in CORPORA.items():
        target = root / c.target  # present: the pinned text, checked (a cut-off copy was listed as present)
        state = "missing" if not target.exists() else "present" if _sha256_file(target) == c.sha256 else "changed"
        rows.append(f"{name:<{width}}  {c.target:<31} {state:<8} {c.about} ({', '.join(readers(c.target))})")
    return "\n".join(rows)


def main(argv: list[str] | None = None, prog: str = "python -m rnn_train download") -> int:
    """`rnn-train download [NAME] [--url URL]`."""
    from rnn_train.cli import ArgumentParser

    ap = ArgumentParser(prog=prog, description="Fetch a public corpus that a recipe reads into data/, checked "
                                               "against a pinned SHA-256. Without NAME: list them.")
    ap.add_argument("name", nargs="?", help=f"one of {', '.join(CORPORA)}")
    ap.add_argument("--url", help="fetch from here instead of the canonical URL: a mirror, or file:///path "
                                  "to a copy fetched by hand (checked all the same)")
    args = ap.parse_args(argv)
    if args.url is not None and not args.url.strip():
        ap.error("--url is empty: give a URL, or leave --url out for the corpus's own")
    if args.name is None:
        if args.url:
            ap.error("--url needs a corpus NAME")
        print(registry_table())
        return 0
    tty = sys.stderr if sys.stderr.isatty() else None
    print(download(args.name, url=args.url, progress=tty))
    return 0
