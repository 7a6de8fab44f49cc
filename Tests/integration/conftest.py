"""Fixtures for the ckptfs integration tests (plain helpers are in support.py).

Servers and the data set are session-scoped: moto starts once and the checkpoint tree is
uploaded once. Every mount is made through a Mounter whose teardown always unmounts, and a
watchdog kills our FUSE daemons if a test is about to hit its timeout inside a FUSE call.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest

import support
from support import MOTO_ACCESS_KEY, MOTO_SECRET_KEY, Mounter, ckptfs_env, s3_client


@pytest.fixture(scope="session")
def ckptfs_bin() -> Path:
    """The binary under test: $CKPTFS_BIN, else <repo>/.build/debug/ckptfs."""
    path = Path(os.environ.get("CKPTFS_BIN", support.REPO / ".build/debug/ckptfs"))
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"ckptfs binary not found at {path}: run `swift build` or set CKPTFS_BIN", pytrace=False)
    return path


@pytest.fixture(scope="session")
def moto():
    """A moto S3 server on a free port, counting requests from its access log; stopped at the end."""
    server = support.MotoServer(support.free_port())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_client(moto):
    """boto3 S3 client for the moto server."""
    return s3_client(moto.endpoint, MOTO_ACCESS_KEY, MOTO_SECRET_KEY)


@pytest.fixture(scope="session")
def dataset(moto_client, tmp_path_factory) -> support.Dataset:
    """The checkpoint tree (see support.build_dataset), uploaded once to a fresh bucket on moto."""
    bucket = f"ckpt-{uuid.uuid4().hex[:8]}"
    return support.build_dataset(moto_client, bucket, tmp_path_factory.mktemp("dataset"))


@pytest.fixture(scope="session")
def moto_env() -> dict[str, str]:
    """Environment for ckptfs talking to moto: only our dummy AWS_* credentials."""
    return ckptfs_env(MOTO_ACCESS_KEY, MOTO_SECRET_KEY)


@pytest.fixture
def mounter(ckptfs_bin, moto, moto_env, tmp_path):
    """A Mounter for moto (`--endpoint` set) whose mounts are all removed at teardown."""
    m = Mounter(ckptfs_bin, tmp_path, moto.endpoint, moto_env)
    yield m
    m.close()


@pytest.fixture(scope="session")
def dataset_mount(ckptfs_bin, moto, moto_env, dataset, tmp_path_factory) -> Path:
    """The data set mounted `--read-only` once for the whole session, for tests that only read."""
    m = Mounter(ckptfs_bin, tmp_path_factory.mktemp("shared-mount"), moto.endpoint, moto_env)
    try:
        yield m.mount(f"s3://{dataset.bucket}", args=["--read-only"]).mountpoint
    finally:
        m.close()


@pytest.fixture(scope="session")
def strict_origin(tmp_path_factory):
    """../shared/s3origin with S3ORIGIN_STRICT=1 (verifies SigV4 like AWS), holding a small tree.

    Yields (server, bucket, key -> sha256). Stopped and purged at the end. The first start on
    a fresh machine apt-installs OpenStack Swift (~20 s).
    """
    server = support.S3Origin(tmp_path_factory.mktemp("s3origin"))
    try:
        client = s3_client(server.endpoint, server.access_key, server.secret_key)
        bucket = f"strict-{uuid.uuid4().hex[:8]}"
        yield server, bucket, support.build_small_tree(client, bucket, tmp_path_factory.mktemp("strict-tree"))
    finally:
        server.stop()


@pytest.fixture
def origin_mounter(ckptfs_bin, strict_origin, tmp_path):
    """A Mounter for the strict origin, with its credentials; mounts removed at teardown."""
    server = strict_origin[0]
    m = Mounter(ckptfs_bin, tmp_path, server.endpoint, ckptfs_env(server.access_key, server.secret_key))
    yield m
    m.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item):
    """Watchdog on the same clock as pytest-timeout (setup + call + teardown): shortly before the
    timeout, kill our FUSE daemons, so a call blocked in the kernel on a stuck daemon returns
    (ECONNABORTED/ENOTCONN) and teardown can run, instead of the test being unkillable."""
    marker = item.get_closest_marker("timeout")
    timeout = float(marker.args[0] if marker else item.config.getini("timeout") or 300)
    timer = threading.Timer(max(timeout - 30, timeout * 0.75), support.abort_all_mounts)
    timer.daemon = True
    timer.start()
    yield
    timer.cancel()


def pytest_sessionfinish(session):
    """Last resort: nothing we mounted may outlive the session."""
    support.abort_all_mounts()
