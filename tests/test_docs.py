"""README.md and docs/: every relative link and referenced file exists, every command parses.

Commands are the ``t2t-image-*`` invocations shown in code (fenced blocks and inline code);
each flag must be one the tool defines (read from the tools themselves, so flags added
later count as soon as they exist), and ``--noflag`` must name a boolean flag. A tool
with its own argparse ``parse(argv)`` (the launcher) parses the whole command; the
command after its ``--`` is checked as a command of its own.
"""

import contextlib
import importlib
import io
import pathlib
import re
import shlex

import pytest
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]


def tools():
    """{console script: module} from setup.py."""
    setup = (REPO / "setup.py").read_text()
    return dict(re.findall(r"\"(t2t-image-[\w-]+) = ([\w.]+):\w+\"", setup))


# Imported at collection, before any test runs: the trainer defines its flags at import,
# the other tools only when they run (or define_flags()), reusing the names defined.
TOOLS = {tool: importlib.import_module(name) for tool, name in tools().items()}
PAGES = ([REPO / "README.md", REPO / "benchmarks" / "README.md"]
         + sorted((REPO / "docs").rglob("*.md")))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE = re.compile(r"```[^\n]*\n(.*?)```|`([^`\n]+)`", re.S)
# Paths of the repository named in code spans, e.g. `gin/tiny.gin` or `tests/cli/`.
REPO_PATH = re.compile(r"(?<![\w./-])((?:bin|benchmarks|docs|experiments|gin|presets|"
                       r"t2t_image|tests|\.ci)/[\w.*/-]*)")
PLACEHOLDER = re.compile(r"[A-Z]{2,}|\.\.\.|\*")


def text_of(page):
    return page.read_text(encoding="utf-8")


def code_spans(text):
    for match in CODE.finditer(text):
        yield match.group(1) if match.group(1) is not None else match.group(2)


def github_anchor(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page):
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text_of(page), re.M)}


def test_there_are_pages():
    assert len(PAGES) >= 8, PAGES
    assert len(text_of(REPO / "README.md").splitlines()) <= 170


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_and_named_files_exist(page):
    text = text_of(page)
    missing = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            missing.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            missing.append(f"{target} (no such heading)")
    for span in code_spans(text):
        for path in REPO_PATH.findall(span):
            path = path.rstrip(".,:;")
            if not PLACEHOLDER.search(path) and not (REPO / path).exists():
                missing.append(path)
    assert not missing, f"{page.name}: {missing}"


def no_internal_issue_numbers(text):
    return re.findall(r"\bissues? #?\d+\b|\(#\d+\)", text, re.I)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_internal_issue_numbers(page):
    assert not no_internal_issue_numbers(text_of(page))


def tool_flags(module):
    """The flags a tool accepts: {name: is_boolean}, from its own definitions."""
    module_name = module.__name__
    if hasattr(module, "define_flags"):
        module.define_flags()
    names = set(getattr(getattr(module, "_FLAGS", None), "names", ()))
    names |= {f.name for f in flags.FLAGS.get_flags_for_module(module_name)}
    names |= {"verbose", "help", "helpfull", "helpshort"}
    from t2t_image.cli import errors

    errors.define_verbose_flag()
    return {n: isinstance(flags.FLAGS[n], flags.BooleanFlag) for n in names if n in flags.FLAGS}


def commands(text):
    """Every t2t-image-* command in the code of a page, as argument lists."""
    for span in code_spans(text):
        span = span.replace("\\\n", " ")
        for line in span.splitlines():
            for match in re.finditer(r"\b(t2t-image-[\w-]+)((?:\s+(?:\"[^\"]*\"|'[^']*'|"
                                     r"[^\s|&;`]+))*)", line):
                try:
                    args = shlex.split(match.group(2))
                except ValueError:
                    args = match.group(2).split()
                # The whole command (a launcher's parser needs what follows its --) ...
                yield match.group(1), args
                if "--" in args:  # ... and t2t-image-launch ... -- COMMAND: COMMAND's own
                    rest = args[args.index("--") + 1:]
                    if rest and rest[0].startswith("t2t-image-"):
                        yield rest[0], rest[1:]


def test_every_command_shown_parses():
    known = TOOLS
    cache = {}
    bad = []
    for page in PAGES:
        for tool, args in commands(text_of(page)):
            if tool not in known:
                bad.append(f"{page.name}: unknown tool {tool}")
                continue
            parse = getattr(known[tool], "parse", None)
            if parse is not None and args:  # an argparse tool: its parser judges the command
                try:
                    with contextlib.redirect_stderr(io.StringIO()):
                        parse(args)
                except SystemExit:
                    bad.append(f"{page.name}: {tool} {' '.join(args)}")
                continue
            if parse is not None:  # the tool named, not a command
                continue
            if tool not in cache:
                cache[tool] = tool_flags(known[tool])
            accepted = cache[tool]
            for arg in args[:args.index("--")] if "--" in args else args:
                if arg in ("[", "]", "...", "|") or not arg.startswith("--"):
                    continue
                name = arg[2:].split("=", 1)[0].strip("[]")
                if PLACEHOLDER.fullmatch(name or "X"):
                    continue
                if name in accepted or (name.startswith("no") and accepted.get(name[2:])):
                    continue
                bad.append(f"{page.name}: {tool} {arg}")
    assert not bad, bad


def test_the_readme_test_command_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    command = ci[ci.index("# The test command from README.md, verbatim:") + 1]
    assert f"\n{command}\n" in text_of(REPO / "README.md")
