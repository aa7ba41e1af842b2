"""Seams between packages: one package uses another only through what its __init__ exports.

A package is a direct subfolder of mind_jax/ (mind_jax.data, mind_jax.training, ...); the
top-level modules (mind_jax.config, mind_jax._errors, the job CLIs such as mind_jax.train) form
the root package. A module or a name with a leading underscore is private to the package that
holds it: its owner renames, splits or drops it without notice, and an importer elsewhere breaks
(or, worse, keeps a stale copy's meaning). So a package states what others may use in its
__init__'s `__all__`, and others import from there: `from mind_jax.data import MODEL_INPUTS`,
never `from mind_jax.data._packing import MODEL_INPUTS`.

The root package's private modules (mind_jax._errors, mind_jax._outdir, ...) are the internals
that every package of mind_jax shares, so any of them may import those; a private name is its
own module's alone, from whatever package.

Tests look inside a package to test its parts, so they may import private names; but where the
package exports the same name, they import it from there, as any other user would.

All of this is read from the source with `ast`: nothing is imported, so no JAX and no seconds.
"""

import ast
import pathlib
from collections.abc import Iterator

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SOURCE = REPO / "mind_jax"
ROOT = ""  # the root package's name here: mind_jax's top-level modules


def _private(name: str) -> bool:
  return name.startswith("_") and not name.startswith("__")


def _package_of(module: str) -> str | None:
  """The package holding `module` (a dotted mind_jax name): its first part below mind_jax when
  that is a folder, else the root; None outside mind_jax."""
  parts = module.split(".")
  if parts[0] != "mind_jax":
    return None
  if len(parts) > 1 and (SOURCE / parts[1]).is_dir():
    return parts[1]
  return ROOT


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, source: str) -> Iterator[tuple[int, str, list[str]]]:
  """(line, absolute module, names) for every import in `source`, at module level or inside a
  function (a lazy import crosses the seam as surely)."""
  for node in ast.walk(ast.parse(source, str(path))):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name, []
    elif isinstance(node, ast.ImportFrom):
      module = node.module or ""
      if node.level:
        here = _module_name(path).split(".")
        if path.name != "__init__.py":
          here = here[:-1]
        module = ".".join(here[:len(here) - node.level + 1] + ([module] if module else []))
      yield node.lineno, module, [alias.name for alias in node.names]


def crossings(path: pathlib.Path, source: str) -> list[str]:
  """Where the file at `path` (under mind_jax/) reaches into another package: a private module
  of it (not the root's, which all share), or a private name of any module outside its own
  package; each as 'file:line -> what'."""
  own = _package_of(_module_name(path))
  found = []
  for line, module, names in _imports(path, source):
    package = _package_of(module)
    if package is None or package == own:
      continue
    where = f"{path.relative_to(REPO)}:{line} -> "
    below = module.split(".")[2 if package else 1:]
    if package != ROOT and any(_private(part) for part in below):
      found.append(where + f"{module} (a private module of mind_jax.{package})")
    elif hidden := [name for name in names if _private(name)]:
      found.append(where + f"{', '.join(hidden)} from {module} (private)")
  return found


def _sources(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(folder.rglob("*.py"))


def _inits() -> dict[str, pathlib.Path]:
  """Each package's __init__.py by package name (the root's as ROOT)."""
  inits = {ROOT: SOURCE / "__init__.py"}
  inits.update({p.parent.name: p for p in sorted(SOURCE.glob("*/__init__.py"))})
  return inits


def _init_module(package: str) -> str:
  return f"mind_jax.{package}" if package else "mind_jax"


def _top_level(path: pathlib.Path) -> tuple[ast.Module, dict]:
  """The parsed __init__ and the values of its top-level constants (literals, and expressions of
  earlier ones such as the root's `sorted([*_EXPORTS, ...])`); anything else is left out."""
  tree = ast.parse(path.read_text(), str(path))
  constants = {}
  for node in tree.body:
    if (isinstance(node, ast.Assign) and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)):
      try:
        constants[node.targets[0].id] = eval(  # noqa: S307 (literals and `sorted` only)
            compile(ast.Expression(node.value), str(path), "eval"),
            {"__builtins__": {"sorted": sorted}}, dict(constants))
      except Exception:  # needs more than that: not a constant
        continue
  return tree, constants


def _all(path: pathlib.Path) -> list[str] | None:
  """The __init__'s `__all__`, or None when it has none."""
  names = _top_level(path)[1].get("__all__")
  return None if names is None else list(names)


def _exports(path: pathlib.Path) -> dict[str, tuple[str, str]]:
  """What the __init__ binds by importing (lazily or not): exported name -> (module, its name
  there)."""
  exports = {}
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for alias in node.names:
        exports[alias.asname or alias.name] = (node.module, alias.name)
  return exports


