"""Tests through a proxy in front of moto that rewrites, holds, drops or counts requests, or rewrites
responses: answers a real S3 server would not give (ranged GETs answered with other bytes than asked
for, as a misbehaving server or cache on the way might; listings of objects too large to create here),
uploads and copies cut off by a crash, and requests the daemon must not make."""

from __future__ import annotations

import errno
import http.client
import http.server
import os
import re
import threading
import time
import uuid

import pytest

from support import Mounter, free_port, kill_daemon, run

BLOCK = 4 << 20


class RewritingProxy:
    """Forwards every request to moto. `request(command, path, headers)` may change a request's
    headers in place, or return False to drop the connection without an answer; `response(command,
    path, body)` may return a replacement body."""

    def __init__(self, upstream_port: int, request=None, response=None):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = dict(self.headers.items())
                if request and request(self.command, self.path, headers) is False:
                    self.close_connection = True
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                if response:
                    data = response(self.command, self.path, data)
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = forward

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def rewrite_range(mode: str):
    """Object GETs lose their Range header (`drop`: the answer is a 200 with the whole object), or
    ask from the start offset to the end of the object (`open`: a 206 with more bytes than asked)."""
    def rewrite(command, path, headers):
        if command == "GET" and "Range" in headers:
            if mode == "drop":
                del headers["Range"]
            else:
                headers["Range"] = headers["Range"].split("-")[0] + "-"
    return rewrite


@pytest.fixture
def bucket(moto_client):
    name = f"proxied-{uuid.uuid4().hex[:8]}"
    moto_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def proxied(ckptfs_bin, moto, moto_env, tmp_path):
    """proxied(request=..., response=...): a Mounter whose endpoint is a new rewriting proxy."""
    proxies, mounters = [], []

    def make(**rewrites) -> Mounter:
        proxies.append(RewritingProxy(int(moto.endpoint.rsplit(":", 1)[1]), **rewrites))
        mounters.append(Mounter(ckptfs_bin, tmp_path, proxies[-1].endpoint, moto_env))
        return mounters[-1]
    try:
        yield make
    finally:
        for mounter in mounters:
            mounter.close()
        for proxy in proxies:
            proxy.stop()


@pytest.mark.parametrize("mode", ["drop", "open"])
def test_a_read_never_returns_bytes_from_another_offset(proxied, moto_client, bucket, mode):
    data = os.urandom(3 * BLOCK + 12345)
    moto_client.put_object(Bucket=bucket, Key="p/j/checkpoint-1/model.bin", Body=data)
    mounter = proxied(request=rewrite_range(mode))
    path = mounter.mount(f"s3://{bucket}").mountpoint / "p/j/checkpoint-1/model.bin"
    offset = BLOCK + 100  # not the start of the object: the proxy's answer starts elsewhere
    fd = os.open(path, os.O_RDONLY)
    try:
        if mode == "drop":
            # A 200 with the whole object is not the range asked for: an error, never its first bytes.
            with pytest.raises(OSError):
                os.pread(fd, 4096, offset)
            with pytest.raises(OSError):
                os.pread(fd, 4096, offset)  # nothing wrong was cached either
        else:
            # The right bytes come first; the surplus is cut off and the daemon stays up.
            assert os.pread(fd, 4096, offset) == data[offset:offset + 4096]
            assert os.pread(fd, len(data), 0) == data
    finally:
        os.close(fd)
    assert os.path.ismount(path.parents[3])


