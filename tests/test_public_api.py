"""The public API is pinned: growing or changing a package's ``__all__`` is a reviewed decision.

After a deliberate change, regenerate the snapshot with ``python3 tests/test_public_api.py --update``
and review its diff with the change.
"""

import importlib
import json
import pkgutil
import re
import sys
from pathlib import Path

import pynodeta

SNAPSHOT = Path(__file__).with_name("public_api.json")
PACKAGE_DIR = Path(pynodeta.__file__).parent


def public_packages() -> list[str]:
    """pynodeta and every subpackage whose name has no leading underscore."""
    names = ["pynodeta"]
    for info in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="pynodeta."):
        if info.ispkg and not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def current_api() -> dict[str, list[str]]:
    return {name: sorted(importlib.import_module(name).__all__) for name in public_packages()}


def test_every_package_declares_all():
    missing = [name for name in public_packages() if not hasattr(importlib.import_module(name), "__all__")]
    assert not missing, f"packages without __all__: {missing}"


def test_every_exported_name_exists():
    for name, exported in current_api().items():
        module = importlib.import_module(name)
        absent = [n for n in exported if not hasattr(module, n)]
        assert not absent, f"{name}.__all__ names {absent}, which {name} does not define"


def test_no_star_imports():
    offenders = [str(path.relative_to(PACKAGE_DIR.parent)) for path in PACKAGE_DIR.rglob("*.py")
                 if re.search(r"^\s*from\s+\S+\s+import\s+\*", path.read_text(), flags=re.MULTILINE)]
    assert not offenders, f"star imports in {offenders}: import names explicitly"


def test_public_api_matches_snapshot():
    expected = json.loads(SNAPSHOT.read_text())
    current = current_api()
    changes = {
        name: {"added": sorted(set(current.get(name, [])) - set(expected.get(name, []))),
               "removed": sorted(set(expected.get(name, [])) - set(current.get(name, [])))}
        for name in sorted(set(current) | set(expected))
    }
    changes = {name: diff for name, diff in changes.items() if diff["added"] or diff["removed"]}
    assert not changes, (f"the public API changed: {changes}. If deliberate, run "
                         f"`python3 tests/test_public_api.py --update` and commit tests/public_api.json")


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    SNAPSHOT.write_text(json.dumps(current_api(), indent=1) + "\n")
    print(f"wrote {SNAPSHOT}")
