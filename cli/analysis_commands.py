"""`embedcache report`, `embedcache separability`, `embedcache tsne`: why AL helps, from run records and caches."""

from __future__ import annotations

from pathlib import Path

import click

from embedcache.cli.command import Command, deprecated_arguments, require
from embedcache.cli.conventions import GROUP, METRIC, OUT, OVERWRITE, QUIET, RUNS, SEED, SPLIT, STRATEGY, C
from embedcache.cli.options import progress_bar


@click.command(cls=Command)
@RUNS("Runs of several backbones give separate curves.")
@deprecated_arguments("legacy_runs", target="runs", instead="write --runs (run inputs are --runs in every command)",
                      metavar="RUNS", type=click.Path(path_type=Path))
@OUT("A folder for summary.md, summary.json, CSV tables and PNG figures.", required=True)
@SPLIT("the evaluated split to report (default: the first one the runs evaluated, e.g. val).")
@click.option("--baseline", help="Strategy the others are compared with (default: random, when there are such runs).")
@METRIC("The one labels-to-reach and the final gain use.", default="accuracy", show_default=True)
@GROUP("Its acquisitions are analysed (default: every recorded column and label x column).", name="groups")
@click.option("--allow-mixed", is_flag=True,
              help="Pool runs of one (backbone, strategy) made on different features (fingerprint or dataset) "
                   "into one curve instead of refusing.")
@click.option("--max-panels", default=16, show_default=True,
              help="Panels (or bars) per figure for groups with many values; the tables keep them all.")
@click.option("--top", default=5, show_default=True, help="Most upsampled group values listed per curve in summary.md.")
@click.option("--ci", "interval", type=click.Choice(["t", "gaussian"]), default="t", show_default=True,
              help="95 % confidence intervals over seeds: Student t (right for a handful of seeds), or the "
                   "Gaussian approximation the paper's figures use. summary.md says which.")
@OVERWRITE()
@QUIET()
def report(runs, out, split, baseline, metric, groups, allow_mixed, max_panels, top, interval, overwrite, quiet):
    """Summarise AL runs: learning curves with 95 % CIs, labels-to-reach and final gain against a
    baseline strategy, and which groups each strategy upsampled.

    --runs are run-record files or folders of them, or sweep roots (`embedcache sweep`): runs of several
    backbones give separate curves, and so do runs that differ in their data's parameters (a Waterbirds
    variant's matched share), their finetune recipe (e.g. its stop rule) or a sweep's axes. Runs that
    differ in their stop rule get a table comparing the rules paired by seed; a matched share (or any
    numeric data parameter) that takes several values gets upsampling drawn against it; several
    backbones get upsampling side by side per backbone.

    Writes summary.md, summary.json (identical for the same runs), CSV tables and PNG figures:

      embedcache report --runs runs/wb-bitm/ --runs runs/wb-random/ --out reports/wb/
    """
    from embedcache.analysis.report import ReportConfig, report_folder, write_report
    from embedcache.records import read_runs
    from embedcache.sweep_index import expand

    require(click.get_current_context(), "runs")
    config = ReportConfig(split=split, baseline=baseline, metric=metric, groups=tuple(groups),
                          allow_mixed=allow_mixed, max_panels=max_panels, top=top, interval=interval)
    folder = report_folder(out, overwrite)
    loaded = read_runs(expand(runs))
    try:
        with progress_bar("figures", "fig", enabled=not quiet) as bar:
            summary = write_report(loaded, folder, config, progress=bar)
    except OSError as e:  # e.g. the disk filled up, or the folder became read-only, while writing
        what = e.filename or "the report"
        raise click.ClickException(f"--out {out}: cannot write {what} ({e.strerror or e})") from None
    click.echo(f"{len(summary['runs'])} runs, {len(summary['curves'])} curves on {summary['split']}: "
               f"{out / 'summary.md'}")


