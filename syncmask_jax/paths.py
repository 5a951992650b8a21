"""Paths a user gives (flags, config fields), resolved once where they enter.

Orbax reads no metadata through a relative path (it returns None), and a relative path
means another directory once anything changes the working directory; so every local
path is made absolute at the boundary. A `scheme://` path (gs://, s3://) is a remote
store's name, not the local file system's: it passes unchanged.
"""

from __future__ import annotations

import os
import re

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def resolve(path: str) -> str:
  """`path` absolute (`~` expanded); '' and `scheme://` paths unchanged."""
  if not path or _URL.match(path):
    return path
  return os.path.abspath(os.path.expanduser(path))
