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
# The fixture templates predate the components parameters; they get the parameters of
# their time (infra/permissions/test-parameters.json is the current template's).
PARAMETERS = FIXTURES / "test-parameters.json"
CURRENT_PARAMETERS = INFRA / "permissions" / "test-parameters.json"
TEMPLATE = INFRA / "template.yaml"

# infra/permissions.py sits next to the infra/permissions/ directory: load it by path.
_spec = importlib.util.spec_from_file_location("drpilot_permissions", CHECKER)
P = importlib.util.module_from_spec(_spec)
sys.modules["drpilot_permissions"] = P
_spec.loader.exec_module(P)


def check(template: Path, ledger: Path, parameters: Path = PARAMETERS) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECKER), "--template", str(template),
                           "--ledger", str(ledger), "--parameters", str(parameters)],
                          capture_output=True, text=True, timeout=300)


def DRILL_AND_COMPONENTS() -> str:
    """A whole drill of the phases before components (ledger-drill.jsonl), the calls the
    components, their teardown and the sample verifier make (ledger-components.jsonl), a
    failback of that drill's run, one call of each kind (ledger-failback.jsonl), and the
    evidence calls: approvals, the seals verified, audit copies and reports in the evidence
    bucket, readiness and the RTO watch (ledger-evidence.jsonl). Receipts are in the
    evidence bucket (E)."""
    return "".join((FIXTURES / name).read_text()
                   for name in ("ledger-drill.jsonl", "ledger-components.jsonl", "ledger-failback.jsonl",
                                "ledger-evidence.jsonl"))


CALLS = 222  # records in DRILL_AND_COMPONENTS()


def check_broken_template(test: unittest.TestCase, replacements: list[tuple[str, str]]) -> subprocess.CompletedProcess:
    """The permission check of DRILL_AND_COMPONENTS() against the current template with
    each (old, new) applied (each `old` must occur exactly once)."""
    broken = TEMPLATE.read_text()
    for old, new in replacements:
        test.assertEqual(broken.count(old), 1, old)
        broken = broken.replace(old, new)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Path(tmp) / "ledger.jsonl"
        ledger.write_text(DRILL_AND_COMPONENTS())
        # next to the template: DefinitionUri and CodeUri are relative to it
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=INFRA, delete=False) as f:
            f.write(broken)
        try:
            return check(Path(f.name), ledger, CURRENT_PARAMETERS)
        finally:
            Path(f.name).unlink()


def check_current(extra: list[dict] | None = None, replacements: list[tuple[str, str]] | None = None,
                  parameters: dict | None = None) -> subprocess.CompletedProcess:
    """The permission check of DRILL_AND_COMPONENTS() plus `extra` records against the current
    template with each (old, new) of `replacements` applied (each `old` exactly once) and the
    current parameters updated with `parameters`."""
    template = TEMPLATE.read_text()
    for old, new in replacements or []:
        if template.count(old) != 1:
            raise AssertionError(f"occurs {template.count(old)} times, expected once: {old!r}")
        template = template.replace(old, new)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Path(tmp) / "ledger.jsonl"
        ledger.write_text(DRILL_AND_COMPONENTS() + "".join(json.dumps(r) + "\n" for r in extra or []))
        params = Path(tmp) / "parameters.json"
        params.write_text(json.dumps({**json.loads(CURRENT_PARAMETERS.read_text()), **(parameters or {})}))
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=INFRA, delete=False) as f:
            f.write(template)
        try:
            return check(Path(f.name), ledger, params)
        finally:
            Path(f.name).unlink()


_MODEL = None


