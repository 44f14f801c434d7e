"""--executor and --address: where `sweep`, `al` and `extract` send their work (`embedcache.executors`)."""

from __future__ import annotations

from typing import Callable

import click

from embedcache.cli.options import option_group


def executor_options(local: str) -> Callable:
    """--executor local|ray (`local`: what the command does on this machine) and --address."""
    return option_group(
        click.option("--executor", type=click.Choice(["local", "ray"]), default=None,
                     help=f"local: {local} ray: tasks on a Ray cluster (pip install 'embedcache[ray]'); its machines "
                          "must see the same paths. [default: local]"),
        click.option("--address", default=None, metavar="HOST:PORT",
                     help="The Ray cluster's head (as `ray start --head` prints it), or auto; default: $RAY_ADDRESS, "
                          "else a Ray instance started for this command alone."),
    )
