"""Named crash points, so tests can kill a process at an exact step and check that nothing is lost.

`crash_point("cache.compact")` does nothing unless the environment variable `EMBEDCACHE_CRASH_AT`
names that point (`name`, or `name:N` for its N-th passage, 1-based), in which case the process
kills itself with SIGKILL on the spot: no cleanup, no flush, no atexit, as a `kill -9` or an
out-of-memory kill would. Points are placed between the steps whose order makes writes safe.
"""

from __future__ import annotations

import os
import signal

ENV = "EMBEDCACHE_CRASH_AT"
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
    if _passed[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
