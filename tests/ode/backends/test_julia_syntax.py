"""Every .jl file in the repository parses under the tree-sitter-julia grammar (Julia itself is not
available on CI, so this is the check that the Julia backend's source is at least well-formed)."""

from __future__ import annotations

from pathlib import Path

import pytest

tree_sitter = pytest.importorskip("tree_sitter")
tree_sitter_julia = pytest.importorskip("tree_sitter_julia")

REPO_ROOT = Path(__file__).resolve().parents[3]


def syntax_problems(source: str) -> list[str]:
    """ERROR and MISSING nodes of the parse tree, as 'line:column kind' strings."""
    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_julia.language()))
    stack, problems = [parser.parse(source.encode()).root_node], []
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            kind = f"missing {node.type!r}" if node.is_missing else "syntax error"
            problems.append(f"{node.start_point.row + 1}:{node.start_point.column + 1} {kind}")
        stack.extend(node.children)
    return problems


def julia_files() -> list[Path]:
    # Resolved and deduplicated: the top-level `julia` entry is a link to pynodeta/julia.
    found = {p.resolve() for p in REPO_ROOT.rglob("*.jl") if ".git" not in p.parts}
    return sorted(p.relative_to(REPO_ROOT) for p in found if p.is_relative_to(REPO_ROOT))


def test_the_julia_package_files_are_found():
    names = {p.as_posix() for p in julia_files()}
    package = "pynodeta/julia"
    expected = ["src/PyNoDeTa.jl", "src/wrappers.jl", "src/workload.jl", "ext/PyNoDeTaCUDAExt.jl", "test/runtests.jl"]
    assert {f"{package}/{name}" for name in expected} <= names


@pytest.mark.parametrize("path", julia_files(), ids=lambda p: p.as_posix())
def test_julia_file_parses(path: Path):
    assert syntax_problems((REPO_ROOT / path).read_text()) == []


@pytest.mark.parametrize(
    "snippet",
    [
        "function f(x)\n    x +\nend\n",  # dangling operator
        "function f(x)\n    return x\n",  # unterminated block
        "y = solve(prob, Tsit5(); reltol = 1e-6\n",  # unclosed call
    ],
)
def test_broken_julia_is_detected(snippet: str):
    assert syntax_problems(snippet) != []


def test_valid_julia_passes():
    assert syntax_problems("f(du, u, p, t) = (du .= -u; nothing)\n") == []
