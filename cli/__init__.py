"""The `embedcache` command: thin click wrappers over library calls.

Every command is an `embedcache.cli.command.Command`: a library `ConfigError` is shown as a usage
error naming the command's own flag (exit 2), any other `EmbedcacheError` as one line, `Error: ...`
(exit 1). Options shared by several commands are defined once (`embedcache.cli.conventions`).
Heavy libraries (torch, timm, transformers) are imported inside commands, so `--help` is fast.
"""

from __future__ import annotations

import click

import embedcache
from embedcache.cli.command import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(embedcache.__version__, prog_name="embedcache")
def main() -> None:
    """Active learning with pretrained models: extract embeddings once, run many cheap AL
    experiments on them, and see why AL helps."""


# One import and one entry in the tuple per command module.
from embedcache.cli.al_command import al, repair  # noqa: E402
from embedcache.cli.analysis_commands import report, separability, tsne  # noqa: E402
from embedcache.cli.cache_commands import extract, info, merge  # noqa: E402
from embedcache.cli.dataset_commands import datasets  # noqa: E402
from embedcache.cli.demo_command import demo  # noqa: E402
from embedcache.cli.import_command import import_  # noqa: E402
from embedcache.cli.label_command import label  # noqa: E402
from embedcache.cli.neighbors_commands import neighbors  # noqa: E402
from embedcache.cli.sweep_command import sweep  # noqa: E402
from embedcache.cli.workflow_commands import WORKFLOW_COMMANDS  # noqa: E402

for command in (demo, extract, import_, merge, info, datasets, al, repair, sweep, report, separability, tsne, neighbors,
                *WORKFLOW_COMMANDS, label):
    main.add_command(command)
