"""Help that teaches: a description per command, defaults and choices, examples for train."""

import pytest

from selhn.cli import build_parser, main
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
