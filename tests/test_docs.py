"""Docs that run: every code block of README.md and docs/*.md is run here, or marked as output.

The convention (docs/architecture.md, "Where to add: a documentation example", for writers):

- Code is in fenced blocks, each with a language; an indented code block or a fence without a
  language fails this test, naming its file and line, until it is given one:
    sh       commands a reader runs, one per line (`\\` continues a line): each must exit 0
    console  `$ command` lines, each followed by what it printed: each command is run; a shown
             line `error: ...` must be exactly the command's one stderr line and its exit status 2,
             else the command must exit 0. Other output is not compared (figures vary by machine)
             unless the block is marked `exact`
    python   a script, run with `python` (the package importable)
    text     output, a diagram, a layout: not run
- HTML comments on the lines right above a block (invisible on GitHub) say how the test runs it:
    <!-- test: small OLD => NEW -->   a long experiment: the test runs its small form, with every
                                      OLD replaced by NEW (OLD must occur in the block)
    <!-- test: with OLD => NEW -->    the same substitution, for what the test has in place of the
                                      reader's: a corpus in ../shared/corpora, an installed package
    <!-- test: exact -->              (console) the output shown is compared line for line
    <!-- test: file NAME -->          not run: saved as NAME for a later block to run
    <!-- test: same as PAGE -->       not run here: each of its commands is a command of a block of
                                      PAGE, which runs it (a README example of a docs/ page's run)
    <!-- test: skip REASON -->        not run, for the reason given (GPUs, several machines, a server
                                      that never returns, this test suite itself)
- Each page runs top to bottom in a directory of its own that looks like a checkout: train.py,
  predict.py, rnn_train/, configs/, benchmarks/ link to this checkout, `../shared` is the team's
  shared material, `rnn-train` is on PATH as `pip install .` puts it. Later blocks of a page use
  what earlier ones wrote (one tiny training run serves the predict, score and gradflow blocks
  after it). The prepared-corpus cache (data/cache) is shared by all pages; each page has a kernel
  cache of its own, seeded from this machine's (the C++ build linked, the stored choices copied).

Pages run two at a time, each process on one thread (the suite's machines have two cores); a block
has a timeout. Besides running the blocks, the tests below check that every link, anchor and
repository path a page names exists, and that the architecture page's data flow names functions
and classes that rnn_train defines.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import ROOT

SHARED = ROOT.parent / "shared"
PAGES = ["README.md", "data/README.md"] + sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
RUN = {"sh", "console", "python"}
LANGUAGES = RUN | {"text"}
LINKED = ("train.py", "predict.py", "rnn_train", "configs", "benchmarks", "requirements.txt", "pyproject.toml")
TIMEOUT_S = 600

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^`\s]*)\s*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*test:\s*(\w+)\s*(.*?)\s*-->\s*$")
_LIST_ITEM = re.compile(r"^(\s*)([-*+]|\d+[.)])\s+")


@dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    directives: list[tuple[str, str]] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    def has(self, kind: str) -> bool:
        return any(k == kind for k, _ in self.directives)

    def arg(self, kind: str) -> str:
        return next(a for k, a in self.directives if k == kind)

    def runnable_text(self) -> str:
        """The block as the test runs it: every `small` / `with` substitution applied."""
        text = self.text
        for kind, arg in self.directives:
            if kind in ("small", "with"):
                old, new = _substitution(arg)
                if old not in text:
                    raise DocError(self.where, f"`{kind}`: {old!r} does not occur in the block")
                text = text.replace(old, new)
        return text


class DocError(Exception):
    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")


def _substitution(arg: str) -> tuple[str, str]:
    old, sep, new = arg.partition("=>")
    if not sep or not old.strip():
        raise ValueError(f"expected `OLD => NEW`, got {arg!r}")
    return old.strip(), new.strip()


def parse(page: str, text: str) -> tuple[list[Block], list[str]]:
    """The page's fenced blocks with the directives above them, and every problem found."""
    blocks: list[Block] = []
    problems: list[str] = []
    lines = text.splitlines()
    pending: list[tuple[int, str, str]] = []  # directives waiting for their block: (line, kind, arg)
    list_col: int | None = None  # content column of the list item we are in, if any
    prev_blank = True
    i = 0
    while i < len(lines):
        line, n = lines[i], i + 1
        fence = _FENCE.match(line)
        directive = _DIRECTIVE.match(line)
        if directive:
            pending.append((n, directive.group(1), directive.group(2)))
            i += 1
            continue
        if fence:
            indent, marks, lang = fence.groups()
            end = i + 1
            while end < len(lines) and not (lines[end].strip().startswith(marks[0] * len(marks))
                                            and set(lines[end].strip()) == {marks[0]}):
                end += 1
            if end == len(lines):
                problems.append(f"{page}:{n}: a fenced block that is never closed")
            body = "\n".join(ln[len(indent):] if ln.startswith(indent) else ln.lstrip() for ln in lines[i + 1:end])
            block = Block(page, n, lang, body + "\n", [(k, a) for _, k, a in pending])
            problems.extend(_check_block(block))
            blocks.append(block)
            pending = []
            i, prev_blank = end + 1, False
            continue
        if pending:
            problems.append(f"{page}:{pending[0][0]}: `<!-- test: ... -->` is not right above a fenced block")
            pending = []
        stripped = line.strip()
        expanded = line.expandtabs(4)
        indent = len(expanded) - len(expanded.lstrip(" "))
        if stripped:
            item = _LIST_ITEM.match(line)
            if item:
                list_col = len(item.group(0))
            elif prev_blank and indent == 0:
                list_col = None
            if prev_blank and indent >= (list_col or 0) + 4 and not item:
                problems.append(f"{page}:{n}: an indented code block: make it a fenced block with a language "
                                f"({', '.join(sorted(LANGUAGES))}) and, if the test cannot run it as it is, "
                                f"a `<!-- test: ... -->` line above it (tests/test_docs.py)")
                while i + 1 < len(lines) and (not lines[i + 1].strip() or lines[i + 1].startswith(" " * 4)):
                    i += 1
        prev_blank = not stripped
        i += 1
    if pending:
        problems.append(f"{page}:{pending[0][0]}: `<!-- test: ... -->` is not right above a fenced block")
    return blocks, problems


