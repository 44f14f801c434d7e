"""t-SNE maps of a cache with a run's first acquisitions marked (paper Fig. 14).

The map is scikit-learn's Barnes-Hut t-SNE (perplexity 30, PCA initialisation, learning rate
"auto", seeded: the same map every time), chosen over openTSNE by `benchmarks/tsne_compare.py`:
on 5,000 x 512 points (a Waterbirds-sized map) both reach trustworthiness 0.994; openTSNE is
about 1.4x faster (10 s against 14 s on 2 cores), too little to add a dependency for a figure.
Points: the rows of one split (or all rows), subsampled with a seed to `max_points`; the starred
rows are always kept, since t-SNE places only the points it is fitted on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from embedcache.errors import ConfigError
from embedcache.metadata import Metadata
from embedcache.metrics import group_column
from embedcache.outputs import FileSet, write_csv
from embedcache.records import RecordError, Run

#: Marker shapes available for the style column.
MAX_STYLES = 10


@dataclasses.dataclass(frozen=True)
class TSNEConfig:
    """perplexity: t-SNE's (lowered to (n - 1) / 3 for tiny inputs); max_points: subsample above
    this; seed: the subsample and the optimisation; threads: for the neighbour search (None: all)."""

    perplexity: float = 30.0
    max_points: int = 5000
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.max_points < 4:
            raise ConfigError("must be at least 4", param="max_points")
        if not self.perplexity > 0:
            raise ConfigError("must be positive", param="perplexity")


def sample_rows(candidates: np.ndarray, keep: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """All `candidates` if they fit in `max_points`; else `keep` plus a seeded uniform draw of the others (sorted)."""
    candidates = np.asarray(candidates, dtype=np.int64)
    if len(candidates) <= max_points:
        return np.sort(candidates)
    keep = np.intersect1d(keep, candidates)
    if len(keep) > max_points:
        raise ConfigError(f"{len(keep)} starred points do not fit in {max_points}", param="max_points")
    rest = np.setdiff1d(candidates, keep)
    drawn = np.random.default_rng(seed).choice(rest, size=max_points - len(keep), replace=False)
    return np.sort(np.concatenate([keep, drawn]))


def embed_2d(x: np.ndarray, config: TSNEConfig | None = None) -> np.ndarray:
    """`[n, 2]` t-SNE coordinates of the rows of `x` (see the module docstring)."""
    from sklearn.manifold import TSNE

    config = config or TSNEConfig()
    x = np.asarray(x, dtype=np.float32)
    if len(x) < 4:
        raise ConfigError(f"t-SNE needs at least 4 points, got {len(x)}")
    perplexity = min(config.perplexity, (len(x) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=config.seed,
                n_jobs=-1 if config.threads is None else config.threads).fit_transform(x)


def select_run(runs: Sequence[Run], fingerprint: str, strategy: str | None = None, run_seed: int | None = None) -> Run:
    """The run whose acquisitions are starred: made on these features, of `strategy` (needed when
    several are present) and `run_seed` (default: the lowest)."""
    ours = [r for r in runs if r.fingerprint == fingerprint]
    if not ours:
        raise RecordError(f"none of the {len(runs)} run(s) given was made on this cache (fingerprint "
                          f"{fingerprint[:12]}); they used {sorted({r.fingerprint[:12] for r in runs})}")
    strategies = sorted({r.strategy for r in ours})
    if strategy is None:
        if len(strategies) > 1:
            raise ConfigError(f"runs of several strategies ({', '.join(strategies)}): choose one with `strategy`")
        strategy = strategies[0]
    ours = [r for r in ours if r.strategy == strategy]
    if not ours:
        raise ConfigError(f"{strategy!r}: no such run on this cache; there are {strategies}", param="strategy")
    seeds = sorted({r.seed for r in ours})
    chosen = [r for r in ours if r.seed == (seeds[0] if run_seed is None else run_seed)]
    if not chosen:
        raise ConfigError(f"{run_seed}: no {strategy!r} run with that seed on this cache; seeds: {seeds}",
                          param="run_seed")
    return chosen[0]


@dataclasses.dataclass
class TSNEMap:
    """A fitted map: row indices into the cache, ids, 2-D coordinates, the colour and style
    columns' specs, codes and names (style None when not asked), and which points are starred."""

    colour_spec: str
    style_spec: str | None
    rows: np.ndarray
    ids: np.ndarray
    xy: np.ndarray
    colour: np.ndarray
    colour_names: tuple[str, ...]
    style: np.ndarray | None
    style_names: tuple[str, ...]
    starred: np.ndarray

    def table(self) -> list[dict]:
        """One dict per point, for CSV: id, x, y, colour value, style value, starred."""
        out = []
        for i in range(len(self.rows)):
            row = {"id": self.ids[i], "x": float(self.xy[i, 0]), "y": float(self.xy[i, 1]),
                   self.colour_spec: self.colour_names[self.colour[i]]}
            if self.style is not None:
                row[self.style_spec] = self.style_names[self.style[i]]
            out.append({**row, "starred": int(self.starred[i])})
        return out


