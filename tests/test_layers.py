"""The three layers (README, "Code map"), read from the sources: the foundation (`vinbig` but `vinbig.app`) imports
no stage package and not the application; a stage package (`folds`, `detector`, `classifier`, `fusion`) imports
the foundation only; nothing outside a stage (the application, the benches, the notebooks, the other stages)
imports a stage's `_`-modules, only its face; no module imports itself through others (no import circle); and
`vinbig --help` loads neither torch nor ultralytics."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("folds", "detector", "classifier", "fusion")
APP = "vinbig.app"


@dataclass(frozen=True)
class Import:
    file: str  # relative to the repository
    line: int
    module: str  # absolute dotted name
    how: str  # the statement as written

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.how}"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    """'app', 'foundation', a stage package's name, or 'outside' (the standard library, third-party packages)."""
    top = module.split(".")[0]
    if module == APP or module.startswith(APP + ".") or module == "vinbig.__main__":
        return "app"
    if top == "vinbig":
        return "foundation"
    return top if top in STAGES else "outside"


def _source(text: str, node: ast.AST) -> str:
    return " ".join((ast.get_source_segment(text, node) or "").split())


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def imports(path: Path, root: Path = ROOT) -> list[Import]:
    """Every import of `path`, module-level or inside functions, relative ones made absolute; also the modules
    named by string to ``import_module`` / ``__import__`` and in a lazy package's ``_EXPORTS`` table."""
    text = path.read_text()
    tree = ast.parse(text, filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    file = path.relative_to(root).as_posix()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            how = _source(text, node)
            out += [Import(file, node.lineno, a.name, how) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            how = _source(text, node)
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append(Import(file, node.lineno, mod, how))
            # a name may be a module: `from vinbig import app` imports vinbig.app
            out += [Import(file, node.lineno, f"{mod}.{a.name}", how) for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and node.args:
                out += [Import(file, node.lineno, s, _source(text, node)) for s in _strings(node.args[0])]
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_EXPORTS" for t in node.targets):
            if isinstance(node.value, ast.Dict):
                out += [Import(file, v.lineno, v.value, f"_EXPORTS[...] = {v.value!r}") for v in node.value.values
                        if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return out


def sources(*packages: str) -> list[Path]:
    files = [p for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py")) if "__pycache__" not in p.parts]
    assert files, f"no Python files under {packages}"
    return files


ALL = sources("vinbig", *STAGES)


def test_the_parser_sees_every_kind_of_import(tmp_path):
    """What the checks below rely on: relative and function-level imports, `from vinbig import app`,
    import_module and a lazy package's _EXPORTS are all seen."""
    probe = tmp_path / "fusion" / "sub" / "_probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("import os\nfrom . import _wbf\nfrom .. import _stage\n\n\ndef f():\n"
                     "    from detector import predict\n    from vinbig import app\n"
                     "    importlib.import_module('classifier._model')\n\n\n_EXPORTS = {'a': 'folds._split'}\n")
    found = {(i.line, i.module) for i in imports(probe, tmp_path)}
    assert {(1, "os"), (2, "fusion.sub"), (2, "fusion.sub._wbf"), (3, "fusion._stage"), (7, "detector"),
            (8, "vinbig.app"), (9, "classifier._model"), (12, "folds._split")} <= found, found
    assert {str(i) for i in imports(probe, tmp_path) if i.line == 7} == {
        "fusion/sub/_probe.py:7: from detector import predict"}
    assert layer("vinbig.app.cli") == layer("vinbig.__main__") == "app" and layer("vinbig.options") == "foundation"
    assert layer("detector._train") == "detector" and layer("torch") == layer("pandas") == "outside"


def test_all_five_packages_are_parsed():
    modules = {module_name(p) for p in ALL}
    assert {"vinbig.artifacts", "vinbig.__main__", "vinbig.app.cli", "folds.cli", "detector.cli", "classifier.cli",
            "fusion.cli"} <= modules


def test_the_foundation_imports_no_stage_package_and_not_the_application():
    bad = dict.fromkeys(str(i) for f in ALL if layer(module_name(f)) == "foundation" for i in imports(f)
                        if layer(i.module) not in ("foundation", "outside"))
    assert not bad, "the foundation (vinbig, vinbig.app aside) must not import a stage package or vinbig.app:\n" + \
        "\n".join(bad)


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_package_imports_only_the_foundation(stage):
    bad = dict.fromkeys(str(i) for f in sources(stage) for i in imports(f)
                        if layer(i.module) not in ("foundation", "outside", stage))
    assert not bad, f"{stage} may import the foundation (vinbig, vinbig.app aside) and itself only:\n" + "\n".join(bad)


# --------------------------------------------------------------------------- the command line stays light

HEAVY = ("torch", "ultralytics", "timm", "torchvision")


def test_vinbig_help_works_as_a_module():
    out = subprocess.run([sys.executable, "-m", "vinbig", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for command in ("synth", "images", "folds", "train-detector", "predict-detector", "train-classifier",
                    "predict-classifier", "fuse", "tune", "report", "validate", "score", "demo", "export"):
        assert command in out.stdout, command


def test_building_the_parser_imports_no_deep_learning_library():
    code = ("import json, sys; from vinbig.app.cli import build_parser; build_parser(); "
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {list(HEAVY)!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [], "building the parser (vinbig --help) imported " + out.stdout


# --------------------------------------------------------------------------- a stage's face, and no import circle

OUTSIDE = [p for p in sources("vinbig", "bench") if p.suffix == ".py"]  # the application, the foundation, benches


def private_stage_module(module: str) -> str | None:
    """The stage whose `_`-module `module` is (``fusion._stage``, ``detector._predict.x``), else None."""
    parts = module.split(".")
    return parts[0] if parts[0] in STAGES and len(parts) > 1 and parts[1].startswith("_") else None


def notebook_imports(path: Path) -> list[Import]:
    """The imports of a notebook's code cells (the cells parsed as one module)."""
    cells = json.loads(path.read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith(("!", "%")))
    tree = ast.parse(code)
    return [Import(path.relative_to(ROOT).as_posix(), n.lineno, n.module if isinstance(n, ast.ImportFrom) else a.name,
                   _source(code, n)) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
            for a in n.names]


def test_nothing_outside_a_stage_imports_its_private_modules():
    found = [i for f in OUTSIDE for i in imports(f)]
    found += [i for nb in sorted((ROOT / "notebooks").glob("*.ipynb")) for i in notebook_imports(nb)]
    found += [i for stage in STAGES for f in sources(stage) for i in imports(f)
              if private_stage_module(i.module) not in (None, stage)]
    bad = dict.fromkeys(str(i) for i in found if private_stage_module(i.module))
    assert not bad, "outside a stage, import it through its face (its __init__.py exports what others need):\n" + \
        "\n".join(bad)


def test_the_private_module_rule_can_fail(tmp_path):
    probe = tmp_path / "vinbig" / "app" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("from detector import load_models\n\n\ndef f():\n    from fusion._overlay import label\n")
    assert [private_stage_module(i.module) for i in imports(probe, tmp_path)] == [None, None, "fusion", "fusion"]


def import_graph(files: list[Path], root: Path = ROOT) -> dict[str, set[str]]:
    """``{module: the project's modules it imports}`` (module-level and inside functions; a package's lazy
    ``_EXPORTS`` count), for the modules of `files`."""
    names = {module_name(f, root) for f in files}
    graph: dict[str, set[str]] = {}
    for f in files:
        me = module_name(f, root)
        graph[me] = {i.module for i in imports(f, root) if i.module in names and i.module != me}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (a circle of imports), each as one circle found in it."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(circle(graph, sorted(group)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def circle(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """One circle through the first module of the strongly connected `group`: a -> b -> ... -> a."""
    start, members = group[0], set(group)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & members):
            if w == start:
                return path + [start]
            if w not in seen:
                seen.add(w)
                paths.append(path + [w])
    return group


def test_no_circle_of_imports_among_the_projects_modules():
    found = cycles(import_graph(sources("vinbig", *STAGES)))
    assert not found, "import circles (each module imports the next, inside functions too):\n" + \
        "\n".join(" -> ".join(c) for c in found)


def test_the_circle_finder_finds_one(tmp_path):
    for name, text in {"a.py": "import b\n", "b.py": "def f():\n    from c import x\n", "c.py": "import a\n",
                       "d.py": "import a\n"}.items():
        (tmp_path / name).write_text(text)
    graph = import_graph(sorted(tmp_path.glob("*.py")), tmp_path)
    assert cycles(graph) == [["a", "b", "c", "a"]]