def _check_block(block: Block) -> list[str]:
    where = block.where
    if not block.lang:
        return [f"{where}: a fenced block without a language: say how to run it "
                f"({', '.join(sorted(LANGUAGES))}; tests/test_docs.py)"]
    if block.lang not in LANGUAGES:
        return [f"{where}: unknown block language {block.lang!r}: one of {', '.join(sorted(LANGUAGES))} "
                f"(tests/test_docs.py says how each is run)"]
    problems = []
    kinds = {"small", "with", "exact", "file", "skip", "same"}
    for kind, arg in block.directives:
        if kind not in kinds:
            problems.append(f"{where}: unknown directive `test: {kind}`: one of {', '.join(sorted(kinds))}")
        elif block.lang == "text":
            problems.append(f"{where}: a `text` block is not run, so `test: {kind}` means nothing there")
        elif kind in ("small", "with"):
            try:
                _substitution(arg)
            except ValueError as e:
                problems.append(f"{where}: `test: {kind}`: {e}")
        elif kind in ("skip", "file") and not arg:
            problems.append(f"{where}: `test: {kind}` needs " + ("a reason" if kind == "skip" else "a file name"))
        elif kind == "same":
            problems.extend(_check_same(block, arg))
        elif kind == "exact" and block.lang != "console":
            problems.append(f"{where}: `test: exact` is for console blocks")
    return problems


def _normal(command: str) -> str:
    """A command without its trailing comment, whitespace collapsed."""
    return " ".join(re.sub(r"\s+#[^'\"]*$", "", command).split())


def commands_of(block: Block) -> list[str]:
    """The commands a run block gives to the shell, as written (before substitutions)."""
    if block.lang == "sh":
        return [_normal(c) for _, c in _commands(block.text)]
    if block.lang == "console":
        return [_normal(c) for _, c, _ in _console(block.text)]
    return []


def _check_same(block: Block, arg: str) -> list[str]:
    """`same as PAGE`: every command of the block is run by a block of PAGE."""
    page = arg.removeprefix("as").strip()
    if block.lang not in ("sh", "console") or not (ROOT / page).is_file():
        return [f"{block.where}: `test: same as PAGE` needs an sh or console block and an existing page, got {page!r}"]
    there = {c for b in parse(page, (ROOT / page).read_text(encoding="utf-8"))[0]
             if b.lang in RUN and not b.has("skip") and not b.has("same") for c in commands_of(b)}
    return [f"{block.where}: `test: same as {page}`: {page} runs no block with the command {c!r}"
            for c in commands_of(block) if c not in there]


# --- running ------------------------------------------------------------------------------------


