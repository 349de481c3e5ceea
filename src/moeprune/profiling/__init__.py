"""The activation profile (`moeprune profile`): statistics.py runs the calibration pass through the
`moeprune_profile` experts implementation and reads / writes the profile; plots.py draws expert load,
co-activation and the testbed's kind x expert heat maps."""

from moeprune.profiling.statistics import (
    PROFILE_FILE,
    STAT_NAMES,
    Profile,
    forward_batch,
    load_profile,
    profile_model,
    profiling,
    save_profile,
)

__all__ = [
    "PROFILE_FILE",
    "STAT_NAMES",
    "Profile",
    "forward_batch",
    "load_profile",
    "profile_model",
    "profiling",
    "save_profile",
]
