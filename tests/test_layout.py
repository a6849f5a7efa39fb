"""The files' imports point one way, down the layers of the project, as the anchors' do (docs' STYLE.md):
no project import inside a function, no import cycle, no file importing a file of a layer above its own; and the
method's five files read in one sitting, each importing only the files before it and the ground."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Ground first. A file may import files of its own layer or the layers before it, never those after it.
LAYERS = [["config", "checkpoint", "data", "pictures", "logbook", "cluster"], ["vocab"], ["vqgan", "shapes"],
          ["maskgit", "upgen"], ["sample", "vqgan_train"], ["shards", "resume"], ["train"], ["evaluate"], ["probe"],
          ["bench"]]
GROUND = {"config", "checkpoint", "data", "pictures"}  # settings, checkpoint files, picture and caption files
METHOD = ["vocab", "vqgan", "upgen", "sample", "train"]  # the README's reading order
DRIVEN = {"shards", "cluster", "resume", "logbook"}  # what the loop drives: never what measures it
MODULES = {p.stem for p in ROOT.glob("*.py")}
FILES = sorted(p.name for p in ROOT.glob("*.py"))


def project_imports(path):
    """-> [(module, line, at module level?)] for every import of a top-level module of the repo in path."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module.split(".")[0]]
        else:
            continue
        found += [(name, node.lineno, id(node) in top) for name in names if name in MODULES]
    return found


def graph():
    return {p.stem: {name for name, _, _ in project_imports(p)} for p in ROOT.glob("*.py")}


def test_every_file_has_a_layer():
    layered = {name for layer in LAYERS for name in layer}
    assert MODULES <= layered, f"give {sorted(MODULES - layered)} a place in LAYERS"


@pytest.mark.parametrize("file", FILES)
def test_no_project_import_inside_a_function(file):
    inner = [f"{file}:{line} imports {name}" for name, line, top in project_imports(ROOT / file) if not top]
    assert not inner, "an import placed inside a function to dodge a circle is a circle: " + "; ".join(inner)


@pytest.mark.parametrize("file", FILES)
def test_no_import_of_a_layer_above(file):
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    me = Path(file).stem
    up = [f"{me} (layer {layer[me]}) imports {name} (layer {layer[name]})" for name, _, _ in
          project_imports(ROOT / file) if layer.get(name, -1) > layer.get(me, len(LAYERS))]
    assert not up, "; ".join(up)


def test_no_import_cycle():
    imports, done, path = graph(), set(), []

    def visit(module):  # depth first; a module met again on the current path closes a cycle
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module not in done:
            path.append(module)
            for name in sorted(imports.get(module, ())):
                visit(name)
            path.pop()
            done.add(module)
    for module in sorted(imports):
        visit(module)


def test_the_method_imports_only_what_comes_before_it_and_the_loop_only_what_it_drives():
    imports = graph()
    for i, module in enumerate(METHOD):
        allowed = GROUND | set(METHOD[:i]) | (DRIVEN if module == "train" else set())
        assert imports[module] <= allowed, f"{module} imports {sorted(imports[module] - allowed)}"
    assert sum(len((ROOT / f"{m}.py").read_text().splitlines()) for m in METHOD) <= 1500
