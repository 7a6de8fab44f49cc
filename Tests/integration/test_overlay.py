"""The writable overlay: files written under the mount are staged, uploaded once closed, durably."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from transformers.trainer_utils import rotate_checkpoints
from safetensors.numpy import load_file, save_file

from support import (
    MOTO_ACCESS_KEY, MOTO_SECRET_KEY, MotoServer, Mounter, free_port, kill_daemon, list_keys,
    pids_with_argument, run, s3_client, wait_until_gone,
)


@pytest.fixture
def bucket(moto_client):
    """A fresh, empty bucket on moto."""
    name = f"rw-{uuid.uuid4().hex[:8]}"
    moto_client.create_bucket(Bucket=name)
    return name


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bucket_hashes(client, bucket: str) -> dict[str, str]:
    return {key: sha(client.get_object(Bucket=bucket, Key=key)["Body"].read()) for key in list_keys(client, bucket)}


def sync(ckptfs_bin, env, path) -> None:
    result = run([ckptfs_bin, "sync", path], env=env, timeout=120)
    assert result.returncode == 0, result.stderr


def save_checkpoint(job, step: int, rng) -> dict[str, bytes]:
    """Writes a checkpoint the way Hugging Face's Trainer does (tmp dir, then os.replace); returns its files."""
    tmp = job / f"tmp-checkpoint-{step}"
    tmp.mkdir()
    tensors = {"w": rng.standard_normal((64, 64)).astype(np.float32), "b": np.arange(64, dtype=np.float32)}
    save_file(tensors, tmp / "model.safetensors")
    with zipfile.ZipFile(tmp / "optimizer.pt", "w") as archive:  # seeks back to patch its headers
        archive.writestr("data/0", rng.bytes(300_000))
        archive.writestr("data.pkl", b"pickle" * 100)
    with open(tmp / "trainer_state.json", "w") as f:
        f.write('{"step": %d' % step)
        f.flush()
        os.fsync(f.fileno())
    with open(tmp / "trainer_state.json", "a") as f:
        f.write("}\n")
    os.replace(tmp, job / f"checkpoint-{step}")
    final = job / f"checkpoint-{step}"
    return {name: (final / name).read_bytes() for name in ["model.safetensors", "optimizer.pt", "trainer_state.json"]}


