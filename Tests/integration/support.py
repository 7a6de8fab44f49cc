"""Plain helpers for the ckptfs integration tests: servers, the test data set, mounting.

Fixtures that wire these together live in conftest.py. Everything that starts a process here
gives it a timeout, and everything that mounts records the mount point so that it can be
unmounted whatever happens to the test.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import numpy as np
from botocore.config import Config
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parents[2]
S3ORIGIN = REPO.parent / "shared" / "s3origin"
CMD_TIMEOUT = 60  # s, default bound for any subprocess
FAIL_TIMEOUT = 20  # s, a rejected mount must have given up by then
REGION = "us-east-1"
MOTO_ACCESS_KEY = "ckptfs-itest"
MOTO_SECRET_KEY = "moto-Secret-9fQ2xLw7Zt"  # distinctive, so leak checks can grep for it


# ----------------------------------------------------------------------------- processes


def run(args, *, timeout: float = CMD_TIMEOUT, binary: bool = False, **kw) -> subprocess.CompletedProcess:
    """subprocess.run with output captured and a mandatory timeout (text is UTF-8 unless binary)."""
    text = {} if binary else {"encoding": "utf-8", "errors": "surrogateescape"}
    return subprocess.run([str(a) for a in args], capture_output=True, timeout=timeout, **text, **kw)


def free_port(consecutive: int = 1) -> int:
    """A port P such that P..P+consecutive-1 are free on 127.0.0.1 right now."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + consecutive > 65530:
            continue
        try:
            for p in range(port + 1, port + consecutive):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:port (or the process dies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout} s")


def pids_with_argument(arg: str) -> list[int]:
    """PIDs (other than ours) whose argv contains `arg` as one whole argument."""
    pids = []
    needle = os.fsencode(arg)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in argv:
            pids.append(int(entry.name))
    return pids


def pids_whose_argv_contains(text: str) -> list[int]:
    """PIDs whose argv contains `text` anywhere (used to look for leaked secrets)."""
    needle = os.fsencode(text)
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def wait_until_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait up to `timeout` s for the processes to exit; return those still alive."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if Path(f"/proc/{p}").exists() and not _is_zombie(p)]
    return alive


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


# ----------------------------------------------------------------------------- mounts


