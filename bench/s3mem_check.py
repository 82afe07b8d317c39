#!/usr/bin/env python3
"""Fidelity check of the bench's fast S3 server (bench/s3mem) against moto.

The same sequence of S3 calls, those drpilot's bench paths and their peers make, goes to
both servers; what each answers (keys, sizes, ETags, tags, metadata, ranges, listing
pages with prefixes, delimiters, StartAfter and continuation, multipart ETags, errors) is
compared field by field. `make bench` runs it before any row, so a figure measured on
s3mem is a figure of the same answers moto gives.

usage: .venv/bin/python bench/s3mem_check.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FastS3, LocalS3, log  # noqa: E402


def pages(s3, **kwargs) -> list[dict]:
    out, token = [], None
    while True:
        args = dict(kwargs, **({"ContinuationToken": token} if token else {}))
        page = s3.list_objects_v2(**args)
        out.append({
            "keys": [(o["Key"], o["Size"], o["ETag"]) for o in page.get("Contents", [])],
            "prefixes": [p["Prefix"] for p in page.get("CommonPrefixes", [])],
            "truncated": page["IsTruncated"],
            "count": page["KeyCount"],
        })
        token = page.get("NextContinuationToken")
        if not token:
            return out


def v1_listing(s3, **kwargs) -> dict:
    """ListObjects (v1) paged to the end: everything it returned, and whether it paged.
    (moto returns a delimited v1 listing in one page whatever MaxKeys says; S3 pages it.)"""
    out, marker = [], None
    while True:
        page = s3.list_objects(**dict(kwargs, **({"Marker": marker} if marker else {})))
        keys = [o["Key"] for o in page.get("Contents", [])]
        prefixes = [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        out.append({"keys": keys, "prefixes": prefixes, "truncated": page["IsTruncated"]})
        if not page["IsTruncated"]:
            return {"keys": [k for p in out for k in p["keys"]], "prefixes": [c for p in out for c in p["prefixes"]]}
        marker = page.get("NextMarker") or max(keys + prefixes)


def error_code(call) -> str:
    try:
        call()
    except Exception as e:  # botocore ClientError
        return getattr(e, "response", {}).get("Error", {}).get("Code", type(e).__name__)
    return "no error"


def script(s3) -> dict:
    """Every answer worth comparing, from one fixed sequence of calls."""
    seen: dict = {}
    s3.create_bucket(Bucket="check")
    keys = [f"a/{d}/{i:03d}" for d in ("x", "y", "z") for i in range(7)] + ["a/top", "b/1", "a/y", "a/y/"]
    for i, key in enumerate(keys):
        s3.put_object(Bucket="check", Key=key, Body=f"body {i}".encode() * (i + 1),
                      Tagging=f"sha256=h{i}&n=%20{i}", Metadata={"m": str(i)}, ContentType="text/plain")
    head = s3.head_object(Bucket="check", Key="a/x/003")
    seen["head"] = (head["ContentLength"], head["ETag"], head["Metadata"], head["ContentType"])
    seen["get range"] = s3.get_object(Bucket="check", Key="a/x/003", Range="bytes=2-9")["Body"].read()
    seen["tags"] = s3.get_object_tagging(Bucket="check", Key="a/x/003")["TagSet"]
    for name, kwargs in {
        "flat": {},
        "flat, 5 a page": {"MaxKeys": 5},
        "prefix a/": {"Prefix": "a/", "MaxKeys": 4},
        "delimited": {"Delimiter": "/"},
        "delimited a/, 2 a page": {"Prefix": "a/", "Delimiter": "/", "MaxKeys": 2},
        "start after a/x/002": {"StartAfter": "a/x/002", "MaxKeys": 6},
        "delimited, start after a/x/002": {"Prefix": "a/", "Delimiter": "/", "StartAfter": "a/x/002"},
        "delimited, start after a/y": {"Prefix": "a/", "Delimiter": "/", "StartAfter": "a/y"},
        "nothing": {"Prefix": "c/"},
    }.items():
        seen[f"list {name}"] = pages(s3, Bucket="check", **kwargs)
    seen["v1 delimited a/, 2 a page"] = v1_listing(s3, Bucket="check", Prefix="a/", Delimiter="/", MaxKeys=2)
    seen["v1 flat, 7 a page"] = v1_listing(s3, Bucket="check", MaxKeys=7)

    s3.copy_object(Bucket="check", Key="c/copy", CopySource={"Bucket": "check", "Key": "a/x/003"})
    s3.copy_object(Bucket="check", Key="c/replaced", CopySource={"Bucket": "check", "Key": "a/x/003"},
                   MetadataDirective="REPLACE", Metadata={"new": "1"}, TaggingDirective="REPLACE", Tagging="t=1")
    for key in ("c/copy", "c/replaced"):
        h = s3.head_object(Bucket="check", Key=key)
        seen[f"copy {key}"] = (h["ETag"], h["Metadata"], s3.get_object_tagging(Bucket="check", Key=key)["TagSet"])

    part = b"p" * (5 << 20)
    up = s3.create_multipart_upload(Bucket="check", Key="m/big", Tagging="sha256=big")["UploadId"]
    seen["uploads listed"] = [u["Key"] for u in s3.list_multipart_uploads(Bucket="check", Prefix="m/").get("Uploads", [])]
    e1 = s3.upload_part(Bucket="check", Key="m/big", UploadId=up, PartNumber=1, Body=part)["ETag"]
    e2 = s3.upload_part_copy(Bucket="check", Key="m/big", UploadId=up, PartNumber=2,
                             CopySource={"Bucket": "check", "Key": "a/x/003"},
                             CopySourceRange="bytes=0-5")["CopyPartResult"]["ETag"]
    done = s3.complete_multipart_upload(Bucket="check", Key="m/big", UploadId=up, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    seen["multipart"] = (e1, e2, done["ETag"], s3.head_object(Bucket="check", Key="m/big")["ContentLength"],
                         s3.get_object_tagging(Bucket="check", Key="m/big")["TagSet"])
    seen["uploads after"] = s3.list_multipart_uploads(Bucket="check").get("Uploads", [])
    aborted = s3.create_multipart_upload(Bucket="check", Key="m/aborted")["UploadId"]
    s3.abort_multipart_upload(Bucket="check", Key="m/aborted", UploadId=aborted)
    seen["errors"] = {
        "get missing": error_code(lambda: s3.get_object(Bucket="check", Key="nope")),
        "no bucket": error_code(lambda: s3.list_objects_v2(Bucket="nobucket")),
    }
    seen["error: part of an aborted upload"] = error_code(
        lambda: s3.upload_part(Bucket="check", Key="m/aborted", UploadId=aborted, PartNumber=1, Body=b"x"))
    s3.delete_object(Bucket="check", Key="b/1")
    gone = s3.delete_objects(Bucket="check", Delete={"Objects": [{"Key": "a/top"}, {"Key": "c/copy"}]})
    seen["deleted"] = sorted(d["Key"] for d in gone.get("Deleted", []))
    seen["after deletes"] = pages(s3, Bucket="check", Delimiter="/")
    return seen


# Where moto answers other than S3 does, s3mem is checked against S3's documented answer.
S3_SAYS = {
    # UploadPart to an aborted upload: S3 answers NoSuchUpload (404); moto answers 500.
    "error: part of an aborted upload": "NoSuchUpload",
}


def main() -> int:
    with LocalS3() as moto, FastS3() as fast:
        want, got = script(moto.client()), script(fast.client())
    want.update(S3_SAYS)
    bad = [k for k in want if want[k] != got.get(k)]
    for k in bad:
        log(f"s3mem differs from moto on {k}:\n  moto:  {want[k]}\n  s3mem: {got.get(k)}")
    if bad:
        return 1
    log(f"s3mem answers as moto does on all {len(want)} checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
