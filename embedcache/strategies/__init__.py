"""The acquisition algorithms researchers compare against, as pure functions on numpy arrays.

One module per family: `kcenter` (core-set), `badge`, `typiclust`, `probcover`, `bald` (BALD and
BatchBALD), `stochastic` (power / softmax / rank batches), `cluster_margin`, `candidates` (SEALS kNN
candidate pools) and `cold_start` (seed sets without labels). Posterior samples of the linear head,
which BALD needs, come from `embedcache.learners.posterior`.

Conventions shared by every function: rows are int64 indices into the pool arrays (or into the
embedding table); `k` rows are chosen; every random choice comes from `seed` (numpy Generators seeded
from it, or hashes of (row, seed)); exact ties go by `scoring.tie_priority(row, seed)`; the result is
(rows, scores) with the best or first-chosen row first, like `scoring.top_k`. Bad options raise
`ConfigError` naming the option. Heavy work runs on numpy/OpenBLAS on the CPU, torch on a CUDA
device, and FAISS (faiss-gpu when the device is CUDA and it sees a GPU) for k-means and kNN.
"""