def current_model():
    """The current template's model, as the checker builds it with the current parameters."""
    global _MODEL
    if _MODEL is None:
        sam, cfn, params = P.translate(TEMPLATE, P.load_parameters(CURRENT_PARAMETERS))
        _MODEL = P.build_model(sam, cfn, params, INFRA)
    return _MODEL


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
E = "arn:aws:s3:::drpilot-evidence-123456789012-us-east-1"   # the evidence bucket of stack drpilot
KMS = "arn:aws:kms:us-east-1:123456789012"
STATES = "arn:aws:states:us-east-1:123456789012"


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

    def test_the_current_template_allows_what_the_components_and_their_cleanup_call(self):
        with tempfile.TemporaryDirectory() as tmp:
            ledger = Path(tmp) / "ledger.jsonl"
            ledger.write_text(DRILL_AND_COMPONENTS())
            out = check(TEMPLATE, ledger, CURRENT_PARAMETERS)
        text = out.stdout + out.stderr
        self.assertEqual(out.returncode, 0, text)
        self.assertNotIn("DENY", text)
        self.assertRegex(out.stdout, rf"\npermissions: {CALLS} calls checked, 0 denied, \d+ grants unexercised\n$")
        self.assertIn("unexercised: components rds:DescribeDBSnapshots on "
                      "arn:aws:rds:us-east-1:123456789012:snapshot:* (the code always filters", text)

    def test_the_components_grants_are_each_needed(self):
        tags = "              Action: [rds:AddTagsToResource, rds:DescribeDBInstances]\n"
        teardown = "              Action: [rds:DescribeDBInstances, rds:DeleteDBInstance]\n"
        passed_to = "                    iam:PassedToService: backup.amazonaws.com\n"
        out = check_broken_template(self, [
            (tags, "              Action: rds:DescribeDBInstances\n"),
            (teardown, "              Action: rds:DescribeDBInstances\n"),
            (passed_to, "                    iam:PassedToService: rds.amazonaws.com\n")])
        self.assertEqual(out.returncode, 1, out.stdout)
        self.assertIn("DENY components: RestoreDBInstanceFromDBSnapshot orders-drpilot-r1 -> needs "
                      "rds:AddTagsToResource on arn:aws:rds:us-east-1:123456789012:db:orders-drpilot-r1", out.stdout)
        self.assertIn("DENY teardown: DeleteDBInstance orders-drpilot-r1 -> needs rds:DeleteDBInstance on "
                      "arn:aws:rds:us-east-1:123456789012:db:orders-drpilot-r1", out.stdout)
        self.assertIn("DENY components: StartRestoreJob arn:aws:rds:us-east-1:123456789012:snapshot:awsbackup:job-1 "
                      "-> needs iam:PassRole on arn:aws:iam::123456789012:role/drpilot-backup-restore with "
                      "iam:PassedToService=backup.amazonaws.com", out.stdout)
        self.assertIn("which does not match", out.stdout)
        self.assertRegex(out.stdout, rf"\npermissions: {CALLS} calls checked, 4 denied")

    def test_the_failback_grants_are_each_needed(self):
        schedule = ('              Resource: !Sub "arn:${AWS::Partition}:scheduler:${AWS::Region}:${AWS::AccountId}'
                    ':schedule/default/${AWS::StackName}-monthly-drill"\n')
        primary = ("                Action: [s3:GetObject, s3:GetObjectTagging, s3:PutObject, s3:PutObjectTagging, "
                   "s3:DeleteObject, s3:AbortMultipartUpload]\n")
        out = check_broken_template(self, [
            (schedule, schedule.replace("schedule/default/", "schedule/other-group/")),
            (primary, primary.replace("s3:DeleteObject, ", ""))])
        self.assertEqual(out.returncode, 1, out.stdout)
        self.assertIn("DENY failback: GetSchedule /schedules/drpilot-monthly-drill -> needs scheduler:GetSchedule on "
                      "arn:aws:scheduler:us-east-1:123456789012:schedule/default/drpilot-monthly-drill", out.stdout)
        self.assertIn("DENY failback: DeleteObject s3://primary-data/root/old.txt -> needs s3:DeleteObject on "
                      "arn:aws:s3:::primary-data/root/old.txt", out.stdout)
        self.assertRegex(out.stdout, rf"\npermissions: {CALLS} calls checked, 2 denied")

    def test_the_failback_state_machine_is_checked_too(self):
        invoke = "        - LambdaInvokePolicy:\n            FunctionName: !Ref FailbackFunction\n"
        out = check_broken_template(self, [(invoke, "")])
        self.assertEqual(out.returncode, 1, out.stdout)
        for state in ("Preflight", "Divergence", "CopyBack", "Teardown"):
            self.assertIn(f"DENY FailbackStateMachineRole: FailbackStateMachine state {state} -> needs "
                          "lambda:InvokeFunction on arn:aws:lambda:us-east-1:123456789012:function:drpilot-failback",
                          out.stdout)
        self.assertNotIn("DENY DrillStateMachineRole", out.stdout)
        self.assertRegex(out.stdout, rf"\npermissions: {CALLS} calls checked, 0 denied")

    def test_the_evidence_grants_are_each_needed(self):
        teardown_receipts = ('            # run summary.\n'
                             '            - Effect: Allow\n'
                             '              Action: s3:GetObject\n'
                             '              Resource: !Sub "arn:${AWS::Partition}:s3:::${EvidenceBucket}/${ReceiptsPrefix}*"\n'
                             '            # Writes only its own records (docs/security.md): a compromised role of\n'
                             '            # another phase cannot forge or remove this one\'s, nor this one another\'s.\n'
                             '            - Effect: Allow\n'
                             '              Action: s3:PutObject\n'
                             '              Resource:\n'
                             '                - !Sub "arn:${AWS::Partition}:s3:::${EvidenceBucket}/${ReceiptsPrefix}runs/*/phases/*"\n'
                             '                - !Sub "arn:${AWS::Partition}:s3:::${EvidenceBucket}/${ReceiptsPrefix}runs/*/components/*"\n'
                             '                - !Sub "arn:${AWS::Partition}:s3:::${EvidenceBucket}/${ReceiptsPrefix}runs/*/drill.summary.json"\n')
        out = check_current(replacements=[
            # the approval key's policy lets approve verify instead of seal
            ("              AWS: !GetAtt ApproveFunctionRole.Arn\n            Action: kms:GenerateMac\n",
             "              AWS: !GetAtt ApproveFunctionRole.Arn\n            Action: kms:VerifyMac\n"),
            ("              Action: sns:Publish\n", "              Action: sns:GetTopicAttributes\n"),
            ("              Action: states:ListExecutions\n              Resource: !Ref DrillStateMachine\n",
             "              Action: states:ListExecutions\n              Resource: !Ref FailbackStateMachine\n"),
            # the receipts grant left on the target bucket (before issue 14)
            (teardown_receipts, teardown_receipts.replace("${EvidenceBucket}", "${TargetBucketName}"))])
        self.assertEqual(out.returncode, 1, out.stdout)
        key = current_model().kms_aliases["alias/drpilot-approval"]
        self.assertIn(f"DENY approve: GenerateMac alias/drpilot-approval -> needs kms:GenerateMac on {key} with "
                      "kms:MacAlgorithm=HMAC_SHA_256, kms:RequestAlias=alias/drpilot-approval (for alias "
                      "alias/drpilot-approval, authorized against its key)  (x2)", out.stdout)
        self.assertIn(f"DENY readiness: ListExecutions {STATES}:stateMachine:drpilot-drill -> needs states:ListExecutions "
                      f"on {STATES}:stateMachine:drpilot-drill", out.stdout)
        self.assertIn("DENY readiness: Publish arn:aws:sns:us-east-1:123456789012:drpilot-notifications -> needs "
                      "sns:Publish on arn:aws:sns:us-east-1:123456789012:drpilot-notifications", out.stdout)
        # Denials are grouped by resource pattern: the summary stands for the receipts too.
        self.assertIn(f"DENY teardown: PutObject {P.pretty(E)}/drpilot/receipts/runs/r1/drill.summary.json -> needs "
                      f"s3:PutObject on {E}/drpilot/receipts/runs/r1/drill.summary.json  (x9)", out.stdout)
        self.assertIn(f"DENY teardown: GetObject {P.pretty(E)}/drpilot/receipts/runs/r1/phases/teardown.json answered "
                      "404 -> needs s3:GetObject", out.stdout)
        self.assertNotIn("DENY promote", out.stdout, "promote's VerifyMac is untouched")
        self.assertRegex(out.stdout, rf"\npermissions: {CALLS} calls checked, \d+ denied")

    def test_receipts_in_the_target_bucket_are_denied(self):
        # What a function writing receipts where they were before issue 14 would be told.
        out = check_current(extra=[record(function="promote", operation="PutObject",
                                          resource=f"{T}/drpilot/receipts/runs/r1/phases/promote.json")])
        self.assertEqual(out.returncode, 1, out.stdout)
        self.assertIn("DENY promote: PutObject s3://target-data/drpilot/receipts/runs/r1/phases/promote.json -> needs "
                      "s3:PutObject on arn:aws:s3:::target-data/drpilot/receipts/runs/r1/phases/promote.json", out.stdout)
        self.assertRegex(out.stdout, rf"\npermissions: {CALLS + 1} calls checked, 1 denied")

    def test_a_kms_alias_the_template_does_not_define_fails_naming_it(self):
        out = check_current(extra=[record(function="approve", service="kms", operation="GenerateMac", resource="*",
                                          params={"KeyId": "alias/someone-elses-key", "MacAlgorithm": "HMAC_SHA_256"})])
        self.assertEqual(out.returncode, 1, out.stdout)
        self.assertIn(f"FAIL ledger line {CALLS + 1}: GenerateMac names KMS alias alias/someone-elses-key, which no "
                      "AWS::KMS::Alias of the template defines (known: alias/drpilot-approval)", out.stdout)

    def test_the_approval_key_policy_decides_too(self):
        # Without the key policy's VerifyMac statement, promote and failback are denied, and
        # an IAM grant cannot stand in for it: the key policy delegates no cryptographic
        # operation to the account root, so KMS does not consult IAM policies for VerifyMac
        # (the template's own KeyPolicy is evaluated, not the default one).
        verify = ("          - Sid: PromoteAndFailbackVerify\n            Effect: Allow\n            Principal:\n"
                  "              AWS:\n                - !GetAtt PromoteFunctionRole.Arn\n"
                  "                - !GetAtt FailbackFunctionRole.Arn\n            Action: kms:VerifyMac\n"
                  "            Resource: \"*\"\n")
        promote = ("            # The approval's seal is verified (kms:VerifyMac) before copying: granted by the\n"
                   "            # approval key's policy (ApprovalKey), not here.\n")
        iam_grant = ("            - Effect: Allow\n              Action: kms:VerifyMac\n"
                     "              Resource: !Sub \"arn:${AWS::Partition}:kms:${AWS::Region}:${AWS::AccountId}:key/*\"\n")
        out = check_current(replacements=[(verify, ""), (promote, promote + iam_grant)])
        self.assertEqual(out.returncode, 1, out.stdout)
        self.assertIn("DENY promote: VerifyMac alias/drpilot-approval -> needs kms:VerifyMac", out.stdout)
        self.assertIn("DENY failback: VerifyMac alias/drpilot-approval -> needs kms:VerifyMac", out.stdout)
        self.assertNotIn("DENY approve", out.stdout)
        self.assertRegex(out.stdout, rf"\npermissions: {CALLS} calls checked, 2 denied")

    def test_the_functions_name_the_approval_key_by_its_arn(self):
        # What the deployed functions record (DRPILOT_APPROVAL_KEY is the key ARN), checked
        # with the key policy; and a seal by promote, which the key policy denies.
        key = current_model().resolver.get_att("ApprovalKey", "Arn")

        def mac(function, op):
            return record(function=function, service="kms", operation=op, resource="*",
                          params={"KeyId": key, "MacAlgorithm": "HMAC_SHA_256", "Message": "bQ=="})
        allowed = check_current(extra=[mac("approve", "GenerateMac"), mac("promote", "VerifyMac"),
                                       mac("failback", "VerifyMac")])
        self.assertEqual(allowed.returncode, 0, allowed.stdout)
        self.assertRegex(allowed.stdout, rf"\npermissions: {CALLS + 3} calls checked, 0 denied")
        denied = check_current(extra=[mac("approve", "GenerateMac"), mac("promote", "GenerateMac")])
        self.assertEqual(denied.returncode, 1, denied.stdout)
        self.assertIn(f"DENY promote: GenerateMac {key} -> needs kms:GenerateMac on {key} with "
                      "kms:MacAlgorithm=HMAC_SHA_256", denied.stdout)
        self.assertRegex(denied.stdout, rf"\npermissions: {CALLS + 2} calls checked, 1 denied")

    def test_keys_under_different_key_policies_are_never_one_simulation(self):
        # promote's role names neither key, so its patterns cannot tell them apart; the
        # approval key's policy allows promote's VerifyMac, another key's (the default policy,
        # IAM decides) does not: the second call must not reuse the first one's answer.
        key = current_model().resolver.get_att("ApprovalKey", "Arn")
        other = f"{KMS}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        out = check_current(extra=[
            record(function="promote", service="kms", operation="VerifyMac", resource="*",
                   params={"KeyId": k, "MacAlgorithm": "HMAC_SHA_256"}) for k in (key, other)])
        self.assertEqual(out.returncode, 1, out.stdout)
        self.assertIn(f"DENY promote: VerifyMac {other} -> needs kms:VerifyMac on {other}", out.stdout)
        self.assertNotIn(f"DENY promote: VerifyMac {key}", out.stdout)
        self.assertRegex(out.stdout, rf"\npermissions: {CALLS + 2} calls checked, 1 denied")

    def test_readiness_reads_the_backup_keys(self):
        key = f"{KMS}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        extra = [
            record(function="readiness", service="kms", operation="GetKeyRotationStatus", resource="*",
                   params={"KeyId": key}),
            record(function="readiness", service="kms", operation="DescribeKey", resource="*", params={"KeyId": key}),
            # an SSE-KMS metadata.json: GetObject decrypts (HeadObject would not)
            record(function="readiness", operation="GetObject",
                   resource="arn:aws:s3:::backup-store/prod/backups/b2/metadata.json", kms_key=key),
        ]
        out = check_current(extra=extra, parameters={"DataKmsKeyArns": key})
        self.assertEqual(out.returncode, 0, out.stdout)
        self.assertRegex(out.stdout, rf"\npermissions: {CALLS + 3} calls checked, 0 denied")
        for action in ("kms:GetKeyRotationStatus", "kms:DescribeKey"):
            self.assertNotIn(f"unexercised: readiness {action}", out.stdout)
        self.assertNotRegex(out.stdout, r"unexercised: readiness kms:Decrypt on .*ViaService=s3")
        # Without DataKmsKeyArns the statements are left out: the same calls are denied.
        denied = check_current(extra=extra)
        self.assertEqual(denied.returncode, 1, denied.stdout)
        self.assertIn(f"DENY readiness: GetKeyRotationStatus {key} -> needs kms:GetKeyRotationStatus on {key}",
                      denied.stdout)
        self.assertIn(f"DENY readiness: GetObject s3://backup-store/prod/backups/b2/metadata.json -> needs kms:Decrypt "
                      f"on {key} with kms:ViaService=s3.us-east-1.amazonaws.com (for an SSE-KMS object read)",
                      denied.stdout)

    def test_the_readiness_schedules_are_checked_statically(self):
        out = check_current()
        self.assertEqual(out.returncode, 0, out.stdout)
        self.assertNotIn("ReadinessFunctionReadinessScheduleRole lambda:InvokeFunction", out.stdout)
        self.assertNotIn("unexercised: ReadinessFunctionRtoWatchScheduleRole", out.stdout)
        model = current_model()
        static, problems = P.state_machine_requests(model)
        self.assertEqual(problems, [])
        invokes = sorted((role.logical, req.action, req.resource) for role, req, _ in static
                         if role.logical.startswith("ReadinessFunction"))
        readiness = "arn:aws:lambda:us-east-1:123456789012:function:drpilot-readiness"
        self.assertEqual(invokes, [("ReadinessFunctionReadinessScheduleRole", "lambda:InvokeFunction", readiness),
                                   ("ReadinessFunctionRtoWatchScheduleRole", "lambda:InvokeFunction", readiness)])