@dataclass
class Session:
    """A page's working directory, its environment, and what its blocks printed."""
    page: str
    work: Path
    env: dict[str, str]
    ran: list[str] = field(default_factory=list)


def _commands(text: str) -> list[tuple[int, str]]:
    """(line offset in the block, command) for each logical line of an `sh` block."""
    out, current, start = [], "", 0
    for k, line in enumerate(text.splitlines()):
        if not current:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            start = k
        current += line
        if line.endswith("\\"):
            current = current[:-1] + " "
            continue
        out.append((start, current))
        current = ""
    if current:
        out.append((start, current))
    return out


def _console(text: str) -> list[tuple[int, str, list[str]]]:
    """(line offset, command, shown output lines) for each `$ ` command of a console block."""
    out: list[tuple[int, str, list[str]]] = []
    lines = text.splitlines()
    k = 0
    while k < len(lines):
        line = lines[k]
        if line.startswith("$ "):
            start, command = k, line[2:]
            while command.endswith("\\") and k + 1 < len(lines):
                k += 1
                command = command[:-1] + " " + lines[k].strip()
            out.append((start, command, []))
        elif out:
            out[-1][2].append(line)
        else:
            raise ValueError(f"a console block starts with {line!r}, not with `$ command`")
        k += 1
    return out


_FAILED = "@@docs-test: failed at command"


def _run(session: Session, where: str, command: str, label: str = "") -> subprocess.CompletedProcess:
    start = time.perf_counter()
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=session.work, env=session.env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    session.ran.append(f"{time.perf_counter() - start:6.1f} s  {where}  {label or command}")
    return proc


