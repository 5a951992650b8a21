"""The one path layer: every file the package reads or writes goes through here.

Paths a user gives (flags, config fields) are resolved once where they enter: Orbax reads
no metadata through a relative path (it returns None), and a relative path means another
directory once anything changes the working directory; so every local path is made
absolute at the boundary. A `scheme://` path (gs://, s3://) is a remote store's name, not
the local file system's: it passes unchanged.

Files are opened through `etils.epath`, the library Orbax itself uses, so a `gs://`
workdir holds the checkpoints, metrics, evaluations, pictures and lock alike.
`tests/test_paths.py` keeps the package off bare `open`/`os.makedirs`.

Backend: epath sends gs:// to TensorFlow's gfile whenever TensorFlow is importable, and
gfile's GCS client has its endpoint compiled in (https://www.googleapis.com/storage/v1/):
it cannot be pointed at a storage emulator, so it cannot be tested off the cloud. The
fsspec backend (gcsfs, a dependency) honours STORAGE_EMULATOR_HOST and is the one
`tests/test_gcs.py` runs against a GCS server; so it is the default here
(EPATH_USE_TF=true in the environment restores gfile).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

os.environ.setdefault("EPATH_USE_TF", "false")  # before any epath call: see above

import fsspec  # pylint: disable=g-import-not-at-top,wrong-import-position
from etils import epath  # pylint: disable=g-import-not-at-top,wrong-import-position

# gcsfs caches directory listings per process, and only its own writes refresh them; but
# Orbax's arrays are written by tensorstore, and other hosts write too: a cached listing
# would hide a checkpoint (a resume that misses its step). A listing is one request.
fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def resolve(path: str) -> str:
  """`path` absolute (`~` expanded); '' and `scheme://` paths unchanged."""
  if not path or _URL.match(path):
    return path
  return os.path.abspath(os.path.expanduser(path))


def is_remote(path: str | os.PathLike) -> bool:
  return bool(_URL.match(os.fspath(path)))


def path(p: str | os.PathLike) -> epath.Path:
  """`p` (local or gs://, s3://) as an `epath.Path`, local paths resolved."""
  return epath.Path(resolve(os.fspath(p)))


def read_json(p: str | os.PathLike) -> Any:
  return json.loads(path(p).read_text(encoding="utf-8"))


def write_text(p: str | os.PathLike, text: str) -> None:
  """Writes `p` whole. Locally through a temporary file and a rename, so a reader (or a
  kill) never sees half a file; an object store's upload is atomic by itself."""
  target = path(p)
  if is_remote(target):
    target.write_text(text, encoding="utf-8")
    return
  tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
  tmp.write_text(text, encoding="utf-8")
  tmp.replace(target)


def write_json(p: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
  write_text(p, json.dumps(obj, indent=indent))


def append_text(p: str | os.PathLike, text: str) -> None:
  """Appends `text` to `p`. An object store has no append (gcsfs's mode 'a' silently
  overwrites), so a remote file is read and written whole: fine for the small logs
  appended to (metrics.jsonl, config_history.jsonl)."""
  target = path(p)
  if not is_remote(target):
    with target.open("a", encoding="utf-8") as f:
      f.write(text)
    return
  old = target.read_text(encoding="utf-8") if target.exists() else ""
  target.write_text(old + text, encoding="utf-8")


def create_new(p: str | os.PathLike, text: str) -> bool:
  """Writes `p` unless it exists; False if it did. Atomic on a local file system
  (O_EXCL). An object store offers no exclusive create through the path layer: there
  it is a check then a write, so two runs started at the same moment could both win."""
  target = path(p)
  if is_remote(target):
    if target.exists():
      return False
    target.write_text(text, encoding="utf-8")
    return True
  try:
    fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "w", encoding="utf-8") as f:
    f.write(text)
  return True



def size_and_mtime_ns(p: str | os.PathLike) -> tuple[int, int]:
  """(bytes, modification time in ns) of a file; epath's stat keeps whole seconds, a
  local file keeps its nanoseconds (a rewrite within the second still shows)."""
  if is_remote(p):
    st = path(p).stat()
    return st.length, st.mtime * 1_000_000_000
  st = os.stat(resolve(os.fspath(p)))
  return st.st_size, st.st_mtime_ns


def main(argv: list[str]) -> None:
  """`python -m syncmask_jax.paths cp SRC DST`: copies a file through the path layer
  (launch/tpu_pod.sh puts each worker's log into the bucket with it)."""
  if len(argv) != 3 or argv[0] != "cp":
    raise SystemExit("usage: python -m syncmask_jax.paths cp SRC DST")
  path(argv[2]).parent.mkdir(parents=True, exist_ok=True)
  path(argv[2]).write_bytes(path(argv[1]).read_bytes())


if __name__ == "__main__":
  import sys  # pylint: disable=g-import-not-at-top
  main(sys.argv[1:])
