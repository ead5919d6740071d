"""Datasets: in-memory containers, embedded (generated) defaults and real-format readers."""
