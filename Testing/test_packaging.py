"""Extension packaging: every shipped file is listed in CMake, the CMake metadata and the ExtensionsIndex catalog
entry agree, the icon/license/requirements are in place, and the CMake files configure (against a stub Slicer)
into the layout Slicer loads: <qt-scripted-modules>/CTDiffusion.py + CTDiffusionLib/..."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP_CMAKE = REPO / "CMakeLists.txt"
MODULE_DIR = REPO / "CTDiffusion"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
LIB_DIR = REPO / "CTDiffusionLib"
CATALOG = REPO / "CTDiffusion.json"
CATALOG_KEYS = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                "build_subdirectory", "enabled", "tier"}
SCHEMA = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
SKIP_PARTS = {"__pycache__", ".pytest_cache"}


def _strip_comments(text: str) -> str:
    """Drop CMake line comments (a # outside a quoted string)."""
    lines = []
    for line in text.splitlines():
        quoted, cut = False, len(line)
        for i, ch in enumerate(line):
            if ch == '"':
                quoted = not quoted
            elif ch == "#" and not quoted:
                cut = i
                break
        lines.append(line[:cut])
    return "\n".join(lines)


def _cmake_set(text: str, var: str) -> list[str]:
    """Values of set(VAR ...) (quoted strings kept whole)."""
    m = re.search(r"set\(\s*" + re.escape(var) + r"\s+(.*?)\)", _strip_comments(text), re.S)
    if not m:
        return []
    return [a or b for a, b in re.findall(r'"([^"]*)"|(\S+)', m.group(1))]


def _files(root: Path):
    for path in sorted(root.rglob("*")):
        if path.is_file() and not (SKIP_PARTS & set(path.relative_to(root).parts)) and not path.name.endswith(
                (".pyc", "~")) and path.name not in ("CMakeLists.txt", ".DS_Store"):
            yield path


# -------------------------------------------------------------------------------------------- listings
def test_every_shipped_file_is_listed_in_cmake():
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    scripts = {s.replace("${MODULE_NAME}", "CTDiffusion") for s in _cmake_set(text, "MODULE_PYTHON_SCRIPTS")}
    resources = set(_cmake_set(text, "MODULE_PYTHON_RESOURCES"))
    lib_scripts = set(_cmake_set(text, "CTDIFFUSIONLIB_SCRIPTS"))
    lib_resources = set(_cmake_set(text, "CTDIFFUSIONLIB_RESOURCES"))
    missing = []
    for path in _files(MODULE_DIR):
        rel = path.relative_to(MODULE_DIR).as_posix()
        if rel.startswith("Resources/"):
            if rel not in resources:
                missing.append(f"CTDiffusion/{rel} (MODULE_PYTHON_RESOURCES)")
        elif path.suffix == ".py" and rel not in scripts:
            missing.append(f"CTDiffusion/{rel} (MODULE_PYTHON_SCRIPTS)")
    for path in _files(LIB_DIR):  # every subpackage, including ones added after this test was written
        rel = path.relative_to(REPO).as_posix()
        if path.suffix == ".py" and rel not in lib_scripts:
            missing.append(f"{rel} (CTDIFFUSIONLIB_SCRIPTS)")
        elif path.suffix != ".py" and rel not in lib_resources:
            missing.append(f"{rel} (CTDIFFUSIONLIB_RESOURCES)")
    assert not missing, ("Not listed in CTDiffusion/CMakeLists.txt (run python scripts/sync_cmake_sources.py):\n  "
                         + "\n  ".join(missing))
    stale = [s for s in scripts if not (MODULE_DIR / s).is_file()]
    stale += [r for r in resources if not (MODULE_DIR / r).is_file()]
    stale += [s for s in lib_scripts | lib_resources if not (REPO / s).is_file()]
    assert not stale, f"Listed in CMake but not on disk: {stale}"
    # every package folder has its __init__.py shipped
    for folder in {p.parent for p in LIB_DIR.rglob("*.py") if "__pycache__" not in p.parts}:
        assert (folder / "__init__.py").relative_to(REPO).as_posix() in lib_scripts, folder


def test_sync_script_agrees():
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "sync_cmake_sources.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_sync_script_rewrites_blocks(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import sync_cmake_sources as sync
    finally:
        sys.path.pop(0)
    text = "set(X\n  # BEGIN GENERATED: library scripts\n  old.py\n  # END GENERATED: library scripts\n  )\n"
    new = sync.render(text, {"library scripts": ["a.py", "b/c.py"]})
    assert new == "set(X\n  # BEGIN GENERATED: library scripts\n  a.py\n  b/c.py\n  # END GENERATED: library scripts\n  )\n"
    assert sync.read_lists(new) == {"library scripts": ["a.py", "b/c.py"]}


def test_module_cmake_macros():
    text = _strip_comments(MODULE_CMAKE.read_text(encoding="utf-8"))
    m = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", text, re.S)
    assert m, "slicerMacroBuildScriptedModule missing"
    args = m.group(1).split()
    assert "WITH_GENERIC_TESTS" in args and "${MODULE_PYTHON_SCRIPTS}" in args and "${MODULE_PYTHON_RESOURCES}" in args
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", text)
    assert _cmake_set(text, "MODULE_NAME") == ["CTDiffusion"]
    # the library scripts are appended to the scripts slicerMacroBuildScriptedModule ships
    assert re.search(r"list\(APPEND MODULE_PYTHON_SCRIPTS", text)


# --------------------------------------------------------------------------------------------- metadata
def _top():
    return TOP_CMAKE.read_text(encoding="utf-8")


def test_top_level_cmake_has_all_extension_metadata():
    text = _strip_comments(_top())
    assert re.search(r"project\(\s*CTDiffusion\s*\)", text)
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        values = _cmake_set(text, var)
        assert values and all(values), f"{var} is not set"
    assert _cmake_set(text, "EXTENSION_CATEGORY") == ["Image Synthesis"]
    assert _cmake_set(text, "EXTENSION_DEPENDS") == ["PyTorch"]
    for url_var in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in _cmake_set(text, url_var):
            assert url.startswith("https://"), (url_var, url)
    assert re.search(r"find_package\(\s*Slicer\s+REQUIRED\s*\)", text) and "include(${Slicer_USE_FILE})" in text
    assert "include(${Slicer_EXTENSION_GENERATE_CONFIG})" in text and "include(${Slicer_EXTENSION_CPACK})" in text
    subdirs = re.findall(r"add_subdirectory\(\s*(\S+?)\s*\)", text)
    modules = sorted(p.parent.name for p in REPO.glob("*/CMakeLists.txt") if (p.parent / f"{p.parent.name}.py").is_file())
    assert sorted(subdirs) == modules == ["CTDiffusion"]


def test_catalog_entry_matches_cmake():
    entry = json.loads(CATALOG.read_text(encoding="utf-8"))
    assert set(entry) <= CATALOG_KEYS, f"not in schema v1.0.1: {set(entry) - CATALOG_KEYS}"
    assert entry["$schema"] == SCHEMA
    assert {"$schema", "category", "scm_url"} <= set(entry)
    text = _top()
    assert entry["category"] == _cmake_set(text, "EXTENSION_CATEGORY")[0]
    assert entry["build_dependencies"] == ["PyTorch"] == _cmake_set(text, "EXTENSION_DEPENDS")
    assert entry.get("build_subdirectory", ".") == (_cmake_set(text, "EXTENSION_BUILD_SUBDIRECTORY") or ["."])[0]
    assert entry.get("tier", 5) in (1, 3, 5) and entry.get("scm_type", "git") in ("git", "local")
    repo_url = entry["scm_url"].removesuffix(".git")
    homepage = _cmake_set(text, "EXTENSION_HOMEPAGE")[0]
    assert homepage.split("#")[0].rstrip("/") == repo_url
    # icon/screenshot URLs point into this repository at the catalog's revision
    raw = repo_url.replace("https://github.com/", "https://raw.githubusercontent.com/") + f"/{entry['scm_revision']}/"
    icon = _cmake_set(text, "EXTENSION_ICONURL")[0]
    assert icon.startswith(raw) and (REPO / icon[len(raw):]).is_file(), icon
    shots = _cmake_set(text, "EXTENSION_SCREENSHOTURLS")
    assert shots
    for shot in shots:  # the catalog shows these: each must be a committed PNG
        assert shot.startswith(raw + "Resources/"), shot
        assert (REPO / shot[len(raw):]).is_file(), f"{shot} points to a file that is not in the repository"
        width, height = _png_size(REPO / shot[len(raw):])
        assert width >= 400 and height >= 200


def _png_size(path: Path):
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_icons_license_requirements():
    assert _png_size(REPO / "Resources" / "CTDiffusion.png") == (128, 128)
    assert _png_size(MODULE_DIR / "Resources" / "Icons" / "CTDiffusion.png") == (128, 128)
    license_text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0" in license_text
    reqs = (MODULE_DIR / "Resources" / "requirements.txt").read_text(encoding="utf-8").lower()
    names = [re.split(r"[<>=~\[; ]", line.strip())[0] for line in reqs.splitlines()
             if line.strip() and not line.strip().startswith("#")]
    assert {"monai", "diffusers", "safetensors", "einops", "psutil"} <= set(names)
    assert not {"simpleitk", "numpy", "requests", "torch", "vtk"} & set(names), "never replace Slicer's own packages"
    assert (REPO / "docs" / "slicer.md").is_file()


# ---------------------------------------------------------------------------------- configure with CMake
STUB_CONFIG = """
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/Noop.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/Noop.cmake)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.10/qt-scripted-modules)
set(BUILD_TESTING ON)
"""
# A stand-in for Slicer's macros that places files where CTK's ctkMacroCompilePythonScript would: relative
# scripts/resources under the module source dir, absolute scripts relative to the current binary dir.
STUB_USE = """
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(STUB "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  set(_dest ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR})
  foreach(_f IN LISTS STUB_SCRIPTS STUB_RESOURCES)
    if(IS_ABSOLUTE "${_f}")
      set(_src ${_f})
      file(RELATIVE_PATH _rel ${CMAKE_CURRENT_BINARY_DIR} ${_f})
    else()
      set(_src ${CMAKE_CURRENT_SOURCE_DIR}/${_f})
      set(_rel ${_f})
    endif()
    if(NOT EXISTS ${_src})
      message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file ${_f}")
    endif()
    configure_file(${_src} ${_dest}/${_rel} COPYONLY)
  endforeach()
  file(APPEND ${CMAKE_BINARY_DIR}/stub_report.txt "module=${STUB_NAME}\\ngeneric_tests=${STUB_WITH_GENERIC_TESTS}\\n")
endmacro()
function(slicer_add_python_unittest)
  cmake_parse_arguments(STUB "" "SCRIPT" "" ${ARGN})
  file(APPEND ${CMAKE_BINARY_DIR}/stub_report.txt "unittest=${STUB_SCRIPT}\\n")
endfunction()
"""


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_configures_into_slicer_layout(tmp_path):
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(STUB_CONFIG)
    (stub / "UseSlicer.cmake").write_text(STUB_USE)
    (stub / "Noop.cmake").write_text("")
    build = tmp_path / "build"
    out = subprocess.run(["cmake", "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={stub}", "-G", "Ninja"
                          if shutil.which("ninja") else "Unix Makefiles"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = (build / "stub_report.txt").read_text(encoding="utf-8")
    assert "module=CTDiffusion" in report and "generic_tests=TRUE" in report and "unittest=CTDiffusion.py" in report
    dest = build / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    assert (dest / "CTDiffusion.py").is_file() and (dest / "Resources" / "UI" / "CTDiffusion.ui").is_file()
    shipped = sorted(p.relative_to(dest).as_posix() for p in (dest / "CTDiffusionLib").rglob("*") if p.is_file())
    on_disk = sorted(p.relative_to(REPO).as_posix() for p in _files(LIB_DIR))
    assert shipped == on_disk
    # the shipped copy is importable as Slicer would import it (module folder on sys.path)
    code = "import CTDiffusionLib.jobs.commands as c, pathlib, sys; print(c.LIBRARY_PARENT)"
    res = subprocess.run([sys.executable, "-c", code], cwd=str(dest), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()) == dest.resolve()


def test_catalog_entry_is_formatted_as_the_extensions_index_formats_it():
    """The ExtensionsIndex pre-commit check runs prettier 3.5.3 with prettier-plugin-multiline-arrays 4.0.3 and
    `multilineArraysWrapThreshold: 0` (its .prettierrc.js and .pre-commit-config.yaml): every non-empty array
    has one element per line, objects are expanded, two-space indent, final newline. For a flat entry like this
    one that is exactly json.dumps(indent=2); `"build_dependencies": ["PyTorch"]` on one line fails the check."""
    text = CATALOG.read_text(encoding="utf-8")
    expected = json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"
    assert text == expected, "format CTDiffusion.json as the ExtensionsIndex's prettier does:\n" + expected
