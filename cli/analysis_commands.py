"""`embedcache report`, `embedcache separability`, `embedcache tsne`: why AL helps, from run records and caches."""

from __future__ import annotations

from pathlib import Path

import click

from embedcache.cli.options import progress_bar


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder for summary.md, summary.json, figures and tables: new, empty, or an earlier report "
                   "(whose files of the same names are replaced).")
@click.option("--split", help="Evaluated split to report (default: the first one the runs evaluated, e.g. val).")
@click.option("--baseline", help="Strategy the others are compared with (default: random, when there are such runs).")
@click.option("--metric", default="accuracy", show_default=True,
              help="Metric for labels-to-reach and the final gain: accuracy, worst_group, macro_f1, "
                   "class_balanced_accuracy, or a group value such as label*place=waterbird*land.")
@click.option("--group", "groups", multiple=True,
              help="Group, or combination such as label*place, whose acquisitions to analyse. Repeatable "
                   "(default: every recorded column and label × column).")
@click.option("--allow-mixed", is_flag=True,
              help="Pool runs of one (backbone, strategy) made on different features (fingerprint or dataset) "
                   "into one curve instead of refusing.")
@click.option("--max-panels", default=16, show_default=True,
              help="Panels (or bars) per figure for groups with many values; the tables keep them all.")
