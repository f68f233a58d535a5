"""`python -m CTDiffusionLib ...` (what the Slicer module runs in a child process) == the `ctdiffusion` command."""

import sys

from CTDiffusionLib.cli import main

if __name__ == "__main__":
    sys.exit(main())
