"""recjpq: RecJPQ item embeddings for large-catalogue sequential recommenders."""

__version__ = "0.1.0"
