"""Analysis: why AL helps — learning curves, acquisitions, separability, t-SNE and neighbourhoods."""
