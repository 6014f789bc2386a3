"""Family and method knowledge stays where it belongs: model types are told apart only in the adapters
(and in the tiny builders and checkpoint presets, which name families by construction), and no code
outside ``vtr/methods/`` asks which concrete method it holds. Adding a family or a method then never
edits the engine, the API, the FLOPs model or the commands."""

from __future__ import annotations

import ast
from pathlib import Path

import vtr
from vtr.methods import REGISTRY, BudgetedMethod, LayerMethod, Method, VisionMethod

PACKAGE = Path(vtr.__file__).parent
MODEL_TYPE_ALLOWED = ("adapters/", "testing.py", "measure/presets.py")
PROTOCOLS = {cls.__name__ for cls in (Method, BudgetedMethod, LayerMethod, VisionMethod)}
CONCRETE_METHODS = {cls.__name__ for cls in REGISTRY.values()} - PROTOCOLS


def _sources(skip: tuple[str, ...]) -> dict[str, ast.Module]:
    return {str(path.relative_to(PACKAGE)): ast.parse(path.read_text(), str(path))
            for path in sorted(PACKAGE.rglob("*.py")) if not str(path.relative_to(PACKAGE)).startswith(skip)}


def _names_model_type(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == "model_type" or isinstance(n, ast.Name) and n.id == "model_type"
               for n in ast.walk(node))


def model_type_branches(tree: ast.Module) -> list[int]:
    """Lines that compare a model type (``==``, ``in``, ``startswith``, ...) or look something up by it."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and _names_model_type(node):
            lines.append(node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("startswith", "endswith", "get") and _names_model_type(node)):
            lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and _names_model_type(node.slice):
            lines.append(node.lineno)
        elif isinstance(node, ast.Match) and _names_model_type(node.subject):
            lines.append(node.lineno)
    return sorted(set(lines))


def concrete_method_checks(tree: ast.Module) -> list[int]:
    """Lines with ``isinstance`` / ``issubclass`` against a registered method class (not a protocol)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("isinstance",
                                                                                                "issubclass"):
            named = {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node.args[1])
                     if isinstance(n, (ast.Name, ast.Attribute))}
            if named & CONCRETE_METHODS:
                lines.append(node.lineno)
    return lines


def test_no_model_type_branches_outside_the_adapters():
    found = {path: lines for path, tree in _sources(MODEL_TYPE_ALLOWED).items() if (lines := model_type_branches(tree))}
    assert not found, f"model-type branches outside vtr/adapters/ (ask the adapter or the family's costs): {found}"


def test_no_isinstance_on_concrete_methods_outside_the_methods():
    found = {path: lines for path, tree in _sources(("methods/",)).items() if (lines := concrete_method_checks(tree))}
    assert not found, f"code outside vtr/methods/ tests for concrete methods (give the method a hook): {found}"


def test_the_scans_catch_what_they_forbid():
    """The scans see the forms the old FLOPs model and demo used."""
    tree = ast.parse("if config.model_type in LLAVA:\n    pass\nx = config.model_type == 'qwen2_vl'\n"
                     "y = model.config.model_type.startswith('qwen')\nz = TABLE[config.model_type]\n"
                     "m = f'{config.model_type} model'\n")
    assert model_type_branches(tree) == [1, 3, 4, 5]
    tree = ast.parse("a = isinstance(m, DivPrune)\nb = isinstance(m, (HoliTom, VisionZip))\n"
                     "c = isinstance(m, LayerMethod)\nd = isinstance(m, methods.HoliTomInner)\n")
    assert concrete_method_checks(tree) == [1, 2, 4]
