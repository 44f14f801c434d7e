"""`embedcache al`: run active-learning experiments and write one run record per (strategy, seed)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import click

from embedcache.cli.command import Command, UsageLine, deprecated_arguments, require
from embedcache.cli.conventions import (ADDRESS, AMP, DEVICE, EXECUTOR, GROUP, JOBS, METRIC, OUT, PROTOCOL, QUIET, RUNS,
                                        SEEDS, STRATEGY, WORKERS, C)
from embedcache.cli.options import (Bars, backbone_options, dataset_options, grouped,
                                    parse_key_values, progress_bar, step_bars)

if TYPE_CHECKING:
    from embedcache.executors import Executor
    from embedcache.learners.finetune import FinetuneOptions
    from embedcache.learners.linear import LinearConfig
    from embedcache.specs import DataSpec, ModelSpec

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
    if training.stopped_by in ("loss_ratio", "val_plateau", "schedule", "max_steps"):
        parts.append(f"{training.steps} steps ({training.stopped_by}, loss {training.loss_initial:.3g} → "
                     f"{training.loss_final:.3g})")
    return "  ".join(parts)


def _protocol(protocol_name: str, seed_size, seed_balanced, seed_strategy, per_round, budget, pool_size, candidates,
              pool_split, eval_splits, eval_every, groups, worst_group, metrics, percentiles, stop_set_size):
    """The preset with the options given overriding its fields."""
    from embedcache.errors import ConfigError
    from embedcache.protocols import get_protocol
    from embedcache.strategies import cold_start_spec

    if seed_strategy is not None and seed_balanced is not None:
        raise ConfigError("give it or `seed_balanced`, not both (random and balanced are seed strategies too)",
                          param="seed_strategy")
    if seed_strategy not in (None, "random", "balanced"):
        seed_strategy = cold_start_spec(seed_strategy)
    return get_protocol(protocol_name).replace(
        seed_size=seed_size, seed_balanced=seed_balanced, seed_strategy=seed_strategy, candidates=candidates,
        per_round=_per_round(per_round), budget=budget,
        pool_size=pool_size, pool_split=pool_split, eval_splits=tuple(eval_splits) or None, eval_every=eval_every,
        groups=tuple(groups) or None, worst_group=worst_group, metrics=tuple(metrics) or None,
        percentiles=_percentiles(percentiles), stop_set_size=stop_set_size)


protocol_options = grouped(
    "protocol", _protocol,
    PROTOCOL(name="protocol_name", default="custom", show_default=True),
    click.option("--seed-size", type=int, help="Labelled examples before the first acquisition."),
    click.option("--seed-balanced/--no-seed-balanced", default=None,
                 help="Draw the seed set with equal counts per class (or uniformly)."),
    click.option("--seed-strategy", metavar="NAME[:OPTIONS]",
                 help="How the seed set is chosen: random, balanced (class-balanced: reads the pool's labels), or "
                      "without labels from the embeddings by typiclust or probcover (options as in --strategy, e.g. "
                      "probcover:delta=0.3). Default: the protocol's (--seed-balanced)."),
    click.option("--per-round", help="Examples acquired per round, or a schedule such as 5,5,10,20 (last repeats)."),
    click.option("--budget", type=int, help="Examples acquired in total, after the seed set."),
    click.option("--pool-size", type=int,
                 help="Score a fresh random subsample of this many unlabelled examples each round (default: all)."),
    click.option("--candidates", metavar="knn:K",
                 help="SEALS: score only the unlabelled examples among the K nearest neighbours of the labelled ones "
                      "(on the embeddings before the first fit; the whole pool while they are fewer than a batch)."),
    click.option("--pool-split", help="Split the labelled and acquired examples come from (default train)."),
    click.option("--eval-split", "eval_splits", multiple=True, help="Split to evaluate after each round. Repeatable."),
    click.option("--eval-every", type=int, help="Evaluate every N rounds (and always the last)."),
    GROUP("Accuracy is reported per value of each, e.g. --group place --group label*place.", name="groups"),
    click.option("--worst-group", help="Group (or combination) whose worst value is reported, e.g. label*place."),
    METRIC("Also computed every round: class_balanced_accuracy or macro_f1 (accuracy, group and percentile "
           "metrics come from the options around it). Repeatable.", name="metrics", multiple=True),
    click.option("--percentile", "percentiles", multiple=True, metavar="GROUP:Q",
                 help="Q-th percentile of per-value accuracy of GROUP, e.g. user:10. Repeatable."),
    click.option("--stop-set-size", type=int,
                 help="Pool examples (a sample drawn once from the seed) the label-free stopping signals are measured "
                      "on every round, for `report` (default 2000; 0: none)."),
)


@dataclasses.dataclass(frozen=True)
class Learners:
    """How each learner trains: the linear head, finetuning, and finetuning's recipe overrides."""

    linear: LinearConfig
    finetune: FinetuneOptions
    recipe: dict
    batch: int
    in_memory: bool