def _unescape_mount_field(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def mount_fstypes(mountpoint: Path) -> list[str]:
    """File-system types of every entry in /proc/self/mountinfo mounted exactly at `mountpoint`."""
    target = os.path.abspath(mountpoint)
    types = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, after = line.split(" - ", 1)
        if _unescape_mount_field(before.split()[4]) == target:
            types.append(after.split()[0])
    return types


def is_mounted(mountpoint: Path) -> bool:
    """True when anything is mounted at `mountpoint`."""
    return bool(mount_fstypes(mountpoint))


LIVE_MOUNTPOINTS: set[Path] = set()  # every mount point a Mounter may have mounted and not yet cleaned


def force_unmount(mountpoint: Path, *, kill_daemon: bool) -> list[int]:
    """Detach `mountpoint` (lazy) and, if asked, SIGKILL its daemon, which aborts hung FUSE requests.

    Returns the PIDs of daemons that had to be killed.
    """
    killed = []
    if kill_daemon:
        for pid in pids_with_argument(str(mountpoint)):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    if is_mounted(mountpoint):
        run(["fusermount3", "-uz", mountpoint], timeout=30)
    return killed


def kill_daemon(mountpoint: Path) -> None:
    """Crash the daemon of `mountpoint` (SIGKILL, as a power cut would stop it), wait until it is gone,
    and detach what is left of the mount."""
    pids = pids_with_argument(str(mountpoint))
    assert pids, "daemon not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert not wait_until_gone(pids, timeout=10)
    force_unmount(mountpoint, kill_daemon=False)


def abort_all_mounts() -> None:
    """Watchdog action: unblock a test stuck inside a FUSE call by killing every daemon we started."""
    for mountpoint in list(LIVE_MOUNTPOINTS):
        force_unmount(mountpoint, kill_daemon=True)


@dataclass
class MountAttempt:
    """Outcome of one `ckptfs mount` invocation."""

    remote: str
    args: tuple
    mountpoint: Path
    cache_dir: Path
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Mounter:
    """Runs `ckptfs mount`/`unmount` against one endpoint and cleans every mount point it used.

    Output of `mount` goes to files rather than pipes, so a daemon that keeps the caller's
    stdout/stderr open cannot stall the tests (test_lifecycle checks that case on purpose).
    """

    binary: Path
    workdir: Path
    endpoint: str | None
    env: dict[str, str]
    used: list[Path] = field(default_factory=list)
    _count: int = 0

    def fresh_dir(self, name: str) -> Path:
        """A new empty directory under the work dir."""
        self._count += 1
        path = self.workdir / f"{name}-{self._count}"
        path.mkdir(parents=True)
        return path

    def command(self, remote: str, mountpoint: Path | None = None, cache_dir: Path | None = None,
                args=()) -> tuple[list[str], Path, Path]:
        """argv of `ckptfs mount` (fresh mount point and cache dir unless given), with the mount
        point registered for cleanup before anything runs. Returns (argv, mountpoint, cache_dir)."""
        mountpoint = mountpoint or self.fresh_dir("mnt")
        cache_dir = cache_dir or self.fresh_dir("cache")
        argv = [self.binary, "mount", remote, mountpoint, "--cache-dir", cache_dir]
        if self.endpoint and remote.startswith("s3://"):
            argv += ["--endpoint", self.endpoint]
        self.used.append(mountpoint)
        LIVE_MOUNTPOINTS.add(mountpoint)
        return [str(a) for a in argv + list(args)], mountpoint, cache_dir

    def attempt(self, remote: str, *, mountpoint: Path | None = None, cache_dir: Path | None = None,
                args=(), env: dict[str, str] | None = None, timeout: float = CMD_TIMEOUT) -> MountAttempt:
        """Run `ckptfs mount` once and report what happened, whatever it was."""
        argv, mountpoint, cache_dir = self.command(remote, mountpoint, cache_dir, args)
        outputs = self.fresh_dir("out")
        out, err = outputs / "stdout", outputs / "stderr"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            try:
                rc = subprocess.run(argv, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                                    env=env or self.env, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                rc = None
        read = lambda p: p.read_bytes().decode("utf-8", "surrogateescape")  # noqa: E731
        if rc is None:
            raise AssertionError(f"`ckptfs mount` still running after {timeout} s; stderr: {read(err)!r}")
        return MountAttempt(remote, tuple(args), mountpoint, cache_dir, rc, read(out), read(err))

    def mount(self, remote: str, **kw) -> MountAttempt:
        """Mount and insist it worked: exit 0 and the mount is live when the command returns."""
        attempt = self.attempt(remote, **kw)
        assert attempt.returncode == 0, (
            f"ckptfs mount {remote} failed with {attempt.returncode}: {attempt.stderr.strip()!r}")
        assert is_mounted(attempt.mountpoint), "ckptfs mount exited 0 but nothing is mounted yet"
        return attempt

    def unmount(self, mountpoint: Path) -> subprocess.CompletedProcess:
        """Run `ckptfs unmount` and return its result (callers assert on it)."""
        return run([self.binary, "unmount", mountpoint], env=self.env)

    def remount(self, previous: MountAttempt) -> MountAttempt:
        """Unmount `previous` and mount the same remote again on the same dirs (same cache)."""
        result = self.unmount(previous.mountpoint)
        assert result.returncode == 0, f"ckptfs unmount failed: {result.stderr.strip()!r}"
        assert not is_mounted(previous.mountpoint), "still mounted after ckptfs unmount"
        return self.mount(previous.remote, mountpoint=previous.mountpoint, cache_dir=previous.cache_dir,
                          args=previous.args)

    def close(self) -> None:
        """Unmount everything this Mounter touched: `ckptfs unmount`, then `fusermount3 -uz`,
        then give daemons 10 s to exit before killing them (with a warning: that is a bug)."""
        for mountpoint in dict.fromkeys(self.used):
            if is_mounted(mountpoint):
                try:
                    self.unmount(mountpoint)
                except subprocess.TimeoutExpired:
                    pass
            force_unmount(mountpoint, kill_daemon=False)
            stuck = wait_until_gone(pids_with_argument(str(mountpoint)), timeout=10)
            if stuck:
                force_unmount(mountpoint, kill_daemon=True)
                warnings.warn(f"ckptfs daemon(s) {stuck} for {mountpoint} still alive 10 s after unmount; killed")
            LIVE_MOUNTPOINTS.discard(mountpoint)
        self.used.clear()


def one_line_error(attempt: MountAttempt) -> str:
    """Assert the failure contract of `ckptfs mount` (exit != 0, exactly one `ckptfs: error:` line on
    stderr) and return that line."""
    lines = attempt.stderr.strip().splitlines()
    assert attempt.returncode != 0, f"exit 0; stderr {attempt.stderr!r}"
    assert len(lines) == 1 and lines[0].startswith("ckptfs: error: "), f"stderr: {attempt.stderr!r}"
    return lines[0]


def expect_mount_error(mounter: Mounter, remote: str, keywords: tuple[str, ...], **kw) -> MountAttempt:
    """Run a mount that must be rejected within FAIL_TIMEOUT; check the one-line error names one of
    `keywords` (case-insensitive) and that nothing is left mounted or running."""
    attempt = mounter.attempt(remote, timeout=FAIL_TIMEOUT, **kw)
    line = one_line_error(attempt)
    assert any(k in line.lower() for k in keywords), f"{line!r} names none of {keywords}"
    assert not is_mounted(attempt.mountpoint)
    assert pids_with_argument(str(attempt.mountpoint)) == [], "a ckptfs process is still running"
    return attempt


def ckptfs_env(access_key: str, secret_key: str) -> dict[str, str]:
    """The caller's environment with every AWS_* variable replaced by the given credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key, AWS_REGION=REGION)
    return env


# ----------------------------------------------------------------------------- S3 servers


def s3_client(endpoint: str, access_key: str, secret_key: str):
    """A boto3 S3 client for a local endpoint (path-style, us-east-1)."""
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name=REGION,
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}))


ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<target>.+) HTTP/\d(?:\.\d)?" (?P<status>\d{3}) ')
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Request:
    """One line of the server's access log."""

    method: str
    target: str  # path and query, as logged
    status: int

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def is_listing(self) -> bool:
        """ListObjectsV2: GET on the bucket path with list-type=2."""
        return self.method == "GET" and "list-type=2" in self.query.split("&")

    def is_object_get(self) -> bool:
        """GetObject (whole or ranged): GET on /bucket/key..."""
        return self.method == "GET" and "/" in self.path.strip("/") and not self.is_listing()


class MotoServer:
    """`python3 -m moto.server` in a subprocess; a thread drains and parses its access log.

    Requests are counted on the server side. `mark()` and `requests_since()` first send a
    uniquely named barrier request and wait until its log line has been read, so every
    request answered before the call is included (werkzeug logs before it sends the body).
    """

    def __init__(self, port: int):
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self._requests: list[Request] = []
        self._seen = threading.Condition()
        self._tokens: set[str] = set()
        self._tail: list[str] = []
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            encoding="utf-8", errors="replace", env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._drainer = threading.Thread(target=self._drain, name="moto-log", daemon=True)
        self._drainer.start()
        try:
            wait_for_port(port, self._proc)
        except Exception:
            self.stop()
            raise

    def _drain(self) -> None:
        for line in self._proc.stderr:
            line = ANSI.sub("", line)
            match = ACCESS_LINE.search(line)
            with self._seen:
                self._tail = (self._tail + [line])[-50:]
                if match:
                    self._requests.append(Request(match["method"], match["target"], int(match["status"])))
                    if "ckptfs-barrier-" in match["target"]:
                        self._tokens.add(match["target"].rsplit("-", 1)[1])
                self._seen.notify_all()

    def _barrier(self) -> None:
        token = uuid.uuid4().hex
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("HEAD", f"/ckptfs-barrier-{token}")
            conn.getresponse().read()
        finally:
            conn.close()
        with self._seen:
            if not self._seen.wait_for(lambda: token in self._tokens, timeout=10):
                raise RuntimeError("moto access log did not show the barrier request")

    def mark(self) -> int:
        """A position in the request log; pass it to requests_since()."""
        self._barrier()
        with self._seen:
            return len(self._requests)

    def requests_since(self, mark: int) -> list[Request]:
        """Every request the server answered since `mark` (barrier requests excluded)."""
        self._barrier()
        with self._seen:
            return [r for r in self._requests[mark:] if "ckptfs-barrier-" not in r.target]

    def object_gets_since(self, mark: int) -> list[Request]:
        """GetObject requests since `mark`."""
        return [r for r in self.requests_since(mark) if r.is_object_get()]

    def log_tail(self) -> str:
        with self._seen:
            return "".join(self._tail)

    def stop(self) -> None:
        """Terminate the server (kill after 10 s) and join the log thread."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._drainer.join(timeout=10)


class S3Origin:
    """`../shared/s3origin` (OpenStack Swift + s3api) started with S3ORIGIN_STRICT=1 in its own data dir."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        port = free_port(consecutive=5)  # proxy + object, container, account, memcached
        result = run([S3ORIGIN / "start", "--port", port, "--data-dir", data_dir], timeout=240,
                     env={**os.environ, "S3ORIGIN_STRICT": "1"})
        if result.returncode != 0:
            self.stop()
            raise RuntimeError(f"s3origin start failed ({result.returncode}): {result.stderr[-2000:]}")
        values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        self.endpoint = values["AWS_ENDPOINT_URL"]
        self.access_key = values["AWS_ACCESS_KEY_ID"]
        self.secret_key = values["AWS_SECRET_ACCESS_KEY"]

    def stop(self) -> None:
        """Stop every process of this instance and delete its data dir."""
        run([S3ORIGIN / "stop", "--data-dir", self.data_dir, "--purge"], timeout=120)


# ----------------------------------------------------------------------------- the data set


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Dataset:
    """What was uploaded to a bucket and what the mount must show for it.

    `local_root` is a local copy of exactly the visible tree (valid keys only; the
    directory marker is an empty directory), the reference for `cmp`, `dd` and mmap.
    """

    bucket: str
    local_root: Path
    sha256: dict[str, str]  # visible path == key -> sha256 (every valid key)
    tensors: dict[str, dict[str, np.ndarray]]  # safetensors path -> tensors written to it
    dirs: set[str]  # every directory the mount must show (relative, no root)
    links: dict[str, str]  # synthetic `latest` symlink -> its expected target

    def local(self, rel: str) -> Path:
        return self.local_root / rel


BIG_FILE = "proj-a/job1/checkpoint-10/rank-0/optimizer.pt"
BIG_SIZE = 40 * 2**20 + 12345  # ~40 MiB, not a multiple of any block size
BIG_DIR = "proj-a/big-dir"
BIG_DIR_COUNT = 1100  # more than one ListObjectsV2 page (1000)
SPECIAL_NAMES = ["ünï cödé+plus&amp.txt", "100% done=yes.txt", "a<b>c'd\"e.txt", "with space+plus.bin"]
INVALID_KEYS = [
    "proj-b/bad//empty-segment.txt",
    "proj-b/bad/./dot-segment.txt",
    "proj-b/bad/../dotdot-segment.txt",
    "proj-b/bad/" + "L" * 256 + ".txt",
    "../escape-root.txt",
    "./dot-root.txt",
]
HIDDEN_BY_DIRECTORY = "proj-b/conflict/x"  # also a prefix of proj-b/conflict/x/y.txt
MARKER_DIR = "proj-b/marker-dir/"


def write_rank(rng: np.random.Generator, rank_dir: Path, step: int, optimizer_size: int | None = None):
    """Write one rank's files (real safetensors, config.json, optimizer.pt); return the tensors."""
    rank_dir.mkdir(parents=True)
    tensors = {
        "embed.weight": rng.standard_normal((128, 64), dtype=np.float32),
        "layers.0.bias": rng.standard_normal(64).astype(np.float16),
        "layers.0.scale": rng.integers(-1000, 1000, size=(4, 4, 4), dtype=np.int32),
        "step": np.array([step], dtype=np.int64),
    }
    save_file(tensors, rank_dir / "model.safetensors", metadata={"step": str(step)})
    (rank_dir / "config.json").write_text(json.dumps({"model": "tiny", "step": step, "hidden": 64}, indent=1))
    size = optimizer_size or int(rng.integers(10_000, 200_000))
    (rank_dir / "optimizer.pt").write_bytes(rng.bytes(size))
    return tensors


def upload(client, bucket: str, bodies: dict) -> None:
    """PUT every key -> body() in parallel."""
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=bodies[key]()), bodies))


