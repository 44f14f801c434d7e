"""`embedcache demo`: the paper's effect end to end, offline, in one command."""

from __future__ import annotations

from pathlib import Path

import click

from embedcache.cli.command import Command, note
from embedcache.cli.conventions import JOBS, OUT, OVERWRITE, SEEDS
from embedcache.cli.label_command import server_options


def _format(rows, probes, out: Path) -> str:
    names = list(dict.fromkeys(r.strategy for r in rows))
    lines = ["", f"{' vs '.join(names)} on generated reviews (label: sentiment; spurious: product category,",
             "95 % matched in the pool, 50 % in val). Means over seeds ± 95 % CI, val split.", ""]
    width = max([18, *(len(name) + 2 for name in names)])
    header = (f"{'features':<13}{'strategy':<{width}}{'labels':>6}  {'accuracy':<15}{'worst group':<15}"
              f"{'labels to reach random':<24}{'mismatched upsampled'}")
    lines += [header, "-" * len(header)]
    for r in rows:
        reach = "" if r.strategy == "random" else (
            "not reached" if r.labels_to_reach is None else f"{r.labels_to_reach:.0f} ({r.fewer_labels:.1f}x fewer)")
        upsampled = "" if r.mismatched_upsampling is None else f"{r.mismatched_upsampling:.1f}x"
        lines.append(f"{r.cache:<13}{r.strategy:<{width}}{r.labels:>6}  "
                     f"{r.accuracy[0]:.3f} ± {r.accuracy[1]:.3f}  {r.worst_group[0]:.3f} ± {r.worst_group[1]:.3f}  "
                     f"{reach:<24}{upsampled}")
    lines += ["", "Linear separability (held-out accuracy of a probe trained on train, tested on val; chance in ()):"]
    by_cache: dict[str, list] = {}
    for p in probes:
        by_cache.setdefault(p.backbone, []).append(p)
    for backbone, results in by_cache.items():
        lines.append(f"  {backbone}: " + ", ".join(f"{p.target} {p.accuracy:.3f} ({p.chance:.2f})" for p in results))
    lines += ["", f"Report: {out / 'report' / 'summary.md'} (figures and summary.json beside it); "
                  f"separability: {out / 'separability'}"]
    return "\n".join(lines)


def _seeds(ctx: click.Context, param: click.Parameter, seeds):
    """A bare number N was the count of seeds before --seeds listed them (as in al): still read so, with a note."""
    if seeds is not None and seeds.text.strip().isdigit():
        count = int(seeds.text)
        note(f"demo --seeds {count}: a count of seeds is deprecated; --seeds lists run seeds as in al, so write "
             f"--seeds 0-{max(count - 1, 0)}")
        return tuple(range(count))
    return seeds


def _strategies(ctx: click.Context, param: click.Parameter, text: str) -> tuple[str, ...]:
    """The strategies, checked as the command line is parsed (a misspelt name or option exits 2)."""
    from embedcache.errors import ConfigError
    from embedcache.strategies import parse_strategies

    try:
        return tuple(spec.text for spec in parse_strategies(text))
    except ConfigError as e:
        raise click.BadParameter(e.message, ctx, param) from None


def _label_page(out: Path, config, quick: bool, host: str, port: int, open_browser: bool) -> None:
    """The labelling page on the demo's reviews: the pretrained cache, every row unlabelled, the train split."""
    from embedcache.cli.label_command import default_annotator, run_page
    from embedcache.cli.options import Bars
    from embedcache.cli.workflow_commands import open_workspace
    from embedcache.demo import prepare_caches

    stages = Bars()
    try:
        caches = prepare_caches(out, config, names=("pretrained",),
                                progress=lambda name, done, total: stages.update(f"{name:<22}", done, total))
    finally:
        stages.close()
    workspace = open_workspace(caches["pretrained"], "train", None, ignore_cache_labels=True)
    run_page(workspace, out / ("labels-quick.csv" if quick else "labels.csv"), strategy="least-confidence", seed=0,
             annotator=default_annotator(), round_size=10, media=None, host=host, port=port,
             open_browser=open_browser)


@click.command(cls=Command)
@OUT("A folder for the dataset, caches, run records and report.", default=Path("demo"), show_default=True)
@SEEDS("Default 0-7; 0-2 with --quick.", callback=_seeds)
@click.option("--quick", is_flag=True, help="A smaller dataset, budget and fewer seeds: about a minute on 2 cores.")
@JOBS("default: CPUs, at most 4.")
@click.option("--strategies", default="least-confidence,random", show_default=True, callback=_strategies,
              metavar="NAME[:OPTIONS],...",
              help="The strategies to compare, comma-separated, with options as in al's --strategy (e.g. "
                   "random,badge,probcover:delta=0.3,typiclust); labels-to-reach compares with random when present.")
@OVERWRITE()
@click.option("--label", "label_page", is_flag=True,
              help="Instead of the simulation, open the labelling page on the generated reviews (train split) with "
                   "the pretrained MiniLM cache: label them yourself, the model asking; labels go to "
                   "OUT/labels.csv (OUT/labels-quick.csv with --quick).")
@server_options
def demo(out, seeds, quick, jobs, strategies, overwrite, label_page, host, port, open_browser):
    """Show the paper's effect end to end, offline, with real pretrained features.

    Generates a task-ambiguity review dataset, extracts all-MiniLM-L6-v2 embeddings (pretrained, and
    the same architecture at random init), runs least-confidence and random sampling on both, and
    writes the report. Whatever the runs show is what it prints. A rerun with the same sizes reuses
    the finished caches and runs in --out.

    With --label you are the annotator instead: after a handful of labels the page asks for the
    reviews whose product category contradicts their sentiment (the side panel counts them).

    \b
    Examples:
      embedcache demo --quick
      embedcache demo --label --open
    """
    from embedcache.cli.options import Bars
    from embedcache.demo import DemoConfig, default_jobs, run_demo

    config = DemoConfig.quick(seeds) if quick else DemoConfig(**({"seeds": tuple(seeds)} if seeds else {}))
    if label_page:
        _label_page(out, config, quick, host, port, open_browser)
        return
    stages = Bars()
    try:
        rows, probes = run_demo(out, config, jobs or default_jobs(),
                                progress=lambda name, done, total: stages.update(f"{name:<22}", done, total),
                                overwrite=overwrite, strategies=strategies)
    finally:
        stages.close()
    click.echo(_format(rows, probes, out))
