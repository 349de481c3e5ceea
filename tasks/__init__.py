"""Prefect tasks: one thin wrapper per pipeline stage (DVC stages, register, promote). Never imports torch.

`tasks.commands` builds every stage's `moeprune` command line (pure strings); `tasks.stages` holds the
Prefect tasks. The task names below are imported on first use, so `import tasks.commands` does not
import Prefect.
"""

from typing import Any

__all__ = [
    "STAGES",
    "STAGE_TASKS",
    "commit_stage",
    "promote_models",
    "register_model",
    "reproduce_stage",
    "run_experiment",
    "stage_target",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tasks import stages

        return getattr(stages, name)
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")
