#!/usr/bin/env python3
"""Every check in infra/check.py can fail: each case runs check.py (`--only` the check under
test) against a mutated copy of the template or a state machine (the drill's or the
failback's), laid out like the repository, and expects that check to fail, for the machine
the mutation broke only (a state-machine check runs once per machine); the real files must
pass every check (check.py run as a command, exit status 0). Also covers
infra/rule_input.py's command line.

Run with .venv-infra's Python: `python -m unittest infra/test_check.py` or
`python infra/test_check.py`. The mutated cases call check.py's main() in this process (so
cfn-lint's template decoder is imported once, not once per case) on a few threads; the
external tools (cfn-lint, sam, asl-validator, node) still run as processes. The whole file
takes about as long as one full check.py run.
"""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tempfile
import unittest
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

INFRA = Path(__file__).resolve().parent
ROOT = INFRA.parent
CHECK = INFRA / "check.py"
RULE_INPUT = INFRA / "rule_input.py"
TEMPLATE = INFRA / "template.yaml"
ASL = ROOT / "statemachine" / "drill.asl.json"
FAILBACK_ASL = ROOT / "statemachine" / "failback.asl.json"
ALARM_FIXTURE = ROOT / "shared" / "tests" / "fixtures" / "alarm-state-change.json"
PYTHON = sys.executable


def replace_once(text: str, old: str, new: str) -> str:
    """`old` must occur exactly once, so a template change cannot silently void a case."""
    count = text.count(old)
    if count != 1:
        raise AssertionError(f"mutation target occurs {count} times, expected once: {old!r}")
    return text.replace(old, new)


def yaml_edit(old: str, new: str) -> Callable[[str], str]:
    return lambda text: replace_once(text, old, new)


def asl_edit(change: Callable[[dict], None]) -> Callable[[str], str]:
    def edit(text: str) -> str:
        asl = json.loads(text)
        change(asl)
        return json.dumps(asl, indent=2)
    return edit


def states(asl: dict) -> dict:
    return asl["States"]


DRILL, FAILBACK = "DrillStateMachine", "FailbackStateMachine"


@dataclass
class Case:
    """check.py --only `check` on a copy of the files, with `template`/`asl` (the drill's
    ASL)/`failback` (the failback's ASL) applied. A state-machine check must fail for
    `machine` (by default the failback when `failback` is set, else the drill) and pass for
    every other machine; `detail`, if set, must be in the output."""
    check: str
    template: Callable[[str], str] | None = None
    asl: Callable[[str], str] | None = None
    failback: Callable[[str], str] | None = None
    machine: str | None = None
    detail: str | None = None

    @property
    def failing_machine(self) -> str:
        return self.machine or (FAILBACK if self.failback else DRILL)


def _state(asl: dict, name: str) -> dict:
    """The state `name`, wherever it is (nested Parallel branches and Map processors too)."""
    def find(states_: dict) -> dict | None:
        for key, state in states_.items():
            if key == name:
                return state
            nested = [b.get("States", {}) for b in state.get("Branches", [])]
            if state.get("ItemProcessor"):
                nested.append(state["ItemProcessor"].get("States", {}))
            for inner in nested:
                found = find(inner)
                if found is not None:
                    return found
        return None
    found = find(states(asl))
    assert found is not None, f"no state {name}"
    return found


def _set_retry(name: str, errors: list[str]) -> Callable[[dict], None]:
    def change(asl: dict) -> None:
        _state(asl, name)["Retry"][0]["ErrorEquals"] = errors
    return change


def _subject(name: str, subject: str) -> Callable[[dict], None]:
    def change(asl: dict) -> None:
        states(asl)[name]["Arguments"]["Subject"] = subject
    return change


def _old_approval_catch(asl: dict) -> None:
    # What the approval did before: every error, SNS failures included, is a "denial".
    catch = states(asl)["RequestApproval"]["Catch"]
    catch[0]["ErrorEquals"] = ["States.ALL"]
    del catch[1]


def _approval_failure_phase(asl: dict) -> None:
    states(asl)["RequestApproval"]["Catch"][1]["Assign"]["failure"]["phase"] = "approval"


def _timeout_is_failure(asl: dict) -> None:
    states(asl)["RequestApproval"]["Catch"][0]["ErrorEquals"] = ["ApprovalDenied", "States.HeartbeatTimeout"]


def _failed_status_succeeds(asl: dict) -> None:
    outcome = states(asl)["Outcome"]
    rule = next(c for c in outcome["Choices"] if "'failed'" in c["Condition"])
    rule["Next"] = "NotifySummary"


