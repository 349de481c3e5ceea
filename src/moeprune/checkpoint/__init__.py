"""Checkpoint I/O: how every stage opens a model (`source.open_model` -> `ModelSource`), reads safetensors
shards a tensor at a time (`shards`), applies transformers' key conversions (`key_conversion`), streams
one layer at a time (`streamed`) and writes a processed model (`writer`); `budget` decides streaming."""
