"""`data.paths` -> the list of corpus files, and how each file is identified for the cache.

What an entry of `data.paths` may be
    * a file: used as it is;
    * a directory: every regular file under it, recursively, in sorted order of the path below
      the directory; names starting with "." (``.git``, ``.DS_Store``) and caches (CACHE_TAG) are skipped, and symbolic
      links to files are followed but links to directories are not (no loops);
    * a glob (an entry containing ``*``, ``?`` or ``[``; ``**`` spans directories): its matches in
      sorted order, a matched directory expanded as above; an entry that names an existing file or
      directory as it stands is that path, whatever characters it holds (``x[1].txt``).
    The entries keep their order and nothing is de-duplicated across them: a file listed twice is
    read twice, exactly as two copies would be. Within one glob each file counts once, by its real
    path (``d/**`` matches ``d``, its subdirectories and the files in them, all of which name the
    same files; ``**`` follows links to directories, so a link back up reaches them again, to the
    depth where the path stops resolving, and those matches are dropped).
    An empty entry is an error (it would otherwise mean the current directory). An empty directory
    or a glob that matches no file is a one-line error naming it, as is a path that does not exist.
    A directory or a glob skips the files of 0 bytes it finds (a folder of texts often holds a
    placeholder; one empty file would otherwise stop the run); a 0-byte file named as an entry of its
    own stays an error when it is read, as does a file of whitespace only wherever it came from.

Identity for the cache
    A file is known by its content (SHA-256). Hashing a large corpus takes a moment, so the
    prepare step first looks the file up by its path and stat fields: see rnn_train.data.prepare.
"""
from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from rnn_train.data.download import missing_corpus_error
from rnn_train.errors import UserError

_GLOB_CHARS = frozenset("*?[")
_HASH_BYTES = 1 << 22


@dataclass(frozen=True)
class SourceFile:
    """A corpus file as found: its path (as data.paths spelt it, for messages) and its stat fields
    that change when its content may have (ctime also when mtime is set back, e.g. `cp -p`)."""

    path: Path
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> "SourceFile":
        st = path.stat()
        return cls(path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def resolve_paths(entries: list[str]) -> list[SourceFile]:
    """Expand `data.paths` (files, directories, globs) into files, in order; see the module docstring."""
    files: list[SourceFile] = []
    for i, entry in enumerate(entries):
        if not str(entry).strip():  # Path("") is ".": the current directory, read recursively
            raise UserError(f"data.paths: entry {i + 1} of {len(entries)} is empty")
        paths, searched = _expand(str(entry))
        found = [_stat(path, entry) for path in paths]
        if searched:
            found = [f for f in found if f.size]  # 0-byte files a directory or glob brings: skipped
            if not found:
                raise UserError(f"data.paths: {entry} holds only empty (0-byte) files")
        files.extend(found)
    return files


def found_under(entries: list[str], workdir: str | None) -> list[str]:
    """`data.paths` of a run, read from another directory: each relative entry that names nothing
    here but names something under `workdir` (where the run read its corpus: a checkpoint's
    "workdir") becomes that path; the others stay as they stand. Relative entries are resolved
    against the current directory, so without this explore, gradflow or --resume started
    elsewhere could not find a run's corpus (and a recipe's would suggest downloading it there)."""
    if not workdir or not isinstance(workdir, str):  # none recorded (an older checkpoint), or not a path
        return list(entries)
    out = []
    for entry in entries:
        here = os.path.expanduser(str(entry))
        # the workdir's own name is no pattern (a directory named "run[1]"): escaped where the entry is a glob
        there = os.path.normpath(os.path.join(glob.escape(workdir) if is_glob(here) else workdir, here))
        moved = here.strip() and not os.path.isabs(here) and not _names_something(here) and _names_something(there)
        out.append(there if moved else entry)
    return out


def _names_something(entry: str) -> bool:
    """Whether `entry` names an existing path, or is a glob with a match."""
    return os.path.exists(entry) or (is_glob(entry) and next(glob.iglob(entry, recursive=True), None) is not None)


def _glob_base(entry: str) -> Path:
    """The directory a glob searches from: its leading components without glob characters."""
    parts = Path(os.path.expanduser(entry)).parts
    fixed = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts))
    return Path(*parts[:fixed]) if fixed else Path(".")


