"""Bad input makes `ckptfs mount` fail fast with one line, a non-zero exit and nothing mounted."""

import os
import stat
import signal

import pytest

from support import (FAIL_TIMEOUT, expect_mount_error, free_port, is_mounted, mount_fstypes, one_line_error,
                     pids_with_argument, run, wait_until_gone)


@pytest.mark.parametrize("remote,keywords", [
    ("s3://no-such-bucket-ckptfs", ("does not exist",)),
    ("s3://{bucket}/no-such-prefix", ("not found",)),
    ("ftp://x", ("unsupported remote",)),
], ids=["missing-bucket", "missing-prefix", "bad-scheme"])
def test_bad_remote(mounter, dataset, remote, keywords):
    expect_mount_error(mounter, remote.format(bucket=dataset.bucket), keywords)


def test_unreachable_endpoint(mounter, dataset):
    mounter.endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    expect_mount_error(mounter, f"s3://{dataset.bucket}", ("cannot reach", "couldn't connect"))


def test_mountpoint_that_does_not_exist(mounter, dataset, tmp_path):
    expect_mount_error(mounter, f"s3://{dataset.bucket}", ("does not exist",), mountpoint=tmp_path / "absent")


def test_mountpoint_that_is_a_file(mounter, dataset, tmp_path):
    (tmp_path / "file").write_text("x")
    expect_mount_error(mounter, f"s3://{dataset.bucket}", ("not a directory",), mountpoint=tmp_path / "file")


