"""Run records on disk: one writer at a time (OS locks, two real processes), broken lines named with
their way out, and `embedcache repair`."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner
from runs_helpers import GRID, embedcache, stable, tiny_cache

from embedcache.cli import main
from embedcache.records import RecordError, read_run, read_runs, record_path

#: Holds the lock of the record named by argv[1] until its stdin closes (or it is killed).
HOLD = ("import sys; from embedcache.records import RecordLock; lock = RecordLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); sys.stdin.read()")


@pytest.fixture
def grid(tmp_path):
    """(al arguments without --out, a folder with the whole grid run uninterrupted)."""
    args = ["al", "--cache", str(tiny_cache(tmp_path / "c.h5")), *GRID, "--quiet"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "reference")])
    assert result.exit_code == 0, result.output
    return args, tmp_path / "reference"


def _hold(record) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(record)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_blocks_nothing(grid, tmp_path):
    args, reference = grid
    out = tmp_path / "runs"
    record = record_path(out, "margin", 1)
    holder = _hold(record)
    try:
        result = CliRunner().invoke(main, [*args, "--out", str(out)])
        assert result.exit_code == 1
        assert result.output.startswith(f"Error: {record} is being written by pid {holder.pid} on "
                                        f"{socket.gethostname()} since 20") and result.output.count("\n") == 1
        assert [p.name for p in out.iterdir()] == [record.name + ".lock"]  # refused before any record was written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    result = CliRunner().invoke(main, [*args, "--out", str(out)])  # the OS dropped the dead holder's lock
    assert result.exit_code == 0 and "4 of 4 runs complete" in result.output, result.output
    assert stable(out) == stable(reference)

    finished = record_path(out, "random", 0)
    holder = _hold(finished)
    try:
        assert len(read_runs([out])) == 4  # readers never need the lock
        result = CliRunner().invoke(main, ["repair", "--runs", str(finished)])
        assert result.exit_code == 1 and f"is being written by pid {holder.pid}" in result.output
    finally:
        holder.stdin.close()
        holder.wait()


@pytest.mark.slow
def test_two_al_processes_on_one_folder_leave_readable_records(grid, tmp_path):
    args, reference = grid
    out = tmp_path / "runs"
    both = [embedcache(*args, "--out", out, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    for process in both:
        stdout, stderr = process.communicate()
        # each one either ran its share of the grid or was refused at a record the other one was writing
        assert ((process.returncode == 0 and "4 of 4 runs complete" in stdout)
                or (process.returncode == 1 and "is being written by pid" in stderr)), (stdout, stderr)
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert stable(out) == stable(reference)


def _break(path, number: int, text: str) -> bytes:
    """Replace line `number` (1-based) of a record with `text`; returns the new bytes."""
    lines = path.read_bytes().splitlines(keepends=True)
    lines[number - 1] = text.encode() + b"\n"
    path.write_bytes(b"".join(lines))
    return path.read_bytes()


def test_a_broken_line_names_run_and_line_and_repair_resumes_the_run(grid, tmp_path):
    args, reference = grid
    out = tmp_path / "runs"
    shutil.copytree(reference, out)
    record = record_path(out, "margin", 0)
    broken = _break(record, 3, '{"type":"round","round":1,"n_lab{"type":"round","round":2')  # two writers' lines
    for command in ([*args, "--out", str(out)], ["report", "--runs", str(out), "--out", str(tmp_path / "report")]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
        assert result.output.startswith(f"Error: {record}, line 3: not JSON (")
        assert (f"Recover with `embedcache repair --runs {record}`: it keeps the lines before this one and saves the "
                "original beside it; the header and round 0 before it are intact, and the run resumes at round 1"
                in result.output)
    result = CliRunner().invoke(main, ["repair", "--runs", str(out)])
    assert result.exit_code == 0, result.output
    assert (f"{record}: line 3: not JSON" in result.output and "kept the header and round 0, dropped 2 line(s) "
            f"(the original is saved as {record}.broken); rerun the same `embedcache al` command to resume at "
            "round 1" in result.output)
    assert f"{record_path(out, 'random', 1)}: intact (header and 3 rounds), left as it is" in result.output
    assert (out / (record.name + ".broken")).read_bytes() == broken  # nothing is lost
    assert len(read_run(record).rounds) == 1
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert stable(out) == stable(reference)


def test_a_broken_header_is_moved_aside_and_its_run_starts_over(grid, tmp_path):
    args, reference = grid
    out = tmp_path / "runs"
    shutil.copytree(reference, out)
    record = record_path(out, "random", 1)
    broken = _break(record, 1, '{"type":"head')
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 1 and "the header is lost, so the run starts again from round 0" in result.output
    result = CliRunner().invoke(main, ["repair", "--runs", str(record)])
    assert result.exit_code == 0 and (f"no intact header, so the record was moved to {record}.broken; rerunning "
                                      "`embedcache al` starts this run again from round 0") in result.output
    assert not record.exists() and (out / (record.name + ".broken")).read_bytes() == broken
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert stable(out) == stable(reference)


@pytest.mark.parametrize("line, problem", [
    ("[1, 2]", "a JSON array, not an object"),
    ("3", "a JSON number, not an object"),
    ("null", "a JSON null, not an object"),
    ('{"type": "round"}', "missing or mistyped field(s) round, n_labeled, metrics, acquired"),
    ('{"type": "round", "round": "1", "n_labeled": 15, "metrics": {}, "acquired": {}}',
     "missing or mistyped field(s) round"),
    ('{"type": "note"}', "unknown record type 'note'"),
    ('{"type": "round", "round": 0, "n_labeled": 15, "metrics": {}, "acquired": {"ids": [7], "scores": [0.5]}}',
     "field acquired.ids is not an array of strings"),
    ('{"type": "round", "round": 0, "n_labeled": 15, "metrics": {"val": {"n": 3}}, "acquired": {"ids": [], '
     '"scores": []}}', "no field metrics.val.accuracy"),
    ('{"type": "round", "round": 0, "n_labeled": 15, "metrics": {}, "training": {"steps": "7"}, "acquired": {"ids": '
     '[], "scores": []}}', "field training.steps is a JSON string, not number or null"),
    ('{"type": "round", "round": 0, "n_labeled": 15, "metrics": {}, "acquired": {"ids": [], "scores": []}, '
     '"stopping": {"kappa": null, "changed": null, "uncertainty": 0.5}}', "no field stopping.max_uncertainty"),
    ('{"type": "round", "round": 0, "n_labeled": 15, "metrics": {}, "acquired": {"ids": [], "scores": []}, '
     '"stopping": {"kappa": "high", "changed": 0, "uncertainty": 0.5, "max_uncertainty": 1}}',
     "field stopping.kappa is a JSON string, not number or null"),
])
def test_a_line_that_is_not_a_round_is_a_record_error(grid, tmp_path, line, problem):
    _, reference = grid
    record = tmp_path / "one.jsonl"
    shutil.copy(record_path(reference, "margin", 1), record)
    _break(record, 2, line)
    with pytest.raises(RecordError) as error:
        read_run(record)
    assert str(error.value).startswith(f"{record}, line 2: {problem}. Recover with `embedcache repair --runs {record}`")
