"""The import layers (issue 25): the contracts in pyproject.toml's ``[tool.importlinter]`` hold.

harness (the application) > methods | reports | protocols > codeswap > faceeval (the
foundation): a package imports only the layers below it; imports inside functions count
(import-linter reads every import statement, wherever it is). The contracts are checked
through import-linter's Python API, shown to fail on a tree with an upward import, and
complemented by a scan for module paths written as strings (``"module:Object"`` registry
targets, ``importlib`` names), which import-linter cannot see.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from helpers import REPO

pytest.importorskip("importlinter", reason="import-linter is a dev dependency (pip install -e '.[dev]')")

PYPROJECT = REPO / "pyproject.toml"
CONFIG = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
ROOTS = CONFIG["root_packages"]
LAYERS = next(c for c in CONFIG["contracts"] if c["id"] == "layers")["layers"]


def _report():
    import importlinter.api  # noqa: F401 - configures import-linter (its readers and graph builder)
    from importlinter.application import use_cases

    use_cases._register_built_in_contract_types()  # as lint_imports() does before create_report()
    return use_cases.create_report(use_cases.read_user_options(str(PYPROJECT)), cache_dir=None)


def test_the_import_contracts_hold(capsys):
    from importlinter.application import rendering

    report = _report()
    if report.contains_failures or report.could_not_run:
        rendering.render_report(report)  # each broken contract with the import chains that break it
        pytest.fail("import contracts broken:\n" + capsys.readouterr().out)
    assert report.kept_count == len(CONFIG["contracts"]) >= 4


def test_every_module_of_the_tree_is_in_the_checked_graph():
    """A folder without ``__init__.py`` (a namespace package) is not read by import-linter:
    its imports would go unchecked. Every .py file of the root packages must be a module of the graph."""
    graph = _report().graph
    checked = {m for m in graph.modules if m.split(".")[0] in ROOTS}
    files = set()
    for root in ROOTS:
        for path in (REPO / root).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            files.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    assert files - checked == set(), "modules import-linter does not see (add an __init__.py to their folder)"


def _stub_tree(root: Path, modules: dict[str, str]) -> None:
    for pkg in ROOTS:
        (root / pkg).mkdir()
        (root / pkg / "__init__.py").write_text("")
    for name, code in modules.items():
        (root / (name.replace(".", "/") + ".py")).write_text(textwrap.dedent(code))


def test_an_upward_or_sideways_import_breaks_the_layers_contract(tmp_path):
    """The repository's own layers contract, run on a stub tree of the same packages with one
    upward import hidden inside a function and one import between two middle-layer packages."""
    _stub_tree(tmp_path, {
        "harness.top": "X = 1\n",
        "reports.tables": "X = 1\n",
        "faceeval.base": "def late():\n    from harness import top  # upward, inside a function\n    return top\n",
        "methods.peek": "import reports.tables  # sideways: methods and reports are independent\n",
        "protocols.ok": "from faceeval import base\n",  # downward: allowed
    })
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())",
         str(PYPROJECT), "--contract", "layers", "--no-cache", "--no-logo"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True)
    out = " ".join(proc.stdout.split())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "BROKEN" in out
    assert "faceeval.base -> harness.top" in out
    assert "methods.peek -> reports.tables" in out
    assert "protocols.ok" not in out


#: a module path written as a string: "pkg.module", "pkg.module:Object"
_PATH = re.compile(rf"^({'|'.join(ROOTS)})(\.\w+)+(:\w+)?$|^({'|'.join(ROOTS)}):\w+$")


def _rank(package: str) -> int:
    """Position from the bottom of the layers contract (faceeval 0, ..., harness highest)."""
    for i, layer in enumerate(reversed(LAYERS)):
        if package in [p.strip() for p in re.split(r"[|:]", layer)]:
            return i
    raise AssertionError(f"{package} is in no layer")


def upward_strings(root: Path) -> list[str]:
    """Module paths written as string literals under ``root``'s root packages that name a
    higher layer or another package of the same layer (what ``importlib`` or a registry
    entry would import upwards, out of import-linter's sight)."""
    found = []
    for pkg in ROOTS:
        for path in sorted((root / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and _PATH.match(node.value):
                    target = re.split(r"[.:]", node.value)[0]
                    if target != pkg and _rank(target) >= _rank(pkg):
                        found.append(f"{path.relative_to(root)}:{node.lineno}: {node.value!r}")
    return found


def test_no_upward_import_is_hidden_in_a_string():
    assert upward_strings(REPO) == []


def test_the_string_scan_finds_an_upward_registry_target(tmp_path):
    _stub_tree(tmp_path, {"faceeval.entries": 'TARGET = "methods.reference:SourceMethod"\nOK = "faceeval.api:Metric"\n',
                          "methods.entries": 'LOADER = "faceeval.models.sface:load_sface"\n'})
    assert upward_strings(tmp_path) == ["faceeval/entries.py:1: 'methods.reference:SourceMethod'"]
