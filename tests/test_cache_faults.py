"""Faults while a cache is written, each with a real process: SIGKILL at every step of finishing a cache
(EMBEDCACHE_CRASH_AT) and in the middle of an --overwrite, a full disk (a file size limit, so writes
fail with EFBIG as they would with ENOSPC), and a read-only folder (an unprivileged process, so the
OS really refuses). After each, a rerun with --resume must give the cache an uninterrupted run gives."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import make_metadata, recipe

from embedcache.cache import EmbeddingCache, partial_path
from embedcache.cli import main
from embedcache.datasets.synthetic import write_image_manifest, write_text_jsonl
from embedcache.errors import CacheError
from embedcache.faults import ENV

TIMM = ["--backbone", "timm:test_resnet", "--weights", "random", "--workers", "0", "--quiet"]

#: Runs `embedcache` with argv[2:], after capping the size of any file it writes at argv[1] bytes (0: no cap).
LIMITED_CLI = """
import resource, signal, sys
limit = int(sys.argv[1])
if limit:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the cap then fail with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from embedcache.cli import main
main(sys.argv[2:], prog_name="embedcache")
"""


def run_cli(args, *, crash_at: str | None = None, file_size_limit: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop(ENV, None)
    if crash_at:
        env[ENV] = crash_at
    return subprocess.run([sys.executable, "-c", LIMITED_CLI, str(file_size_limit), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)


def cli(*args, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def embeddings_by_id(path: Path) -> dict[str, np.ndarray]:
    with EmbeddingCache(path) as cache:
        return dict(zip(cache.metadata().ids, cache.embeddings()))


def assert_same_cache(path: Path, reference: Path) -> None:
    """Every id's embedding, the skipped ids, the recipe and the dataset equal; the file validates."""
    got, expected = embeddings_by_id(path), embeddings_by_id(reference)
    assert list(got) == list(expected)
    for i in expected:
        np.testing.assert_array_equal(got[i], expected[i], err_msg=i)
    with EmbeddingCache(path) as a, EmbeddingCache(reference) as b:
        a.validate()
        assert a.skipped_ids == b.skipped_ids and a.fingerprint == b.fingerprint and a.dataset == b.dataset
    assert "check     ok" in cli("info", "--check", path).output


@pytest.fixture(scope="module")
def skip_bad(tmp_path_factory):
    """Images of which two are unreadable, and the --skip-bad cache of an uninterrupted run."""
    root = tmp_path_factory.mktemp("skip-bad")
    write_image_manifest(root / "data", n=12)
    (root / "data/images/00002.png").write_bytes(b"not a png")
    (root / "data/images/00007.png").unlink()
    args = ["extract", "--dataset", "manifest", "--root", root / "data", *TIMM, "--resolution", "48", "--skip-bad",
            "--batch-size", "3"]
    cli(*args, "--out", root / "reference.h5")
    return args, root / "reference.h5"


