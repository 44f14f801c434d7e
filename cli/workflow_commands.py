"""`embedcache suggest`, `predict` and `export-label-studio`: active learning on your own unlabelled data."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from embedcache.cli.command import Command
from embedcache.cli.conventions import (CLASSES, ID_FIELD, IGNORE_CACHE_LABELS, K, LABELS, MEDIA, OUT, OVERWRITE,
                                        QUIET, ROUND_SIZE, SEED, SPLIT, STRATEGY)
from embedcache.cli.options import option_group, progress_bar

COLD_START_NOTE = ("With no labels yet there is no model: the batch is a seeded random draw (cold start) whatever "
                   "--strategy says.")


def _classes(ctx, param, value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [c.strip() for c in value.split(",")]
    if any(not c for c in names) or len(set(names)) != len(names):
        raise click.BadParameter(f"expected distinct comma-separated names such as cat,dog; got {value!r}",
                                 ctx=ctx, param=param)
    return names


cache_argument = click.argument("cache", type=click.Path(path_type=Path, dir_okay=False))

pool_options = option_group(
    CLASSES(callback=_classes),
    SPLIT("The split whose unlabelled rows may be suggested (e.g. train); the stop set and the feature scaling come "
          "from it too. Default: every row."),
    IGNORE_CACHE_LABELS(),
)

model_options = option_group(
    STRATEGY("It ranks the pool. " + COLD_START_NOTE, default="least-confidence", show_default=True),
    SEED("the cold-start draw, tie-breaks and the stop set the stopping signals use.", default=0, show_default=True),
)


def labels_option(required: bool, help_extra: str = ""):
    return option_group(
        LABELS(help_extra, name="labels_path", required=required),
        ID_FIELD(default="embedcache_id", show_default=True),
    )


def open_workspace(cache: Path, split, classes, ignore_cache_labels: bool, quiet: bool = False):
    from embedcache.workflow.workspace import Workspace

    with progress_bar("reading embeddings", "row", enabled=not quiet) as progress:
        return Workspace(cache, split=split, classes=classes, cache_labels=not ignore_cache_labels, progress=progress)


def read_state(labels_path: Path | None, id_field: str, must_exist: bool = True):
    """The labels' state (empty without a file); warnings (e.g. a torn last row) go to stderr."""
    from embedcache.workflow.labels import LabelState, LabelsError, read_labels

    if labels_path is None or (not must_exist and not labels_path.exists()):
        return LabelState(str(labels_path or "no labels"))
    if not labels_path.exists():
        raise LabelsError(f"--labels {labels_path}: no such file")
    state = read_labels(labels_path, id_field)
    for warning in state.warnings:
        click.echo(f"Warning: {warning}", err=True)
    return state


def _signals_lines(signals, rounds: int, round_size: int) -> list[str]:
    lines = [f"Stopping signals after {rounds} round(s) of {round_size} labels:"]
    for s in signals:
        value = "n/a (too few rounds)" if s.value is None else f"{s.value:.4f}"
        lines.append(f"  {s.name:<24} {value:<22} {'STOP' if s.stop else 'continue'}  ({s.rule})")
    return lines


@click.command(cls=Command)
@cache_argument
@labels_option(required=False, help_extra="A missing file means no labels yet.")
@K("examples to suggest.", default=20, show_default=True)
@model_options
@pool_options
@ROUND_SIZE(default=10, show_default=True)
@OUT("The batch (.csv or .parquet); default: CSV on standard output.")
@OVERWRITE()
@QUIET("Nor a summary on standard error.")
def suggest(cache, labels_path, id_field, k, strategy, seed, classes, split, ignore_cache_labels, round_size, out,
            overwrite, quiet):
    """Suggest the next examples to label in your own data.

    Fits a linear head on every label so far (the cache's own, then the labels file's), ranks the
    unlabelled rows with --strategy and writes the k best: rank, id, score (higher = ask first),
    predicted label and its probability, and the text or image path when the cache's dataset is
    still readable. Skipped ids are not suggested again. The same cache, labels, strategy and seed
    give the same batch. A summary with the stopping signals goes to standard error.

    \b
    Example:
      embedcache suggest caches/mine.h5 --labels labels.csv --k 20 --strategy margin --out batch.csv
    """
    from embedcache.workflow.output import check_out, write_table
    from embedcache.workflow.suggest import suggest as run_suggest, suggestion_columns

    if out is not None:
        check_out(out, overwrite, (".csv", ".parquet"))
    state = read_state(labels_path, id_field, must_exist=False)
    workspace = open_workspace(cache, split, classes, ignore_cache_labels, quiet)
    result = run_suggest(workspace, state, k, strategy, seed, round_size)
    columns = suggestion_columns(result)
    if out is not None:
        write_table(out, columns, overwrite=overwrite)
    else:
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for row in zip(*columns.values()):
            writer.writerow(["" if v is None else f"{v:.6g}" if isinstance(v, float) else v for v in row])
    if not quiet:
        lines = [f"{len(result.suggestions)} of {result.pool} pool examples, ranked by {result.strategy}"
                 + (f" on {result.n_labels} labels ({', '.join(result.classes)})" if result.n_labels else
                    " (cold start: no labels yet)") + (f"; written to {out}" if out else "")]
        lines += _signals_lines(result.signals, result.rounds, round_size)
        click.echo("\n".join(lines), err=True)


