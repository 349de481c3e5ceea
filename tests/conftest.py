"""Shared test set-up: offline, telemetry-free, quiet."""

from moeprune.env import apply_offline_defaults

apply_offline_defaults()