@click.option("--top", default=5, show_default=True, help="Most upsampled group values listed per curve in summary.md.")
@click.option("--ci", "interval", type=click.Choice(["t", "gaussian"]), default="t", show_default=True,
              help="95 % confidence intervals over seeds: Student t (right for a handful of seeds), or the "
                   "Gaussian approximation the paper's figures use. summary.md says which.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def report(runs, out, split, baseline, metric, groups, allow_mixed, max_panels, top, interval, quiet):
    """Summarise AL runs: learning curves with 95 % CIs, labels-to-reach and final gain against a
    baseline strategy, and which groups each strategy upsampled.

    RUNS are run-record files or folders of them, or sweep roots (`embedcache sweep`): runs of several
    backbones give separate curves, and so do runs of a sweep's cells that differ in what it varied.
    Writes summary.md, summary.json (identical for the same runs), CSV tables and PNG figures:

      embedcache report runs/wb-bitm/ runs/wb-random/ --out reports/wb/
    """
    from embedcache.analysis.report import ReportConfig, write_report
    from embedcache.records import read_runs
    from embedcache.sweep_index import expand

    config = ReportConfig(split=split, baseline=baseline, metric=metric, groups=tuple(groups),
                          allow_mixed=allow_mixed, max_panels=max_panels, top=top, interval=interval)
    loaded = read_runs(expand(runs))
    try:
        with progress_bar("figures", "fig", enabled=not quiet) as bar:
            summary = write_report(loaded, out, config, progress=bar)
    except OSError as e:  # e.g. the disk filled up, or the folder became read-only, while writing
        what = e.filename or "the report"
        raise click.ClickException(f"--out {out}: cannot write {what} ({e.strerror or e})") from None
    click.echo(f"{len(summary['runs'])} runs, {len(summary['curves'])} curves on {summary['split']}: "
               f"{out / 'summary.md'}")


@click.command()
@click.argument("caches", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder for separability.csv, .png and .json: new, empty, or an earlier output of this command.")
@click.option("--target", default="label", show_default=True, help="Column the probes predict first.")
@click.option("--group", "groups", multiple=True,
              help="Group column to probe, alone and combined with the target (e.g. place → place, label*place). "
                   "Repeatable.")
@click.option("--train-split", default="train", show_default=True, help="Split the probes are fitted on.")
@click.option("--test-split", default="val", show_default=True,
              help="Split the probes are scored on (the train split again: halves of it, per class).")
@click.option("--balance/--no-balance", default=True, show_default=True,
              help="Subsample every class to the rarest one's count in each split (chance = 1 / classes).")
@click.option("--max-per-class", type=int, help="At most this many examples per class and split.")
@click.option("--seed", default=0, show_default=True, help="Seed of the subsampling.")
@click.option("--C", "C", type=float, default=1.0, show_default=True, help="The probe's inverse L2 strength.")
@click.option("--quiet", is_flag=True, help="No progress bar or table.")
def separability(caches, out, target, groups, train_split, test_split, balance, max_per_class, seed, C, quiet):
    """How linearly separable the label and group attributes are in each cache (paper Fig. 7).

    Fits the shared linear head on one split and scores it on another, per class, for the target,
    each group and target × group, side by side for several caches:

      embedcache separability caches/wb-bitm.h5 caches/wb-random.h5 --target label --group place --out reports/sep/
    """
    from embedcache.analysis.separability import ProbeConfig, separability as run_probes, write_separability

    config = ProbeConfig(train_split=train_split, test_split=test_split, balance=balance,
                         max_per_class=max_per_class, seed=seed, C=C)
    with progress_bar("probes", "probe", enabled=not quiet) as bar:
        results = run_probes(caches, target, groups, config, progress=bar)
    paths = write_separability(results, out, config)
    if not quiet:
        for r in results:
            per_class = "  ".join(f"{c} {a:.3f}" for c, a in zip(r.classes, r.class_accuracy))
            click.echo(f"{r.backbone:<40} {r.target:<20} {r.accuracy:.3f} (chance {r.chance:.3f})  {per_class}")
    click.echo(f"wrote {', '.join(str(p) for p in paths)}")


@click.command()
@click.argument("cache", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="PNG to write; the coordinates go next to it as .csv.")
@click.option("--runs", "runs", multiple=True, type=click.Path(path_type=Path),
              help="Run records or folders; the first acquisitions of one run on this cache are drawn as stars.")
@click.option("--strategy", help="Strategy of the starred run (needed when --runs hold several).")
@click.option("--run-seed", type=int, help="Seed of the starred run (default: the lowest).")
@click.option("--first", default=10, show_default=True, help="How many of the run's first acquisitions to star.")
@click.option("--color", "colour", default="label", show_default=True,
              help="Column (or combination such as label*place) that colours the points.")
@click.option("--style", help="Column whose values get different markers (at most 10 values), e.g. place.")
@click.option("--split", help="Split to map (default: the starred run's pool split, or all rows without --runs).")
@click.option("--max-points", default=5000, show_default=True, help="Subsample to this many points (stars kept).")
@click.option("--perplexity", default=30.0, show_default=True, help="t-SNE perplexity.")
@click.option("--seed", default=0, show_default=True, help="Seed of the subsample and of t-SNE.")
@click.option("--overwrite", is_flag=True, help="Replace --out (and its .csv) if they exist.")
def tsne(cache, out, runs, strategy, run_seed, first, colour, style, split, max_points, perplexity, seed, overwrite):
    """t-SNE map of a cache's embeddings, coloured by label, marker by group, with a run's first
    acquisitions as black stars (paper Fig. 14):

      embedcache tsne caches/wb-bitm.h5 --runs runs/wb-bitm/ --strategy least-confidence --color label \\
          --style place --out reports/tsne.png
    """
    from embedcache.analysis.output import write_csv
    from embedcache.analysis.tsne import TSNEConfig, map_rows, plot_tsne_map, select_run, tsne_map
    from embedcache.cache import EmbeddingCache
    from embedcache.errors import ConfigError
    from embedcache.recipe import recipe_label
    from embedcache.records import read_runs

    table = out.with_suffix(".csv")
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: expected a .png file name")
    existing = [p for p in (out, table) if p.exists()]
    if existing and not overwrite:
        raise ConfigError(f"{existing[0]} exists; pass --overwrite to replace it")
    config = TSNEConfig(perplexity=perplexity, max_points=max_points, seed=seed)
    with EmbeddingCache(cache) as c:
        c.require_complete()
        metadata, title = c.metadata(), recipe_label(c.recipe)
        starred_ids: list[str] = []
        if runs:
            run = select_run(read_runs(runs), c.fingerprint, strategy, run_seed)
            starred_ids = [i for _, i, _ in run.acquired()[:first]]
            split = split or run.header.pool_split
            title += f"; stars: first {len(starred_ids)} acquired by {run.strategy} (seed {run.seed})"
        rows, starred = map_rows(metadata, starred_ids, split, config)
        x = c.embeddings(rows, dtype="float32")
    tmap = tsne_map(x, rows, starred, metadata, colour, style, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_tsne_map(tmap, out, title)
    write_csv(table, tmap.table())
    click.echo(f"{len(rows)} points mapped: {out}, {table}")
