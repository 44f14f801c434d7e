"""Named crash points, so tests can kill a process at an exact step and check that nothing is lost.

`crash_point("cache.compact")` does nothing unless the environment variable `EMBEDCACHE_CRASH_AT`
names that point (`name`, or `name:N` for its N-th passage, 1-based), in which case the process
kills itself with SIGKILL on the spot: no cleanup, no flush, no atexit, as a `kill -9` or an
out-of-memory kill would. Points are placed between the steps whose order makes writes safe.

With `EMBEDCACHE_CRASH_ONCE=<file>` too, only the process that creates that file crashes: a process
started again to finish the work (a retried Ray task, a rerun) passes the point, and the file names
the process that died.
"""

from __future__ import annotations

import os
import signal

ENV = "EMBEDCACHE_CRASH_AT"
ONCE_ENV = "EMBEDCACHE_CRASH_ONCE"
_passed: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Kill this process here if `EMBEDCACHE_CRASH_AT` asks for this point (see the module docstring)."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    point, _, count = wanted.partition(":")
    if point != name:
        return
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] >= int(count or 1) and _first_crash():
        os.kill(os.getpid(), signal.SIGKILL)


def _first_crash() -> bool:
    """True unless `EMBEDCACHE_CRASH_ONCE` names a file that exists already (else it is created, naming
    this process)."""
    marker = os.environ.get(ONCE_ENV)
    if not marker:
        return True
    try:
        with open(marker, "x") as f:
            f.write(f"{os.getpid()}\n")
    except FileExistsError:
        return False
    return True