@pytest.mark.slow
@pytest.mark.parametrize("point", ["cache.compact:2", "cache.replace", "cache.cleanup"])
def test_a_kill_while_dropping_skipped_rows_resumes_to_the_uninterrupted_cache(skip_bad, tmp_path, point):
    """Killed after the kept rows are copied, before the rename, or before the rows file is removed:
    --out is never half-written, and --resume finishes with the cache an uninterrupted run writes."""
    args, reference = skip_bad
    out = tmp_path / "c.h5"
    killed = run_cli([*args, "--out", out], crash_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert partial_path(out).exists()
    if point == "cache.cleanup":  # killed after publishing: --out is already the complete cache
        assert_same_cache(out, reference)
    else:
        assert not out.exists()
    cli(*args, "--out", out, "--resume")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5"]
    assert_same_cache(out, reference)


@pytest.fixture(scope="module")
def wide_bert(tmp_path_factory, minilm_path) -> Path:
    """A one-layer BERT with 512 features: float32 rows of 2 KiB, so 1 MiB chunks of 512 rows."""
    from transformers import AutoTokenizer, BertConfig, BertModel
    import torch

    folder = tmp_path_factory.mktemp("wide-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=512, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def texts(tmp_path_factory, wide_bert) -> list:
    """`extract` arguments for 1100 texts through `wide_bert` in batches of 48: rows 0-511 fill the first
    chunk, so the append of rows 480-527 saves them (and every append before)."""
    path = write_text_jsonl(tmp_path_factory.mktemp("texts") / "t.jsonl", n=1100, seed=3)
    return ["extract", "--dataset", "jsonl", "--root", path, "--backbone", f"hf:{wide_bert}", "--dtype", "float32",
            "--batch-size", "48", "--quiet"]


@pytest.mark.slow
def test_a_killed_overwrite_keeps_the_old_cache_and_resume_finishes_it(texts, tmp_path):
    old_args, new_args = [*texts, "--max-length", "16"], [*texts, "--max-length", "12"]
    out = tmp_path / "c.h5"
    cli(*old_args, "--out", out)
    before = out.read_bytes()
    killed = run_cli([*new_args, "--out", out, "--overwrite"], crash_at="cache.append:12")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert out.read_bytes() == before  # the old cache is untouched and still valid
    assert "check     ok" in cli("info", "--check", out).output
    with EmbeddingCache(partial_path(out)) as partial:
        assert partial.rows_written == 528 and not partial.complete  # the 12th append was not saved
    refused = cli(*new_args, "--out", out, ok=False)
    assert refused.exit_code == 1 and "holds an interrupted extraction (528/1100 rows); pass --resume" in refused.output
    assert "resumed at row 528" in cli(*new_args, "--out", out, "--resume").output
    cli(*new_args, "--out", tmp_path / "fresh.h5")
    assert_same_cache(out, tmp_path / "fresh.h5")


@pytest.mark.slow
def test_a_full_disk_is_one_clear_error_and_resume_finishes(texts, tmp_path):
    """HDF5 used to crash (exit 139) when its writes failed; now: exit 1, one line, rows kept for --resume."""
    args = [*texts, "--max-length", "16"]
    out = tmp_path / "c.h5"
    # room for two 1 MiB chunks: saving rows 528-1055 writes a third (partly filled) one, which fails
    full = run_cli([*args, "--out", out], file_size_limit=2_500_000)
    assert full.returncode == 1, full.stderr
    assert "Traceback" not in full.stderr and "Exception ignored" not in full.stderr
    error = full.stderr.strip().splitlines()[-1]
    assert error == (f"Error: {partial_path(out)}: cannot write (File too large): 528 of 1100 rows are saved in it; "
                     "raise the file size limit (ulimit -f) or write to another file system, then rerun with "
                     "--resume to continue")
    assert not out.exists()
    assert "resumed at row 528" in cli(*args, "--out", out, "--resume").output
    cli(*args, "--out", tmp_path / "fresh.h5")
    assert_same_cache(out, tmp_path / "fresh.h5")


#: Finishes the unfinished cache argv[2] with file writes capped at argv[1] bytes; prints the error if any.
LIMITED_FINALIZE = """
import resource, signal, sys
from embedcache.cache import EmbeddingCache
from embedcache.errors import CacheError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
try:
    with EmbeddingCache(sys.argv[2], "r+") as cache:
        cache.finalize()
except CacheError as e:
    sys.exit(str(e))
"""


def test_a_full_disk_while_dropping_skipped_rows_keeps_every_row(tmp_path):
    """The kept rows go to a fresh file; if the disk fills up meanwhile, the rows file is untouched."""
    emb = np.random.default_rng(0).normal(size=(1200, 512)).astype(np.float32)
    out = tmp_path / "c.h5"
    with EmbeddingCache.create(out, make_metadata(1200), dim=512, dtype="float32", recipe=recipe(),
                               dataset={"name": "x"}) as cache:
        cache.append(emb[1:600], skipped={0: "unreadable"})
        cache.append(emb[600:])
    before = partial_path(out).read_bytes()
    limit = len(before) // 2
    full = subprocess.run([sys.executable, "-c", LIMITED_FINALIZE, str(limit), str(partial_path(out))],
                          capture_output=True, text=True, timeout=120)
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr
    assert full.stderr.strip() == (f"{out}.compacting: cannot write (File too large) while dropping skipped rows; "
                                   f"all 1200 extracted rows are kept in {partial_path(out)}; raise the file size "
                                   "limit (ulimit -f) or write to another file system")
    assert partial_path(out).read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.h5.partial"]
    with EmbeddingCache(partial_path(out), "r+") as cache:
        cache.finalize()
        cache.validate()
        assert cache.skipped_ids == ["id00000"] and list(cache.metadata().ids) == list(make_metadata(1200).ids[1:])
        np.testing.assert_array_equal(cache.embeddings(), emb[1:])


#: Loads everything `embedcache extract` needs while the interpreter's own files are readable, drops to
#: the unprivileged user `nobody` when running as root (root ignores permission bits), then runs each
#: command of the JSON list argv[2] and prints [{"code", "output"}, ...].
UNPRIVILEGED_CLI = """
import json, os, sys
from click.testing import CliRunner
from embedcache.backbones import create_backbone
from embedcache.cli import main
from embedcache.datasets import create_dataset
import embedcache.extract
create_dataset("imagefolder", sys.argv[1])
create_backbone("timm:test_resnet", weights="random", resolution=32)
if os.geteuid() == 0:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
results = []
for args in json.loads(sys.argv[2]):
    result = CliRunner().invoke(main, args)
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    results.append({"code": result.exit_code, "output": result.output + (repr(result.exception) if crashed else "")})
print(json.dumps(results))
"""


@pytest.mark.slow
def test_read_only_places_give_one_line_errors_and_resume_never_advises_overwrite():
    base = Path(tempfile.mkdtemp(prefix="embedcache-ro-"))
    try:
        base.chmod(0o755)  # the unprivileged process must reach what is inside
        from embedcache.datasets.synthetic import write_image_folder

        photos = write_image_folder(base / "photos", per_class=3)
        args = ["extract", "--dataset", "imagefolder", "--root", str(photos), *TIMM, "--resolution", "32"]
        read_only = base / "read-only"
        read_only.mkdir()
        done = base / "done"  # a complete cache in a read-only folder, the file read-only too
        done.mkdir()
        cli(*args, "--out", done / "c.h5")
        unfinished = base / "unfinished"  # an interrupted extraction whose file cannot be opened for writing
        unfinished.mkdir()
        shutil.copy(done / "c.h5", partial_path(unfinished / "c.h5"))
        with h5py.File(partial_path(unfinished / "c.h5"), "r+") as f:
            f.attrs["complete"] = False
        for path, mode in ((read_only, 0o555), (done / "c.h5", 0o444), (done, 0o555),
                           (partial_path(unfinished / "c.h5"), 0o444)):
            path.chmod(mode)
        commands = [[*args, "--out", str(read_only / "c.h5")],
                    [*args, "--out", str(done / "c.h5"), "--resume"],
                    [*args, "--out", str(unfinished / "c.h5"), "--resume"]]
        ran = subprocess.run([sys.executable, "-c", UNPRIVILEGED_CLI, str(photos), json.dumps(commands)],
                             capture_output=True, text=True, timeout=600, cwd=base)
        assert ran.returncode == 0, ran.stderr
        new, complete, partial = json.loads(ran.stdout.strip().splitlines()[-1])
        assert new["code"] == 1 and new["output"] == (f"Error: {read_only}: cannot write here (Permission denied); "
                                                      f"choose another --out or make {read_only} writable\n")
        assert complete["code"] == 0 and "already complete (6 rows): nothing to do" in complete["output"]
        assert partial["code"] == 1 and partial["output"] == (f"Error: {partial_path(unfinished / 'c.h5')}: cannot "
                                                              "open it for writing (Permission denied)\n")
        assert list(read_only.iterdir()) == [] and sorted(p.name for p in done.iterdir()) == ["c.h5"]
    finally:
        for folder, _, _ in os.walk(base):
            os.chmod(folder, 0o755)
        shutil.rmtree(base)


#: Writes 1200 rows of 512 float32 (chunks of 512 rows) in appends of 100 rows, skipping row 5 and row 650.
SKIPPING_WRITER = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from helpers import make_metadata, recipe
from embedcache.cache import EmbeddingCache, partial_path
out = sys.argv[2]
emb = np.random.default_rng(0).normal(size=(1200, 512)).astype(np.float32)
bad = {5: "unreadable 5", 650: "unreadable 650"}
if sys.argv[3] == "create":
    cache = EmbeddingCache.create(out, make_metadata(1200), dim=512, dtype="float32", recipe=recipe(), dataset={})
else:
    cache = EmbeddingCache(partial_path(out), "r+")
with cache:
    for start in range(cache.rows_written, 1200, 100):
        rows = [r for r in range(start, start + 100) if r not in bad]
        cache.append(emb[rows], skipped={r - start: bad[r] for r in bad if start <= r < start + 100})
    cache.finalize()
"""


def test_a_kill_between_saving_rows_and_counting_them_records_each_skipped_row_once(tmp_path):
    """Rows are flushed, then rows_written: a kill in between leaves the skipped entries of rows the
    resumed run redoes, which must not be recorded twice."""
    def write(out, how, crash_at=None):
        env = {**os.environ, **({ENV: crash_at} if crash_at else {})}
        return subprocess.run([sys.executable, "-c", SKIPPING_WRITER, str(Path(__file__).parent), str(out), how],
                              env=env, capture_output=True, text=True, timeout=120)

    assert write(tmp_path / "reference.h5", "create").returncode == 0
    out = tmp_path / "c.h5"
    killed = write(out, "create", crash_at="cache.save:2")  # rows 0-1099 flushed, rows_written still 600
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with h5py.File(partial_path(out)) as f:
        assert f.attrs["rows_written"] == 600 and len(f["skipped/ids"]) == 2  # row 650 is past the count
    resumed = write(out, "resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_cache(out, tmp_path / "reference.h5")
    with EmbeddingCache(out) as cache:
        assert cache.skipped_ids == ["id00005", "id00650"]
        assert cache.skipped_errors == ["unreadable 5", "unreadable 650"]


#: Starts writing the cache argv[1], says "ready", and keeps it open until its stdin closes.
HOLDING_WRITER = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from helpers import make_metadata, recipe
from embedcache.cache import EmbeddingCache
with EmbeddingCache.create(sys.argv[1], make_metadata(100), dim=4, dtype="float32", recipe=recipe(),
                           dataset={}) as cache:
    cache.append(np.ones((10, 4), dtype=np.float32))
    print("ready", flush=True)
    sys.stdin.read()
"""


def test_a_cache_being_written_is_not_touched_by_a_second_writer(tmp_path):
    """HDF5 locks the files it opens itself; ours go through a Python file object, so we lock them: a
    second extraction into the same --out is refused at once, even with --overwrite, and nothing of
    the first one's file changes."""
    out = tmp_path / "c.h5"
    holder = subprocess.Popen([sys.executable, "-c", HOLDING_WRITER, str(out), str(Path(__file__).parent)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        before = partial_path(out).read_bytes()
        message = f"{partial_path(out)} is open in another process (an extraction writing it?)"
        for attempt in (lambda: EmbeddingCache(partial_path(out), "r+"),
                        lambda: EmbeddingCache(partial_path(out)),
                        lambda: EmbeddingCache.create(out, make_metadata(100), dim=4, dtype="float32",
                                                      recipe=recipe(), dataset={}, overwrite=True)):
            with pytest.raises(CacheError) as refused:
                attempt()
            assert str(refused.value).startswith(message)
        assert partial_path(out).read_bytes() == before
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0
    with EmbeddingCache(partial_path(out)) as cache:
        assert cache.rows_written == 10
