"""Binary-code search: Faiss-compatible LSH, Hamming k-NN (Faiss and JAX) and UTS's frame-level
video retrieval (Algorithm 1)."""
