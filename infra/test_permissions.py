#!/usr/bin/env python3
"""Tests of the permission check (infra/permissions.py).

Run with .venv-infra's Python, from the repository root or anywhere:

    .venv-infra/bin/python -m unittest infra/test_permissions.py
    .venv-infra/bin/python infra/test_permissions.py

The end-to-end cases run the checker on fixtures (infra/permissions/fixtures/): the
template as it was before the check existed must fail, naming both of its findings; the
same template with the findings fixed must pass on the same ledger, so the test fails
both ways. The mapping cases test the ledger-to-IAM translation without the simulator.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

INFRA = Path(__file__).resolve().parent
CHECKER = INFRA / "permissions.py"
FIXTURES = INFRA / "permissions" / "fixtures"
PARAMETERS = INFRA / "permissions" / "test-parameters.json"

# infra/permissions.py sits next to the infra/permissions/ directory: load it by path.
_spec = importlib.util.spec_from_file_location("drpilot_permissions", CHECKER)
P = importlib.util.module_from_spec(_spec)
sys.modules["drpilot_permissions"] = P
_spec.loader.exec_module(P)


def check(template: Path, ledger: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECKER), "--template", str(template),
                           "--ledger", str(ledger), "--parameters", str(PARAMETERS)],
                          capture_output=True, text=True, timeout=300)


def record(**fields) -> dict:
    base = {"function": "restore", "service": "s3", "region": "us-east-1", "status": 200}
    base.update(fields)
    return base


def call(**fields):
    """A ledger record as the checker parses it."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write(json.dumps(record(**fields)) + "\n")
    try:
        return P.read_ledger(Path(f.name))[0]
    finally:
        Path(f.name).unlink()


def summary(requests) -> list[tuple[str, str, dict]]:
    return [(r.action, r.resource, r.context) for r in requests]


T = "arn:aws:s3:::target-data"


