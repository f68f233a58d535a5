"""Errors a researcher sees: one sentence naming the file or setting, plus a hint on what to do.

The CLI turns these into exit codes and `error` events; everything else is a bug and shows a traceback.
"""

EXIT_OK = 0
EXIT_FAILED = 1  # the run itself failed (diverged, out of memory, ...)
EXIT_BAD_INPUT = 2  # bad data, bad setting, bad bundle: nothing was written
EXIT_INTERRUPTED = 130  # stopped by SIGINT/SIGTERM after saving a checkpoint


class CTDiffusionError(Exception):
    """Base of all errors meant for the user. `message` says what is wrong, `hint` what to do about it."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


class InputError(CTDiffusionError):
    """Bad input data, settings or model bundle (exit code 2; nothing half-written is left behind)."""

    exit_code = EXIT_BAD_INPUT


class TrainingFailed(CTDiffusionError):
    """The run started but cannot go on (e.g. NaN loss); the last good checkpoint stays."""

    exit_code = EXIT_FAILED


class Interrupted(CTDiffusionError):
    """SIGINT/SIGTERM arrived; a checkpoint was written and `--resume` continues."""

    exit_code = EXIT_INTERRUPTED
