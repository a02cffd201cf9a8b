"""The import directions of docs/architecture.md hold: every import, module-level or inside a function, runs down.

    orchestration -> assets -> data_checks, curation, training -> svdpipe        (infra: deployment, beside)
"""

import ast
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OURS = {"svdpipe", "curation", "training", "data_checks", "assets", "orchestration", "infra"}
# package -> the packages of ours it may import (itself included)
ALLOWED = {
    "svdpipe": {"svdpipe"},
    "curation": {"curation", "svdpipe"},
    "training": {"training", "curation", "svdpipe"},
    "data_checks": {"data_checks", "curation", "svdpipe"},
    "assets": {"assets", "data_checks", "curation", "training", "svdpipe"},
    "orchestration": {"orchestration", "assets", "data_checks", "curation", "training", "svdpipe"},
    "infra": {"infra", "svdpipe"},
}
# Plain Python layers import without Dagster (dagster_pipes, the subprocess side of Pipes, is a separate package).
NO_DAGSTER = {"svdpipe", "curation", "training", "data_checks"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        roots = imported_roots(path)
        for bad in sorted((roots & OURS) - ALLOWED[package]):
            found.append(f"{path.relative_to(REPO)} imports {bad}")
        if package in NO_DAGSTER and "dagster" in roots:
            found.append(f"{path.relative_to(REPO)} imports dagster")
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_run_one_way(package):
    assert violations(package) == []


def test_the_walker_sees_an_upward_import(tmp_path):
    # The check itself can fail: a function-level upward import is found.
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from orchestration.cli import main\n    import dagster as dg\n")
    assert imported_roots(module) == {"orchestration", "dagster"}


def test_no_link_leaves_the_repository():
    # A clone has nothing beside it: no file of ours points into ../shared or at the design notes outside the tree.
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    tracked = [REPO / f for f in files if Path(f).suffix in {".py", ".md", ".yaml", ".sh", ".toml", ""}
               and f != "tests/test_layout.py" and (REPO / f).is_file()]
    offenders = [str(p.relative_to(REPO)) for p in tracked
                 if "../shared" in p.read_text(errors="ignore") or "DESIGN.md" in p.read_text(errors="ignore")]
    assert offenders == []
