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

#: The PyTorch the engine needs (pyproject.toml: torch>=2.4); the PyTorch extension installs or upgrades it.
TORCH_MINIMUM = "2.4"
#: Oldest Slicer the module runs in: 5.10 embeds Python 3.12 (5.6/5.8 embed 3.9, which the engine cannot run on).
SLICER_MINIMUM = (5, 10)
PYTHON_MINIMUM = (3, 11)

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
    torch_version: str | None = None  # installed PyTorch (None: not installed or unknown)

    @property
    def torch_too_old(self) -> bool:
        return self.torch_installed and self.torch_version is not None and not satisfied(
            Requirement(f"torch>={TORCH_MINIMUM}", "torch", ">=", TORCH_MINIMUM), self.torch_version)

    @property
    def ok(self) -> bool:
        return self.torch_installed and not self.torch_too_old and not self.missing

    def text(self) -> str:
        if self.ok:
            return "All Python packages are installed."
        parts = []
        if not self.torch_installed:
            parts.append("PyTorch (installed by the PyTorch extension, GPU build when a GPU is present)")
        elif self.torch_too_old:
            parts.append(f"PyTorch {TORCH_MINIMUM} or newer (installed: {self.torch_version}; upgraded by the "
                         "PyTorch extension, then restart Slicer)")
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
    torch_version = installed_version("torch") if torch else None
    return DependencyStatus(torch_installed=torch, missing=missing, restart_recommended=restart,
                            torch_version=torch_version)


def unsupported_slicer(slicer_version: tuple[int, int], python_version: tuple[int, int] | None = None) -> str | None:
    """One sentence when this Slicer is too old for CTDiffusion, else None."""
    python_version = tuple(python_version or sys.version_info[:2])
    if tuple(slicer_version) < SLICER_MINIMUM or python_version < PYTHON_MINIMUM:
        return (f"CTDiffusion needs Slicer {SLICER_MINIMUM[0]}.{SLICER_MINIMUM[1]} or newer (this is Slicer "
                f"{slicer_version[0]}.{slicer_version[1]} with Python {python_version[0]}.{python_version[1]}; "
                f"the engine needs Python {PYTHON_MINIMUM[0]}.{PYTHON_MINIMUM[1]}+): please install a current Slicer.")
    return None


# ------------------------------------------------------------------------------------- how to install, by version
#: Slicer that has slicer.packaging.pip_ensure (Base/Python/slicer/packaging.py exists from v5.12.0; v5.10.0 has only
#: slicer.util.pip_install(requirements), which runs `python -m pip install` with the arguments given).
SLICER_PIP_ENSURE = (5, 12)
#: Slicer's own packages that monai/diffusers/scipy/matplotlib must not move: pinned to what is installed.
PINNED = ("torch", "numpy", "SimpleITK", "requests")


@dataclass(frozen=True)
class InstallPlan:
    """How this Slicer installs the missing packages of Resources/requirements.txt (after the module's one
    confirmation): `method` is "pip_install" (slicer.util.pip_install(arguments), Slicer 5.10) or "pip_ensure"
    (slicer.packaging.pip_ensure(requirements, **options), Slicer 5.12+), always with the constraints file."""

    method: str
    requirements: tuple[str, ...]
    constraints: str  # the constraints file's text: PINNED packages at their installed versions

    def pip_install_arguments(self, constraints_path: str | Path) -> list[str]:
        """slicer.util.pip_install's list form: each item one argument (a path with spaces stays one)."""
        return ["-c", str(constraints_path), *self.requirements]

    def pip_ensure_options(self, constraints_path: str | Path) -> dict:
        """slicer.packaging.pip_ensure keyword arguments: the module asked already and offers the restart itself,
        so pip_ensure shows neither its confirmation (whose "No" it turns into an error) nor its restart prompt;
        it installs in testing mode too, as the 5.10 path does."""
        return {"constraints": str(constraints_path), "prompt_install": False, "prompt_restart": False,
                "requester": "CTDiffusion", "skip_in_testing": False}


def constraints_text(version_of=installed_version) -> str:
    """`name==version` for each installed PINNED package (pip -c: a pin that never installs anything itself)."""
    lines = ["# Slicer's own packages, pinned while CTDiffusion installs its requirements"]
    for name in PINNED:
        version = version_of(name)
        if version:
            lines.append(f"{name}=={version}")
    return "\n".join(lines) + "\n"


def install_plan(slicer_version: tuple[int, int], status: DependencyStatus, version_of=installed_version
                 ) -> InstallPlan:
    """The one install path for this Slicer version (PyTorch itself comes from the PyTorch extension)."""
    method = "pip_ensure" if tuple(slicer_version) >= SLICER_PIP_ENSURE else "pip_install"
    return InstallPlan(method, tuple(r.line for r in status.missing), constraints_text(version_of))


def write_constraints(plan: InstallPlan, folder: str | Path) -> Path:
    path = Path(folder) / "CTDiffusion-constraints.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(plan.constraints, encoding="utf-8")
    return path
