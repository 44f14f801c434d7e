"""The README's CLI reference, generated from every command's --help, and its option conventions
table, generated from `embedcache.cli.conventions`.

`python -m embedcache.cli.reference README.md` rewrites both blocks (between their markers);
`tests/test_cli.py` fails when the README's blocks differ from what this renders.
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


def blocks() -> list[tuple[str, str, str]]:
    """(start marker, end marker, content) of every generated README block."""
    from embedcache.cli import conventions

    return [(conventions.START, conventions.END, conventions.render()), (START, END, render())]


def block(text: str, start: str, end: str) -> str:
    """The README's text between `start` and `end`."""
    if start not in text or end not in text:
        raise SystemExit(f"the README has no {start} ... {end} block")
    return text.split(start, 1)[1].split(end, 1)[0]


def update(readme: Path) -> bool:
    """Rewrite the README's generated blocks; returns whether they changed."""
    text = readme.read_text(encoding="utf-8")
    new = text
    for start, end, content in blocks():
        block(new, start, end)
        head, rest = new.split(start, 1)
        new = f"{head}{start}\n{content}{end}{rest.split(end, 1)[1]}"
    readme.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    print(f"{path}: {'updated' if update(path) else 'already up to date'}")