def _in_cache(path: Path, base: Path, seen: dict[Path, bool]) -> bool:
    """Whether a glob's match lies in a cache below the glob's base (a cache above it, where the
    user keeps the corpus on purpose, does not count); `seen`: the directories looked at so far
    (a glob's matches share most of their parents)."""
    try:
        inner = [base / d for d in path.relative_to(base).parents if d != Path(".")]
    except ValueError:
        return False
    for d in inner + ([path] if path.is_dir() else []):
        if d not in seen:
            seen[d] = is_cache(d)
        if seen[d]:
            return True
    return False


def _not_a_cache(directory: Path, entry: str) -> None:
    """An entry that is itself a cache (its files are ids and conversions, not text) is refused."""
    if is_cache(directory):
        raise UserError(f"data.paths: {entry} {'starts in' if is_glob(entry) else 'is'} a cache directory "
                        f"({directory / CACHE_TAG} marks it: --cache-dir writes one): keep the corpus out of the "
                        f"cache (another --cache-dir), or delete that file if the directory is no cache")


def is_glob(entry: str) -> bool:
    """An entry with glob characters, unless it names an existing file or directory as it stands
    (`x[1].txt`: a file name, not the pattern x1.txt)."""
    return bool(_GLOB_CHARS & set(entry)) and not os.path.exists(os.path.expanduser(entry))


def _expand(entry: str) -> tuple[list[Path], bool]:
    """The files of one entry, and whether they were searched for (a directory or a glob) rather than named."""
    if is_glob(entry):
        # a match through a loop of directory links (d/self/self/...) does not exist: ELOOP
        matches = [m for m in sorted(glob.glob(os.path.expanduser(entry), recursive=True)) if os.path.exists(m)]
        base, seen = _glob_base(entry), {}
        _not_a_cache(base, entry)
        _reachable_readable(base, Path(os.path.expanduser(entry)).parts[len(base.parts):])
        expanded = [f for m in matches if not _in_cache(Path(m), base, seen)
                    for f in (_walk(Path(m)) if os.path.isdir(m) else [Path(m)])]
        # "d/**" matches d, d/sub and the files in both, and a link to a directory reaches its files
        # again: each file once, by its real path, where it first came
        first: dict[str, Path] = {}
        for f in expanded:
            first.setdefault(os.path.realpath(f), f)
        files = list(first.values())
        if not files:
            raise UserError(f"data.paths: {entry} matches no file (hidden files and caches are skipped)")
        return files, True
    path = Path(os.path.expanduser(entry))
    try:
        is_dir = path.is_dir()  # raises where a directory on the way cannot be searched
    except PermissionError:
        raise UserError(f"data.paths: cannot reach {entry}: permission denied on a directory on its path") from None
    if is_dir:
        _not_a_cache(path, entry)
        files = _walk(path)
        if not files:
            raise UserError(f"data.paths: directory {entry} holds no corpus file (hidden files and caches are skipped)")
        return files, True
    if not path.exists():
        raise missing_corpus_error(entry)
    return [path], False


CACHE_TAG = "CACHEDIR.TAG"
CACHE_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
"""The Cache Directory Tagging convention (bford.info/cachedir): a directory holding a file of that
name beginning with this line is a cache. The prepared-corpus cache writes one (tag_cache), and a
walk of data.paths leaves such directories out: `data/` with the default cache `data/cache` in it
read the cache's own files as corpus text, more of them each run."""


def is_cache(directory: str | Path) -> bool:
    try:
        with open(os.path.join(directory, CACHE_TAG), "rb") as f:
            return f.read(len(CACHE_SIGNATURE)) == CACHE_SIGNATURE
    except OSError:
        return False


