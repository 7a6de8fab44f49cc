"""Checks of the test harness itself (no ckptfs needed): request counting on the moto server."""

from support import BIG_FILE, MotoServer


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
