"""Analysis of run records and embedding spaces: why active learning helps."""
