"""`embedcache sweep`: a whole grid of AL runs from one plan file."""

from __future__ import annotations

from pathlib import Path

import click

from embedcache.cli.command import Command
from embedcache.cli.conventions import ADDRESS, EXECUTOR, JOBS, QUIET
from embedcache.cli.options import progress_bar


def _status(run) -> str:
    if run.complete:
        return "done"
    if run.existing is not None:
        return f"{len(run.existing.rounds)}/{run.header.n_rounds} rounds"
    return "to run"


@click.command(cls=Command)
@click.argument("plan_file", metavar="PLAN", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True,
              help="Check the plan and print its grid and which runs are done; run and write nothing.")
@EXECUTOR("this process, or --jobs worker processes (default: the plan's [executor] table, else local).")
@ADDRESS()
@JOBS("local worker processes (default: the plan's [executor] jobs, else 1).")
@QUIET()
def sweep(plan_file, dry_run, executor, address, jobs, quiet):
    """Run every cell of a sweep plan: features × strategies × seeds × protocol variants.

    PLAN is a TOML file (format: README, "Sweeps"). Each cell's records go to its own folder under the
    plan's `out`, with sweep.json there listing the cells; finished records are skipped and
    interrupted ones resumed, as with `al`. Everything is checked before anything is written.
    --executor, --address and --jobs override the plan's [executor] table:

    \b
      embedcache sweep fig9.toml --dry-run
      embedcache sweep fig9.toml
      embedcache sweep fig9.toml --executor ray --address 10.0.0.1:6379
      embedcache report runs/fig9/ --out reports/fig9/
    """
    from embedcache.sweep import check_sweep, load_plan, plan_executor, run_sweep

    plan = load_plan(plan_file)
    runner = None if dry_run else plan_executor(plan, executor, address, jobs)
    checked = check_sweep(plan)
    total = sum(len(c.runs) for c in checked)
    finished = sum(run.complete for c in checked for run in c.runs)
    if dry_run:
        axes = ", ".join(f"{name} ({len(values)})" for name, values in plan.axes.items())
        click.echo(f"{plan.path}: {len(checked)} cells ({axes}) x {len(plan.strategies)} strategies x "
                   f"{len(plan.seeds)} seeds = {total} runs, {finished} done, into {plan.root}")
        for c in checked:
            click.echo(f"{c.cell.folder}/")
            for run in c.runs:
                click.echo(f"  {run.strategy}-seed{run.seed}  {_status(run)}")
        return
    with progress_bar("sweep", "run", enabled=not quiet) as bar:
        bar(finished, total)  # the bar's rate and ETA count only the runs made now

        def on_run(run, done, n):
            if done > finished:
                bar(done, n)

        runs = run_sweep(plan, runner, on_run=on_run, checked=checked)
    click.echo(f"{sum(r.complete for r in runs)} of {total} runs complete in {plan.root} ({len(checked)} cells; "
               f"{total - finished} run now)")