@click.command(cls=Command)
@click.argument("caches", nargs=-1, required=True, type=click.Path(path_type=Path))
@OUT("A folder for separability.csv, .png and .json.", required=True)
@click.option("--target", default="label", show_default=True, help="Column the probes predict first.")
@GROUP("Each is probed alone and combined with the target (e.g. place → place, label*place).", name="groups")
@click.option("--train-split", default="train", show_default=True, help="Split the probes are fitted on.")
@click.option("--test-split", default="val", show_default=True,
              help="Split the probes are scored on (the train split again: halves of it, per class).")
@click.option("--balance/--no-balance", default=True, show_default=True,
              help="Subsample every class to the rarest one's count in each split (chance = 1 / classes).")
@click.option("--max-per-class", type=int, help="At most this many examples per class and split.")
@SEED("the subsampling.", default=0, show_default=True)
@C("Of the probes.", name="C", default=1.0, show_default=True)
@OVERWRITE()
@QUIET("No table either.")
def separability(caches, out, target, groups, train_split, test_split, balance, max_per_class, seed, C, overwrite,
                 quiet):
    """How linearly separable the label and group attributes are in each cache (paper Fig. 7).

    Fits the shared linear head on one split and scores it on another, per class, for the target,
    each group and target × group, side by side for several caches:

      embedcache separability caches/wb-bitm.h5 caches/wb-random.h5 --target label --group place --out reports/sep/
    """
    from embedcache.analysis.separability import (ProbeConfig, separability as run_probes, separability_folder,
                                                  write_separability)

    config = ProbeConfig(train_split=train_split, test_split=test_split, balance=balance,
                         max_per_class=max_per_class, seed=seed, C=C)
    folder = separability_folder(out, overwrite)
    with progress_bar("probes", "probe", enabled=not quiet) as bar:
        results = run_probes(caches, target, groups, config, progress=bar)
    paths = write_separability(results, folder, config)
    if not quiet:
        for r in results:
            per_class = "  ".join(f"{c} {a:.3f}" for c, a in zip(r.classes, r.class_accuracy))
            click.echo(f"{r.backbone:<40} {r.target:<20} {r.accuracy:.3f} (chance {r.chance:.3f})  {per_class}")
    click.echo(f"wrote {', '.join(str(p) for p in paths)}")


@click.command(cls=Command)
@click.argument("cache", type=click.Path(path_type=Path))
@OUT("A .png file; the coordinates go next to it as .csv.", required=True)
@RUNS("The first acquisitions of one run on this cache are drawn as stars.")
@STRATEGY("Of the starred run (needed when --runs hold several).")
@click.option("--run-seed", type=int, help="Seed of the starred run (default: the lowest).")
@click.option("--first", default=10, show_default=True, help="How many of the run's first acquisitions to star.")
@click.option("--color", "colour", default="label", show_default=True,
              help="Column (or combination such as label*place) that colours the points.")
@click.option("--style", help="Column whose values get different markers (at most 10 values), e.g. place.")
@SPLIT("the rows to map (default: the starred run's pool split, or all rows without --runs).")
@click.option("--max-points", default=5000, show_default=True, help="Subsample to this many points (stars kept).")
@click.option("--perplexity", default=30.0, show_default=True, help="t-SNE perplexity.")
@SEED("the subsample and t-SNE.", default=0, show_default=True)
@OVERWRITE()
def tsne(cache, out, runs, strategy, run_seed, first, colour, style, split, max_points, perplexity, seed, overwrite):
    """t-SNE map of a cache's embeddings, coloured by label, marker by group, with a run's first
    acquisitions as black stars (paper Fig. 14):

      embedcache tsne caches/wb-bitm.h5 --runs runs/wb-bitm/ --strategy least-confidence --color label \\
          --style place --out reports/tsne.png
    """
    from embedcache.analysis.tsne import TSNEConfig, tsne_files, write_tsne

    files = tsne_files(out, overwrite)
    rows = write_tsne(cache, files, TSNEConfig(perplexity=perplexity, max_points=max_points, seed=seed), runs=runs,
                      strategy=strategy, run_seed=run_seed, first=first, colour=colour, style=style, split=split)
    click.echo(f"{rows} points mapped: {', '.join(str(p) for p in files.paths)}")