class ApprovalKeyPolicy(unittest.TestCase):
    """The approval key's policy, evaluated as the check evaluates the ledger (P.decide):
    only approve seals, only promote and failback verify, and no IAM policy, an account
    administrator's included, lets anyone else."""

    @classmethod
    def setUpClass(cls):
        cls.model = current_model()
        cls.key = cls.model.resolver.get_att("ApprovalKey", "Arn")

    def request(self, op, key_id=None):
        (req,) = P.requests_for(call(function="approve", service="kms", operation=op, resource="*",
                                     params={"KeyId": key_id or self.key, "MacAlgorithm": "HMAC_SHA_256"}),
                                self.model.kms_aliases)
        return req

    def role(self, binary):
        return self.model.functions[binary].role

    def decisions(self, *triples):
        """(role, op[, key id]) -> the decisions, in order."""
        requests = [(role, "session", self.request(op, *rest)) for role, op, *rest in triples]
        return [r["decision"] for r in P.decide(self.model, requests)]

    def test_an_account_administrator_cannot_seal_or_verify(self):
        admin = P.Role(logical="AccountAdministrator", name="Administrator", statements=[
            P.Statement(sid="S1", policy="AdministratorAccess", document={"Effect": "Allow", "Action": "*", "Resource": "*"})])
        other = f"{KMS}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        self.assertEqual(self.decisions((admin, "GenerateMac"), (admin, "GenerateMac", "alias/drpilot-approval"),
                                        (admin, "VerifyMac"), (admin, "VerifyMac", "alias/drpilot-approval")),
                         ["ExplicitlyDenied"] * 4)
        # The same principal administers the key, and may use a key whose policy lets IAM decide.
        self.assertEqual(self.decisions((admin, "DescribeKey"), (admin, "GenerateMac", other)), ["Allowed", "Allowed"])

    def test_promote_and_failback_cannot_seal_and_approve_cannot_verify(self):
        self.assertEqual(self.decisions((self.role("promote"), "GenerateMac"), (self.role("failback"), "GenerateMac"),
                                        (self.role("approve"), "VerifyMac")), ["ExplicitlyDenied"] * 3)
        # Not even with an IAM grant of their own.
        promote = self.role("promote")
        granted = P.Role(logical=promote.logical, name=promote.name, statements=promote.statements + [
            P.Statement(sid="Extra", policy="extra", document={"Effect": "Allow", "Action": "kms:GenerateMac",
                                                                "Resource": self.key})])
        self.assertEqual(self.decisions((granted, "GenerateMac")), ["ExplicitlyDenied"])

    def test_the_key_policy_alone_lets_each_function_do_its_one_operation(self):
        triples = [(self.role("approve"), "GenerateMac"), (self.role("promote"), "VerifyMac"),
                   (self.role("failback"), "VerifyMac")]
        results = P.decide(self.model, [(role, "session", self.request(op)) for role, op in triples])
        self.assertEqual([r["decision"] for r in results], ["Allowed"] * 3)
        # Allowed by the key policy, not by an identity statement: the roles hold no MAC grant
        # (one naming the key would make the stack's dependencies circular).
        self.assertEqual([r["allow"] for r in results], [[], [], []])
        for binary in ("approve", "promote", "failback"):
            for stmt in self.role(binary).statements:
                self.assertFalse({"kms:GenerateMac", "kms:VerifyMac", "kms:*"} & set(P.as_list(stmt.document.get("Action"))),
                                 (binary, stmt.document))

    def test_the_account_root_administers_the_key_and_uses_it_not(self):
        policy = self.model.key_policies[self.key]
        root = [s for s in policy["Statement"] if s.get("Principal") == {"AWS": "arn:aws:iam::123456789012:root"}]
        self.assertEqual(len(root), 1)
        actions = P.as_list(root[0]["Action"])
        self.assertIn("kms:ScheduleKeyDeletion", actions)
        for crypto in ("kms:GenerateMac", "kms:VerifyMac"):
            self.assertFalse([a for a in actions if P.glob_regex(a.lower()).fullmatch(crypto.lower())], actions)


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

    def test_rds_restore_needs_every_resource_it_touches_and_the_tags(self):
        reqs = P.requests_for(call(function="components", service="rds", operation="RestoreDBInstanceFromDBSnapshot",
                                   params={"DBInstanceIdentifier": "Orders-drpilot-r1",
                                           "DBSnapshotIdentifier": "rds:orders-prod-2026-03-01-00-05",
                                           "DBSubnetGroupName": "dr-subnets",
                                           "Tags.Tag.1.Key": "drpilot:run-id", "Tags.Tag.1.Value": "r1",
                                           "VpcSecurityGroupIds.VpcSecurityGroupId.1": "sg-1"}))
        rds = "arn:aws:rds:us-east-1:123456789012"
        tag = {"aws:RequestTag/drpilot:run-id": "r1"}
        self.assertEqual(summary(reqs), [
            ("rds:RestoreDBInstanceFromDBSnapshot", f"{rds}:db:orders-drpilot-r1", tag),
            ("rds:RestoreDBInstanceFromDBSnapshot", f"{rds}:snapshot:rds:orders-prod-2026-03-01-00-05", {}),
            ("rds:RestoreDBInstanceFromDBSnapshot", f"{rds}:subgrp:dr-subnets", {}),
            ("rds:RestoreDBInstanceFromDBSnapshot", f"{rds}:og:{P.UNNAMED_GROUP}", {}),
            ("rds:RestoreDBInstanceFromDBSnapshot", f"{rds}:pg:{P.UNNAMED_GROUP}", {}),
            ("rds:AddTagsToResource", f"{rds}:db:orders-drpilot-r1", tag)])
        bare = P.requests_for(call(service="rds", operation="RestoreDBInstanceFromDBSnapshot",
                                   params={"DBInstanceIdentifier": "x-drpilot-r1", "DBSnapshotIdentifier": "s",
                                           "OptionGroupName": "og1"}))
        self.assertEqual([r.resource.rsplit(":", 2)[-2:] for r in bare],
                         [["db", "x-drpilot-r1"], ["snapshot", "s"], ["subgrp", "default"], ["og", "og1"],
                          ["pg", P.UNNAMED_GROUP]], "no Tags: no rds:AddTagsToResource")
        with self.assertRaises(P.CheckError):
            P.requests_for(call(service="rds", operation="RestoreDBInstanceFromDBSnapshot", params={}))

    def test_rds_describe_and_delete(self):
        rds = "arn:aws:rds:us-east-1:123456789012"
        instances = P.requests_for(call(service="rds", operation="DescribeDBInstances",
                                        params={"DBInstanceIdentifier": "orders-drpilot-r1"}))
        self.assertEqual(summary(instances), [("rds:DescribeDBInstances", f"{rds}:db:orders-drpilot-r1", {})])
        listing = P.requests_for(call(service="rds", operation="DescribeDBInstances"))
        self.assertEqual(listing[0].resource, f"{rds}:db:*")
        snapshots = P.requests_for(call(service="rds", operation="DescribeDBSnapshots",
                                        params={"DBInstanceIdentifier": "orders-prod"}))
        self.assertEqual(summary(snapshots), [("rds:DescribeDBSnapshots", f"{rds}:db:orders-prod", {})])
        delete = P.requests_for(call(service="rds", operation="DeleteDBInstance",
                                     params={"DBInstanceIdentifier": "orders-drpilot-r1", "SkipFinalSnapshot": "true",
                                             "DeleteAutomatedBackups": "true"}))
        self.assertEqual(summary(delete), [("rds:DeleteDBInstance", f"{rds}:db:orders-drpilot-r1", {})])
        final = P.requests_for(call(service="rds", operation="DeleteDBInstance",
                                    params={"DBInstanceIdentifier": "a", "FinalDBSnapshotIdentifier": "a-final"}))
        self.assertEqual([(r.action, r.resource) for r in final][1:],
                         [("rds:CreateDBSnapshot", f"{rds}:snapshot:a-final")])
        with self.assertRaises(KeyError):
            P.requests_for(call(service="rds", operation="ModifyDBInstance", params={"DBInstanceIdentifier": "a"}))

    def test_lambda_functions_in_every_form_of_name(self):
        fn = "arn:aws:lambda:us-east-1:123456789012:function"
        cases = {
            "/2015-03-31/functions/drpilot-sample-verifier": ("GetFunction", f"{fn}:drpilot-sample-verifier"),
            "/2015-03-31/functions/verify:live/invocations": ("Invoke", f"{fn}:verify:live"),
            f"/2015-03-31/functions/{fn}:verify/invocations": ("Invoke", f"{fn}:verify"),
            "/2015-03-31/functions/123456789012:function:verify/invocations": ("Invoke", f"{fn}:verify"),
        }
        for path, (op, arn) in cases.items():
            reqs = P.requests_for(call(function="components", service="lambda", operation=op,
                                       params={"path": path, "run_id": "r1"}))
            action = "lambda:InvokeFunction" if op == "Invoke" else "lambda:GetFunction"
            self.assertEqual(summary(reqs), [(action, arn, {})], path)
        qualified = P.requests_for(call(service="lambda", operation="Invoke",
                                        params={"path": "/2015-03-31/functions/verify/invocations",
                                                "query.Qualifier": "7"}))
        self.assertEqual(qualified[0].resource, f"{fn}:verify:7")
        with self.assertRaises(P.CheckError):
            P.requests_for(call(service="lambda", operation="Invoke", params={}))

    def test_aws_backup(self):
        point = "arn:aws:rds:us-east-1:123456789012:snapshot:awsbackup:job-1"
        vault = "arn:aws:backup:us-east-1:123456789012:backup-vault:dr-vault"
        listing = P.requests_for(call(service="backup", operation="ListRecoveryPointsByBackupVault",
                                      params={"path": "/backup-vaults/dr-vault/recovery-points",
                                              "query.byResourceArn": "arn:aws:rds:us-east-1:123456789012:db:orders"}))
        self.assertEqual(summary(listing), [("backup:ListRecoveryPointsByBackupVault", vault, {})])
        ebs = "arn:aws:ec2:us-east-1::snapshot/snap-1"   # a recovery point ARN holding a "/"
        metadata = P.requests_for(call(service="backup", operation="GetRecoveryPointRestoreMetadata",
                                       params={"path": f"/backup-vaults/dr-vault/recovery-points/{ebs}/restore-metadata"}))
        self.assertEqual(summary(metadata), [("backup:GetRecoveryPointRestoreMetadata", ebs, {})])
        role = "arn:aws:iam::123456789012:role/drpilot-backup-restore"
        start = P.requests_for(call(service="backup", operation="StartRestoreJob",
                                    params={"path": "/restore-jobs", "RecoveryPointArn": point, "IamRoleArn": role,
                                            "Metadata": "{}"}))
        self.assertEqual(summary(start), [("backup:StartRestoreJob", point, {}),
                                          ("iam:PassRole", role, {"iam:PassedToService": "backup.amazonaws.com"})])
        for op, path in (("DescribeRestoreJob", "/restore-jobs/j1"),
                         ("PutRestoreValidationResult", "/restore-jobs/j1/validations")):
            self.assertEqual(summary(P.requests_for(call(service="backup", operation=op, params={"path": path}))),
                             [(f"backup:{op}", "*", {})])

    def test_run_command(self):
        ec2 = "arn:aws:ec2:us-east-1:123456789012:instance"
        managed = "arn:aws:ssm:us-east-1:123456789012:managed-instance"
        sent = P.requests_for(call(function="components", service="ssm", operation="SendCommand",
                                   params={"DocumentName": "AWS-RunShellScript", "InstanceIds": "i-0abc,mi-0def"}))
        self.assertEqual([(r.action, r.resource, r.kind) for r in sent], [
            ("ssm:SendCommand", "arn:aws:ssm:us-east-1::document/AWS-RunShellScript", "aws-owned"),
            ("ssm:SendCommand", f"{ec2}/i-0abc", "call"),
            ("ssm:SendCommand", f"{managed}/mi-0def", "call")])
        own = P.requests_for(call(service="ssm", operation="SendCommand",
                                  params={"DocumentName": "restore-test",
                                          "Targets": json.dumps([{"Key": "tag:Role", "Values": ["pg"]}])}))
        self.assertEqual([r.resource for r in own], [
            "arn:aws:ssm:us-east-1:123456789012:document/restore-test",
            f"{ec2}/{P.TARGET_INSTANCES}", f"{managed}/{P.TARGET_INSTANCES}"])
        by_id = P.requests_for(call(service="ssm", operation="SendCommand",
                                    params={"DocumentName": "AWS-RunShellScript",
                                            "Targets": json.dumps([{"Key": "InstanceIds", "Values": ["i-1"]}])}))
        self.assertEqual([r.resource for r in by_id][1:], [f"{ec2}/i-1"])
        for op in ("GetCommandInvocation", "ListCommandInvocations"):
            self.assertEqual(summary(P.requests_for(call(service="ssm", operation=op, params={"CommandId": "c"}))),
                             [(f"ssm:{op}", "*", {})])
        with self.assertRaises(P.CheckError):
            P.requests_for(call(service="ssm", operation="SendCommand", params={}))

    def test_an_aws_owned_document_is_matched_without_the_simulator(self):
        document = "arn:aws:ssm:us-east-1::document/AWS-RunShellScript"

        def role(*statements):
            r = P.Role(logical="R", name="r")
            r.statements = [P.Statement(sid=f"S{i}", policy="p", document=s) for i, s in enumerate(statements)]
            return r

        def decide(r):
            return P.evaluate_locally(r, {"id": 0, "action": "ssm:SendCommand", "resource": document})

        allow = {"Effect": "Allow", "Action": "ssm:sendcommand", "Resource": "arn:aws:ssm:*::document/AWS-Run*"}
        allowed = decide(role(allow))
        self.assertEqual(allowed["decision"], "Allowed")
        self.assertEqual(allowed["allow"], [{"sid": "S0", "actions": ["ssm:sendcommand"],
                                              "resources": ["arn:aws:ssm:*::document/AWS-Run*"]}])
        own_account = dict(allow, Resource="arn:aws:ssm:us-east-1:123456789012:document/AWS-RunShellScript")
        self.assertEqual(decide(role(own_account))["decision"], "ImplicitlyDenied")
        conditioned = dict(allow, Condition={"StringEquals": {"aws:ResourceTag/x": "y"}})
        near = decide(role(conditioned))
        self.assertEqual(near["decision"], "ImplicitlyDenied")
        self.assertEqual(near["nearMisses"][0]["sid"], "S0")
        self.assertEqual(decide(role(allow, dict(allow, Effect="Deny")))["decision"], "ExplicitlyDenied")
        self.assertEqual(decide(role({"Effect": "Allow", "NotAction": "s3:*", "Resource": "*"}))["decision"], "Allowed")

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
        with self.assertRaises(KeyError):
            P.requests_for(call(service="backup", operation="DeleteRecoveryPoint", params={"path": "/x"}))

    def test_eventbridge_scheduler(self):
        schedule = "arn:aws:scheduler:us-east-1:123456789012:schedule"
        got = P.requests_for(call(function="failback", service="scheduler", operation="GetSchedule",
                                  params={"path": "/schedules/drpilot-monthly-drill", "query.groupName": "default"}))
        self.assertEqual(summary(got), [("scheduler:GetSchedule", f"{schedule}/default/drpilot-monthly-drill", {})])
        grouped = P.requests_for(call(service="scheduler", operation="GetSchedule", region="eu-west-1",
                                      params={"path": "/schedules/drill", "query.groupName": "dr-schedules"}))
        self.assertEqual(summary(grouped), [("scheduler:GetSchedule",
                                             "arn:aws:scheduler:eu-west-1:123456789012:schedule/dr-schedules/drill", {})])
        ungrouped = P.requests_for(call(service="scheduler", operation="GetSchedule",
                                        params={"path": "/schedules/drill"}))
        self.assertEqual(ungrouped[0].resource, f"{schedule}/default/drill", "no groupName: the default group")
        self.assertEqual(call(service="scheduler", operation="GetSchedule",
                              params={"path": "/schedules/drill"}).describe(), "GetSchedule /schedules/drill")
        for path in ("", "/schedules", "/schedules/", "/schedules/a/b", "/schedule-groups/default"):
            with self.assertRaises(P.CheckError, msg=path):
                P.requests_for(call(service="scheduler", operation="GetSchedule", params={"path": path}))
        for op in ("UpdateSchedule", "CreateSchedule", "DeleteSchedule", "ListSchedules"):
            with self.assertRaises(KeyError, msg=op):
                P.requests_for(call(service="scheduler", operation=op, params={"path": "/schedules/drill"}))

    def test_kms_aliases_resolve_to_the_template_key(self):
        model = current_model()
        key = model.resolver.get_att("ApprovalKey", "Arn")
        self.assertEqual(model.kms_aliases, {"alias/drpilot-approval": key})
        self.assertEqual(model.key_policies[key]["Statement"][0]["Principal"],
                         {"AWS": "arn:aws:iam::123456789012:root"})
        aliases = model.kms_aliases
        for key_id in ("alias/drpilot-approval", f"{KMS}:alias/drpilot-approval"):
            for op in ("GenerateMac", "VerifyMac"):
                reqs = P.requests_for(call(function="approve", service="kms", operation=op, resource="*",
                                           params={"KeyId": key_id, "MacAlgorithm": "HMAC_SHA_256"}), aliases)
                self.assertEqual(summary(reqs), [(f"kms:{op}", key, {"kms:RequestAlias": "alias/drpilot-approval",
                                                                      "kms:MacAlgorithm": "HMAC_SHA_256"})], key_id)
        described = P.requests_for(call(service="kms", operation="DescribeKey", resource="*",
                                        params={"KeyId": "alias/drpilot-approval"}), aliases)
        self.assertEqual(summary(described), [("kms:DescribeKey", key, {"kms:RequestAlias": "alias/drpilot-approval"})])
        # a key id or key ARN is the key itself, no alias involved
        bare = P.requests_for(call(service="kms", operation="GetKeyRotationStatus", resource="*",
                                   params={"KeyId": "1234abcd-12ab-34cd-56ef-1234567890ab"}), aliases)
        self.assertEqual(summary(bare), [("kms:GetKeyRotationStatus", f"{KMS}:key/1234abcd-12ab-34cd-56ef-1234567890ab", {})])

    def test_kms_calls_that_cannot_be_checked_fail(self):
        aliases = {"alias/drpilot-approval": f"{KMS}:key/k"}
        with self.assertRaisesRegex(P.CheckError, "alias/unknown, which no AWS::KMS::Alias of the template defines"):
            P.requests_for(call(service="kms", operation="GenerateMac", params={"KeyId": "alias/unknown"}), aliases)
        with self.assertRaisesRegex(P.CheckError, "KMS alias alias/drpilot-approval, which no"):
            P.requests_for(call(service="kms", operation="VerifyMac", params={"KeyId": "alias/drpilot-approval"}))
        with self.assertRaisesRegex(P.CheckError, "GetKeyRotationStatus names alias alias/drpilot-approval, but KMS "
                                                  "takes only a key id or key ARN"):
            P.requests_for(call(service="kms", operation="GetKeyRotationStatus",
                                params={"KeyId": "alias/drpilot-approval"}), aliases)
        with self.assertRaisesRegex(P.CheckError, "without KeyId"):
            P.requests_for(call(service="kms", operation="GenerateMac", params={}), aliases)
        for op in ("Encrypt", "Sign", "ScheduleKeyDeletion"):
            with self.assertRaises(KeyError, msg=op):
                P.requests_for(call(service="kms", operation=op, params={"KeyId": "alias/drpilot-approval"}), aliases)

    def test_step_functions(self):
        execution = f"{STATES}:execution:drpilot-drill:r1"
        machine = f"{STATES}:stateMachine:drpilot-drill"
        for op in ("DescribeExecution", "GetExecutionHistory"):
            reqs = P.requests_for(call(function="approve", service="sfn", operation=op, params={"executionArn": execution}))
            self.assertEqual(summary(reqs), [(f"states:{op}", execution, {})])
        listed = P.requests_for(call(function="readiness", service="sfn", operation="ListExecutions",
                                     params={"stateMachineArn": machine, "statusFilter": "RUNNING"}))
        self.assertEqual(summary(listed), [("states:ListExecutions", machine, {})])
        for op in ("SendTaskSuccess", "SendTaskFailure"):
            reqs = P.requests_for(call(function="approve", service="sfn", operation=op, params={"taskToken": "AQC..."}))
            self.assertEqual(summary(reqs), [(f"states:{op}", "*", {})], "no resource type: *")
        self.assertEqual(call(service="sfn", operation="DescribeExecution", params={"executionArn": execution}).describe(),
                         f"DescribeExecution {execution}")
        with self.assertRaisesRegex(P.CheckError, "without executionArn"):
            P.requests_for(call(service="sfn", operation="DescribeExecution", params={}))
        with self.assertRaisesRegex(P.CheckError, "without taskToken"):
            P.requests_for(call(service="sfn", operation="SendTaskSuccess", params={}))
        with self.assertRaises(KeyError):
            P.requests_for(call(service="sfn", operation="UpdateStateMachine", params={"stateMachineArn": machine}))

    def test_sns_publish(self):
        topic = "arn:aws:sns:us-east-1:123456789012:drpilot-notifications"
        reqs = P.requests_for(call(function="readiness", service="sns", operation="Publish",
                                   params={"TopicArn": topic, "Message": "m"}))
        self.assertEqual(summary(reqs), [("sns:Publish", topic, {})])
        with self.assertRaisesRegex(P.CheckError, "without TopicArn or TargetArn"):
            P.requests_for(call(service="sns", operation="Publish", params={"PhoneNumber": "+100"}))
        with self.assertRaises(KeyError):
            P.requests_for(call(service="sns", operation="Subscribe", params={"TopicArn": topic}))

    def test_cloudwatch_by_either_service_name(self):
        for service in ("cloudwatch", "monitoring"):
            reqs = P.requests_for(call(function="readiness", service=service, operation="PutMetricData", resource="*",
                                       context={"cloudwatch:namespace": "DRPilot"}))
            self.assertEqual(summary(reqs), [("cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "DRPilot"})])

    def test_object_lock_and_versions(self):
        key = f"{E}/drpilot/receipts/runs/r1/run.json"
        lock = P.requests_for(call(operation="GetObjectLockConfiguration", resource=E + "/"))
        self.assertEqual(summary(lock), [("s3:GetBucketObjectLockConfiguration", E, {})])
        self.assertEqual([r.action for r in P.requests_for(call(operation="GetObjectRetention", resource=key))],
                         ["s3:GetObjectRetention"])
        # A PutObject to a versioned bucket answers with a version id but names none.
        self.assertEqual(summary(P.requests_for(call(operation="PutObject", resource=key))), [("s3:PutObject", key, {})])
        version = {"s3:versionid": "3HL4kqtJlcpXroDTDmJ"}
        got = P.requests_for(call(operation="GetObject", resource=key, context=version))
        self.assertEqual(summary(got), [("s3:GetObjectVersion", key, version)])
        head = P.requests_for(call(operation="HeadObject", resource=key, params={"query.versionId": "v1"},
                                   status=404, error="404"))
        self.assertEqual(summary(head), [("s3:GetObjectVersion", key, {"s3:versionid": "v1"}), ("s3:ListBucket", E, {})])
        deleted = P.requests_for(call(operation="DeleteObject", resource=key, context=version))
        self.assertEqual([r.action for r in deleted], ["s3:DeleteObjectVersion"])
        tags = P.requests_for(call(operation="GetObjectTagging", resource=key, context=version))
        self.assertEqual([r.action for r in tags], ["s3:GetObjectVersionTagging"])
        # Explicit retention or a legal hold on a write needs its own permission.
        locked = P.requests_for(call(operation="PutObject", resource=key,
                                     context={"s3:object-lock-mode": "COMPLIANCE",
                                              "s3:object-lock-retain-until-date": "2029-01-01T00:00:00Z"}))
        self.assertEqual([r.action for r in locked], ["s3:PutObject", "s3:PutObjectRetention"])
        held = P.requests_for(call(operation="CreateMultipartUpload", resource=key,
                                   context={"s3:object-lock-legal-hold": "ON"}))
        self.assertEqual([r.action for r in held], ["s3:PutObject", "s3:PutObjectLegalHold"])

    def test_the_evidence_bucket_name_derives_from_the_stack(self):
        model = current_model()
        self.assertEqual(model.resolver.ref("EvidenceBucket"), "drpilot-evidence-123456789012-us-east-1")
        self.assertEqual(f"arn:aws:s3:::{model.resolver.ref('EvidenceBucket')}", E)
        for binary in ("approve", "readiness"):
            fn = model.functions[binary]
            self.assertEqual((fn.name, fn.role.logical),
                             (f"drpilot-{binary}", f"{binary.capitalize()}FunctionRole"))

    def test_an_unmapped_scheduler_operation_fails_naming_it(self):
        with tempfile.TemporaryDirectory() as tmp:
            ledger = Path(tmp) / "ledger.jsonl"
            ledger.write_text(DRILL_AND_COMPONENTS() + json.dumps(record(
                function="failback", service="scheduler", operation="UpdateSchedule", resource="*",
                params={"path": "/schedules/drpilot-monthly-drill"})) + "\n")
            out = check(TEMPLATE, ledger, CURRENT_PARAMETERS)
        self.assertEqual(out.returncode, 1, out.stdout)
        self.assertIn("FAIL unmapped operation scheduler:UpdateSchedule (1 calls)", out.stdout)


if __name__ == "__main__":
    unittest.main()