def test_mountpoint_that_is_not_empty(mounter, dataset, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("x")
    expect_mount_error(mounter, f"s3://{dataset.bucket}", ("not empty",), mountpoint=tmp_path / "full")


@pytest.mark.parametrize("flag", ["--cache-size", "--block-size"])
def test_invalid_size(mounter, dataset, flag):
    expect_mount_error(mounter, f"s3://{dataset.bucket}", ("invalid size",), args=[flag, "12Q"])


def test_cache_dir_that_is_a_file(mounter, dataset, tmp_path):
    (tmp_path / "cachefile").write_text("x")
    expect_mount_error(mounter, f"s3://{dataset.bucket}", ("cache",), cache_dir=tmp_path / "cachefile")


def test_mountpoint_already_mounted(mounter, dataset):
    live = mounter.mount(f"s3://{dataset.bucket}").mountpoint
    line = one_line_error(mounter.attempt(f"s3://{dataset.bucket}", mountpoint=live, timeout=FAIL_TIMEOUT))
    assert "already" in line.lower() or "not empty" in line.lower(), line
    assert len(mount_fstypes(live)) == 1, "a second mount was stacked on the first"
    assert sorted(p.name for p in live.iterdir()) == ["proj-a", "proj-b"]


def test_a_cache_dir_in_use_by_another_mount_is_refused_and_left_alone(mounter, dataset):
    first = mounter.mount(f"s3://{dataset.bucket}")
    writing = first.cache_dir / "blocks" / "ab" / "ab01.0.123.1.tmp"  # a block the first daemon is writing
    writing.parent.mkdir(exist_ok=True)
    writing.write_bytes(b"x")
    line = one_line_error(expect_mount_error(mounter, f"s3://{dataset.bucket}", ("in use by another ckptfs mount",),
                                             cache_dir=first.cache_dir))
    assert str(first.cache_dir) in line, line
    assert writing.exists(), "the refused mount deleted the running mount's temporary block"
    assert sorted(os.listdir(first.mountpoint)) == ["proj-a", "proj-b"]


def test_a_staging_dir_in_use_by_another_mount_of_the_remote_is_refused_and_left_alone(mounter, dataset):
    first = mounter.mount(f"s3://{dataset.bucket}")
    staging = first.cache_dir / "staging"
    (journal,) = staging.glob("*/journal")
    inode = journal.stat().st_ino
    expect_mount_error(mounter, f"s3://{dataset.bucket}", ("in use by another ckptfs mount",),
                       args=["--staging-dir", staging])
    assert journal.stat().st_ino == inode, "the refused mount replaced the running mount's journal"


def test_a_local_remote_spelled_another_way_shares_its_staging_dir(mounter, tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    first = mounter.mount(f"file://{remote}")
    staging = first.cache_dir / "staging"
    spelled = f"file://{tmp_path}//./remote/"  # the same directory
    expect_mount_error(mounter, spelled, ("in use by another ckptfs mount",), args=["--staging-dir", staging])
    assert len(list(staging.glob("*/journal"))) == 1


@pytest.mark.parametrize("where", ["cache-dir", "staging-dir", "log-file", "cache-dir-through-a-link"])
def test_a_path_inside_the_mountpoint_is_refused_and_nothing_is_created(mounter, dataset, tmp_path, where):
    mnt = mounter.fresh_dir("mnt")
    inside = mnt / "sub" / "x"
    if where == "cache-dir-through-a-link":
        (tmp_path / "link").symlink_to(mnt)
        kw = {"cache_dir": tmp_path / "link" / "new" / ".." / "cache"}
    elif where == "cache-dir":
        kw = {"cache_dir": inside}
    else:
        kw = {"args": [f"--{where}", inside]}
    expect_mount_error(mounter, f"s3://{dataset.bucket}", ("inside the mountpoint",), mountpoint=mnt, **kw)
    assert os.listdir(mnt) == [], "the refused mount left files in the mount point"


@pytest.mark.parametrize("where", ["below", "the-remote-itself", "below-through-a-link"])
def test_a_mountpoint_inside_its_file_remote_is_refused(mounter, tmp_path, where):
    # Listing such a remote would make the daemon read its own mount: `ls` hung for good, unkillable.
    remote = tmp_path / "remote"
    remote.mkdir()
    if where == "the-remote-itself":
        mnt, spelled = remote, remote
    else:
        (remote / "p/j/checkpoint-1").mkdir(parents=True)
        (remote / "p/j/checkpoint-1/f").write_bytes(b"a")
        mnt = remote / "mnt"
        mnt.mkdir()
        spelled = remote
        if where == "below-through-a-link":
            (tmp_path / "link").symlink_to(remote)
            spelled = tmp_path / "link"
    expect_mount_error(mounter, f"file://{spelled}", ("inside the remote",), mountpoint=mnt)


def test_an_existing_staging_dir_and_log_file_are_made_private(mounter, dataset, tmp_path):
    staging, log = tmp_path / "staging", tmp_path / "mount.log"
    staging.mkdir(mode=0o755)
    log.write_bytes(b"")
    log.chmod(0o644)
    mounter.mount(f"s3://{dataset.bucket}", args=["--staging-dir", staging, "--log-file", log])
    assert stat.S_IMODE(staging.stat().st_mode) == 0o700  # was 0755: only the remote's directory in it was private
    assert stat.S_IMODE(log.stat().st_mode) == 0o600  # was 0644
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in staging.iterdir())


@pytest.mark.parametrize("what", ["staging-dir", "log-file"])
def test_a_staging_dir_or_log_file_of_another_user_is_refused(mounter, dataset, tmp_path, what):
    path = tmp_path / what
    if what == "staging-dir":
        path.mkdir()
    else:
        path.write_bytes(b"")
    os.chown(path, 65534, 65534)  # nobody
    expect_mount_error(mounter, f"s3://{dataset.bucket}", ("not owned by the current user",), args=[f"--{what}", path])


@pytest.mark.parametrize("spelling", ["joined", "separate"])
@pytest.mark.parametrize("option,value", [
    ("--drain-timeout", "nan"), ("--drain-timeout", "inf"), ("--drain-timeout", "-5"), ("--metadata-ttl", "inf"),
    ("--negative-ttl", "1e300"), ("--staging-size", "0"), ("--metadata-ttl", "-5"), ("--cache-size", "-5"),
    ("--uid", "-1"), ("--fetch-threads", "-1"),
])
def test_invalid_duration_or_size(mounter, dataset, option, value, spelling):
    # `--metadata-ttl -5` was taken for a missing value: a usage text of 4 lines, exit status 64.
    args = [f"{option}={value}"] if spelling == "joined" else [option, value]
    expect_mount_error(mounter, f"s3://{dataset.bucket}", (option,), args=args)


def test_an_unknown_option_is_one_line(mounter, dataset):
    expect_mount_error(mounter, f"s3://{dataset.bucket}", ("--cache-dir-typo",), args=["--cache-dir-typo", "x"])


def test_unmount_refuses_an_invalid_timeout_and_leaves_the_mount_alone(mounter, dataset, ckptfs_bin):
    mnt = mounter.mount(f"s3://{dataset.bucket}").mountpoint
    for option, value in [("--drain-timeout", "nan"), ("--drain-timeout", "inf"), ("--timeout", "-5")]:
        result = run([ckptfs_bin, "unmount", mnt, f"{option}={value}"], env=mounter.env)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("ckptfs: error: "), result
        assert option in lines[0], lines[0]
        assert is_mounted(mnt)


def test_a_stale_mountpoint_gets_the_fusermount_hint(mounter, dataset):
    first = mounter.mount(f"s3://{dataset.bucket}", args=["--read-only"])
    pids = pids_with_argument(str(first.mountpoint))
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert wait_until_gone(pids, timeout=10) == []
    attempt = mounter.attempt(f"s3://{dataset.bucket}", mountpoint=first.mountpoint, timeout=FAIL_TIMEOUT)
    line = one_line_error(attempt)
    assert f"fusermount3 -uz {first.mountpoint}" in line, line