def tag_cache(directory: Path) -> None:
    """Mark `directory` as a cache (see CACHE_TAG), where it is not yet; a failure only loses the mark.
    Always, also where data.paths names it (`--cache-dir . data.paths=*.txt`): untagged, its
    conversions and token files were read as text, a larger corpus each run; tagged, such an
    entry is one error line that says to keep the two apart."""
    if is_cache(directory):
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CACHE_TAG).write_bytes(CACHE_SIGNATURE + b"\n# rnn-train's prepared corpora: data.paths "
                                                                b"directories and globs leave this one out\n")
    except OSError:
        pass


def _reachable_readable(directory: Path, parts: tuple[str, ...]) -> None:
    """A UserError for a directory the glob `parts` (the components below `directory`) would search
    but cannot read: glob passes over it without a word (`c/**/*.txt` left out c/locked's files,
    training on part of the corpus). Walks the directories glob walks: those matching each
    component (any depth for `**`, not through links), hidden ones only where the component asks."""
    if not parts or (len(parts) == 1 and parts[0] != "**"):
        _listed(directory)  # the last component is matched among this directory's entries
        return
    head, rest = parts[0], parts[1:]
    if not glob.has_magic(head):
        try:
            os.stat(directory / head)
        except PermissionError as e:
            raise _cannot_read(directory, e) from None
        except OSError:  # not there (or unreachable otherwise): glob finds nothing there either
            return
        _reachable_readable(directory / head, rest)
        return
    deep = head == "**"
    for entry in _listed(directory):
        if (entry.is_dir(follow_symlinks=not deep) and (deep or fnmatch.fnmatch(entry.name, head))
                and (not entry.name.startswith(".") or head.startswith(".")) and not is_cache(entry.path)):
            _reachable_readable(Path(entry.path), parts if deep else rest)
    if deep:
        _reachable_readable(directory, rest)  # ** also matches no directory at all


def _listed(directory: Path) -> list[os.DirEntry]:
    """The entries of `directory`; [] where it is not there or not a directory; a UserError where it
    cannot be read (permissions)."""
    try:
        with os.scandir(directory) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise _cannot_read(directory, e) from None


def _cannot_read(directory: str | Path, error: OSError) -> UserError:
    return UserError(f"data.paths: cannot read directory {directory}: {(error.strerror or str(error)).lower()}")


def _unreadable(error: OSError) -> None:
    """os.walk's onerror: a directory it cannot list stops the walk."""
    raise _cannot_read(error.filename, error)


def _walk(root: Path) -> list[Path]:
    """Regular files under `root`, recursively, sorted by their path below it; hidden names and
    caches (is_cache) skipped. A directory that cannot be listed is an error: leaving it out would
    train on part of the corpus without a word."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_unreadable):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and not is_cache(os.path.join(dirpath, d))]
        for name in filenames:
            path = Path(dirpath, name)
            if not name.startswith(".") and path.is_file():
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def _stat(path: Path, entry: str) -> SourceFile:
    try:
        if not path.is_file():
            raise UserError(f"data.paths: {path} is not a regular file")
        return SourceFile.of(path)
    except PermissionError:
        raise UserError(f"cannot read corpus file {path}: permission denied") from None
    except OSError as exc:
        raise UserError(f"cannot read corpus file {path} (from data.paths entry {entry}): "
                        f"{exc.strerror or exc}") from None


def content_hash(path: Path, on_bytes: Optional[Callable[[int], object]] = None) -> str:
    """SHA-256 of a file's bytes, read in blocks (never the whole file at once)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(_HASH_BYTES):
                digest.update(block)
                if on_bytes is not None:
                    on_bytes(len(block))
    except OSError as exc:
        raise UserError(f"cannot read corpus file {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def unchanged(source: SourceFile) -> bool:
    """True when the file still has the size and modification time it had when found."""
    try:
        return SourceFile.of(source.path) == source
    except OSError:
        return False
