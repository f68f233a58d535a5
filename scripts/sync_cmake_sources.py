#!/usr/bin/env python3
"""Regenerate the file lists in CTDiffusion/CMakeLists.txt from the files on disk.

Usage: python scripts/sync_cmake_sources.py [--check]

Blocks rewritten (between "# BEGIN GENERATED: <name>" and "# END GENERATED: <name>"):
  module scripts      every .py under CTDiffusion/ (relative to CTDiffusion/; the module file first)
  module resources    every other file under CTDiffusion/Resources/ (icons, .ui, requirements.txt, scripts)
  library scripts     every .py of the CTDiffusionLib package, all subpackages (relative to the repository root)
  library resources   every other file inside CTDiffusionLib/ (data files shipped with the package)
With --check nothing is written; the exit code is 1 when the lists are out of date.
Stdlib only, so the lead can run it with any Python 3.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "CTDiffusion"
LIB_DIR = REPO / "CTDiffusionLib"
CMAKE = MODULE_DIR / "CMakeLists.txt"
IGNORED_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ipynb_checkpoints"}
IGNORED_SUFFIXES = (".pyc", ".pyo", ".orig", ".rej", ".swp", "~")
IGNORED_NAMES = {".DS_Store", "Thumbs.db", "CMakeLists.txt"}


def _files(root: Path) -> list[Path]:
    out = []
    for path in root.rglob("*"):
        if not path.is_file() or IGNORED_PARTS & set(path.relative_to(root).parts):
            continue
        if path.name in IGNORED_NAMES or path.name.endswith(IGNORED_SUFFIXES):
            continue
        out.append(path)
    return sorted(out, key=lambda p: p.as_posix())


def expected_lists() -> dict[str, list[str]]:
    module_files = _files(MODULE_DIR)
    module_scripts = [p.relative_to(MODULE_DIR).as_posix() for p in module_files if p.suffix == ".py"]
    module_scripts.sort(key=lambda s: (s != "CTDiffusion.py", s))  # the module file first
    resources_dir = MODULE_DIR / "Resources"
    module_resources = [p.relative_to(MODULE_DIR).as_posix() for p in _files(resources_dir) if p.suffix != ".py"] \
        if resources_dir.is_dir() else []
    # .py files under Resources/ (e.g. helper scripts) ship as resources, not as module scripts
    module_resources += [p.relative_to(MODULE_DIR).as_posix() for p in _files(resources_dir) if p.suffix == ".py"] \
        if resources_dir.is_dir() else []
    module_scripts = [s for s in module_scripts if not s.startswith("Resources/")]
    lib_files = _files(LIB_DIR)
    lib_scripts = [p.relative_to(REPO).as_posix() for p in lib_files if p.suffix == ".py"]
    lib_resources = [p.relative_to(REPO).as_posix() for p in lib_files if p.suffix != ".py"]
    return {"module scripts": module_scripts, "module resources": sorted(module_resources),
            "library scripts": lib_scripts, "library resources": lib_resources}


BLOCK = re.compile(r"(?P<indent>[ \t]*)# BEGIN GENERATED: (?P<name>[a-z ]+)\n(?P<body>.*?)"
                   r"(?P=indent)# END GENERATED: (?P=name)\n", re.S)


def read_lists(text: str) -> dict[str, list[str]]:
    lists = {}
    for m in BLOCK.finditer(text):
        lists[m.group("name")] = [line.strip() for line in m.group("body").splitlines()
                                  if line.strip() and not line.strip().startswith("#")]
    return lists


def render(text: str, lists: dict[str, list[str]]) -> str:
    def replace(m: re.Match) -> str:
        indent, name = m.group("indent"), m.group("name")
        items = lists.get(name, [])
        body = "".join(f"{indent}{item}\n" for item in items)
        return f"{indent}# BEGIN GENERATED: {name}\n{body}{indent}# END GENERATED: {name}\n"

    return BLOCK.sub(replace, text)


def main(argv: list[str]) -> int:
    text = CMAKE.read_text(encoding="utf-8")
    new = render(text, expected_lists())
    missing = set(expected_lists()) - set(read_lists(text))
    if missing:
        print(f"{CMAKE}: no GENERATED block for {sorted(missing)}", file=sys.stderr)
        return 2
    if "--check" in argv:
        if new != text:
            print(f"{CMAKE.relative_to(REPO)} is out of date: run python scripts/sync_cmake_sources.py",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        CMAKE.write_text(new, encoding="utf-8")
        print(f"updated {CMAKE.relative_to(REPO)}")
    else:
        print(f"{CMAKE.relative_to(REPO)} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
