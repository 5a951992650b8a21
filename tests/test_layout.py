"""The test suite's own layout: no test file imports another. What tests share lives in
conftest.py (fixtures) and fakes.py (tiny files in the real data formats)."""

import ast
import glob
import os

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = ("conftest", "fakes")


def imported_test_files(path: str, local: set[str]) -> list[str]:
  """The files of `local` (module names of tests/) that `path` imports, however spelled:
  `import test_x`, `from test_x import y`, `from tests import test_x`, `from . import
  test_x`."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      names = [f"{node.module or ''}.{a.name}".lstrip(".") for a in node.names]
    else:
      continue
    for name in names:
      parts = name.split(".")
      module = parts[1] if parts[0] == "tests" and len(parts) > 1 else parts[0]
      if module in local:
        found.append(f"{os.path.basename(path)}:{node.lineno} imports {module}")
  return found


def test_no_test_file_imports_another(tmp_path):
  files = glob.glob(os.path.join(HERE, "*.py"))
  local = {os.path.splitext(os.path.basename(p))[0] for p in files} - set(SHARED)
  assert not [f for p in sorted(files) for f in imported_test_files(p, local)]
  # Each spelling is caught.
  for line in ("import test_b", "from test_b import x", "from tests import test_b",
               "from . import test_b", "from .test_b import x", "import tests.test_b"):
    (tmp_path / "test_a.py").write_text(f"import fakes\nfrom conftest import y\n{line}\n")
    assert imported_test_files(str(tmp_path / "test_a.py"), {"test_a", "test_b"}) == [
        "test_a.py:3 imports test_b"], line
