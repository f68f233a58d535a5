"""First-use dependency check for the Slicer module: which packages of Resources/requirements.txt are missing or
too old, whether PyTorch is there, and whether installing them calls for a restart. Stdlib only, nothing is
imported to find out (importlib.metadata reads the installed distributions' metadata).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

#: Packages Slicer ships and that an extension must never replace (nor list in requirements.txt).
SLICER_OWNED = frozenset({"simpleitk", "numpy", "requests", "vtk", "torch", "pip", "setuptools"})
#: Import name of a distribution when it differs from the distribution name.
IMPORT_NAMES = {"pillow": "PIL", "scikit-image": "skimage", "huggingface-hub": "huggingface_hub"}

_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?:(>=|==|~=)\s*([0-9][0-9A-Za-z.+-]*))?")


@dataclass(frozen=True)
class Requirement:
    line: str
    name: str
    op: str | None = None
    version: str | None = None

    @property
    def key(self) -> str:
        return normalize(self.name)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirements(text: str) -> list[Requirement]:
    reqs = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = _REQ.match(line)
        if m:
            reqs.append(Requirement(line=line, name=m.group(1), op=m.group(2), version=m.group(3)))
    return reqs


def load_requirements(path: str | Path) -> list[Requirement]:
    return parse_requirements(Path(path).read_text(encoding="utf-8"))


def _version_tuple(text: str) -> tuple:
    parts = []
    for piece in re.split(r"[.+-]", text):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def satisfied(req: Requirement, version: str | None) -> bool:
    if version is None:
        return False
    if not req.op or not req.version:
        return True
    have, want = _version_tuple(version), _version_tuple(req.version)
    if req.op == ">=":
        return have >= want
    if req.op == "==":
        return have == want
    if req.op == "~=":
        return have >= want and have[: max(1, len(want) - 1)] == want[: max(1, len(want) - 1)]
    return True


@dataclass
class DependencyStatus:
    torch_installed: bool
    missing: list = field(default_factory=list)  # Requirement objects not satisfied
    restart_recommended: bool = False  # an outdated package is already imported in this process

    @property
    def ok(self) -> bool:
        return self.torch_installed and not self.missing

    def text(self) -> str:
        if self.ok:
            return "All Python packages are installed."
        parts = []
        if not self.torch_installed:
            parts.append("PyTorch (installed by the PyTorch extension, GPU build when a GPU is present)")
        if self.missing:
            parts.append(", ".join(r.line for r in self.missing))
        return "To install on first use: " + "; ".join(parts) + "."


def check(requirements: list[Requirement] | str | Path, modules=None) -> DependencyStatus:
    if not isinstance(requirements, list):
        requirements = load_requirements(requirements)
    modules = sys.modules if modules is None else modules
    missing, restart = [], False
    for req in requirements:
        if req.key in SLICER_OWNED:
            continue
        version = installed_version(req.name)
        if not satisfied(req, version):
            missing.append(req)
            import_name = IMPORT_NAMES.get(req.key, req.name.replace("-", "_"))
            if version is not None and import_name in modules:
                restart = True
    torch = importlib.util.find_spec("torch") is not None
    return DependencyStatus(torch_installed=torch, missing=missing, restart_recommended=restart)
