"""Typed, versioned run records: records written before records were typed (schema 1, under
tests/data/records-v1/, made by make_records.py there) read, report and resume unchanged; new records
carry `schema_version` 2; every line round-trips through its dataclass."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from embedcache.analysis.report import ReportConfig, write_report
from embedcache.cli import main
from embedcache.records import (SCHEMA_VERSION, RecordError, RoundRecord, RunHeader, read_run, read_runs,
                                record_path)

V1 = Path(__file__).parent / "data" / "records-v1"
#: The `al` arguments the version-1 linear records were made with (make_records.py), without --cache and --out.
V1_ARGS = ["--seed-size", "8", "--per-round", "4", "--budget", "16", "--eval-every", "2", "--group", "place",
           "--group", "label*place", "--worst-group", "label*place", "--metric", "macro_f1", "--metric",
           "class_balanced_accuracy", "--percentile", "user:10", "--strategy", "least-confidence", "--strategy",
           "random", "--seeds", "0-1", "--quiet"]


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_version_1_records_read_into_the_typed_records():
    runs = read_runs([V1 / "linear"])
    assert [(r.strategy, r.seed) for r in runs] == [("least-confidence", 0), ("least-confidence", 1), ("random", 0),
                                                    ("random", 1)]
    run = runs[0]
    header = run.header
    assert header.schema_version == 1 and header.mode == "linear" and header.n_rounds == 5 and run.complete
    assert header.fingerprint == "92c1f67cf0a218ba73ed0e1367854f4f92e75409ed84d978f30d88e1427cf926"
    assert header.data == "e89caaa7e60507f1e5c75cc2c091f7c7f380d1484734555e065158b0de48be7a"
    assert header.backbone == "test:v1-records (random init)" and header.pool_split == "train"
    assert header.source.cache == "/tmp/gen/out/tiny.h5" and header.source.dataset["name"] == "in-memory"
    assert header.columns == ["label", "place", "user"] and len(header.seed_ids) == 8
    assert header.pool_counts["label*place"] == {"landbird*land": 26, "landbird*water": 6, "waterbird*land": 9,
                                                 "waterbird*water": 23}
    first, second, last = run.rounds[0], run.rounds[1], run.rounds[-1]
    val = first.metrics["val"]
    assert (first.round, first.n_labeled, val.n, val.accuracy) == (0, 8, 32, 0.8125)
    assert val.groups["place"]["land"].n == 17 and val.value("label*place=landbird*land") == pytest.approx(4 / 7)
    assert (val.worst_group.group, val.worst_group.value) == ("label*place", "landbird*land")
    assert set(val.extra) == {"class_balanced_accuracy", "macro_f1", "user_accuracy_p10"}
    assert val.value("worst_group") == val.worst_group.accuracy and val.value("macro_f1") == val.extra["macro_f1"]
    assert second.metrics == {} and run.curve("val")[0].tolist() == [8, 16, 24]  # evaluated every 2nd round and last
    assert (first.training.steps, first.training.stopped_by) == (7, "converged")
    assert first.acquired.ids == ["ex023", "ex013", "ex067", "ex062"] and first.pool_size == 56
    assert first.acquired.values("label*place") == ["waterbird*water", "waterbird*water", "waterbird*water",
                                                     "landbird*land"]
    assert len(last.acquired) == 0 and len(run.labeled_ids()) == 24

    hybrid = read_run(V1 / "hybrid" / "least-confidence-seed0.jsonl")
    assert hybrid.header.mode == "hybrid" and hybrid.header.learner["score_with"]["learner"] == "linear"
    assert hybrid.header.source.linear["fingerprint"] == hybrid.header.learner["linear_features"]
    assert hybrid.header.source.dataset["name"] == "manifest" and hybrid.header.source.cache is None
    assert hybrid.header.source.dataset_options == {"unlabelled": False, "splits": None, "allow_outside_root": False}
    training = hybrid.rounds[0].training
    assert (training.steps, training.stopped_by, training.scorer.stopped_by) == (3, "schedule", "converged")


@pytest.mark.parametrize("record", sorted(V1.glob("*/*.jsonl")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_line_round_trips_through_its_dataclass(record):
    """Rounds are the same in both versions, byte for byte; a header is rewritten in version 2:
    `schema_version` instead of `schema`, and `source` without what the header says already."""
    header, *rounds = [json.loads(line) for line in _lines(record)]
    for line, parsed in zip(_lines(record)[1:], rounds):
        again = RoundRecord.from_dict(parsed).to_dict()
        assert json.dumps(again, separators=(",", ":")).encode() + b"\n" == line
    typed = RunHeader.from_dict(header)
    rewritten = typed.to_dict()
    expected = {("schema_version" if k == "schema" else k): (SCHEMA_VERSION if k == "schema" else v)
                for k, v in header.items()}
    expected["source"] = {k: v for k, v in header["source"].items() if k not in ("fingerprint", "backbone", "data")}
    assert rewritten == expected and list(rewritten) == list(expected)
    assert RunHeader.from_dict(rewritten) == dataclasses.replace(typed, schema_version=SCHEMA_VERSION)
    assert typed.differences(RunHeader.from_dict(rewritten)) == []


def test_version_1_records_report_as_before(tmp_path):
    """The numbers the report made of these records before records were typed."""
    summary = write_report(read_runs([V1 / "linear"]), tmp_path / "report",
                           ReportConfig(groups=("place", "label*place")))
    final = {c["strategy"]: c["final"] for c in summary["curves"]}
    assert final["least-confidence"]["accuracy"]["mean"] == 0.796875 and final["random"]["accuracy"]["mean"] == 0.765625
    assert final["least-confidence"]["worst_group"]["mean"] == pytest.approx(0.619048, abs=1e-6)
    assert final["least-confidence"]["user_accuracy_p10"]["mean"] == pytest.approx(0.67619, abs=1e-6)
    comparison = summary["comparisons"][0]
    assert (comparison["target"], comparison["labels_to_reach"], comparison["ratio"]) == (0.765625, 12.0, 2.0)
    assert comparison["gain"]["mean"] == 0.03125 and comparison["gain"]["p_value"] == pytest.approx(0.704833, abs=1e-6)
    ratios = {(u["strategy"], u["group"], u["value"]): u["ratio"]["mean"] for u in summary["upsampling"]}
    assert ratios[("least-confidence", "place", "water")] == pytest.approx(1.17241, abs=1e-5)
    assert ratios[("least-confidence", "label*place", "landbird*water")] == pytest.approx(1.66667, abs=1e-5)
    assert ratios[("random", "label*place", "waterbird*land")] == pytest.approx(0.888889, abs=1e-6)


def test_version_1_records_resume_and_finished_ones_are_kept(tmp_path):
    """A version-1 record cut after round 1 resumes in place: its header and rounds stay as they were,
    the rounds it adds are those of an uninterrupted run without the stopping measures its header
    predates, and finished version-1 records are skipped."""
    cache = shutil.copy(V1 / "tiny.h5", tmp_path / "tiny.h5")
    out = shutil.copytree(V1 / "linear", tmp_path / "runs")
    record = record_path(out, "least-confidence", 1)
    kept = b"".join(_lines(record)[:3])
    record.write_bytes(kept)
    result = CliRunner().invoke(main, ["al", "--cache", str(cache), *V1_ARGS, "--out", str(out)])
    assert result.exit_code == 0 and "4 of 4 runs complete" in result.output, result.output
    assert record.read_bytes().startswith(kept) and b'"schema":1,' in _lines(record)[0]
    for name in ("least-confidence-seed0.jsonl", "random-seed0.jsonl", "random-seed1.jsonl"):
        assert (out / name).read_bytes() == (V1 / "linear" / name).read_bytes()  # finished: not rewritten

    fresh = tmp_path / "fresh"
    result = CliRunner().invoke(main, ["al", "--cache", str(cache), *V1_ARGS, "--out", str(fresh)])
    assert result.exit_code == 0, result.output
    resumed, whole = read_run(record), read_run(record_path(fresh, "least-confidence", 1))
    assert whole.header.schema_version == SCHEMA_VERSION and resumed.header.differences(whole.header) == []
    assert all(r.stopping is None for r in resumed.rounds) and all(r.stopping is not None for r in whole.rounds)
    assert whole.header.stop_set_size == 2000 and resumed.header.stop_set_size == 0
    assert [dataclasses.replace(r, seconds=0.0) for r in resumed.rounds[2:]] == \
        [dataclasses.replace(r, seconds=0.0, stopping=None) for r in whole.rounds[2:]]


def test_new_records_carry_schema_version_2_and_no_copies_in_source(tmp_path):
    cache = shutil.copy(V1 / "tiny.h5", tmp_path / "tiny.h5")
    args = ["al", "--cache", str(cache), "--seed-size", "8", "--budget", "4", "--per-round", "4", "--strategy",
            "margin", "--out", str(tmp_path / "runs"), "--quiet"]
    assert CliRunner().invoke(main, args).exit_code == 0
    header = json.loads(_lines(record_path(tmp_path / "runs", "margin", 0))[0])
    assert header["schema_version"] == 2 and "schema" not in header
    assert set(header["source"]) == {"cache", "dataset"} and header["source"]["cache"] == str(cache.resolve())


@pytest.mark.parametrize("change, message", [
    ({"schema": 3}, "record schema version 3, but this embedcache reads versions 1 and 2; a newer embedcache "
                    "wrote it: upgrade to read it"),
    ({"schema": None, "schema_version": 7}, "record schema version 7, but this embedcache reads versions 1 and 2"),
    ({"schema": None}, "the header has no schema_version, so it is not a run record embedcache wrote"),
])
def test_a_schema_this_embedcache_does_not_know_is_refused(tmp_path, change, message):
    lines = _lines(V1 / "linear" / "random-seed0.jsonl")
    header = {**json.loads(lines[0]), **change}
    header = {k: v for k, v in header.items() if v is not None}
    record = tmp_path / "random-seed0.jsonl"
    record.write_bytes(json.dumps(header).encode() + b"\n" + b"".join(lines[1:]))
    with pytest.raises(RecordError, match=re.escape(f"{record}: {message}")):
        read_run(record)
