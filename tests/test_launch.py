"""The `shardguard` command sets its allocator environment before anything is imported
(shardguard.launch); a user's own settings win, and `import shardguard` changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from shardguard.launch import ALLOCATOR_ENV, scan_environment

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the launcher re-executes on Linux only")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV and k != "SHARDGUARD_LAUNCHED"}
    env.update(extra)
    return env


def run_scan(tmp_path, samples_dir, env):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "shardguard", "scan", str(samples_dir), "--out", str(out), "--embedder",
           "hashing", "--id-column", "id", "--label-column", "label", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "report.json").read_text())["runtime"]


@linux_only
def test_command_runs_with_the_system_pool_and_one_arena_per_cpu(tmp_path, samples_dir):
    runtime = run_scan(tmp_path, samples_dir, clean_env())
    assert runtime == {"arrow_memory_pool": "system", "malloc_arena_max": str(len(os.sched_getaffinity(0)))}


@linux_only
def test_arenas_follow_the_cpus_the_command_may_use(tmp_path, samples_dir):
    """A command pinned to one CPU (taskset, a container's cpuset) gets one arena: the
    count is the process's affinity, not the machine's CPUs."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "shardguard", "scan", str(samples_dir), "--out", str(out), "--embedder",
           "hashing", "--id-column", "id", "--no-progress"]
    cpu = min(os.sched_getaffinity(0))
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True,
                          preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "report.json").read_text())["runtime"]["malloc_arena_max"] == "1"


@linux_only
def test_user_settings_win(tmp_path, samples_dir):
    runtime = run_scan(tmp_path, samples_dir, clean_env(ARROW_DEFAULT_MEMORY_POOL="mimalloc", MALLOC_ARENA_MAX="4"))
    assert runtime == {"arrow_memory_pool": "mimalloc", "malloc_arena_max": "4"}


def test_importing_the_library_changes_nothing():
    probe = "import os, pyarrow as pa; print(os.environ.get('MALLOC_ARENA_MAX'), pa.default_memory_pool().backend_name)"
    plain = subprocess.run([sys.executable, "-c", probe], env=clean_env(), capture_output=True, text=True, check=True)
    code = "import shardguard, shardguard.pipeline, shardguard.guard; " + probe
    ours = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, check=True)
    assert ours.stdout == plain.stdout and ours.stdout.split()[0] == "None"


def test_scan_environment_adds_only_what_is_unset():
    env = scan_environment({"MALLOC_ARENA_MAX": "2", "PATH": "/bin"})
    assert env == {"MALLOC_ARENA_MAX": "2", "PATH": "/bin", "ARROW_DEFAULT_MEMORY_POOL": "system"}
