"""Against an origin that verifies SigV4 like AWS (s3origin, S3ORIGIN_STRICT=1); moto checks nothing."""

from support import (STRICT_MANY_COUNT, STRICT_MANY_DIR, STRICT_SPECIAL, ckptfs_env, expect_mount_error, run,
                     sha256_file)


def test_mount_list_and_read_with_strict_signing(origin_mounter, strict_origin):
    _, bucket, sha256 = strict_origin
    mnt = origin_mounter.mount(f"s3://{bucket}").mountpoint

    listing = run(["ls", "-R", mnt])
    assert listing.returncode == 0, listing.stderr
    assert "with space+plus.bin" in listing.stdout and "model.safetensors" in listing.stdout

    result = run(["sha256sum", mnt / STRICT_SPECIAL])
    assert result.stdout.split()[0] == sha256[STRICT_SPECIAL]
    count = run(["bash", "-c", 'ls "$1" | wc -l', "ls", mnt / STRICT_MANY_DIR])
    assert count.stdout.strip() == str(STRICT_MANY_COUNT)
    assert {rel: sha256_file(mnt / rel) for rel in sha256} == sha256


def test_prefix_mount_with_strict_signing(origin_mounter, strict_origin):
    _, bucket, sha256 = strict_origin
    mnt = origin_mounter.mount(f"s3://{bucket}/proj/misc").mountpoint
    assert {p.name: sha256_file(p) for p in mnt.iterdir()} == {
        rel.rsplit("/", 1)[1]: digest for rel, digest in sha256.items() if rel.startswith("proj/misc/")}


def test_wrong_secret_is_access_denied(origin_mounter, strict_origin):
    server, bucket, _ = strict_origin
    wrong = "Wrong-Secret-7hQm2Zp"
    attempt = expect_mount_error(origin_mounter, f"s3://{bucket}", ("access denied",),
                                 env=ckptfs_env(server.access_key, wrong))
    assert wrong not in attempt.stdout + attempt.stderr
