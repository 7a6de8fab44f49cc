"""Checks of the test harness itself (no ckptfs needed): request counting, a really strict origin."""

from support import BIG_FILE, MotoServer, run


def test_moto_counts_object_gets_but_not_listings(moto: MotoServer, moto_client, dataset):
    mark = moto.mark()
    moto_client.get_object(Bucket=dataset.bucket, Key=BIG_FILE, Range="bytes=0-99")["Body"].read()
    moto_client.get_object(Bucket=dataset.bucket, Key="proj-b/misc/ünï cödé+plus&amp.txt")["Body"].read()
    moto_client.list_objects_v2(Bucket=dataset.bucket, Prefix="proj-a/", Delimiter="/")
    moto_client.head_object(Bucket=dataset.bucket, Key=BIG_FILE)

    requests = moto.requests_since(mark)
    assert [r.status for r in moto.object_gets_since(mark)] == [206, 200]
    assert sum(r.is_listing() for r in requests) == 1
    assert [r.method for r in requests] == ["GET", "GET", "GET", "HEAD"]
    assert moto.object_gets_since(moto.mark()) == []


def test_strict_origin_really_verifies_signatures(strict_origin):
    server, bucket, sha256 = strict_origin
    url = f"{server.endpoint}/{bucket}/proj/job/checkpoint-1/rank-0/config.json"
    curl = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--aws-sigv4", "aws:amz:us-east-1:s3"]
    signed = [*curl, "--user", f"{server.access_key}:{server.secret_key}", url]
    assert run(signed).stdout == "400"  # curl 7.88 omits x-amz-content-sha256: strict mode rejects it
    assert run([*signed, "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]).stdout == "200"
    wrong = [*curl, "--user", f"{server.access_key}:wrong", "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", url]
    assert run(wrong).stdout == "403"
    assert len(sha256) > 1000
