"""Run torchdiffeq's own test suite against pynodeta by changing only its ``import torchdiffeq`` lines.

The tests are not part of this repository: point ``--tests-dir`` at the ``tests/`` folder of a
torchdiffeq checkout (tag 0.2.5). The folder is copied to a temporary directory, every
``import torchdiffeq`` line becomes ``import pynodeta as torchdiffeq`` (nothing else is touched),
pytest runs there, and the passed/failed counts per file are written to
``benchmarks/results/torchdiffeq_suite.json``. A test case is one ``subTest`` (torchdiffeq's tests loop
over problems, dtypes and methods inside one test method), or a test method without subtests.

    python3 benchmarks/torchdiffeq_suite.py --tests-dir ../torchdiffeq/tests
    python3 benchmarks/torchdiffeq_suite.py --tests-dir ../torchdiffeq/tests --library torchdiffeq  # reference
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import Table, save_report  # noqa: E402

TEST_FILES = ("api_tests.py", "event_tests.py", "gradient_tests.py", "norm_tests.py", "odeint_tests.py")
IMPORT_LINE = re.compile(r"^(\s*)import torchdiffeq\s*$", re.MULTILINE)

# Loaded by pytest inside the temporary folder: one JSON line per test case outcome.
RECORDER = '''
import json, os

def pytest_runtest_logreport(report):
    if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
        return
    subtest = type(report).__name__ == "SubtestReport"
    crash = getattr(report.longrepr, "reprcrash", None) if report.failed else None
    message = crash.message.splitlines()[0][:200] if crash is not None and crash.message else ""
    with open(os.environ["SUITE_RECORD"], "a") as f:
        f.write(json.dumps({"nodeid": report.nodeid, "outcome": report.outcome, "subtest": subtest,
                            "message": message}) + "\\n")
'''


def rewrite_imports(source: str, library: str) -> tuple[str, int]:
    """Replace whole ``import torchdiffeq`` lines; return the new text and how many were replaced."""
    if library == "torchdiffeq":
        return source, 0
    return IMPORT_LINE.subn(rf"\1import {library} as torchdiffeq", source)


def prepare(tests_dir: Path, workdir: Path, library: str) -> None:
    missing = [name for name in TEST_FILES if not (tests_dir / name).is_file()]
    if missing:
        raise SystemExit(f"--tests-dir {tests_dir}: not torchdiffeq's tests folder, missing {missing}")
    shutil.copytree(tests_dir, workdir, dirs_exist_ok=True)
    for name in TEST_FILES:
        path = workdir / name
        text, count = rewrite_imports(path.read_text(), library)
        if library != "torchdiffeq" and count != 1:
            raise SystemExit(f"{name}: expected one 'import torchdiffeq' line, found {count}")
        path.write_text(text)
    (workdir / "conftest.py").write_text(RECORDER)


def tally(records: list[dict]) -> dict[str, Counter]:
    """Cases per file: each subtest, plus each test method that ran no subtest."""
    with_subtests = {r["nodeid"] for r in records if r["subtest"]}
    per_file: dict[str, Counter] = {}
    for r in records:
        if not r["subtest"] and r["nodeid"] in with_subtests:
            continue
        per_file.setdefault(r["nodeid"].split("::")[0], Counter())[r["outcome"]] += 1
    return per_file


def run_suite(tests_dir: Path, library: str, extra: list[str]) -> tuple[list[dict], int]:
    with tempfile.TemporaryDirectory(prefix="torchdiffeq_suite_") as tmp:
        workdir = Path(tmp) / "tests"
        prepare(tests_dir, workdir, library)
        record = Path(tmp) / "record.jsonl"
        env = dict(os.environ, SUITE_RECORD=str(record), PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]))
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
               "-o", "addopts=", *extra, *TEST_FILES]
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
        records = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
        return records, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests-dir", type=Path, required=True, help="a torchdiffeq checkout's tests/ folder")
    parser.add_argument("--library", default="pynodeta", help="module imported as torchdiffeq (default pynodeta)")
    parser.add_argument("--name", default=None, help="report name (default torchdiffeq_suite[_<library>])")
    parser.add_argument("-k", default=None, help="pytest -k selection, for a partial run")
    parser.add_argument("--note", action="append", default=[],
                        help="a line for the report's notes (repeatable): where the tests came from, what a failure is")
    args = parser.parse_args()
    records, returncode = run_suite(args.tests_dir.resolve(), args.library, ["-k", args.k] if args.k else [])
    if not records:
        raise SystemExit(f"pytest produced no results (exit code {returncode})")
    per_file = tally(records)
    rows = [[name, c["passed"], c["failed"], c["skipped"], sum(c.values())] for name, c in sorted(per_file.items())]
    total = sum((c for c in per_file.values()), Counter())
    rows.append(["total", total["passed"], total["failed"], total["skipped"], sum(total.values())])
    for row in rows:
        print(f"{row[0]:20s} passed {row[1]:4d}  failed {row[2]:4d}  skipped {row[3]:4d}  of {row[4]:4d}")
    failures = Counter(r["message"] for r in records if r["outcome"] == "failed")
    notes = [*args.note, *(f"{n} x {msg}" for msg, n in failures.most_common(12))]
    name = args.name or ("torchdiffeq_suite" if args.library == "pynodeta" else f"torchdiffeq_suite_{args.library}")
    path = save_report(name, f"torchdiffeq 0.2.5's test suite run against {args.library}",
                       [Table(["file", "passed", "failed", "skipped", "cases"], rows,
                              caption="one case = one subTest, or one test method without subtests")],
                       notes=notes, directory=Path(__file__).resolve().parent / "results")
    print(f"report: {path}")


if __name__ == "__main__":
    main()