def _bound(path: pathlib.Path) -> set[str]:
  """The names the __init__ provides: imported, defined, assigned, or (the root's) loaded on
  first use from its `_EXPORTS` table."""
  tree, constants = _top_level(path)
  names = set(_exports(path)) | set(constants) | set(constants.get("_EXPORTS", ()))
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, ast.Assign):
      names.update(t.id for t in node.targets if isinstance(t, ast.Name))
  return names


def _submodule(package: str, name: str) -> bool:
  folder = SOURCE / package if package else SOURCE
  return (folder / f"{name}.py").exists() or (folder / name / "__init__.py").exists()


def test_the_check_sees_a_reach_into_another_package():
  """What counts, on a made-up evaluation module: a private module of another package (at module
  level or in a function), a private name; not the public path, the root's shared private
  modules, nor the package's own private modules."""
  path = SOURCE / "evaluation" / "_example.py"
  source = "\n".join([
      "from mind_jax.data._packing import MODEL_INPUTS",
      "import mind_jax.engine._engine",
      "def f():",
      "  from mind_jax.data import _champ_file",
      "  from mind_jax._outdir import _is_remote",
      "from mind_jax.data import MODEL_INPUTS",
      "from mind_jax._errors import MindJaxError",
      "from mind_jax.evaluation._compare import scores",
      "from mind_jax.evaluation import _compare",
  ])
  assert crossings(path, source) == [
      "mind_jax/evaluation/_example.py:1 -> mind_jax.data._packing (a private module of "
      "mind_jax.data)",
      "mind_jax/evaluation/_example.py:2 -> mind_jax.engine._engine (a private module of "
      "mind_jax.engine)",
      "mind_jax/evaluation/_example.py:4 -> _champ_file from mind_jax.data (private)",
      "mind_jax/evaluation/_example.py:5 -> _is_remote from mind_jax._outdir (private)",
  ]
  # The root package's own modules (the job CLIs) are as bound as any package.
  assert crossings(SOURCE / "train.py", "from mind_jax.training._loop import run") == [
      "mind_jax/train.py:1 -> mind_jax.training._loop (a private module of mind_jax.training)"]


def test_no_package_imports_another_packages_private_modules_or_names():
  """A private module or name can change without notice: other packages use what the owner's
  __init__ exports. To fix one: export the name from the owning package's __init__ (add it to
  `__all__`) and import it from there."""
  found = [c for path in _sources(SOURCE) for c in crossings(path, path.read_text())]
  assert not found, ("imports that reach into another package's private parts; export the name "
                     "from that package's __init__ and import it from there:\n  "
                     + "\n  ".join(found))


@pytest.mark.parametrize("package", sorted(_inits()), ids=lambda p: p or "mind_jax")
def test_every_package_states_what_others_may_use(package):
  """`__all__` is the package's promise to others: a package without one promises nothing, and
  a name in it that the package does not provide is a promise broken on first use."""
  path = _inits()[package]
  names = _all(path)
  assert names is not None, f"{path.relative_to(REPO)}: no __all__ (what others may use)"
  unbound = sorted(set(names) - _bound(path))
  assert not unbound, f"{path.relative_to(REPO)}: __all__ offers what it never binds: {unbound}"


def test_what_other_packages_import_from_a_package_is_in_its_all():
  """An import from a package's __init__ that is not in its `__all__` leans on a name the owner
  never offered (often one it imports for itself): it goes when the owner stops needing it. Tests
  count as others here too, for public names."""
  alls = {package: set(_all(path) or ()) for package, path in _inits().items()}
  found = []
  for path in _sources(SOURCE) + _sources(REPO / "tests"):
    own = _package_of(_module_name(path)) if path.is_relative_to(SOURCE) else None
    for line, module, names in _imports(path, path.read_text()):
      package = _package_of(module)
      if package is None or package == own or module != _init_module(package):
        continue
      offered = alls[package]
      extra = [name for name in names if name != "*" and not _private(name)
               and name not in offered and not _submodule(package, name)]
      if extra:
        found.append(f"{path.relative_to(REPO)}:{line} -> {', '.join(extra)} from {module}")
  assert not found, ("names imported from a package's __init__ that its __all__ does not offer; "
                     "add them to __all__ (or import what is offered):\n  " + "\n  ".join(found))


def test_tests_import_public_names_where_one_exists():
  """A test that takes a name from a private module when the package exports it tests a path
  no user takes, and breaks when the module is split; import it from the package."""
  exports = {package: _exports(path) for package, path in _inits().items()}
  alls = {package: set(_all(path) or ()) for package, path in _inits().items()}
  found = []
  for path in _sources(REPO / "tests"):
    for line, module, names in _imports(path, path.read_text()):
      package = _package_of(module)
      if package is None or not any(_private(part) for part in module.split(".")):
        continue
      public = [name for name in names if name in alls[package]
                and exports[package].get(name) == (module, name)]
      if public:
        found.append(f"{path.relative_to(REPO)}:{line} -> {', '.join(public)}: from "
                     f"{_init_module(package)}, not {module}")
  assert not found, "tests importing a private path to a public name:\n  " + "\n  ".join(found)
