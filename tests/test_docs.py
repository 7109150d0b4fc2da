"""Every command in the docs is run by a test or a script, so the docs cannot rot.

The pages are README.md and docs/*.md. In them:

- every command of a ```bash (or sh, shell, console) block is checked: `selhn ...` (also after
  `torchrun ... -m selhn` or `python -m selhn`) is parsed by selhn's own parser, and its
  `--section.key=value` settings, `--config` and `selhn config show` names are resolved as the
  command resolves them; a script must exist and take the flags given; `make` targets must exist
  in the Makefile; `pip install` must pin torch as the Makefile does and name existing extras;
- the HTML comment on the line before a block says how it is exercised:
  `<!-- docs-test: run -->`: run here, with the page's other such blocks in order, in an empty
  directory; `<!-- docs-test: see tests/FILE.py::TEST ... -->`: the named tests (or files) run
  these commands on small data; `<!-- docs-test: not-run: REASON -->`: measurements and GPU jobs.
  A block with commands other than make, pip and file listings needs one of the three;
- a ```text block marked `<!-- docs-test: synopsis -->` must list every flag of its command, with
  the command's choices (`--loss a|b`) and defaults (`--k 5`) where it shows them;
- every ```python block runs; every ```yaml block loads as a configuration;
- every relative link points to a file, and an anchor to a heading, that exists.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from selhn.cli import build_parser
from selhn.cli.common import config_overrides
from selhn.cli.train import train_overrides
from selhn.config.resolve import AUTO, NONE, layered, recipes
from selhn.config.schema import load_config, parse_losses

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)\s*$")
MARKER = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->$")
SEPARATORS = {";", "&&", "||", "|", "&"}
HARMLESS = {"ls", "cd", "cat", "mkdir", "echo", "tensorboard", "curl"}  # nothing to check in these
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")
TORCH_PIN = re.search(r"^TORCH := (\S+)", MAKEFILE, re.M).group(1)
OPTIONAL = re.search(  # the extras: pyproject.toml's [project.optional-dependencies] keys
    r"^\[project\.optional-dependencies\]\n(.*?)(?=^\[)",
    (ROOT / "pyproject.toml").read_text(),
    re.M | re.S,
).group(1)
EXTRAS = set(re.findall(r"^([\w-]+)\s*=", OPTIONAL, re.M))


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: str | None  # what follows "docs-test:" in a comment on the line before the fence

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def read_blocks(page: Path) -> list[Block]:
    blocks, lines = [], page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, lang = opening.groups()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), len(lines))
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(before.strip())
        text = "\n".join(lines[i + 1 : end])
        blocks.append(Block(page, i + 1, lang, text, marker.group(1) if marker else None))
        i = end + 1
    return blocks


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def simple_commands(block: Block) -> list[list[str]]:
    """The block's commands as argument lists: continuation lines joined, comments dropped,
    `;`, `&&`, `||` and `|` split; in a console block only the `$ ` lines."""
    logical, current = [], ""
    for raw in block.text.splitlines():
        line = raw.rstrip()
        if block.lang == "console":
            if not current and not line.startswith("$ "):
                continue
            line = line.removeprefix("$ ") if not current else line
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    commands = []
    for line in logical:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split, lexer.commenters = True, "#"
        command: list[str] = []
        for token in lexer:
            if token in SEPARATORS:
                commands.append(command)
                command = []
            else:
                command.append(token)
        commands.append(command)
    return [c for c in commands if c]


# --- checking one command ---------------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def leaf_commands(parser=None, prefix=("selhn",)) -> dict[str, argparse.ArgumentParser]:
    """{"selhn data synth": its parser, ...}: every command that does something."""
    parser = parser or build_parser()
    children = subcommands(parser)
    if not children:
        return {" ".join(prefix): parser}
    found = {}
    for name, child in children.items():
        found |= leaf_commands(child, (*prefix, name))
    return found


def check_selhn(args: list[str]) -> None:
    """Parse as `selhn` parses; resolve the configuration as `selhn train|experiment` does."""
    parser, errors = build_parser(), io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            ns, extra = parser.parse_known_args(args)
    except SystemExit as done:
        if done.code == 0:  # --help, --version
            return
        raise ValueError(errors.getvalue().strip().splitlines()[-1]) from None
    command = parser
    for word in args:  # the subcommand's own parser
        command = subcommands(command).get(word, command)
    options = {o for a in [*parser._actions, *command._actions] for o in a.option_strings}
    for arg in args:  # argparse takes --epoch for --epochs: the docs spell options out
        flag = arg.split("=", 1)[0]
        if flag.startswith("--") and "." not in flag and flag not in options:
            raise ValueError(f"{flag} is not an option's full name")
    if ns.command == "config" and ns.name not in recipes():
        load_config(ns.name)
    if ns.command not in ("train", "experiment"):
        if extra:
            raise ValueError(f"unrecognised arguments: {' '.join(extra)}")
        return
    ns.overrides = config_overrides(extra)
    recipe = NONE if ns.recipe == AUTO else ns.recipe  # auto depends on the data
    if ns.command == "experiment":
        parse_losses(ns.losses)
        layered(recipe, ns.config, ns.overrides)[0].validate()
        return
    if ns.resume and (ns.config is not None or ns.recipe != AUTO):
        raise ValueError("--resume uses the run's own settings; it is refused with --config")
    layered(recipe, ns.config, train_overrides(ns))[0].validate()


def check_script(path: str, args: list[str]) -> None:
    script = ROOT / path
    if not script.is_file():
        raise ValueError(f"{path}: no such file in the repository")
    if script.suffix == ".py":
        source = script.read_text(encoding="utf-8")
        for arg in args:
            flag = arg.split("=", 1)[0]
            if flag.startswith("--") and f'"{flag}"' not in source:
                raise ValueError(f"{path} has no option {flag}")


def check_pip(args: list[str]) -> None:
    if not args or args[0] != "install":
        return
    installs_selhn = any(
        a in (".", "selhn") or a.startswith((".[", "selhn[")) or a.endswith(".whl") for a in args
    )
    if installs_selhn and TORCH_PIN not in args:
        raise ValueError(f"installs selhn without {TORCH_PIN} in the same command (Makefile)")
    for arg in args:
        for extras in re.findall(r"\[([\w,-]+)\]", arg):
            unknown = set(extras.split(",")) - EXTRAS
            if unknown:
                raise ValueError(f"no extra {', '.join(sorted(unknown))} in pyproject.toml")


def check_command(tokens: list[str]) -> str:
    """Check one command; return its kind: selhn, script, make, pip or harmless."""
    while tokens and re.match(r"^[A-Za-z_]\w*=", tokens[0]):  # VAR=value before the program
        tokens = tokens[1:]
    program, args = Path(tokens[0]).name, tokens[1:]
    if program == "selhn":
        check_selhn(args)
        return "selhn"
    if program in ("python", "python3") and args[:2] == ["-m", "pip"]:
        program, args = "pip", args[2:]
    if program in ("torchrun", "python", "python3") and "selhn" in args:
        at = args.index("selhn")
        if at == 0 or args[at - 1] != "-m":
            raise ValueError("runs selhn other than as `-m selhn`")
        check_selhn(args[at + 1 :])
        return "selhn"
    if program in ("python", "python3", "bash", "sh"):
        check_script(args[0], args[1:])
        return "script"
    if program == "make":
        for target in args:
            if not re.search(rf"^{re.escape(target)}:", MAKEFILE, re.M):
                raise ValueError(f"no target {target!r} in the Makefile")
        return "make"
    if program == "pip":
        check_pip(args)
        return "pip"
    if program in HARMLESS:
        return "harmless"
    raise ValueError(f"{program}: a program tests/test_docs.py does not know how to check")


def check_marker(block: Block, kinds: set[str]) -> None:
    marker = block.marker or ""
    if marker == "run":
        return
    if marker.startswith("see "):
        for target in marker[4:].split():
            path, _, test = target.partition("::")
            if not (ROOT / path).exists():
                raise ValueError(f"docs-test: see {target}: no such file")
            if test and not re.search(
                rf"^def {re.escape(test)}\(", (ROOT / path).read_text(), re.M
            ):
                raise ValueError(f"docs-test: see {target}: no such test")
        return
    if marker.startswith("not-run:") and marker[len("not-run:") :].strip():
        return
    if kinds - {"make", "pip", "harmless"}:
        raise ValueError(
            "say how these commands are exercised on the line before the block: "
            "<!-- docs-test: run -->, <!-- docs-test: see tests/FILE.py::TEST -->, or "
            "<!-- docs-test: not-run: REASON -->"
        )


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_command_parses_and_says_how_it_is_exercised(page, monkeypatch):
    monkeypatch.chdir(ROOT)  # configuration files are named relative to the clone
    problems = []
    for block in read_blocks(page):
        if not block.lang:
            problems.append(f"{block}: a fence without a language (bash, text, python, ...)")
        if block.marker and block.lang not in SHELL | {"text"}:
            problems.append(f"{block}: a docs-test marker on a {block.lang} block")
        if block.marker == "synopsis" and block.lang != "text":
            problems.append(f"{block}: a synopsis is a text block")
        if block.lang not in SHELL:
            continue
        kinds = set()
        for command in simple_commands(block):
            try:
                kinds.add(check_command(command))
            except (ValueError, FileNotFoundError) as err:
                problems.append(f"{block}: {shlex.join(command)}\n    {err}")
        try:
            check_marker(block, kinds)
        except ValueError as err:
            problems.append(f"{block}: {err}")
    assert not problems, "\n".join(problems)


# --- synopses ---------------------------------------------------------------------------------


def check_synopsis(block: Block) -> list[str]:
    entries: list[str] = []
    for line in block.text.splitlines():
        if line.startswith("selhn"):
            entries.append(line)
        elif entries:
            entries[-1] += " " + line
    problems, shown = [], {}
    for entry in entries:
        words = re.sub(r"[\[\]()]", " ", entry).split()
        parser, name = build_parser(), "selhn"
        for word in words[1:]:
            children = subcommands(parser)
            if word not in children:
                break
            parser, name = children[word], f"{name} {word}"
        actions = {option: action for action in parser._actions for option in action.option_strings}
        listed = shown.setdefault(name, (parser, set()))[1]
        for i, word in enumerate(words):
            if not word.startswith("--"):
                continue
            flag = word.split("=", 1)[0]
            if "." in flag:  # --section.key=value: any configuration key
                continue
            if flag not in actions:
                problems.append(f"{block}: {name} has no option {flag}")
                continue
            listed.add(flag)
            action = actions[flag]
            value = words[i + 1] if i + 1 < len(words) else ""
            if "|" in value and action.choices is not None:
                if set(value.split("|")) != {str(c) for c in action.choices}:
                    problems.append(f"{block}: {flag} {value}; its choices: {action.choices}")
            elif (
                value
                and not value.startswith("-")
                and value.lower() == value  # not a placeholder like DIR or RUN/best
                and action.default not in (None, False, [], argparse.SUPPRESS)
                and str(action.default) != value
            ):
                problems.append(f"{block}: {flag} {value}; its default is {action.default}")
    for name, (parser, listed) in shown.items():
        every = {
            option
            for action in parser._actions
            if action.help != argparse.SUPPRESS
            for option in action.option_strings
            if option.startswith("--") and option != "--help"
        }
        if every - listed:
            problems.append(f"{block}: {name} misses {', '.join(sorted(every - listed))}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_synopses_list_every_flag_with_its_choices_and_defaults(page):
    problems = []
    for block in read_blocks(page):
        if block.marker == "synopsis":
            problems += check_synopsis(block)
    assert not problems, "\n".join(problems)


# --- running ----------------------------------------------------------------------------------


def selhn_environment() -> dict[str, str]:
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "selhn").exists():
        pytest.fail(f"no selhn command next to {sys.executable}: install selhn into it")
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    # one thread: the models are tiny, and a second thread only waits when the cores are shared
    return {"OMP_NUM_THREADS": "1", **os.environ, "PATH": path}


RUN_PAGES = [p for p in PAGES if any(b.marker == "run" for b in read_blocks(p))]


# A page's marked blocks run in one Python process: each `selhn ...` line through selhn's own
# main() (one import of torch per page, not per command), any other line through bash.
PAGE_RUNNER = """
import json, shlex, subprocess, sys
from selhn.cli import main
for line in json.load(sys.stdin):
    print("+ " + line, flush=True)
    if line.startswith("selhn "):
        code = main(shlex.split(line)[1:])
    else:
        code = subprocess.run(["bash", "-euo", "pipefail", "-c", line]).returncode
    if code:
        sys.exit(code)