def _teardown_crash_succeeds(asl: dict) -> None:
    states(asl)["Teardown"]["Catch"][0]["Next"] = "Succeeded"


def _fail_reraises_states_errors(asl: dict) -> None:
    states(asl)["Failed"]["Error"] = "{% $failure != null ? $failure.error : 'TeardownFailed' %}"


def _unknown_next(asl: dict) -> None:
    states(asl)["Validate"]["Next"] = "NoSuchState"


def _no_retry(asl: dict) -> None:
    del states(asl)["Promote"]["Retry"]


def _placeholder(asl: dict) -> None:
    asl["Comment"] += " ${NotSuppliedByTheTemplate}"


def _confirmation_catches_only_denials(asl: dict) -> None:
    # A confirmation whose failed SNS request would escape the Catch (and end the run
    # without teardown releasing the lock).
    states(asl)["Confirm2"]["Catch"][0]["ErrorEquals"] = ["ApprovalDenied", "States.Timeout", "States.HeartbeatTimeout"]


def _denial_is_not_a_failure(asl: dict) -> None:
    # What the drill's approval does, wrongly here: a denial goes to teardown unrecorded.
    states(asl)["Confirm1"]["Catch"].insert(0, {"ErrorEquals": ["ApprovalDenied"], "Next": "Teardown"})


def _confirmation_catch_skips_teardown(asl: dict) -> None:
    states(asl)["Confirm1"]["Catch"][0]["Next"] = "NotifyFailure"


def _one_confirmation(asl: dict) -> None:
    states(asl)["Confirm1"]["Next"] = "CopyBack"
    del states(asl)["Confirm2"]


def _first_confirmation_skipped(asl: dict) -> None:
    states(asl)["Confirmed"]["Default"] = "Confirm2"


def _processor(name: str, key: str, value: object) -> Callable[[dict], None]:
    def change(asl: dict) -> None:
        _state(asl, name)["ItemProcessor"]["ProcessorConfig"][key] = value
    return change


def _map_field(name: str, key: str, value: object) -> Callable[[dict], None]:
    def change(asl: dict) -> None:
        _state(asl, name)[key] = value
    return change


def _plan_as_csv(asl: dict) -> None:
    _state(asl, "ParityRanges")["ItemReader"]["ReaderConfig"]["InputType"] = "CSV"


def _map_without_catch(asl: dict) -> None:
    del _state(asl, "PromoteRanges")["Catch"]


def _child_catches(asl: dict) -> None:
    # The child would end successful on any error: the Map (tolerating nothing) never fails.
    _state(asl, "ValidateRange")["Catch"] = [{"ErrorEquals": ["States.ALL"], "Next": "ValidateRangeFailed"}]
    _state(asl, "ValidateRanges")["ItemProcessor"]["States"]["ValidateRangeFailed"] = {"Type": "Succeed"}


def _range_ends_after_one_pass(asl: dict) -> None:
    # A restore child that stopped at its deadline would end with its range half staged.
    task = _state(asl, "RestoreRange")
    task["End"] = True
    del task["Next"]


def _child_outputs_its_input(asl: dict) -> None:
    _state(asl, "PromoteRangeDone")["Output"] = "{% $states.input %}"


BRINGUP_BINARY = "        Binary: bringup\n"
VERIFIER_BINARY = "        Binary: sample-verifier\n"
GLOBAL_ARCH = "    Architectures: [arm64]\n"
SUBSTITUTIONS = "        TeardownFunctionArn: !GetAtt TeardownFunction.Arn\n"
FAILBACK_SUBSTITUTIONS = "        FailbackFunctionArn: !GetAtt FailbackFunction.Arn\n"

