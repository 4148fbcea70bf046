"""The house rules that keep the layout readable, as tests that fail loudly.

- The import contracts of pyproject.toml ([tool.importlinter]: scan reaches no S3
  code, the worker no scan code, the notifier only the report model, the database
  layer no S3), checked by import-linter's ``lint-imports``, so that the README's
  test command catches a broken one (``.ci/run`` runs it too).
- Only ``cli.py`` prints results or exits: no other module of the package calls
  ``print()``, ``sys.exit()``, ``exit()``/``quit()``, or raises ``SystemExit`` or
  ``typer.Exit``. That is not an import rule, so it is read from each module's AST.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import matricula_backup

PACKAGE = Path(matricula_backup.__file__).resolve().parent
ROOT = PACKAGE.parent
# The modules allowed to print or exit: the CLI (and an output module it passes its
# console to, if one prints).
MAY_PRINT_OR_EXIT = {"cli.py", "__main__.py"}


def test_the_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _prints_or_exits(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in ("print", "exit", "quit"):
                found.append((node.lineno, f"{func.id}()"))
            elif isinstance(func, ast.Attribute) and func.attr == "exit":
                if isinstance(func.value, ast.Name) and func.value.id in ("sys", "os"):
                    found.append((node.lineno, f"{func.value.id}.exit()"))
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = ast.unparse(exc)
            if name in ("SystemExit", "typer.Exit", "Exit", "click.exceptions.Exit"):
                found.append((node.lineno, f"raise {name}"))
        if isinstance(node, ast.ImportFrom) and node.module in ("sys", "os"):
            for alias in node.names:
                if alias.name in ("exit", "_exit"):
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
    return found


def test_only_the_cli_prints_or_exits() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).as_posix() in MAY_PRINT_OR_EXIT:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for line, what in _prints_or_exits(tree):
            offenders.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert not offenders, "only cli.py prints results or exits:\n" + "\n".join(offenders)


def test_the_check_finds_what_it_must() -> None:
    """The AST check itself, on a sample: each way to print or exit is found."""
    sample = ast.parse(
        "import sys, typer\n"
        "print('x')\n"
        "sys.exit(1)\n"
        "raise SystemExit(2)\n"
        "raise typer.Exit(code=1)\n"
        "from os import _exit\n"
        "logger.info('not this')\n"
    )
    assert sorted(line for line, _ in _prints_or_exits(sample)) == [2, 3, 4, 5, 6]
