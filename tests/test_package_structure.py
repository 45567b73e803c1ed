"""Checks anyone can run on the layout: the package's module-level imports form no cycle,
no module is over MAX_LINES lines (model definitions aside), the README's code map names
exactly the modules there are, and every test that starts a process is marked slow."""

import ast
import re
from pathlib import Path

from conftest import REPO


def module_files(package: Path) -> dict[str, Path]:
    """dotted module name -> file, for every module of `package` (packages by their name)."""
    modules = {}
    for path in package.rglob("*.py"):
        name = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def module_imports(package: Path) -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in the file: at module level and
    inside functions (an import inside a function ties the modules as much as one at the top)."""
    modules = module_files(package)
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level:  # relative: from . import x
                    base = ".".join(name.split(".")[:len(name.split(".")) - node.level] + [node.module])
                # `from pkg import mod` imports the module mod; `from mod import name`, mod
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                            for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_scan_sees_imports_inside_functions(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg import b\n    return b\n")
    (package / "b.py").write_text("import pkg.a\n")
    graph = module_imports(package)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]


def test_deft_jax_has_no_import_cycle():
    graph = module_imports(REPO / "deft_jax")
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


# The layers, bottom first: a module may import its own package and the layers below its
# own, never a layer above or a sibling of the same rank. The README's code map lists them
# in this order.
LAYERS = [
    {"errors"},
    {"runtime"},
    {"models"},
    {"config"},
    {"data"},
    {"core"},
    {"evolution"},
    {"methods", "run"},
    {"experiment"},
    {"api"},
    {"cli"},
]
ENTRY_POINTS = {"deft_jax", "deft_jax.search", "deft_jax.predict"}  # and every __main__ module


def layer_of(module: str) -> str | None:
    """The layer (first package below deft_jax) of a module; None for an entry point."""
    if module in ENTRY_POINTS or module.endswith(".__main__"):
        return None
    return module.split(".")[1]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    rank = {layer: i for i, layers in enumerate(LAYERS) for layer in layers}
    bad = []
    for module, targets in sorted(graph.items()):
        here = layer_of(module)
        if here is None:
            continue
        assert here in rank, f"{module}: its package {here!r} is in no layer of LAYERS"
        for target in sorted(targets):
            there = layer_of(target)
            if there is None:
                bad.append(f"{module} -> {target} (an entry point)")
            elif there != here and rank[there] >= rank[here]:
                bad.append(f"{module} -> {target} ({here} may not import {there})")
    return bad


def test_the_layer_check_refuses_an_import_upwards_and_between_siblings():
    graph = {"deft_jax.core.training": {"deft_jax.models.base", "deft_jax.evolution.fitness"},
             "deft_jax.run.pipeline": {"deft_jax.methods.deft", "deft_jax.core.final"},
             "deft_jax.models.base": {"deft_jax.models.groups"}, "deft_jax.models.groups": set(),
             "deft_jax.evolution.fitness": set(), "deft_jax.methods.deft": set(), "deft_jax.core.final": set()}
    assert layer_violations(graph) == [
        "deft_jax.core.training -> deft_jax.evolution.fitness (core may not import evolution)",
        "deft_jax.run.pipeline -> deft_jax.methods.deft (run may not import methods)"]


def test_every_import_in_deft_jax_points_down_the_layers():
    graph = module_imports(REPO / "deft_jax")
    assert {layer_of(m) for m in graph} - {None} == set().union(*LAYERS)
    assert layer_violations(graph) == []


def test_the_readme_code_map_lists_the_layers_in_order():
    packages = [re.findall(r"`([\w.]+)/?`", row[0])[0].removesuffix(".py") for row in code_map_rows()
                if row[0] != "`benchmarks/`"]
    layered = [p for p in packages if any(p in layers for layers in LAYERS)]
    assert layered == [p for layers in LAYERS for p in sorted(layers, key=layered.index)]


PROCESS_STARTERS = {"subprocess", "sys.executable", "multiprocessing", "os.fork", "Popen",
                    "search_process"}  # tests/helpers.py: starts python -m deft_jax.search


def names_used(node: ast.AST) -> set[str]:
    """The names and dotted attributes (`sys.executable`) a piece of code refers to."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name):
            out.add(f"{n.value.id}.{n.attr}")
    return out


