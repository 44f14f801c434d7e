"""`embedcache neighbors`: FAISS neighbour diagnostics of a cache (and of the runs made on it)."""

from __future__ import annotations

from pathlib import Path

import click

from embedcache.cli.command import Command
from embedcache.cli.conventions import DEVICE, DISTANCE, K, OUT, OVERWRITE, QUIET, RUNS, SEED, SPLIT, renamed
from embedcache.cli.options import progress_bar


@click.command(cls=Command)
@click.argument("cache", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@RUNS("Made on this cache: report where their acquired points sit.")
@K("neighbours per point.", default=10, show_default=True)
@OUT("A folder for summary.json, summary.md, knn.npz (CSR graph), knn_nodes.csv and duplicates.csv.", required=True)
@DISTANCE(default="cosine", show_default=True)
@renamed("neighbors", "--metric", "distance", type=DISTANCE.type)
@SPLIT("use only its rows (repeatable, e.g. --split train --split val); default: all rows.", name="splits",
       multiple=True)
@click.option("--ivf", "ivf_nlist", type=int, default=None, metavar="NLIST",
              help="Approximate search with an IVF index of NLIST lists (for very large caches; "
                   "about sqrt(rows) is a good start). Default: exact search.")
@click.option("--nprobe", default=16, show_default=True, help="With --ivf: lists visited per query.")
@click.option("--duplicate-threshold", default=0.99, show_default=True,
              help="Rows whose cosine similarity is at least this are reported as near duplicates.")
@click.option("--duplicate-neighbors", default=32, show_default=True,
              help="Nearest rows of each row checked for duplicates.")
@DEVICE("FAISS searches on a GPU with faiss-gpu installed (auto: when it sees one).", default="auto",
        show_default=True)
@SEED("the IVF training sample and the random baseline.", default=0, show_default=True)
@OVERWRITE()
@QUIET()
def neighbors(cache, runs, k, out, distance, splits, ivf_nlist, nprobe, duplicate_threshold, duplicate_neighbors,
              device, seed, overwrite, quiet):
    """Neighbour diagnostics: kNN label agreement overall and per group, near duplicates within and
    across splits, where acquired points sit, and the kNN graph as a SciPy CSR matrix. Example:

      embedcache neighbors caches/waterbirds-bitm.h5 --runs runs/waterbirds --k 10 --out reports/nn
    """
    from embedcache.analysis.neighbors import (NeighborOptions, analyze, neighbors_folder, render_markdown,
                                               write_report)
    from embedcache.cache import EmbeddingCache
    from embedcache.records import read_runs

    options = NeighborOptions(k=k, distance=distance, splits=tuple(splits), ivf_nlist=ivf_nlist, nprobe=nprobe,
                              duplicate_threshold=duplicate_threshold, duplicate_neighbors=duplicate_neighbors,
                              device=device, seed=seed)
    options.validate()
    folder = neighbors_folder(out, overwrite)
    records = read_runs(runs) if runs else ()
    with EmbeddingCache(cache) as c, progress_bar("neighbors", "row", enabled=not quiet) as progress:
        report = analyze(c.require_complete(), options, records, progress=progress)
    paths = write_report(report, folder)
    click.echo(render_markdown(report.summary, details=False), nl=False)
    click.echo(f"wrote {', '.join(p.name for p in paths)} to {out}")
