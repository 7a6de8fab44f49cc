"""Mount and unmount: detach only once live, clean shutdown, and no secret anywhere visible."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from support import (FAIL_TIMEOUT, LIVE_MOUNTPOINTS, MOTO_SECRET_KEY, is_mounted, mount_fstypes, one_line_error,
                     pids_whose_argv_contains, pids_with_argument, run, sha256_file, wait_until_gone)

SMALL = "proj-a/job1/checkpoint-2/rank-1/model.safetensors"


def daemons(mountpoint) -> list[int]:
    """The ckptfs processes serving `mountpoint` (at least one must exist)."""
    pids = pids_with_argument(str(mountpoint))
    assert pids, f"no process has {mountpoint} in its argv"
    return pids


def test_mount_returns_once_live_and_unmount_removes_it(mounter, dataset):
    mnt = mounter.mount(f"s3://{dataset.bucket}").mountpoint  # asserts it is mounted on return
    assert mount_fstypes(mnt)[0].startswith("fuse")
    assert sorted(os.listdir(mnt)) == ["proj-a", "proj-b"]
    pids = daemons(mnt)

    result = mounter.unmount(mnt)
    assert result.returncode == 0, result.stderr
    assert not is_mounted(mnt)
    assert wait_until_gone(pids, timeout=10) == [], "daemon still running 10 s after unmount"
    assert os.listdir(mnt) == []


def test_mount_returns_even_when_its_output_is_a_pipe(mounter, dataset):
    argv, mnt, _ = mounter.command(f"s3://{dataset.bucket}")
    try:
        result = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, env=mounter.env, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("`ckptfs mount` with piped stdout/stderr did not return in 30 s: "
                    "the daemon keeps the caller's pipes open (breaks `$(ckptfs mount ...)`)")
    assert result.returncode == 0, result.stderr
    assert is_mounted(mnt)


def test_secret_never_appears_in_output_log_or_argv(mounter, dataset, tmp_path):
    log = tmp_path / "ckptfs.log"
    attempt = mounter.mount(f"s3://{dataset.bucket}", args=["--log-level", "debug", "--log-file", log])
    assert sha256_file(attempt.mountpoint / SMALL) == dataset.sha256[SMALL]
    os.listdir(attempt.mountpoint / "proj-a/big-dir")
    assert pids_whose_argv_contains(MOTO_SECRET_KEY) == []
    assert mounter.unmount(attempt.mountpoint).returncode == 0

    text = log.read_bytes()
    assert text, "the debug log is empty, so this check proves nothing"
    assert MOTO_SECRET_KEY.encode() not in text
    assert MOTO_SECRET_KEY not in attempt.stdout + attempt.stderr


def test_endpoint_from_the_environment(mounter, moto, dataset):
    env = {**mounter.env, "AWS_ENDPOINT_URL": moto.endpoint}
    mounter.endpoint = None  # no --endpoint flag
    mnt = mounter.mount(f"s3://{dataset.bucket}", env=env).mountpoint
    assert sha256_file(mnt / SMALL) == dataset.sha256[SMALL]


def test_sigterm_unmounts_cleanly(mounter, dataset):
    mnt = mounter.mount(f"s3://{dataset.bucket}").mountpoint
    pids = daemons(mnt)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    assert wait_until_gone(pids, timeout=10) == []
    assert not is_mounted(mnt), "SIGTERM left the mount behind"


def test_foreground_stays_attached_until_sigterm(mounter, dataset, tmp_path):
    argv, mnt, _ = mounter.command(f"s3://{dataset.bucket}", args=["--foreground"])
    with open(tmp_path / "foreground.log", "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=mounter.env)
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mnt) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"--foreground exited with {proc.returncode}"
        assert is_mounted(mnt), "not mounted 30 s after starting --foreground"
        assert sha256_file(mnt / SMALL) == dataset.sha256[SMALL]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert not is_mounted(mnt), "SIGTERM left the mount behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def registered(mounter, mountpoint: Path) -> Path:
    """`mountpoint`, recorded so that the Mounter unmounts it at teardown (for mounts made without it)."""
    mounter.used.append(mountpoint)
    LIVE_MOUNTPOINTS.add(mountpoint)
    return mountpoint


def test_relative_cache_staging_and_log_paths_are_below_the_current_directory(mounter, dataset, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    tag = uuid.uuid4().hex[:8]
    names = [f"relcache-{tag}", f"relstage-{tag}", f"rel-{tag}.log"]
    argv, mnt, _ = mounter.command(f"s3://{dataset.bucket}", cache_dir=f"./{names[0]}",
                                   args=["--staging-dir", names[1], "--log-file", names[2]])
    try:
        result = subprocess.run(argv, cwd=work, capture_output=True, stdin=subprocess.DEVNULL, env=mounter.env,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        assert sorted(os.listdir(mnt)) == ["proj-a", "proj-b"]
        for name in names:
            assert (work / name).exists(), f"{name} is not below the current directory"
            assert not (Path("/") / name).exists(), f"{name} was created below /"
    finally:
        mounter.close()
        for leftover in (Path("/") / name for name in names):  # where the bug put them
            if leftover.is_dir():
                shutil.rmtree(leftover)
            elif leftover.exists():
                leftover.unlink()


def test_demo_with_a_relative_dir_writes_below_the_current_directory(mounter, ckptfs_bin, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    name = f"revdemo-{uuid.uuid4().hex[:8]}"
    mnt = registered(mounter, work / name / "mnt")
    wrong = registered(mounter, Path("/") / name / "mnt")  # where the bug mounted it
    try:
        result = run([ckptfs_bin, "demo", "--dir", name], cwd=work, env=mounter.env, timeout=120)
        assert result.returncode == 0, result.stderr
        assert is_mounted(mnt)
        assert (mnt / "llama-ft/run-7/latest/rank-0/config.json").is_file()
        assert not wrong.parent.exists(), "the demo wrote below /"
    finally:
        mounter.close()
        shutil.rmtree(wrong.parent, ignore_errors=True)



def test_options_before_a_double_dash_still_reach_the_daemon(mounter, dataset, ckptfs_bin):
    mnt = registered(mounter, mounter.fresh_dir("mnt"))
    cache = mounter.fresh_dir("cache")
    result = run([ckptfs_bin, "mount", "--cache-dir", cache, "--read-only", "--", f"file://{dataset.local_root}", mnt],
                 env=mounter.env)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(mnt)) == ["proj-a", "proj-b"]


def descriptor_targets(pid: int) -> list[str]:
    """What the open descriptors of process `pid` point to (one it closes while they are read is left out)."""
    targets = []
    for n in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{n}"))
        except FileNotFoundError:
            pass
    return targets


def test_the_daemon_keeps_neither_the_callers_directory_nor_its_descriptors(mounter, dataset):
    outer = mounter.mount(f"s3://{dataset.bucket}", args=["--read-only"]).mountpoint
    argv, inner, _ = mounter.command(f"s3://{dataset.bucket}", args=["--read-only"])
    fd = os.open(outer / SMALL, os.O_RDONLY)
    try:  # started from a directory of the outer mount, with a file of it open
        result = subprocess.run(argv, cwd=outer / "proj-a", pass_fds=(fd,), capture_output=True,
                                stdin=subprocess.DEVNULL, env=mounter.env, timeout=60)
    finally:
        os.close(fd)
    assert result.returncode == 0, result.stderr
    (pid,) = daemons(inner)
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    held = descriptor_targets(pid)
    assert not [path for path in held if path.startswith(str(outer))], held
    result = mounter.unmount(outer)
    assert result.returncode == 0, f"the inner daemon keeps the outer mount busy: {result.stderr}"


def control_socket(pid: int) -> Path:
    """The Unix socket the daemon `pid` listens on (its control socket), from /proc/net/unix."""
    links = descriptor_targets(pid)
    inodes = {link[len("socket:["):-1] for link in links if link.startswith("socket:[")}
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) == 8 and fields[6] in inodes and int(fields[3], 16) & 0x10000:  # __SO_ACCEPTCON
            return Path(fields[7])
    raise AssertionError(f"daemon {pid} listens on no Unix socket")


def test_unmount_removes_the_control_socket_and_a_later_read_only_mount_unmounts_cleanly(mounter, dataset):
    first = mounter.mount(f"s3://{dataset.bucket}")
    socket_path = control_socket(daemons(first.mountpoint)[0])
    assert mounter.unmount(first.mountpoint).returncode == 0
    assert not socket_path.exists(), "the control socket outlived its daemon"
    again = mounter.mount(first.remote, mountpoint=first.mountpoint, cache_dir=first.cache_dir, args=["--read-only"])
    result = mounter.unmount(again.mountpoint)
    assert result.returncode == 0, result.stderr


def test_status_and_sync_answer_for_a_read_only_mount(mounter, dataset, ckptfs_bin):
    mnt = mounter.mount(f"s3://{dataset.bucket}", args=["--read-only"]).mountpoint
    status = run([ckptfs_bin, "status", mnt], env=mounter.env)
    assert status.returncode == 0, status.stderr  # was: cannot reach the daemon
    fields = dict(line.split("=", 1) for line in status.stdout.split())
    assert fields["queued"] == "0" and fields["staged_files"] == "0" and int(fields["cache_capacity"]) > 0, fields
    synced = run([ckptfs_bin, "sync", mnt], env=mounter.env)
    assert synced.returncode == 0 and synced.stderr == "", synced
    socket_path = control_socket(daemons(mnt)[0])
    assert mounter.unmount(mnt).returncode == 0
    assert not socket_path.exists(), "the control socket outlived its daemon"


def test_unmount_of_a_killed_writable_daemon_says_it_was_not_running(mounter, dataset):
    mnt = mounter.mount(f"s3://{dataset.bucket}").mountpoint
    pids = daemons(mnt)
    socket_path = control_socket(pids[0])
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert wait_until_gone(pids, timeout=10) == []
    result = mounter.unmount(mnt)
    assert not is_mounted(mnt)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result
    assert "not running" in lines[0] and "did not finish" not in lines[0], lines[0]
    assert not socket_path.exists() and not socket_path.with_suffix(".pid").exists(), "the dead daemon's files are left"


def test_commands_reach_the_daemon_whatever_their_XDG_RUNTIME_DIR(mounter, ckptfs_bin, tmp_path):
    remote = tmp_path / "remote"
    (remote / "proj").mkdir(parents=True)
    (remote / "proj" / "old.bin").write_bytes(b"old")
    runtime = {name: tmp_path / f"run-{name}" for name in ("mount", "other")}
    for path in runtime.values():
        path.mkdir(mode=0o700)
    env = {name: {**mounter.env, "XDG_RUNTIME_DIR": str(path)} for name, path in runtime.items()}
    attempt = mounter.mount(f"file://{remote}", args=["--drain-timeout", "3"], env=env["mount"])
    mnt = attempt.mountpoint
    status = run([ckptfs_bin, "status", mnt], env=env["other"])
    assert status.returncode == 0, status.stderr
    assert os.listdir(mnt) == ["proj"]  # cached: creating a name below needs the store no more
    remote.rename(tmp_path / "remote-gone")  # uploads fail from now on, and are retried
    (mnt / "new.bin").write_bytes(b"new")
    pids = daemons(mnt)
    socket_path = control_socket(pids[0])
    result = run([ckptfs_bin, "unmount", mnt, "--drain-timeout", "1"], env=env["other"])
    assert not is_mounted(mnt)
    assert result.returncode == 1 and "did not finish" in result.stderr, result
    # The daemon drains on for its own --drain-timeout; the answer to the sync that unmount gave up on
    # must not kill it (SIGPIPE), so it ends as usual.
    assert wait_until_gone(pids, timeout=15) == []
    assert "uploads left staged" in (attempt.cache_dir / "ckptfs.log").read_text()
    assert not socket_path.exists()


def test_a_control_socket_error_fails_the_mount_with_nothing_mounted(mounter, dataset):
    first = mounter.mount(f"s3://{dataset.bucket}")
    socket_path = control_socket(daemons(first.mountpoint)[0])
    assert mounter.unmount(first.mountpoint).returncode == 0
    socket_path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX) as squatter:  # something else listens where the daemon's socket goes
        squatter.bind(str(socket_path))
        squatter.listen()
        try:
            again = mounter.attempt(first.remote, mountpoint=first.mountpoint, cache_dir=first.cache_dir,
                                    timeout=FAIL_TIMEOUT)
            assert "control socket" in one_line_error(again)
            assert not is_mounted(first.mountpoint), "a failed mount left the mount point mounted"
        finally:
            socket_path.unlink()


def test_a_broken_XDG_RUNTIME_DIR_neither_fails_the_mount_nor_leaves_a_dead_mount(mounter, dataset, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ckptfs").write_text("not a directory")
    attempt = mounter.attempt(f"s3://{dataset.bucket}", env={**mounter.env, "XDG_RUNTIME_DIR": str(tmp_path / "run")})
    assert attempt.returncode == 0, attempt.stderr
    assert sorted(os.listdir(attempt.mountpoint)) == ["proj-a", "proj-b"]