def test_trainer_style_saves_and_rotation_land_exactly_in_the_bucket(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    mnt = mounter.mount(f"s3://{bucket}").mountpoint
    job = mnt / "proj" / "job"
    job.mkdir(parents=True)
    rng = np.random.default_rng(7)
    written = {}
    for step in (1, 2, 3):
        files = save_checkpoint(job, step, rng)
        written.update({f"proj/job/checkpoint-{step}/{name}": data for name, data in files.items()})
        (job / "state.txt").write_text(f"last={step}\n")  # rewritten on every save
        if step == 3:
            shutil.rmtree(job / "checkpoint-1")  # rotation
    written = {k: v for k, v in written.items() if not k.startswith("proj/job/checkpoint-1/")}
    written["proj/job/state.txt"] = b"last=3\n"
    sync(ckptfs_bin, moto_env, mnt)
    assert bucket_hashes(moto_client, bucket) == {k: sha(v) for k, v in written.items()}
    assert sorted(set(os.listdir(job)) - {"latest"}) == ["checkpoint-2", "checkpoint-3", "state.txt"]
    loaded = load_file(job / "checkpoint-3" / "model.safetensors")
    assert loaded["w"].shape == (64, 64)
    with zipfile.ZipFile(job / "checkpoint-2" / "optimizer.pt") as archive:
        assert archive.testzip() is None


def test_reads_return_what_was_written_before_and_after_upload(mounter, ckptfs_bin, moto_env, bucket):
    mnt = mounter.mount(f"s3://{bucket}").mountpoint
    data = os.urandom(3_000_000)
    (mnt / "a.bin").write_bytes(data)
    assert (mnt / "a.bin").read_bytes() == data
    assert os.stat(mnt / "a.bin").st_size == len(data)
    sync(ckptfs_bin, moto_env, mnt)
    assert (mnt / "a.bin").read_bytes() == data


def test_large_file_goes_up_as_multipart_byte_exact(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    mnt = mounter.mount(f"s3://{bucket}").mountpoint
    data = os.urandom(40 << 20)
    with open(mnt / "big.bin", "wb") as f:
        f.write(data[: 20 << 20])
        f.write(data[20 << 20:])
    sync(ckptfs_bin, moto_env, mnt)
    head = moto_client.head_object(Bucket=bucket, Key="big.bin")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-2")  # 32 MiB parts
    assert bucket_hashes(moto_client, bucket) == {"big.bin": sha(data)}


PROTECTED = {
    "open-for-write": lambda m: open(m / "old.txt", "r+b"),
    "truncate": lambda m: os.truncate(m / "old.txt", 0),
    "unlink": lambda m: os.unlink(m / "old.txt"),
    "rename": lambda m: os.rename(m / "old.txt", m / "new.txt"),
}


@pytest.mark.parametrize("operation", PROTECTED)
def test_objects_from_before_the_mount_are_protected(mounter, moto_client, bucket, operation):
    moto_client.put_object(Bucket=bucket, Key="old.txt", Body=b"precious")
    mnt = mounter.mount(f"s3://{bucket}").mountpoint
    with pytest.raises(OSError) as raised:
        PROTECTED[operation](mnt)
    assert raised.value.errno == errno.EACCES
    assert (mnt / "old.txt").read_bytes() == b"precious"


def test_flags_allow_overwriting_and_deleting_old_objects(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    moto_client.put_object(Bucket=bucket, Key="old.txt", Body=b"precious")
    moto_client.put_object(Bucket=bucket, Key="gone.txt", Body=b"bye")
    mnt = mounter.mount(f"s3://{bucket}", args=["--allow-overwrite", "--allow-delete"]).mountpoint
    with open(mnt / "old.txt", "ab") as f:
        f.write(b"+more")
    os.unlink(mnt / "gone.txt")
    sync(ckptfs_bin, moto_env, mnt)
    assert bucket_hashes(moto_client, bucket) == {"old.txt": sha(b"precious+more")}


def test_read_only_flag_refuses_writes(mounter, bucket):
    mnt = mounter.mount(f"s3://{bucket}", args=["--read-only"]).mountpoint
    with pytest.raises(OSError) as raised:
        (mnt / "x").write_bytes(b"x")
    assert raised.value.errno == errno.EROFS
    with pytest.raises(OSError) as raised:
        os.mknod(mnt / "x")
    assert raised.value.errno == errno.EROFS


def test_mknod_makes_an_empty_file_and_refuses_other_types(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    mnt = mounter.mount(f"s3://{bucket}").mountpoint
    os.mknod(mnt / "empty.bin", 0o644 | stat.S_IFREG)
    assert os.stat(mnt / "empty.bin").st_size == 0 and stat.S_ISREG(os.stat(mnt / "empty.bin").st_mode)
    with pytest.raises(FileExistsError):
        os.mknod(mnt / "empty.bin", 0o644 | stat.S_IFREG)
    for make in (lambda p: os.mkfifo(p), lambda p: os.mknod(p, 0o644 | stat.S_IFSOCK)):
        with pytest.raises(OSError) as raised:
            make(mnt / "special")
        assert raised.value.errno == errno.EPERM
    assert os.listdir(mnt) == ["empty.bin"]
    sync(ckptfs_bin, moto_env, mnt)
    assert bucket_hashes(moto_client, bucket) == {"empty.bin": sha(b"")}
    with open(mnt / "empty.bin", "ab") as f:
        f.write(b"later")
    sync(ckptfs_bin, moto_env, mnt)
    assert bucket_hashes(moto_client, bucket) == {"empty.bin": sha(b"later")}


def test_removed_and_renamed_directories_with_markers_stay_gone_after_a_remount(
        mounter, moto_client, ckptfs_bin, moto_env, bucket):
    for key in ["marker/", "emptymark/sub/", "proj/mark/", "proj/mark/m", "proj/keep.txt"]:
        moto_client.put_object(Bucket=bucket, Key=key, Body=b"m" if key.endswith("m") else b"")
    first = mounter.mount(f"s3://{bucket}", args=["--allow-delete"])
    mnt = first.mountpoint
    os.rmdir(mnt / "marker")
    os.rename(mnt / "emptymark", mnt / "moved")
    shutil.rmtree(mnt / "proj" / "mark")
    sync(ckptfs_bin, moto_env, mnt)
    assert sorted(list_keys(moto_client, bucket)) == ["proj/keep.txt"]
    second = mounter.remount(first)
    assert sorted(os.listdir(second.mountpoint)) == ["proj"]
    assert os.listdir(second.mountpoint / "proj") == ["keep.txt"]


def test_a_directory_removed_from_a_file_remote_leaves_no_empty_directory_behind(mounter, ckptfs_bin, moto_env, tmp_path):
    store = tmp_path / "store"
    (store / "kept").mkdir(parents=True)
    first = mounter.mount(f"file://{store}")
    mnt = first.mountpoint
    (mnt / "topdir" / "a").mkdir(parents=True)
    (mnt / "topdir" / "a" / "f").write_bytes(b"hi")
    (mnt / "old" / "b").mkdir(parents=True)
    (mnt / "old" / "b" / "g").write_bytes(b"g")
    sync(ckptfs_bin, moto_env, mnt)
    assert (store / "topdir" / "a" / "f").read_bytes() == b"hi"
    shutil.rmtree(mnt / "topdir")
    os.rename(mnt / "old", mnt / "new")
    sync(ckptfs_bin, moto_env, mnt)
    assert sorted(os.listdir(store)) == ["kept", "new"]
    assert (store / "new" / "b" / "g").read_bytes() == b"g"
    second = mounter.remount(first)
    assert sorted(os.listdir(second.mountpoint)) == ["kept", "new"]


def test_a_crash_while_a_file_remote_receives_an_upload_leaves_nothing_of_it_there(mounter, ckptfs_bin, moto_env, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    first = mounter.mount(f"file://{store}")
    data = os.urandom(1 << 20) * 384  # its copy into the store takes a while
    (first.mountpoint / "big.bin").write_bytes(data)
    (pid,) = pids_with_argument(str(first.mountpoint))

    def putting() -> bool:  # whether the daemon holds a file in the store (the one it is copying into)
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(f"{store}/"):
                    return True
            except FileNotFoundError:
                continue
        return False

    deadline = time.monotonic() + 60
    while not putting():
        assert time.monotonic() < deadline and not (store / "big.bin").exists(), "the put was not caught"
        time.sleep(0.001)
    kill_daemon(first.mountpoint)
    assert os.listdir(store) == []  # held a partial .ckptfs-put-… file
    second = mounter.mount(first.remote, mountpoint=first.mountpoint, cache_dir=first.cache_dir, args=first.args)
    sync(ckptfs_bin, moto_env, second.mountpoint)
    assert os.listdir(store) == ["big.bin"]
    assert sha((store / "big.bin").read_bytes()) == sha(data)


def test_files_closed_before_a_crash_are_uploaded_after_remount(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    first = mounter.mount(f"s3://{bucket}", args=["--upload-threads", "1"])
    files = {f"ckpt/part-{i}.bin": os.urandom(200_000 + i) for i in range(6)}
    (first.mountpoint / "ckpt").mkdir()
    for key, data in files.items():
        (first.mountpoint / key).write_bytes(data)
    kill_daemon(first.mountpoint)
    second = mounter.mount(first.remote, mountpoint=first.mountpoint, cache_dir=first.cache_dir, args=first.args)
    sync(ckptfs_bin, moto_env, second.mountpoint)
    assert bucket_hashes(moto_client, bucket) == {k: sha(v) for k, v in files.items()}


def test_a_file_open_at_the_crash_is_kept_reported_and_not_uploaded(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    first = mounter.mount(f"s3://{bucket}")
    handle = open(first.mountpoint / "half.bin", "wb")
    handle.write(b"partial" * 1000)
    handle.flush()
    kill_daemon(first.mountpoint)
    try:
        handle.close()
    except OSError:
        pass
    second = mounter.mount(first.remote, mountpoint=first.mountpoint, cache_dir=first.cache_dir)
    sync(ckptfs_bin, moto_env, second.mountpoint)
    assert "half.bin" not in list_keys(moto_client, bucket)
    status = run([ckptfs_bin, "status", second.mountpoint], env=moto_env)
    assert status.returncode == 0, status.stderr
    assert "abandoned=1" in status.stdout


def test_a_journal_append_cut_short_by_a_full_disk_leaves_the_records_after_it_intact(
        mounter, moto_client, ckptfs_bin, moto_env, bucket, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    mounted = run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", small])
    assert mounted.returncode == 0, mounted.stderr
    try:
        first = mounter.mount(f"s3://{bucket}", args=["--staging-dir", str(small / "staging")])
        mnt = first.mountpoint
        # Fill the staging file system from outside the mount, to its last byte: a journal append that
        # needs a new page writes what fits in the journal's last page, then fails.
        filler = os.open(small / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for size in (65536, 4096, 1):
                while True:
                    try:
                        os.write(filler, b"\0" * size)
                    except OSError as error:
                        assert error.errno == errno.ENOSPC
                        break
        finally:
            os.close(filler)
        failed = None
        for i in range(100):  # long names make long records: one of them crosses into a new page
            try:
                (mnt / (f"{i:03d}-" + "n" * 240)).write_bytes(b"")
            except OSError as error:
                failed = error
                break
        assert failed is not None, "the staging dir never ran out of space"
        os.unlink(small / "filler")
        (mnt / "after.bin").write_bytes(b"after")
        kill_daemon(mnt)
        # What the crash left: every line one whole record (a torn append followed by the next record on
        # the same line loses both).
        fields = {"boot": 2, "written": 2, "forgot": 2, "put": 6, "checksum": 3, "delete": 3, "copy": 4,
                  "done": 2, "cancel": 2}
        [journal] = (small / "staging").glob("*/journal")
        lines = journal.read_bytes().decode().splitlines()
        torn = [line for line in lines if len(line.split("\t")) != fields.get(line.split("\t")[0])]
        assert not torn, torn
        second = mounter.mount(first.remote, mountpoint=mnt, cache_dir=first.cache_dir, args=first.args)
        sync(ckptfs_bin, moto_env, second.mountpoint)
        assert bucket_hashes(moto_client, bucket)["after.bin"] == sha(b"after")
        # Still this mount's file after the restart (its journal record survived), so it may be rewritten.
        (mnt / "after.bin").write_bytes(b"again")
        sync(ckptfs_bin, moto_env, second.mountpoint)
        assert bucket_hashes(moto_client, bucket)["after.bin"] == sha(b"again")
    finally:
        mounter.close()
        run(["umount", "-l", small])


def test_a_full_staging_dir_slows_writers_instead_of_failing_them(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    mnt = mounter.mount(f"s3://{bucket}", args=["--staging-size", "8M"]).mountpoint
    files = {f"f{i}.bin": os.urandom(3 << 20) for i in range(6)}  # 18 MiB through an 8 MiB staging dir
    for name, data in files.items():
        (mnt / name).write_bytes(data)
    sync(ckptfs_bin, moto_env, mnt)
    assert bucket_hashes(moto_client, bucket) == {k: sha(v) for k, v in files.items()}


def test_a_file_larger_than_the_staging_dir_gets_enospc(mounter, bucket):
    mnt = mounter.mount(f"s3://{bucket}", args=["--staging-size", "8M"]).mountpoint
    with pytest.raises(OSError) as raised:
        with open(mnt / "huge.bin", "wb") as f:
            f.write(os.urandom(12 << 20))
    assert raised.value.errno == errno.ENOSPC


def test_a_writer_waiting_for_staging_room_can_be_killed(mounter, tmp_path):
    # With the store unreachable, a writer that needs room waits for an upload that may never come: it must
    # stay killable (it was in uninterruptible sleep until an upload freed room, kill -9 or not).
    remote = tmp_path / "remote"
    remote.mkdir()
    mnt = mounter.mount(f"file://{remote}", args=["--staging-size", "8M"]).mountpoint
    assert os.listdir(mnt) == []
    remote.rename(tmp_path / "remote-gone")  # uploads fail from now on, and are retried
    (mnt / "first.bin").write_bytes(os.urandom(6 << 20))
    writer = subprocess.Popen([sys.executable, "-c", f"open({str(mnt / 'second.bin')!r}, 'wb').write(bytes(6 << 20))"])
    try:
        deadline = time.monotonic() + 30
        while Path(f"/proc/{writer.pid}/wchan").read_text() != "request_wait_answer":
            assert writer.poll() is None, "the writer did not wait for room"
            assert time.monotonic() < deadline, "the writer never waited for room"
            time.sleep(0.05)
        writer.kill()
        writer.wait(timeout=10)  # timed out: the writer slept on in the kernel
    finally:
        (tmp_path / "remote-gone").rename(remote)
        writer.wait(timeout=120)
    assert (mnt / "first.bin").stat().st_size == 6 << 20


class Outage:
    """A private moto server that a test can stop and start again on the same port (a restarted
    moto is empty: `restart` creates the bucket again), with a Mounter pointed at it."""

    def __init__(self, ckptfs_bin, env, workdir, bucket: str):
        self.port = free_port()
        self.bucket = bucket
        self.server = MotoServer(self.port)
        self.mounter = Mounter(ckptfs_bin, workdir, self.server.endpoint, env)
        try:
            self.client = self._client_with_bucket()
        except Exception:
            self.server.stop()
            raise

    def _client_with_bucket(self):
        client = s3_client(self.server.endpoint, MOTO_ACCESS_KEY, MOTO_SECRET_KEY)
        client.create_bucket(Bucket=self.bucket)
        return client

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        self.server = MotoServer(self.port)
        self.client = self._client_with_bucket()

    def close(self) -> None:
        self.mounter.close()
        self.server.stop()


@pytest.fixture
def outage(ckptfs_bin, moto_env, tmp_path):
    """An `Outage` for bucket "outage", always unmounted and stopped at teardown."""
    outage = Outage(ckptfs_bin, moto_env, tmp_path, "outage")
    yield outage
    outage.close()


def test_uploads_survive_the_server_going_away_and_finish_when_it_is_back(outage, ckptfs_bin, moto_env):
    mnt = outage.mounter.mount("s3://outage").mountpoint
    assert os.listdir(mnt) == []  # the listing is cached; creating names needs no request then
    outage.stop()
    files = {f"during-outage-{i}.bin": os.urandom(100_000) for i in range(3)}
    for name, data in files.items():
        (mnt / name).write_bytes(data)
    status = run([ckptfs_bin, "status", mnt], env=moto_env)
    assert status.returncode == 0 and "staged_files=3" in status.stdout, status.stdout
    outage.restart()
    sync(ckptfs_bin, moto_env, mnt)
    assert bucket_hashes(outage.client, "outage") == {k: sha(v) for k, v in files.items()}


def test_unmount_with_the_server_down_leaves_uploads_staged_for_the_next_mount(outage, ckptfs_bin, moto_env):
    first = outage.mounter.mount("s3://outage", args=["--drain-timeout", "2"])
    assert os.listdir(first.mountpoint) == []
    outage.stop()
    data = os.urandom(50_000)
    (first.mountpoint / "kept.bin").write_bytes(data)
    result = run([ckptfs_bin, "unmount", first.mountpoint, "--drain-timeout", "2"], env=moto_env, timeout=60)
    assert result.returncode != 0 and "staged" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    outage.restart()
    wait_until_gone(pids_with_argument(str(first.mountpoint)), timeout=30)
    second = outage.mounter.mount("s3://outage", mountpoint=first.mountpoint, cache_dir=first.cache_dir)
    sync(ckptfs_bin, moto_env, second.mountpoint)
    assert bucket_hashes(outage.client, "outage") == {"kept.bin": sha(data)}
    status = run([ckptfs_bin, "status", second.mountpoint, "--json"], env=moto_env)
    assert '"queued": 0' in status.stdout and '"cache_capacity":' in status.stdout, status.stdout


def test_a_name_starting_with_a_combining_mark_stays_in_its_directory(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    mnt = mounter.mount(f"s3://{bucket}").mountpoint
    name = "\u0301b"  # "/" and U+0301 after it are one grapheme
    (mnt / "a").mkdir()
    (mnt / "a" / name).write_bytes(b"mark")
    assert os.listdir(mnt) == ["a"]
    assert os.listdir(mnt / "a") == [name]
    assert (mnt / "a" / name).read_bytes() == b"mark"
    sync(ckptfs_bin, moto_env, mnt)
    assert bucket_hashes(moto_client, bucket) == {f"a/{name}": sha(b"mark")}
    assert os.listdir(mnt) == ["a"]


def test_names_written_that_differ_only_in_unicode_normalisation_stay_two_files(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    mnt = mounter.mount(f"s3://{bucket}").mountpoint
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    bodies = {composed: b"composed", decomposed: b"decomposed!"}
    (mnt / "d").mkdir()
    for name, body in bodies.items():
        (mnt / "d" / name).write_bytes(body)
        (mnt / name).mkdir()
        (mnt / name / "inner.txt").write_bytes(body)
    assert sorted(os.listdir(mnt / "d")) == sorted(bodies)
    assert sorted(os.listdir(mnt)) == sorted([composed, decomposed, "d"])
    for name, body in bodies.items():
        assert (mnt / "d" / name).read_bytes() == body
        assert os.listdir(mnt / name) == ["inner.txt"]
    sync(ckptfs_bin, moto_env, mnt)
    expected = {f"d/{n}": sha(b) for n, b in bodies.items()} | {f"{n}/inner.txt": sha(b) for n, b in bodies.items()}
    assert bucket_hashes(moto_client, bucket) == expected
    os.unlink(mnt / "d" / decomposed)
    os.rename(mnt / composed / "inner.txt", mnt / composed / "moved.txt")
    assert os.listdir(mnt / "d") == [composed]
    assert os.listdir(mnt / decomposed) == ["inner.txt"]
    sync(ckptfs_bin, moto_env, mnt)
    assert bucket_hashes(moto_client, bucket) == {
        f"d/{composed}": sha(b"composed"),
        f"{composed}/moved.txt": sha(b"composed"),
        f"{decomposed}/inner.txt": sha(b"decomposed!"),
    }


def test_names_that_are_not_utf8_are_refused_not_repaired(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    mnt = bytes(mounter.mount(f"s3://{bucket}").mountpoint)
    (Path(os.fsdecode(mnt)) / "a\ufffd").write_bytes(b"replacement character")  # a valid name
    (Path(os.fsdecode(mnt)) / "tmp").write_bytes(b"tmp")
    for operation in (lambda p: open(p, "wb"), lambda p: os.mkdir(p), lambda p: os.mknod(p),
                      lambda p: os.rename(mnt + b"/tmp", p)):
        with pytest.raises(OSError) as raised:
            operation(mnt + b"/a\xff")
        assert raised.value.errno == errno.EILSEQ
    for operation in (os.stat, os.unlink, os.rmdir, lambda p: os.rename(p, mnt + b"/other")):
        with pytest.raises(FileNotFoundError):
            operation(mnt + b"/a\xff")
    assert sorted(os.listdir(mnt)) == sorted([b"a\xef\xbf\xbd", b"tmp"])
    sync(ckptfs_bin, moto_env, Path(os.fsdecode(mnt)))
    assert bucket_hashes(moto_client, bucket) == {"a\ufffd": sha(b"replacement character"), "tmp": sha(b"tmp")}


def test_paths_whose_key_would_exceed_1024_bytes_get_enametoolong(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    mnt = mounter.mount(f"s3://{bucket}").mountpoint
    deep = mnt / "/".join(["d" * 250] * 4)  # a 1003-byte prefix, with its slashes
    deep.mkdir(parents=True)
    fits = "f" * (1024 - 1004)  # "<prefix>/<name>" is exactly 1024 bytes
    (deep / fits).write_bytes(b"fits")
    for operation in (lambda p: p.write_bytes(b"x"), lambda p: p.mkdir(), lambda p: os.rename(deep / fits, p)):
        with pytest.raises(OSError) as raised:
            operation(deep / (fits + "g"))
        assert raised.value.errno == errno.ENAMETOOLONG
    (mnt / "short").mkdir()
    (mnt / "short" / ("n" * 30)).write_bytes(b"n")
    with pytest.raises(OSError) as raised:  # its file would be 1003 + 1 + 5 + 1 + 30 bytes
        os.rename(mnt / "short", deep / "short")
    assert raised.value.errno == errno.ENAMETOOLONG
    assert os.listdir(mnt / "short") == ["n" * 30]
    sync(ckptfs_bin, moto_env, mnt)
    assert sorted(bucket_hashes(moto_client, bucket)) == sorted([f"{deep.relative_to(mnt)}/{fits}", "short/" + "n" * 30])


LONG = "x" * 256
TOO_LONG = {
    "create": lambda m: open(m / LONG, "wb"),
    "mkdir": lambda m: os.mkdir(m / LONG),
    "rename": lambda m: os.rename(m / "short.txt", m / LONG),
    "stat": lambda m: os.stat(m / LONG),
}


@pytest.mark.parametrize("operation", TOO_LONG)
def test_names_over_255_bytes_get_enametoolong(mounter, bucket, operation):
    mnt = mounter.mount(f"s3://{bucket}").mountpoint
    (mnt / "short.txt").write_bytes(b"s")
    with pytest.raises(OSError) as raised:
        TOO_LONG[operation](mnt)
    assert raised.value.errno == errno.ENAMETOOLONG
    assert sorted(os.listdir(mnt)) == ["short.txt"]
    (mnt / ("y" * 255)).write_bytes(b"255 bytes is fine")
    assert sorted(os.listdir(mnt)) == ["short.txt", "y" * 255]


def test_a_directory_made_again_after_rmdir_does_not_bring_back_deleted_files(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    moto_client.put_object(Bucket=bucket, Key="old/f", Body=b"deleted")
    mnt = mounter.mount(f"s3://{bucket}", args=["--allow-delete"]).mountpoint
    (mnt / "new").mkdir()
    (mnt / "new" / "f").write_bytes(b"uploaded, then deleted")
    sync(ckptfs_bin, moto_env, mnt)
    for directory in ("old", "new"):
        assert os.listdir(mnt / directory) == ["f"]  # the listing is cached with f in it
        os.unlink(mnt / directory / "f")
        os.rmdir(mnt / directory)
        os.mkdir(mnt / directory)
        assert os.listdir(mnt / directory) == [], directory
        with pytest.raises(FileNotFoundError):
            open(mnt / directory / "f", "rb")
    sync(ckptfs_bin, moto_env, mnt)
    assert list_keys(moto_client, bucket) == set()


def test_rmtree_and_rm_rf_remove_jobs_with_their_latest_links(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    for job in ("a", "b"):
        for step in (1, 2):
            moto_client.put_object(Bucket=bucket, Key=f"proj/{job}/checkpoint-{step}/w.bin", Body=b"w")
    for job in ("c", "d"):
        moto_client.put_object(Bucket=bucket, Key=f"proj2/{job}/checkpoint-1/w.bin", Body=b"w")
    mnt = mounter.mount(f"s3://{bucket}", args=["--allow-delete"]).mountpoint
    assert os.readlink(mnt / "proj/a/latest") == "checkpoint-2"
    shutil.rmtree(mnt / "proj/a")  # unlinking `latest` was EACCES
    result = run(["rm", "-rf", mnt / "proj/b"])
    assert result.returncode == 0, result.stderr
    assert not os.path.lexists(mnt / "proj/latest")  # its checkpoint is gone, and it with it
    assert os.listdir(mnt / "proj") == []
    shutil.rmtree(mnt / "proj2")  # the project's link goes with its last checkpoint, during the walk
    assert "proj2" not in os.listdir(mnt)
    sync(ckptfs_bin, moto_env, mnt)
    assert list_keys(moto_client, bucket) == set()


def test_an_unlinked_latest_comes_back_when_a_newer_checkpoint_moves_it(mounter, moto_client, bucket):
    moto_client.put_object(Bucket=bucket, Key="proj/job/checkpoint-1/w.bin", Body=b"w")
    mnt = mounter.mount(f"s3://{bucket}", args=["--metadata-ttl", "1", "--negative-ttl", "0"]).mountpoint
    job = mnt / "proj/job"
    os.unlink(job / "latest")
    assert os.listdir(job) == ["checkpoint-1"]
    time.sleep(1.5)
    assert not os.path.lexists(job / "latest")  # a fresh listing with the same link keeps it hidden
    moto_client.put_object(Bucket=bucket, Key="proj/job/checkpoint-2/w.bin", Body=b"w")
    time.sleep(1.5)
    assert os.readlink(job / "latest") == "checkpoint-2"


def test_a_reader_open_across_a_rename_of_an_uploaded_file_reads_the_renamed_copy(mounter, ckptfs_bin, moto_env, bucket):
    mnt = mounter.mount(f"s3://{bucket}").mountpoint
    (mnt / "p/j").mkdir(parents=True)
    data = os.urandom(1_500_000)
    (mnt / "p/j/a.bin").write_bytes(data)
    sync(ckptfs_bin, moto_env, mnt)  # uploaded: renaming it is a copy, then a delete of the old key
    reader = os.open(mnt / "p/j/a.bin", os.O_RDONLY)
    try:
        os.rename(mnt / "p/j/a.bin", mnt / "p/j/b.bin")
        sync(ckptfs_bin, moto_env, mnt)  # the old key is gone from the bucket now
        assert os.pread(reader, len(data), 0) == data
    finally:
        os.close(reader)
    assert (mnt / "p/j/b.bin").read_bytes() == data


def test_checkpoints_rotated_by_modification_time_keep_the_newest(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    # transformers' Trainer (5.x) rotates checkpoints by the directories' mtimes (save_total_limit): the one
    # just saved must look newest, also next to older ones whose listings have expired, or were listed
    # again after their uploads.
    moto_client.put_object(Bucket=bucket, Key="p/run/checkpoint-1/model.safetensors", Body=b"1")  # an earlier job's
    mnt = mounter.mount(f"s3://{bucket}", args=["--metadata-ttl", "1", "--allow-delete"]).mountpoint
    run_dir = mnt / "p/run"
    assert os.listdir(run_dir / "checkpoint-1") == ["model.safetensors"]
    for n in (2, 3):
        time.sleep(1.2)  # past --metadata-ttl: the older checkpoints' listings expire
        (run_dir / f"checkpoint-{n}").mkdir()
        (run_dir / f"checkpoint-{n}/model.safetensors").write_bytes(b"%d" % n)
        mtimes = [os.stat(run_dir / f"checkpoint-{m}").st_mtime_ns for m in (n - 1, n)]
        assert mtimes[0] < mtimes[1], mtimes
        rotate_checkpoints(str(run_dir), save_total_limit=1, use_mtime=True)
        assert sorted(os.listdir(run_dir)) == [f"checkpoint-{n}", "latest"]
        sync(ckptfs_bin, moto_env, run_dir)
        time.sleep(1.2)
        assert os.listdir(run_dir / f"checkpoint-{n}") == ["model.safetensors"]  # listed again, with its upload
    assert sorted(os.listdir(run_dir)) == ["checkpoint-3", "latest"]
    keys = {o["Key"] for o in moto_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {"p/run/checkpoint-3/model.safetensors"}


def test_checkpoints_another_client_saves_while_mounted_look_newer_than_the_ones_before(mounter, moto_client, bucket):
    # Another node's job saving while this mount watches: each new checkpoint must look newest from its
    # first sight on (all of them had the mount's start time), or a rotation by mtime picks the wrong one.
    moto_client.put_object(Bucket=bucket, Key="p/run/checkpoint-1/model.safetensors", Body=b"1")
    run_dir = mounter.mount(f"s3://{bucket}", args=["--metadata-ttl", "1", "--read-only"]).mountpoint / "p/run"
    assert sorted(os.listdir(run_dir)) == ["checkpoint-1", "latest"]
    for n in (2, 3):
        moto_client.put_object(Bucket=bucket, Key=f"p/run/checkpoint-{n}/rank-0/model.safetensors", Body=b"%d" % n)
        deadline = time.monotonic() + 30
        while f"checkpoint-{n}" not in os.listdir(run_dir):
            assert time.monotonic() < deadline, "the listing never showed the new checkpoint"
            time.sleep(0.2)
    mtimes = [os.stat(run_dir / f"checkpoint-{n}").st_mtime_ns for n in (1, 2, 3)]
    assert mtimes[0] < mtimes[1] < mtimes[2], mtimes
    assert os.stat(run_dir / "checkpoint-3/rank-0").st_mtime_ns >= mtimes[2]


def test_latest_links_follow_the_checkpoints_this_mount_saves_and_removes(mounter, moto_client, bucket):
    moto_client.put_object(Bucket=bucket, Key="p/run/checkpoint-1/model.safetensors", Body=b"1")
    project = mounter.mount(f"s3://{bucket}", args=["--allow-delete"]).mountpoint / "p"
    job = project / "run"
    assert os.readlink(job / "latest") == "checkpoint-1"
    assert os.readlink(project / "latest") == "run/checkpoint-1"
    (job / "checkpoint-2").mkdir()
    (job / "checkpoint-2/model.safetensors").write_bytes(b"2")
    assert os.readlink(job / "latest") == "checkpoint-2"
    assert os.readlink(project / "latest") == "run/checkpoint-2"
    assert (job / "latest/model.safetensors").read_bytes() == b"2"
    assert sorted(os.listdir(job)) == ["checkpoint-1", "checkpoint-2", "latest"]
    shutil.rmtree(job / "checkpoint-2")
    assert os.readlink(job / "latest") == "checkpoint-1"
    assert os.readlink(project / "latest") == "run/checkpoint-1"
    shutil.rmtree(job / "checkpoint-1")
    assert os.listdir(job) == []
    assert sorted(os.listdir(project)) == ["run"]
    (project / "new-run/checkpoint-7").mkdir(parents=True)
    assert os.readlink(project / "new-run/latest") == "checkpoint-7"
    assert os.readlink(project / "latest") == "new-run/checkpoint-7"


def save(checkpoint: Path, ranks: int = 1) -> None:
    for rank in range(ranks):
        (checkpoint / f"rank-{rank}").mkdir(parents=True)
        (checkpoint / f"rank-{rank}/model.safetensors").write_bytes(checkpoint.name.encode())


def test_a_projects_latest_is_the_largest_checkpoint_of_the_job_that_saved_last(mounter, moto_client, bucket):
    # "The latest checkpoint from the most recent job": the project's link goes where that job's own goes.
    for step in (9, 10):
        moto_client.put_object(Bucket=bucket, Key=f"p/run/checkpoint-{step}/m", Body=b"m")
    project = mounter.mount(f"s3://{bucket}", args=["--allow-delete"]).mountpoint / "p"
    assert os.readlink(project / "latest") == "run/checkpoint-10"
    (project / "run/checkpoint-9/eval.json").write_bytes(b"{}")  # an evaluation of an older checkpoint
    assert os.readlink(project / "latest") == "run/checkpoint-10"  # was run/checkpoint-9
    os.rename(project / "run", project / "run2")  # moves checkpoint-9 after checkpoint-10 (name order)
    assert os.readlink(project / "latest") == "run2/checkpoint-10"  # was run2/checkpoint-9
    save(project / "run3/checkpoint-1", ranks=2)
    save(project / "run3/checkpoint-2", ranks=2)
    assert os.readlink(project / "latest") == "run3/checkpoint-2"
    shutil.rmtree(project / "run3/checkpoint-1/rank-0")  # a rotation's first step
    assert os.readlink(project / "latest") == "run3/checkpoint-2"  # was the checkpoint being removed
    shutil.rmtree(project / "run3")
    assert os.readlink(project / "latest") == "run2/checkpoint-10"


def test_a_job_saved_again_after_it_was_removed_with_its_latest_shows_its_latest(mounter, bucket):
    project = mounter.mount(f"s3://{bucket}").mountpoint / "p"
    for _ in range(2):
        save(project / "run/checkpoint-1")
        save(project / "run/checkpoint-2")
        assert sorted(os.listdir(project / "run")) == ["checkpoint-1", "checkpoint-2", "latest"]  # was hidden
        assert os.readlink(project / "run/latest") == "checkpoint-2"
        assert os.readlink(project / "latest") == "run/checkpoint-2"
        shutil.rmtree(project)  # unlinks both links on its way


def test_a_latest_the_kernel_still_knows_once_it_points_nowhere_is_not_followed(mounter, bucket):
    job = mounter.mount(f"s3://{bucket}").mountpoint / "p/run"
    save(job / "checkpoint-1")
    assert os.readlink(job / "latest") == "checkpoint-1"
    shutil.rmtree(job / "checkpoint-1")
    with pytest.raises(FileNotFoundError):
        os.readlink(job / "latest")  # gave checkpoint-1, which is gone


def test_a_latest_looked_up_before_the_first_checkpoint_appears_with_it(mounter, bucket):
    project = mounter.mount(f"s3://{bucket}").mountpoint / "p"
    (project / "run").mkdir(parents=True)
    assert not os.path.lexists(project / "run/latest") and not os.path.lexists(project / "latest")
    save(project / "run/checkpoint-1")
    assert os.readlink(project / "run/latest") == "checkpoint-1"  # was absent for --negative-ttl (5 s)
    assert os.readlink(project / "latest") == "run/checkpoint-1"


def test_a_newer_job_another_client_saves_becomes_the_projects_latest(mounter, moto_client, ckptfs_bin, moto_env, bucket):
    project = mounter.mount(f"s3://{bucket}", args=["--metadata-ttl", "1"]).mountpoint / "p"
    save(project / "mine/checkpoint-1")
    sync(ckptfs_bin, moto_env, project)
    assert os.readlink(project / "latest") == "mine/checkpoint-1"
    uploaded = time.time()
    while int(time.time()) == int(uploaded):  # the store's times have 1 s steps: the other job is newer
        time.sleep(0.05)
    moto_client.put_object(Bucket=bucket, Key="p/a-run/checkpoint-5/rank-0/model.safetensors", Body=b"5")
    deadline = time.monotonic() + 15
    while os.readlink(project / "latest") != "a-run/checkpoint-5":  # once the listing is fetched again
        assert time.monotonic() < deadline, "the project's latest stayed on this mount's job"
        time.sleep(0.1)
    assert (project / "latest/rank-0/model.safetensors").read_bytes() == b"5"


@pytest.mark.parametrize("written", [True, False], ids=["with-a-file", "empty"])
def test_a_latest_this_mount_made_can_be_unlinked_and_its_job_removed(mounter, bucket, written):
    # Empty checkpoints are never uploaded: removing them leaves nothing of them in the overlay.
    job = mounter.mount(f"s3://{bucket}").mountpoint / "p/new-run"
    (job / "checkpoint-1").mkdir(parents=True)
    if written:
        (job / "checkpoint-1/m.bin").write_bytes(b"1")
    assert os.readlink(job / "latest") == "checkpoint-1"
    os.unlink(job / "latest")
    assert os.listdir(job) == ["checkpoint-1"]  # hidden while it would point at the same checkpoint
    (job / "checkpoint-2").mkdir()
    assert os.readlink(job / "latest") == "checkpoint-2"  # moved: back
    shutil.rmtree(job)
    assert not job.exists()


def test_an_unlinked_latest_moved_by_this_mount_stays_hidden_while_it_points_there(mounter, moto_client, bucket):
    moto_client.put_object(Bucket=bucket, Key="p/run/checkpoint-1/m.bin", Body=b"1")
    job = mounter.mount(f"s3://{bucket}", args=["--allow-delete"]).mountpoint / "p/run"
    (job / "checkpoint-2").mkdir()
    (job / "checkpoint-2/m.bin").write_bytes(b"2")
    assert os.readlink(job / "latest") == "checkpoint-2"
    os.unlink(job / "latest")
    assert sorted(os.listdir(job)) == ["checkpoint-1", "checkpoint-2"]