@click.command(cls=Command)
@cache_argument
@labels_option(required=False)
@click.option("--head", "head_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Predict with a head saved by --save-head (on a cache of the same recipe) instead of fitting one "
                   "on --labels.")
@click.option("--save-head", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also save the fitted head (.safetensors: weights, label map, the cache's recipe fingerprint).")
@pool_options
@OUT("Predictions for every row (.parquet or .csv).", required=True)
@OVERWRITE("It replaces an existing --save-head file too.")
@QUIET()
def predict(cache, labels_path, id_field, head_path, save_head, classes, split, ignore_cache_labels, out, overwrite,
            quiet):
    """Predict a label for every row of a cache.

    Fits the linear head on the labels (as `suggest` does) or loads one with --head, and writes one
    row per example: id, split, predicted, probability, label (the known label, if any) and
    p_<class> for every class. A head saved with --save-head predicts on any cache of the same
    recipe fingerprint, e.g. new data extracted later; a cache of another recipe is refused.

    \b
    Examples:
      embedcache predict caches/mine.h5 --labels labels.csv --out predictions.parquet \\
          --save-head head.safetensors
      embedcache predict caches/new-photos.h5 --head head.safetensors --out new.csv
    """
    from embedcache.errors import ConfigError
    from embedcache.workflow.head import Head
    from embedcache.workflow.output import check_out, write_table
    from embedcache.workflow.suggest import fit_head, known_labels, predict as run_predict

    if (head_path is None) == (labels_path is None):
        raise click.UsageError("give --labels (fit a head) or --head (use a saved one), not both or neither")
    if head_path is not None and save_head is not None:
        raise click.UsageError("--save-head saves a head fitted on --labels; with --head the head is already saved")
    check_out(out, overwrite, (".csv", ".parquet"))
    if save_head is not None:
        check_out(save_head, overwrite, (".safetensors",), "save_head")
    known: dict[str, str] = {}
    if head_path is not None:
        head = Head.load(head_path)
    else:
        state = read_state(labels_path, id_field)
        workspace = open_workspace(cache, split, classes, ignore_cache_labels, quiet)
        rows, _, _ = workspace.training_set(state)
        if not len(rows):
            raise ConfigError(f"--labels {labels_path} holds no labels yet: label some examples first")
        head = fit_head(workspace, state)
        known = known_labels(workspace, state)
        del workspace
    with progress_bar("predicting", "row", enabled=not quiet) as progress:
        columns = run_predict(cache, head, known, progress)
    if save_head is not None:
        head.save(save_head, overwrite=overwrite)
    write_table(out, columns, overwrite=overwrite)
    if not quiet:
        click.echo(f"{len(columns['id'])} predictions written to {out}" +
                   (f"; head saved to {save_head}" if save_head else ""), err=True)


@click.command("export-label-studio", cls=Command)
@cache_argument
@labels_option(required=False, help_extra="A missing file means no labels yet (no predictions then).")
@model_options
@pool_options
@K("most informative examples to export (default: the whole pool).")
@click.option("--from-name", default="label", show_default=True,
              help="Name of the Choices tag in your Label Studio labeling config.")
@MEDIA("Label Studio serves it as local files (LOCAL_FILES_DOCUMENT_ROOT).")
@click.option("--url-prefix", default="/data/local-files/?d=", show_default=True,
              help="Images: what goes before the relative path in each image URL.")
@OUT("The tasks file (.json).", required=True)
@OVERWRITE()
@QUIET("Nor the labeling config on standard output.")
def export_label_studio(cache, labels_path, id_field, strategy, seed, classes, split, ignore_cache_labels, k,
                        from_name, media, url_prefix, out, overwrite, quiet):
    """Export the pool as Label Studio tasks, with the model's predictions.

    Each task holds the text (or an image URL), the cache id (data.embedcache_id), the strategy's
    uncertainty score (data.uncertainty, higher = ask first) and its rank, and a prediction whose
    score is the model's confidence: in Label Studio's Data Manager, sort by prediction score
    ascending (or by uncertainty descending) to label the least certain first. Label there, export
    JSON, and give that file to --labels of suggest, predict or this command. Prints a matching
    labeling config.

    \b
    Example:
      embedcache export-label-studio caches/mine.h5 --labels labels.csv --k 500 --out tasks.json
    """
    from embedcache.workflow.label_studio import export_tasks, labeling_config
    from embedcache.workflow.output import check_out, write_json

    check_out(out, overwrite, (".json",))
    state = read_state(labels_path, id_field, must_exist=False)
    workspace = open_workspace(cache, split, classes, ignore_cache_labels, quiet)
    tasks, names = export_tasks(workspace, state, strategy=strategy, seed=seed, k=k, from_name=from_name,
                                media_root=media, url_prefix=url_prefix)
    write_json(out, tasks, overwrite=overwrite)
    click.echo(f"{len(tasks)} tasks written to {out}", err=True)
    if not quiet:
        click.echo("Labeling config for these tasks (Settings → Labeling Interface → Code):", err=True)
        click.echo(labeling_config(names, workspace.modality, from_name), nl=False)


WORKFLOW_COMMANDS = (suggest, predict, export_label_studio)
