"""Pruning: structural expert removal and unstructured weight pruning (magnitude, Wanda, SparseGPT, OWL, N:M).

The modules here are pure tensor math (tensors in, tensors or masks out); the layer-by-layer runner that
feeds calibration activations lives elsewhere and calls them.
"""
