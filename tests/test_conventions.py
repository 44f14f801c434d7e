"""One meaning per option name: every command's params walked and held against the conventions table;
old spellings still read (with a note); registry names and library errors reported as flags."""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import make_metadata, recipe

from embedcache.cache import EmbeddingCache
from embedcache.cli import main
from embedcache.cli.command import Command, DeprecatedAlias, DeprecatedArguments, error_text
from embedcache.cli.conventions import RENAMES, SHARED
from embedcache.errors import CacheError, ConfigError


def _commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield " ".join((*prefix, name)), command


COMMANDS = dict(_commands(main))


def _visible_options(command: click.Command):
    return [p for p in command.params if isinstance(p, click.Option) and not p.hidden and p.name != "help"]


def test_every_command_reports_library_errors_in_its_own_flags():
    assert all(isinstance(command, Command) for command in COMMANDS.values())


def test_each_option_name_shared_by_commands_is_one_shared_definition():
    by_name: dict[str, list[tuple[str, click.Option]]] = {}
    for name, command in COMMANDS.items():
        for param in _visible_options(command):
            for opt in param.opts:
                by_name.setdefault(opt, []).append((name, param))
    shared = {s.option: s for s in SHARED}
    for opt, uses in by_name.items():
        if len({name for name, _ in uses}) > 1:
            assert opt in shared or any(opt in s.decls for s in SHARED), \
                f"{opt} is in {[n for n, _ in uses]} but not in the conventions table"
    for s in SHARED:
        uses = {name: param for name, param in by_name.get(s.option, [])}
        assert set(uses) == set(s.commands), f"{s.option}: the table says {s.commands}, the commands have {set(uses)}"
        for name, param in uses.items():
            where = f"{name} {s.option}"
            assert tuple(param.opts) == s.decls and not param.secondary_opts, where
            assert param.help.startswith(s.meaning), f"{where}: help must start with the shared meaning"
            if s.type is not None:
                assert param.type is s.type, f"{where}: another type than the shared definition's"
            assert param.is_flag == bool(s.attrs.get("is_flag")), where


def test_old_spellings_are_hidden_and_listed():
    listed = {(r.command, r.old) for r in RENAMES}
    found = set()
    for name, command in COMMANDS.items():
        for param in command.params:
            if isinstance(param, DeprecatedAlias):
                assert param.hidden
                found.add((name, param.opts[0]))
            elif isinstance(param, DeprecatedArguments):
                assert param.get_usage_pieces(click.Context(command)) == []
                found.add((name, f"{param.human_readable_name} (positional)"))
    value_spellings = {(r.command, r.old) for r in RENAMES if " " in r.old and "positional" not in r.old}
    assert found == listed - value_spellings


def _parse(command: str, args: list[str]) -> dict:
    """The params `embedcache <command> args` would run with (nothing is run)."""
    path = command.split()
    target = COMMANDS[command]
    return target.make_context(" ".join(["embedcache", *path]), list(args), **main.context_settings).params


def test_old_spellings_still_work_with_a_note(tmp_path, capsys):
    assert _parse("extract", ["--dataset", "jsonl", "--root", "x", "--backbone", "hf:m", "--out", "o.h5",
                              "--seed", "3"])["init_seed"] == 3
    assert "extract: --seed is deprecated; write --init-seed" in capsys.readouterr().err
    cache = tmp_path / "c.h5"
    cache.touch()
    assert _parse("neighbors", [str(cache), "--out", "o", "--metric", "l2", "--device", "gpu"])["distance"] == "l2"
    err = capsys.readouterr().err
    assert "--metric is deprecated" in err and "--device gpu is deprecated" in err
    assert _parse("neighbors", [str(cache), "--out", "o", "--device", "gpu"])["device"] == "cuda"
    params = _parse("report", ["runs/a", "--out", "r", "--runs", "runs/b", "runs/c"])
    assert params["runs"] == (Path("runs/b"), Path("runs/a"), Path("runs/c"))
    assert "positional RUNS are deprecated; write --runs" in capsys.readouterr().err
    assert _parse("repair", ["runs/a"])["runs"] == (Path("runs/a"),)
    params = _parse("datasets build-waterbirds", ["--cub", str(tmp_path), "--places", str(tmp_path), "--matched",
                                                  "0.8", "--out", "o", "--workers", "2"])
    assert params["threads"] == 2
    assert _parse("demo", ["--seeds", "3"])["seeds"] == (0, 1, 2)
    assert "a count of seeds is deprecated" in capsys.readouterr().err
    assert _parse("demo", ["--seeds", "2-4"])["seeds"] == (2, 3, 4)
    assert capsys.readouterr().err == ""
    with pytest.raises(click.UsageError, match="--seed is an old spelling of --init-seed: give only one"):
        _parse("extract", ["--dataset", "jsonl", "--root", "x", "--backbone", "hf:m", "--out", "o.h5", "--seed", "3",
                           "--init-seed", "4"])


def test_new_spellings_give_no_note(capsys):
    params = _parse("extract", ["--dataset", "jsonl", "--root", "x", "--backbone", "hf:m", "--out", "o.h5",
                                "--init-seed", "4"])
    assert params["init_seed"] == 4
    assert capsys.readouterr().err == ""


