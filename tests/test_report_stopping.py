"""`report`'s stopping table: where each signal would have stopped each run and what that cost, on
hand-written records whose stop rounds are known."""

from __future__ import annotations

import csv
import json

import pytest

from embedcache.analysis.report import ReportConfig, write_report
from embedcache.records import read_runs

ROUNDS = 8


def _measures(r: int, seed: int) -> dict:
    """Round r of a run: overall uncertainty falls to 0.04 at round 3 + seed; κ is 0.5 in round 1 and 1
    after (stable over the last 3 pairs from round 4); 30 % then 1 % of predictions change in rounds 1
    and 2, none after (at most 0.5 % over the last 3 pairs from round 5); the least sure example
    never falls below 0.001."""
    return {"kappa": None if r == 0 else 0.5 if r == 1 else 1.0,
            "changed": None if r == 0 else 0.3 if r == 1 else 0.01 if r == 2 else 0.0,
            "uncertainty": 0.04 if r >= 3 + seed else 0.5, "max_uncertainty": 0.5}


def _accuracy(r: int, seed: int) -> float:
    """0.5 + 0.05 r, except that seed 2 peaks at 0.95 in round 6."""
    return 0.95 if (seed, r) == (2, 6) else 0.5 + 0.05 * r


def write_run(folder, strategy, seed, evaluated=range(ROUNDS), stopping=True):
    header = {"type": "header", "schema_version": 2, "mode": "linear", "strategy": strategy, "seed": seed,
              "fingerprint": "f" * 64, "backbone": "bb", "protocol": {"pool_split": "train", "stop_set_size": 100},
              "n_rounds": ROUNDS, "seed_ids": ["s0", "s1"], "seed_groups": {"label": ["a", "b"]},
              "pool_counts": {"label": {"a": 50, "b": 50}}, "source": {}}
    lines = [header]
    for r in range(ROUNDS):
        line = {"type": "round", "round": r, "n_labeled": 10 * (r + 1),
                "metrics": {"val": {"n": 100, "accuracy": _accuracy(r, seed)}} if r in evaluated else {},
                "acquired": {"ids": [], "scores": []}, "training": {}, "pool_size": 100, "seconds": 0.1}
        if stopping:
            line["stopping"] = _measures(r, seed)
        lines.append(line)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{strategy}-seed{seed}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture
def runs(tmp_path):
    folder = tmp_path / "runs"
    for seed in range(3):
        write_run(folder, "least-confidence", seed)
        write_run(folder, "random", seed, evaluated=(0, 2, 4, 6, 7))  # a stop at an odd round reads the next
    write_run(folder, "random", 3, stopping=False)  # made before stopping measures were recorded
    return read_runs([folder])


def test_each_signal_stops_where_its_measures_say_and_the_cost_is_against_final_and_best(runs, tmp_path):
    summary = write_report(runs, tmp_path / "report", ReportConfig())
    table = {(s["strategy"], s["signal"]): s for s in summary["stopping"]}
    lc = table[("least-confidence", "overall-uncertainty")]
    # stops after rounds 3, 4, 5 (seeds 0, 1, 2): 40, 50, 60 labels; accuracy 0.65, 0.70, 0.75 there
    assert (lc["runs"], lc["stopped"], lc["median_round"], lc["median_labels"], lc["final_labels"]) == (3, 3, 4, 50, 80)
    assert lc["at_stop"]["mean"] == pytest.approx(0.70) and lc["final"]["mean"] == pytest.approx(0.85)
    assert lc["cost_final"]["mean"] == pytest.approx(0.15) and lc["cost_final"]["ci_low"] is not None
    # best: 0.85, 0.85, 0.95 (seed 2's round 6) → best − stop 0.20, 0.15, 0.20
    assert lc["cost_best"]["mean"] == pytest.approx((0.20 + 0.15 + 0.20) / 3)
    kappa = table[("least-confidence", "stabilizing-predictions")]
    assert (kappa["stopped"], kappa["median_round"], kappa["at_stop"]["mean"]) == (3, 4, pytest.approx(0.70))
    change = table[("least-confidence", "prediction-change")]
    assert (change["median_round"], change["median_labels"]) == (5, 60)
    never = table[("least-confidence", "max-confidence")]
    assert (never["stopped"], never["median_round"], never["median_labels"]) == (0, 7, 80)
    assert never["cost_final"]["mean"] == 0.0
    # random evaluates rounds 0, 2, 4, 6, 7: stops after rounds 3 and 5 read rounds 4 and 6
    rand = table[("random", "overall-uncertainty")]
    assert (rand["runs"], rand["median_round"]) == (3, 4)
    assert rand["at_stop"]["mean"] == pytest.approx((0.70 + 0.70 + 0.95) / 3)
    assert any("1 run(s) are left out of the stopping table" in n and "random-seed3" in n for n in summary["notes"])

    out = tmp_path / "report"
    rows = list(csv.DictReader(open(out / "stopping.csv")))
    assert len(rows) == 8 and {"at_stop_mean", "cost_final_ci_low", "median_labels"} <= set(rows[0])
    per_run = list(csv.DictReader(open(out / "stopping-runs.csv")))
    assert len(per_run) == 6 * 4 and {r["record"] for r in per_run if r["signal"] == "max-confidence"} == \
        {f"{s}-seed{q}.jsonl" for s in ("least-confidence", "random") for q in range(3)}
    markdown = (out / "summary.md").read_text()
    assert "## Where the stopping signals would have stopped" in markdown
    assert "| bb | least-confidence | overall-uncertainty | 3/3 | 4 | 50 (80) | 0.700 ± " in markdown
    assert (out / "curves-stopping.png").read_bytes()[:4] == b"\x89PNG"
    assert {"stopping.csv", "stopping-runs.csv"} <= set(summary["tables"])


def test_runs_without_stopping_measures_make_no_stopping_section(tmp_path):
    folder = tmp_path / "runs"
    for seed in range(2):
        write_run(folder, "random", seed, stopping=False)
    summary = write_report(read_runs([folder]), tmp_path / "report", ReportConfig())
    assert summary["stopping"] == [] and not (tmp_path / "report" / "stopping.csv").exists()
    assert "stopping" not in (tmp_path / "report" / "summary.md").read_text().lower()
    assert not any("stopping" in n for n in summary["notes"])
