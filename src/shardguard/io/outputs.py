"""Where outputs may go: no output ever overwrites an input, and one writer per OUT.

* :func:`check_scan_output` refuses an ``--out`` that is a file, is not
  writable, is an input, lies inside an input folder (a rerun would scan its
  own outputs) or holds an input (the scan's files could overwrite it).
* :func:`check_apply_target` refuses an ``apply --to`` that is, contains or
  lies inside an input root or the scan's OUT.
* :class:`OutputLock` is ``OUT/.lock``: an exclusive ``flock`` held for the
  whole run, the holder's pid, host and start time written inside for the
  message a second run prints. The kernel drops the lock when its process
  dies, so a lock file left by a killed run is taken over without asking.

All of these raise :class:`~shardguard.io.readers.UsageError` (exit 2) before
any work is done.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from shardguard.io.readers import UsageError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def json_digest(obj: Mapping[str, Any], without: str) -> str:
    """sha256 of ``obj``'s canonical JSON (sorted keys) without the key ``without`` (where its digest goes)."""
    body = {k: v for k, v in json.loads(json.dumps(obj, default=str)).items() if k != without}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_scan_manifest(out_dir: str | os.PathLike, trusted: bool = False) -> dict[str, Any]:
    """A finished scan's ``manifest.json``; :class:`UsageError` when there is none or the scan did not finish.

    With ``trusted`` the manifest must also carry its own sha256 and match it.
    """
    out_dir = Path(out_dir)
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{out_dir}: no readable manifest.json; run shardguard scan first ({exc})") from None
    if not isinstance(manifest, dict) or not manifest.get("complete"):
        raise UsageError(f"{out_dir}: the scan did not finish; rerun shardguard scan into it to complete it")
    if trusted:
        if "manifest_sha256" not in manifest:
            raise UsageError(f"{out_dir}: manifest.json has no digests (written by an older shardguard); scan again")
        if manifest["manifest_sha256"] != json_digest(manifest, "manifest_sha256"):
            raise UsageError(f"{out_dir}: manifest.json altered (its sha256 does not match its contents); "
                             "it cannot be trusted")
    return manifest


class LockError(UsageError):
    """Another live run holds OUT's lock."""


def real_path(path: str | os.PathLike) -> Path:
    """Absolute path with symlinks resolved as far as they resolve (never raises)."""
    p = Path(os.path.abspath(path))
    try:
        return p.resolve(strict=False)
    except (OSError, RuntimeError):  # a symlink loop
        return p


def _within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_folder(path: str | os.PathLike, what: str, create: bool = False) -> None:
    """``path`` is a folder this process can write in, or can be created as one.

    With ``create`` the folder is made now; either way a probe file is created
    and removed, so a read-only file system or a missing permission is found
    here, as root too (where ``os.access`` says yes to everything).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{what} {p}: exists and is not a folder")
    try:
        if create:
            p.mkdir(parents=True, exist_ok=True)
            anchor = p
        else:
            anchor = _nearest_existing(real_path(p))
            if not anchor.is_dir():
                raise UsageError(f"{what} {p}: {anchor} is not a folder")
        fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=anchor)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{what} {p}: not writable ({exc.strerror or exc})") from None


def check_scan_output(out: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> None:
    """Refuse an output folder that could read or overwrite the scan's inputs (see the module docstring).

    When every check passes the folder exists (it is created) and is writable.
    """
    if Path(out).exists() and not Path(out).is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    r_out = real_path(out)
    for raw in inputs:
        r_in = real_path(raw)
        if r_in == r_out:
            raise UsageError(f"--out {out} is the input {raw}; write the results to another folder")
        if r_in.is_dir() and _within(r_out, r_in):
            raise UsageError(f"--out {out} is inside the input folder {raw}: a rerun would scan its own "
                             "outputs; write the results outside it")
        if _within(r_in, r_out):
            raise UsageError(f"the input {raw} is inside --out {out}: the scan's files could overwrite it; "
                             "write the results to another folder")
    check_writable_folder(out, "--out", create=True)


def check_apply_target(target: str | os.PathLike, out_dir: str | os.PathLike, roots: Iterable[str]) -> None:
    """Refuse an ``apply --to`` that is, contains or is inside an input root or the scan's OUT."""
    r_target = real_path(target)
    for what, raw in [("the scan's output", out_dir)] + [("the input", r) for r in roots]:
        r = real_path(raw)
        if r_target == r:
            raise UsageError(f"--to {target} is {what} {raw}; write the clean copy to a new folder")
        if _within(r_target, r):
            raise UsageError(f"--to {target} is inside {what} {raw}; write the clean copy outside it")
        if _within(r, r_target):
            raise UsageError(f"--to {target} contains {what} {raw}; write the clean copy to a new folder")
    check_writable_folder(target, "--to")


class OutputLock:
    """``OUT/.lock``: one writer per output folder (see the module docstring).

    Use as a context manager; :class:`LockError` when a live process holds it.
    """

    def __init__(self, out_dir: str | os.PathLike, command: str = "scan"):
        self.path = Path(out_dir) / LOCK_NAME
        self.command = command
        self._fd: int | None = None

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text())
            return (f"{info.get('command', 'a run')} by pid {info.get('pid')} on host {info.get('host')}, "
                    f"started {info.get('started')}")
        except (OSError, ValueError, AttributeError):
            return "another process"

    def acquire(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockError(f"{self.path.parent} is in use: {self._holder()}; wait for it to finish "
                                "or write to another folder") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder removed the file as we opened it: try again on the new one
                os.close(fd)
                continue
            old = os.read(fd, 4096).decode("utf-8", "replace").strip()
            if old:
                log.warning("%s: taking over a lock left by a run that ended without releasing it (%s)",
                            self.path.parent, old.replace("\n", " "))
            info = {"command": self.command, "pid": os.getpid(), "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            self._fd = fd
            return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
