"""The docs stay true to the code: every `kserve-cache` command they show parses with the real
parser (code-block examples fully, prose mentions flag by flag), every metric they name is
exposed, every relative link and anchor resolves, each page has one title and long pages a
table of contents, and the offline `preview` examples print what the page shows."""

from __future__ import annotations

import argparse
import copy
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.docs.known import all_metrics
from webhook import doctor

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
LONG_PAGE = 150  # lines; longer pages need a `## Contents`
FENCE = re.compile(r"^\s*```")
LINK = re.compile(r"(?<!!)\[(?:[^\]]*)\]\(([^)\s]+)\)")
INLINE = re.compile(r"`([^`\n]+)`")
METRIC = re.compile(r"\bkserve_cache_[a-z0-9_]+\b")
ELISION = {"...", "…"}
SHELL_STOP = {"|", "||", "&&", ";", ">", ">>", "2>", "&", "<"}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@dataclass(frozen=True)
class Line:
    page: Path
    number: int
    text: str
    in_code: bool
    language: str = ""  # of the code block: console blocks mix commands ($) and output


def lines(page: Path) -> Iterator[Line]:
    in_code = False
    language = ""
    for number, text in enumerate(page.read_text().splitlines(), 1):
        if FENCE.match(text):
            in_code = not in_code
            language = text.strip().removeprefix("```").strip() if in_code else ""
            continue
        yield Line(page, number, text, in_code, language)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for line in lines(page):
        match = re.match(r"(#{1,6})\s+(.+?)\s*#*$", line.text)
        if match and not line.in_code:
            base = slug(match.group(2))
            name, n = base, 0
            while name in found:
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


# ---- links ------------------------------------------------------------------------------------


def links() -> list[pytest.ParameterSet]:
    params = []
    for page in PAGES:
        for line in lines(page):
            if line.in_code:
                continue
            for target in LINK.findall(line.text):
                if re.match(r"[a-z]+:", target):
                    continue
                params.append(pytest.param(page, target, id=f"{rel(page)}:{line.number}:{target}"))
    return params


@pytest.mark.parametrize(("page", "target"), links())
def test_relative_links_resolve(page: Path, target: str) -> None:
    path, _, anchor = target.partition("#")
    goal = (page.parent / path).resolve() if path else page
    assert goal.exists(), f"{rel(page)} links to missing {target}"
    if anchor:
        assert goal.suffix == ".md", target
        assert anchor in anchors(goal), f"no heading #{anchor} in {rel(goal)}"


# ---- structure --------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_one_title_and_contents_when_long(page: Path) -> None:
    titles = [ln for ln in lines(page) if not ln.in_code and re.match(r"# ", ln.text)]
    assert len(titles) == 1, [t.text for t in titles]
    assert titles[0].number == 1
    if len(page.read_text().splitlines()) > LONG_PAGE:
        assert "contents" in anchors(page), f"{rel(page)} is long: add a ## Contents"


def test_every_page_is_reachable_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in PAGES:
        if page.parent.name == "docs":
            assert f"(docs/{page.name}" in readme, f"README does not link {page.name}"


def test_every_doctor_check_links_to_an_existing_section() -> None:
    headings = anchors(ROOT / "docs" / "troubleshooting.md")
    for anchor in doctor.ALL_CHECKS:
        assert anchor in headings, f"doctor links to docs/troubleshooting.md#{anchor}"
    from webhook.cli import share

    page, _, anchor = share.DOCTOR_DOCS.partition("#")
    assert anchor in anchors(ROOT / page)


# ---- commands ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    where: str
    argv: tuple[str, ...]
    example: bool  # a code-block example (parsed whole), not a mention in prose


def _split(text: str) -> list[str] | None:
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:
        return None
    for i, token in enumerate(tokens):
        if token in SHELL_STOP or token.startswith((">", "2>")):
            return tokens[:i]
    return tokens


