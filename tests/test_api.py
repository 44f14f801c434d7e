"""The notebook API (`embedcache.run`, `read_runs`, `report`, `open_cache`, `fit_head`, `score_topk`): the
README's Python example runs as printed on tiny synthetic caches, and `import embedcache` stays light."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import recipe

import embedcache
from embedcache.cache import EmbeddingCache
from embedcache.datasets.synthetic import ambiguity_embeddings
from embedcache.errors import ConfigError
from embedcache.experiments import LinearExperiment
from embedcache.records import RoundRecord, RunHeader

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_example() -> str:
    """The first Python block of the README's worked example."""
    section = README.read_text(encoding="utf-8").split("## A worked example: Waterbirds", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def write_caches(folder: Path) -> None:
    """caches/wb-bitm.h5 and caches/wb-random.h5: the README's names, tiny Waterbirds-like features."""
    for name, seed in (("wb-bitm", 1), ("wb-random", 2)):
        x, meta = ambiguity_embeddings(n_train=400, n_val=100, dim=8, seed=seed)
        EmbeddingCache.write(folder / "caches" / f"{name}.h5", x, meta, recipe=recipe(spec=f"test:{name}"))


def test_import_embedcache_loads_no_heavy_module_and_lists_the_api():
    loaded = subprocess.run([sys.executable, "-c", "import sys, embedcache; print(sorted(m for m in ('numpy', "
                             "'torch', 'h5py', 'matplotlib', 'click') if m in sys.modules))"],
                            capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    assert {"open_cache", "run", "read_runs", "report", "fit_head", "score_topk"} <= set(dir(embedcache))
    with pytest.raises(AttributeError, match="no attribute 'grid'"):
        embedcache.grid


@pytest.mark.slow
def test_the_readme_python_example_runs_as_printed(tmp_path, monkeypatch, capsys):
    code = readme_python_example()
    smaller = {'seeds="0-15"': 'seeds="0-1"', 'protocol="waterbirds"': 'protocol="waterbirds", budget=40'}
    for text, replacement in smaller.items():  # 2 seeds and 8 acquisition rounds, not 16 and 64
        assert code.count(text) == 1
        code = code.replace(text, replacement)
    write_caches(tmp_path)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {})

    for name in ("wb-bitm", "wb-random"):
        runs = embedcache.read_runs(tmp_path / "runs" / name)
        assert [(r.strategy, r.seed, r.complete, len(r.rounds)) for r in runs] == [
            (s, seed, True, 9) for s in ("least-confidence", "random") for seed in (0, 1)]
        assert all(isinstance(r.header, RunHeader) and isinstance(r.rounds[0], RoundRecord) for r in runs)
    assert (tmp_path / "reports" / "wb" / "summary.md").is_file()
    printed = capsys.readouterr().out.splitlines()
    assert sorted(line.rsplit(" ", 1)[0] for line in printed[:4]) == [
        f"test:{name} (random init) {strategy}" for name in ("wb-bitm", "wb-random")
        for strategy in ("least-confidence", "random")]

    labelled = embedcache.read_runs(tmp_path / "runs" / "wb-bitm")[0].labeled_ids()
    W, b = embedcache.fit_head(tmp_path / "caches" / "wb-bitm.h5", labelled)
    with embedcache.open_cache(tmp_path / "caches" / "wb-bitm.h5") as cache:
        meta = cache.metadata()
        rows, scores = embedcache.score_topk(cache, W, b, "least-confidence", k=10)
        train = set(meta.split_indices("train").tolist())
        chosen, _ = embedcache.score_topk(cache.embeddings(dtype="float32"), W, b, "least-confidence", k=10,
                                          rows=sorted(train), exclude=np.isin(meta.ids, labelled))
    assert len(set(chosen.tolist())) == 10 and set(chosen.tolist()) <= train
    assert not set(meta.ids[chosen]) & set(labelled) and np.all(np.diff(scores) <= 0)
    assert all(str(i) in " ".join(printed[4:]) for i in meta.ids[chosen])  # the README printed the same ten


def test_run_takes_protocol_overrides_seeds_and_experiments_and_report_takes_paths(tmp_path):
    write_caches(tmp_path)
    cache = tmp_path / "caches" / "wb-bitm.h5"
    runs = embedcache.run(cache, "margin", 3, tmp_path / "runs", seed_size=10, budget=10, groups=["place"])
    assert [(r.strategy, r.seed, len(r.rounds)) for r in runs] == [("margin", 3, 3)]
    assert runs[0].rounds[0].metrics["val"].groups.keys() == {"place"}
    again = embedcache.run(LinearExperiment(cache), ["margin"], [3], tmp_path / "runs", seed_size=10, budget=10,
                           groups=["place"])
    assert again[0].rounds == runs[0].rounds  # finished: read back, not rerun
    summary = embedcache.report(tmp_path / "runs", tmp_path / "report", groups=["place"])
    assert [c["strategy"] for c in summary["curves"]] == ["margin"]
    with pytest.raises(ConfigError, match=r"unknown protocol field\(s\) \['seedsize'\]"):
        embedcache.run(cache, "margin", 0, tmp_path / "other", seedsize=10)
    with pytest.raises(ConfigError, match=r"unknown report option\(s\) \['colour'\]"):
        embedcache.report(runs, tmp_path / "r2", colour="red")
    with pytest.raises(ConfigError, match="at least two classes"):
        embedcache.fit_head(cache, runs[0].header.seed_ids[:1])
