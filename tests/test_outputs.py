"""One output policy for every writing command (a command owns only what it writes; a complete output is
replaced only with --overwrite, and only once the new one is done) and one CSV writer."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from embedcache.errors import ConfigError
from embedcache.outputs import MARKER, FileSet, OutputFolder, read_marker, write_csv


def _write(folder: OutputFolder, files: dict[str, str]) -> None:
    with folder.writing() as out:
        for name, text in files.items():
            (out / name).write_text(text)


def _tree(path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(path.iterdir())}


def test_a_new_folder_gets_the_output_and_its_marker(tmp_path):
    out = tmp_path / "deep" / "report"
    _write(OutputFolder(out, "report"), {"summary.md": "a", "curves.csv": "b"})
    assert read_marker(out)["command"] == "report" and read_marker(out)["files"] == ["curves.csv", "summary.md"]
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "curves.csv", "summary.md"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["report"]  # no temporary sibling left
    empty = tmp_path / "empty"
    empty.mkdir()
    _write(OutputFolder(empty, "report"), {"summary.md": "a"})
    assert (empty / "summary.md").read_text() == "a"


def test_a_complete_output_is_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "r"
    _write(OutputFolder(out, "report"), {"summary.md": "old", "old-only.png": "x"})
    with pytest.raises(ConfigError, match="holds an earlier `report` output; pass `overwrite` to replace it") as e:
        OutputFolder(out, "report")
    assert e.value.param == "out"
    _write(OutputFolder(out, "report", overwrite=True), {"summary.md": "new"})
    assert _tree(out) == {MARKER: (out / MARKER).read_text(), "summary.md": "new"}  # the old output is gone whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_a_folder_holding_anything_else_is_refused_even_with_overwrite(tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "summary.md").write_text("my own notes")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="holds files this command did not write"):
            OutputFolder(mine, "report", overwrite)
    assert (mine / "summary.md").read_text() == "my own notes"
    report = tmp_path / "report"
    _write(OutputFolder(report, "report"), {"summary.md": "report", "summary.json": "{}"})
    for overwrite in (False, True):  # neighbors writes summary.md and summary.json too: not into a report's folder
        with pytest.raises(ConfigError, match="holds the output of `report`; choose another folder"):
            OutputFolder(report, "neighbors", overwrite)
    (report / "mine.txt").write_text("added by hand")
    with pytest.raises(ConfigError, match=r"holds files `report` did not write \(e.g. mine.txt\)"):
        OutputFolder(report, "report", overwrite=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        OutputFolder(tmp_path / "file", "report")


def test_a_failed_write_leaves_the_old_output_and_no_leftovers(tmp_path):
    out = tmp_path / "r"
    _write(OutputFolder(out, "report"), {"summary.md": "old"})
    before = _tree(out)
    with pytest.raises(RuntimeError):
        with OutputFolder(out, "report", overwrite=True).writing() as staging:
            (staging / "summary.md").write_text("half")
            raise RuntimeError("the disk filled up")
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["r"]


_KILLED_WRITE = """
import sys
from embedcache.outputs import OutputFolder
with OutputFolder(sys.argv[1], "report", overwrite=True).writing() as out:
    (out / "summary.md").write_text("new")
"""


@pytest.mark.parametrize("point", ["output.written", "output.swap"])
def test_a_kill_while_replacing_keeps_the_old_output(tmp_path, point):
    out = tmp_path / "r"
    _write(OutputFolder(out, "report"), {"summary.md": "old"})
    before = _tree(out)
    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITE, str(out)],
                            env={**os.environ, "EMBEDCACHE_CRASH_AT": point})
    assert killed.returncode == -9
    if point == "output.swap":  # the old output waits beside the folder; the next write puts it back first
        assert not out.exists()
        OutputFolder(out, "report", overwrite=True)
    assert _tree(out) == before
    _write(OutputFolder(out, "report", overwrite=True), {"summary.md": "new"})
    assert (out / "summary.md").read_text() == "new"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".replaced")]


def test_a_file_set_is_replaced_only_with_overwrite_and_only_whole(tmp_path):
    png, table = tmp_path / "map.png", tmp_path / "map.csv"
    with FileSet([png, table]).writing() as (a, b):
        assert a.suffix == ".png" and b.suffix == ".csv"  # writers that go by the suffix still can
        a.write_text("png 1")
        b.write_text("csv 1")
    with pytest.raises(ConfigError, match="map.png exists; pass `overwrite`"):
        FileSet([png, table])
    with pytest.raises(RuntimeError):
        with FileSet([png, table], overwrite=True).writing() as (a, b):
            a.write_text("png 2")
            raise RuntimeError("plotting failed")
    assert (png.read_text(), table.read_text()) == ("png 1", "csv 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.csv", "map.png"]


def test_the_csv_format(tmp_path):
    rows = [{"id": "a,b", "text": 'say "hi"\nthen go', "x": 1 / 3, "n": 7, "missing": None},
            {"id": "c", "x": float("nan"), "extra": float("inf"), "flag": True}]
    path = write_csv(tmp_path / "t.csv", rows)
    assert path.read_bytes() == (b'id,text,x,n,missing,extra,flag\n'
                                 b'"a,b","say ""hi""\nthen go",0.333333,7,,,\n'
                                 b'c,,,,,,True\n')
    with open(path, newline="", encoding="utf-8") as f:
        assert list(csv.DictReader(f))[0]["text"] == 'say "hi"\nthen go'
    assert write_csv(tmp_path / "e.csv", [], columns=["a", "b"]).read_text() == "a,b\n"


def test_report_and_neighbors_keep_out_of_each_others_folders(tmp_path):
    """The reported bug: `neighbors --out` wrote summary.md/summary.json over a report's."""
    from embedcache.analysis.neighbors import neighbors_folder
    from embedcache.analysis.report import report_folder

    out = tmp_path / "reports"
    _write(report_folder(out), {"summary.md": "# report", "summary.json": "{}"})
    with pytest.raises(ConfigError, match="holds the output of `report`"):
        neighbors_folder(out, overwrite=True)
    assert json.loads((out / "summary.json").read_text()) == {}


def test_a_demo_folder_of_other_sizes_is_replaced_only_with_overwrite(tmp_path):
    from embedcache.demo import DEMO_NAMES, DemoConfig, _resumable, run_demo
    from embedcache.outputs import write_marker

    out = tmp_path / "demo"
    (out / "runs").mkdir(parents=True)
    write_marker(out, "demo", DEMO_NAMES, config=DemoConfig.quick().to_dict(), complete=True)
    assert _resumable(out, DemoConfig.quick()) and not _resumable(out, DemoConfig())
    with pytest.raises(ConfigError, match="holds a demo of other sizes .n_train 1000, seeds 3.; pass `overwrite`"):
        run_demo(out, DemoConfig())
    (out / "notes.txt").write_text("mine")
    assert not _resumable(out, DemoConfig.quick())
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="holds files `demo` did not write"):
            run_demo(out, DemoConfig.quick(), overwrite=overwrite)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "notes.txt", "runs"]
    with pytest.raises(ConfigError, match="at least two seeds"):
        DemoConfig(seeds=(3,))