def commands() -> list[Command]:
    found: list[Command] = []
    for page in PAGES:
        pending = ""
        for line in lines(page):
            if line.in_code:
                if line.language == "console" and not (pending or line.text.startswith("$ ")):
                    continue  # output, not a command
                text = pending + line.text.strip()
                if text.endswith("\\"):
                    pending = text[:-1] + " "
                    continue
                pending = ""
                text = text.removeprefix("$ ")
                text = re.sub(r"^(\.venv/bin/|\S*/)?(?=kserve-cache )", "", text)
                candidates = [(text, True)] if text.startswith("kserve-cache ") else []
            else:
                candidates = [
                    (span, False)
                    for span in INLINE.findall(line.text)
                    if span.startswith("kserve-cache ")
                ]
            for text, example in candidates:
                tokens = _split(text)
                if tokens and len(tokens) > 1 and tokens[1].endswith(":"):
                    continue  # a message (`kserve-cache fetch: unsafe-volume: ...`)
                if tokens:
                    found.append(Command(f"{rel(page)}:{line.number}", tuple(tokens[1:]), example))
    return found


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The real parser, with value types switched off (paths need not exist here) but
    choices, required options and mutual exclusions kept."""
    from webhook.cli import build_parser

    parser = build_parser()
    subs: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            subs = dict(action.choices)
    for sub in subs.values():
        for action in sub._actions:
            action.type = None
    return parser, subs


class _Refused(Exception):
    pass


def _no_exit(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    def error(message: str) -> None:
        raise _Refused(message)

    parser.error = error  # type: ignore[method-assign]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.error = error  # type: ignore[method-assign]
    return parser


def _placeholder(token: str) -> bool:
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_./-]*", token)) or token in ELISION


def test_the_docs_show_commands() -> None:
    found = commands()
    assert sum(c.example for c in found) > 20
    assert {c.argv[0] for c in found if c.argv} >= {"serve", "doctor", "stats", "gc", "fetch"}


def _command_params() -> list[pytest.ParameterSet]:
    params, seen = [], set()
    for command in commands():
        ident = f"{command.where}:{' '.join(command.argv)[:60]}"
        n, base = 0, ident
        while ident in seen:
            n += 1
            ident = f"{base}#{n}"
        seen.add(ident)
        params.append(pytest.param(command, id=ident))
    return params


@pytest.mark.parametrize("command", _command_params())
def test_command_parses(command: Command) -> None:
    parser, subs = _parsers()
    argv = list(command.argv)
    # global options before the command
    while argv and argv[0] == "--log-level":
        argv = argv[2:]
    assert argv, command
    name = argv[0]
    if _placeholder(name):
        return  # `kserve-cache COMMAND --help`
    assert name in subs, f"{command.where}: no command {name!r}"
    sub = subs[name]
    options = set(sub._option_string_actions)
    synopsis = any(ch in " ".join(argv) for ch in "[]|(){}")
    for token in argv[1:]:
        for flag in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", token):
            if token.startswith("-") or synopsis:
                assert flag.split("=")[0] in options, f"{command.where}: {name} has no {flag}"
    if not command.example or synopsis:
        return
    rest = argv[1:]
    for i, token in enumerate(rest):
        if token in ELISION and (i == len(rest) - 1 or rest[i - 1].startswith("--") is False):
            rest = rest[:i]
            break
    if any(_placeholder(t) for t in rest if not t.startswith("-")) and "-f" not in rest:
        pass  # placeholders such as FILE still parse as values
    try:
        _no_exit(copy.deepcopy(parser)).parse_args([name, *rest])
    except _Refused as exc:
        pytest.fail(f"{command.where}: `kserve-cache {' '.join(command.argv)}`: {exc}")


# ---- metrics ----------------------------------------------------------------------------------


def metric_mentions() -> list[pytest.ParameterSet]:
    seen: dict[str, str] = {}
    for page in PAGES:
        for line in lines(page):
            for name in METRIC.findall(line.text):
                seen.setdefault(name, f"{rel(page)}:{line.number}")
    return [pytest.param(name, where, id=name) for name, where in sorted(seen.items())]


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, frozenset[str]]:
    return all_metrics(tmp_path_factory.mktemp("metrics"))


@pytest.mark.parametrize(("name", "where"), metric_mentions())
def test_every_metric_named_is_exposed(
    name: str, where: str, exposed: dict[str, frozenset[str]]
) -> None:
    # a histogram may be named as a whole (its series are NAME_bucket, NAME_sum, NAME_count)
    histogram = all(f"{name}{s}" in exposed for s in ("_bucket", "_sum", "_count"))
    assert name in exposed or histogram, (
        f"{where}: {name} is not on the webhook's /metrics nor the exporter's"
    )


# ---- examples whose output is deterministic ---------------------------------------------------


def preview_examples() -> list[pytest.ParameterSet]:
    """`$ kserve-cache preview ...` blocks with the output they show (offline previews only)."""
    params = []
    for page in PAGES:
        block: list[str] | None = None
        start = 0
        for number, text in enumerate(page.read_text().splitlines(), 1):
            if FENCE.match(text):
                if block is None:
                    block, start = [], number
                else:
                    params.extend(_examples_in(page, start, block))
                    block = None
            elif block is not None:
                block.append(text)
    return params


def _examples_in(page: Path, start: int, block: list[str]) -> list[pytest.ParameterSet]:
    out = []
    for i, text in enumerate(block):
        if not text.startswith("$ kserve-cache preview "):
            continue
        command = text[2:]
        if any(s in command for s in ("--cluster", "--webhook-url", "|", ">", "&")):
            continue
        files = re.findall(r"-f\s+(\S+)", command)
        if not files or not all((ROOT / f).is_file() for f in files):
            continue  # an input the page only describes
        expected = []
        for following in block[i + 1 :]:
            if following.startswith("$ "):
                break
            expected.append(following)
        if expected:
            out.append(pytest.param(command, expected, id=f"{rel(page)}:{start + i + 1}"))
    return out


@pytest.mark.parametrize(("command", "expected"), preview_examples())
def test_preview_examples_print_what_the_docs_show(command: str, expected: list[str]) -> None:
    argv = shlex.split(command)
    exe = Path(sys.executable).parent / "kserve-cache"
    result = subprocess.run(
        [str(exe), *argv[1:]],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # as a terminal shows them
        text=True,
        timeout=120,
        check=False,
    )
    shown = result.stdout.splitlines()
    # a page may stop a long output early with a line of its own: "..." or "…"
    if expected and expected[-1].strip() in ELISION:
        expected = expected[:-1]
        shown = shown[: len(expected)]
    assert shown == expected, f"`{command}` prints (exit {result.returncode}):\n" + "\n".join(shown)


def test_the_readme_quick_start_kustomization_renders(tmp_path: Path) -> None:
    """The overlay the README's quick start writes renders, with both images rewritten."""
    import os

    import yaml

    from tests.deploy.conftest import kustomize

    readme = (ROOT / "README.md").read_text()
    match = re.search(r"cat > my-install/kustomization.yaml <<'EOF'\n(.*?)\nEOF\n", readme, re.S)
    assert match is not None
    user = tmp_path / "my-install"
    user.mkdir()
    text = match.group(1).replace("../manifests", os.path.relpath(ROOT / "manifests", user))
    (user / "kustomization.yaml").write_text(text)
    objects = kustomize(user)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/ml/kserve-cache:0.1.0"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KSERVE_CACHE_FETCHER_IMAGE"] == "registry.example.com/ml/kserve-cache-fetcher:0.1.0"
    assert yaml.safe_load(text)["resources"]