@pytest.fixture()
def cache(tmp_path):
    return EmbeddingCache.write(tmp_path / "c.h5", np.ones((30, 4), np.float32), make_metadata(30), recipe=recipe())


@pytest.mark.parametrize("args, valid", [
    (["--strategy", "margn"], "Did you mean margin"),
    (["--strategy", "margin", "--protocol", "waterbird"], "Did you mean waterbirds?"),
    (["--strategy", "margin", "--mode", "finetune", "--dataset", "jsonls", "--root", "x"], "known: amazon,"),
    (["--strategy", "margin", "--mode", "finetune", "--backbone", "tim:resnet18"], "known: hf, timm. Did you mean"),
    (["--strategy", "margin", "--mode", "finetune", "--backbone", "resnet18"], "expected <kind>:<name>"),
])
def test_a_misspelt_name_exits_2_before_any_file_is_opened(tmp_path, cache, monkeypatch, args, valid):
    import h5py

    def opened(*args, **kwargs):
        raise AssertionError("a file was opened")

    monkeypatch.setattr(h5py, "File", opened)
    out = tmp_path / "runs"
    result = CliRunner().invoke(main, ["al", "--cache", str(cache), "--out", str(out), *args])
    assert result.exit_code == 2 and valid in result.output, result.output
    assert "Invalid value for '--" in result.output and not out.exists()


def test_a_strategy_registered_later_is_valid(monkeypatch):
    from embedcache.strategies import STRATEGIES
    from embedcache.strategies.random_sampling import RandomStrategy

    monkeypatch.setitem(STRATEGIES._entries, "coin-flip", RandomStrategy)
    assert _parse("al", ["--cache", "c.h5", "--out", "o", "--strategy", "coin-flip"])["strategies"] == ("coin-flip",)


def test_library_errors_name_parameters_and_the_cli_their_flags(tmp_path, cache):
    error = ConfigError("must be at least 1", param="seed_size")
    assert str(error) == "seed_size: must be at least 1"
    copy = pickle.loads(pickle.dumps(error))  # errors of --jobs workers come back pickled
    assert (type(copy), copy.param, str(copy)) == (ConfigError, "seed_size", str(error))
    result = CliRunner().invoke(main, ["al", "--cache", str(cache), "--out", str(tmp_path / "o"), "--strategy",
                                       "random", "--seed-size", "0"])
    assert result.exit_code == 2 and result.output.endswith("Error: --seed-size: must be at least 1\n"), result.output
    mention = CacheError(f"{cache} already exists; pass `overwrite` to replace it, not `unknown_name`", param="out")
    assert error_text(mention, COMMANDS["import"]) == (f"--out: {cache} already exists; pass --overwrite to replace "
                                                       "it, not `unknown_name`")


def test_data_errors_exit_1_and_usage_errors_2(tmp_path, cache):
    missing = CliRunner().invoke(main, ["report", "--runs", str(tmp_path / "none"), "--out", str(tmp_path / "r")])
    assert missing.exit_code == 1 and missing.output.startswith("Error: "), missing.output
    no_runs = CliRunner().invoke(main, ["report", "--out", str(tmp_path / "r")])
    assert no_runs.exit_code == 2 and "Missing option '--runs'" in no_runs.output
    fp16 = CliRunner().invoke(main, ["al", "--cache", str(cache), "--out", str(tmp_path / "o"), "--strategy", "random",
                                     "--amp", "fp16"])
    assert fp16.exit_code == 2 and "Error: --amp: finetuning in float16 needs loss scaling" in fp16.output


def test_al_takes_its_options_as_the_library_configs():
    from embedcache.cli.al_command import al

    names = list(inspect.signature(al.callback).parameters)
    assert {"protocol", "learners", "data", "model"} <= set(names) and len(names) <= 12


def _raised_texts(path: Path):
    """(line, text) of every string literal inside a `raise` statement of a source file."""
    import ast

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            inner = {id(v) for part in ast.walk(node.exc) if isinstance(part, ast.JoinedStr) for v in part.values}
            for part in ast.walk(node.exc):
                if isinstance(part, ast.JoinedStr):  # an f-string: its text with {} where values go
                    yield part.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in part.values)
                elif isinstance(part, ast.Constant) and isinstance(part.value, str) and id(part) not in inner:
                    yield part.lineno, part.value


def test_library_errors_speak_of_parameters_not_flags():
    """The library names its parameters (`param=`, or `name` in backticks); only the CLI knows flags. A
    command line the user may copy (`embedcache info --check ...`) is quoted whole in backticks."""
    import re

    root = Path(__file__).resolve().parents[1]
    flag = re.compile(r"(?<![\w`-])--[a-z][a-z-]*")
    offenders = []
    for folder in ("embedcache", "kernels"):
        for path in sorted((root / folder).rglob("*.py")):
            for line, text in _raised_texts(path):
                unquoted = re.sub(r"`[^`]*`", "", text)
                if flag.search(unquoted):
                    offenders.append(f"{path.relative_to(root)}:{line}: {text!r}")
    assert not offenders, "\n".join(offenders)
