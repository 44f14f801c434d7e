"""The README's CLI reference, generated from every command's --help.

`python -m embedcache.cli.reference README.md` rewrites the block between the markers below;
`tests/test_cli.py` fails when the README's block differs from what this renders.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name in sorted(group.commands):
        command = group.commands[name]
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


def render() -> str:
    """Markdown: one section per command, its --help verbatim in a code block."""
    from embedcache.cli import main

    parts = []
    for path, command in _commands(main):
        name = " ".join(("embedcache", *path))
        # the group's settings (-h, --help; width), as a real invocation's context would inherit them
        settings = {**main.context_settings, "max_content_width": 100, "terminal_width": 100}
        context = click.Context(command, info_name=name, **settings)
        parts.append(f"### `{name}`\n\n```text\n{command.get_help(context).rstrip()}\n```\n")
    return "\n".join(parts)


def update(readme: Path) -> bool:
    """Rewrite the README's block; returns whether it changed."""
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{readme}: no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{render()}{END}{tail}"
    readme.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    print(f"{path}: {'updated' if update(path) else 'already up to date'}")
