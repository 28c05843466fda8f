"""The vector space: a FAISS index over track embeddings and the algorithms built on it."""
