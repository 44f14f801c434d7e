"""`embedcache datasets ...`: build the paper's Waterbirds variants and Treeperson; fetch the WILDS datasets."""

from __future__ import annotations

from pathlib import Path

import click

from embedcache.cli.command import Group
from embedcache.cli.conventions import OUT, OVERWRITE, QUIET, ROOT, SEED, renamed
from embedcache.cli.options import progress_bar

_FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)


@click.group("datasets", cls=Group)
def datasets() -> None:
    """Build or fetch the paper's datasets (layouts and sources: data/README.md)."""


@datasets.command("build-waterbirds")
@click.option("--cub", required=True, type=_FOLDER,
              help="CUB_200_2011/ as it ships (images/, images.txt, train_test_split.txt), with CUB's "
                   "segmentations/ inside it or beside it.")
@click.option("--places", required=True, type=_FOLDER,
              help="Places365 folder holding b/bamboo_forest/, f/forest/broadleaf/, o/ocean/, l/lake/natural/ "
                   "(itself or in its data_large/).")
@click.option("--matched", required=True, type=click.FloatRange(0, 1),
              help="Share of each class's training birds on their own background (landbird on land, waterbird "
                   "on water): 0.95 is the released Waterbirds, the paper sweeps 0.5 ... 0.95.")
@OUT("A folder for the images, metadata.csv and build.json; read it with --dataset waterbirds-variant.",
     required=True)
@SEED("the val split, the background assignment and the background images; one seed gives identical files, and "
      "variants of one seed share val and test.", default=0, show_default=True)
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1), help="Threads composing images.")
@renamed("datasets build-waterbirds", "--workers", "threads", type=click.IntRange(1))
@OVERWRITE()
@QUIET()
def build_waterbirds(cub, places, matched, out, seed, threads, overwrite, quiet):
    """Compose a Waterbirds variant from CUB-200-2011 and Places365 (the group_DRO construction).

    Train has exactly round(matched x n) matched birds per class; val and test are 50/50. Example:

    \b
      embedcache datasets build-waterbirds --cub CUB_200_2011/ --places places365/ --matched 0.8 --out data/wb80/
    """
    from embedcache.datasets.waterbirds_variant import WaterbirdsBuild, build_waterbirds as build

    config = WaterbirdsBuild(cub=cub, places=places, out=out, matched=matched, seed=seed, threads=threads,
                             overwrite=overwrite)
    with progress_bar(f"compose {out.name}", "img", enabled=not quiet) as progress:
        record = build(config, progress=progress)
    _report(out, record)


@datasets.command("build-treeperson")
@click.option("--objects", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Visual Genome objects.json (one JSON array, an entry per image).")
@click.option("--images", required=True, multiple=True, type=_FOLDER,
              help="A Visual Genome image folder (<image_id>.jpg); repeat for VG_100K/ and VG_100K_2/.")
@OUT("A folder for images/, metadata.csv and build.json; read it with --dataset treeperson.", required=True)
@SEED("the image draw.", default=0, show_default=True)
@click.option("--val-ids", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Text file of image ids, one per line, that form the val pool (e.g. GQA's val images); the "
                   "other images form the train pool. Without it, a seeded draw puts disjoint images in each.")
@click.option("--majority", default=3700, show_default=True, type=click.IntRange(0),
              help="Train images of person & building and of no person & tree.")
@click.option("--minority", default=370, show_default=True, type=click.IntRange(0),
              help="Train images of person & tree and of no person & building.")
@click.option("--val-per-group", default=498, show_default=True, type=click.IntRange(0),
              help="Val images of each of the four person x place groups.")
@OVERWRITE()
@QUIET()
def build_treeperson(objects, images, out, seed, val_ids, majority, minority, val_per_group, overwrite, quiet):
    """Select Treeperson from Visual Genome annotations (the paper's Appendix C) and copy its images.

    Images with exactly one of a tree or a building qualify; label = a person is present. Example:

    \b
      embedcache datasets build-treeperson --objects objects.json --images VG_100K/ --images VG_100K_2/ \\
          --out data/treeperson/
    """
    from embedcache.datasets.treeperson import TreepersonBuild, build_treeperson as build

    config = TreepersonBuild(objects=objects, images=images, out=out, seed=seed, val_ids=val_ids, majority=majority,
                             minority=minority, val_per_group=val_per_group, overwrite=overwrite)
    with progress_bar(f"copy {out.name}", "img", enabled=not quiet) as progress:
        record = build(config, progress=progress)
    _report(out, record)
    if record["missing_images"]:
        click.echo(f"{record['missing_images']} of {record['qualifying_images']} qualifying images were not under "
                   "--images and were left out", err=True)


@datasets.command("download")
@click.argument("name", type=click.Choice(["waterbirds", "iwildcam", "amazon"]))
@ROOT("Here: the folder to download into; the dataset lands in its WILDS folder there (e.g. amazon_v2.1/).",
      required=True)
def download(name, root):
    """Download a WILDS-hosted dataset with the `wilds` package (pip install wilds); nothing else downloads.

    Treeperson and the Waterbirds variants are built locally (build-treeperson, build-waterbirds).
    """
    from embedcache.datasets.download import download_wilds

    folder = download_wilds(name, root)
    click.echo(f"downloaded {name} to {folder}; use --dataset {name} --root {folder}")


def _report(out: Path, record: dict) -> None:
    for split, counts in record["counts"].items():
        click.echo(f"{split:5s} " + ", ".join(f"{group} {n}" for group, n in counts.items()))
    click.echo(f"wrote {out} (metadata.csv, build.json)")
