"""Staged files served by FUSE passthrough: the kernel reads and writes them in their staging files, and
every way of writing a file through the mount still lands byte-exact in the bucket."""

from __future__ import annotations

import errno
import gzip
import json
import mmap
import os
import platform
import threading
import time
import uuid

import pytest

from support import run
from test_overlay import bucket_hashes, sha, sync


@pytest.fixture
def bucket(moto_client):
    name = f"pt-{uuid.uuid4().hex[:8]}"
    moto_client.create_bucket(Bucket=name)
    return name


def kernel_offers_passthrough() -> bool:
    """Linux >= 6.9 built with CONFIG_FUSE_PASSTHROUGH, and root (backing files need CAP_SYS_ADMIN)."""
    major, minor = (int(part) for part in platform.release().split(".")[:2])
    try:
        with gzip.open("/proc/config.gz", "rt") as config:
            built = "CONFIG_FUSE_PASSTHROUGH=y\n" in config.read()
    except OSError:
        built = False
    return (major, minor) >= (6, 9) and built and os.geteuid() == 0


def status(ckptfs_bin, env, mnt) -> dict:
    result = run([ckptfs_bin, "status", "--json", mnt], env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_status_says_passthrough_exactly_where_the_kernel_offers_it(mounter, ckptfs_bin, moto_env, bucket):
    mnt = mounter.mount(f"s3://{bucket}").mountpoint
    answer = status(ckptfs_bin, moto_env, mnt)
    assert answer["passthrough"] == answer["passthrough_reads"] == int(kernel_offers_passthrough())


def test_a_staging_budget_keeps_writes_in_the_daemon_to_count_them(mounter, ckptfs_bin, moto_env, bucket):
    mnt = mounter.mount(f"s3://{bucket}", args=["--staging-size", "64M"]).mountpoint
    answer = status(ckptfs_bin, moto_env, mnt)
    assert answer["passthrough"] == 0
    assert answer["passthrough_reads"] == int(kernel_offers_passthrough())  # cached objects still use it


def test_a_reader_opened_while_a_file_is_written_sees_every_byte_so_far(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    mnt = mounter.mount(f"s3://{bucket}").mountpoint
    first, second = os.urandom(3 << 20), os.urandom(1 << 20)
    writer = os.open(mnt / "w.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        assert os.write(writer, first) == len(first)
        reader = os.open(mnt / "w.bin", os.O_RDONLY)
        try:
            assert os.pread(reader, len(first) + 10, 0) == first
            assert os.write(writer, second) == len(second)
            assert os.stat(mnt / "w.bin").st_size == len(first) + len(second)
            assert os.pread(reader, len(second), len(first)) == second
        finally:
            os.close(reader)
    finally:
        os.close(writer)
    sync(ckptfs_bin, moto_env, mnt)
    assert bucket_hashes(moto_client, bucket) == {"w.bin": sha(first + second)}


def test_mmap_writes_appends_and_truncates_land_in_the_bucket(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    mnt = mounter.mount(f"s3://{bucket}").mountpoint
    body = bytearray(os.urandom(5 << 20))
    with open(mnt / "m.bin", "w+b") as f:
        f.truncate(len(body))
        with mmap.mmap(f.fileno(), len(body)) as mapped:
            mapped[:] = body
            mapped.flush()
    with open(mnt / "m.bin", "ab") as f:
        f.write(b"tail")
    body += b"tail"
    os.truncate(mnt / "m.bin", 4 << 20)  # by path, with no handle open
    del body[4 << 20:]
    with open(mnt / "m.bin", "r+b") as f:
        f.seek(100)
        f.write(b"patched")
    body[100:107] = b"patched"
    assert (mnt / "m.bin").read_bytes() == body
    sync(ckptfs_bin, moto_env, mnt)
    assert bucket_hashes(moto_client, bucket) == {"m.bin": sha(bytes(body))}


def test_rewriting_an_object_that_is_open_for_reading_works(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    old, new = os.urandom(2 << 20), os.urandom(1 << 20)
    moto_client.put_object(Bucket=bucket, Key="r.bin", Body=old)
    mnt = mounter.mount(f"s3://{bucket}", args=["--allow-overwrite"]).mountpoint
    with open(mnt / "r.bin", "rb") as reader:
        assert reader.read(1000) == old[:1000]
        with open(mnt / "r.bin", "wb") as writer:  # the reader keeps the inode in the daemon's hands
            writer.write(new)
    assert (mnt / "r.bin").read_bytes() == new
    sync(ckptfs_bin, moto_env, mnt)
    assert bucket_hashes(moto_client, bucket) == {"r.bin": sha(new)}


def test_reopening_a_closed_file_while_it_uploads_keeps_both_versions_right(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    mnt = mounter.mount(f"s3://{bucket}").mountpoint
    first = os.urandom(48 << 20)  # multipart: the upload is still running when the file is reopened
    (mnt / "v.bin").write_bytes(first)
    with open(mnt / "v.bin", "r+b") as f:
        f.write(b"second version")
    expected = b"second version" + first[len(b"second version"):]
    assert (mnt / "v.bin").read_bytes() == expected
    sync(ckptfs_bin, moto_env, mnt)
    assert bucket_hashes(moto_client, bucket) == {"v.bin": sha(expected)}


MODES = {"passthrough-if-offered": [], "daemon-served": ["--staging-size", "64M"]}


@pytest.mark.parametrize("mode", MODES)
def test_a_name_reused_while_its_unlinked_file_is_open_is_a_new_file(mounter, moto_client, ckptfs_bin, moto_env, bucket, mode):
    mnt = mounter.mount(f"s3://{bucket}", args=MODES[mode]).mountpoint
    with open(mnt / "x", "wb") as old:
        old.write(b"OLD")
        old.flush()
        os.unlink(mnt / "x")
        with open(mnt / "x", "wb") as new:  # failed with EIO: the kernel still held the old inode's node id
            new.write(b"NEWNEW")
            new.flush()
            assert os.fstat(old.fileno()).st_ino != os.fstat(new.fileno()).st_ino
            gone = os.fstat(old.fileno())
            assert (gone.st_size, gone.st_nlink) == (3, 0)
            old.write(b"MORE")
            old.flush()
            assert os.fstat(old.fileno()).st_size == 7
            os.ftruncate(old.fileno(), 1)
            assert os.fstat(old.fileno()).st_size == 1
            assert os.fstat(new.fileno()).st_size == 6
    assert (mnt / "x").read_bytes() == b"NEWNEW"
    sync(ckptfs_bin, moto_env, mnt)
    assert bucket_hashes(moto_client, bucket) == {"x": sha(b"NEWNEW")}


@pytest.mark.parametrize("mode", MODES)
def test_a_file_renamed_over_while_open_keeps_its_own_attributes(mounter, moto_client, ckptfs_bin, moto_env, bucket, mode):
    mnt = mounter.mount(f"s3://{bucket}", args=MODES[mode]).mountpoint
    (mnt / "new").write_bytes(b"N" * 3)
    with open(mnt / "target", "wb") as old:
        old.write(b"T" * 10)
        old.flush()
        os.replace(mnt / "new", mnt / "target")
        replaced = os.fstat(old.fileno())
        assert (replaced.st_size, replaced.st_nlink) == (10, 0)
        assert replaced.st_ino != os.stat(mnt / "target").st_ino
        assert os.stat(mnt / "target").st_size == 3
    assert (mnt / "target").read_bytes() == b"NNN"
    sync(ckptfs_bin, moto_env, mnt)
    assert bucket_hashes(moto_client, bucket) == {"target": sha(b"NNN")}


def read_fully(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_a_file_this_mount_wrote_and_reads_back_can_be_rewritten_while_open(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    """Its cached copy is not opened in passthrough: a writer could not open the inode then."""
    old, new = os.urandom(5 << 20), os.urandom(3 << 20)
    mnt = mounter.mount(f"s3://{bucket}").mountpoint
    (mnt / "w.bin").write_bytes(old)
    sync(ckptfs_bin, moto_env, mnt)
    assert read_fully(mnt / "w.bin") == old
    with open(mnt / "w.bin", "rb") as reader:  # every block is cached by now
        assert reader.read(1000) == old[:1000]
        with open(mnt / "w.bin", "wb") as writer:
            writer.write(new)
    assert read_fully(mnt / "w.bin") == new
    sync(ckptfs_bin, moto_env, mnt)
    assert bucket_hashes(moto_client, bucket) == {"w.bin": sha(new)}


def in_open(thread_id: int) -> bool:
    """Whether thread `thread_id` of this process is inside openat(2) right now."""
    with open(f"/proc/self/task/{thread_id}/syscall") as syscall:
        return syscall.read().split()[0] == "257"  # __NR_openat on x86-64


@pytest.mark.skipif(platform.machine() != "x86_64", reason="reads the x86-64 syscall number of openat")
def test_a_reader_opening_a_file_as_its_writer_closes_keeps_no_later_writer_out(mounter, ckptfs_bin, moto_env, bucket):
    # close(2) returns before the kernel sends RELEASE; a reader that joined the writer's backing file
    # then would keep the inode in passthrough from the version being uploaded (a new writer: EBUSY).
    mnt = mounter.mount(f"s3://{bucket}").mountpoint
    path = mnt / "log.txt"
    writer = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(writer, b"one\n")
    last = os.dup(writer)
    os.close(writer)  # a FLUSH, and no RELEASE while `last` holds the file: the RELEASE is late on demand
    opened, thread_id = [], []

    def open_reader():
        thread_id.append(threading.get_native_id())
        opened.append(os.open(path, os.O_RDONLY))
    thread = threading.Thread(target=open_reader, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not (thread_id and in_open(thread_id[0])) and thread.is_alive():
        assert time.monotonic() < deadline, "the reader's open never started"
        time.sleep(0.001)
    os.close(last)  # the writer's last close: its RELEASE follows
    thread.join(30)
    assert opened, "the reader's open did not return"
    reader = opened[0]
    try:
        sync(ckptfs_bin, moto_env, path)
        with open(path, "ab") as log:  # the uploaded version is no longer the staged one: a new version
            log.write(b"two\n")
        assert os.pread(reader, 100, 0) == b"one\ntwo\n"  # like tail -f, it reads on
    finally:
        os.close(reader)
    assert path.read_bytes() == b"one\ntwo\n"


@pytest.mark.skipif(not kernel_offers_passthrough(), reason="needs FUSE passthrough (Linux 6.9+, root)")
def test_a_newer_version_cannot_be_opened_while_a_cached_one_is_open_in_passthrough(mounter, moto_client, bucket):
    old, new = os.urandom(5 << 20), os.urandom(3 << 20)
    moto_client.put_object(Bucket=bucket, Key="p/j/c.bin", Body=old)
    first = mounter.mount(f"s3://{bucket}", args=["--read-only", "--metadata-ttl", "1"])
    assert read_fully(first.mountpoint / "p/j/c.bin") == old
    # Its blocks go to the disk cache after the read; an unmount stores every one of them.
    mnt = mounter.remount(first).mountpoint
    with open(mnt / "p/j/c.bin", "rb") as held:  # served by the kernel from the cache's copy
        moto_client.put_object(Bucket=bucket, Key="p/j/c.bin", Body=new)
        deadline = time.monotonic() + 30
        while os.stat(mnt / "p/j/c.bin").st_size != len(new):
            assert time.monotonic() < deadline, "the listing never showed the new version"
            time.sleep(0.2)
        with pytest.raises(OSError) as raised:
            open(mnt / "p/j/c.bin", "rb")
        assert raised.value.errno == errno.EBUSY
        assert held.read() == old
    assert read_fully(mnt / "p/j/c.bin") == new