def map_rows(metadata: Metadata, starred_ids: Sequence[str] = (), split: str | None = None,
             config: TSNEConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rows to map, which of them are starred): the rows of `split` (all when None), subsampled
    with the starred ones kept."""
    config = config or TSNEConfig()
    row_of = {i: r for r, i in enumerate(metadata.ids)}
    missing = [i for i in starred_ids if i not in row_of]
    if missing:
        raise ConfigError(f"{len(missing)} acquired id(s) are not in the cache, e.g. {missing[0]!r}")
    starred = np.array([row_of[i] for i in starred_ids], dtype=np.int64)
    candidates = np.arange(len(metadata)) if split is None else metadata.split_indices(split)
    outside = np.setdiff1d(starred, candidates)
    if len(outside):
        raise ConfigError(f"acquired example {metadata.ids[outside[0]]!r} is not in split {split!r}")
    rows = sample_rows(candidates, starred, config.max_points, config.seed)
    return rows, np.isin(rows, starred)


def tsne_map(x: np.ndarray, rows: np.ndarray, starred: np.ndarray, metadata: Metadata, colour: str = "label",
             style: str | None = None, config: TSNEConfig | None = None) -> TSNEMap:
    """Fit a map of `x` (the features of cache rows `rows`), coloured and styled by metadata columns."""
    colour_codes, colour_names = group_column(metadata, colour)
    style_codes, style_names = group_column(metadata, style) if style else (None, ())
    if style_codes is not None and len(np.unique(style_codes[rows])) > MAX_STYLES:
        raise ConfigError(f"{style!r} has {len(np.unique(style_codes[rows]))} values; markers can tell apart at most "
                          f"{MAX_STYLES} (use it as the `colour` instead)", param="style")
    xy = embed_2d(x, config)
    return TSNEMap(colour, style, rows, metadata.ids[rows], xy, colour_codes[rows], tuple(colour_names),
                   None if style_codes is None else style_codes[rows], tuple(style_names), np.asarray(starred, bool))


def plot_tsne_map(tmap: TSNEMap, path: str | Path, title: str) -> Path:
    """The map as a PNG: colour by `colour_spec`, marker by `style_spec`, starred points as black stars."""
    from embedcache.analysis.plots import plot_scatter

    return plot_scatter(path, tmap.xy, tmap.colour, tmap.colour_names, tmap.style, tmap.style_names, tmap.starred,
                        title, tmap.colour_spec, tmap.style_spec or "")


def tsne_files(out: str | Path, overwrite: bool = False) -> FileSet:
    """The map `out` (a .png) and its coordinates beside it (.csv), checked (see `embedcache.outputs.FileSet`)."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"{out}: expected a .png file name", param="out")
    return FileSet([out, out.with_suffix(".csv")], overwrite)


def write_tsne(cache_path: str | Path, files: FileSet, config: TSNEConfig | None = None, runs: Sequence = (),
               strategy: str | None = None, run_seed: int | None = None, first: int = 10, colour: str = "label",
               style: str | None = None, split: str | None = None) -> int:
    """Map the cache at `cache_path` and write `files` (the PNG, then its coordinates as CSV); returns the
    number of points. With `runs` (record paths), the `first` acquisitions of the run `select_run` picks
    are starred and the map shows its pool split unless `split` says otherwise."""
    from embedcache.cache import EmbeddingCache
    from embedcache.recipe import recipe_label
    from embedcache.records import read_runs

    config = config or TSNEConfig()
    with EmbeddingCache(cache_path) as cache:
        cache.require_complete()
        metadata, title = cache.metadata(), recipe_label(cache.recipe)
        starred_ids: list[str] = []
        if runs:
            run = select_run(read_runs(runs), cache.fingerprint, strategy, run_seed)
            starred_ids = [i for _, i, _ in run.acquired()[:first]]
            split = split or run.header.pool_split
            title += f"; stars: first {len(starred_ids)} acquired by {run.strategy} (seed {run.seed})"
        rows, starred = map_rows(metadata, starred_ids, split, config)
        x = cache.embeddings(rows, dtype="float32")
    tmap = tsne_map(x, rows, starred, metadata, colour, style, config)
    with files.writing() as (png, table):
        plot_tsne_map(tmap, png, title)
        write_csv(table, tmap.table())
    return len(rows)