def _tail(text: str, n: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


def _failure(block: Block, offset: int, command: str, proc: subprocess.CompletedProcess, why: str) -> str:
    return (f"{block.page}:{block.line + 1 + offset}: {why}\n  $ {command}\n"
            f"--- stdout (end)\n{_tail(proc.stdout)}\n--- stderr (end)\n{_tail(proc.stderr)}")


def run_block(session: Session, block: Block) -> str | None:
    """Run one block; None when it did what the page says, else the failure, naming its file and line."""
    if block.lang == "text" or block.has("skip") or block.has("same"):
        return None
    try:
        text = block.runnable_text()
        if block.has("file"):
            (session.work / block.arg("file")).write_text(text)
            return None
        if block.lang == "python":
            script = session.work.parent / f"block_{block.line}.py"
            script.write_text(text)
            proc = _run(session, block.where, f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}")
            if proc.returncode != 0:
                return _failure(block, 0, "python (the block)", proc, f"python block exited {proc.returncode}")
            return None
        if block.lang == "sh":
            # one shell for the block (a variable set on one line is used on the next), the status
            # checked after each command: `a && b` failing in `a` is caught, as `bash -e` would not
            commands = _commands(text)
            script = "".join(f"{command}\n__s=$?; [ $__s -eq 0 ] || {{ echo '{_FAILED} {k}' \"$__s\" >&2; exit $__s; }}\n"
                             for k, (_, command) in enumerate(commands))
            proc = _run(session, block.where, script, label="sh block: " + "; ".join(c for _, c in commands))
            failed = re.search(rf"^{_FAILED} (\d+) (\d+)$", proc.stderr, re.M)
            if failed or proc.returncode != 0:
                offset, command = commands[int(failed.group(1))] if failed else (0, "(the block)")
                return _failure(block, offset, command, proc, f"command exited {proc.returncode}")
            return None
        for offset, command, shown in _console(text):
            proc = _run(session, f"{block.page}:{block.line + 1 + offset}", command)
            errors = [line for line in shown if line.startswith("error: ")]
            if errors:
                if proc.returncode != 2 or proc.stderr.strip().splitlines() != errors:
                    return _failure(block, offset, command, proc,
                                    f"expected exit status 2 and exactly the error shown:\n  " + "\n  ".join(errors))
            elif proc.returncode != 0:
                return _failure(block, offset, command, proc, f"command exited {proc.returncode}")
            if block.has("exact") and proc.stdout.rstrip("\n").splitlines() != shown:
                return _failure(block, offset, command, proc, "the output differs from the lines shown")
        return None
    except DocError as e:
        return str(e)
    except ValueError as e:
        return f"{block.where}: {e}"
    except subprocess.TimeoutExpired as e:
        return f"{block.where}: timed out after {TIMEOUT_S} s: {e.cmd}"


def prepare_base(base: Path) -> None:
    """What every page shares: `rnn-train` as pip installs it, the prepared-corpus cache, and the C++
    kernels built once in this machine's kernel cache (as the first training run would build them)."""
    bindir = base / "bin"
    bindir.mkdir()
    entry = bindir / "rnn-train"
    entry.write_text(f"#!{sys.executable}\nimport sys\nfrom rnn_train.commands import main\nsys.exit(main())\n")
    entry.chmod(0o755)
    (base / "data-cache").mkdir()
    subprocess.run([sys.executable, "-c", "from rnn_train.kernels.build import extension; extension()"],
                   cwd=base, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, timeout=TIMEOUT_S)


def page_environment(base: Path, home: Path) -> dict[str, str]:
    """PATH with `rnn-train` and this interpreter's `python`/`torchrun` first; the package importable;
    a kernel cache of the page's own, seeded from this machine's (built kernels linked, the stored
    decisions copied), so that a page may delete its decisions without touching anyone else's."""
    from rnn_train.kernels.build import cache_root

    cache = home / "kernel-cache"
    cache.mkdir()
    real = cache_root()
    if real.is_dir():
        for item in real.iterdir():
            if item.name.startswith("kernels-") and item.is_dir():
                (cache / item.name).symlink_to(item)
            elif item.name == "autotune.json":
                shutil.copy(item, cache / item.name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME",)}
    env.update(PATH=os.pathsep.join([str(base / "bin"), str(Path(sys.executable).parent), env.get("PATH", "")]),
               PYTHONPATH=str(ROOT), RNN_TRAIN_CACHE=str(cache), COLUMNS="120",
               # two pages run at once on the suite's two cores: one thread each, not two that wait on each other
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def run_page(page: str, base: Path) -> tuple[list[str], list[str]]:
    """(failures, commands run) for one page, in a checkout-like directory of its own under base."""
    blocks, problems = parse(page, (ROOT / page).read_text(encoding="utf-8"))
    if problems:
        return problems, []
    home = base / page.replace("/", "_")
    work = home / "work"
    work.mkdir(parents=True)
    env = page_environment(base, home)
    (home / "shared").symlink_to(SHARED)
    for name in LINKED:
        (work / name).symlink_to(ROOT / name)
    (work / "data").mkdir()
    (work / "data" / "cache").symlink_to(base / "data-cache")
    session = Session(page, work, env)
    for block in blocks:
        failure = run_block(session, block)
        if failure:
            return [failure], session.ran
    return [], session.ran


def _work(page: str) -> int:
    """How many commands a page runs: the order in which pages are started."""
    blocks, _ = parse(page, (ROOT / page).read_text(encoding="utf-8"))
    return sum(len(commands_of(b)) or 1 for b in blocks if b.lang in RUN
               and not (b.has("skip") or b.has("same") or b.has("file")))


# --- the tests ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pages_run(request, tmp_path_factory):
    """The pages this session selected, started two at a time; page -> Future((failures, commands))."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (../shared is only beside the project's own checkout)")
    base = tmp_path_factory.mktemp("docs")
    prepare_base(base)
    selected = [item.callspec.params["page"] for item in request.session.items
                if getattr(item, "originalname", "") == test_every_block_of_the_page_runs_or_is_marked.__name__]
    pool = ThreadPoolExecutor(max_workers=2)
    # the longest pages first (by their number of commands), so that the two workers end together
    futures: dict[str, Future] = {page: pool.submit(run_page, page, base)
                                  for page in sorted(selected, key=_work, reverse=True)}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("page", PAGES)
def test_every_block_of_the_page_runs_or_is_marked(page, pages_run):
    failures, ran = pages_run[page].result()
    assert not failures, "\n\n".join(failures)


def test_the_pages_are_every_markdown_file_of_readme_and_docs():
    assert set(PAGES) == {"README.md", "data/README.md"} | {p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/*.md")}


@pytest.mark.parametrize("snippet, problem", [
    ("text\n\n    python train.py\n\nmore\n", "an indented code block"),
    ("```\nls\n```\n", "a fenced block without a language"),
    ("```bash\nls\n```\n", "unknown block language 'bash'"),
    ("<!-- test: skip -->\n```sh\nls\n```\n", "`test: skip` needs a reason"),
    ("<!-- test: small a -->\n```sh\nls\n```\n", "expected `OLD => NEW`"),
    ("<!-- test: sometimes -->\n```sh\nls\n```\n", "unknown directive `test: sometimes`"),
    ("<!-- test: skip why -->\n\n```sh\nls\n```\n", "is not right above a fenced block"),
    ("<!-- test: skip why -->\nprose\n", "is not right above a fenced block"),
    ("<!-- test: exact -->\n```text\nout\n```\n", "a `text` block is not run"),
    ("<!-- test: same as docs/bptt.md -->\n```sh\npython -m rnn_train bptt --cell xyz\n```\n",
     "docs/bptt.md runs no block with the command 'python -m rnn_train bptt --cell xyz'"),
])
def test_a_block_the_test_cannot_run_is_named_with_its_line(snippet, problem):
    _, problems = parse("page.md", "# Title\n\n" + snippet)
    assert len(problems) == 1 and problems[0].startswith("page.md:") and problem in problems[0], problems


def test_list_items_and_their_fenced_blocks_are_not_code():
    text = ("- an item\n  that goes on\n\n  and on\n\n- item\n\n  ```sh\n  ls\n  ```\n\n"
            "1. first\n\n   ```text\n   out\n   ```\n")
    blocks, problems = parse("page.md", text)
    assert problems == [] and [(b.lang, b.text, b.line) for b in blocks] == [("sh", "ls\n", 8), ("text", "out\n", 14)]


def test_a_substitution_that_no_longer_matches_fails_naming_the_block(tmp_path):
    [block], _ = parse("page.md", "<!-- test: small --steps 100 => --steps 5 -->\n```sh\nrnn-train gradflow --steps 10\n```\n")
    session = Session("page.md", tmp_path, dict(os.environ))
    failure = run_block(session, block)
    assert failure is not None and failure.startswith("page.md:2:") and "'--steps 100' does not occur" in failure


def test_a_failing_command_is_named_by_its_own_line(tmp_path):
    text = "```sh\ntrue\n# a comment\nfalse && true\n```\n\n```console\n$ sh -c 'echo \"error: no\" >&2; exit 2'\nerror: yes\n```\n"
    first, second = parse("page.md", text)[0]
    session = Session("page.md", tmp_path, dict(os.environ))
    failure = run_block(session, first)
    assert failure is not None and failure.startswith("page.md:4: command exited 1") and "false && true" in failure
    failure = run_block(session, second)
    assert failure is not None and failure.startswith("page.md:8: expected exit status 2 and exactly the error shown")


# --- what the pages name exists -----------------------------------------------------------------

_LINK = re.compile(r"\]\(([^)\s]+)\)")
_PATH = re.compile(r"(?<![\w./-])((?:rnn_train|tests|benchmarks|configs|docs)/[\w./-]*\w/?)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES)
def test_every_link_and_path_the_page_names_exists(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    where = (ROOT / page).parent
    missing = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (where / path).resolve() if path else ROOT / page
        if not file.exists():
            missing.append(f"link {target}: no file {path}")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            missing.append(f"link {target}: {path or page} has no heading #{anchor}")
    for path in _PATH.findall(text):
        if not (ROOT / path.split("::")[0]).exists():
            missing.append(f"path {path} does not exist")
    assert not missing, f"{page}: " + "; ".join(missing)


def test_every_name_in_the_architecture_data_flow_exists():
    """`module.name`, `Class.name`, CamelCase classes and `function(` calls of the data-flow diagram
    are defined in rnn_train (a renamed function makes the page wrong: it once cited RunState.fresh)."""
    sources = {p: p.read_text(encoding="utf-8") for p in (ROOT / "rnn_train").rglob("*.py")}
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    flow = page.split("## Data flow")[1].split("```text\n")[1].split("```")[0]

    def defines(name: str, files) -> bool:
        pattern = re.compile(rf"^\s*(?:def|class)\s+{name}\b|^\s*{name}\s*[:=(]", re.M)
        return any(pattern.search(sources[f]) for f in files)

    missing = []
    for owner, name in re.findall(r"\b([A-Za-z_]\w*)\.([A-Za-z_]\w*)\b", flow):
        files = ([p for p in sources if p.stem == owner] + [p for p in sources if p.parent.name == owner]
                 + [p for p in sources if re.search(rf"^class {owner}\b", sources[p], re.M)])
        if files and name not in ("json", "bin", "pt", "yaml", "py") and not defines(name, files):
            missing.append(f"{owner}.{name}")
    for name in re.findall(r"\b([A-Z][a-z]+[A-Z]\w*)\b", flow) + re.findall(r"\b([a-z_]+[a-z])\(", flow):
        if name not in ("NumPy", "PyTorch") and not defines(name, sources):
            missing.append(name)
    assert not missing, f"docs/architecture.md names what rnn_train does not define: {sorted(set(missing))}"
