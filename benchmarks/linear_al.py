"""Linear-mode AL speed: embedcache vs a straightforward scikit-learn loop, in one process.

A Waterbirds-sized synthetic cache (4,795 train x 2048-d, 1,199 val; see
`embedcache.datasets.synthetic.ambiguity_embeddings`) and the waterbirds protocol: seed set of 40,
+5 per round until 320 are acquired (64 acquisition rounds, 65 fits), least-confidence, the val
split evaluated every round, the stopping measures taken every round on a stop set of
--stop-set-size pool examples (default 2,000 as in `al`; 0 times the loop without them). Times
  (a) embedcache: `run_al` with the linear learner, writing its JSONL record, and
  (b) a plain loop: LogisticRegression(max_iter=1000).fit on the labelled rows, predict_proba on the
      unlabelled pool, argsort, val accuracy, on the same data and seed set,
and prints seconds per run and b/a. Goals on a 2-core CPU: (a) <= 0.5 s per run, b/a >= 8.

    python benchmarks/linear_al.py [--runs 3] [--dim 2048] [--stop-set-size 2000]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
import warnings

import numpy as np


def sklearn_loop(x: np.ndarray, labels: np.ndarray, pool: np.ndarray, val: np.ndarray, seed_rows: np.ndarray,
                 per_round: int, rounds: int) -> list[float]:
    from sklearn.linear_model import LogisticRegression

    labeled = list(seed_rows)
    accuracies = []
    for r in range(rounds + 1):
        model = LogisticRegression(max_iter=1000).fit(x[labeled], labels[labeled])
        accuracies.append(float((model.predict(x[val]) == labels[val]).mean()))
        if r == rounds:
            break
        unlabeled = np.setdiff1d(pool, labeled)
        uncertainty = 1 - model.predict_proba(x[unlabeled]).max(axis=1)
        labeled += unlabeled[np.argsort(-uncertainty, kind="stable")[:per_round]].tolist()
    return accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="seeds timed for each side (best and mean shown)")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--stop-set-size", type=int, default=2000, help="0: no stopping measures")
    args = parser.parse_args()

    import torch

    from embedcache.datasets.synthetic import ambiguity_embeddings
    from embedcache.learners.linear import LinearLearner
    from embedcache.loop import run_al
    from embedcache.protocols import get_protocol
    from embedcache.records import Source

    x, meta = ambiguity_embeddings(n_train=4795, n_val=1199, dim=args.dim, matched=0.95, minority=0.23, seed=0)
    protocol = get_protocol("waterbirds").replace(stop_set_size=args.stop_set_size)
    pool, val = meta.split_indices("train"), meta.split_indices("val")
    ours, theirs, final = [], [], {}
    with tempfile.TemporaryDirectory() as out:
        run_al(LinearLearner(x, 2), meta, protocol, "least-confidence", 99, out, source=Source("warm-up"))
        for seed in range(args.runs):
            started = time.perf_counter()
            run = run_al(LinearLearner(x, 2), meta, protocol, "least-confidence", seed, out,
                         source=Source("benchmark"))
            ours.append(time.perf_counter() - started)
            final["embedcache"] = run.rounds[-1].metrics["val"].accuracy
            seed_rows = np.flatnonzero(np.isin(meta.ids, run.header.seed_ids))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # lbfgs convergence warnings of the baseline
                started = time.perf_counter()
                accuracies = sklearn_loop(x, meta.label, pool, val, seed_rows, protocol.schedule()[0],
                                          len(protocol.schedule()))
                theirs.append(time.perf_counter() - started)
            final["scikit-learn"] = accuracies[-1]

    a, b = float(np.mean(ours)), float(np.mean(theirs))
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads; numpy {np.__version__}, "
          f"torch {torch.__version__}")
    print(f"waterbirds protocol on {len(pool)} x {args.dim} (+{len(val)} val), {protocol.n_rounds} rounds, "
          f"least-confidence, {args.runs} seeds, stop set {protocol.stop_set_size}")
    print(f"(a) embedcache linear mode   {a:6.3f} s/run (best {min(ours):.3f})   final val acc "
          f"{final['embedcache']:.3f}")
    print(f"(b) scikit-learn loop        {b:6.3f} s/run (best {min(theirs):.3f})   final val acc "
          f"{final['scikit-learn']:.3f}")
    print(f"ratio b/a                    {b / a:6.1f}x   (goals: a <= 0.5 s, b/a >= 8)")


if __name__ == "__main__":
    main()
