"""Fused uncertainty scoring of large pools under a linear head: CPU always, CuPy kernel when a GPU is present.

`score_topk(X, W, b, strategy, k, ...)` ranks a pool (numpy, torch, CuPy or a streamed
`EmbeddingCache`) without materialising its [N, C] probabilities; `predict_proba` and
`predict_logits` give its arithmetic for evaluation and for the unfused acquisition path.
"""

from embedcache.kernels.scorer import BACKENDS, predict_logits, predict_proba, score_topk

__all__ = ["BACKENDS", "predict_logits", "predict_proba", "score_topk"]
