"""Expert-similarity metrics (linear CKA, cosine) for logging and analysis."""