def process_starting_tests(path: Path) -> dict[str, bool]:
    """test name -> marked slow, for the tests of `path` that start a process: directly,
    through a function of the module, or through a fixture of the module (transitively)."""
    tree = ast.parse(path.read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    module_slow = any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
                      and "slow" in ast.unparse(n.value) for n in tree.body)

    def starts(name: str, seen: set[str]) -> bool:
        if name in seen or name not in functions:
            return False
        seen.add(name)
        node = functions[name]
        if names_used(node) & PROCESS_STARTERS:
            return True
        called = {n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        used = {a.arg for a in node.args.args}  # fixtures of this module
        return any(starts(other, seen) for other in called | used)

    found = {}
    for name, node in functions.items():
        if name.startswith("test_") and starts(name, set()):
            marks = [ast.unparse(d) for d in node.decorator_list]
            found[name] = module_slow or any("mark.slow" in m for m in marks)
    return found


def test_the_process_finder_follows_helpers_and_fixtures(tmp_path):
    sample = tmp_path / "test_sample.py"
    sample.write_text("import subprocess, pytest\n"
                      "def helper():\n    return subprocess.run(['true'])\n"
                      "@pytest.fixture\ndef prepared():\n    return helper()\n"
                      "def test_direct():\n    subprocess.run(['true'])\n"
                      "def test_through_a_fixture(prepared):\n    pass\n"
                      "@pytest.mark.slow\ndef test_marked():\n    helper()\n"
                      "def test_in_process():\n    assert 1\n")
    assert process_starting_tests(sample) == {"test_direct": False, "test_through_a_fixture": False,
                                                  "test_marked": True}


def test_every_test_that_starts_a_process_is_marked_slow():
    unmarked = [f"{path.name}::{name}" for path in sorted((REPO / "tests").glob("test_*.py"))
                for name, slow in process_starting_tests(path).items() if not slow]
    assert unmarked == [], "start a process but are not @pytest.mark.slow: " + ", ".join(unmarked)


MAX_LINES = 300  # a module longer than this is doing two jobs
# model definitions are long by nature (one architecture, its weight layout): exempt
EXEMPT_FOLDERS = ("deft_jax/models/",)
OVER_THE_LIMIT: dict[str, str] = {  # path -> why it may stay over MAX_LINES for now
}


def module_lengths() -> dict[str, int]:
    files = [*(REPO / "deft_jax").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")]
    return {p.relative_to(REPO).as_posix(): len(p.read_text().splitlines()) for p in files}


def test_no_module_is_over_the_line_limit_except_model_definitions():
    lengths = module_lengths()
    over = {path: n for path, n in lengths.items()
            if n > MAX_LINES and not path.startswith(EXEMPT_FOLDERS) and path not in OVER_THE_LIMIT}
    assert over == {}, f"modules over {MAX_LINES} lines (split them): {over}"
    # an exception that no longer applies is taken off the list
    stale = [path for path in OVER_THE_LIMIT if lengths.get(path, 0) <= MAX_LINES]
    assert stale == [], f"no longer over {MAX_LINES} lines (or gone): remove from OVER_THE_LIMIT: {stale}"


def code_map_rows() -> list[list[str]]:
    """The cells of the README's code-map table."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Code map"):]
    section = section[:section.index("\n## ", 1)]
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| `")]


def code_map_paths() -> set[str]:
    """Every module path the code map names, relative to the repository: first-column names
    are in deft_jax/, the names in the `benchmarks/` row's second column in benchmarks/."""
    named = set()
    for first, second, *_ in code_map_rows():
        if first == "`benchmarks/`":
            named |= {f"benchmarks/{name}" for name in re.findall(r"`([\w./]+)`", second)}
        else:
            named |= {f"deft_jax/{name}" for name in re.findall(r"`([\w./]+)`", first)}
    return named


def modules_of(folder: str) -> set[str]:
    """A folder's modules: its .py and .sh files (not __init__/__main__) and its packages."""
    out = set()
    for p in (REPO / folder).iterdir():
        if p.is_dir() and (p / "__init__.py").exists():
            out.add(f"{folder}/{p.name}/")
        elif p.suffix in (".py", ".sh") and not p.name.startswith("__"):
            out.add(f"{folder}/{p.name}")
    return out


def test_the_readme_code_map_names_every_module_and_only_modules_that_exist():
    named = code_map_paths()
    assert len(named) > 20
    missing_from_tree = sorted(n for n in named if not (REPO / n).exists())
    assert missing_from_tree == [], f"the code map names what is not in the tree: {missing_from_tree}"
    unnamed = sorted((modules_of("deft_jax") | modules_of("benchmarks")) - named)
    assert unnamed == [], f"modules the README's code map does not name: {unnamed}"
