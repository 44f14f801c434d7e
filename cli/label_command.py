"""`embedcache label`: the local labelling page."""

from __future__ import annotations

import getpass
from pathlib import Path

import click

from embedcache.cli.command import Command
from embedcache.cli.conventions import HOST, LABELS, MEDIA, OPEN, PORT, ROUND_SIZE
from embedcache.cli.options import option_group
from embedcache.errors import ConfigError
from embedcache.cli.workflow_commands import cache_argument, model_options, open_workspace, pool_options


def default_annotator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "annotator"


server_options = option_group(
    HOST(default="127.0.0.1", show_default=True),
    PORT(default=8765, show_default=True),
    OPEN(name="open_browser"),
)


def run_page(workspace, labels_path: Path, *, strategy: str, seed: int, annotator: str, round_size: int,
             media: Path | None, host: str, port: int, open_browser: bool) -> None:
    """Bind, print the URL, optionally open a browser, and serve until Ctrl-C."""
    from embedcache.workflow.app import bind, create_app, is_loopback, serve, url_of
    from embedcache.workflow.labels import LabelsFile
    from embedcache.workflow.session import LabellingSession

    labels = LabelsFile(labels_path)
    session = LabellingSession(workspace, labels, strategy=strategy, seed=seed, annotator=annotator,
                               round_size=round_size, media_root=media)
    for warning in labels.state.warnings:
        click.echo(f"Warning: {warning}", err=True)
    sock = bind(host, port)
    url = url_of(sock)
    click.echo(f"Labelling page: {url}  (labels go to {labels_path}; Ctrl-C stops)")
    if not is_loopback(host):
        click.echo(f"Warning: --host {host} makes the page reachable from other machines, without a password",
                   err=True)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    serve(create_app(session, loopback_only=is_loopback(host)), sock)


@click.command(cls=Command)
@cache_argument
@LABELS("Here, our CSV to append to (created if missing).", name="labels_path", required=True)
@MEDIA("Nothing outside it is served.")
@model_options
@pool_options
@click.option("--annotator", default=None, help="Name written with each label (default: your login name).")
@ROUND_SIZE("They are also the rounds of 'changed since the last round'.", default=10, show_default=True)
@server_options
def label(cache, labels_path, media, strategy, seed, classes, split, ignore_cache_labels, annotator, round_size, host,
          port, open_browser):
    """Label your own data on a local web page, the model suggesting what to label next.

    Shows the most informative unlabelled example (its text or image), the model's guess and how
    sure it is. Keys: 1-9 label with a class, s skips, u undoes your latest label or skip, ? shows
    help. Each label is appended to --labels and synced to disk before the next example shows;
    then the head refits and the pool is ranked again. A side panel shows labels per class, how
    many stop-set predictions changed, the stopping signals, and the groups labelled so far when
    the cache has group columns. Stop and start again at any time: it continues from the labels
    file. Several tabs never label one example twice.

    \b
    Example:
      embedcache label caches/mine.h5 --labels labels.csv --classes cat,dog --split train --open
    """
    if media is not None and not media.is_dir():
        raise ConfigError(f"{media}: no such folder", param="media")
    workspace = open_workspace(cache, split, classes, ignore_cache_labels)
    run_page(workspace, labels_path, strategy=strategy, seed=seed, annotator=annotator or default_annotator(),
             round_size=round_size, media=media, host=host, port=port, open_browser=open_browser)
