"""Fused uncertainty scoring of large pools under a linear head: CPU always, CuPy kernel when a GPU is present.

`score_topk(X, W, b, strategy, k, ...)` ranks a pool (numpy, torch, CuPy or a streamed
`EmbeddingCache`) without materialising its [N, C] probabilities; `predict_proba` and
`predict_logits` give its arithmetic for evaluation and for the unfused acquisition path;
`score_topk_many` and `predict_many` do the same for several heads in one pass over the pool.
"""

from embedcache.kernels.scorer import (BACKENDS, predict_logits, predict_many, predict_proba, score_topk,
                                      score_topk_many)

__all__ = ["BACKENDS", "predict_logits", "predict_many", "predict_proba", "score_topk", "score_topk_many"]
