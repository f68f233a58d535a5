"""The Slicer module's decisions, outside the GUI: what the panels offer and send (panel), where runs, exports and
reports go and what a training reads (plans), the child's command line from a command's request (commands), the non-blocking runner that
also stops the engine through Slicer's launcher (runner), and the first-use dependency check (dependencies).

Stdlib + psutil only; importing this package never imports qt, slicer or torch.
"""

from CTDiffusionLib.jobs.commands import (
    ChildCommand,
    build_command,
    child_environment,
    device_choices,
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
    "ChildCommand", "build_command", "child_environment", "device_choices", "in_slicer_application", "python_launcher",
    "EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "FINISHED", "IDLE", "RUNNING", "STOPPING",
    "JobRunner", "describe_progress", "format_eta", "stop_all_jobs", "terminate_tree",
]