def _learners(C, standardize, solver, device, batch, in_memory, recipe_options, micro_batch, eval_batch_size,
              num_workers, train_seed, amp) -> Learners:
    from embedcache.devices import resolve_device
    from embedcache.learners.finetune import FinetuneOptions
    from embedcache.learners.linear import LinearConfig

    linear_device = "cpu" if device is None else str(resolve_device(device))
    return Learners(LinearConfig(C=C, standardize=standardize, solver=solver, device=linear_device),
                    FinetuneOptions(device=device or "auto", amp=amp, micro_batch=micro_batch,
                                    eval_batch_size=eval_batch_size, num_workers=num_workers, train_seed=train_seed),
                    parse_key_values(recipe_options, "--recipe"), batch, in_memory)


learner_options = grouped(
    "learners", _learners,
    C("Linear mode.", name="C", default=1.0, show_default=True),
    click.option("--standardize/--no-standardize", default=True, show_default=True,
                 help="Linear mode: scale features to zero mean, unit variance (statistics of the pool)."),
    click.option("--solver", type=click.Choice(["auto", "newton", "lbfgs"]), default="auto", show_default=True,
                 help="Linear mode solver: Newton in the representer space (few labels), L-BFGS (many classes)."),
    DEVICE("Default: cpu for the linear head, auto for finetuning. Under torchrun use cuda: each process takes "
           "cuda:LOCAL_RANK."),
    click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True,
                 help="Linear mode: runs stepped together by the batched engine (each round reads the pool once for "
                      "all of them; records as one by one). 1 runs them one at a time."),
    click.option("--in-memory/--stream-pool", default=True, show_default=True,
                 help="Linear mode: load the cache into memory as float32, or stream the pool from it every round "
                      "(pools larger than memory; records agree up to ties)."),
    click.option("--recipe", "recipe_options", multiple=True, metavar="KEY=VALUE",
                 help="Finetune mode: override a field of the paper's recipe (BiT for images, RoBERTa's for text), "
                      "e.g. --recipe base_lr=0.01 or --recipe schedule=10,20,30,40,50, or the early stop: "
                      "--recipe stop=val_plateau (Appendix D; plateau_split, plateau_patience, plateau_every). "
                      "Repeatable; an unknown key lists the fields."),
    click.option("--micro-batch", default=8, show_default=True,
                 help="Finetune mode: examples per forward/backward pass; the recipe's batch is accumulated from "
                      "them."),
    click.option("--eval-batch-size", default=64, show_default=True,
                 help="Finetune mode: examples per forward pass when evaluating and scoring."),
    WORKERS("Finetune mode.", name="num_workers"),
    click.option("--train-seed", default=0, show_default=True,
                 help="Finetune mode: seed of the shuffling, crops, flips and dropout (mixed with each round's "
                      "labelled set, so resumed runs train identically)."),
    AMP("Finetune mode.", default="auto", show_default=True),
)


@dataclasses.dataclass(frozen=True)
class Runner:
    """Where the runs go: `jobs` local worker processes, or `executor` (a Ray cluster)."""

    jobs: int
    executor: Executor | None

    @property
    def parallel(self) -> bool:
        return self.jobs > 1 or self.executor is not None


