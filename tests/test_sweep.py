"""`embedcache sweep`: a plan file checked whole before anything is written, one folder per grid cell
with the records `al` writes, resumed and skipped like `al`, and reports grouped by what it varied."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import recipe
from runs_helpers import stable

import embedcache
from embedcache.cache import EmbeddingCache
from embedcache.cli import main
from embedcache.datasets.synthetic import ambiguity_embeddings, write_image_manifest
from embedcache.errors import ConfigError
from embedcache.executors import InProcess, RunSpec, create_executor, work_units
from embedcache.experiments import LinearExperiment
from embedcache.protocols import get_protocol
from embedcache.records import read_run, read_runs
from embedcache.sweep import check_sweep, load_plan, run_sweep

PLAN = """
out = "runs"
caches = ["caches/wb-*.h5"]
strategies = ["random", "margin"]
seeds = "0-1"

[protocol]
preset = "waterbirds"
seed_size = 10
budget = 10

[vary]
per_round = [5, [2, 8]]
"""


def _cache(path: Path, matched: float, seed: int = 1) -> Path:
    x, meta = ambiguity_embeddings(n_train=300, n_val=100, dim=8, matched=matched, seed=seed)
    return EmbeddingCache.write(path, x, meta, recipe=recipe())


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A folder with two caches of different matched shares (a tiny Figure 9 study)."""
    folder = tmp_path_factory.mktemp("study")
    _cache(folder / "caches" / "wb-0.50.h5", 0.5)
    _cache(folder / "caches" / "wb-0.95.h5", 0.95)
    return folder