"""


def run_page(page: Path, directory: Path, env: dict[str, str]) -> str | None:
    """Run the page's marked blocks in order in ``directory``; what went wrong, or None."""
    lines = [
        line.strip()
        for block in read_blocks(page)
        if block.marker == "run"
        for line in block.text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    done = subprocess.run(
        [sys.executable, "-c", PAGE_RUNNER], input=json.dumps(lines), cwd=directory, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        return f"{page.name}'s marked blocks failed:\n{(done.stdout + done.stderr)[-4000:]}"
    return None


@pytest.fixture(scope="module")
def page_runs(tmp_path_factory) -> dict[Path, str | None]:
    """Every page's marked blocks, two pages at a time (each page in its own directory)."""
    env = selhn_environment()
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            page: pool.submit(run_page, page, tmp_path_factory.mktemp("page"), env)
            for page in RUN_PAGES
        }
        return {page: future.result() for page, future in futures.items()}


@pytest.mark.subprocess
@pytest.mark.parametrize("page", RUN_PAGES, ids=page_id)
def test_marked_blocks_run(page, page_runs):
    assert page_runs[page] is None, page_runs[page]


RUNNER = """
import json, sys, traceback
failed = 0
for where, code in json.load(sys.stdin):
    try:
        exec(compile(code, where, "exec"), {"__name__": "__main__"})
    except BaseException:
        failed += 1
        print(f"--- {where} failed", file=sys.stderr)
        traceback.print_exc()
sys.exit(1 if failed else 0)
"""


def test_python_blocks_run(tmp_path):
    blocks = [b for page in PAGES for b in read_blocks(page) if b.lang == "python"]
    assert blocks
    done = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps([[str(b), b.text] for b in blocks]),
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]


def test_yaml_blocks_load_as_configurations(tmp_path):
    for page in PAGES:
        for block in read_blocks(page):
            if block.lang == "yaml":
                path = tmp_path / "block.yaml"
                path.write_text(block.text, encoding="utf-8")
                try:
                    load_config(path)
                except ValueError as err:
                    pytest.fail(f"{block}: {err}")


# --- links and the README ---------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_point_to_files_and_headings_that_exist(page):
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.M | re.S)  # code blocks
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{page_id(page)}: {target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            problems.append(f"{page_id(page)}: {target}: no such heading")
    assert not problems, "\n".join(problems)


def test_the_readme_starts_with_the_two_set_up_commands():
    first = read_blocks(ROOT / "README.md")[0]
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# ") and first.line == 3 and first.lang in SHELL
    assert [c[:2] for c in simple_commands(first)] == [["make", "demo"], ["make", "test"]]


def test_the_readme_lists_every_command_and_every_extra():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = set(re.findall(r"^\| `(selhn [\w ]+)` \|", text, re.M))
    assert commands == set(leaf_commands()), "the README's table of commands"
    extras = set(re.findall(r"^\| `([\w-]+)` \|", text, re.M)) - {c for c in commands}
    assert extras == EXTRAS, "the README's table of extras"
