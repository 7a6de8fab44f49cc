"""Writers of files that are already in the bucket: several at once, failed opens, truncation, and
what the mount reports as free space."""

from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import subprocess
import threading
import uuid

import pytest

from support import run


@pytest.fixture
def bucket(moto_client):
    name = f"wr-{uuid.uuid4().hex[:8]}"
    moto_client.create_bucket(Bucket=name)
    return name


def sync(ckptfs_bin, env, path) -> None:
    result = run([ckptfs_bin, "sync", path], env=env, timeout=120)
    assert result.returncode == 0, result.stderr


def body(client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


@pytest.mark.parametrize("args", [[], ["--staging-size", "1G"]], ids=["passthrough", "daemon"])
def test_concurrent_appenders_to_an_uploaded_file_all_land(mounter, moto_client, ckptfs_bin, moto_env, bucket, args):
    root = mounter.mount(f"s3://{bucket}", args=args).mountpoint
    path = root / "p/j/log.txt"
    path.parent.mkdir(parents=True)
    for attempt in range(3):
        path.write_text("base\n")
        sync(ckptfs_bin, moto_env, path)  # now an uploaded object: every writer starts by copying it up
        lines = [f"line{n}\n" for n in range(8)]
        subprocess.run(["xargs", "-P8", "-I{}", "sh", "-c", f"printf '%s\\n' {{}} >> '{path}'"],
                       input="".join(line[:-1] + "\n" for line in lines), text=True, check=True, timeout=60)
        content = path.read_text()
        assert "\0" not in content
        assert sorted(content.splitlines()) == sorted(["base"] + [line.strip() for line in lines]), f"attempt {attempt}"
        sync(ckptfs_bin, moto_env, path)
        assert body(moto_client, bucket, "p/j/log.txt").decode() == content


@pytest.mark.parametrize("args", [[], ["--staging-size", "1G"]], ids=["passthrough", "daemon"])
def test_appends_to_a_log_being_read_all_land_and_its_readers_never_fail(mounter, ckptfs_bin, moto_env, bucket, args):
    # Every append is a new version: staged, uploaded, then replaced by the next one while readers open it.
    root = mounter.mount(f"s3://{bucket}", args=args).mountpoint
    path = root / "p/j/log.txt"
    path.parent.mkdir(parents=True)
    path.write_text("start\n")
    held = os.open(path, os.O_RDONLY)
    stop = threading.Event()
    failures, seen = [], []

    def read_all(fd: int) -> bytes:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)

    def reader():
        while not stop.is_set():
            try:
                fd = os.open(path, os.O_RDONLY)
                try:
                    seen.append(read_all(fd))
                finally:
                    os.close(fd)
            except OSError as error:
                failures.append(errno.errorcode[error.errno])

    thread = threading.Thread(target=reader)
    thread.start()
    expected = b"start\n"
    try:
        for n in range(200):
            with open(path, "a") as log:
                log.write(f"{n}\n")
            expected += f"{n}\n".encode()
            # A reader of an older version must not make the kernel take that one's size for the file's,
            # where the next append would go (over this line).
            got = path.read_bytes()
            assert got == expected, (n, len(got), len(expected), os.stat(path).st_size)
            if n % 50 == 0:
                sync(ckptfs_bin, moto_env, path)
        final = expected
        assert read_all(held) == final  # the first reader, like tail -f, reads on into what was appended
    finally:
        stop.set()
        thread.join(60)
        os.close(held)  # else the mount stays busy
    assert not thread.is_alive()
    assert failures == []
    assert seen and all(final.startswith(content) for content in seen)
    assert path.read_bytes() == final


@pytest.mark.parametrize("reader", [False, True], ids=["alone", "with-reader"])
@pytest.mark.parametrize("args", [[], ["--staging-size", "1G"]], ids=["passthrough", "daemon"])
def test_a_shared_mmap_of_a_file_opened_for_appending_writes_in_place(mounter, ckptfs_bin, moto_env, bucket, args, reader):
    # The kernel writes a dirty page back at the page's offset; O_APPEND applies to write(2) only. A reader
    # opened first makes the writer daemon-served in passthrough mode too.
    root = mounter.mount(f"s3://{bucket}", args=args).mountpoint
    path = root / "p/j/log.bin"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"A" * 8192)
    held = os.open(path, os.O_RDONLY) if reader else None
    try:
        with open(path, "a+b") as log:
            with mmap.mmap(log.fileno(), 8192) as mapped:
                mapped[0:1] = b"X"
                mapped.flush()
    finally:
        if held is not None:
            os.close(held)
    assert path.read_bytes() == b"X" + b"A" * 8191
    sync(ckptfs_bin, moto_env, path)
    assert path.read_bytes() == b"X" + b"A" * 8191