def test_renaming_an_object_over_the_5_gib_copy_limit_fails_with_exdev_and_moves_nothing(
        proxied, moto_client, bucket):
    for key in ("p/j/tmp-checkpoint-1/optimizer.pt", "p/j/tmp-checkpoint-1/config.json", "p/j/big.pt"):
        moto_client.put_object(Bucket=bucket, Key=key, Body=b"x" * 100)
    huge = str(6 << 30)

    def sizes(command, path, body):
        # Listings say the optimizer state and big.pt are 6 GiB (too much to create in moto here).
        if command == "GET" and b"<ListBucketResult" in body:
            body = re.sub(rb"(<Key>[^<]*(?:optimizer\.pt|big\.pt)</Key>(?:(?!</Contents>).)*?<Size>)\d+",
                          rb"\g<1>" + huge.encode(), body, flags=re.S)
        return body
    root = proxied(response=sizes).mount(f"s3://{bucket}", args=["--allow-delete"]).mountpoint
    assert os.stat(root / "p/j/big.pt").st_size == 6 << 30
    with pytest.raises(OSError) as file_error:
        os.rename(root / "p/j/big.pt", root / "p/j/moved.pt")
    assert file_error.value.errno == errno.EXDEV
    with pytest.raises(OSError) as dir_error:
        os.rename(root / "p/j/tmp-checkpoint-1", root / "p/j/checkpoint-1")
    assert dir_error.value.errno == errno.EXDEV
    assert sorted(os.listdir(root / "p/j")) == ["big.pt", "tmp-checkpoint-1"]
    assert sorted(os.listdir(root / "p/j/tmp-checkpoint-1")) == ["config.json", "optimizer.pt"]
    keys = {o["Key"] for o in moto_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {"p/j/tmp-checkpoint-1/optimizer.pt", "p/j/tmp-checkpoint-1/config.json", "p/j/big.pt"}


def hold_uploads_of(key: str):
    """A request rewrite that holds every PUT of `key` until `released` is set; `started` is set once
    one arrives. Returns (rewrite, started, released)."""
    started, released = threading.Event(), threading.Event()

    def rewrite(command, path, headers):
        if command == "PUT" and path.split("?")[0].endswith("/" + key):
            started.set()
            released.wait(60)
    return rewrite, started, released


@pytest.mark.parametrize("args", [[], ["--staging-size", "1G"]], ids=["passthrough", "daemon"])
def test_truncating_a_file_by_path_while_it_uploads_and_a_reader_holds_it(
        proxied, moto_client, ckptfs_bin, moto_env, bucket, args):
    rewrite, started, released = hold_uploads_of("p/j/log.bin")
    mounter = proxied(request=rewrite)
    root = mounter.mount(f"s3://{bucket}", args=args).mountpoint
    path = root / "p/j/log.bin"
    path.parent.mkdir(parents=True)
    writer = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    reader = None
    try:
        os.write(writer, b"A" * (1 << 20))
        reader = os.open(path, os.O_RDONLY)  # shares the writer's staged file (its backing file in passthrough)
        os.close(writer)
        writer = None
        assert started.wait(30), "the upload never started"
        try:
            os.truncate(path, 10)
        except OSError as error:
            # Passthrough serves the inode from the version being uploaded: no new version while it is
            # open, as for an open for writing.
            assert args == [] and error.errno == errno.EBUSY
            assert os.stat(path).st_size == 1 << 20
            assert os.pread(reader, 8, 100) == b"A" * 8
            os.close(reader)
            reader = None
            os.truncate(path, 10)
        assert os.stat(path).st_size == 10
        if reader is not None:
            assert os.fstat(reader).st_size == 10
            assert os.pread(reader, 8, 100) == b""
        assert path.read_bytes() == b"A" * 10  # a new open works, and reads the truncated file
    finally:
        released.set()
        for fd in (writer, reader):
            if fd is not None:
                os.close(fd)
    result = run([ckptfs_bin, "sync", path], env=mounter.env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert moto_client.get_object(Bucket=bucket, Key="p/j/log.bin")["Body"].read() == b"A" * 10


def test_a_multipart_upload_cut_off_by_a_crash_is_aborted_by_the_next_mount(proxied, moto_client, ckptfs_bin, bucket):
    held, released = threading.Event(), threading.Event()

    def hold_second_part(command, path, headers):
        # Part 2 of the first upload never reaches moto: the daemon is killed while it waits for it.
        if command == "PUT" and "partNumber=2" in path and not held.is_set():
            held.set()
            released.wait(60)
            return False
    mounter = proxied(request=hold_second_part)
    first = mounter.mount(f"s3://{bucket}")
    data = os.urandom(40 << 20)  # two parts of 32 MiB and 8 MiB, sent in parallel
    try:
        (first.mountpoint / "big.bin").write_bytes(data)
        assert held.wait(60), "the second part was never sent"
        kill_daemon(first.mountpoint)
    finally:
        released.set()
    left = moto_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in left] == ["big.bin"]  # what the crash left in the bucket
    second = mounter.mount(first.remote, mountpoint=first.mountpoint, cache_dir=first.cache_dir)
    result = run([ckptfs_bin, "sync", second.mountpoint / "big.bin"], env=mounter.env, timeout=120)
    assert result.returncode == 0, result.stderr
    unmounted = mounter.unmount(second.mountpoint)  # waits for the queue, aborts included
    assert unmounted.returncode == 0, unmounted.stderr
    assert moto_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert moto_client.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == data


def test_a_checkpoint_renamed_just_before_a_crash_is_there_at_once_after_it(proxied, moto_client, ckptfs_bin, bucket):
    files = {"model.bin": os.urandom(3 * BLOCK + 5), "config.json": b'{"step": 1}'}
    for name, data in files.items():
        moto_client.put_object(Bucket=bucket, Key=f"p/j/tmp-checkpoint-1/{name}", Body=data)
    copying, released = threading.Event(), threading.Event()

    def hold_copies(command, path, headers):
        # No CopyObject reaches moto until `released`: the renames stay queued through the crash.
        if command == "PUT" and any(k.lower() == "x-amz-copy-source" for k in headers) and not released.is_set():
            copying.set()
            released.wait(60)
            return False
    mounter = proxied(request=hold_copies)
    try:
        first = mounter.mount(f"s3://{bucket}", args=["--allow-delete"])
        os.rename(first.mountpoint / "p/j/tmp-checkpoint-1", first.mountpoint / "p/j/checkpoint-1")
        assert copying.wait(30), "no copy was started"
        kill_daemon(first.mountpoint)
        copying.clear()
        second = mounter.mount(first.remote, mountpoint=first.mountpoint, cache_dir=first.cache_dir, args=first.args)
        assert copying.wait(30), "the next mount did not resume the copies"
        root = second.mountpoint / "p/j"
        # Its copies have not run, and the checkpoint is already where the rename put it, read from its source.
        assert sorted(os.listdir(root)) == ["checkpoint-1", "latest"]
        assert os.readlink(root / "latest") == "checkpoint-1"  # what a resuming job looks for
        assert sorted(os.listdir(root / "checkpoint-1")) == sorted(files)
        for name, data in files.items():
            assert os.stat(root / "checkpoint-1" / name).st_size == len(data)
            assert (root / "checkpoint-1" / name).read_bytes() == data
    finally:
        released.set()
    result = run([ckptfs_bin, "sync", root], env=mounter.env, timeout=120)
    assert result.returncode == 0, result.stderr
    keys = sorted(o["Key"] for o in moto_client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == sorted(f"p/j/checkpoint-1/{name}" for name in files)
    assert (root / "checkpoint-1/model.bin").read_bytes() == files["model.bin"]


def test_reading_past_the_end_of_a_file_this_mount_wrote_lists_nothing(proxied, ckptfs_bin, bucket):
    lists = []

    def count_lists(command, path, headers):
        if command == "GET" and "list-type=2" in path:
            lists.append(path)
    mounter = proxied(request=count_lists)
    first = mounter.mount(f"s3://{bucket}", args=["--metadata-ttl", "1"])
    (first.mountpoint / "p/j").mkdir(parents=True)
    (first.mountpoint / "p/j/log.txt").write_bytes(b"hello")
    result = run([ckptfs_bin, "sync", first.mountpoint], env=mounter.env, timeout=120)
    assert result.returncode == 0, result.stderr
    # The next daemon knows from the journal that this mount wrote the file, and has no change of it.
    root = mounter.remount(first).mountpoint
    fd = os.open(root / "p/j/log.txt", os.O_RDONLY)  # the uploaded object, read by the daemon
    try:
        assert os.pread(fd, 5, 0) == b"hello"
        time.sleep(1.5)  # past --metadata-ttl: the directory's listing has expired
        before = len(lists)
        # A read reaching past the end checks for a newer version this mount wrote: the overlay knows that,
        # the store is not asked.
        assert os.pread(fd, 4096, 0) == b"hello"
        assert os.pread(fd, 4096, 2) == b"llo"
        assert lists[before:] == []
    finally:
        os.close(fd)


def test_a_reader_of_a_log_goes_on_to_the_version_uploaded_while_it_fetched_the_one_before(
        proxied, ckptfs_bin, bucket):
    armed, held, released = threading.Event(), threading.Event(), threading.Event()

    def hold_one_get(command, path, headers):
        # The first GET of the object once armed waits until `released`: the next version is uploaded
        # while the reader fetches this one.
        if command == "GET" and path.split("?")[0].endswith("/p/j/log.txt") and armed.is_set() and not held.is_set():
            held.set()
            released.wait(60)
    mounter = proxied(request=hold_one_get)
    root = mounter.mount(f"s3://{bucket}").mountpoint
    path = root / "p/j/log.txt"
    path.parent.mkdir(parents=True)

    def append(line: bytes) -> None:
        with open(path, "ab") as log:
            log.write(line)
        result = run([ckptfs_bin, "sync", path], env=mounter.env, timeout=120)
        assert result.returncode == 0, result.stderr

    append(b"one\n")
    reader = os.open(path, os.O_RDONLY)  # like tail -f: reads on into the versions appended since
    try:
        append(b"two\n")
        armed.set()
        answer = []

        def read():
            try:
                answer.append(os.pread(reader, 4096, 0))
            except OSError as error:
                answer.append(errno.errorcode[error.errno])
        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        try:
            assert held.wait(30), "the read fetched nothing"
            append(b"three\n")  # replaces, in the bucket, the version being fetched
        finally:
            released.set()
        thread.join(60)
        assert answer == [b"one\ntwo\nthree\n"]
    finally:
        os.close(reader)
