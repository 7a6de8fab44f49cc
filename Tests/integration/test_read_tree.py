"""Reading the mounted checkpoint tree with ordinary tools returns exactly the uploaded bytes."""

from __future__ import annotations

import errno
import mmap
import os
import random
import stat
import time
import uuid

import numpy as np
import pytest
from safetensors import safe_open

from support import (BIG_DIR, BIG_DIR_COUNT, BIG_FILE, BIG_SIZE, INVALID_KEYS, MARKER_DIR, SPECIAL_NAMES, run,
                     sha256_file)


def find(root, kind: str) -> set[str]:
    """`find ROOT -type KIND` as paths relative to ROOT."""
    result = run(["find", root, "-mindepth", "1", "-type", kind, "-printf", "%P\\n"])
    assert result.returncode == 0, result.stderr
    return set(result.stdout.splitlines())


def test_find_lists_exactly_the_valid_files(dataset_mount, dataset):
    assert find(dataset_mount, "f") == set(dataset.sha256)


def test_find_lists_exactly_the_expected_directories_and_links(dataset_mount, dataset):
    assert find(dataset_mount, "d") == dataset.dirs
    assert find(dataset_mount, "l") == set(dataset.links)


def test_every_file_has_the_uploaded_sha256(dataset_mount, dataset):
    actual = {rel: sha256_file(dataset_mount / rel) for rel in dataset.sha256}
    assert actual == dataset.sha256


def test_sha256sum_agrees_for_checkpoint_files(dataset_mount, dataset):
    rels = sorted(rel for rel in dataset.sha256 if not rel.startswith(BIG_DIR))
    result = run(["sha256sum", *[dataset_mount / rel for rel in rels]], timeout=120)
    assert result.returncode == 0, result.stderr
    sums = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in result.stdout.splitlines()}
    assert {str(dataset_mount / rel): dataset.sha256[rel] for rel in rels} == sums


def test_stat_reports_object_sizes(dataset_mount, dataset):
    rels = sorted(dataset.sha256)
    result = run(["stat", "-c", "%s", *[dataset_mount / rel for rel in rels]], timeout=120)
    assert result.returncode == 0, result.stderr
    assert [int(s) for s in result.stdout.split()] == [dataset.local(rel).stat().st_size for rel in rels]
    assert os.stat(dataset_mount / BIG_FILE).st_size == BIG_SIZE


def test_files_report_1_mib_io_size_and_directories_4_kib(dataset_mount):
    # glibc's readdir sizes its buffer by a directory's st_blksize, and the kernel one per READDIR by that.
    for dirpath, _, filenames in os.walk(dataset_mount):
        assert os.stat(dirpath).st_blksize == 4096, dirpath
        for path in (os.path.join(dirpath, name) for name in filenames):
            if not os.path.islink(path):
                assert os.stat(path).st_blksize == 1 << 20, path


def test_directory_with_more_keys_than_one_listing_page(dataset_mount):
    result = run(["bash", "-c", 'ls "$1" | wc -l', "ls", dataset_mount / BIG_DIR])
    assert result.stdout.strip() == str(BIG_DIR_COUNT)
    assert sorted(os.listdir(dataset_mount / BIG_DIR)) == [f"shard-{i:05d}.txt" for i in range(BIG_DIR_COUNT)]


def test_readdir_inode_numbers_are_the_ones_stat_reports(mounter, dataset):
    # A fresh mount: the kernel sends READDIRPLUS for the first chunk only, plain READDIR after it.
    big = mounter.mount(f"s3://{dataset.bucket}", args=["--read-only"]).mountpoint / BIG_DIR
    entries = list(os.scandir(big))
    assert len(entries) == BIG_DIR_COUNT
    assert [e.name for e in entries if e.inode() != e.stat(follow_symlinks=False).st_ino] == []
    last = sorted(entries, key=lambda e: e.name)[-1]
    result = run(["find", big, "-inum", str(last.inode()), "-printf", "%f\\n"])
    assert result.stdout.split() == [last.name], result.stderr


