"""embedcache: active learning with pretrained models, on cached embeddings or by full finetuning.

The notebook API (see `embedcache.api` and the README's worked example):

* `open_cache(path)`: a complete cache, open for reading;
* `run(cache, strategies, seeds, out, protocol=..., **overrides)`: an AL grid, one record per run;
* `run_sweep(plan)`: every cell of a sweep plan file, as `embedcache sweep`;
* `read_runs(*paths)`: run records, typed (`embedcache.records`);
* `report(runs, out, **options)`: `embedcache report`'s files; returns the summary;
* `fit_head(cache, ids)` and `score_topk(X, W, b, strategy, k, ...)`: rank a pool under a linear head.

Each name is imported when first used, so `import embedcache` stays fast.
"""

import importlib

__version__ = "0.1.0"

#: Public name → the module that defines it.
_API = {"open_cache": "embedcache.api", "run": "embedcache.api", "run_sweep": "embedcache.api",
        "read_runs": "embedcache.api", "report": "embedcache.api", "fit_head": "embedcache.api",
        "score_topk": "embedcache.kernels"}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'embedcache' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
