"""Evaluation metrics for vtd models."""
