"""Help that teaches: a description per command, defaults and choices, examples for train."""

import argparse
import subprocess
import sys

import pytest

from selhn.cli import build_parser, main
from selhn.cli.common import COMMANDS
from selhn.config.schema import Config


def help_of(capsys, *argv):
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # unwrap argparse's line breaks


def test_every_command_describes_itself(capsys):
    assert "selectively hard negatives" in help_of(capsys)
    commands = build_parser()._subparsers._group_actions[0].choices
    for name, parser in commands.items():
        assert parser.description, name
        assert parser.description in help_of(capsys, name), name


def test_train_help_shows_defaults_choices_and_examples(capsys):
    text = help_of(capsys, "train")
    defaults = Config()
    assert f"sets train.epochs (default {defaults.train.epochs})" in text
    assert f"sets train.lr (default {defaults.train.lr})" in text
    assert "--loss {selhn,hardest,all,infonce,selnce}" in text
    assert "--false-negatives {none,same_image,same_caption,similar}" in text
    assert "examples: selhn train --data data/synth --out runs/demo --config demo" in text
    assert "--recipe {auto,own-data,paper,none}" in text
    assert "a packaged preset (demo, experiment, experiment_vsepp)" in text


def test_defaults_and_valid_names_elsewhere(capsys):
    text = help_of(capsys, "experiment")
    names = "all, hardest, hardest+warmup, selhn, infonce, selnce"
    assert f"comma-separated, from {names}; NAME:MODE" in text
    assert "(default: 3)" in text  # --seeds
    assert "(default: 5)" in help_of(capsys, "search")  # --k
    assert "(default: None)" not in help_of(capsys, "eval")


def test_the_command_list_needs_no_command_module_nor_torch():
    """``selhn --help`` and ``--version`` print from ``COMMANDS`` alone; it lists every command of
    the full parser with the same summary."""
    full = build_parser()._subparsers._group_actions[0].choices
    assert {name: parser.description for name, parser in full.items()} == {
        name: summary for name, (_, summary) in COMMANDS.items()
    }
    script = (
        "import sys, contextlib, io\n"
        "from selhn.cli import main\n"
        "for argv in (['--version'], ['--help']):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        main(argv)\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('selhn.cli.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "['selhn.cli.common']", done.stderr


def test_every_option_has_help(capsys):
    for name in COMMANDS:
        for parser in _parsers(build_parser(name)._subparsers._group_actions[0].choices[name]):
            for action in parser._actions:
                if action.option_strings and action.help is None:
                    raise AssertionError(f"{parser.prog} {action.option_strings[0]}: no help")


def _parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_config_show_names_every_architecture(capsys):
    from selhn.models.registry import ARCHITECTURES

    assert main(["config", "show"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "architecture:" in x)
    assert line.endswith(" | ".join(sorted(ARCHITECTURES, key=["rvsepp", "vsepp", "probe"].index)))