CASES: dict[str, Case] = {
    "real_files_pass": Case(check=""),  # every check, on the real files
    "definition_uri": Case("definition-uri", template=yaml_edit(
        "DefinitionUri: ../statemachine/drill.asl.json", "DefinitionUri: ../statemachine/other.asl.json"),
        detail="other.asl.json is not"),
    "definition_uri_missing_file": Case("definition-uri", template=yaml_edit(
        "DefinitionUri: ../statemachine/failback.asl.json", "DefinitionUri: ../statemachine/missing.asl.json"),
        machine=FAILBACK, detail="missing.asl.json, which does not exist"),
    "placeholder_not_supplied": Case("placeholders", asl=asl_edit(_placeholder)),
    "failback_placeholder_not_supplied": Case("placeholders", failback=asl_edit(_placeholder)),
    "substitution_unused": Case("substitutions", template=yaml_edit(
        SUBSTITUTIONS, SUBSTITUTIONS + "        UnusedArn: arn:aws:sns:us-east-1:123456789012:unused\n")),
    "failback_substitution_unused": Case("substitutions", machine=FAILBACK, template=yaml_edit(
        FAILBACK_SUBSTITUTIONS, FAILBACK_SUBSTITUTIONS + "        UnusedArn: arn:aws:sns:us-east-1:123456789012:unused\n")),
    "binary_not_in_workspace": Case("functions", template=yaml_edit(
        BRINGUP_BINARY, "        Binary: no-such-binary\n")),
    "invoked_function_not_in_template": Case("functions", template=yaml_edit(
        "BringupFunctionArn: !GetAtt BringupFunction.Arn", "BringupFunctionArn: !GetAtt NotificationTopic.TopicArn")),
    "failback_function_not_in_template": Case("functions", machine=FAILBACK, template=yaml_edit(
        "FailbackFunctionArn: !GetAtt FailbackFunction.Arn", "FailbackFunctionArn: !GetAtt NotificationTopic.TopicArn")),
    "uninvoked_binary_not_in_workspace": Case("binaries", template=yaml_edit(
        VERIFIER_BINARY, "        Binary: no-such-binary\n")),
    "globals_x86": Case("arm64", template=yaml_edit(GLOBAL_ARCH, "    Architectures: [x86_64]\n")),
    "no_architecture_defaults_to_x86": Case("arm64", template=yaml_edit(GLOBAL_ARCH, "")),
    "function_overrides_to_x86": Case("arm64", template=yaml_edit(
        "      MemorySize: 2048\n", "      MemorySize: 2048\n      Architectures: [x86_64]\n")),
    "asl_validator_rejects": Case("asl-validator", asl=asl_edit(_unknown_next)),
    "retry_states_all": Case("retry", asl=asl_edit(_set_retry("Restore", ["States.ALL"]))),
    "retry_nested_component": Case("retry", asl=asl_edit(_set_retry("PollComponent", ["States.ALL"]))),
    "retry_internal": Case("retry", asl=asl_edit(_set_retry("Validate", [
        "Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException",
        "Lambda.TooManyRequestsException", "Retryable", "Internal"]))),
    "retry_missing_error": Case("retry", asl=asl_edit(_set_retry("Bringup", [
        "Lambda.ServiceException", "Lambda.TooManyRequestsException", "Retryable"]))),
    "lambda_task_without_retry": Case("retry", asl=asl_edit(_no_retry)),
    "failback_retry_states_all": Case("retry", failback=asl_edit(_set_retry("CopyBack", ["States.ALL"]))),
    "approval_catches_everything": Case("approval", asl=asl_edit(_old_approval_catch)),
    "approval_failure_phase": Case("approval", asl=asl_edit(_approval_failure_phase)),
    "approval_timeout_fails": Case("approval", asl=asl_edit(_timeout_is_failure)),
    "confirmation_catch_misses_states_all": Case("approval", failback=asl_edit(_confirmation_catches_only_denials),
                                                 detail="Confirm2: the last catcher must be States.ALL"),
    "confirmation_denial_not_a_failure": Case("approval", failback=asl_edit(_denial_is_not_a_failure),
                                              detail="Confirm1.Catch[0] must record a failure"),
    "confirmation_catch_skips_teardown": Case("approval", failback=asl_edit(_confirmation_catch_skips_teardown)),
    "one_confirmation": Case("approval", failback=asl_edit(_one_confirmation)),
    "first_confirmation_skipped": Case("approval", failback=asl_edit(_first_confirmation_skipped),
                                       detail="without the first confirmation Confirm1"),
    "approval_states_without_rules": Case("approval", machine="OtherStateMachine", template=yaml_edit(
        "  FailbackStateMachine:\n", "  OtherStateMachine:\n"), detail="no approval rules for it"),
    "subject_untruncated": Case("subjects", asl=asl_edit(_subject(
        "NotifyStart", "{% 'drpilot ' & $run.input.mode & ' ' & $run.run_id & ' started' %}"))),
    "subject_truncated_too_long": Case("subjects", asl=asl_edit(_subject(
        "NotifySummary", "{% $substring('drpilot run succeeded: ' & $states.input.run_id, 0, 120) %}"))),
    "subject_long_after_truncation": Case("subjects", asl=asl_edit(_subject(
        "NotifyFailure", "{% $substring('FAILED: ', 0, 99) & $substring($execution.name & $execution.name, 0, 99) %}"))),
    "failback_subject_untruncated": Case("subjects", failback=asl_edit(_subject(
        "NotifyStart", "{% 'drpilot failback started: ' & $run.run_id %}"))),
    "failed_status_succeeds": Case("failed-run", asl=asl_edit(_failed_status_succeeds)),
    "teardown_crash_succeeds": Case("failed-run", asl=asl_edit(_teardown_crash_succeeds)),
    "failback_failed_status_succeeds": Case("failed-run", failback=asl_edit(_failed_status_succeeds)),
    "failback_teardown_crash_succeeds": Case("failed-run", failback=asl_edit(_teardown_crash_succeeds)),
    "fail_reraises_states_errors": Case("failed-run", asl=asl_edit(_fail_reraises_states_errors),
                                        detail="would end the run States.Runtime"),
    "failback_fail_reraises_states_errors": Case("failed-run", failback=asl_edit(_fail_reraises_states_errors),
                                                 detail="would end the run States.Runtime"),
    "distributed_map_express_children": Case("distributed-map", asl=asl_edit(
        _processor("RestoreRanges", "ExecutionType", "EXPRESS")),
        detail="Recover/RestoreRanges: ProcessorConfig.ExecutionType is 'EXPRESS', not STANDARD"),
    "distributed_map_inline": Case("distributed-map", asl=asl_edit(_processor("ValidateRanges", "Mode", "INLINE")),
                                   detail="ValidateRanges: reads an ItemReader but its ProcessorConfig.Mode is 'INLINE'"),
    "distributed_map_plan_as_csv": Case("distributed-map", asl=asl_edit(_plan_as_csv),
                                        detail="ParityRanges: ItemReader.ReaderConfig.InputType is 'CSV', not JSON"),
    "distributed_map_tolerates_failures": Case("distributed-map", asl=asl_edit(
        _map_field("ParityRanges", "ToleratedFailurePercentage", 5)),
        detail="ParityRanges: ToleratedFailurePercentage is 5"),
    "distributed_map_tolerates_a_failed_range": Case("distributed-map", asl=asl_edit(
        _map_field("PromoteRanges", "ToleratedFailureCount", 1)), detail="PromoteRanges: ToleratedFailureCount is 1"),
    "distributed_map_without_catch": Case("distributed-map", asl=asl_edit(_map_without_catch),
                                          detail="PromoteRanges: the last catcher must be States.ALL"),
    "distributed_map_child_catches": Case("distributed-map", asl=asl_edit(_child_catches),
                                          detail="ValidateRanges/ValidateRange has a Catch"),
    "distributed_map_child_retries_no_retryable": Case("distributed-map", asl=asl_edit(_set_retry("RestoreRange", [
        "Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException",
        "Lambda.TooManyRequestsException"])), detail="Recover/RestoreRanges/RestoreRange: no Retry on"),
    "distributed_map_range_ends_after_one_pass": Case("distributed-map", asl=asl_edit(_range_ends_after_one_pass),
        detail="RestoreRanges/RestoreRange: is not followed by a Choice"),
    "distributed_map_child_drops_its_continuation": Case("distributed-map", asl=asl_edit(
        _map_field("PromoteRange", "Output", "{% $states.result.Payload.index %}")),
        detail="PromoteRanges/PromoteRange: its Output drops the answer's continuation"),
    "distributed_map_child_outputs_its_input": Case("distributed-map", asl=asl_edit(_child_outputs_its_input),
        detail="PromoteRanges/PromoteRange: the child execution must end on the item's index"),
    "distributed_map_role_starts_another_machine": Case("distributed-map", template=yaml_edit(
        ":stateMachine:${AWS::StackName}-drill\"", ":stateMachine:${AWS::StackName}-failback\""),
        detail="DrillStateMachine's role lacks states:StartExecution on "
               "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:${AWS::StackName}-drill"),
    "distributed_map_role_cannot_stop_children": Case("distributed-map", template=yaml_edit(
        "              Action: [states:DescribeExecution, states:StopExecution]\n",
        "              Action: states:DescribeExecution\n"),
        detail="DrillStateMachine's role lacks states:StopExecution"),
    "distributed_map_plan_grant_too_wide": Case("distributed-map", template=yaml_edit(
        'Resource: !Sub "arn:${AWS::Partition}:s3:::${EvidenceBucket}/${ReceiptsPrefix}runs/*/plan.json"',
        'Resource: !Sub "arn:${AWS::Partition}:s3:::${EvidenceBucket}/*"'),
        detail="DrillStateMachine's role grants s3:GetObject on arn:${AWS::Partition}:s3:::${EvidenceBucket}/*, "
               "which no Distributed Map of it needs"),
    "distributed_map_child_cannot_write_its_range": Case("distributed-map", template=yaml_edit(
        "              Action: [s3:PutObject, s3:DeleteObject]\n              Resource:\n"
        '                - !Sub "arn:${AWS::Partition}:s3:::${EvidenceBucket}/${ReceiptsPrefix}runs/*/phases/validate.json"\n',
        "              Action: [s3:DeleteObject]\n              Resource:\n"
        '                - !Sub "arn:${AWS::Partition}:s3:::${EvidenceBucket}/${ReceiptsPrefix}runs/*/phases/validate.json"\n'),
        detail="ValidateFunction (invoked by ValidateRanges/ValidateRange) may not s3:PutObject "
               "arn:${AWS::Partition}:s3:::${EvidenceBucket}/${ReceiptsPrefix}runs/RUN/ranges/validate/00000.json"),
    "failback_role_starts_executions_without_a_map": Case("distributed-map", machine=FAILBACK, template=yaml_edit(
        "        - LambdaInvokePolicy:\n            FunctionName: !Ref FailbackFunction\n",
        "        - LambdaInvokePolicy:\n            FunctionName: !Ref FailbackFunction\n"
        "        - Statement:\n            - Effect: Allow\n              Action: states:StartExecution\n"
        "              Resource: \"*\"\n"),
        detail="FailbackStateMachine's role grants states:StartExecution on *, which no Distributed Map of it needs"),
    "alarm_reason_in_quotes": Case("rule-inputs", template=yaml_edit(
        '"alarm_reason":<alarm_reason>', '"alarm_reason":"<alarm_reason>"')),
    "schedule_without_trigger": Case("rule-inputs", template=yaml_edit(
        ',"trigger":{"kind":"schedule","source":"<aws.scheduler.schedule-arn>","fired_at":"<aws.scheduler.scheduled-time>"}}', '}')),
    "evidence_governance_mode": Case("evidence-lock", template=yaml_edit(
        "            Mode: COMPLIANCE\n", "            Mode: GOVERNANCE\n"), detail="must be COMPLIANCE"),
    "evidence_retention_not_the_parameter": Case("evidence-lock", template=yaml_edit(
        "            Days: !Ref EvidenceRetentionDays\n", "            Days: 30\n"), detail="Days: !Ref EvidenceRetentionDays"),
    "evidence_without_object_lock": Case("evidence-lock", template=yaml_edit(
        "      ObjectLockEnabled: true\n", "      ObjectLockEnabled: false\n"), detail="ObjectLockEnabled must be true"),
    "evidence_unversioned": Case("evidence-lock", template=yaml_edit(
        "      VersioningConfiguration:\n        Status: Enabled\n", "      VersioningConfiguration:\n        Status: Suspended\n"),
        detail="versioning must be Enabled"),
    "evidence_deleted_with_the_stack": Case("evidence-lock", template=yaml_edit(
        "    Type: AWS::S3::Bucket\n    DeletionPolicy: RetainExceptOnCreate\n",
        "    Type: AWS::S3::Bucket\n    DeletionPolicy: Delete\n"),
        detail="DeletionPolicy must be Retain or RetainExceptOnCreate"),
    "evidence_named_after_the_stack": Case("evidence-lock", template=yaml_edit(
        "      BucketName: !If [HasEvidenceBucketName, !Ref EvidenceBucketName, !Ref AWS::NoValue]\n",
        '      BucketName: !Sub "${AWS::StackName}-evidence-${AWS::AccountId}"\n'),
        detail="BucketName must be left to CloudFormation"),
    "approve_url_public": Case("approve-url", template=yaml_edit(
        "        AuthType: AWS_IAM\n", "        AuthType: NONE\n"), detail="is 'NONE', must be AWS_IAM"),
    "approve_without_url": Case("approve-url", template=yaml_edit(
        "      FunctionUrlConfig:\n        AuthType: AWS_IAM\n", ""), detail="has no FunctionUrlConfig"),
    "approval_key_by_alias": Case("approval-key", template=yaml_edit(
        "          # lets this role call VerifyMac; the role holds no KMS grant for it (ApprovalKey).\n"
        "          DRPILOT_APPROVAL_KEY: !GetAtt ApprovalKey.Arn\n",
        "          # lets this role call VerifyMac; the role holds no KMS grant for it (ApprovalKey).\n"
        "          DRPILOT_APPROVAL_KEY: !Ref ApprovalKeyAlias\n"),
        detail="PromoteFunction: DRPILOT_APPROVAL_KEY is ${ApprovalKeyAlias}, must be the key ARN "
               "(!GetAtt ApprovalKey.Arn)"),
    "approval_key_grant_in_a_named_role": Case("dependencies", template=yaml_edit(
        "            # The approval's seal is verified (kms:VerifyMac) before copying: granted by the\n",
        "            - Effect: Allow\n              Action: kms:VerifyMac\n              Resource: !GetAtt ApprovalKey.Arn\n"
        "            # The approval's seal is verified (kms:VerifyMac) before copying: granted by the\n"),
        detail="circular dependency: ApprovalKey -> PromoteFunctionRole -> ApprovalKey"),
    "receipts_left_on_the_target_bucket": Case("receipts-grants", template=yaml_edit(
        '            # (what its start needs).\n            - Effect: Allow\n              Action: s3:GetObject\n'
        '              Resource: !Sub "arn:${AWS::Partition}:s3:::${EvidenceBucket}/${ReceiptsPrefix}*"\n',
        '            # (what its start needs).\n            - Effect: Allow\n              Action: s3:GetObject\n'
        '              Resource: !Sub "arn:${AWS::Partition}:s3:::${TargetBucketName}/${ReceiptsPrefix}*"\n'),
        detail="BringupFunction: s3:GetObject on arn:${AWS::Partition}:s3:::${TargetBucketName}/${ReceiptsPrefix}*"),
    "receipts_reader_cannot_list": Case("receipts-grants", template=yaml_edit(
        '            # all it reads, so it lists the evidence bucket only.\n            - Effect: Allow\n              Action: s3:ListBucket\n'
        '              Resource: !Sub "arn:${AWS::Partition}:s3:::${EvidenceBucket}"\n',
        '            # all it reads, so it lists the evidence bucket only.\n            - Effect: Allow\n              Action: s3:ListBucket\n'
        '              Resource: !Sub "arn:${AWS::Partition}:s3:::${TargetBucketName}"\n'),
        detail="ComponentsFunction reads in the evidence bucket without s3:ListBucket"),
    "rto_watch_always_on": Case("triggers", template=yaml_edit(
        "            ScheduleExpression: rate(1 minute)\n            State: !If [TriggersEnabled, ENABLED, DISABLED]\n",
        "            ScheduleExpression: rate(1 minute)\n            State: ENABLED\n"),
        detail="ReadinessFunction.Events.RtoWatchSchedule: State must be"),
    "readiness_schedule_wrong_action": Case("triggers", template=yaml_edit(
        """            Input: '{"action": "readiness"}'\n""", """            Input: '{"action": "rto-watch"}'\n"""),
        detail="expected one each of ['readiness', 'rto-watch']"),
    "dashboard_not_json": Case("dashboard", template=yaml_edit(
        '"title": "Readiness: failed checks", "stat"', '"title": "Readiness: failed checks" "stat"'),
        detail="the body is not JSON"),
    "dashboard_forgets_an_alarm": Case("dashboard", template=yaml_edit(
        ', "${ReadinessFailuresAlarm.Arn}"', ''), detail="alarms not on any alarm widget: ['ReadinessFailuresAlarm']"),
    "dashboard_widgets_overlap": Case("dashboard", template=yaml_edit(
        '{"type": "alarm", "x": 16, "y": 24,', '{"type": "alarm", "x": 12, "y": 24,'), detail="overlap"),
    "cfn_lint_rejects": Case("cfn-lint", template=yaml_edit("      Timeout: 120\n", "      Timeout: 9000\n")),
    "sam_validate_rejects": Case("sam-validate", template=yaml_edit(
        "        MonthlyDrill:\n          Type: ScheduleV2\n", "        MonthlyDrill:\n          Type: NotAnEventSourceType\n")),
}


