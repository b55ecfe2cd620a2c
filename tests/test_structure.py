"""The shape of the code: small modules and functions, imports in one direction, a torch-free inference core."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL = {"model", "my_dataset", "utils", "train", "predict", "evaluate", "export", "app", "hubconf"}
PROGRAMS = {"train", "predict", "evaluate", "export", "app", "hubconf"}  # run by users, never imported
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 60
MAX_TRAIN_MAIN_LINES = 130


def dotted_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {dotted_name(path): path for path in sorted([*REPO.glob("*.py"), *REPO.glob("effnet/**/*.py"),
                                                         *REPO.glob("benchmarks/*.py")])}


def project_imports(path: Path) -> set[str]:
    """Project modules `path` imports anywhere in it (function-level and relative imports included)."""
    package = dotted_name(path) if path.name == "__init__.py" else dotted_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1], *filter(None, [base])])
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name in MODULES and MODULES[name] != path and not name.endswith("__init__")}


GRAPH = {name: project_imports(path) for name, path in MODULES.items()}


def test_the_top_level_holds_the_tutorials_files_and_the_programs():
    assert {path.stem for path in REPO.glob("*.py")} == TOP_LEVEL


def test_imports_form_no_cycle():
    visiting, done = [], set()

    def visit(name: str) -> None:
        assert name not in visiting, f"import cycle: {' -> '.join(visiting[visiting.index(name):] + [name])}"
        if name in done:
            return
        visiting.append(name)
        for imported in sorted(GRAPH[name]):
            visit(imported)
        visiting.pop()
        done.add(name)

    for name in sorted(GRAPH):
        visit(name)


@pytest.mark.parametrize("name", sorted(name for name in MODULES if name.startswith("effnet")))
def test_the_package_imports_only_model_from_the_top_and_no_benchmark(name):
    outside = {imported for imported in GRAPH[name] if not imported.startswith("effnet")}
    assert outside <= {"model"}, f"{name} imports {outside}: the package may import model.py, nothing else above it"


def test_no_program_or_benchmark_is_imported_by_the_code_or_the_tests():
    for name, imported in GRAPH.items():
        if not name.startswith("benchmarks"):  # a benchmark may call the one beside it
            assert not imported & PROGRAMS, f"{name} imports a program: {imported & PROGRAMS}"
            assert not any(module.startswith("benchmarks") for module in imported), f"{name} imports a benchmark"
    for test in (REPO / "tests").glob("*.py"):
        imported = {alias.name for node in ast.walk(ast.parse(test.read_text())) if isinstance(node, ast.Import)
                    for alias in node.names} | {node.module or "" for node in ast.walk(ast.parse(test.read_text()))
                                                 if isinstance(node, ast.ImportFrom)}
        assert not any(name.partition(".")[0] == "benchmarks" for name in imported), f"{test.name} imports a benchmark"


def test_the_package_map_names_every_module():
    package_map = (REPO / "effnet" / "__init__.py").read_text()
    for name, path in MODULES.items():
        if name.startswith("effnet.") and path.name != "__init__.py":
            assert path.name in package_map, f"effnet/__init__.py does not list {path.relative_to(REPO)}"
            assert ast.get_docstring(ast.parse(path.read_text())), f"{path.relative_to(REPO)} has no docstring"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_stay_small(name):
    """Every function within 60 lines but train.py's main, which tells the whole story in about 120."""
    source = MODULES[name].read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{name} has {len(source.splitlines())} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("build_parser"):
            length = node.end_lineno - node.lineno + 1
            limit = MAX_TRAIN_MAIN_LINES if (name, node.name) == ("train", "main") else MAX_FUNCTION_LINES
            assert length <= limit, f"{name}: {node.name} has {length} lines"


def reachable(name: str) -> set[str]:
    """The project modules `name` imports, directly or through others."""
    found, todo = set(), [name]
    while todo:
        for imported in GRAPH[todo.pop()]:
            if imported not in found:
                found.add(imported)
                todo.append(imported)
    return found


@pytest.mark.parametrize("name", sorted(name for name in MODULES if name.startswith("effnet.training")))
def test_training_imports_nothing_from_inference(name):
    assert not {module for module in reachable(name) if module.startswith("effnet.inference")}, name


@pytest.mark.parametrize("name", sorted(name for name in MODULES if name.startswith("effnet.inference")))
def test_the_inference_package_reads_no_command_line(name):
    assert "argparse" not in {alias.name for node in ast.walk(ast.parse(MODULES[name].read_text()))
                              if isinstance(node, ast.Import) for alias in node.names}, name


def test_the_tutorials_files_tell_the_story_with_the_same_functions():
    """train.py builds the network from model.py and runs the loops of utils.py on my_dataset.py's MyDataSet;
    utils.py and my_dataset.py define what the tutorial's scripts import from them."""
    assert {"model", "utils", "my_dataset"} <= GRAPH["train"]
    defined = {module: {node.name for node in ast.parse(MODULES[module].read_text()).body
                        if isinstance(node, (ast.FunctionDef, ast.ClassDef))} for module in ("utils", "my_dataset")}
    assert {"read_split_data", "plot_data_loader_image", "train_one_epoch", "evaluate"} <= defined["utils"]
    assert "MyDataSet" in defined["my_dataset"]


@pytest.mark.parametrize("command", [["train.py"], ["predict.py"], ["evaluate.py"], ["export.py"], ["app.py"],
                                     *[["-m", f"benchmarks.{name}"] for name in (
                                         "speed", "training_recipes", "duplicate_detection", "data_check_cost",
                                         "label_issue_recall", "help_startup", "int8_speed", "one_photo")]])
def test_every_program_and_benchmark_answers_help(command):
    result = subprocess.run([sys.executable, *command, "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr[-2000:]


def test_the_inference_core_imports_no_torch():
    code = ("import sys, predict, effnet.inference.classifier, effnet.data.images, effnet.variants, "
            "effnet.inference.class_names, effnet.inference.exported_backends, effnet.download; "
            "print(sorted(m for m in ('torch', 'torchvision', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_programs_import_pytorch_and_fastapi_only_once_their_flags_are_read():
    """A Ctrl-C during those seconds of importing is then one line (the programs guard them), and so is a wrong flag."""
    code = ("import sys, train, export, app, predict, evaluate; heavy = ('torch', 'torchvision', 'fastapi', 'uvicorn', "
            "'matplotlib'); print(sorted(m for m in heavy if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_each_requirement_line_is_one_requirement_as_pyproject_toml_reads_it():
    """pyproject.toml takes requirements.txt as the project's dependencies, line by line: a comment at the end of
    a requirement would become part of it (a broken `pip install .`), so comments stand on lines of their own."""
    from packaging.requirements import Requirement

    lines = [line for line in (REPO / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    assert {Requirement(line).name for line in lines} >= {"torch", "torchvision", "pytest", "pytest-xdist", "ruff"}
