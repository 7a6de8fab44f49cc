"""Laziness and the persistent block cache, measured by counting requests on the server."""

import hashlib
import mmap
import os
import platform
import subprocess
import uuid

from support import BIG_FILE, BIG_SIZE, run, sha256_file


def walk_everything(root) -> int:
    """List and stat every entry (and read every link) without reading file contents."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                os.readlink(path)
            os.stat(path)
            count += 1
    return count


def read_all(root, expected: dict[str, str]) -> dict[str, str]:
    """sha256 of every expected file read through the mount."""
    return {rel: sha256_file(root / rel) for rel in expected}


def test_listing_and_stat_fetch_no_object_bytes(mounter, moto, dataset):
    mark = moto.mark()
    mnt = mounter.mount(f"s3://{dataset.bucket}").mountpoint
    assert walk_everything(mnt) > len(dataset.sha256)
    requests = moto.requests_since(mark)
    assert [r.target for r in requests if r.is_object_get()] == []
    assert any(r.is_listing() for r in requests)


def test_remount_reads_cached_files_without_any_object_get(mounter, moto, dataset):
    first = mounter.mount(f"s3://{dataset.bucket}")
    mark = moto.mark()
    assert read_all(first.mountpoint, dataset.sha256) == dataset.sha256
    assert any(BIG_FILE in r.target for r in moto.object_gets_since(mark)), "first read sent no GET?"

    second = mounter.remount(first)
    mark = moto.mark()
    assert read_all(second.mountpoint, dataset.sha256) == dataset.sha256
    gets = moto.object_gets_since(mark)
    assert gets == [], f"{len(gets)} object GETs after remount, e.g. {[r.target for r in gets[:5]]}"


def test_changed_object_is_not_served_from_the_stale_cache(mounter, moto_client):
    bucket = f"change-{uuid.uuid4().hex[:8]}"
    key = "proj/job/checkpoint-1/rank-0/optimizer.pt"
    moto_client.create_bucket(Bucket=bucket)
    moto_client.put_object(Bucket=bucket, Key=key, Body=b"A" * 100_000)
    first = mounter.mount(f"s3://{bucket}")
    assert (first.mountpoint / key).read_bytes() == b"A" * 100_000

    moto_client.put_object(Bucket=bucket, Key=key, Body=b"B" * 100_000)  # same size, new ETag
    second = mounter.remount(first)
    assert (second.mountpoint / key).read_bytes() == b"B" * 100_000


def resident_bytes(path) -> int:
    """Bytes of `path` in the kernel's page cache, as fincore counts them."""
    result = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[0])


def test_reads_bypass_the_page_cache_unless_asked_for_it(mounter, dataset):
    """Direct reads (Linux 6.6+, which still allows mmap of such files) leave no page-cache pages behind;
    --page-cache keeps them, so a re-read skips the daemon. (With --allow-overwrite, so that fincore's own open
    of the then fully cached file is served by the daemon too, not by passthrough from the cache's copy.)"""
    direct = mounter.mount(f"s3://{dataset.bucket}", args=["--allow-overwrite"]).mountpoint
    cached = mounter.mount(f"s3://{dataset.bucket}", args=["--page-cache"]).mountpoint
    major, minor = (int(part) for part in platform.release().split(".")[:2])
    for mnt in (direct, cached):
        with open(mnt / BIG_FILE, "rb") as f:
            while f.read(1 << 20):
                pass
    size = os.stat(cached / BIG_FILE).st_size
    # Clean page-cache pages may be reclaimed at any moment (a CI run once lost one 512 KiB folio of this
    # 40 MiB file), so "kept" means at least 90 %; a direct read keeps none at all.
    kept = size * 9 // 10
    assert resident_bytes(cached / BIG_FILE) >= kept
    if (major, minor) >= (6, 6):
        assert resident_bytes(direct / BIG_FILE) == 0
    else:
        assert resident_bytes(direct / BIG_FILE) >= kept
    assert sha256_file(direct / BIG_FILE) == sha256_file(cached / BIG_FILE) == dataset.sha256[BIG_FILE]


