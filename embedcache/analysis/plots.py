"""Figures as PNG files. matplotlib is imported here only, and drives the Agg canvas through
`matplotlib.figure.Figure` (no pyplot, no global backend state), so plotting works headless and
inside any host program."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from embedcache.analysis.curves import Curve, CurveKey

_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
#: 12 qualitative colours, one per strategy: matplotlib's tab10, then black and yellow. Past 12, colours
#: repeat and a marker on each curve tells the strategies apart.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#000000", "#e6c200")
#: Legend entries beyond which the legend goes below the panels, in columns, instead of inside the first.
_LEGEND_INSIDE = 6


def _figure(panels: int, width: float = 4.2, height: float = 3.2, columns: int = 4):
    from matplotlib.figure import Figure

    cols = min(panels, columns)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def key_styles(keys: Sequence[CurveKey]) -> dict[CurveKey, dict]:
    """One colour per strategy (`PALETTE`; a marker too past its 12 colours) and one line style per backbone
    (and sweep variant), the same in every figure."""
    strategies = sorted({k.strategy for k in keys})
    backbones = sorted({(k.backbone, k.variant) for k in keys})
    styles = {}
    for k in keys:
        index = strategies.index(k.strategy)
        styles[k] = {"color": PALETTE[index % len(PALETTE)],
                     "linestyle": _LINESTYLES[backbones.index((k.backbone, k.variant)) % len(_LINESTYLES)]}
        if len(strategies) > len(PALETTE):
            styles[k].update(marker=_MARKERS[index // len(PALETTE) % len(_MARKERS)], markersize=3)
    return styles


def _legend(fig, ax, entries: int) -> None:
    """A few entries inside the first panel; more below the panels, in up to four columns."""
    if entries <= _LEGEND_INSIDE:
        ax.legend(fontsize=7)
    else:
        handles, labels = ax.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, entries), fontsize=7)


def plot_curves(path: str | Path, panels: Sequence[tuple[str, Sequence[Curve]]], ylabel: str | None,
                reference: float | None = None, marks: Mapping[CurveKey, Sequence[tuple[str, float]]] | None = None
                ) -> Path:
    """One subplot per (title, curves): each curve's mean against labels, its 95 % CI shaded;
    `ylabel` None labels each panel's y-axis with its title; `reference` draws a horizontal line
    (1 for upsampling ratios); `marks` puts named points (name, labels) on a curve, one marker each."""
    keys = sorted({c.key for _, curves in panels for c in curves})
    styles = key_styles(keys)
    fig, axes = _figure(len(panels))
    for ax, (title, curves) in zip(axes, panels):
        for curve in curves:
            style = styles[curve.key]
            ax.plot(curve.n_labeled, curve.mean, label=curve.key.label, **style)
            band = np.isfinite(curve.half_width)
            ax.fill_between(curve.n_labeled[band], (curve.mean - curve.half_width)[band],
                            (curve.mean + curve.half_width)[band], color=style["color"], alpha=0.2, linewidth=0)
            for i, (name, x) in enumerate((marks or {}).get(curve.key, [])):
                ax.plot([x], [np.interp(x, curve.n_labeled, curve.mean)], marker=_MARKERS[i % len(_MARKERS)],
                        linestyle="none", color="black", markerfacecolor="none", markersize=8, label=name)
        if reference is not None:
            ax.axhline(reference, color="grey", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("labelled examples")
        ax.set_ylabel(ylabel or title)
        ax.grid(alpha=0.3)
    if keys:
        _legend(fig, axes[0], len(keys))
    return _save(fig, path)


@dataclasses.dataclass
class BarPanel:
    """One bar chart: for each category one bar per series (name, means, CI half-widths; NaN = no
    bar or no error bar); `reference` draws a dashed line (1 for upsampling, chance for probes)."""

    title: str
    categories: Sequence[str]
    series: Sequence[tuple[str, np.ndarray, np.ndarray]]
    reference: float | None = None


def plot_bars(path: str | Path, panels: Sequence[BarPanel], ylabel: str) -> Path:
    """Grouped bar charts, one subplot per panel (series coloured from `PALETTE`)."""
    colours = PALETTE
    widest = max(len(p.categories) * max(len(p.series), 1) for p in panels)
    fig, axes = _figure(len(panels), width=max(4.5, 0.5 + 0.35 * widest), height=3.6, columns=2)
    for ax, panel in zip(axes, panels):
        x = np.arange(len(panel.categories))
        width = 0.8 / max(len(panel.series), 1)
        for i, (name, means, half) in enumerate(panel.series):
            means, half = np.asarray(means, dtype=np.float64), np.asarray(half, dtype=np.float64)
            errors = np.where(np.isfinite(half), half, 0.0) if np.isfinite(half).any() else None
            ax.bar(x + (i - (len(panel.series) - 1) / 2) * width, np.nan_to_num(means), width, yerr=errors,
                   capsize=2, label=name, color=colours[i % len(colours)])
        if panel.reference is not None:
            ax.axhline(panel.reference, color="grey", linewidth=0.8, linestyle="--")
        slanted = len(panel.categories) > 4
        ax.set_xticks(x, list(panel.categories), rotation=30 if slanted else 0, ha="right" if slanted else "center",
                      fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(panel.title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    series = max((len(p.series) for p in panels), default=0)
    if series:
        _legend(fig, next(ax for ax, p in zip(axes, panels) if len(p.series) == series), series)
    return _save(fig, path)


@dataclasses.dataclass
class PointPanel:
    """One plot of series against a numeric x: each series (name, xs, means, CI half-widths; NaN = no
    error bar) drawn as markers joined by lines with error bars; `reference` draws a dashed line."""

    title: str
    series: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]]
    reference: float | None = None


def plot_points(path: str | Path, panels: Sequence[PointPanel], xlabel: str, ylabel: str) -> Path:
    """Series against a numeric x with error bars, one subplot per panel, colours and markers per series."""
    from matplotlib import colormaps

    colours = colormaps["tab10"].colors
    fig, axes = _figure(len(panels))
    for ax, panel in zip(axes, panels):
        for i, (name, xs, means, half) in enumerate(panel.series):
            half = np.asarray(half, dtype=np.float64)
            ax.errorbar(xs, means, yerr=np.where(np.isfinite(half), half, 0.0), label=name, capsize=3,
                        color=colours[i % len(colours)], marker=_MARKERS[i % len(_MARKERS)], markersize=4)
        if panel.reference is not None:
            ax.axhline(panel.reference, color="grey", linewidth=0.8, linestyle="--")
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if panel.series:
            ax.legend(fontsize=7)
    return _save(fig, path)


def plot_scatter(path: str | Path, xy: np.ndarray, colour: np.ndarray, colour_names: Sequence[str],
                 style: np.ndarray | None, style_names: Sequence[str], starred: np.ndarray, title: str,
                 colour_title: str, style_title: str) -> Path:
    """A 2-D map: colour by one column's codes, marker by another's, starred points as black stars on top."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(colour_names) <= 10 else "tab20"]
    fig, (ax,) = _figure(1, width=7.0, height=6.0)
    style = np.zeros(len(xy), dtype=np.int64) if style is None else style
    for s in np.unique(style):
        for c in np.unique(colour):
            chosen = (style == s) & (colour == c)
            name = colour_names[c] if not style_names else f"{colour_names[c]}, {style_names[s]}"
            ax.scatter(xy[chosen, 0], xy[chosen, 1], s=6, alpha=0.6, color=cmap(c % cmap.N),
                       marker=_MARKERS[s % len(_MARKERS)], label=name if len(colour_names) <= 20 else None,
                       linewidths=0)
    if starred.any():
        ax.scatter(xy[starred, 0], xy[starred, 1], s=140, marker="*", color="black", edgecolors="white",
                   linewidths=0.6, label=f"acquired ({int(starred.sum())})", zorder=3)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    legend_title = colour_title if not style_names else f"{colour_title}, {style_title}"
    ax.legend(fontsize=7, markerscale=2, title=legend_title, title_fontsize=8, loc="best")
    return _save(fig, path)
