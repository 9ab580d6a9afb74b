"""One owner of the data plane (issue 22): no module outside ``fleetwatch/storage/`` builds a
data-directory path or touches fsspec or ``os`` for data files; the store does. Read from the
source itself (the AST), so a new module that breaks the rule fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import fleetwatch

PACKAGE = Path(fleetwatch.__file__).parent
#: Names of objects in the data directory: written as a whole string anywhere but storage/,
#: they mean a module is building a path of its own.
NAMES = {
    "manifest.json", "params.bin", "model.joblib", "history.json", "topic.json", "ACTIVE",
    "SHADOW", "SHADOWS", ".claim", "fleetwatch.duckdb", "schedule.lock", "scoring.lock",
}  # fmt: skip
#: ... and path-like strings inside it (folders of the layout, hive partitions).
PATHISH = re.compile(r"(^|/)(aggregates|late|models|state)/|\b(date|hour)=(\d|\{)")
STORAGE_LIBRARIES = ("fsspec", "s3fs", "upath", "pyarrow.fs")
FILE_CALLS = {
    "open", "replace", "rename", "scandir", "listdir", "stat", "unlink", "remove", "fsync",
    "makedirs", "mkdir", "rmdir", "link", "walk", "rmtree", "move", "copy", "copytree",
}  # fmt: skip
#: ``os`` file calls outside storage/ that are not about the data directory, and why.
ALLOWED_CALLS = {
    ("alerts.py", "os.fsync"): "the JSONL alert sink is the operator's own file",
    ("cli/main.py", "os.open"): "stdout redirected to /dev/null when a reader stops",
}


def modules() -> list[tuple[str, ast.Module]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if not relative.startswith("storage/"):
            found.append((relative, ast.parse(path.read_text())))
    return found


def docstrings(tree: ast.Module) -> set[int]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, kinds)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def test_no_module_outside_storage_builds_a_data_plane_path() -> None:
    found = []
    for name, tree in modules():
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in skip
            ) and (node.value in NAMES or PATHISH.search(node.value)):
                found.append(f"{name}:{node.lineno}: {node.value[:60]!r}")
    assert found == [], "\n".join(found)


def test_no_module_outside_storage_touches_fsspec_or_os_for_files() -> None:
    found = []
    for name, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                imported = [node.module or ""]
            else:
                imported = []
            for module in imported:
                if module.startswith(STORAGE_LIBRARIES):
                    found.append(f"{name}:{node.lineno}: imports {module}")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in ("os", "shutil")
                and node.func.attr in FILE_CALLS
            ):
                call = f"{node.func.value.id}.{node.func.attr}"
                if (name, call) not in ALLOWED_CALLS:
                    found.append(f"{name}:{node.lineno}: {call}")
    assert found == [], "\n".join(found)


def test_the_rule_finds_what_it_looks_for() -> None:
    """The checks above can fail: a module written the old way is caught."""
    tree = ast.parse(
        "import fsspec\nimport os\npath = root / 'models/pump-1/ACTIVE'\nos.replace(a, b)\n"
    )
    strings = [
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]
    assert any(PATHISH.search(s) for s in strings)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert any(isinstance(c.func, ast.Attribute) and c.func.attr in FILE_CALLS for c in calls)
