"""The fused scorer against the determinism contract (kernels/README.md): bit for bit for the same
call, up to ties against a plain numpy reference, the unfused path, other chunkings and backends;
clear errors on bad input. GPU tests skip without CuPy and a GPU.

No assertion here may depend on which BLAS kernel the machine runs: comparisons across code paths
use `scoring.topk_disagreement` (scores within the contract's tolerance), and bitwise claims about
our own code (chunking, ties) use `exact_problem`, whose logits are exact in float32 whatever
order BLAS sums them in."""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import shutil
import subprocess

from pathlib import Path

import numpy as np
import pytest

from embedcache.cache import EmbeddingCache
from embedcache.errors import ConfigError
from embedcache.kernels import predict_logits, predict_proba, score_topk
from embedcache.pool import cuda_status
from embedcache.scoring import (LOGIT_SCORES, PROBABILITY_SCORES, UNCERTAINTY_SCORES, entropy, least_confidence,
                                margin, tie_priority, top_k, topk_disagreement)
from helpers import make_metadata, recipe

CLASSES = (2, 5, 182)


def make_problem(n=600, d=24, c=5, dtype=np.float32, seed=0):
    """Random pool with planted ties: rows 40..59 repeat rows 0..19, and rows 60..69 are so far out
    that their probabilities saturate (least-confidence exactly 0, margin exactly -1)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    X[40:60] = X[0:20]
    W = (rng.standard_normal((d, c)) / np.sqrt(d)).astype(np.float32)
    b = (0.1 * rng.standard_normal(c)).astype(np.float32)
    X[60:70] = 60 * W[:, 0] / np.linalg.norm(W[:, 0]) ** 2  # logit of class 0 about 60 above the rest
    return X.astype(dtype), W, b


def exact_problem(n=600, d=24, c=5, dtype=np.float32, seed=0):
    """A pool whose logits are exact in float32 (small integers times multiples of 1/16, sums far
    below 2^24), so every BLAS kernel, blocking and summation order gives the same bits; rows
    40..59 repeat rows 0..19 (exact ties)."""
    rng = np.random.default_rng(seed)
    X = rng.integers(-4, 5, (n, d)).astype(np.float32)
    X[40:60] = X[0:20]
    W = (rng.integers(-4, 5, (d, c)) / 16).astype(np.float32)
    b = (rng.integers(-4, 5, c) / 16).astype(np.float32)
    return X.astype(dtype), W, b


def assert_agree(got, want):
    """Two top-k results agree up to ties (the determinism contract)."""
    why = topk_disagreement(got, want)
    assert why is None, why


def plain_reference(X, W, b, strategy, k, rows, seed):
    """softmax(X[rows] @ W + b) in float32, the formula, then a full sort by (-score, tie priority)."""
    logits = np.einsum("nd,dc->nc", X[rows].astype(np.float32), W) + b
    if strategy in LOGIT_SCORES:
        scores = LOGIT_SCORES[strategy](logits)
    else:
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        scores = PROBABILITY_SCORES[strategy](e / e.sum(axis=1, keepdims=True))
    order = np.lexsort((tie_priority(rows, seed), -scores))[:k]
    return rows[order], scores[order]


def unfused(X, W, b, strategy, k, rows, seed, **kw):
    """The unfused acquisition path: probabilities from predict_proba, the formula, top_k."""
    if strategy in LOGIT_SCORES:
        scores = LOGIT_SCORES[strategy](predict_logits(X, W, b, rows=rows, **kw))
    else:
        scores = PROBABILITY_SCORES[strategy](predict_proba(X, W, b, rows=rows, **kw))
    return top_k(scores, np.asarray(rows), k, seed)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("c", CLASSES)
@pytest.mark.parametrize("strategy", UNCERTAINTY_SCORES)
def test_cpu_scorer_equals_plain_numpy_reference(strategy, c, dtype):
    X, W, b = make_problem(c=c, dtype=dtype, seed=c)
    exclude = np.zeros(len(X), dtype=bool)
    exclude[[0, 3, 44, 100, 101]] = True  # 0 is duplicated by 40, 44 duplicates 4
    candidates = np.flatnonzero(~exclude)
    k = len(candidates)  # the full order, planted ties included
    got_rows, got_scores = score_topk(X, W, b, strategy, k, exclude=exclude, seed=7, chunk_rows=128)
    assert_agree((got_rows, got_scores), plain_reference(X, W, b, strategy, k, candidates, seed=7))
    assert got_rows.dtype == np.int64 and got_scores.dtype == np.float32
    assert sorted(got_rows.tolist()) == candidates.tolist()
    for top in (1, 5, 50):  # a short list too: its cut falls between near-ties only
        assert_agree(score_topk(X, W, b, strategy, top, exclude=exclude, seed=7),
                     plain_reference(X, W, b, strategy, top, candidates, seed=7))


@pytest.mark.parametrize("strategy", UNCERTAINTY_SCORES)
def test_planted_ties_are_ordered_by_priority(strategy):
    X, W, b = exact_problem(c=5)
    rows = np.arange(0, 60)
    got_rows, got_scores = score_topk(X, W, b, strategy, 60, rows=rows, seed=11)
    for dup in range(20):  # each duplicated pair has one score, and the lower tie priority comes first
        i, j = np.flatnonzero(got_rows == dup)[0], np.flatnonzero(got_rows == dup + 40)[0]
        assert got_scores[i] == got_scores[j]
        first = dup if tie_priority(np.array([dup]), 11)[0] < tie_priority(np.array([dup + 40]), 11)[0] else dup + 40
        assert got_rows[min(i, j)] == first


@pytest.mark.parametrize("strategy", UNCERTAINTY_SCORES)
@pytest.mark.parametrize("c", CLASSES)
def test_fused_agrees_with_unfused(strategy, c):
    rng = np.random.default_rng(2)
    for problem in (make_problem, exact_problem):
        X, W, b = problem(n=900, c=c, dtype=np.float16, seed=1)
        rows = np.union1d(rng.choice(len(X), 700, replace=False), np.arange(70))  # keep the planted ties
        got = score_topk(X, W, b, strategy, 50, rows=rows, seed=3)
        want = unfused(X, W, b, strategy, 50, rows, seed=3)
        assert_agree(got, want)
        if problem is exact_problem:  # nothing left for BLAS to round: our own code must match to the bit
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])


def test_the_same_call_gives_the_same_bits():
    X, W, b = make_problem(n=1000, d=40, c=7)
    rows = np.random.default_rng(0).permutation(1000)[:800]
    for strategy in UNCERTAINTY_SCORES:
        first = score_topk(X, W, b, strategy, 30, rows=rows, seed=5)
        again = score_topk(X, W, b, strategy, 30, rows=rows[::-1].copy(), seed=5)
        np.testing.assert_array_equal(first[0], again[0])
        np.testing.assert_array_equal(first[1], again[1])


def test_chunk_size_and_threads_change_nothing_but_blas_rounding():
    rows = np.random.default_rng(0).permutation(1000)[:800]
    for problem in (make_problem, exact_problem):
        X, W, b = problem(n=1000, d=40, c=7)
        for strategy in UNCERTAINTY_SCORES:
            results = [score_topk(X, W, b, strategy, 30, rows=rows, seed=5, chunk_rows=chunk, threads=threads)
                       for chunk in (1, 7, 64, 333, None) for threads in (1, 2)]
            for result in results[1:]:
                assert_agree(result, results[0])
                if problem is exact_problem:
                    np.testing.assert_array_equal(result[0], results[0][0])
                    np.testing.assert_array_equal(result[1], results[0][1])
        full = predict_proba(X, W, b)  # whatever the chunking, order and subset
        for part in (predict_proba(X, W, b, rows=rows, chunk_rows=13), predict_proba(X, W, b, rows=rows[:1])):
            if problem is exact_problem:
                np.testing.assert_array_equal(part, full[rows[:len(part)]])
            np.testing.assert_allclose(part, full[rows[:len(part)]], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_streaming_from_hdf5_equals_the_whole_array(tmp_path, dtype, monkeypatch):
    X, W, b = make_problem(n=1500, d=32, c=5, dtype=np.float16 if dtype == "float16" else np.float32)
    path = EmbeddingCache.write(tmp_path / "pool.h5", X, make_metadata(len(X)), recipe=recipe(dtype=dtype))
    largest = []
    iter_chunks = EmbeddingCache.iter_chunks

    def spy(self, rows=None, chunk_rows=None):
        for index, block in iter_chunks(self, rows=rows, chunk_rows=chunk_rows):
            largest.append(len(block))
            yield index, block

    monkeypatch.setattr(EmbeddingCache, "iter_chunks", spy)
    exclude = np.zeros(len(X), dtype=bool)
    exclude[::7] = True
    rows = np.random.default_rng(1).choice(len(X), 1000, replace=False)
    with EmbeddingCache(path) as cache:
        for strategy in UNCERTAINTY_SCORES:
            want = score_topk(X, W, b, strategy, 25, rows=rows, exclude=exclude, seed=2)
            for chunk in (100, 512, None):
                largest.clear()
                got = score_topk(cache, W, b, strategy, 25, rows=rows, exclude=exclude, seed=2, chunk_rows=chunk)
                assert_agree(got, want)
                assert max(largest) <= (chunk or len(X))
            assert_agree(score_topk(cache, W, b, strategy, 25, seed=2, chunk_rows=256),
                         score_topk(X, W, b, strategy, 25, seed=2))
        np.testing.assert_allclose(predict_proba(cache, W, b, rows=rows), predict_proba(X, W, b, rows=rows),
                                   rtol=1e-5, atol=1e-6)


def test_torch_tensors_score_like_numpy():
    torch = pytest.importorskip("torch")
    X, W, b = make_problem(c=5)
    got = score_topk(torch.from_numpy(X), torch.from_numpy(W), torch.from_numpy(b), "entropy", 10,
                     rows=torch.arange(300), seed=1)
    want = score_topk(X, W, b, "entropy", 10, rows=np.arange(300), seed=1)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_k_beyond_the_candidates_and_everything_excluded():
    X, W, b = make_problem(n=100, c=3)
    rows, scores = score_topk(X, W, b, "margin", 1000, rows=np.arange(10, 20), seed=0)
    assert sorted(rows.tolist()) == list(range(10, 20)) and (np.diff(scores) <= 0).all()
    rows, scores = score_topk(X, W, b, "margin", 5, exclude=np.ones(100, dtype=bool))
    assert rows.shape == (0,) and scores.shape == (0,)


def test_progress_reports_every_row():
    X, W, b = make_problem(n=1000, c=2)
    calls = []
    score_topk(X, W, b, "entropy", 5, chunk_rows=128, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (1000, 1000) and [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_formulas_on_zeros_ones_and_repeated_tops():
    rng = np.random.default_rng(0)
    for c in (1, 2, 9, 40):
        proba = rng.dirichlet(np.full(c, 0.3), size=200).astype(np.float32)
        proba[5, :] = 0
        proba[5, 0] = 1  # zeros and an exact one
        if c > 1:
            proba[6, :] = 0
            proba[6, :2] = 0.5  # the top probability twice
        np.testing.assert_allclose(least_confidence(proba), 1 - proba.max(axis=1))
        with np.errstate(divide="ignore", invalid="ignore"):
            want = -np.nansum(proba * np.log(proba), axis=1)
        np.testing.assert_allclose(entropy(proba), want, rtol=1e-5, atol=1e-6)
        assert entropy(proba)[5] == 0 and least_confidence(proba)[5] == 0
        if c > 1:  # margin's top two are the partition's, a repeated top included
            top2 = np.partition(proba, c - 2, axis=1)[:, -2:]
            np.testing.assert_array_equal(margin(proba), -(top2[:, 1] - top2[:, 0]))
            assert margin(proba)[6] == 0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda X, W, b: score_topk(X, W[:-1], b, "entropy", 3), "W must have shape"),
        (lambda X, W, b: score_topk(X, W, b[:-1], "entropy", 3), "b must have shape"),
        (lambda X, W, b: score_topk(X, W, b, "confidence", 3), "unknown strategy 'confidence'"),
        (lambda X, W, b: score_topk(X, W, b, "entropy", 0), "k must be a positive integer"),
        (lambda X, W, b: score_topk(X, W, b, "entropy", -2), "k must be a positive integer"),
        (lambda X, W, b: score_topk(X, W, b, "entropy", 2.5), "k must be a positive integer"),
        (lambda X, W, b: score_topk(X, W, b, "entropy", 3, backend="tpu"), "unknown backend 'tpu'"),
        (lambda X, W, b: score_topk(X, W, b, "entropy", 3, chunk_rows=0), "chunk_rows must be a positive"),
        (lambda X, W, b: score_topk(X, W, b, "entropy", 3, rows=[0, 5, 5]), "must not repeat"),
        (lambda X, W, b: score_topk(X, W, b, "entropy", 3, rows=[0, 600]), "rows must lie in 0..599"),
        (lambda X, W, b: score_topk(X, W, b, "entropy", 3, exclude=np.zeros(5, bool)), "exclude must be a boolean"),
        (lambda X, W, b: score_topk(X[0], W, b, "entropy", 3), "X must be a 2-D"),
        (lambda X, W, b: score_topk(X.astype(int), W, b, "entropy", 3), "float16 or float32"),
        (lambda X, W, b: score_topk(X, W * np.nan, b, "entropy", 3), "W and b must be finite"),
        (lambda X, W, b: predict_proba(X, W.T, b), "W must have shape"),
    ],
)
def test_bad_input_is_a_clear_error(call, message):
    X, W, b = make_problem(c=4)
    with pytest.raises(ConfigError, match=message):
        call(X, W, b)


def test_nan_rows_are_named():
    X, W, b = make_problem(c=3)
    X[17] = np.nan
    with pytest.raises(ConfigError, match=r"rows \[17\]"):
        score_topk(X, W, b, "least-confidence", 3)
    exclude = np.zeros(len(X), dtype=bool)
    exclude[17] = True  # an excluded row is never scored
    assert 17 not in score_topk(X, W, b, "least-confidence", 3, exclude=exclude)[0]


@pytest.mark.skipif(cuda_status()[0] is not None, reason="a GPU is present")
def test_cuda_backend_without_a_gpu_says_why():
    X, W, b = make_problem(c=2)
    with pytest.raises(ConfigError, match="backend='cuda' needs CuPy and a CUDA GPU"):
        score_topk(X, W, b, "entropy", 3, backend="cuda")
    assert score_topk(X, W, b, "entropy", 3, backend="auto")[0].shape == (3,)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_cuda_source_compiles(tmp_path):
    """nvcc -ptx on scores.cu with every template instantiated, warnings as errors (no GPU needed)."""
    from embedcache.kernels.cuda import SOURCE

    args = "(const {t}*, long long, int, const float*, const float*, const unsigned char*, int, float*)"
    lines = [f'#include "{SOURCE}"']
    for t in ("float", "unsigned short"):
        lines += [f"template __global__ void fused_scores<{t}, {c}>{args.format(t=t)};" for c in (1, 2, 5, 32)]
    unit = tmp_path / "instantiate.cu"
    unit.write_text("\n".join(lines) + "\n")
    result = subprocess.run(["nvcc", "-ptx", "--Werror", "all-warnings", "-o", str(tmp_path / "scores.ptx"), str(unit)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ptx = (tmp_path / "scores.ptx").read_text()
    assert ptx.count(".entry") == 9 and "logit_scores" in ptx


def load_nvrtc():
    """libnvrtc, the run-time compiler CuPy uses (from the nvidia-cuda-nvrtc wheel or the system), or None."""
    try:
        import nvidia

        found = sorted(f for base in nvidia.__path__ for f in glob.glob(f"{base}/*/lib/libnvrtc.so*") if ".alt." not in f)
    except ImportError:
        found = []
    found += [ctypes.util.find_library("nvrtc")] if ctypes.util.find_library("nvrtc") else []
    for path in found:
        for builtins in glob.glob(str(Path(path).parent / "libnvrtc-builtins.so*")):
            ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def test_cuda_source_compiles_with_nvrtc_as_cupy_does():
    """What cuda.py asks CuPy's RawModule for: scores.cu with --std=c++14 and the kernels by name."""
    from embedcache.kernels.cuda import SOURCE

    nvrtc = load_nvrtc()
    if nvrtc is None:
        pytest.skip("libnvrtc not found")
    program = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), SOURCE.read_bytes(), b"scores.cu", 0, None, None) == 0
    names = [f"fused_scores<{t}, {c}>" for t in ("float", "unsigned short") for c in (1, 2, 32)]
    for name in names:
        assert nvrtc.nvrtcAddNameExpression(program, name.encode()) == 0
    options = (ctypes.c_char_p * 2)(b"--std=c++14", b"-arch=compute_80")
    status = nvrtc.nvrtcCompileProgram(program, 2, options)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    assert status == 0, log.value.decode()
    nvrtc.nvrtcGetPTXSize(program, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetPTX(program, ptx)
    for name in names:
        lowered = ctypes.c_char_p()
        assert nvrtc.nvrtcGetLoweredName(program, name.encode(), ctypes.byref(lowered)) == 0
        assert f".entry {lowered.value.decode()}" in ptx.value.decode()
    assert ".entry logit_scores" in ptx.value.decode()
    nvrtc.nvrtcDestroyProgram(ctypes.byref(program))


# ---------------------------------------------------------------------- GPU (skipped without CuPy and a GPU)
needs_gpu = pytest.mark.skipif(cuda_status()[0] is None, reason=cuda_status()[1] or "no GPU")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("c", (2, 5, 33, 182))
@pytest.mark.parametrize("strategy", UNCERTAINTY_SCORES)
def test_gpu_agrees_with_cpu(strategy, c, dtype):
    import cupy

    for problem in (make_problem, exact_problem):
        X, W, b = problem(n=3000, d=64, c=c, dtype=dtype, seed=c)
        exclude = np.zeros(len(X), dtype=bool)
        exclude[::11] = True
        want = score_topk(X, W, b, strategy, 40, exclude=exclude, seed=4, backend="cpu")
        for source in (X, cupy.asarray(X)):
            for chunk in (None, 500):
                got = score_topk(source, W, b, strategy, 40, exclude=exclude, seed=4, backend="cuda",
                                 chunk_rows=chunk)
                assert_agree(got, want)
                assert not exclude[got[0]].any()


@pytest.mark.gpu
@needs_gpu
def test_torch_cuda_tensor_goes_to_the_gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    X, W, b = make_problem(c=5, dtype=np.float16)
    got = score_topk(torch.from_numpy(X).cuda(), W, b, "margin", 20, seed=9)
    assert_agree(got, score_topk(X, W, b, "margin", 20, seed=9, backend="cpu"))
