"""The paper's Figure 9 and Appendix G from run records: `report` reads the quantity a study varied
from the data's own description (a Waterbirds variant's matched share: build.json → cache → run
header) and draws upsampling against it per strategy and backbone, and side by side per backbone;
on synthetic caches whose matched share the test sets, from run folders or from a sweep root."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import recipe
from PIL import Image

from embedcache.analysis.report import ReportConfig, analyse, write_report
from embedcache.cache import EmbeddingCache
from embedcache.cli import main
from embedcache.datasets.synthetic import ambiguity_embeddings, write_cub_and_places
from embedcache.experiments import LinearExperiment, run_grid
from embedcache.protocols import get_protocol
from embedcache.records import read_runs
from embedcache.sweep import load_plan

SHARES = (0.5, 0.8, 0.95)
BACKBONES = {"synthetic:pre": True, "synthetic:rnd": False}  # spec → separable (a pretrained-like space)
PROTOCOL = get_protocol("waterbirds").replace(seed_size=10, per_round=5, budget=20)
STRATEGIES = ["least-confidence", "random"]
ONLY_SUBGROUPS = ReportConfig(groups=("label*place",))


def _variant_cache(path, spec, matched):
    """A cache described as `datasets build-waterbirds` + `extract` describe theirs (the build record's parameters)."""
    x, meta = ambiguity_embeddings(n_train=400, n_val=100, dim=8, matched=matched, seed=1,
                                   separable=BACKBONES[spec])
    dataset = {"name": "waterbirds-variant", "root": f"/data/wb-{matched}", "options": {}, "modality": "image",
               "rows": len(meta), "manifest_sha256": meta.fingerprint(f"wb-{matched}"),
               "build": {"matched": matched, "seed": 0, "val_fraction": 0.2}}
    weights = {"source": "pretrained" if BACKBONES[spec] else "random", "seed": 0}
    return EmbeddingCache.write(path, x, meta, recipe=recipe(spec=spec, weights=weights), dataset=dataset)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Caches of three matched shares on two backbones, and 2 strategies x 2 seeds on each, a folder per cache."""
    root = tmp_path_factory.mktemp("study")
    folders = []
    for spec in BACKBONES:
        for matched in SHARES:
            name = f"{spec.partition(':')[2]}-{matched}"
            cache = _variant_cache(root / "caches" / f"{name}.h5", spec, matched)
            run_grid(LinearExperiment(cache), PROTOCOL, STRATEGIES, [0, 1], root / "runs" / name)
            folders.append(root / "runs" / name)
    return root, folders


def _is_png(path):
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"


def _ratio_by_hand(runs, value):
    """Mean over runs of (share of the acquisitions with label*place = value) / (its share of the pool)."""
    ratios = []
    for run in runs:
        acquired = [v for r in run.rounds for v in r.acquired.values("label*place")]
        pool = run.header.pool_counts["label*place"]
        ratios.append(acquired.count(value) / len(acquired) / (pool[value] / sum(pool.values())))
    return float(np.mean(ratios))


def test_upsampling_against_the_matched_share_per_strategy_and_backbone(study, tmp_path):
    _, folders = study
    runs = read_runs(folders)
    assert {r.header.source.dataset_parameters["matched"] for r in runs} == set(SHARES)
    summary = write_report(runs, tmp_path / "report", ONLY_SUBGROUPS)
    assert sorted({c["variant"] for c in summary["curves"]}) == [f"matched={m}" for m in SHARES]
    assert len(summary["curves"]) == 2 * 2 * 3
    against, = summary["against"]
    assert against["quantity"] == "matched"
    points = {(p["backbone"].split()[0], p["strategy"], p["matched"], p["value"]): p for p in against["points"]}
    assert len(points) == 2 * 2 * 3 * 4 and all("variant" not in p for p in against["points"])
    for (backbone, strategy, matched, value), point in points.items():
        members = [r for r in runs if r.backbone.startswith(backbone) and r.strategy == strategy
                   and r.header.source.dataset_parameters["matched"] == matched]
        assert len(members) == 2 and point["ratio"]["n"] == 2
        assert point["ratio"]["mean"] == pytest.approx(_ratio_by_hand(members, value), rel=1e-5)
    # the pretrained-like space asks for the scarce mismatched birds more as they get scarcer (Figure 9)
    mismatched = [np.mean([points[("synthetic:pre", "least-confidence", m, v)]["ratio"]["mean"]
                           for v in ("landbird*water", "waterbird*land")]) for m in SHARES]
    assert mismatched[0] < mismatched[-1] and mismatched[-1] > 3
    with open(tmp_path / "report" / "upsampling-vs-matched.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(points) and {"matched", "group", "value", "ratio", "ci_low", "ci_high",
                                         "n_seeds"} <= set(rows[0])
    assert sorted({float(r["matched"]) for r in rows}) == list(SHARES)
    files = {f["file"] for f in summary["figures"]}
    assert {"upsampling-vs-matched-label-x-place.png", "upsampling-by-backbone-label-x-place.png"} <= files
    for name in ("upsampling-vs-matched-label-x-place.png", "upsampling-by-backbone-label-x-place.png"):
        _is_png(tmp_path / "report" / name)
    text = (tmp_path / "report" / "summary.md").read_text()
    assert "## Upsampling against matched" in text and "| matched=0.5 | matched=0.8 | matched=0.95 |" in text
    assert "## Upsampling per backbone" in text
    assert "| least-confidence (matched=0.95) | label*place | landbird*water |" in text


def test_one_report_of_several_backbones_sets_them_side_by_side(study, tmp_path):
    """Appendix G: the acquisitions of each backbone on the same data, per group value."""
    _, folders = study
    chosen = [f for f in folders if f.name.endswith("-0.95")]
    summary = write_report(read_runs(chosen), tmp_path / "report", ONLY_SUBGROUPS)
    assert summary["backbones"] == ["synthetic:pre (pretrained)", "synthetic:rnd (random init)"]
    assert summary["against"] == [] and all("variant" not in c for c in summary["curves"])
    ratio = {(u["backbone"].split()[0], u["strategy"], u["value"]): u["ratio"]["mean"] for u in summary["upsampling"]}
    assert ratio[("synthetic:pre", "least-confidence", "landbird*water")] > \
        ratio[("synthetic:rnd", "least-confidence", "landbird*water")]
    text = (tmp_path / "report" / "summary.md").read_text()
    assert "| strategy | group | value | synthetic:pre (pretrained) | synthetic:rnd (random init) |" in text
    _is_png(tmp_path / "report" / "upsampling-by-backbone-label-x-place.png")


def test_a_sweep_root_of_the_variants_reports_against_the_matched_share(study, tmp_path):
    root, _ = study
    plan = tmp_path / "fig9.toml"
    plan.write_text(textwrap.dedent(f"""
        out = "runs"
        caches = ["{root}/caches/pre-*.h5"]
        strategies = ["least-confidence", "random"]
        seeds = "0-1"

        [protocol]
        preset = "waterbirds"
        seed_size = 10
        budget = 20
        """), encoding="utf-8")
    swept = CliRunner().invoke(main, ["sweep", str(plan), "--quiet"])
    assert swept.exit_code == 0, swept.output
    result = CliRunner().invoke(main, ["report", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "report"),
                                       "--group", "label*place", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    # the sweep's cache axis only repeats what the caches' matched share says: curves are named by the share
    assert sorted({c["variant"] for c in summary["curves"]}) == [f"matched={m}" for m in SHARES]
    assert {p["matched"] for p in summary["against"][0]["points"]} == set(SHARES)
    assert (tmp_path / "report" / "upsampling-vs-matched.csv").is_file()


def test_the_matched_share_travels_from_build_json_through_the_cache_into_the_run_header(tmp_path):
    cub, places = write_cub_and_places(tmp_path / "sources", per_species=6, backgrounds=30)
    runner = CliRunner()
    for matched in ("0.5", "0.9"):
        built = runner.invoke(main, ["datasets", "build-waterbirds", "--cub", str(cub), "--places", str(places),
                                     "--matched", matched, "--out", str(tmp_path / f"wb{matched}"), "--quiet"])
        assert built.exit_code == 0, built.output
        extracted = runner.invoke(main, ["extract", "--dataset", "waterbirds-variant", "--root",
                                         str(tmp_path / f"wb{matched}"), "--backbone", "timm:test_efficientnet_gn",
                                         "--weights", "random", "--resolution", "32", "--device", "cpu", "--workers",
                                         "0", "--out", str(tmp_path / f"wb{matched}.h5"), "--quiet"])
        assert extracted.exit_code == 0, extracted.output
        ran = runner.invoke(main, ["al", "--cache", str(tmp_path / f"wb{matched}.h5"), "--protocol", "waterbirds",
                                   "--seed-size", "4", "--budget", "4", "--per-round", "2", "--strategy", "random",
                                   "--strategy", "least-confidence", "--seeds", "0-1", "--quiet",
                                   "--out", str(tmp_path / "runs" / matched)])
        assert ran.exit_code == 0, ran.output
    runs = read_runs([tmp_path / "runs" / "0.5", tmp_path / "runs" / "0.9"])
    assert sorted({r.header.source.dataset_parameters["matched"] for r in runs}) == [0.5, 0.9]
    against, = analyse(runs, ONLY_SUBGROUPS).against
    assert against.quantity == "matched" and against.xs() == [0.5, 0.9]


def test_the_readme_plans_of_the_appendix_experiments_load(tmp_path):
    """fig9.toml and scaling.toml as the README prints them (their caches stand-ins: only names are read)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for name, cache in (("fig9.toml", "caches/wb-0.50.h5"), ("scaling.toml", "caches/scaling/bit-m-r50x1.h5")):
        block = next(b for b in readme.split("```toml\n")[1:] if b.startswith(f"# {name}")).split("```")[0]
        (tmp_path / cache).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / cache).write_bytes(b"")
        (tmp_path / name).write_text(block, encoding="utf-8")
        plan = load_plan(tmp_path / name)
        assert plan.strategies[0].name == "least-confidence" and plan.seeds == list(range(16))
        assert [c.folder for c in plan.cells] == [Path(cache).stem]
