"""`embedcache demo --quick` end to end, offline, as a new user runs it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from embedcache.cli import main


@pytest.mark.slow
def test_quick_demo_runs_offline_and_its_outputs_open(tmp_path, minilm_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--quick", "--out", str(out), "--jobs", "1"])
    assert result.exit_code == 0, result.output
    table = result.output
    for expected in ("pretrained   least-confidence", "pretrained   random", "random-init  least-confidence",
                     "random-init  random", "Linear separability", "label*category"):
        assert expected in table
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert {(c["strategy"], c["backbone"].endswith("(pretrained)")) for c in summary["curves"]} == {
        ("least-confidence", True), ("random", True), ("least-confidence", False), ("random", False)}
    assert (out / "report" / "summary.md").read_text().startswith("# Active-learning report")
    figures = sorted((out / "report").glob("*.png")) + [out / "separability" / "separability.png"]
    assert len(figures) >= 5
    for figure in figures:
        with Image.open(figure) as image:
            image.verify()
    again = CliRunner().invoke(main, ["demo", "--quick", "--out", str(out), "--jobs", "1"])
    assert again.exit_code == 0 and json.loads((out / "report" / "summary.json").read_text()) == summary
    more = CliRunner().invoke(main, ["demo", "--quick", "--out", str(out), "--jobs", "1", "--strategies",
                                     "random,least-confidence,badge,probcover:delta=0.8,alpha=0.9"])
    assert more.exit_code == 0, more.output
    for expected in ("pretrained   badge", "random-init  probcover:alpha=0.9,delta=0.8", "pretrained   random"):
        assert expected in more.output
    strategies = {c["strategy"] for c in json.loads((out / "report" / "summary.json").read_text())["curves"]}
    assert strategies == {"random", "least-confidence", "badge", "probcover:alpha=0.9,delta=0.8"}


def test_demo_strategies_are_checked_before_anything_is_written(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--quick", "--out", str(tmp_path / "demo"), "--strategies",
                                       "random,badge:beta=2"])
    assert result.exit_code == 2 and "strategy 'badge' has no option beta" in result.output
    assert not (tmp_path / "demo").exists()
