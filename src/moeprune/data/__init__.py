"""Data sources: GSM8K-format word problems, the pretraining text mixture, the testbed tokenizer."""
