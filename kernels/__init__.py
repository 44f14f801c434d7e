"""Fused uncertainty scoring of large pools (CPU path always; CuPy kernel when a GPU is present)."""
