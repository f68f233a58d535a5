"""Child-process jobs of the Slicer module: command lines (commands) and the non-blocking runner (runner).

Stdlib + psutil only; importing this package never imports qt, slicer or torch.
"""

from CTDiffusionLib.jobs.commands import (
    ChildCommand,
    EvaluateSettings,
    GenerateSettings,
    PhantomSettings,
    TrainSettings,
    build_command,
    child_environment,
    device_choices,
    format_condition,
    in_slicer_application,
    python_launcher,
)
from CTDiffusionLib.jobs.runner import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    FINISHED,
    IDLE,
    RUNNING,
    STOPPING,
    JobRunner,
    describe_progress,
    format_eta,
    stop_all_jobs,
    terminate_tree,
)

__all__ = [
    "ChildCommand", "EvaluateSettings", "GenerateSettings", "PhantomSettings", "TrainSettings", "build_command",
    "child_environment", "device_choices", "format_condition", "in_slicer_application", "python_launcher",
    "EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "FINISHED", "IDLE", "RUNNING", "STOPPING",
    "JobRunner", "describe_progress", "format_eta", "stop_all_jobs", "terminate_tree",
]