def _plan(folder: Path, text: str = PLAN, name: str = "plan.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _sweep(*args) -> object:
    return CliRunner().invoke(main, ["sweep", *map(str, args), "--quiet"])


def test_every_cell_holds_the_records_al_writes_and_a_rerun_runs_nothing(study, tmp_path):
    folder = tmp_path / "s"
    (folder / "caches").mkdir(parents=True)
    for cache in (study / "caches").iterdir():
        (folder / "caches" / cache.name).symlink_to(cache)
    plan = _plan(folder)
    result = _sweep(plan)
    assert result.exit_code == 0, result.output
    assert "16 of 16 runs complete" in result.output and "(4 cells; 16 run now)" in result.output
    root = folder / "runs"
    index = json.loads((root / "sweep.json").read_text())
    assert index["axes"] == {"cache": ["wb-0.50", "wb-0.95"], "per_round": [5, [2, 8]]}
    folders = [c["folder"] for c in index["cells"]]
    assert folders == ["wb-0.50__per_round=5", "wb-0.50__per_round=2,8", "wb-0.95__per_round=5",
                       "wb-0.95__per_round=2,8"]
    assert sorted(p.name for p in root.iterdir()) == sorted(folders + ["sweep.json"])
    assert index["cells"][1]["values"] == {"cache": "wb-0.50", "per_round": [2, 8]}
    assert index["cells"][1]["about"]["cache"] == str((folder / "caches" / "wb-0.50.h5").resolve())
    for cell, cache, per_round in [(folders[1], "wb-0.50", "2,8"), (folders[2], "wb-0.95", "5")]:
        al = CliRunner().invoke(main, ["al", "--cache", str(folder / "caches" / f"{cache}.h5"), "--protocol",
                                       "waterbirds", "--seed-size", "10", "--budget", "10", "--per-round", per_round,
                                       "--strategy", "random", "--strategy", "margin", "--seeds", "0-1", "--quiet",
                                       "--out", str(tmp_path / cell)])
        assert al.exit_code == 0, al.output
        assert stable(root / cell) == stable(tmp_path / cell)
    assert [len(r.rounds) for r in read_runs([root / folders[1]])] == [3] * 4  # 2 + 8: seed round and two more

    again = _sweep(plan)
    assert again.exit_code == 0 and "16 of 16 runs complete" in again.output and "0 run now" in again.output


def test_dry_run_shows_the_grid_and_what_is_done_and_writes_nothing(study, tmp_path):
    plan = _plan(tmp_path, PLAN.replace('"caches/wb-*.h5"', f'"{study}/caches/wb-0.50.h5"'))
    dry = _sweep(plan, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "2 cells (cache (1), per_round (2)) x 2 strategies x 2 seeds = 8 runs, 0 done" in dry.output
    assert "wb-0.50__per_round=2,8/\n  random-seed0  to run" in dry.output
    assert not (tmp_path / "runs").exists()
    assert _sweep(plan).exit_code == 0
    record = tmp_path / "runs" / "wb-0.50__per_round=5" / "margin-seed1.jsonl"
    lines = record.read_text().splitlines(keepends=True)
    record.write_text("".join(lines[:2]))  # the header and round 0: an interrupted run
    (tmp_path / "runs" / "wb-0.50__per_round=5" / "random-seed0.jsonl").unlink()
    dry = _sweep(plan, "--dry-run")
    assert "8 runs, 6 done" in dry.output
    assert "  margin-seed1  1/3 rounds" in dry.output and "  random-seed0  to run" in dry.output
    resumed = _sweep(plan)
    assert resumed.exit_code == 0 and "8 of 8 runs complete" in resumed.output and "2 run now" in resumed.output
    assert len(read_run(record).rounds) == 3


def test_a_report_of_the_sweep_root_draws_one_curve_per_strategy_and_cell(study, tmp_path):
    plan = _plan(tmp_path, PLAN.replace('"caches/wb-*.h5"', f'"{study}/caches/wb-*.h5"').replace("[vary]\n", "")
                 .replace("per_round = [5, [2, 8]]", ""))
    assert _sweep(plan).exit_code == 0
    report = CliRunner().invoke(main, ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report"), "--quiet"])
    assert report.exit_code == 0, report.output
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert sorted((c["strategy"], c["variant"]) for c in summary["curves"]) == [
        ("margin", "cache=wb-0.50"), ("margin", "cache=wb-0.95"), ("random", "cache=wb-0.50"),
        ("random", "cache=wb-0.95")]
    assert {(c["variant"], c["baseline"]) for c in summary["comparisons"]} == {("cache=wb-0.50", "random"),
                                                                                ("cache=wb-0.95", "random")}
    assert "| margin (cache=wb-0.95) |" in (tmp_path / "report" / "summary.md").read_text()
    one_cell = CliRunner().invoke(main, ["report", str(tmp_path / "runs" / "wb-0.50"), "--out",
                                         str(tmp_path / "one"), "--quiet"])
    assert one_cell.exit_code == 0, one_cell.output  # one cell: nothing varies, so today's curves
    assert all("variant" not in c for c in json.loads((tmp_path / "one" / "summary.json").read_text())["curves"])


@pytest.mark.parametrize("change, message", [
    (("strategies = [", "strategy = ["), "plan.toml, strategy: unknown key; did you mean 'strategies'?"),
    (('"margin"]', '"marginal"]'), "plan.toml, strategies[1]: unknown strategy 'marginal'"),
    (('"margin"]', '{name = "margin", delta = 0.6}]'),
     "plan.toml, strategies[1]: strategy 'margin' has no option delta; it takes no options"),
    (('"margin"]', '"random"]'), "plan.toml, strategies: 'random' is listed twice"),
    (("wb-*.h5", "nothing-*.h5"), "plan.toml, caches[0]: 'caches/nothing-*.h5' matches no file"),
    (('seeds = "0-1"', 'seeds = "1-0"'), "plan.toml, seeds: '1-0': the range 1-0 runs backwards"),
    (("budget = 10", 'budget = "10"'), "plan.toml, [protocol] budget: expected an integer, got '10'"),
    (("budget = 10", "budget = 10\nper_round = 5"), "plan.toml, [vary] per_round: also set in [protocol]"),
    (("[5, [2, 8]]", "[5, 5]"), "plan.toml, [vary] per_round: lists a value twice"),
    (("[5, [2, 8]]", "[5, true]"), "plan.toml, [vary] per_round[1]: expected an integer or a list, got True"),
    (('preset = "waterbirds"', 'preset = "birds"'), "plan.toml, [protocol] preset: unknown preset 'birds'"),
    (("seed_size = 10", "seed_size = 0"), "plan.toml, [protocol] seed_size: must be at least 1"),
    (("[vary]", "[executor]\nkind = \"slurm\"\n[vary]"), "plan.toml, [executor] kind: 'slurm': choose one of local"),
    (('out = "runs"\n', ""), "plan.toml, out: missing"),
])
def test_plan_errors_name_the_file_and_key_and_nothing_is_written(tmp_path, change, message):
    (tmp_path / "caches").mkdir()
    (tmp_path / "caches" / "wb-a.h5").write_bytes(b"")  # only its name is looked at before the data is opened
    plan = _plan(tmp_path, PLAN.replace(*change))
    with pytest.raises(ConfigError) as error:
        load_plan(plan)
    assert str(error.value).startswith(f"{tmp_path}/{message}")
    result = _sweep(plan)
    assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_data_errors_name_the_cell_and_come_before_any_write(study, tmp_path):
    plan = _plan(tmp_path, PLAN.replace('"caches/wb-*.h5"', f'"{study}/caches/wb-*.h5"')
                 .replace("[5, [2, 8]]", "[5, [2, 8]]\nbudget = [10, 400]").replace("budget = 10\n", ""))
    result = _sweep(plan)
    assert result.exit_code == 2
    assert "plan.toml, cell wb-0.50__per_round=5__budget=400: seed set 10 + budget 400 = 410 examples" in result.output
    assert not (tmp_path / "runs").exists()


def test_a_root_is_new_empty_or_the_sweeps_own_and_cells_with_records_are_never_dropped(study, tmp_path):
    text = PLAN.replace('"caches/wb-*.h5"', f'"{study}/caches/wb-*.h5"')
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "notes.txt").write_text("mine")
    plan = _plan(tmp_path, text)
    refused = _sweep(plan)
    assert refused.exit_code == 2 and "holds files but no sweep.json" in refused.output
    (tmp_path / "runs" / "notes.txt").unlink()
    assert _sweep(plan).exit_code == 0
    smaller = _plan(tmp_path, text.replace("[5, [2, 8]]", "[5]"), "smaller.toml")
    refused = _sweep(smaller)
    assert refused.exit_code == 2 and "holds cells this plan does not have (wb-0.50__per_round=2,8" in refused.output
    bigger = _plan(tmp_path, text.replace("[5, [2, 8]]", "[5, [2, 8], 10]"), "bigger.toml")
    grown = _sweep(bigger)
    assert grown.exit_code == 0 and "24 of 24 runs complete" in grown.output and "8 run now" in grown.output


def test_local_worker_processes_write_the_records_of_one_process(study, tmp_path):
    path = _plan(tmp_path, PLAN.replace('"caches/wb-*.h5"', f'"{study}/caches/wb-0.95.h5"'))
    runs = embedcache.run_sweep(path, jobs=2)  # the notebook API: the plan's local executor, 2 processes
    assert len(runs) == 8 and all(run.complete for run in runs)
    plan = load_plan(path)
    inline = load_plan(_plan(tmp_path, PLAN.replace('"caches/wb-*.h5"', f'"{study}/caches/wb-0.95.h5"')
                             .replace('out = "runs"', 'out = "inline"'), "inline.toml"))
    run_sweep(inline, InProcess())
    for cell in inline.cells:
        assert stable(plan.root / cell.folder) == stable(inline.root / cell.folder)


def test_units_never_mix_experiments_and_split_to_keep_every_slot_busy(study, tmp_path):
    protocol = get_protocol("waterbirds")
    runs = [RunSpec(protocol, s, q, str(tmp_path)) for s in ("random", "margin") for q in range(8)]
    a, b = LinearExperiment(study / "caches" / "wb-0.50.h5"), LinearExperiment(study / "caches" / "wb-0.95.h5")
    units = work_units([(a, runs), (b, runs[:4])], slots=2)
    assert [len(u.runs) for u in units] == [5, 5, 5, 1, 4]  # 20 runs / (2 x 2 slots)
    assert [u.experiment.cache.name for u in units] == ["wb-0.50.h5"] * 4 + ["wb-0.95.h5"]
    assert all(u.gpus == 0 and Path(u.runs[0].out_dir).is_absolute() for u in units)


def test_ray_executor_without_ray_says_how_to_install_it(study, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'embedcache\[ray\]'"):
        create_executor("ray")
    result = _sweep(_plan(tmp_path, PLAN.replace('"caches/wb-*.h5"', f'"{study}/caches/wb-*.h5"')), "--executor", "ray")
    assert result.exit_code == 2 and "pip install 'embedcache[ray]'" in result.output
    result = CliRunner().invoke(main, ["al", "--cache", "c.h5", "--strategy", "random", "--out", str(tmp_path / "r"),
                                       "--address", "127.0.0.1:1"])
    assert result.exit_code == 2 and "--address: names a Ray cluster: use it with --executor ray" in result.output


@pytest.mark.slow
def test_a_finetune_sweep_runs_datasets_by_backbone(tmp_path):
    write_image_manifest(tmp_path / "data", n=24, size=32)
    plan = _plan(tmp_path, """
        out = "runs"
        strategies = ["least-confidence"]
        seeds = [3]

        [[datasets]]
        dataset = "manifest"
        root = "data"
        backbone = "timm:test_efficientnet_gn"
        weights = "random"

        [finetune]
        recipe = {resize = 36, crop = 32, eval_resize = 32, batch_size = 8, schedule = [1, 2]}
        device = "cpu"
        workers = 0
        micro_batch = 4

        [protocol]
        seed_size = 4
        per_round = 2
        budget = 2
        """)
    checked = check_sweep(load_plan(plan))
    assert [c.cell.folder for c in checked] == ["data-test_efficientnet_gn-random"]
    run, = run_sweep(load_plan(plan), InProcess(), checked=checked)
    assert run.complete and run.header.mode == "finetune" and [r.training.steps for r in run.rounds] == [2, 2]
    assert run.header.learner["recipe"]["schedule"] == [1, 2]
    index = json.loads((tmp_path / "runs" / "sweep.json").read_text())
    assert index["axes"] == {"dataset": ["data-test_efficientnet_gn-random"]}