def _runner(jobs: int, executor: str | None, address: str | None) -> Runner:
    from embedcache.executors import create_executor

    if executor == "ray":
        return Runner(1, create_executor("ray", address=address, jobs=jobs))
    create_executor("local", address=address, jobs=jobs)  # refuses --address without ray
    return Runner(jobs, None)


runner_options = grouped(
    "runner", _runner,
    JOBS("per-round lines are shown only with 1.", default=1, show_default=True),
    EXECUTOR("this process, or --jobs worker processes.", default="local", show_default=True),
    ADDRESS(),
)


@click.command(cls=Command)
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
@backbone_options(required=False)
@STRATEGY("Repeat to run several.", name="strategies", multiple=True, required=True)
@SEEDS(default="0", show_default=True)
@OUT("A runs folder: one record per (strategy, seed), <strategy>-seed<seed>.jsonl; finished records are skipped, "
     "interrupted ones resumed.", required=True)
@protocol_options
@learner_options
@runner_options
@QUIET("No per-round lines either.")
def al(mode, score_with, cache, data, model, strategies, seeds, out, protocol, learners, runner, quiet):
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
    from embedcache.experiments import run_grid
    from embedcache.learners.distributed import is_main_process

    quiet = quiet or not is_main_process()
    experiment = _experiment(mode, score_with or mode, cache, data, model, learners,
                             progress=step_bars(not quiet and not runner.parallel))
    round_bars = Bars(leave=False)

    def on_round(strategy, seed, record, n_rounds):
        name = f"[{strategy} seed {seed}]"
        if record.metrics:
            round_bars.write(round_line(record, n_rounds, name))
        round_bars.update(name, record.round + 1, n_rounds, "round")

    with progress_bar("runs", "run", enabled=not quiet and runner.parallel) as runs_bar:
        runs = run_grid(experiment, protocol, strategies, seeds, out, jobs=runner.jobs, executor=runner.executor,
                        on_round=None if quiet else on_round, on_run=lambda run, done, n: runs_bar(done, n))
    if is_main_process():
        click.echo(f"{len(runs)} of {len(strategies) * len(seeds)} runs complete in {out}")


def _experiment(mode: str, score_with: str, cache: Path | None, data: DataSpec | None, model: ModelSpec | None,
                learners: Learners, progress):
    """The linear experiment on --cache, or a finetune experiment (with the linear head on --cache beside it
    when one side is linear)."""
    from embedcache.experiments import FinetuneExperiment, LinearExperiment

    if (mode, score_with) == ("linear", "linear"):
        if cache is None:
            raise UsageLine("--mode linear needs --cache")
        return LinearExperiment(cache, learners.linear, learners.batch, learners.in_memory)
    if data is None or model is None:
        raise UsageLine(f"--mode {mode} --score-with {score_with} finetunes: it needs --dataset, --root and "
                               "--backbone")
    return FinetuneExperiment(
        data.name, data.root, model.spec, data.options, model.weights, model.init_seed, model.max_length,
        model.pooling, learners.recipe, learners.finetune, evaluate_with=mode, score_with=score_with, cache=cache,
        linear=learners.linear, progress=progress)


@click.command(cls=Command)
@RUNS("The records to repair.")
@deprecated_arguments("records", target="runs", instead="write --runs (run inputs are --runs in every command)",
                      metavar="RECORDS", type=click.Path(path_type=Path))
def repair(runs):
    """Make run records with a broken line resumable again.

    For each record in --runs with a line that is not what a record holds (two writers at once, a
    disk error), keeps the header and the intact rounds before that line and saves the whole
    original beside it as <record>.broken (nothing is lost); rerunning the same `embedcache al`
    command then resumes the run there. A record whose header is broken is
    moved there whole and its run starts again. Intact records are left alone:

      embedcache repair --runs runs/wb-bitm/
    """
    from embedcache.records import RecordError, repair_run, rounds_text

    require(click.get_current_context(), "runs")
    files = []
    for path in runs:
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