def test_the_install_page_status_example_is_what_preview_prints() -> None:
    import json

    import yaml

    page = (ROOT / "docs" / "install.md").read_text()
    command = re.search(
        r"`(kserve-cache preview -f manifests/examples/\S+ --config\s+\S+ -o yaml)`", page
    )
    assert command is not None
    shown = re.search(r'```json\n(\{"by".*\})\n```', page)
    assert shown is not None
    exe = Path(sys.executable).parent / "kserve-cache"
    out = subprocess.run(
        [str(exe), *shlex.split(command.group(1))[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    (pod,) = [d for d in yaml.safe_load_all(out) if d]
    status = pod["metadata"]["annotations"]["cache.kserve.io/status"]
    assert json.loads(status) == json.loads(shown.group(1))


def section_flags() -> list[pytest.ParameterSet]:
    """Inline `--flag` spans inside a section titled after a command (`## kserve-cache gc`,
    and its subsections), with that command."""
    params = []
    seen: set[str] = set()
    for page in PAGES:
        command: str | None = None
        level = 0
        for line in lines(page):
            heading = re.match(r"(#{1,6})\s+(.+)", line.text) if not line.in_code else None
            if heading:
                depth = len(heading.group(1))
                named = re.search(r"`kserve-cache ([a-z-]+)`", heading.group(2))
                if named and depth >= 2:  # a page's title covers more than one command
                    command, level = named.group(1), depth
                elif command is not None and depth <= level:
                    command = None
                continue
            if command is None or line.in_code:
                continue
            for span in INLINE.findall(line.text):
                match = re.fullmatch(r"(--[a-z][a-z0-9-]*)(?:[ =].*)?", span)
                if match:
                    ident = f"{rel(page)}:{line.number}:{command} {match.group(1)}"
                    if ident not in seen:
                        seen.add(ident)
                        params.append(pytest.param(command, match.group(1), id=ident))
    return params


@pytest.mark.parametrize(("command", "flag"), section_flags())
def test_flags_in_a_command_section_are_that_commands(command: str, flag: str) -> None:
    _, subs = _parsers()
    assert command in subs
    assert flag in subs[command]._option_string_actions or flag in {"--log-level", "--help"}


def test_the_certs_example_is_what_certs_prints(tmp_path: Path) -> None:
    """docs/install.md shows two runs of `certs` (a rotation): their messages, minus the time."""
    page = (ROOT / "docs" / "install.md").read_text()
    block = page[page.index("$ kserve-cache certs --out-dir certs/cluster\n") :]
    block = block[: block.index("```")]
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
    shown = [stamp.sub("", ln) for ln in block.splitlines() if stamp.match(ln)]
    assert len(shown) == 2
    exe = Path(sys.executable).parent / "kserve-cache"
    printed = []
    for _ in range(2):
        result = subprocess.run(
            [str(exe), "certs", "--out-dir", "certs/cluster"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        printed += [stamp.sub("", ln) for ln in result.stderr.splitlines()]
        assert re.fullmatch(r"[A-Za-z0-9+/=]+\n", result.stdout)  # stdout: only the caBundle
    assert printed == shown
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "certs/cluster").iterdir()}
    assert modes == {"ca.crt": 0o644, "tls.crt": 0o644, "tls.key": 0o600}