def test_a_fully_cached_file_is_read_by_the_kernel_from_its_cache_file(mounter, dataset):
    """Once every block of an object is cached, opens are served by FUSE passthrough from the object's data
    file in the cache (Linux 6.9+, root): reads and mmaps then fill that file's page cache, which the daemon's
    direct reads never do."""
    from test_passthrough import kernel_offers_passthrough
    first = mounter.mount(f"s3://{dataset.bucket}")
    assert sha256_file(first.mountpoint / BIG_FILE) == dataset.sha256[BIG_FILE]
    second = mounter.remount(first)
    data_files = [p for p in (second.cache_dir / "blocks").glob("*/*.data") if p.stat().st_size == BIG_SIZE]
    assert len(data_files) == 1, data_files
    data = data_files[0]
    assert resident_bytes(data) < BIG_SIZE // 2  # written with O_DIRECT: at most its last block is cached
    assert sha256_file(second.mountpoint / BIG_FILE) == dataset.sha256[BIG_FILE]
    with open(second.mountpoint / BIG_FILE, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        assert hashlib.sha256(mapped).hexdigest() == dataset.sha256[BIG_FILE]
    if kernel_offers_passthrough():
        assert resident_bytes(data) >= BIG_SIZE * 9 // 10, "the read did not go to the cache file"
    else:
        assert resident_bytes(data) < BIG_SIZE // 2


def test_header_reads_of_many_open_files_then_whole_reads_return_every_byte(mounter, moto_client):
    """A small first read fetches only a head of its block; the rest comes when a later read needs it.
    With more files open than heads are kept idle (16), some heads go on fetching at once: either way
    every byte read afterwards, inside the head and past it, is the object's."""
    bucket = f"heads-{uuid.uuid4().hex[:8]}"
    moto_client.create_bucket(Bucket=bucket)
    bodies = {}
    for index in range(20):
        body = os.urandom(5 << 20)  # two blocks of the default 4 MiB
        key = f"proj/job/checkpoint-1/rank-{index}/model.safetensors"
        moto_client.put_object(Bucket=bucket, Key=key, Body=body)
        bodies[key] = body
    mnt = mounter.mount(f"s3://{bucket}").mountpoint
    files = {key: os.open(mnt / key, os.O_RDONLY) for key in bodies}
    try:
        for key, fd in files.items():
            assert os.pread(fd, 8, 0) == bodies[key][:8]
        for key, fd in files.items():
            assert os.pread(fd, 1000, 30_000) == bodies[key][30_000:31_000]  # inside the head
            assert os.pread(fd, 1 << 20, 1 << 20) == bodies[key][1 << 20:2 << 20]  # past it
            assert os.pread(fd, 6 << 20, 0) == bodies[key]
    finally:
        for fd in files.values():
            os.close(fd)


def test_many_open_files_are_read_under_a_low_descriptor_limit(mounter, tmp_path):
    store = tmp_path / "store" / "p" / "j"
    store.mkdir(parents=True)
    shards = {f"shard-{i:02d}.bin": os.urandom(16 << 20) for i in range(8)}
    for name, data in shards.items():
        (store / name).write_bytes(data)
    argv, mountpoint, _ = mounter.command(f"file://{tmp_path / 'store'}", args=["--block-size", "1M"])
    mounted = run(["prlimit", "--nofile=32:4096", *argv])  # 8 files of 16 blocks need more than 32
    assert mounted.returncode == 0, mounted.stderr
    files = [open(mountpoint / "p" / "j" / name, "rb") for name in shards]  # all open at once, as a loader
    try:
        for epoch in range(3):  # later passes read blocks from their cache files
            for handle, data in zip(files, shards.values()):
                handle.seek(0)
                assert handle.read() == data, f"epoch {epoch}"
    finally:
        for handle in files:
            handle.close()
