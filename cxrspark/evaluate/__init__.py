"""Metrics, reports and explanations of trained models (numpy/pandas; no Spark)."""
