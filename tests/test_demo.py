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
