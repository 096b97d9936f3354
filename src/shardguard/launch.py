"""Entry point of the ``shardguard`` command: the allocator environment, then the CLI.

A scan allocates and frees large temporary arrays batch after batch, in two
threads. Two allocator defaults then keep freed memory resident, so the peak
resident memory of a long scan creeps up with the number of batches, not with
what the scan holds:

* the default Arrow memory pool of the pyarrow wheels (mimalloc) keeps the
  pages of freed batch buffers; ``ARROW_DEFAULT_MEMORY_POOL=system`` hands large
  buffers back to the OS when they are freed;
* glibc gives each thread that allocates an arena of its own (up to 8 per CPU), which
  keeps what that thread freed; ``MALLOC_ARENA_MAX`` set to the number of CPUs the process
  may use caps them at one per CPU. Not fewer: the static embedder tokenises in Rust
  threads, one per CPU, that allocate without the GIL, and one arena shared by all of them
  made its embed stage twice as slow (TweetEval: 9.8 s against 4.1 s, the whole scan 6,100
  against 7,961 rows/s, on 2 CPUs).

Both are read once, when the process starts (Arrow picks its default pool on
first use, glibc fixes its arena limit when a second thread first allocates),
so the command sets whichever of them the user has not set and replaces itself
with a fresh interpreter (``execv``: same process id, same arguments) before
anything is imported. Measured with ``benchmarks/bench_embed.py`` on 2 CPUs: the
hashing scan's peak RSS grows by 51 MiB from 50k to 200k rows, within the near-duplicate
index's own 56 MiB (without either setting: 62 MiB more growth and 55-65 MiB more peak
RSS); README, "Performance".

Only the command does this: ``import shardguard`` in a user's process changes
nothing of that process. Linux only (elsewhere the CLI runs as it is).
"""

from __future__ import annotations

import os
import sys


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # no affinity masks (macOS)
        return os.cpu_count() or 1


#: Set for the command's own process where the user has not set them.
ALLOCATOR_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": str(usable_cpus())}
#: Marks the replaced process, so that it never replaces itself again.
_LAUNCHED = "SHARDGUARD_LAUNCHED"


def scan_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with :data:`ALLOCATOR_ENV` added where unset."""
    out = dict(os.environ if env is None else env)
    for key, value in ALLOCATOR_ENV.items():
        out.setdefault(key, value)
    return out


def main() -> None:
    """Run the CLI, first re-executing with :func:`scan_environment` where it adds something."""
    missing = [k for k in ALLOCATOR_ENV if k not in os.environ]
    if missing and sys.platform.startswith("linux") and sys.executable and not os.environ.get(_LAUNCHED):
        env = scan_environment()
        env[_LAUNCHED] = "1"
        os.execve(sys.executable, [sys.executable, "-m", "shardguard", *sys.argv[1:]], env)
    from shardguard.cli import main as cli_main

    sys.exit(cli_main())
