"""The click classes every command uses: library errors shown with the command's own flags, and old
option spellings that keep working with a note on stderr.

A library error names a parameter (`ConfigError("must be at least 1", param="seed_size")`) and
writes others it mentions in backticks; `Command` turns both into the flags of the command that
was run, by its own click params, and prints one line: `Error: --seed-size: must be at least 1`.
A `ConfigError` is a usage error (exit 2, as click's own); every other `EmbedcacheError` is a data
error (exit 1).
"""

from __future__ import annotations

import re
from typing import Any

import click

from embedcache.errors import ConfigError, EmbedcacheError

#: A parameter a library message mentions: its name in backticks.
_MENTION = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")
#: ctx.meta key: values given through deprecated spellings, as (alias, value) pairs.
_ALIASED = "embedcache.aliased"


def flag_names(command: click.Command) -> dict[str, str]:
    """Library parameter name → how this command spells it: the first long flag of the visible option
    with that name (`--seed-size`), or the argument's metavar (`CACHE`)."""
    names: dict[str, str] = {}
    for param in command.params:
        if isinstance(param, DeprecatedAlias) or not param.name:
            continue
        if isinstance(param, click.Option):
            names.setdefault(param.name, next((o for o in param.opts if o.startswith("--")), param.opts[0]))
        else:
            names.setdefault(param.name, param.human_readable_name)
    return names


def error_text(error: EmbedcacheError, command: click.Command) -> str:
    """The library error in the command's terms: its parameter and the ones it mentions as flags."""
    flags = flag_names(command)
    text = _MENTION.sub(lambda m: flags.get(m[1], m[0]), error.message)
    if error.param:
        text = f"{flags.get(error.param, error.param)}: {text}"
    return text


class UsageLine(click.ClickException):
    """A usage error the library found: one line, `Error: ...`, and exit status 2 like click's usage errors."""

    exit_code = 2


def note(text: str) -> None:
    """A line on stderr that is not an error (deprecations)."""
    click.echo(f"Note: {text}", err=True)


class Command(click.Command):
    """A command that speaks in its own flags when the library refuses something (see the module
    docstring), and applies values given through deprecated spellings (`DeprecatedAlias`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        for alias, value in ctx.meta.pop(_ALIASED, []):
            alias.apply(ctx, value)
        return rest

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            raise UsageLine(error_text(e, self)) from None
        except EmbedcacheError as e:
            raise click.ClickException(error_text(e, self)) from None


class Group(click.Group):
    """A command group whose subcommands are `Command`s (and subgroups `Group`s)."""

    command_class = Command
    group_class = type  # subgroups made with @group.group() are of this class too


class DeprecatedAlias(click.Option):
    """An old spelling of the option `target` (the canonical option's parameter name): hidden from
    --help, it still works, and says on stderr what to write instead. With `multiple` targets the
    values add up; otherwise giving both spellings is a usage error."""

    def __init__(self, decls: list[str], target: str, instead: str, **attrs: Any):
        super().__init__(decls, hidden=True, expose_value=False, help=f"Deprecated: {instead}.", **attrs)
        self.target, self.instead = target, instead

    def handle_parse_result(self, ctx: click.Context, opts, args):
        value, args = super().handle_parse_result(ctx, opts, args)
        if ctx.get_parameter_source(self.name) == click.core.ParameterSource.COMMANDLINE:
            ctx.meta.setdefault(_ALIASED, []).append((self, value))
        return value, args

    def apply(self, ctx: click.Context, value: Any) -> None:
        command = ctx.command_path
        note(f"{command}: {self.opts[0]} is deprecated; {self.instead}")
        current = ctx.params.get(self.target)
        if isinstance(current, tuple):
            ctx.params[self.target] = (*current, *value)
        elif ctx.get_parameter_source(self.target) == click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError(f"{self.opts[0]} is an old spelling of {flag_names(ctx.command)[self.target]}: "
                                   "give only one of them", ctx)
        else:
            ctx.params[self.target] = value


def deprecated_alias(*decls: str, target: str, instead: str, **attrs: Any):
    """Decorator adding a `DeprecatedAlias` of the option named `target` (same type as the canonical one)."""
    return click.option(*decls, f"{target}__deprecated", cls=DeprecatedAlias, target=target, instead=instead,
                        **attrs)


class DeprecatedArguments(click.Argument):
    """Positional values a command took before its `--option` existed: still read (added to `target`),
    not shown in the usage line, with a note on stderr."""

    def __init__(self, decls: list[str], target: str, instead: str, **attrs: Any):
        super().__init__(decls, nargs=-1, required=False, expose_value=False, **attrs)
        self.target, self.instead = target, instead

    def get_usage_pieces(self, ctx: click.Context) -> list[str]:
        return []

    def handle_parse_result(self, ctx: click.Context, opts, args):
        value, args = super().handle_parse_result(ctx, opts, args)
        if value:
            ctx.meta.setdefault(_ALIASED, []).append((self, value))
        return value, args

    def apply(self, ctx: click.Context, value: tuple) -> None:
        note(f"{ctx.command_path}: positional {self.human_readable_name} are deprecated; {self.instead}")
        ctx.params[self.target] = (*ctx.params.get(self.target, ()), *value)


def deprecated_arguments(name: str, target: str, instead: str, **attrs: Any):
    """Decorator adding `DeprecatedArguments` (positional values that now belong to the option `target`)."""
    return click.argument(name, cls=DeprecatedArguments, target=target, instead=instead, **attrs)


def require(ctx: click.Context, name: str) -> None:
    """A usage error when the parameter `name` is empty (for options that old positional values may fill)."""
    if not ctx.params.get(name):
        raise click.UsageError(f"Missing option '{flag_names(ctx.command)[name]}'.", ctx)