def list_keys(client, bucket: str) -> set[str]:
    """Every key in the bucket (all pages)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


LAST_CHECKPOINTS = ("proj-a/job2/checkpoint-5", "proj-b/job-real-latest/checkpoint-3")  # uploaded last


def build_dataset(client, bucket: str, local_root: Path) -> Dataset:
    """Write the checkpoint tree locally (seeded, deterministic), upload it, and describe it.

    LAST_CHECKPOINTS are uploaded more than 1 s (LastModified resolution) after everything else,
    so each is unambiguously its project's most recent checkpoint.
    """
    rng = np.random.default_rng(20261123)
    tensors: dict[str, dict[str, np.ndarray]] = {}
    root = local_root

    def rank(rel: str, step: int, **kw):
        tensors[f"{rel}/model.safetensors"] = write_rank(rng, root / rel, step, **kw)

    for n in (1, 2, 10):
        for k in (0, 1):
            rank(f"proj-a/job1/checkpoint-{n}/rank-{k}", n, optimizer_size=BIG_SIZE if (n, k) == (10, 0) else None)
    for k in (0, 1):
        rank(f"proj-a/job2/checkpoint-5/rank-{k}", 5)
    (root / BIG_DIR).mkdir(parents=True)
    for i in range(BIG_DIR_COUNT):
        (root / BIG_DIR / f"shard-{i:05d}.txt").write_text(f"shard {i}\n" * (i % 7 + 1))
    for n in (1, 3):
        rank(f"proj-b/job-real-latest/checkpoint-{n}/rank-0", n)
    (root / "proj-b/job-real-latest/latest").write_text("checkpoint-1\n")  # a real object named latest
    rank("proj-b/job-dir-latest/checkpoint-2/rank-0", 2)
    (root / "proj-b/job-dir-latest/latest").mkdir()  # a real directory named latest
    (root / "proj-b/job-dir-latest/latest/notes.txt").write_text("real directory named latest\n")
    (root / "proj-b/misc").mkdir(parents=True)
    for name in SPECIAL_NAMES:
        (root / "proj-b/misc" / name).write_bytes(rng.bytes(3000) + name.encode())
    (root / "proj-b/conflict/x").mkdir(parents=True)
    (root / "proj-b/conflict/x/y.txt").write_text("the directory wins\n")
    (root / "proj-b/bad").mkdir(parents=True)
    (root / "proj-b/bad/ok.txt").write_text("valid neighbour of invalid keys\n")
    (root / MARKER_DIR).mkdir(parents=True)

    files = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
    is_last = lambda key: key.startswith(tuple(c + "/" for c in LAST_CHECKPOINTS))  # noqa: E731
    uploads = {k: p.read_bytes for k, p in files.items()}
    uploads.update({k: (lambda k=k: b"invalid key " + k.encode()) for k in INVALID_KEYS})
    uploads[HIDDEN_BY_DIRECTORY] = lambda: b"hidden: a directory of the same name exists"
    uploads[MARKER_DIR] = lambda: b""
    client.create_bucket(Bucket=bucket)
    upload(client, bucket, {k: v for k, v in uploads.items() if not is_last(k)})
    time.sleep(1.1)  # setup, not synchronisation: LastModified has 1 s resolution
    upload(client, bucket, {k: v for k, v in uploads.items() if is_last(k)})
    assert list_keys(client, bucket) == set(uploads), "the server did not store the keys verbatim"

    return Dataset(
        bucket=bucket, local_root=root, sha256={k: sha256_file(p) for k, p in files.items()}, tensors=tensors,
        dirs={p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir()},
        links={"proj-a/latest": "job2/checkpoint-5", "proj-b/latest": "job-real-latest/checkpoint-3",
               "proj-a/job1/latest": "checkpoint-10", "proj-a/job2/latest": "checkpoint-5"})


STRICT_MANY_DIR = "proj/many"
STRICT_MANY_COUNT = 1005  # more than one ListObjectsV2 page: continuation tokens must be signed right
STRICT_SPECIAL = "proj/misc/with space+plus.bin"


def build_small_tree(client, bucket: str, local_root: Path) -> dict[str, str]:
    """A small checkpoint tree for the strict origin; returns key -> sha256."""
    rng = np.random.default_rng(7)
    for n in (1, 2):
        write_rank(rng, local_root / f"proj/job/checkpoint-{n}/rank-0", n)
    (local_root / "proj/misc").mkdir(parents=True)
    (local_root / STRICT_SPECIAL).write_bytes(rng.bytes(300_000))
    (local_root / "proj/misc/ünï cödé&amp=x.txt").write_text("unicode, XML and query characters\n")
    (local_root / STRICT_MANY_DIR).mkdir(parents=True)
    for i in range(STRICT_MANY_COUNT):
        (local_root / STRICT_MANY_DIR / f"k-{i:05d}.txt").write_text(f"{i}\n")
    files = {p.relative_to(local_root).as_posix(): p for p in local_root.rglob("*") if p.is_file()}
    client.create_bucket(Bucket=bucket)
    upload(client, bucket, {k: p.read_bytes for k, p in files.items()})
    assert list_keys(client, bucket) == set(files)
    return {k: sha256_file(p) for k, p in files.items()}
