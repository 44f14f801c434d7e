"""The command line: every command and option explains itself; `info` shows what a cache holds."""

from __future__ import annotations

import json

import click
import numpy as np
from click.testing import CliRunner
from helpers import make_metadata, recipe

from embedcache.cache import EmbeddingCache
from embedcache.cli import main


def _commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


def test_every_command_and_option_has_help():
    runner = CliRunner()
    for path, command in _commands(main):
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, result.output
        assert command.help and len(command.help) > 20, f"{' '.join(path)} needs a description"
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"{' '.join(path)} {param.opts[0]} has no help text"


def test_info_text_and_json(tmp_path):
    path = EmbeddingCache.write(tmp_path / "c.h5", np.ones((30, 4), np.float32), make_metadata(30),
                                recipe=recipe())
    runner = CliRunner()
    text = runner.invoke(main, ["info", str(path), "--check"])
    assert text.exit_code == 0, text.output
    users = len(np.unique(make_metadata(30).groups["user"]))
    for expected in ("complete", "30 x 4  float32", "train 15, val 15", "group     place (2 values)",
                     f"group     user ({users} values)", f"({users - 8} more)", "check     ok"):
        assert expected in text.output
    data = json.loads(runner.invoke(main, ["info", str(path), "--json"]).output)
    assert data["rows"] == 30 and data["complete"] and data["recipe"]["spec"] == "test:features"


def test_errors_are_one_line_without_traceback(tmp_path):
    result = CliRunner().invoke(main, ["info", str(tmp_path / "missing.h5")])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "no such cache file" in result.output


def test_readme_cli_reference_is_up_to_date():
    from pathlib import Path

    from embedcache.cli.reference import END, START, render

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split(START, 1)[1].split(END, 1)[0].strip()
    assert block == render().strip(), "run `python -m embedcache.cli.reference README.md`"
