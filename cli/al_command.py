"""`embedcache al`: run active-learning experiments and write one run record per (strategy, seed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from embedcache.cli.executing import executor_options
from embedcache.cli.options import (Bars, backbone_options, dataset_options, finetune_options, parse_key_values,
                                    progress_bar, step_bars)

if TYPE_CHECKING:
    from embedcache.records import RoundRecord


def _per_round(value: str | None):
    if value is None:
        return None
    try:
        sizes = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected a number or a comma-separated schedule, got {value!r}",
                                 param_hint="--per-round") from None
    return sizes[0] if len(sizes) == 1 else sizes


def _percentiles(values: tuple[str, ...]):
    parsed = []
    for value in values:
        group, sep, q = value.rpartition(":")
        if not sep or not group or not q.replace(".", "", 1).isdigit():
            raise click.BadParameter(f"expected GROUP:Q such as user:10, got {value!r}", param_hint="--percentile")
        parsed.append((group, int(q) if float(q).is_integer() else float(q)))
    return tuple(parsed) or None


def round_line(record: RoundRecord, n_rounds: int, run_name: str) -> str:
    """One compact line per round: labelled count, accuracy (and worst group) per evaluated split, and
    for finetuning the steps taken and the rule that stopped them."""
    parts = [f"{run_name} round {record.round + 1:>3}/{n_rounds}", f"n={record.n_labeled:<5}"]
    for split, m in record.metrics.items():
        text = f"{split} acc {m.accuracy:.3f}"
        if m.worst_group is not None:
            text += f" worst {m.worst_group.accuracy:.3f} ({m.worst_group.value})"
        parts.append(text)
    training = record.training
    if training.stopped_by in ("loss_ratio", "schedule", "max_steps"):
        parts.append(f"{training.steps} steps ({training.stopped_by}, loss {training.loss_initial:.3g} → "
                     f"{training.loss_final:.3g})")
    return "  ".join(parts)


@click.command()
@click.option("--mode", type=click.Choice(["linear", "finetune"]), default="linear", show_default=True,
              help="linear: a logistic-regression head on cached embeddings (fast). finetune: the paper's protocol, "
                   "the whole backbone finetuned every round (needs --dataset, --root, --backbone).")
@click.option("--score-with", type=click.Choice(["linear", "finetune"]), default=None,
              help="Rank the pool with the other mode's model (default: the --mode's own): finetune mode with "
                   "--score-with linear evaluates finetuned models on examples a linear head on --cache chose; "
                   "linear mode with --score-with finetune the reverse.")
@click.option("--cache", type=click.Path(path_type=Path),
              help="Embedding cache (linear mode, and the linear side of --score-with); its ids must be the dataset's.")
@dataset_options(required=False)
@backbone_options(required=False, seed_flag="--init-seed")
@click.option("--protocol", "protocol_name", default="custom", show_default=True,
              help="Preset: waterbirds, treeperson, iwildcam, amazon, or custom (the flags below override any).")
@click.option("--strategy", "strategies", multiple=True, required=True,
              help="random, least-confidence, entropy or margin. Repeat to run several.")
@click.option("--seeds", default="0", show_default=True, help="Run seeds: 0-15, 1,11, or 0-3,10.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder for the run records (<strategy>-seed<seed>.jsonl); finished records are skipped.")
@click.option("--seed-size", type=int, help="Labelled examples before the first acquisition.")
@click.option("--seed-balanced/--no-seed-balanced", default=None,
              help="Draw the seed set with equal counts per class (or uniformly).")
@click.option("--per-round", help="Examples acquired per round, or a schedule such as 5,5,10,20 (last repeats).")
@click.option("--budget", type=int, help="Examples acquired in total, after the seed set.")
@click.option("--pool-size", type=int,
              help="Score a fresh random subsample of this many unlabelled examples each round (default: all).")
@click.option("--pool-split", help="Split the labelled and acquired examples come from (default train).")
@click.option("--eval-split", "eval_splits", multiple=True, help="Split to evaluate after each round. Repeatable.")
@click.option("--eval-every", type=int, help="Evaluate every N rounds (and always the last).")
@click.option("--group", "groups", multiple=True,
              help="Report accuracy per value of a group column, or of a combination such as label*place. "
                   "Repeatable.")
@click.option("--worst-group", help="Group (or combination) whose worst value is reported, e.g. label*place.")
@click.option("--metric", "metrics", multiple=True, type=click.Choice(["class_balanced_accuracy", "macro_f1"]),
              help="Extra metric. Repeatable.")
@click.option("--percentile", "percentiles", multiple=True, metavar="GROUP:Q",
              help="Q-th percentile of per-value accuracy of GROUP, e.g. user:10. Repeatable.")
@click.option("--C", "C", type=float, default=1.0, show_default=True,
              help="Linear mode: inverse L2 strength, as scikit-learn's LogisticRegression(C=...).")
@click.option("--standardize/--no-standardize", default=True, show_default=True,
              help="Linear mode: scale features to zero mean, unit variance (statistics of the pool).")
@click.option("--solver", type=click.Choice(["auto", "newton", "lbfgs"]), default="auto", show_default=True,
              help="Linear mode solver: Newton in the representer space (few labels), L-BFGS (many classes).")
@click.option("--device", default=None,
              help="Torch device: cpu, cuda or cuda:N (default: cpu for the linear head, auto for finetuning). Under "
                   "torchrun use cuda: each process takes cuda:LOCAL_RANK.")
@finetune_options
@click.option("--jobs", default=1, show_default=True,
              help="Runs in parallel processes (per-round lines are shown only with 1).")
@executor_options("this process, or --jobs worker processes.")
@click.option("--quiet", is_flag=True, help="No per-round lines or progress bars.")
def al(mode, score_with, cache, dataset_name, root, dataset_options, backbone, weights, init_seed, max_length,
       pooling, protocol_name, strategies, seeds, out, seed_size, seed_balanced, per_round, budget, pool_size,
       pool_split, eval_splits, eval_every, groups, worst_group, metrics, percentiles, C, standardize, solver, device,
       recipe_options, micro_batch, eval_batch_size, workers, train_seed, amp, jobs, executor, address, quiet):
    """Run active learning: for each strategy and seed, train, evaluate and acquire round by round.

    Writes one JSONL record per (strategy, seed) under --out. Examples: the paper's Waterbirds
    protocol on cached BiT embeddings, 16 seeds; and the paper's exact protocol, finetuning
    BiT-M every round (several GPUs: torchrun --nproc_per_node=4 -m embedcache.cli al ...):

    \b
      embedcache al --cache caches/wb-bitm.h5 --protocol waterbirds \\
          --strategy least-confidence --strategy random --seeds 0-15 --out runs/wb-bitm/

    \b
      embedcache al --mode finetune --dataset waterbirds --root data/waterbirds_v1.0 \\
          --backbone timm:resnetv2_50x1_bit.goog_in21k --protocol waterbirds \\
          --strategy least-confidence --strategy random --seeds 1,11 --out runs/wb-ft/ --device cuda
    """
    from embedcache.errors import ConfigError
    from embedcache.executors import create_executor
    from embedcache.experiments import FinetuneExperiment, LinearExperiment, parse_seeds, run_grid
    from embedcache.learners.distributed import is_main_process
    from embedcache.learners.finetune import FinetuneOptions
    from embedcache.learners.linear import LinearConfig
    from embedcache.protocols import get_protocol

    score_with = score_with or mode
    protocol = get_protocol(protocol_name).replace(
        seed_size=seed_size, seed_balanced=seed_balanced, per_round=_per_round(per_round), budget=budget,
        pool_size=pool_size, pool_split=pool_split, eval_splits=tuple(eval_splits) or None, eval_every=eval_every,
        groups=tuple(groups) or None, worst_group=worst_group, metrics=tuple(metrics) or None,
        percentiles=_percentiles(percentiles))
    quiet = quiet or not is_main_process()
    if address is not None and executor != "ray":
        raise ConfigError("--address names a Ray cluster: use it with --executor ray")
    runner = create_executor("ray", address=address, jobs=jobs) if executor == "ray" else None
    linear = LinearConfig(C=C, standardize=standardize, solver=solver, device=device or "cpu")
    if (mode, score_with) == ("linear", "linear"):
        if cache is None:
            raise ConfigError("--mode linear needs --cache")
        experiment = LinearExperiment(cache, linear)
    else:
        if not (dataset_name and root and backbone):
            raise ConfigError(f"--mode {mode} --score-with {score_with} finetunes: it needs --dataset, --root and "
                              "--backbone")
        options = FinetuneOptions(device=device or "auto", amp=amp, micro_batch=micro_batch,
                                  eval_batch_size=eval_batch_size, num_workers=workers, train_seed=train_seed)
        experiment = FinetuneExperiment(
            dataset_name, root, backbone, parse_key_values(dataset_options, "--option"), weights, init_seed,
            max_length, pooling, parse_key_values(recipe_options, "--recipe"), options, evaluate_with=mode,
            score_with=score_with, cache=cache, linear=linear, progress=step_bars(
                not quiet and jobs == 1 and runner is None))
    seed_list = parse_seeds(seeds)
    total = len(strategies) * len(seed_list)
    round_bars = Bars(leave=False)

    def on_round(strategy, seed, record, n_rounds):
        name = f"[{strategy} seed {seed}]"
        if record.metrics:
            round_bars.write(round_line(record, n_rounds, name))
        round_bars.update(name, record.round + 1, n_rounds, "round")

    with progress_bar("runs", "run", enabled=not quiet and (jobs > 1 or runner is not None)) as runs_bar:
        runs = run_grid(experiment, protocol, strategies, seed_list, out, jobs=jobs, executor=runner,
                        on_round=None if quiet else on_round, on_run=lambda run, done, n: runs_bar(done, n))
    if is_main_process():
        click.echo(f"{len(runs)} of {total} runs complete in {out}")


@click.command()
@click.argument("records", nargs=-1, required=True, type=click.Path(path_type=Path))
def repair(records):
    """Make run records with a broken line resumable again.

    RECORDS are run-record files or folders of them. For each record with a line that is not what a
    record holds (two writers at once, a disk error), keeps the header and the intact rounds before
    that line and saves the whole original beside it as <record>.broken (nothing is lost); rerunning
    the same `embedcache al` command then resumes the run there. A record whose header is broken is
    moved there whole and its run starts again. Intact records are left alone:

      embedcache repair runs/wb-bitm/
    """
    from embedcache.records import RecordError, repair_run, rounds_text

    files = []
    for path in records:
        found = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
        if not found:
            raise RecordError(f"{path}: no run records (*.jsonl) in this folder")
        files += found
    for path in files:
        fixed = repair_run(path)
        if fixed.backup is None:
            click.echo(f"{path}: intact (header and {fixed.rounds_kept} rounds), left as it is")
        elif not fixed.header_kept:
            click.echo(f"{path}: {fixed.problem}; no intact header, so the record was moved to {fixed.backup}; "
                       "rerunning `embedcache al` starts this run again from round 0")
        else:
            click.echo(f"{path}: {fixed.problem}; kept the header and {rounds_text(fixed.rounds_kept)}, dropped "
                       f"{fixed.lines_dropped} line(s) (the original is saved as {fixed.backup}); rerun the same "
                       f"`embedcache al` command to resume at round {fixed.rounds_kept}")
