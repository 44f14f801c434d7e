"""The batched engine against one run at a time and against scikit-activeml, in one process.

A Waterbirds-sized synthetic cache (4,795 train x 2048-d float32, 1,199 val; see
`embedcache.datasets.synthetic.ambiguity_embeddings`) and the waterbirds protocol (seed set of 40,
+5 per round until 320 are acquired: 65 fits, the val split evaluated every round). Times
  (1) one least-confidence run: embedcache's single-run loop (`run_al`) and scikit-activeml
      (`UncertaintySampling(method="least_confident")` with `SklearnClassifier(LogisticRegression)`,
      the same seed set, rounds and val accuracy);
  (2) 64 runs, 4 strategies (least-confidence, entropy, margin, random) x 16 seeds: the batched
      engine (`embedcache.engine.run_batch`, the default of `al` and `sweep`), the engine with the
      heads stacked into one GEMM (`stack=True`), and the single-run loop one run after another;
and prints the ratios. Every record the batched engine writes is checked against the one-by-one
record (bit for bit by default, up to ties when stacked). Goals on a 2-core CPU: one run <= 0.25 s,
64 runs <= 4 s, >= 25x scikit-activeml for one run and >= 100x per run batched.

    pip install -e '.[bench]'          # scikit-activeml 1.0.1
    python benchmarks/batched.py [--seeds 16] [--repeats 3] [--dim 2048]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

STRATEGIES = ("least-confidence", "entropy", "margin", "random")


def skactiveml_run(x: np.ndarray, labels: np.ndarray, pool: np.ndarray, val: np.ndarray, seed_rows: np.ndarray,
                   schedule: list[int], seed: int) -> float:
    """One least-confidence run in scikit-activeml; its final val accuracy."""
    from sklearn.linear_model import LogisticRegression

    from skactiveml.classifier import SklearnClassifier
    from skactiveml.pool import UncertaintySampling

    x_pool, y_pool = x[pool], labels[pool]
    y = np.full(len(pool), np.nan)
    seeded = np.searchsorted(pool, seed_rows)
    y[seeded] = y_pool[seeded]
    model = SklearnClassifier(LogisticRegression(max_iter=1000), classes=np.unique(labels), random_state=seed)
    strategy = UncertaintySampling(method="least_confident", random_state=seed)
    for r in range(len(schedule) + 1):
        model.fit(x_pool, y)
        accuracy = float((model.predict(x[val]) == labels[val]).mean())
        if r == len(schedule):
            return accuracy
        chosen = strategy.query(x_pool, y, clf=model, fit_clf=False, batch_size=schedule[r])
        y[chosen] = y_pool[chosen]


def best(times: list[float]) -> str:
    return f"{min(times):7.3f} s (mean {np.mean(times):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=16, help="seeds per strategy in the many-runs part")
    parser.add_argument("--repeats", type=int, default=3, help="single runs timed per side (best shown)")
    parser.add_argument("--dim", type=int, default=2048)
    args = parser.parse_args()

    import torch

    from embedcache.datasets.synthetic import ambiguity_embeddings
    from embedcache.engine import run_batch
    from embedcache.learners.base import RankerCapabilities
    from embedcache.learners.linear import LinearLearner
    from embedcache.loop import Plan, plan_run, run_al
    from embedcache.protocols import get_protocol
    from embedcache.records import Source, read_runs
    from embedcache.scoring import topk_disagreement

    x, meta = ambiguity_embeddings(n_train=4795, n_val=1199, dim=args.dim, matched=0.95, minority=0.23, seed=0)
    protocol = get_protocol("waterbirds")
    pool, val = meta.split_indices("train"), meta.split_indices("val")
    source = Source("benchmark")

    def learner():
        return LinearLearner(x, 2)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        run_al(learner(), meta, protocol, "least-confidence", 999, out / "warm-up", source=source)
        ours, theirs = [], []
        for seed in range(args.repeats):
            started = time.perf_counter()
            run = run_al(learner(), meta, protocol, "least-confidence", seed, out / "single", source=source)
            ours.append(time.perf_counter() - started)
            seed_rows = np.flatnonzero(np.isin(meta.ids, run.header.seed_ids))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # lbfgs convergence warnings of the peer
                started = time.perf_counter()
                their_accuracy = skactiveml_run(x, meta.label, pool, val, seed_rows, protocol.schedule(), seed)
                theirs.append(time.perf_counter() - started)
        our_accuracy = run.rounds[-1].metrics["val"].accuracy

        plan = Plan.make(protocol, meta)
        ranker = RankerCapabilities.of_class(LinearLearner)

        def planned(folder):
            return [plan_run(plan, learner().describe(), s, q, out / folder, source, ranker)
                    for s in STRATEGIES for q in range(args.seeds)]

        started = time.perf_counter()
        run_batch(planned("batched"), learner)
        batched = time.perf_counter() - started
        started = time.perf_counter()
        run_batch(planned("stacked"), learner, stack=True)
        stacked = time.perf_counter() - started
        started = time.perf_counter()
        for run in planned("one-by-one"):
            run_al(learner(), meta, protocol, run.strategy, run.seed, out / "one-by-one", source=source)
        one_by_one = time.perf_counter() - started

        def rounds(folder):
            return {r.path.name: r.rounds for r in read_runs([out / folder])}

        reference, same, within_ties = rounds("one-by-one"), 0, 0
        for name, runs in rounds("batched").items():
            same += all(dataclasses.replace(a, seconds=0) == dataclasses.replace(b, seconds=0)
                        for a, b in zip(runs, reference[name]))
        for name, runs in rounds("stacked").items():
            agree = True
            for a, b in zip(runs, reference[name]):
                if a.acquired.ids != b.acquired.ids:  # allowed only where scores are that close; runs part there
                    rows = [np.flatnonzero(meta.ids == i)[0] for i in a.acquired.ids + b.acquired.ids]
                    split = len(a.acquired.ids)
                    agree = topk_disagreement((np.array(rows[:split]), np.array(a.acquired.scores, np.float32)),
                                              (np.array(rows[split:]), np.array(b.acquired.scores, np.float32))) is None
                    break
            within_ties += agree

    n_runs = len(STRATEGIES) * args.seeds
    one, peer = min(ours), min(theirs)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; "
          f"numpy {np.__version__}, torch {torch.__version__}")
    print(f"waterbirds protocol on {len(pool)} x {args.dim} (+{len(val)} val), {protocol.n_rounds} rounds")
    print("(1) one least-confidence run")
    print(f"    embedcache (single-run loop)  {best(ours)}   final val acc {our_accuracy:.3f}")
    print(f"    scikit-activeml 1.0.1         {best(theirs)}   final val acc {their_accuracy:.3f}")
    print(f"    scikit-activeml / embedcache  {peer / one:7.1f}x   (goals: <= 0.25 s, >= 25x)")
    print(f"(2) {n_runs} runs: {len(STRATEGIES)} strategies x {args.seeds} seeds")
    print(f"    batched engine                {batched:7.2f} s   ({batched / n_runs:.3f} s/run; records identical to "
          f"one by one: {same}/{n_runs})")
    print(f"    batched, heads in one GEMM    {stacked:7.2f} s   ({stacked / n_runs:.3f} s/run; records equal up to "
          f"ties: {within_ties}/{n_runs})")
    print(f"    one by one (single-run loop)  {one_by_one:7.2f} s   ({one_by_one / n_runs:.3f} s/run)")
    print(f"    one by one / batched          {one_by_one / batched:7.1f}x")
    print(f"    scikit-activeml per run / batched per run  {peer / (batched / n_runs):7.1f}x   "
          f"(goals: <= 4 s in all, >= 100x)")


if __name__ == "__main__":
    main()