class EndToEnd(unittest.TestCase):
    def test_the_template_before_the_check_fails_on_both_findings(self):
        out = check(FIXTURES / "template-head.yaml", FIXTURES / "ledger-findings.jsonl")
        text = out.stdout + out.stderr
        self.assertEqual(out.returncode, 1, text)
        # Finding 1: reads that may 404 without an unconditioned s3:ListBucket.
        self.assertIn("DENY teardown: GetObject s3://target-data/drpilot/receipts/runs/run-7/phases/teardown.json "
                      "answered 404 -> needs s3:ListBucket on arn:aws:s3:::target-data without s3:prefix", text)
        self.assertIn("DENY teardown: GetObject s3://target-data/locks/drill.lock answered 404", text)
        self.assertIn("DENY bringup: GetObject s3://target-data/locks/drill.lock answered 404", text)
        # Finding 2: s3:ListBucketMultipartUploads under an s3:prefix condition.
        self.assertIn("DENY restore: ListMultipartUploads s3://target-data/_staging/run-7/ "
                      "-> needs s3:ListBucketMultipartUploads on arn:aws:s3:::target-data", text)
        self.assertIn("DENY teardown: ListMultipartUploads s3://target-data/_staging/run-7/", text)
        self.assertIn("a key s3:ListBucketMultipartUploads never has", text)
        # parliament sees finding 2 as well.
        self.assertIn("UNKNOWN_CONDITION_FOR_ACTION", text)
        self.assertIn("permissions: FAILED", text)
        self.assertRegex(out.stdout, r"\npermissions: 28 calls checked, 5 denied, \d+ grants unexercised\n$")

    def test_the_same_ledger_passes_once_the_findings_are_fixed(self):
        out = check(FIXTURES / "template-fixed.yaml", FIXTURES / "ledger-findings.jsonl")
        text = out.stdout + out.stderr
        self.assertEqual(out.returncode, 0, text)
        self.assertNotIn("DENY", text)
        self.assertNotIn("FAIL", text)
        self.assertNotIn("permissions: FAILED", text)
        self.assertRegex(out.stdout, r"\npermissions: 28 calls checked, 0 denied, \d+ grants unexercised\n$")
        self.assertIn("unexercised: promote s3:DeleteObject on arn:aws:s3:::target-data/root/* (only with prune_drift)",
                      text)

    def test_the_state_machine_role_must_invoke_and_publish_what_the_definition_names(self):
        fixed = (FIXTURES / "template-fixed.yaml").read_text()
        promote = "        - LambdaInvokePolicy:\n            FunctionName: !Ref PromoteFunction\n"
        self.assertIn(promote, fixed)
        topic = "TopicName: !GetAtt NotificationTopic.TopicName"
        self.assertIn(topic, fixed)
        broken = fixed.replace(promote, "").replace(topic, "TopicName: some-other-topic")
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=FIXTURES, delete=False) as f:
            f.write(broken)  # next to the fixture: DefinitionUri is relative to the template
        try:
            out = check(Path(f.name), FIXTURES / "ledger-findings.jsonl")
        finally:
            Path(f.name).unlink()
        self.assertEqual(out.returncode, 1, out.stdout)
        self.assertIn("DENY DrillStateMachineRole: DrillStateMachine state Promote -> needs lambda:InvokeFunction "
                      "on arn:aws:lambda:us-east-1:123456789012:function:drpilot-promote", out.stdout)
        self.assertIn("DENY DrillStateMachineRole: DrillStateMachine state RequestApproval -> needs sns:Publish "
                      "on arn:aws:sns:us-east-1:123456789012:drpilot-notifications", out.stdout)
        self.assertRegex(out.stdout, r"\npermissions: 28 calls checked, 0 denied")

    def test_no_evidence_is_a_failure(self):
        with tempfile.TemporaryDirectory() as tmp:
            missing = check(FIXTURES / "template-fixed.yaml", Path(tmp) / "absent.jsonl")
            self.assertEqual(missing.returncode, 1, missing.stdout)
            self.assertIn("no ledger at", missing.stdout)
            empty = Path(tmp) / "empty.jsonl"
            empty.write_text("\n")
            out = check(FIXTURES / "template-fixed.yaml", empty)
            self.assertEqual(out.returncode, 1, out.stdout)
            self.assertIn("is empty", out.stdout)

    def test_an_unmapped_operation_fails_naming_it(self):
        with tempfile.TemporaryDirectory() as tmp:
            ledger = Path(tmp) / "ledger.jsonl"
            ledger.write_text((FIXTURES / "ledger-findings.jsonl").read_text()
                              + json.dumps(record(operation="GetBucketPolicy", resource=T)) + "\n")
            out = check(FIXTURES / "template-fixed.yaml", ledger)
            self.assertEqual(out.returncode, 1, out.stdout)
            self.assertIn("FAIL unmapped operation s3:GetBucketPolicy (1 calls)", out.stdout)


