"""Prefect tasks: one thin wrapper per pipeline stage (DVC stages, register, promote). Never imports torch."""

from tasks.stages import (
    STAGE_TASKS,
    STAGES,
    commit_stage,
    promote_models,
    register_model,
    reproduce_stage,
    run_experiment,
    stage_target,
)

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
