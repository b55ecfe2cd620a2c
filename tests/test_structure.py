"""The shape of the code: small modules and functions, imports in one direction, a torch-free inference core."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = {path.stem: path for path in sorted(REPO.glob("*.py"))}
PROGRAMS = {"train", "predict", "evaluate", "export", "app", "benchmark"}  # command-line programs, never imported
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 60


def project_imports(path: Path) -> set[str]:
    """Project modules `path` imports anywhere in it (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(MODULES)


def test_imports_form_no_cycle_and_programs_are_not_imported():
    graph = {name: project_imports(path) - {name} for name, path in MODULES.items()}
    for name, imported in graph.items():
        if name not in ("benchmark", "hubconf"):  # the benchmark drives the programs it measures
            assert not imported & PROGRAMS - {"benchmark"}, f"{name} imports a program: {imported & PROGRAMS}"
    visiting, done = [], set()

    def visit(name: str) -> None:
        assert name not in visiting, f"import cycle: {' -> '.join(visiting[visiting.index(name):] + [name])}"
        if name in done:
            return
        visiting.append(name)
        for imported in sorted(graph[name]):
            visit(imported)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_stay_small(name):
    source = MODULES[name].read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{name}.py has {len(source.splitlines())} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("build_parser"):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{name}.py: {node.name} has {length} lines"


def test_the_inference_core_imports_no_torch():
    code = ("import sys, inference, images, variants, class_names, onnx_backend, download, predict; "
            "print(sorted(m for m in ('torch', 'torchvision', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_programs_import_pytorch_and_fastapi_only_once_their_flags_are_read():
    """A Ctrl-C during those seconds of importing is then one line (the programs guard them), and so is a wrong flag."""
    code = ("import sys, train, export, app, predict, evaluate; heavy = ('torch', 'torchvision', 'fastapi', 'uvicorn', "
            "'matplotlib'); print(sorted(m for m in heavy if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
