"""The path layer (syncmask_jax/paths.py): local behaviour, and that no module of the
package reads or writes files around it (a gs:// workdir would land on local disk)."""

import os
import re

from syncmask_jax import paths

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "syncmask_jax")
# File access that bypasses epath. `Image.open(io.BytesIO(...))` and `x.open(` (an epath
# object's method) are not matched: the pattern wants `open(` after no `.`.
BARE_IO = re.compile(
    r"(?<![.\w])open\(|\bos\.(makedirs|mkdir|replace|rename|remove|unlink|listdir|scandir|"
    r"stat|fdopen)\(|\bos\.path\.(exists|isfile|isdir|getmtime|getsize)\(|\bshutil\.|"
    r"\bjson\.(dump|load)\(|\bnp\.(save|savez|load)\(|\.savefig\((?!f\b)|\bimsave\((?!f\b)")
# Files that are not a run's: the kernel's process table and CPU name. A line that
# must bypass says so with this marker, and why.
ALLOWED = "# paths: ok"


def test_no_file_io_bypasses_the_path_layer():
  offenders = []
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if not name.endswith(".py") or name == "paths.py":
        continue
      file = os.path.join(folder, name)
      with open(file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
          code = line.split("#", 1)[0] if ALLOWED not in line else ""
          if BARE_IO.search(code):
            offenders.append(f"{os.path.relpath(file, PACKAGE)}:{number}: {line.strip()}")
  assert not offenders, ("file I/O outside syncmask_jax/paths.py (use paths.path(...) or "
                         "its helpers, or mark a non-run file with '# paths: ok'):\n"
                         + "\n".join(offenders))


def test_the_pattern_catches_what_it_should():
  for line in ('with open(p, "w") as f:', "os.makedirs(d, exist_ok=True)",
               "os.path.exists(p)", "json.dump(x, f)", "shutil.copyfile(a, b)",
               "fig.savefig(path, dpi=100)"):
    assert BARE_IO.search(line), line
  for line in ("paths.path(p).open('w')", "Image.open(io.BytesIO(b))", "json.dumps(x)",
               'fig.savefig(f, format="png")', "os.path.join(a, b)"):
    assert not BARE_IO.search(line), line


def test_resolve_local_and_remote(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert paths.resolve("run") == str(tmp_path / "run")
  assert paths.resolve("gs://b/run") == "gs://b/run" and paths.is_remote("gs://b/run")
  assert paths.resolve("") == "" and not paths.is_remote(str(tmp_path))


def test_local_helpers(tmp_path):
  p = tmp_path / "a.json"
  paths.write_json(p, {"x": 1})
  assert paths.read_json(p) == {"x": 1}
  assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp" + str(os.getpid()))]
  paths.append_text(tmp_path / "log", "1\n")
  paths.append_text(tmp_path / "log", "2\n")
  assert (tmp_path / "log").read_text() == "1\n2\n"
  assert paths.create_new(tmp_path / "lock", "me")
  assert not paths.create_new(tmp_path / "lock", "you")
  assert (tmp_path / "lock").read_text() == "me"
  size, mtime_ns = paths.size_and_mtime_ns(p)
  assert size == len('{\n  "x": 1\n}') and mtime_ns == os.stat(p).st_mtime_ns


def test_gs_goes_through_gcsfs():
  """gfile cannot be pointed at an emulator (paths.py): gcsfs is the tested backend, and
  with its listings cache off a checkpoint written by tensorstore or another host shows."""
  import fsspec  # pylint: disable=g-import-not-at-top
  import gcsfs  # pylint: disable=g-import-not-at-top
  from etils.epath import backend  # pylint: disable=g-import-not-at-top
  path = paths.path("gs://bucket/run")
  assert path._backend is backend.fsspec_backend  # pylint: disable=protected-access
  # What gcsfs is built with (building one looks for credentials: seconds, off a cloud).
  kwargs = fsspec.config.apply_config(gcsfs.GCSFileSystem, {})
  assert kwargs["use_listings_cache"] is False
