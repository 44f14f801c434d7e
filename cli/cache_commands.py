"""`embedcache extract`, `merge` and `info`: build embedding caches and look inside them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from embedcache.cli.command import Command, UsageLine
from embedcache.cli.conventions import (ADDRESS, AMP, DEVICE, DTYPE, EXECUTOR, OUT, OVERWRITE, QUIET, WORKERS,
                                        renamed)
from embedcache.cli.options import backbone_options, dataset_options, grouped, parse_shard, progress_bar


def _extract_options(batch_size, num_workers, device, amp, dtype, channels_last, shard, resume, overwrite, skip_bad):
    from embedcache.extract import ExtractOptions

    return ExtractOptions(batch_size=batch_size, num_workers=num_workers, device=device, amp=amp, dtype=dtype,
                          channels_last=channels_last, shard=parse_shard(shard), resume=resume, overwrite=overwrite,
                          skip_bad=skip_bad)


extract_options = grouped(
    "options", _extract_options,
    click.option("--batch-size", default=64, show_default=True, help="Examples per forward pass."),
    WORKERS(name="num_workers"),
    DEVICE(default="auto", show_default=True),
    AMP("Recorded in the recipe.", default="none", show_default=True),
    DTYPE(default="float16", show_default=True),
    click.option("--channels-last/--no-channels-last", default=None,
                 help="channels_last memory format for image models; default: on with CUDA."),
    click.option("--shard", default=None, metavar="I/N",
                 help="Extract only the I-th of N contiguous slices (0-based), e.g. one SLURM array task; "
                      "join the shards with `embedcache merge`."),
    click.option("--resume", is_flag=True,
                 help="Continue an interrupted extraction into --out (its rows are in --out.partial until it is "
                      "complete); a complete --out of the same recipe and dataset is left as it is."),
    OVERWRITE("Without it an existing --out is refused."),
    click.option("--skip-bad", is_flag=True,
                 help="Leave out missing or unreadable examples instead of stopping; their ids and errors are "
                      "recorded in the cache (see `embedcache info`)."),
)


@click.command(cls=Command)
@dataset_options()
@backbone_options()
@click.option("--resolution", type=int, default=None,
              help="Image side the model sees (resize and crop scale with it); default: the model's own.")
@OUT("A cache file (.h5).", required=True)
@extract_options
@click.option("--shards", type=click.IntRange(min=2), default=None, metavar="N",
              help="With --executor ray: extract N slices as tasks on the cluster, then merge them into --out.")
@EXECUTOR("this process (or one --shard).")
@ADDRESS()
@renamed("extract", "--seed", "init_seed", type=int)
@QUIET()
def extract(data, model, resolution, out, options, shards, executor, address, quiet):
    """Extract backbone embeddings of a dataset into an HDF5 cache.

    Rows follow the dataset's order and go to --out.partial, which becomes --out once complete; a
    killed run continues with --resume. Example:

    \b
      embedcache extract --dataset imagefolder --root photos/ \\
          --backbone timm:resnetv2_50x1_bit.goog_in21k --out caches/photos-bitm.h5
    """
    from embedcache.extract import extract as run_extract

    if shards is not None or executor == "ray" or address is not None:
        _extract_sharded(data, model, resolution, options, out, shards, executor, address, quiet)
        return
    dataset = data.create()
    backbone = model.create(resolution=resolution)
    unit = "img" if backbone.modality == "image" else "text"
    with progress_bar(f"extract {out.name}", unit, enabled=not quiet) as progress:
        result = run_extract(dataset, backbone, out, options, progress=progress)
    if result.already_complete:
        click.echo(f"{result.path} is already complete ({result.rows} rows): nothing to do")
        return
    new_rows = result.rows + len(result.skipped) - result.resumed_from
    rate = new_rows / result.seconds if result.seconds else float("nan")
    click.echo(f"wrote {result.path}: {result.rows} rows x {backbone.num_features} ({options.dtype}) in "
               f"{result.seconds:.1f} s, {rate:.1f} {unit}/s"
               + (f", resumed at row {result.resumed_from}" if result.resumed_from else ""))
    if result.skipped:
        click.echo(f"skipped {len(result.skipped)} bad example(s), e.g. {result.skipped[0][1]}", err=True)


def _extract_sharded(data, model, resolution, options, out, shards, executor, address, quiet):
    from embedcache.executors import create_executor
    from embedcache.sharded_extract import ExtractionSpec, extract_sharded

    if executor != "ray" or shards is None:
        raise UsageLine("--shards N with --executor ray sends N slices of the extraction to a Ray cluster; give both "
                        "(on one machine, --shard I/N extracts one slice)")
    spec = ExtractionSpec(dataclasses.replace(data, root=data.root.resolve()), model, resolution, options)
    with progress_bar(f"extract {out.name}", "shard", enabled=not quiet) as progress:
        result = extract_sharded(spec, out, shards, create_executor("ray", address=address), progress)
    if result.already_complete:
        click.echo(f"{result.path} is already complete ({result.rows} rows): nothing to do")
        return
    click.echo(f"wrote {result.path}: {result.rows} rows from {shards} shards in {result.seconds:.1f} s")
    if result.skipped:
        click.echo(f"skipped {len(result.skipped)} bad example(s), e.g. {result.skipped[0][1]}", err=True)


@click.command(cls=Command)
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@OUT("The merged cache file.", required=True)
@click.option("--virtual", is_flag=True,
              help="Write an HDF5 virtual dataset pointing at the shard files instead of copying the rows "
                   "(fast, small; keep the shards next to the merged file).")
@OVERWRITE()
def merge(shards, out, virtual, overwrite):
    """Join the shards of one extraction (made with --shard I/N) into one cache.

    The shards must all be complete, share one recipe and one dataset, and cover it exactly once.
    """
    from embedcache.cache import EmbeddingCache, merge_shards

    merge_shards(shards, out, virtual=virtual, overwrite=overwrite)
    with EmbeddingCache(out) as cache:
        click.echo(f"wrote {out}: {cache.n_rows} rows from {len(shards)} shards"
                   + (" (virtual)" if virtual else ""))


def _counts(counts: dict, limit: int = 8) -> str:
    items = sorted(counts.items(), key=lambda kv: -kv[1]) if len(counts) > limit else list(counts.items())
    text = ", ".join(f"{k} {v}" for k, v in items[:limit])
    return text + (f", ... ({len(counts) - limit} more)" if len(counts) > limit else "")


@click.command(cls=Command)
@click.argument("cache", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (for scripts).")
@click.option("--check", is_flag=True,
              help="Also read and validate the whole file (chunk checksums, shapes, unique ids, codes, recipe, "
                   "NaN/inf rows); exit 1 with the problems if any.")
def info(cache, as_json, check):
    """Summarise a cache: rows, dim, dtype, splits, labels, groups, recipe, and whether it is complete."""
    from embedcache.cache import EmbeddingCache

    with EmbeddingCache(cache) as c:
        if check:
            c.validate()
        s = c.summary()
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    state = "complete" if s["complete"] else f"INCOMPLETE ({s['rows_written']}/{s['rows']} rows written)"
    lines = [
        f"{s['path']}  {state}",
        f"  rows      {s['rows']} x {s['dim']}  {s['dtype']}  ({s['size_bytes'] / 2**20:.1f} MiB)",
        f"  splits    {_counts(s['splits'])}",
        f"  labels    {_counts(s['labels'])}",
    ]
    for name, counts in s["groups"].items():
        lines.append(f"  group     {name} ({len(counts)} values): {_counts(counts)}")
    lines += _recipe_lines(s["recipe_fingerprint"], s["recipe"])
    dataset = s["dataset"]
    lines.append(f"  dataset   {dataset.get('name')} at {dataset.get('root')} "
                 f"(manifest {str(dataset.get('manifest_sha256', ''))[:16]})")
    if "shard" in s:
        sh = s["shard"]
        lines.append(f"  shard     {sh.get('index')}/{sh.get('count')}: rows {sh.get('start')}..{sh.get('stop')} of "
                     f"{sh.get('total')}" if isinstance(sh, dict) else f"  shard     {json.dumps(sh)}")
    if "skipped" in s:
        lines.append(f"  skipped   {len(s['skipped'])}: " + "; ".join(x["id"] for x in s["skipped"][:5]))
    lines.append("  versions  " + ", ".join(f"{k} {v}" for k, v in s["versions"].items()))
    if check:
        lines.append("  check     ok" + _checksum_note(s["unchecksummed"], s["datasets"]))
    click.echo("\n".join(lines))


def _checksum_note(unchecked: list[str], datasets: int) -> str:
    if not unchecked:
        return ", every chunk checksum verified"
    if len(unchecked) == datasets:
        return (": but its bytes are not checksummed (written before embedcache stored checksums, or by another "
                "tool), so corrupted bytes cannot be detected; extract it again to add them")
    return f": but {', '.join(unchecked)} carry no checksums, so corrupted bytes there cannot be detected"


def _recipe_lines(fingerprint: str, recipe) -> list[str]:
    """Our recipes field by field; any other JSON recipe (another tool's cache) as it is."""
    from embedcache.recipe import canonical_json

    ours = ("spec", "weights", "features", "amp", "preprocess")
    if not (isinstance(recipe, dict) and all(key in recipe for key in ours)):
        return [f"  recipe    {fingerprint[:16]}  {canonical_json(recipe)}"]
    return [
        f"  recipe    {fingerprint[:16]}  {recipe['spec']}",
        f"            weights {json.dumps(recipe['weights'])}",
        f"            features {json.dumps(recipe['features'])}  amp {recipe['amp']}",
        f"            preprocess {json.dumps(recipe['preprocess'])}",
    ]
