"""Prefect flows: `pipeline` (the DVC stages as tasks), `sweep` (a grid of DVC experiments), `promote`.

Flows only sequence tasks; they never import torch. `flows.deployments` declares the cron schedules.
"""

from moeprune.env import apply_offline_defaults

apply_offline_defaults()  # before prefect is imported: offline, no analytics, a patient server start-up