@pytest.mark.parametrize("args", [[], ["--staging-size", "1G"]], ids=["passthrough", "daemon"])
def test_one_direct_write_to_a_file_opened_for_appending_lands_whole_and_in_order(mounter, bucket, args):
    # The kernel splits one O_DIRECT write into requests sent at once, each with its own offset.
    root = mounter.mount(f"s3://{bucket}", args=args).mountpoint
    path = root / "p/j/direct.bin"
    path.parent.mkdir(parents=True)
    start = b"s" * 4096  # O_DIRECT offsets stay aligned, as the staged file's file system needs in passthrough
    path.write_bytes(start)
    pieces = 16
    data = mmap.mmap(-1, pieces << 20)  # page-aligned, as O_DIRECT needs
    for n in range(pieces):
        data[n << 20:(n + 1) << 20] = bytes([65 + n]) * (1 << 20)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_DIRECT)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)
    assert path.read_bytes() == start + bytes(data)


@pytest.mark.parametrize("args", [[], ["--staging-size", "1G"]], ids=["passthrough", "daemon"])
def test_a_descriptor_of_an_older_version_leaves_the_current_ones_their_bytes(
        mounter, moto_client, ckptfs_bin, moto_env, bucket, args):
    # The kernel's page cache is the inode's: what a descriptor still reading the version it opened gets
    # must not end up in it, where descriptors of the current version (and a shared mmap's write-back) find it.
    root = mounter.mount(f"s3://{bucket}", args=args).mountpoint
    path = root / "p/j/state.bin"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"A" * 8192)
    old = os.open(path, os.O_RDONLY)
    try:
        sync(ckptfs_bin, moto_env, path)
        try:
            rewrite = open(path, "r+b")  # the same file rewritten in place: a new version
        except OSError as error:
            # With passthrough the kernel may serve the old descriptor from its version's staged file (when
            # it opened before the writer's release arrived): then no new version while it is open.
            assert args == [] and error.errno == errno.EBUSY
            return
        with rewrite:
            rewrite.truncate(0)
            rewrite.write(b"B" * 8192)
        current = os.open(path, os.O_RDWR)
        try:
            assert os.pread(old, 4096, 4096) == b"B" * 4096  # as on a local file system: the file's bytes now
            assert os.pread(current, 16, 4096) == b"B" * 16
            with mmap.mmap(current, 8192) as mapped:
                mapped[4096:4097] = b"X"
                mapped.flush()
        finally:
            os.close(current)
    finally:
        os.close(old)
    expected = b"B" * 4096 + b"X" + b"B" * 4095
    assert path.read_bytes() == expected
    sync(ckptfs_bin, moto_env, path)
    assert body(moto_client, bucket, "p/j/state.bin") == expected


@pytest.mark.parametrize("how", ["unlink", "replace"])
def test_a_descriptor_of_an_uploaded_file_removed_through_the_mount_reads_what_was_cached(
        mounter, ckptfs_bin, moto_env, bucket, how):
    # The bytes are in the bucket only: once the object is gone, the blocks not cached cannot be read.
    root = mounter.mount(f"s3://{bucket}").mountpoint
    path = root / "p/j/model.bin"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"A" * (16 << 20))
    sync(ckptfs_bin, moto_env, path)
    reader = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(reader, 4, 0) == b"AAAA"
        if how == "unlink":
            path.unlink()
        else:
            (root / "p/j/tmp").write_bytes(b"B" * 100)
            os.replace(root / "p/j/tmp", path)
        sync(ckptfs_bin, moto_env, root / "p/j")
        assert os.pread(reader, 4, 0) == b"AAAA"  # its block was cached
        with pytest.raises(OSError) as failure:
            os.pread(reader, 4, 12 << 20)
        assert failure.value.errno == errno.ESTALE
    finally:
        os.close(reader)


