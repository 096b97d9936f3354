"""A Ray cluster as ``ray start --head`` leaves one running between jobs, for the scale
benchmark's ``--ray-running`` scans and the test that joins one by address."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Mapping


@contextlib.contextmanager
def running_cluster(cpus: int, env: Mapping[str, str] | None = None, timeout_s: float = 120.0) -> Iterator[str]:
    """Start a head node of ``cpus`` CPUs (no GPU, no dashboard) with ``ray start --head
    --block`` in ``env`` (default: this process's) on a free port; yield its address
    (``HOST:PORT``); stop it on exit. ``--block`` ties the cluster's processes to the
    command, so ending the command stops them, and only them (``ray stop`` would stop every
    cluster on the machine). Clusters that ``ray start`` makes use token authentication
    (Ray >= 2.59): a driver joins by address with ``RAY_AUTH_MODE=token``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                             f"--num-cpus={cpus}", "--num-gpus=0", "--include-dashboard=false",
                             "--disable-usage-stats", f"--port={port}"],
                            stdout=log, stderr=subprocess.STDOUT, env=None if env is None else dict(env), text=True)
    address = None
    try:
        deadline = time.monotonic() + timeout_s
        while "Ray runtime started" not in (text := (log.seek(0), log.read())[1]):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start --head did not start a cluster:\n{text[-2000:]}")
            time.sleep(0.2)
        address = re.search(r"--address='([^']+)'", text).group(1)
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        log.close()
        # `ray start` recorded the cluster as the machine's latest, which ray.init() without
        # an address would try to join; `ray stop` forgets it, ending --block does not
        latest = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if address and latest.is_file() and latest.read_text().strip() == address:
            latest.unlink()
