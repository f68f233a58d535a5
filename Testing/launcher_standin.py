"""Stand-in for Slicer's PythonSlicer launcher (CTKAppLauncher), used by the job tests.

What it reproduces, as read in commontk/AppLauncher Base/ctkAppLauncher.cpp: the launcher starts the real
interpreter as its own child (a QProcess with forwarded channels, so the child writes straight into the
launcher's stdout/stderr), waits for it and exits with its exit code; it installs no signal handler, so a
SIGTERM ends the launcher at once and is NOT forwarded: the interpreter keeps running, orphaned.

Usage (what tests install as SLICER_HOME/bin/PythonSlicer): launcher_standin.py -m CTDiffusionLib train ...
"""

import subprocess
import sys


def main() -> int:
    child = subprocess.Popen([sys.executable, *sys.argv[1:]])  # inherits stdin/stdout/stderr: forwarded channels
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
