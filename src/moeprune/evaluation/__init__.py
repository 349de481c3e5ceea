"""Evaluation tasks (GSM8K through lm-eval, routing reports)."""