def load_check():
    """infra/check.py as a module (whether this file runs as infra.test_check or a script)."""
    spec = importlib.util.spec_from_file_location("drpilot_infra_check", CHECK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


check = load_check()
# The state machines of the real template, in template order.
MACHINES = [m.logical for m in check.Context(TEMPLATE).machines]


def run_case(case: Case, workdir: Path) -> subprocess.CompletedProcess:
    """check.py on copies laid out like the repository (infra/, statemachine/) in `workdir`:
    the real files as a command; a mutated case through main(), in this process. The
    drill's copy is passed with --asl; the failback's is the one its DefinitionUri names."""
    (workdir / "infra").mkdir(parents=True)
    (workdir / "statemachine").mkdir()
    template, asl = workdir / "infra" / "template.yaml", workdir / "statemachine" / "drill.asl.json"
    failback = workdir / "statemachine" / "failback.asl.json"
    template.write_text((case.template or (lambda t: t))(TEMPLATE.read_text()))
    asl.write_text((case.asl or (lambda t: t))(ASL.read_text()))
    failback.write_text((case.failback or (lambda t: t))(FAILBACK_ASL.read_text()))
    args = ["--template", str(template), "--asl", str(asl)]
    if not case.check:
        return subprocess.run([PYTHON, str(CHECK), *args], capture_output=True, text=True, cwd=ROOT)
    out = io.StringIO()
    code = check.main([*args, "--only", case.check], out=out)
    return subprocess.CompletedProcess(args, code, out.getvalue(), "")


class CheckPyCanFail(unittest.TestCase):
    results: dict[str, subprocess.CompletedProcess | BaseException] = {}

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = Path(tempfile.mkdtemp(prefix="drpilot-test-check-"))

        def attempt(name: str) -> subprocess.CompletedProcess | BaseException:
            try:
                return run_case(CASES[name], cls.tmp / name)
            except BaseException as e:  # reported by the case's own test
                return e

        # The slow cases (the full run, sam validate, cfn-lint) start first.
        order = sorted(CASES, key=lambda n: CASES[n].check not in ("", "sam-validate", "cfn-lint"))
        with ThreadPoolExecutor(max_workers=3) as pool:
            cls.results = dict(zip(order, pool.map(attempt, order)))

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def outcome(self, name: str) -> subprocess.CompletedProcess:
        result = self.results[name]
        if isinstance(result, BaseException):
            raise result
        return result

    def test_real_files_pass_every_check(self) -> None:
        out = self.outcome("real_files_pass")
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertNotRegex(out.stdout, r"(?m)^FAIL ")
        lines = len(MACHINES) * sum(1 for c in check.CHECKS if c[3]) + sum(1 for c in check.CHECKS if not c[3])
        self.assertRegex(out.stdout, rf"infra: {lines} passed, 0 failed")
        for c in check.CHECKS:
            for machine in MACHINES if c[3] else [None]:
                where = f" ({machine})" if machine else ""
                self.assertIn(f"ok   [{c[0]}] {c[1]}{where}\n", out.stdout)

    def test_every_check_has_a_failing_case(self) -> None:
        covered = {case.check for case in CASES.values()}
        self.assertEqual({c[0] for c in check.CHECKS} - covered, set())


def _failing_case_test(name: str, case: Case) -> Callable[[CheckPyCanFail], None]:
    per_machine = next(c[3] for c in check.CHECKS if c[0] == case.check)

    def test(self: CheckPyCanFail) -> None:
        out = self.outcome(name)
        detail = out.stdout + out.stderr
        self.assertNotEqual(out.returncode, 0, detail)
        fails = [line for line in out.stdout.splitlines() if line.startswith("FAIL ")]
        self.assertEqual(len(fails), 1, detail)
        self.assertTrue(fails[0].startswith(f"FAIL [{case.check}] "), detail)
        if per_machine:
            # Fails for the broken machine, and only there: the others still pass.
            self.assertTrue(fails[0].endswith(f" ({case.failing_machine})"), detail)
            passed = [line for line in out.stdout.splitlines() if line.startswith(f"ok   [{case.check}] ")]
            self.assertEqual(len(passed), len(MACHINES) - 1, detail)
            self.assertFalse([line for line in passed if line.endswith(f" ({case.failing_machine})")], detail)
            self.assertRegex(out.stdout, rf"infra: {len(MACHINES) - 1} passed, 1 failed", detail)
        else:
            self.assertRegex(out.stdout, r"infra: 0 passed, 1 failed", detail)
        if case.detail:
            self.assertIn(case.detail, out.stdout, detail)
    test.__doc__ = f"check.py [{case.check}] fails on: {name.replace('_', ' ')}"
    return test


for _name, _case in CASES.items():
    if _case.check:
        setattr(CheckPyCanFail, f"test_{_name}", _failing_case_test(_name, _case))


class AslOption(unittest.TestCase):
    """--asl [MACHINE=]PATH: a bare path is the drill's; MACHINE= names another machine."""

    def run_check(self, *args: str) -> tuple[int, str]:
        out = io.StringIO()
        code = check.main(["--template", str(TEMPLATE), *args], out=out)
        return code, out.getvalue()

    def test_the_machines_own_files_pass(self) -> None:
        code, out = self.run_check("--asl", str(ASL), "--asl", f"{FAILBACK}={FAILBACK_ASL}", "--only", "definition-uri")
        self.assertEqual(code, 0, out)
        self.assertIn(f"infra: {len(MACHINES)} passed, 0 failed", out)

    def test_another_file_for_a_machine_is_checked_and_fails_definition_uri(self) -> None:
        code, out = self.run_check("--asl", f"{FAILBACK}={ASL}", "--only", "definition-uri,approval")
        self.assertEqual(code, 1, out)
        fails = [line for line in out.splitlines() if line.startswith("FAIL ")]
        self.assertEqual([line.split("] ")[0] + "] " + line.rsplit(" ", 1)[-1] for line in fails],
                         [f"FAIL [definition-uri] ({FAILBACK})", f"FAIL [approval] ({FAILBACK})"], out)
        self.assertIn("expected two top-level .waitForTaskToken confirmation states, found ['RequestApproval']", out,
                      "the failback's checks read the drill's ASL given for it")
        self.assertIn("infra: 2 passed, 2 failed", out)

    def test_an_unknown_machine_fails_every_machine_check(self) -> None:
        code, out = self.run_check("--asl", f"NoSuchMachine={ASL}", "--only", "retry,arm64")
        self.assertEqual(code, 1, out)
        self.assertIn("--asl names ['NoSuchMachine'], not a state machine of the template", out)
        self.assertIn("infra: 1 passed, 1 failed", out)


class RuleInputCommandLine(unittest.TestCase):
    """infra/rule_input.py prints the execution input the deployed triggers pass."""

    def run_rule_input(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, str(RULE_INPUT), *args], capture_output=True, text=True, cwd=ROOT)

    def test_alarm_fixture(self) -> None:
        out = self.run_rule_input("alarm", str(ALARM_FIXTURE), "--profile", "demo")
        self.assertEqual(out.returncode, 0, out.stderr)
        event = json.loads(ALARM_FIXTURE.read_text())
        self.assertEqual(json.loads(out.stdout), {
            "mode": "recovery", "profile": "demo",
            "trigger": {"kind": "alarm", "source": event["resources"][0], "alarm_name": event["detail"]["alarmName"],
                        "alarm_reason": event["detail"]["state"]["reason"], "fired_at": event["time"]}})
        self.assertEqual(out.stdout.count("\n"), 1, "one line of minified JSON")

    def test_alarm_reason_with_quotes_stays_valid_json(self) -> None:
        event = json.loads(ALARM_FIXTURE.read_text())
        event["detail"]["state"]["reason"] = 'value "42" > threshold \\ 50'
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(event, f)
        try:
            out = self.run_rule_input("alarm", f.name)
        finally:
            Path(f.name).unlink()
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(json.loads(out.stdout)["trigger"]["alarm_reason"], 'value "42" > threshold \\ 50')
        self.assertEqual(json.loads(out.stdout)["profile"], "default", "the ProfileName default")

    def test_invalid_json_fails_loudly(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            template = Path(tmp) / "template.yaml"
            template.write_text(replace_once(TEMPLATE.read_text(), '"alarm_reason":<alarm_reason>',
                                             '"alarm_reason":"<alarm_reason>"'))
            event = json.loads(ALARM_FIXTURE.read_text())
            event["detail"]["state"]["reason"] = 'a "quoted" reason'
            path = Path(tmp) / "event.json"
            path.write_text(json.dumps(event))
            out = self.run_rule_input("alarm", str(path), "--template", str(template))
        self.assertEqual(out.returncode, 1)
        self.assertEqual(out.stdout, "")
        self.assertIn("not valid JSON", out.stderr)

    def test_missing_path_fails(self) -> None:
        out = self.run_rule_input("alarm", str(ROOT / "shared" / "tests" / "fixtures" / "scheduled-event.json"))
        self.assertEqual(out.returncode, 1)
        self.assertIn("does not resolve", out.stderr)

    def test_schedule(self) -> None:
        arn = "arn:aws:scheduler:eu-west-1:123456789012:schedule/default/drpilot-MonthlyDrill"
        out = self.run_rule_input("schedule", "--time", "2026-04-06T09:00:00Z", "--schedule-arn", arn, "--profile", "prod")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(json.loads(out.stdout), {
            "mode": "drill", "profile": "prod",
            "trigger": {"kind": "schedule", "source": arn, "fired_at": "2026-04-06T09:00:00Z"}})

    def test_schedule_rejects_a_bad_time(self) -> None:
        out = self.run_rule_input("schedule", "--time", "first Monday", "--schedule-arn", "arn:aws:scheduler:x")
        self.assertEqual(out.returncode, 1)
        self.assertIn("RFC 3339", out.stderr)


if __name__ == "__main__":
    unittest.main()
