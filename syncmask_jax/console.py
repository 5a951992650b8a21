"""What a person sees on the console, for every command of the package.

* An error that names a mistake of theirs (a flag, a config field, a path, a workdir)
  ends in one line, `error: ...`, with exit status 1 and no traceback: a file error
  (missing, in the way, not a directory, not permitted), or a ValueError / RuntimeError
  raised by this package's own checks (those messages name the field and the value).
  Anything else, a ValueError from inside a library included, is more likely a bug and
  keeps its traceback. `SYNCMASK_TRACEBACK=1` shows the traceback of every error.
* A long pass (an evaluation's feature batches, its ITM re-ranking) logs how far it is
  and its ETA every half minute (`Countdown`); a short one logs nothing.
* Libraries' chatter is dropped from the absl log: the INFO lines of Orbax, Grain and
  TensorStore, JAX's probing of backends the machine lacks ("Unable to initialize
  backend 'tpu'" on every CPU or GPU machine), and Orbax's warnings that a directory we
  open read-only is read-only. Other warnings pass.
"""

from __future__ import annotations

import functools
import logging as py_logging
import os
import sys
import time
from typing import Any, Callable

from absl import logging

TRACEBACK_ENV = "SYNCMASK_TRACEBACK"
FILE_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError)
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def one_line(error: BaseException) -> str:
  """The error's message on one line, unescaped."""
  # ml_collections wraps a KeyError in an AttributeError; str() of a KeyError is the
  # repr of its message (quotes and newlines escaped), so take the message itself.
  while len(error.args) == 1 and isinstance(error.args[0], BaseException):
    error = error.args[0]
  if isinstance(error, KeyError) and len(error.args) == 1:
    text = str(error.args[0])
  else:
    text = str(error)
  return " ".join(text.split())


def is_users_mistake(error: BaseException) -> bool:
  if isinstance(error, FILE_ERRORS):
    return True
  if not isinstance(error, (ValueError, RuntimeError)):
    return False
  tb = error.__traceback__
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(
      _PACKAGE)


def exit_with(message: str) -> None:
  """Ends the command with `error: message` (one line) and exit status 1."""
  sys.stderr.flush()
  sys.exit(f"error: {message}")


def one_line_errors(main: Callable[..., Any]) -> Callable[..., Any]:
  """`main`, its users' mistakes ending in one line (module docstring)."""

  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except  # re-raised unless a mistake
      if os.environ.get(TRACEBACK_ENV) or not is_users_mistake(e):
        raise
      exit_with(one_line(e))

  return wrapped


class Countdown:
  """`what: done/total unit (share), rate, ETA` in the log every `every_s` seconds of a
  pass of `total` units. The clock starts when the first units are done, so that a
  compilation is not in the rate."""

  def __init__(self, what: str, total: int, unit: str, every_s: float = 30.0,
               clock: Callable[[], float] = time.monotonic):
    self.what, self.total, self.unit, self.every_s, self._clock = (what, int(total), unit,
                                                                   every_s, clock)
    self.done, self._start, self._last = 0, None, None

  def add(self, n: int) -> None:
    self.done += int(n)
    now = self._clock()
    if self._start is None:
      self._start, self._first, self._last = now, self.done, now
      return
    if now - self._last < self.every_s or self.done >= self.total:
      return
    rate = (self.done - self._first) / max(now - self._start, 1e-9)
    eta = round((self.total - self.done) / max(rate, 1e-9))
    logging.info("%s: %d/%d %s (%.0f%%), %.1f %s/s, ETA %dm%02ds", self.what, self.done,
                 self.total, self.unit, 100 * self.done / self.total, rate, self.unit,
                 eta // 60, eta % 60)
    self._last = now


class _QuietLibraries:

  _PATHS = ("/orbax/", "/grain/", "/tensorstore/")

  def filter(self, record) -> bool:
    path = record.pathname
    if record.levelno < py_logging.WARNING:
      return not (any(p in path for p in self._PATHS)
                  or path.endswith(os.path.join("jax", "_src", "xla_bridge.py")))
    # Our checkpoint readers open runs read-only on purpose (an evaluation beside a
    # running training must not touch its checkpoints).
    return not ("/orbax/" in path and "read only" in record.getMessage().replace("_", " "))


def quiet_libraries() -> None:
  """Drops the libraries' chatter from the absl log (module docstring); idempotent."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())
