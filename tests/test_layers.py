"""The three layers (README, "Code map"), read from the sources: the foundation (`vinbig` but `vinbig.app`) imports
no stage package and not the application; a stage package (`folds`, `detector`, `classifier`, `fusion`) imports
the foundation only; and `vinbig --help` loads neither torch nor ultralytics."""

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
