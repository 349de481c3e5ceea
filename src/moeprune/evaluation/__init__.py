"""Evaluation: the `--task` implementations (GSM8K and any lm-eval task, perplexity, ImageNet-style top-1)
and the sparsity and size figures every metrics file carries (efficiency.py)."""
