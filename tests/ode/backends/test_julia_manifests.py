"""The Julia backend's manifests, checked without Julia: every uuid is the registered one, the Julia
package's Project.toml and pynodeta/juliapkg.json agree, and the sources only use declared packages.

A wrong uuid makes juliapkg's install fail, and then `import juliacall` fails for every package of that
Python environment; nothing short of these checks catches it on a machine without Julia.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import pynodeta_julia

tomllib = pytest.importorskip("tomllib")

REPO_ROOT = Path(__file__).resolve().parents[3]
JULIA_PACKAGE = REPO_ROOT / "pynodeta" / "julia"
JULIAPKG_JSON = REPO_ROOT / "pynodeta" / "juliapkg.json"

# name -> uuid of every Julia package PyNoDeTa names, each copied from the package's own upstream
# Project.toml and confirmed in the General registry (JuliaRegistries/General, <L>/<Name>/Package.toml).
REGISTERED_UUIDS = {
    # SciML/ADTypes.jl Project.toml; General A/ADTypes/Package.toml.
    "ADTypes": "47edcb42-4c32-4615-8424-f2b9edc5f35b",
    # SciML/OrdinaryDiffEq.jl lib/OrdinaryDiffEqLowOrderRK/Project.toml; General O/OrdinaryDiffEqLowOrderRK.
    "OrdinaryDiffEqLowOrderRK": "1344f307-1e59-4825-a18e-ace9aa3fa4c6",
    # SciML/OrdinaryDiffEq.jl lib/OrdinaryDiffEqRosenbrock/Project.toml; General O/OrdinaryDiffEqRosenbrock.
    "OrdinaryDiffEqRosenbrock": "43230ef6-c299-4910-a778-202eb28ce4ce",
    # SciML/OrdinaryDiffEq.jl lib/OrdinaryDiffEqSDIRK/Project.toml from v1.3.0 on; General
    # O/OrdinaryDiffEqSDIRK/Package.toml (versions 1.1.0 onwards). The v1.0.0 commit's uuid
    # b2cb2727-2d56-444c-bf6a-1484cae16977 was never registered.
    "OrdinaryDiffEqSDIRK": "2d112036-d095-4a1e-ab9a-08536f3ecdbf",
    # SciML/OrdinaryDiffEq.jl lib/OrdinaryDiffEqTsit5/Project.toml; General O/OrdinaryDiffEqTsit5.
    "OrdinaryDiffEqTsit5": "b1df2697-797e-41e3-8120-5422d3b24e4a",
    # SciML/OrdinaryDiffEq.jl lib/OrdinaryDiffEqVerner/Project.toml; General O/OrdinaryDiffEqVerner.
    "OrdinaryDiffEqVerner": "79d7bb75-1356-48c1-b8c0-6832512096c2",
    # JuliaLang/PrecompileTools.jl Project.toml; General P/PrecompileTools/Package.toml.
    "PrecompileTools": "aea7be01-6a6a-4083-8856-8a6e6704d82a",
    # SciML/SciMLBase.jl Project.toml; General O/OrdinaryDiffEqSDIRK/Deps.toml names the same uuid.
    "SciMLBase": "0bca4576-84f4-4d90-8ffe-ffa030f20462",
    # JuliaGPU/CUDA.jl Project.toml; General Registry.toml and C/CUDA/Package.toml.
    "CUDA": "052768ef-5323-5732-b1bb-66c8b64840ba",
    # pabloferz/DLPack.jl Project.toml (v0.3.1); General D/DLPack/Package.toml.
    "DLPack": "53c2dc0f-f7d5-43fd-8906-6c0220547083",
    # The Test standard library (julia/stdlib/Test/Project.toml; [extras] of every SciML package).
    "Test": "8dfed614-e22c-5e08-85e1-65c5234f0b40",
}


def load_project() -> dict:
    return tomllib.loads((JULIA_PACKAGE / "Project.toml").read_text())


def load_juliapkg() -> dict:
    return json.loads(JULIAPKG_JSON.read_text())


def declared_uuids(project: dict) -> dict[str, str]:
    """name -> uuid over [deps], [weakdeps] and [extras]; a name declared twice must agree."""
    uuids: dict[str, str] = {}
    for section in ("deps", "weakdeps", "extras"):
        for name, uuid in project.get(section, {}).items():
            assert uuids.setdefault(name, uuid) == uuid, f"{name} has two uuids in Project.toml"
    return uuids


def test_every_julia_dependency_has_its_registered_uuid():
    assert declared_uuids(load_project()) == REGISTERED_UUIDS


def test_the_unregistered_sdirk_uuid_appears_nowhere():
    for path in (JULIA_PACKAGE / "Project.toml", JULIAPKG_JSON):
        assert "b2cb2727-2d56-444c-bf6a-1484cae16977" not in path.read_text(), path


def test_juliapkg_json_declares_the_julia_package_dependencies_with_the_same_uuids_and_compat():
    project, packages = load_project(), dict(load_juliapkg()["packages"])
    package = packages.pop("PyNoDeTa")
    assert package["uuid"] == project["uuid"]
    assert {name: spec["uuid"] for name, spec in packages.items()} == project["deps"]
    assert {name: spec["version"] for name, spec in packages.items()} == {
        name: project["compat"][name] for name in project["deps"]
    }
    assert load_juliapkg()["julia"] == project["compat"]["julia"]


def test_the_gpu_packages_are_weak_dependencies_kept_out_of_juliapkg_json():
    project = load_project()
    assert set(project["weakdeps"]).isdisjoint(load_juliapkg()["packages"])  # CPU installs never fetch CUDA
    assert pynodeta_julia.GPU_PACKAGES == {
        name: (uuid, project["compat"][name]) for name, uuid in project["weakdeps"].items()
    }
    assert project["extensions"] == {"PyNoDeTaCUDAExt": sorted(project["weakdeps"])}
    assert (JULIA_PACKAGE / "ext" / "PyNoDeTaCUDAExt.jl").is_file()


def test_every_dependency_has_compat_and_every_compat_entry_a_dependency():
    project = load_project()
    declared = set(declared_uuids(project))
    assert set(project["compat"]) == declared | {"julia"}


def used_packages(source: str) -> set[str]:
    """Packages named by top-level `using X` / `import X` (`X: a, b` and `X, Y` forms)."""
    names = set()
    for match in re.finditer(r"^\s*(?:using|import)\s+([^\n#]+)", source, flags=re.MULTILINE):
        clause = match.group(1).split(":")[0]
        names.update(part.strip().split(".")[0] for part in clause.split(",") if part.strip())
    return names


def test_used_packages_are_found_by_the_parser():
    assert used_packages("using A: x, y\nimport B, C\n    using D.E: f\n# using Hidden\n") == {"A", "B", "C", "D"}


def test_the_sources_use_only_declared_packages():
    project = load_project()
    src = set().union(*(used_packages(p.read_text()) for p in (JULIA_PACKAGE / "src").glob("*.jl")))
    assert src == set(project["deps"])  # and every dependency is used
    ext = used_packages((JULIA_PACKAGE / "ext" / "PyNoDeTaCUDAExt.jl").read_text())
    assert ext <= set(project["weakdeps"]) | {project["name"]}
    tests = used_packages((JULIA_PACKAGE / "test" / "runtests.jl").read_text())
    assert tests <= set(project["deps"]) | set(project["extras"]) | {project["name"]}


def test_juliapkg_json_points_at_the_julia_package_inside_pynodeta():
    # juliapkg resolves "path" relative to the directory of juliapkg.json.
    package = load_juliapkg()["packages"]["PyNoDeTa"]
    target = (JULIAPKG_JSON.parent / package["path"]).resolve()
    assert package["dev"] is True
    assert target == JULIA_PACKAGE.resolve()
    assert target.is_relative_to(JULIAPKG_JSON.parent.resolve())
    assert tomllib.loads((target / "Project.toml").read_text())["name"] == "PyNoDeTa"


def test_the_repository_julia_entry_and_root_project_lead_to_the_same_package():
    root = tomllib.loads((REPO_ROOT / "Project.toml").read_text())
    assert (REPO_ROOT / root["sources"]["PyNoDeTa"]["path"]).resolve() == JULIA_PACKAGE.resolve()
    assert root["deps"]["PyNoDeTa"] == load_project()["uuid"]
    assert (REPO_ROOT / "julia").resolve() == JULIA_PACKAGE.resolve()