@pytest.mark.parametrize("skip,count", [(0, 1), (1, 3), (2047, 2), (2048, 1), (5000, 300),
                                        (BIG_SIZE // 4096 - 1, 5)])
def test_dd_at_offsets_returns_the_same_slice(dataset_mount, dataset, skip, count):
    result = run(["dd", f"if={dataset_mount / BIG_FILE}", "bs=4096", f"skip={skip}", f"count={count}",
                  "status=none"], binary=True)
    assert result.returncode == 0, result.stderr
    with open(dataset.local(BIG_FILE), "rb") as f:
        f.seek(skip * 4096)
        assert result.stdout == f.read(count * 4096)


def test_mmap_at_random_offsets(dataset_mount, dataset):
    expected = dataset.local(BIG_FILE).read_bytes()
    rng = random.Random(42)
    spans = [(0, 1), (BIG_SIZE - 1, 1), (BIG_SIZE - 70_000, 70_000)]
    spans += [(off, rng.randint(1, 300_000)) for off in (rng.randrange(BIG_SIZE) for _ in range(200))]
    with open(dataset_mount / BIG_FILE, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert len(m) == BIG_SIZE
        for off, length in spans:
            assert m[off:off + length] == expected[off:off + length], f"mismatch at offset {off}"


def test_cat_cp_and_cmp_match_a_local_copy(dataset_mount, dataset, tmp_path):
    mounted, local = dataset_mount / BIG_FILE, dataset.local(BIG_FILE)
    assert run(["cmp", mounted, local]).returncode == 0
    assert run(["cat", mounted], binary=True).stdout == local.read_bytes()
    assert run(["cp", mounted, tmp_path / "copy"]).returncode == 0
    assert run(["cmp", tmp_path / "copy", local]).returncode == 0


def test_safe_open_reads_every_tensor(dataset_mount, dataset):
    assert dataset.tensors
    for rel, written in dataset.tensors.items():
        with safe_open(str(dataset_mount / rel), framework="numpy") as f:
            assert set(f.keys()) == set(written), rel
            for name, array in written.items():
                got = f.get_tensor(name)
                assert got.dtype == array.dtype and np.array_equal(got, array), f"{rel}: {name}"


def test_names_with_spaces_unicode_and_reserved_characters(dataset_mount, dataset):
    misc = dataset_mount / "proj-b/misc"
    assert sorted(os.listdir(misc)) == sorted(SPECIAL_NAMES)
    for name in SPECIAL_NAMES:
        assert sha256_file(misc / name) == dataset.sha256[f"proj-b/misc/{name}"]
    result = run(["sha256sum", misc / "ünï cödé+plus&amp.txt"])
    assert result.stdout.split()[0] == dataset.sha256["proj-b/misc/ünï cödé+plus&amp.txt"]


def test_directory_marker_object_is_an_empty_directory(dataset_mount):
    marker = dataset_mount / MARKER_DIR
    assert marker.is_dir() and os.listdir(marker) == []


def test_key_that_is_also_a_prefix_shows_the_directory(dataset_mount):
    x = dataset_mount / "proj-b/conflict/x"
    assert stat.S_ISDIR(os.lstat(x).st_mode)
    assert os.listdir(x) == ["y.txt"]
    assert os.listdir(dataset_mount / "proj-b/conflict") == ["x"]


def test_a_file_whose_name_is_also_a_prefix_of_skipped_keys_only_stays_a_file(mounter, moto_client):
    bucket = f"conflict-{uuid.uuid4().hex[:8]}"
    moto_client.create_bucket(Bucket=bucket)
    bodies = {"model.bin": b"model", "model.bin//junk": b"j", "marked.bin": b"m", "marked.bin/": b"",
              "real.bin": b"r", "real.bin//junk": b"j", "real.bin/inner.txt": b"inner"}
    for key, body in bodies.items():
        moto_client.put_object(Bucket=bucket, Key=key, Body=body)
    root = mounter.mount(f"s3://{bucket}", args=["--read-only"]).mountpoint  # the root is listed by delimiter
    assert stat.S_ISREG(os.stat(root / "model.bin").st_mode)
    assert (root / "model.bin").read_bytes() == b"model"
    assert stat.S_ISDIR(os.stat(root / "marked.bin").st_mode)  # a marker makes the directory
    assert os.listdir(root / "real.bin") == ["inner.txt"]
    assert sorted(os.listdir(root)) == ["marked.bin", "model.bin", "real.bin"]


def test_invalid_keys_are_invisible_and_nothing_escapes(dataset_mount, dataset):
    root = os.path.realpath(dataset_mount)
    names = set()
    for dirpath, dirnames, filenames in os.walk(dataset_mount):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            names.add(name)
            assert name not in ("", ".", "..") and "/" not in name and len(os.fsencode(name)) <= 255
            assert os.path.realpath(path).startswith(root + os.sep), f"{path} resolves outside the mount"
    for key in INVALID_KEYS:
        assert os.path.basename(key) not in names, f"invalid key {key!r} is visible"
    assert sorted(os.listdir(dataset_mount / "proj-b/bad")) == ["ok.txt"]
    assert not (dataset_mount.parent / "escape-root.txt").exists()
    assert not (dataset_mount / "proj-b/dotdot-segment.txt").exists()


@pytest.mark.parametrize("rel", ["nope", "proj-a/nope.txt", "proj-a/job1/checkpoint-3",
                                 "proj-a/job1/checkpoint-10/rank-0/nope", "proj-b/bad/dot-segment.txt"])
def test_missing_names_give_enoent(dataset_mount, rel):
    for _ in range(2):  # the second lookup may be served by the negative cache
        with pytest.raises(FileNotFoundError):
            os.stat(dataset_mount / rel)
    with pytest.raises(FileNotFoundError):
        open(dataset_mount / rel, "rb")


def test_files_are_0444_dirs_0555_owned_by_the_mounting_user(dataset_mount):
    for dirpath, dirnames, filenames in os.walk(dataset_mount):
        for path, mode in [(dirpath, 0o555)] + [(os.path.join(dirpath, n), 0o444) for n in filenames]:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            assert stat.S_IMODE(st.st_mode) == mode, f"{path}: {oct(st.st_mode)}"
            assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), path


FILE = "proj-a/job1/checkpoint-1/rank-0/config.json"
DIR = "proj-a/job1/checkpoint-1"
WRITES = {
    "open-for-write": lambda m: open(m / FILE, "r+b"),
    "open-append": lambda m: open(m / FILE, "ab"),
    "create": lambda m: open(m / DIR / "new.txt", "wb"),
    "mkdir": lambda m: os.mkdir(m / DIR / "newdir"),
    "rmdir": lambda m: os.rmdir(m / MARKER_DIR),
    "unlink": lambda m: os.unlink(m / FILE),
    "rename": lambda m: os.rename(m / FILE, m / DIR / "renamed.json"),
    "truncate": lambda m: os.truncate(m / FILE, 0),
    "symlink": lambda m: os.symlink("config.json", m / DIR / "link"),
    "hardlink": lambda m: os.link(m / FILE, m / DIR / "hard"),
    "chmod": lambda m: os.chmod(m / FILE, 0o644),
    "utime": lambda m: os.utime(m / FILE, (0, 0)),
}


@pytest.mark.parametrize("operation", WRITES)
def test_writes_of_any_kind_give_erofs_on_a_read_only_mount(dataset_mount, dataset, operation):
    with pytest.raises(OSError) as raised:
        WRITES[operation](dataset_mount)
    assert raised.value.errno == errno.EROFS, f"{operation}: {raised.value!r}"
    assert sha256_file(dataset_mount / FILE) == dataset.sha256[FILE]
    assert sorted(os.listdir(dataset_mount / DIR)) == ["rank-0", "rank-1"]


def test_prefix_remote_mounts_the_subtree(mounter, dataset):
    mnt = mounter.mount(f"s3://{dataset.bucket}/proj-a").mountpoint
    expected = {rel.removeprefix("proj-a/") for rel in dataset.sha256 if rel.startswith("proj-a/")}
    assert find(mnt, "f") == expected
    rel = "job1/checkpoint-2/rank-1/model.safetensors"
    assert sha256_file(mnt / rel) == dataset.sha256["proj-a/" + rel]


def test_file_remote_serves_a_local_directory(mounter, dataset):
    mnt = mounter.mount(f"file://{dataset.local_root}").mountpoint
    assert find(mnt, "f") == set(dataset.sha256)
    for rel in [BIG_FILE, "proj-b/misc/ünï cödé+plus&amp.txt", "proj-a/job2/checkpoint-5/rank-1/model.safetensors"]:
        assert sha256_file(mnt / rel) == dataset.sha256[rel]


def test_file_remote_skips_names_that_are_not_utf8_with_a_warning(mounter, tmp_path):
    remote = tmp_path / "remote"
    (remote / "p/j").mkdir(parents=True)
    (remote / "p/j/ok.txt").write_text("ok")
    with open(os.fsencode(remote / "p/j") + b"/bad\xff.txt", "wb") as f:
        f.write(b"x")
    attempt = mounter.mount(f"file://{remote}")
    assert sorted(os.listdir(attempt.mountpoint / "p/j")) == ["ok.txt"]
    log = (attempt.cache_dir / "ckptfs.log").read_text(errors="replace")
    assert "skipping 'p/j/bad\\xff.txt': its name is not UTF-8" in log


def test_names_that_differ_only_in_unicode_normalisation_are_two_entries(mounter, moto_client):
    bucket = f"nf-{uuid.uuid4().hex[:8]}"
    moto_client.create_bucket(Bucket=bucket)
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    bodies = {composed: b"composed", decomposed: b"decomposed!"}
    for name, body in bodies.items():
        moto_client.put_object(Bucket=bucket, Key=f"files/{name}", Body=body)
        moto_client.put_object(Bucket=bucket, Key=f"{name}/inner.txt", Body=body)
    mnt = mounter.mount(f"s3://{bucket}", args=["--read-only"]).mountpoint
    assert sorted(os.listdir(mnt)) == sorted([composed, decomposed, "files"])
    assert sorted(os.listdir(mnt / "files")) == sorted(bodies)
    for name, body in bodies.items():
        assert (mnt / "files" / name).read_bytes() == body
        assert (mnt / name / "inner.txt").read_bytes() == body
        assert os.listdir(mnt / name) == ["inner.txt"]
    assert os.stat(mnt / "files" / composed).st_ino != os.stat(mnt / "files" / decomposed).st_ino
    assert os.stat(mnt / composed).st_ino != os.stat(mnt / decomposed).st_ino


def fresh_bucket(client, keys) -> str:
    """A new bucket holding `keys` (each with a one-byte body)."""
    bucket = f"fresh-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    return bucket


def listed_once_refreshed(directory, name) -> list[str]:
    """The directory's entries once `name` shows in them (at most 20 s: the TTL's refresh), sorted."""
    deadline = time.monotonic() + 20
    while name not in os.listdir(directory) and time.monotonic() < deadline:
        time.sleep(0.2)  # polling for the refresh the TTL promises, not waiting for a thread
    return sorted(os.listdir(directory))


@pytest.mark.parametrize("args", [["--read-only"], []], ids=["read-only", "writable"])
def test_ls_of_a_project_shows_the_jobs_another_client_adds_once_the_listing_expires(mounter, moto_client, args):
    # A project is reached through the root, whose listing (by delimiter) does not refresh the project's.
    bucket = fresh_bucket(moto_client, ["p/job/checkpoint-1/a"])
    project = mounter.mount(f"s3://{bucket}", args=args + ["--metadata-ttl", "1"]).mountpoint / "p"
    assert sorted(os.listdir(project)) == ["job", "latest"]  # the kernel now keeps this READDIR
    moto_client.put_object(Bucket=bucket, Key="p/job2/x", Body=b"x")
    assert listed_once_refreshed(project, "job2") == ["job", "job2", "latest"]


def test_ls_l_of_the_root_once_its_projects_listings_expired_lists_none_of_them(mounter, moto, moto_client):
    bucket = fresh_bucket(moto_client, [f"proj{n}/job/checkpoint-1/f" for n in range(6)])
    mnt = mounter.mount(f"s3://{bucket}", args=["--read-only", "--metadata-ttl", "1"]).mountpoint
    for n in range(6):
        os.listdir(mnt / f"proj{n}")
    time.sleep(1.3)  # past --metadata-ttl: every listing has expired
    mark = moto.mark()
    assert run(["ls", "-l", mnt]).returncode == 0
    listings = [request.target for request in moto.requests_since(mark) if request.is_listing()]
    assert len(listings) <= 1, listings  # the root's own, not one per project


def test_ls_shows_objects_another_client_adds_once_the_listing_expires(mounter, moto_client):
    bucket = fresh_bucket(moto_client, ["p/j/checkpoint-1/a.bin"])
    root = mounter.mount(f"s3://{bucket}", args=["--read-only", "--metadata-ttl", "1"]).mountpoint
    job = root / "p/j"
    assert sorted(os.listdir(job)) == ["checkpoint-1", "latest"]  # the kernel now caches this listing
    moto_client.put_object(Bucket=bucket, Key="p/j/checkpoint-2/a.bin", Body=b"2")
    assert listed_once_refreshed(job, "checkpoint-2") == ["checkpoint-1", "checkpoint-2", "latest"]
    assert os.readlink(job / "latest") == "checkpoint-2"
