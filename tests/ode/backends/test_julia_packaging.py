"""A regular (non-editable) install carries the Julia backend: the wheel, built from an sdist as pip builds
it, contains the Julia package, and every "path" in its juliapkg.json resolves inside the installed
pynodeta (juliapkg resolves paths relative to the juliapkg.json that names them)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
SOURCES = ("pyproject.toml", "README.md", "pynodeta", "pynodeta_julia.py")

BUILD = """
import sys
from setuptools import build_meta
sdist_dir, wheel_dir = sys.argv[1], sys.argv[2]
print(build_meta.build_sdist(sdist_dir) if wheel_dir == "-" else build_meta.build_wheel(wheel_dir))
"""


def build(source: Path, sdist_dir: Path, wheel_dir: str) -> str:
    out = subprocess.run([sys.executable, "-c", BUILD, str(sdist_dir), wheel_dir], cwd=source, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """sdist from a copy of the checkout (symbolic links followed, caches left out), then the wheel."""
    work = tmp_path_factory.mktemp("build")
    checkout = work / "checkout"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, checkout / name, ignore=ignore)
        else:
            checkout.mkdir(exist_ok=True)
            shutil.copy(source, checkout / name)
    sdist = build(checkout, work, "-")
    with tarfile.open(work / sdist) as archive:
        archive.extractall(work / "unpacked", filter="data")
    unpacked = next((work / "unpacked").iterdir())
    name = build(unpacked, work, str(work / "wheel"))
    return zipfile.ZipFile(work / "wheel" / name)


@pytest.mark.slow
def test_every_juliapkg_path_resolves_inside_the_installed_package(wheel):
    names = set(wheel.namelist())
    for json_name in (n for n in names if n.endswith("juliapkg.json")):
        declared = json.loads(wheel.read(json_name))
        for package, spec in declared["packages"].items():
            if "path" not in spec:
                continue
            base = PurePosixPath(json_name).parent
            target = PurePosixPath(*_normalised((base / spec["path"]).parts))
            assert target.parts[0] == "pynodeta", f"{package} resolves to {target}, outside pynodeta"
            assert f"{target}/Project.toml" in names, f"{package}'s path {spec['path']!r} is not in the wheel"


def _normalised(parts) -> list[str]:
    out: list[str] = []
    for part in parts:
        if part == "..":
            assert out, "path leaves the wheel"
            out.pop()
        elif part != ".":
            out.append(part)
    return out


@pytest.mark.slow
def test_the_wheel_carries_the_whole_julia_package_and_the_start_up_helper(wheel):
    names = set(wheel.namelist())
    package = REPO_ROOT / "pynodeta" / "julia"
    expected = {f"pynodeta/julia/{p.relative_to(package).as_posix()}" for p in package.rglob("*") if p.is_file()}
    assert expected <= names, sorted(expected - names)
    assert "pynodeta_julia.py" in names
    assert not any(name.startswith("julia/") for name in names)  # the repository's link is not shipped


@pytest.mark.slow
def test_the_julia_extra_requires_a_juliacall_that_the_install_hint_can_rely_on(wheel):
    metadata = wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert 'Requires-Dist: juliacall>=0.9.27; extra == "julia"' in metadata