class Mapping(unittest.TestCase):
    def test_a_read_that_found_no_key_also_needs_list_bucket_without_prefix(self):
        reqs = P.requests_for(call(operation="GetObject", resource=f"{T}/locks/drill.lock",
                                   status=404, error="NoSuchKey"))
        self.assertEqual(summary(reqs), [("s3:GetObject", f"{T}/locks/drill.lock", {}),
                                         ("s3:ListBucket", T, {})])
        head = P.requests_for(call(operation="HeadObject", resource=f"{T}/x", status=404, error="404"))
        self.assertEqual(head[-1].kind, "404-list")
        found = P.requests_for(call(operation="GetObject", resource=f"{T}/x"))
        self.assertEqual([r.action for r in found], ["s3:GetObject"])

    def test_listings(self):
        reqs = P.requests_for(call(operation="ListObjectsV2", resource=T + "/",
                                   context={"s3:prefix": "_staging/r/", "s3:max-keys": "1000"}))
        self.assertEqual(summary(reqs), [("s3:ListBucket", T, {"s3:prefix": "_staging/r/", "s3:max-keys": "1000"})])
        uploads = P.requests_for(call(operation="ListMultipartUploads", resource=T,
                                      context={"s3:prefix": "_staging/r/"}))
        self.assertEqual([(r.action, r.resource) for r in uploads], [("s3:ListBucketMultipartUploads", T)])

    def test_delete_objects_needs_delete_object_on_every_key(self):
        reqs = P.requests_for(call(operation="DeleteObjects", resource=T, keys=["a/1", "a/2"]))
        self.assertEqual(summary(reqs), [("s3:DeleteObject", f"{T}/a/1", {}), ("s3:DeleteObject", f"{T}/a/2", {})])

    def test_writes_and_tags(self):
        self.assertEqual([r.action for r in P.requests_for(call(operation="PutObject", resource=f"{T}/k"))],
                         ["s3:PutObject"])
        tagged = P.requests_for(call(operation="CreateMultipartUpload", resource=f"{T}/k", tagging=True))
        self.assertEqual([r.action for r in tagged], ["s3:PutObject", "s3:PutObjectTagging"])
        for op in ("UploadPart", "CompleteMultipartUpload"):
            self.assertEqual([r.action for r in P.requests_for(call(operation=op, resource=f"{T}/k"))],
                             ["s3:PutObject"])

    def test_copies(self):
        copy = P.requests_for(call(operation="CopyObject", resource=f"{T}/root/k",
                                   copy_source=f"{T}/_staging/r/k", tagging_directive="COPY"))
        self.assertEqual([(r.action, r.resource) for r in copy], [
            ("s3:PutObject", f"{T}/root/k"), ("s3:GetObject", f"{T}/_staging/r/k"),
            ("s3:GetObjectTagging", f"{T}/_staging/r/k"), ("s3:PutObjectTagging", f"{T}/root/k")])
        default = P.requests_for(call(operation="CopyObject", resource=f"{T}/root/k", copy_source=f"{T}/s/k"))
        self.assertEqual(len(default), 4, "COPY is the default directive")
        replace = P.requests_for(call(operation="CopyObject", resource=f"{T}/root/k", copy_source=f"{T}/s/k",
                                      tagging_directive="REPLACE"))
        self.assertEqual([r.action for r in replace], ["s3:PutObject", "s3:GetObject"])
        part = P.requests_for(call(operation="UploadPartCopy", resource=f"{T}/root/k", copy_source=f"{T}/s/k"))
        self.assertEqual([r.action for r in part], ["s3:PutObject", "s3:GetObject"])

    def test_sse_kms(self):
        key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        via = {"kms:ViaService": "s3.us-east-1.amazonaws.com"}
        get = P.requests_for(call(operation="GetObject", resource=f"{T}/k", kms_key=key))
        self.assertEqual(summary(get)[1:], [("kms:Decrypt", key, via)])
        put = P.requests_for(call(operation="PutObject", resource=f"{T}/k", kms_key=key))
        self.assertEqual(summary(put)[1:], [("kms:GenerateDataKey", key, via)])
        part = P.requests_for(call(operation="UploadPart", resource=f"{T}/k", kms_key=key))
        self.assertEqual(summary(part)[1:], [("kms:Decrypt", key, via)])
        copy = P.requests_for(call(operation="CopyObject", resource=f"{T}/k", copy_source=f"{T}/s",
                                   tagging_directive="REPLACE", kms_key=key))
        self.assertEqual([r.action for r in copy][2:], ["kms:Decrypt", "kms:GenerateDataKey"])
        head = P.requests_for(call(operation="HeadObject", resource=f"{T}/k", kms_key=key))
        self.assertEqual([r.action for r in head], ["s3:GetObject"])

    def test_other_services(self):
        ssm = P.requests_for(call(service="ssm", operation="GetParameter",
                                  resource="arn:aws:ssm:us-east-1::parameter/drpilot/profiles/test"))
        self.assertEqual(summary(ssm), [("ssm:GetParameter",
                                         "arn:aws:ssm:us-east-1:123456789012:parameter/drpilot/profiles/test", {})])
        metric = P.requests_for(call(service="monitoring", operation="PutMetricData", resource="*",
                                     context={"cloudwatch:namespace": "DRPilot"}))
        self.assertEqual(summary(metric), [("cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "DRPilot"})])
        sts = P.requests_for(call(service="sts", operation="GetCallerIdentity", resource="*"))
        self.assertTrue(sts[0].needs_nothing)
        with self.assertRaises(KeyError):
            P.requests_for(call(operation="PutBucketPolicy", resource=T))


if __name__ == "__main__":
    unittest.main()