def test_a_failed_copy_up_changes_nothing(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    data = os.urandom(3 << 20)
    moto_client.put_object(Bucket=bucket, Key="p/j/model.bin", Body=data)
    root = mounter.mount(f"s3://{bucket}", args=["--staging-size", "1M", "--allow-overwrite"]).mountpoint
    path = root / "p/j/model.bin"
    for _ in range(2):
        with pytest.raises(OSError) as failure:
            with open(path, "ab") as f:
                f.write(b"appended")
        assert failure.value.errno == errno.ENOSPC
        assert os.stat(path).st_size == len(data)
        assert path.read_bytes() == data
    status = json.loads(run([ckptfs_bin, "status", root, "--json"], env=moto_env).stdout)
    assert status["staged_files"] == 0, status


def test_rewriting_a_file_a_reader_still_holds_after_its_upload_never_empties_it(
        mounter, moto_client, ckptfs_bin, moto_env, bucket):
    root = mounter.mount(f"s3://{bucket}").mountpoint
    path = root / "p/j/latest.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"v1v1")
    reader = os.open(path, os.O_RDONLY)
    try:
        sync(ckptfs_bin, moto_env, path)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        except OSError as error:
            # In passthrough the kernel serves the inode from the old version while it is open.
            assert error.errno == errno.EBUSY
            expected = b"v1v1"
        else:
            os.write(fd, b"v2v2")
            os.close(fd)
            expected = b"v2v2"
        assert os.pread(reader, 16, 0) in (b"v1v1", expected)
    finally:
        os.close(reader)
    sync(ckptfs_bin, moto_env, path)
    assert path.read_bytes() == expected
    assert body(moto_client, bucket, "p/j/latest.pt") == expected


def test_truncating_an_uploaded_file_by_path_shows_at_once(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    root = mounter.mount(f"s3://{bucket}").mountpoint
    path = root / "p/j/f.txt"
    path.parent.mkdir(parents=True)
    path.write_text("0123456789\n")
    sync(ckptfs_bin, moto_env, path)
    os.truncate(path, 3)
    assert os.stat(path).st_size == 3
    assert path.read_text() == "012"
    with open(path, "a") as f:
        f.write("XY")
    assert path.read_text() == "012XY"
    sync(ckptfs_bin, moto_env, path)
    assert body(moto_client, bucket, "p/j/f.txt") == b"012XY"


def test_free_space_is_the_room_for_staged_files(mounter, bucket):
    writable = mounter.mount(f"s3://{bucket}").mountpoint
    assert shutil.disk_usage(writable).free > 0
    limited = mounter.mount(f"s3://{bucket}", args=["--staging-size", "64M"]).mountpoint
    usage = shutil.disk_usage(limited)
    assert 0 < usage.free <= usage.total <= 64 << 20
    read_only = mounter.mount(f"s3://{bucket}", args=["--read-only"]).mountpoint
    assert shutil.disk_usage(read_only).free == 0


@pytest.mark.parametrize("args", [[], ["--staging-size", "1G"]], ids=["passthrough", "daemon"])
def test_truncating_an_unlinked_open_file_leaves_the_new_file_of_its_name_alone(mounter, ckptfs_bin, moto_env, bucket, args):
    root = mounter.mount(f"s3://{bucket}", args=args).mountpoint
    path = root / "p/j/x.bin"
    path.parent.mkdir(parents=True)
    old = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        os.write(old, b"OLD-CONTENT")
        os.fsync(old)
        os.unlink(path)
        path.write_bytes(b"NEW")
        os.ftruncate(old, 3)
        assert os.pread(old, 16, 0) == b"OLD"
        assert os.fstat(old).st_size == 3
    finally:
        os.close(old)
    assert path.read_bytes() == b"NEW"
    sync(ckptfs_bin, moto_env, path)
    assert path.read_bytes() == b"NEW"


@pytest.mark.parametrize("args", [[], ["--staging-size", "1G"]], ids=["passthrough", "daemon"])
def test_a_modification_time_set_before_close_is_kept(mounter, ckptfs_bin, moto_env, bucket, args, tmp_path):
    original = tmp_path / "original.bin"
    original.write_bytes(os.urandom(100_000))
    os.utime(original, (1_600_000_000, 1_600_000_000))
    root = mounter.mount(f"s3://{bucket}", args=args).mountpoint
    (root / "p/j").mkdir(parents=True)
    copied = root / "p/j/copied.bin"
    subprocess.run(["cp", "-p", original, copied], check=True, timeout=60)  # writes, sets the times, closes
    assert os.stat(copied).st_mtime == 1_600_000_000
    sync(ckptfs_bin, moto_env, copied)
    assert os.stat(copied).st_mtime == 1_600_000_000


@pytest.mark.parametrize("view", ["read", "page-cache", "mmap"])
def test_a_descriptor_opened_before_this_mount_rewrote_its_file_reads_the_new_bytes(
        mounter, moto_client, ckptfs_bin, moto_env, bucket, view):
    old = b"A" * (1 << 20)
    moto_client.put_object(Bucket=bucket, Key="f.bin", Body=old)
    args = ["--allow-overwrite"] + (["--page-cache"] if view == "page-cache" else [])
    path = mounter.mount(f"s3://{bucket}", args=args).mountpoint / "f.bin"
    reader = os.open(path, os.O_RDONLY)
    mapping = mmap.mmap(reader, 0, prot=mmap.PROT_READ) if view == "mmap" else None
    look = (lambda: mapping[:4]) if mapping else (lambda: os.pread(reader, 4, 0))
    try:
        assert look() == b"AAAA"
        writer = os.open(path, os.O_WRONLY)  # write-only: its writes bypass the page cache
        try:
            assert look() == b"AAAA"  # the writer's copy (in the page cache of a caching view)
            os.pwrite(writer, b"BBBB", 0)
        finally:
            os.close(writer)
        assert look() == b"BBBB"  # was the version opened, which a caching view put in the inode's pages
        assert path.read_bytes()[:8] == b"BBBBAAAA"
        assert look() == b"BBBB"
    finally:
        if mapping:
            mapping.close()
        os.close(reader)
    sync(ckptfs_bin, moto_env, path)
    assert body(moto_client, bucket, "f.bin") == b"BBBB" + old[4:]
