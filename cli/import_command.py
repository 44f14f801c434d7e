"""`embedcache import`: bring your own embeddings (.npy / .npz / Parquet + a metadata table) into a cache."""

from __future__ import annotations

from pathlib import Path

import click

from embedcache.cli.command import Command
from embedcache.cli.conventions import DTYPE, GROUP, OUT, OVERWRITE, QUIET
from embedcache.cli.options import Bars


@click.command("import", cls=Command)
@click.option("--embeddings", required=True, type=click.Path(path_type=Path),
              help="The vectors: a .npy array [rows, dim]; a .npz archive (one array holds them); or a .parquet file "
                   "with a list / fixed_size_list / fixed-shape-tensor column. Floating point, read in blocks "
                   "(a compressed .npz member is decompressed as it is read).")
@click.option("--vectors", default=None, metavar="NAME",
              help="The .npz array or Parquet column holding the vectors, e.g. --vectors embedding (default: the "
                   "only candidate).")
@click.option("--ids", default=None, metavar="NAME",
              help="The .npz array or Parquet column holding each vector's id, e.g. --ids image_id (default: one "
                   "named like --id-column, if there is one). With ids, vectors and metadata rows are matched by "
                   "id; without, row for row.")
@click.option("--metadata", required=True, type=click.Path(path_type=Path),
              help="The metadata table, .csv or .parquet: an id column, a label column (class indices or names; "
                   "empty = unknown), an optional split column, and group columns.")
@click.option("--id-column", default="id", show_default=True, help="The metadata column with the example ids, e.g. --id-column image_id.")
@click.option("--label-column", default="label", show_default=True,
              help="The metadata column with the labels: all class indices (0, 1, 2 ...) or all class names, "
                   "e.g. --label-column y.")
@click.option("--split-column", default="split", show_default=True,
              help="The metadata column with the splits (train, val, test, id_val, id_test), e.g. --split-column "
                   "fold; without it every row is train.")
@GROUP("A metadata column kept as a group, e.g. --group place; default: every column but id, label and split.",
       name="groups", metavar="COLUMN")
@click.option("--unlabelled", is_flag=True,
              help="The metadata has no label column: every label is unknown (a pool to label later).")
@click.option("--splits", default=None, metavar="NAMES",
              help="Allow these split names instead of the standard ones, e.g. --splits train,holdout.")
@click.option("--model", required=True,
              help="What made the vectors, recorded in the cache and shown in reports, e.g. "
                   "--model 'open_clip ViT-B-32 laion2b_s34b_b79k'.")
@DTYPE("Default: the file's (float64 is stored as float32).")
@OUT("A cache file, e.g. --out caches/photos-clip.h5.", required=True)
@OVERWRITE()
@QUIET()
def import_(embeddings, vectors, ids, metadata, id_column, label_column, split_column, groups, unlabelled, splits,
            model, dtype, out, overwrite, quiet):
    """Import embeddings you already have (CLIP, an embeddings API, your own model) into a cache.

    Everything is checked before the cache is written: 2-D floating-point vectors, every value finite;
    ids unique and matched with the metadata; labels all indices or all names; splits among the known
    names. The cache records the file, its format, the --model text and the sha256 of the vectors.

    \b
    Examples:
      # open_clip vectors saved with np.save; the CSV lists id,label,split in the same row order
      embedcache import --embeddings clip.npy --metadata meta.csv \\
          --model 'open_clip ViT-B-32 laion2b_s34b_b79k' --out caches/photos-clip.h5
      # one Parquet file holding ids, vectors and metadata columns
      embedcache import --embeddings vecs.parquet --vectors embedding --metadata vecs.parquet \\
          --model text-embedding-3-small --out caches/reviews.h5
    """
    from embedcache.importer import ImportOptions, import_embeddings
    from embedcache.metadata import split_names_option

    options = ImportOptions(model=model, vectors=vectors, ids=ids, id_column=id_column, label_column=label_column,
                            split_column=split_column, groups=groups or None, unlabelled=unlabelled,
                            splits=split_names_option(splits, "--splits"), dtype=dtype, overwrite=overwrite)
    bars = Bars(enabled=not quiet)
    try:
        result = import_embeddings(embeddings, metadata, out, options,
                                   progress=lambda phase, done, total: bars.update(
                                       f"{phase} {embeddings.name if phase == 'check' else out.name}", done, total,
                                       "row"))
    finally:
        bars.close()
    rate = result.rows / result.seconds if result.seconds else float("nan")
    click.echo(f"wrote {result.path}: {result.rows} rows x {result.dim} ({result.dtype}) from {embeddings} in "
               f"{result.seconds:.1f} s, {rate:,.0f} rows/s; matched by {result.aligned_by}; "
               f"recipe {result.fingerprint[:12]}")
