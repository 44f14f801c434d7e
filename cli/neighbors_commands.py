"""`embedcache neighbors`: FAISS neighbour diagnostics of a cache (and of the runs made on it)."""

from __future__ import annotations

from pathlib import Path

import click

from embedcache.cli.options import progress_bar


@click.command()
@click.argument("cache", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--runs", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Run records (.jsonl files or folders of them) made on this cache: report where their "
                   "acquired points sit. Repeatable.")
@click.option("--k", default=10, show_default=True, help="Neighbours per point.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for summary.json, summary.md, knn.npz (CSR graph), knn_nodes.csv and duplicates.csv.")
@click.option("--metric", type=click.Choice(["cosine", "l2"]), default="cosine", show_default=True,
              help="cosine: inner product of L2-normalised vectors (distance 1 - cos); l2: Euclidean distance.")
@click.option("--split", "splits", multiple=True,
              help="Use only the rows of this split (repeatable, e.g. --split train --split val); default: all rows.")
@click.option("--ivf", "ivf_nlist", type=int, default=None, metavar="NLIST",
              help="Approximate search with an IVF index of NLIST lists (for very large caches; "
                   "about sqrt(rows) is a good start). Default: exact search.")
@click.option("--nprobe", default=16, show_default=True, help="With --ivf: lists visited per query.")
@click.option("--duplicate-threshold", default=0.99, show_default=True,
              help="Rows whose cosine similarity is at least this are reported as near duplicates.")
@click.option("--duplicate-neighbors", default=32, show_default=True,
              help="Nearest rows of each row checked for duplicates.")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
              help="Where FAISS searches: auto uses the GPU when faiss-gpu is installed and sees one.")
@click.option("--seed", default=0, show_default=True, help="Seed of the IVF training sample and the random baseline.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def neighbors(cache, runs, k, out, metric, splits, ivf_nlist, nprobe, duplicate_threshold, duplicate_neighbors,
              device, seed, quiet):
    """Neighbour diagnostics: kNN label agreement overall and per group, near duplicates within and
    across splits, where acquired points sit, and the kNN graph as a SciPy CSR matrix. Example:

      embedcache neighbors caches/waterbirds-bitm.h5 --runs runs/waterbirds --k 10 --out reports/nn
    """
    from embedcache.analysis.neighbors import NeighborOptions, analyze, render_markdown, write_report
    from embedcache.cache import EmbeddingCache
    from embedcache.records import read_runs

    options = NeighborOptions(k=k, metric=metric, splits=tuple(splits), ivf_nlist=ivf_nlist, nprobe=nprobe,
                              duplicate_threshold=duplicate_threshold, duplicate_neighbors=duplicate_neighbors,
                              device=device, seed=seed)
    options.validate()
    records = read_runs(runs) if runs else ()
    with EmbeddingCache(cache) as c, progress_bar("neighbors", "row", enabled=not quiet) as progress:
        report = analyze(c.require_complete(), options, records, progress=progress)
    paths = write_report(report, out)
    click.echo(render_markdown(report.summary, details=False), nl=False)
    click.echo(f"wrote {', '.join(p.name for p in paths)} to {out}")
