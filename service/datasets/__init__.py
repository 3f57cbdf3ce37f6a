"""Datasets: uploads, the content-addressed store, and what studies may use."""
