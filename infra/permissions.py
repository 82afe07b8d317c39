#!/usr/bin/env python3
"""Permission check (run by `make test` with .venv-infra's Python; see docs/permissions.md).

Every AWS call the Lambdas made during the tests is in a ledger (JSON lines). This script
evaluates each recorded call against the IAM role the SAM template gives the calling
function, as CloudFormation would deploy it:

1. expands infra/template.yaml with SAM's own translator (offline) and resolves the
   intrinsics with the parameter set of the tests (infra/permissions/test-parameters.json);
2. turns each ledger record into the IAM requests AWS authorises for it, including the
   implied ones moto does not reproduce (a 404 object read also needs s3:ListBucket without
   s3:prefix; SSE-KMS needs kms:Decrypt / kms:GenerateDataKey; an RDS restore with tags
   needs rds:AddTagsToResource; a restore job's role needs iam:PassRole); RDS, Lambda,
   AWS Backup, Run Command, EventBridge Scheduler, KMS, Step Functions and SNS resources
   come from the request's recorded `params` (a KMS alias resolves, through the template's
   AWS::KMS::Alias resources, to the key IAM authorizes the call against);
3. evaluates all of them in one batch with @cloud-copilot/iam-simulate
   (infra/permissions/simulate.mjs), except AWS-owned SSM documents, whose account-less
   ARN the simulator cannot parse (matched by evaluate_locally); every KMS request carries
   its key's key policy as the resource policy (a template key's own KeyPolicy, else the
   default key policy), and the simulator applies KMS's rule: the role's IAM policies count
   only for the actions the key policy allows the account root, a statement naming the
   role grants on its own, and an explicit Deny in either denies;
4. checks statically that the state machine's role may invoke every function and publish
   to every topic its definition names (Step Functions makes those calls, not the Lambdas),
   and that each schedule or rule may start (or invoke) its target;
5. lints every generated policy with parliament;
6. lists the granted (function, action, resource) elements no request exercised.

Exit status 0 only when every request is allowed, every operation is mapped, the state
machine check passes and no lint finding is left unexplained.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
SIMULATOR = INFRA / "permissions" / "simulate.mjs"

PARTITION = "aws"
REGION = "us-east-1"
ACCOUNT = "123456789012"
STACK = "drpilot"
# Resources CloudFormation names, by the names the local stack gives them.
GENERATED_NAMES = {"EvidenceBucket": f"{STACK}-evidence-123456789012-us-east-1"}

# SAM's translator reads the region through boto3; give it one so nothing looks further.
os.environ.setdefault("AWS_DEFAULT_REGION", REGION)

# AWS managed policies the checker knows the content of. AWSLambdaBasicExecutionRole is
# what SAM attaches to every function role: CloudWatch Logs only (the Lambda runtime uses
# it, the function code never does), so it is neither linted nor listed as unexercised.
KNOWN_MANAGED = {
    f"arn:{PARTITION}:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole": {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": "*",
        }],
    },
}

# parliament findings accepted on purpose, each with its reason: (issue, regex on the
# finding's detail, reason). NO_VERSION is accepted separately (see lint()).
LINT_ALLOW = [
    ("RESOURCE_STAR", r"cloudwatch:(PutMetricData|GetMetricData)",
     "CloudWatch metric actions support no resource-level permission; PutMetricData is narrowed by cloudwatch:namespace"),
    ("RESOURCE_STAR", r"sts:GetCallerIdentity",
     "GetCallerIdentity supports no resource (and needs no permission at all)"),
    ("RESOURCE_MISMATCH", r"'action': 'ssm:SendCommand'",
     "parliament wants a document with an account: an AWS-owned document's ARN has none (arn:aws:ssm:REGION::document/AWS-RunShellScript), and the statement granting the instances names no document (IAM authorizes the document and each instance separately)"),
    ("RESOURCE_STAR", r"logs:(CreateLogDelivery|GetLogDelivery|UpdateLogDelivery|DeleteLogDelivery|ListLogDeliveries|PutResourcePolicy|DescribeResourcePolicies|DescribeLogGroups)",
     "Step Functions log delivery requires these on \"*\" (vended logs)"),
    ("RESOURCE_MISMATCH", r"'action': 'states:(DescribeExecution|ListExecutions)'",
     "parliament wants every resource type the Service Authorization Reference lists for the action (DescribeExecution: execution and express; ListExecutions: statemachine and mapRun); IAM authorizes the one the request names: a STANDARD machine's executions are execution: ARNs, and readiness lists executions of the state machine, not of a Map Run"),
]

# Why a grant may go unexercised by the tests (shown next to it, informational).
UNEXERCISED_NOTES = [
    ("promote", "s3:DeleteObject", "only with prune_drift"),
    ("*", "s3:AbortMultipartUpload", "only when a multipart upload fails or is left over"),
    ("*", "sts:GetCallerIdentity", "only when the runtime passes no function ARN; needs no permission anyway"),
    ("*", "cloudwatch:GetMetricData", "only with profile checks"),
    ("bringup", "s3:ListBucket", "the lock read finds no key only when the lock is released between bringup's conditional write and its read; without it S3 answers 403 there"),
    ("validate", "s3:ListBucket", "a backup's manifests deleted during the run: a 404 (ContractError) instead of a 403"),
    ("promote", "s3:GetObject", "HeadObject fallback for a root/ object with no stored SHA-256 whose ETag differs from staging's"),
    ("components", "backup:ListRecoveryPointsByBackupVault", "aws_backup: the emulator has no AWS Backup; the kind is tested with aws-smithy-mocks, outside the ledger"),
    ("components", "backup:GetRecoveryPointRestoreMetadata", "aws_backup: the emulator has no AWS Backup; tested with aws-smithy-mocks"),
    ("components", "backup:StartRestoreJob", "aws_backup: the emulator has no AWS Backup restore jobs; tested with aws-smithy-mocks"),
    ("components", "backup:DescribeRestoreJob", "aws_backup: the emulator has no AWS Backup restore jobs; tested with aws-smithy-mocks"),
    ("components", "backup:PutRestoreValidationResult", "aws_backup: the emulator has no AWS Backup restore jobs; tested with aws-smithy-mocks"),
    ("components", "iam:PassRole", "aws_backup's StartRestoreJob passes the restore role; tested with aws-smithy-mocks"),
    ("components", "ssm:ListCommandInvocations", "ssm_command with tag targets only (instance ids poll with GetCommandInvocation)"),
    ("components", "ssm:SendCommand", "managed nodes (mi-...) and tag targets only, or a document the tests do not send"),
    ("components", "rds:DescribeDBSnapshots", "the code always filters by DBInstanceIdentifier (db); snapshot is the action's other resource type"),
    ("components", "rds:RestoreDBInstanceFromDBSnapshot", "a cluster snapshot or a resource type the recorded restores did not name"),
    ("components", "lambda:GetFunction", "a verifier the tests do not configure (VerifierFunctionArns, or the sample verifier)"),
    ("components", "lambda:InvokeFunction", "a verifier the tests do not configure (VerifierFunctionArns, or the sample verifier)"),
    ("components", "kms:CreateGrant", "only to restore a snapshot encrypted under a customer managed key; the ledger cannot see the snapshot's key"),
    ("components", "kms:DescribeKey", "only to restore a snapshot encrypted under a customer managed key; the ledger cannot see the snapshot's key"),
    ("components", "s3:DeleteObject", "only when a re-run replaces a stale phase receipt"),
    ("approve", "s3:ListBucket", "a run record not written yet: a 404 instead of a 403"),
]

# KMS authorises a key's use by its key policy (AWS KMS Developer Guide, "Key policies"):
# IAM policies take effect only for the actions the key policy allows the account root
# (arn:aws:iam::ACCOUNT:root), a key policy statement naming a principal of the account
# grants on its own, and an explicit Deny in either denies. A key of the template is
# evaluated with its own (resolved) KeyPolicy; for any other key the checker assumes the
# default key policy, whose statement delegates every action to IAM (AWS KMS Developer
# Guide, "Default key policy").
DEFAULT_KEY_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{
        "Sid": "EnableIAMUserPermissions", "Effect": "Allow",
        "Principal": {"AWS": f"arn:{PARTITION}:iam::{ACCOUNT}:root"},
        "Action": "kms:*", "Resource": "*",
    }],
}


class CheckError(Exception):
    """A configuration problem that stops the check (bad template, parameters, ledger)."""


# --------------------------------------------------------------------------------------
# Template: SAM translation and intrinsic resolution


def load_parameters(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckError(f"cannot read parameters {path}: {e}") from e
    if isinstance(data, list):  # CloudFormation CLI form
        return {p["ParameterKey"]: p["ParameterValue"] for p in data}
    if isinstance(data, dict) and isinstance(data.get("Parameters"), dict):
        return dict(data["Parameters"])
    if isinstance(data, dict):
        return dict(data)
    raise CheckError(f"{path}: expected an object of ParameterKey: value")


def translate(template_path: Path, overrides: dict[str, Any]) -> tuple[dict, dict, dict[str, Any]]:
    """(SAM template, CloudFormation template, parameter values) for `template_path`."""
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    try:
        sam = yaml_parse(template_path.read_text())
    except Exception as e:  # OSError and the yaml errors
        raise CheckError(f"cannot parse {template_path}: {e}") from e
    declared = sam.get("Parameters") or {}
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise CheckError(f"parameters not declared by {template_path.name}: {unknown}")
    params: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in overrides:
            params[name] = overrides[name]
        elif "Default" in spec:
            params[name] = spec["Default"]
        else:
            raise CheckError(f"parameter {name} has no Default and no value in the parameters file")
    for name, spec in declared.items():
        if spec.get("Type") == "CommaDelimitedList" and isinstance(params[name], str):
            params[name] = [v.strip() for v in params[name].split(",")]
        elif not isinstance(params[name], (list, str)):
            params[name] = str(params[name])

    # sam package would upload the code and the definition; the translator only needs
    # S3 locations there.
    packaged = copy.deepcopy(sam)
    for resource in (packaged.get("Resources") or {}).values():
        props = resource.get("Properties") or {}
        if isinstance(props.get("CodeUri"), str) and not props["CodeUri"].startswith("s3://"):
            props["CodeUri"] = "s3://drpilot-artifacts/code.zip"
        if isinstance(props.get("DefinitionUri"), str) and not props["DefinitionUri"].startswith("s3://"):
            props["DefinitionUri"] = "s3://drpilot-artifacts/definition.json"

    class OfflinePolicyLoader:
        """The translator's fallback for managed policy names it does not bundle."""

        def load(self) -> dict[str, str]:
            return {}

    values = dict(params)
    values.update({"AWS::Region": REGION, "AWS::Partition": PARTITION,
                   "AWS::AccountId": ACCOUNT, "AWS::StackName": STACK})
    try:
        cfn = transform(packaged, values, OfflinePolicyLoader())
    except Exception as e:
        causes = getattr(e, "causes", None) or []
        detail = "; ".join(str(c) for c in causes) or str(e)
        raise CheckError(f"SAM cannot translate {template_path}: {detail}") from e
    return sam, cfn, params


class Resolver:
    """Resolves CloudFormation intrinsics against one parameter set and made-up physical
    names (the stack is `drpilot` in us-east-1, account 123456789012)."""

    NO_VALUE = object()

    def __init__(self, cfn: dict, params: dict[str, Any]):
        self.cfn = cfn
        self.resources: dict[str, dict] = cfn.get("Resources") or {}
        self.params = params
        self.pseudo = {
            "AWS::Partition": PARTITION, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
            "AWS::StackName": STACK, "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": f"arn:{PARTITION}:cloudformation:{REGION}:{ACCOUNT}:stack/{STACK}/00000000-0000-0000-0000-000000000000",
            "AWS::NotificationARNs": [],
        }
        self.conditions: dict[str, bool] = {}
        self._evaluating: set[str] = set()
        # CloudFormation names these on AWS; the local stack and the tests give them this
        # name, which the call ledger then shows.
        self._names: dict[str, str] = dict(GENERATED_NAMES)

    # conditions
    def condition(self, name: str) -> bool:
        if name not in self.conditions:
            if name in self._evaluating:
                raise CheckError(f"condition {name} refers to itself")
            spec = (self.cfn.get("Conditions") or {}).get(name)
            if spec is None:
                raise CheckError(f"unknown condition {name}")
            self._evaluating.add(name)
            self.conditions[name] = bool(self.resolve(spec))
            self._evaluating.discard(name)
        return self.conditions[name]

    def enabled(self, logical: str) -> bool:
        cond = self.resources.get(logical, {}).get("Condition")
        return cond is None or self.condition(cond)

    # physical names and attributes
    def physical_name(self, logical: str) -> str:
        if logical in self._names:
            return self._names[logical]
        resource = self.resources.get(logical)
        if resource is None:
            raise CheckError(f"Ref/GetAtt to unknown resource {logical}")
        props = resource.get("Properties") or {}
        name_property = {
            "AWS::Lambda::Function": "FunctionName", "AWS::SNS::Topic": "TopicName",
            "AWS::IAM::Role": "RoleName", "AWS::Logs::LogGroup": "LogGroupName",
            "AWS::StepFunctions::StateMachine": "StateMachineName", "AWS::S3::Bucket": "BucketName",
            "AWS::SQS::Queue": "QueueName", "AWS::Events::Rule": "Name",
            "AWS::Scheduler::Schedule": "Name", "AWS::IAM::ManagedPolicy": "ManagedPolicyName",
            "AWS::DynamoDB::Table": "TableName", "AWS::KMS::Alias": "AliasName",
            "AWS::CloudWatch::Alarm": "AlarmName",
        }.get(resource["Type"])
        name = None
        if name_property and props.get(name_property) is not None:
            name = self.resolve(props[name_property])
        if not isinstance(name, str):
            # CloudFormation's generated names: <stack>-<logical id>-<suffix>
            name = f"{STACK}-{logical}-GENERATED"[:64]
        self._names[logical] = name
        return name

    def ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name == "AWS::NoValue":
            return self.NO_VALUE
        if name in self.params:
            return self.params[name]
        resource = self.resources.get(name)
        if resource is None:
            raise CheckError(f"Ref to unknown parameter or resource {name}")
        kind = resource["Type"]
        physical = self.physical_name(name)
        if kind == "AWS::SNS::Topic":
            return f"arn:{PARTITION}:sns:{REGION}:{ACCOUNT}:{physical}"
        if kind == "AWS::StepFunctions::StateMachine":
            return f"arn:{PARTITION}:states:{REGION}:{ACCOUNT}:stateMachine:{physical}"
        if kind == "AWS::IAM::ManagedPolicy":
            return f"arn:{PARTITION}:iam::{ACCOUNT}:policy/{physical}"
        if kind == "AWS::SQS::Queue":
            return f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{physical}"
        if kind == "AWS::KMS::Key":
            return f"{logical_uuid(name)}"
        return physical

    def get_att(self, logical: str, attribute: str) -> Any:
        resource = self.resources.get(logical)
        if resource is None:
            raise CheckError(f"GetAtt to unknown resource {logical}")
        kind = resource["Type"]
        name = self.physical_name(logical)
        arns = {
            "AWS::Lambda::Function": f"arn:{PARTITION}:lambda:{REGION}:{ACCOUNT}:function:{name}",
            "AWS::IAM::Role": f"arn:{PARTITION}:iam::{ACCOUNT}:role/{name}",
            "AWS::SNS::Topic": f"arn:{PARTITION}:sns:{REGION}:{ACCOUNT}:{name}",
            "AWS::Logs::LogGroup": f"arn:{PARTITION}:logs:{REGION}:{ACCOUNT}:log-group:{name}:*",
            "AWS::StepFunctions::StateMachine": f"arn:{PARTITION}:states:{REGION}:{ACCOUNT}:stateMachine:{name}",
            "AWS::S3::Bucket": f"arn:{PARTITION}:s3:::{name}",
            "AWS::SQS::Queue": f"arn:{PARTITION}:sqs:{REGION}:{ACCOUNT}:{name}",
            "AWS::Events::Rule": f"arn:{PARTITION}:events:{REGION}:{ACCOUNT}:rule/{name}",
            "AWS::Scheduler::Schedule": f"arn:{PARTITION}:scheduler:{REGION}:{ACCOUNT}:schedule/default/{name}",
            "AWS::KMS::Key": f"arn:{PARTITION}:kms:{REGION}:{ACCOUNT}:key/{logical_uuid(logical)}",
            "AWS::DynamoDB::Table": f"arn:{PARTITION}:dynamodb:{REGION}:{ACCOUNT}:table/{name}",
            "AWS::CloudWatch::Alarm": f"arn:{PARTITION}:cloudwatch:{REGION}:{ACCOUNT}:alarm:{name}",
        }
        if attribute == "Arn" and kind in arns:
            return arns[kind]
        if kind == "AWS::SNS::Topic" and attribute == "TopicName":
            return name
        if kind == "AWS::SNS::Topic" and attribute == "TopicArn":
            return arns[kind]
        if kind == "AWS::StepFunctions::StateMachine" and attribute == "Name":
            return name
        if kind == "AWS::IAM::Role" and attribute == "RoleId":
            return f"AROA{logical.upper()[:16]}"
        if kind == "AWS::KMS::Key" and attribute == "KeyId":
            return logical_uuid(logical)
        # Not needed for permissions; keep it recognisable if it ever shows up in a policy.
        return f"<{logical}.{attribute}>"

    # the resolver proper
    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if v is not self.NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            handler = self.FUNCTIONS.get(key)
            if handler is not None:
                return handler(self, arg)
        out = {}
        for k, v in value.items():
            r = self.resolve(v)
            if r is not self.NO_VALUE:
                out[k] = r
        return out

    def _ref(self, arg):
        return self.ref(arg)

    def _get_att(self, arg):
        if isinstance(arg, str):
            arg = arg.split(".", 1)
        logical, attribute = arg[0], self.resolve(arg[1])
        return self.get_att(logical, attribute)

    def _sub(self, arg):
        if isinstance(arg, str):
            template, variables = arg, {}
        else:
            template, variables = arg[0], {k: self.resolve(v) for k, v in (arg[1] or {}).items()}

        def replace(match: re.Match) -> str:
            inner = match.group(1)
            if inner.startswith("!"):
                return "${" + inner[1:] + "}"
            if inner in variables:
                value = variables[inner]
            elif "." in inner and inner.split(".", 1)[0] in self.resources:
                value = self.get_att(*inner.split(".", 1))
            else:
                value = self.ref(inner)
            if isinstance(value, list):
                value = ",".join(str(v) for v in value)
            return str(value)

        return re.sub(r"\$\{([^}]+)\}", replace, template)

    def _join(self, arg):
        sep, items = arg[0], self.resolve(arg[1])
        return sep.join(str(i) for i in items)

    def _select(self, arg):
        index, items = self.resolve(arg[0]), self.resolve(arg[1])
        return items[int(index)]

    def _split(self, arg):
        sep, text = arg[0], self.resolve(arg[1])
        return text.split(sep)

    def _if(self, arg):
        name, yes, no = arg
        return self.resolve(yes if self.condition(name) else no)

    def _equals(self, arg):
        a, b = (self.resolve(x) for x in arg)
        return str(a) == str(b) if not isinstance(a, list) else a == b

    def _not(self, arg):
        return not self.resolve(arg[0])

    def _and(self, arg):
        return all(self.resolve(x) for x in arg)

    def _or(self, arg):
        return any(self.resolve(x) for x in arg)

    def _condition(self, arg):
        return self.condition(arg)

    def _find_in_map(self, arg):
        name, top, second = (self.resolve(x) for x in arg[:3])
        try:
            return self.cfn["Mappings"][name][top][second]
        except KeyError as e:
            raise CheckError(f"Fn::FindInMap {name}/{top}/{second}: no such entry") from e

    def _get_azs(self, arg):
        return [f"{REGION}a", f"{REGION}b", f"{REGION}c"]

    def _import_value(self, arg):
        return f"<import:{self.resolve(arg)}>"

    def _base64(self, arg):
        return self.resolve(arg)

    FUNCTIONS = {
        "Ref": _ref, "Fn::GetAtt": _get_att, "Fn::Sub": _sub, "Fn::Join": _join,
        "Fn::Select": _select, "Fn::Split": _split, "Fn::If": _if, "Fn::Equals": _equals,
        "Fn::Not": _not, "Fn::And": _and, "Fn::Or": _or, "Condition": _condition,
        "Fn::FindInMap": _find_in_map, "Fn::GetAZs": _get_azs, "Fn::ImportValue": _import_value,
        "Fn::Base64": _base64,
    }


def logical_uuid(logical: str) -> str:
    digits = "".join(f"{ord(c):x}" for c in logical)[:32].ljust(32, "0")
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:32]}"


# --------------------------------------------------------------------------------------
# The model: roles, functions, state machines


@dataclass
class Statement:
    sid: str            # unique within the role (what the simulator reports back)
    policy: str         # policy name it came from
    document: dict      # the resolved statement (original Sid, if any, kept)
    managed: bool = False


@dataclass
class Role:
    logical: str
    name: str
    statements: list[Statement] = field(default_factory=list)
    documents: list[tuple[str, dict]] = field(default_factory=list)  # (policy name, document) to lint
    problems: list[str] = field(default_factory=list)

    @property
    def arn(self) -> str:
        return f"arn:{PARTITION}:iam::{ACCOUNT}:role/{self.name}"

    def simulator_policies(self) -> list[dict]:
        by_policy: dict[str, list[dict]] = defaultdict(list)
        for s in self.statements:
            doc = dict(s.document)
            doc["Sid"] = s.sid
            by_policy[s.policy].append(doc)
        return [{"name": name, "policy": {"Version": "2012-10-17", "Statement": stmts}}
                for name, stmts in by_policy.items()]


@dataclass
class Function:
    logical: str
    binary: str
    name: str
    role: Role

    @property
    def arn(self) -> str:
        return f"arn:{PARTITION}:lambda:{REGION}:{ACCOUNT}:function:{self.name}"


@dataclass
class Model:
    functions: dict[str, Function]      # by binary
    roles: dict[str, Role]              # by logical id
    state_machines: list[tuple[str, dict, Role]]   # (logical, resolved CFN properties, role)
    resolver: Resolver
    sam: dict
    template_dir: Path
    # KMS: alias name (alias/...) -> the ARN of the template key it points to; key ARN ->
    # that key's resolved KeyPolicy.
    kms_aliases: dict[str, str] = field(default_factory=dict)
    key_policies: dict[str, dict] = field(default_factory=dict)


def as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def build_model(sam: dict, cfn: dict, params: dict[str, Any], template_dir: Path) -> Model:
    resolver = Resolver(cfn, params)
    resources = resolver.resources

    def role_ref(value: Any, owner: str) -> str:
        if isinstance(value, dict) and "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            target = target.split(".", 1) if isinstance(target, str) else target
            if target[1] == "Arn" and resources.get(target[0], {}).get("Type") == "AWS::IAM::Role":
                return target[0]
        raise CheckError(f"{owner}: its role is not an AWS::IAM::Role of the template ({value!r}); cannot model it")

    roles: dict[str, Role] = {}

    def role(logical: str) -> Role:
        if logical in roles:
            return roles[logical]
        props = resources[logical].get("Properties") or {}
        r = Role(logical=logical, name=resolver.physical_name(logical))
        counter = 0

        def add_document(policy_name: str, document: Any, managed: bool) -> None:
            nonlocal counter
            if not isinstance(document, dict):
                r.problems.append(f"policy {policy_name}: not a policy document")
                return
            if not managed:
                r.documents.append((policy_name, document))
            for stmt in as_list(document.get("Statement")):
                counter += 1
                r.statements.append(Statement(sid=f"S{counter}", policy=policy_name,
                                              document=stmt, managed=managed))

        for policy in resolver.resolve(props.get("Policies") or []):
            add_document(policy.get("PolicyName", "inline"), policy.get("PolicyDocument"), False)
        for arn in resolver.resolve(props.get("ManagedPolicyArns") or []):
            if arn in KNOWN_MANAGED:
                add_document(arn.rsplit("/", 1)[-1], KNOWN_MANAGED[arn], True)
                continue
            local = next((lid for lid, res in resources.items()
                          if res["Type"] == "AWS::IAM::ManagedPolicy" and resolver.ref(lid) == arn), None)
            if local:
                add_document(local, resolver.resolve(resources[local]["Properties"]["PolicyDocument"]), False)
            else:
                r.problems.append(f"managed policy {arn} is not known to the checker; cannot evaluate it")
        if props.get("PermissionsBoundary") is not None:
            r.problems.append("PermissionsBoundary is not modelled by the checker")
        # AWS::IAM::Policy / ManagedPolicy resources attached to this role by name.
        for lid, res in resources.items():
            if res["Type"] not in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy") or not resolver.enabled(lid):
                continue
            attached = [a for a in as_list((res.get("Properties") or {}).get("Roles"))
                        if a == {"Ref": logical}]
            if attached:
                p = res["Properties"]
                add_document(str(resolver.resolve(p.get("PolicyName") or lid)),
                             resolver.resolve(p["PolicyDocument"]), False)
        roles[logical] = r
        return r

    functions: dict[str, Function] = {}
    sam_resources = sam.get("Resources") or {}
    for logical, res in resources.items():
        if res["Type"] != "AWS::Lambda::Function" or not resolver.enabled(logical):
            continue
        binary = (res.get("Metadata") or sam_resources.get(logical, {}).get("Metadata") or {}) \
            .get("BuildProperties", {}).get("Binary")
        if not binary:
            continue  # not one of ours (no cargo-lambda binary)
        props = res.get("Properties") or {}
        fn = Function(logical=logical, binary=binary, name=resolver.physical_name(logical),
                      role=role(role_ref(props.get("Role"), logical)))
        if binary in functions:
            raise CheckError(f"two functions build binary {binary}: {functions[binary].logical} and {logical}")
        functions[binary] = fn

    machines = []
    for logical, res in resources.items():
        if res["Type"] != "AWS::StepFunctions::StateMachine" or not resolver.enabled(logical):
            continue
        props = res.get("Properties") or {}
        machines.append((logical, props, role(role_ref(props.get("RoleArn"), logical))))

    # Roles of schedules and rules that start executions (checked statically too).
    for logical, res in resources.items():
        if res["Type"] == "AWS::IAM::Role" and resolver.enabled(logical):
            role(logical)
    aliases, key_policies = template_keys(resolver)
    return Model(functions=functions, roles=roles, state_machines=machines,
                 resolver=resolver, sam=sam, template_dir=template_dir,
                 kms_aliases=aliases, key_policies=key_policies)


def template_keys(resolver: Resolver) -> tuple[dict[str, str], dict[str, dict]]:
    """The template's KMS keys: (alias name -> key ARN, key ARN -> resolved KeyPolicy).
    An alias's TargetKeyId is a key id or key ARN (Ref or GetAtt of an AWS::KMS::Key of the
    template, or a literal); it resolves to the key ARN IAM authorizes a call by alias
    against (AWS KMS Developer Guide, "Using aliases to control access to KMS keys")."""
    aliases: dict[str, str] = {}
    policies: dict[str, dict] = {}
    for logical, res in resolver.resources.items():
        if not resolver.enabled(logical):
            continue
        props = res.get("Properties") or {}
        if res["Type"] == "AWS::KMS::Key" and isinstance(props.get("KeyPolicy"), dict):
            policies[resolver.get_att(logical, "Arn")] = resolver.resolve(props["KeyPolicy"])
        elif res["Type"] == "AWS::KMS::Alias":
            name, target = resolver.resolve(props.get("AliasName")), resolver.resolve(props.get("TargetKeyId"))
            if not isinstance(name, str) or not isinstance(target, str):
                raise CheckError(f"{logical}: AliasName/TargetKeyId do not resolve to strings ({name!r}, {target!r})")
            aliases[name] = kms_key_arn(target, REGION)
    return aliases, policies


# --------------------------------------------------------------------------------------
# Ledger -> IAM requests


@dataclass
class Call:
    line: int
    function: str
    service: str
    operation: str
    region: str
    resource: str
    keys: list[str]
    copy_source: str | None
    tagging: bool
    tagging_directive: str | None
    context: dict[str, str]
    kms_key: str | None
    status: int
    error: str | None
    checksum_mode: bool
    # RDS, Lambda, AWS Backup, SSM Run Command, EventBridge Scheduler, KMS, Step Functions,
    # SNS: the request's own fields (ledger `params`).
    params: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        prefix = self.context.get("s3:prefix")
        if prefix is not None and self.resource.startswith("arn:aws:s3:::") and not is_object(self.resource):
            return f"{self.operation} {pretty(bucket_arn(self.resource))}/{prefix}"
        if self.resource == "*" and self.params:
            subject = next((self.params[k] for k in DESCRIBE_PARAMS if self.params.get(k)), None)
            if subject:
                return f"{self.operation} {subject}"
        return f"{self.operation} {pretty(self.resource)}"

    @property
    def not_found(self) -> bool:
        return self.status == 404 or self.error in ("NoSuchKey", "NotFound")


@dataclass
class Request:
    action: str
    resource: str
    context: dict[str, str]
    why: str                  # what in the call needs it (for the denial line)
    kind: str = "call"        # call | 404-list | kms | copy-source | tagging
    needs_nothing: str = ""   # a reason the call needs no permission at all


REQUIRED_FIELDS = ("function", "service", "operation")
# What names a params call in a denial line, first found first.
DESCRIBE_PARAMS = ("DBInstanceIdentifier", "DocumentName", "CommandId", "RecoveryPointArn", "path",
                   "KeyId", "executionArn", "stateMachineArn", "TopicArn", "TargetArn")


def read_ledger(path: Path) -> list[Call]:
    if not path.exists():
        raise CheckError(f"no ledger at {path}: the tests recorded no AWS calls (is DRPILOT_CALL_LEDGER set?); "
                         "the permission check must not pass without evidence")
    calls = []
    problems = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{number}: not JSON ({e})")
            continue
        missing = [f for f in REQUIRED_FIELDS if not raw.get(f)]
        if missing:
            problems.append(f"{path}:{number}: missing {missing}")
            continue
        calls.append(Call(
            line=number, function=raw["function"], service=str(raw["service"]).lower(),
            operation=raw["operation"], region=raw.get("region") or REGION,
            resource=raw.get("resource") or "*", keys=list(raw.get("keys") or []),
            copy_source=raw.get("copy_source"), tagging=bool(raw.get("tagging")),
            tagging_directive=(raw.get("tagging_directive") or None),
            context={k: str(v) for k, v in (raw.get("context") or {}).items()},
            kms_key=raw.get("kms_key") or None, status=int(raw.get("status") or 0),
            error=raw.get("error") or None, checksum_mode=bool(raw.get("checksum_mode")),
            params={k: str(v) for k, v in (raw.get("params") or {}).items()},
        ))
    if problems:
        raise CheckError("malformed ledger:\n  " + "\n  ".join(problems[:20]))
    if not calls:
        raise CheckError(f"the ledger {path} is empty: the tests recorded no AWS calls; "
                         "the permission check must not pass without evidence")
    return calls


def pretty(arn: str) -> str:
    if arn.startswith("arn:aws:s3:::"):
        return "s3://" + arn[len("arn:aws:s3:::"):]
    return arn


def bucket_arn(arn: str) -> str:
    return "arn:aws:s3:::" + arn[len("arn:aws:s3:::"):].split("/", 1)[0]


def object_arn(arn: str, key: str) -> str:
    return f"{bucket_arn(arn)}/{key}"


def is_object(arn: str) -> bool:
    rest = arn[len("arn:aws:s3:::"):] if arn.startswith("arn:aws:s3:::") else ""
    return "/" in rest and rest.split("/", 1)[1] != ""


def kms_key_arn(key: str, region: str) -> str:
    if key.startswith("arn:"):
        return key
    if key.startswith("alias/"):
        return f"arn:{PARTITION}:kms:{region}:{ACCOUNT}:{key}"
    return f"arn:{PARTITION}:kms:{region}:{ACCOUNT}:key/{key}"


def with_account(arn: str) -> str:
    """The Rust side leaves the account of SSM ARNs empty; the test account fills it."""
    parts = arn.split(":", 5)
    if len(parts) == 6 and parts[0] == "arn" and parts[2] not in ("s3", "iam") and parts[4] == "":
        parts[4] = ACCOUNT
        return ":".join(parts)
    return arn


# S3 operations: (IAM action on the call's resource, resource kind, object read?)
# Sources: each operation's "Permissions" section in the Amazon S3 API Reference, and
# "Actions, resources, and condition keys for Amazon S3" (Service Authorization Reference).
S3_SIMPLE = {
    "GetObject": ("s3:GetObject", "object", True),
    "HeadObject": ("s3:GetObject", "object", True),
    "GetObjectTagging": ("s3:GetObjectTagging", "object", True),
    "PutObjectTagging": ("s3:PutObjectTagging", "object", False),
    "DeleteObjectTagging": ("s3:DeleteObjectTagging", "object", False),
    "PutObject": ("s3:PutObject", "object", False),
    "CreateMultipartUpload": ("s3:PutObject", "object", False),
    "UploadPart": ("s3:PutObject", "object", False),
    "CompleteMultipartUpload": ("s3:PutObject", "object", False),
    "AbortMultipartUpload": ("s3:AbortMultipartUpload", "object", False),
    "ListParts": ("s3:ListMultipartUploadParts", "object", False),
    "DeleteObject": ("s3:DeleteObject", "object", False),
    "ListObjectsV2": ("s3:ListBucket", "bucket", False),
    "ListObjects": ("s3:ListBucket", "bucket", False),
    "HeadBucket": ("s3:ListBucket", "bucket", False),
    "ListMultipartUploads": ("s3:ListBucketMultipartUploads", "bucket", False),
    "GetBucketLocation": ("s3:GetBucketLocation", "bucket", False),
    # Object Lock: the API names differ from the IAM actions (Service Authorization
    # Reference; Amazon S3 API Reference, GetObjectLockConfiguration: "s3:GetBucketObjectLockConfiguration").
    "GetObjectLockConfiguration": ("s3:GetBucketObjectLockConfiguration", "bucket", False),
    "GetBucketVersioning": ("s3:GetBucketVersioning", "bucket", False),
    "ListObjectVersions": ("s3:ListBucketVersions", "bucket", False),
    "GetObjectRetention": ("s3:GetObjectRetention", "object", True),
    "GetObjectLegalHold": ("s3:GetObjectLegalHold", "object", True),
    "PutObjectRetention": ("s3:PutObjectRetention", "object", False),
    "PutObjectLegalHold": ("s3:PutObjectLegalHold", "object", False),
}
# A request naming a version (the versionId query parameter; ledger context `s3:versionid`)
# is authorized against the version action (Amazon S3 API Reference, GetObject, HeadObject,
# DeleteObject and the tagging operations: "s3:GetObjectVersion" ...). Object Lock's own
# operations take the version without changing the action. A PutObject answers with a
# version id but names none: it stays s3:PutObject.
S3_VERSIONED = {
    "s3:GetObject": "s3:GetObjectVersion",
    "s3:GetObjectTagging": "s3:GetObjectVersionTagging",
    "s3:PutObjectTagging": "s3:PutObjectVersionTagging",
    "s3:DeleteObjectTagging": "s3:DeleteObjectVersionTagging",
    "s3:DeleteObject": "s3:DeleteObjectVersion",
}
# Object Lock headers on a write: x-amz-object-lock-mode / -retain-until-date need
# s3:PutObjectRetention, x-amz-object-lock-legal-hold needs s3:PutObjectLegalHold (Amazon
# S3 API Reference, PutObject and CreateMultipartUpload, Permissions). The ledger records
# them as the condition keys of the same names.
S3_LOCK_HEADERS = (("s3:object-lock-mode", "s3:PutObjectRetention"),
                   ("s3:object-lock-retain-until-date", "s3:PutObjectRetention"),
                   ("s3:object-lock-legal-hold", "s3:PutObjectLegalHold"))
KMS_WRITES = {"PutObject", "CreateMultipartUpload"}
KMS_MULTIPART_DECRYPT = {"UploadPart", "CompleteMultipartUpload", "ListParts"}


def requests_for(call: Call, aliases: dict[str, str] | None = None) -> list[Request]:
    """The IAM requests AWS authorises for one recorded call (raises KeyError when the
    operation is not mapped). `aliases` maps the template's KMS alias names to the ARNs of
    the keys they point to (Model.kms_aliases)."""
    service, op = call.service, call.operation
    if service == "sts" and op == "GetCallerIdentity":
        return [Request("sts:GetCallerIdentity", "*", {}, "",
                        needs_nothing="STS API Reference, GetCallerIdentity: no permissions are required")]
    if service == "ssm" and op in ("GetParameter", "GetParameters", "GetParametersByPath"):
        action = {"GetParameter": "ssm:GetParameter", "GetParameters": "ssm:GetParameters",
                  "GetParametersByPath": "ssm:GetParametersByPath"}[op]
        out = [Request(action, with_account(call.resource), call.context, "the call")]
        if call.kms_key:
            out.append(Request("kms:Decrypt", kms_key_arn(call.kms_key, call.region),
                               {"kms:ViaService": f"ssm.{call.region}.amazonaws.com"},
                               "a SecureString parameter under a KMS key", kind="kms"))
        return out
    if service == "ssm" and op in SSM_RUN_COMMAND:
        return run_command_requests(call)
    if service == "rds":
        return rds_requests(call)
    if service == "lambda":
        return lambda_requests(call)
    if service == "backup":
        return backup_requests(call)
    if service == "scheduler":
        return scheduler_requests(call)
    if service == "kms":
        return kms_requests(call, aliases or {})
    if service in ("sfn", "states"):
        return states_requests(call)
    if service == "sns":
        return sns_requests(call)
    if service in ("monitoring", "cloudwatch"):
        action = {"PutMetricData": "cloudwatch:PutMetricData", "GetMetricData": "cloudwatch:GetMetricData",
                  "GetMetricStatistics": "cloudwatch:GetMetricStatistics",
                  "ListMetrics": "cloudwatch:ListMetrics"}.get(op)
        if action:
            return [Request(action, "*", call.context, "the call")]
        raise KeyError(op)
    if service != "s3":
        raise KeyError(op)

    kms_context = {"kms:ViaService": f"s3.{call.region}.amazonaws.com"}
    out: list[Request] = []
    if op == "DeleteObjects":
        # One s3:DeleteObject per key (S3 API Reference, DeleteObjects: Permissions).
        for key in call.keys:
            out.append(Request("s3:DeleteObject", object_arn(call.resource, key), {},
                               f"key {key!r} of the request"))
        if not call.keys:
            out.append(Request("s3:DeleteObject", call.resource.rstrip("/") + "/*", {},
                               "the request (no keys recorded)"))
        return out
    if op in ("CopyObject", "UploadPartCopy"):
        if not call.copy_source:
            raise CheckError(f"ledger line {call.line}: {op} without copy_source")
        source = call.copy_source
        out.append(Request("s3:PutObject", call.resource, call.context, "the copy's destination"))
        out.append(Request("s3:GetObject", source, {}, "the copy's source", kind="copy-source"))
        if op == "CopyObject":
            directive = (call.tagging_directive or "COPY").upper()
            if directive == "COPY":
                # Copying the tag-set (the default directive) reads the source's tags and
                # writes them on the destination.
                out.append(Request("s3:GetObjectTagging", source, {},
                                   "tagging directive COPY (the source's tags are read)", kind="tagging"))
                out.append(Request("s3:PutObjectTagging", call.resource, {},
                                   "tagging directive COPY (the tags are written on the copy)", kind="tagging"))
            elif call.tagging:
                out.append(Request("s3:PutObjectTagging", call.resource, {},
                                   "tagging directive REPLACE with x-amz-tagging", kind="tagging"))
        if call.kms_key:
            key = kms_key_arn(call.kms_key, call.region)
            out.append(Request("kms:Decrypt", key, kms_context, "an SSE-KMS source", kind="kms"))
            if op == "CopyObject":
                out.append(Request("kms:GenerateDataKey", key, kms_context, "an SSE-KMS destination", kind="kms"))
            else:
                out.append(Request("kms:Decrypt", key, kms_context,
                                   "a part copied into an SSE-KMS multipart upload", kind="kms"))
        if call.not_found:
            out.append(Request("s3:ListBucket", bucket_arn(source), {},
                               "a missing copy source (404)", kind="404-list"))
        return out

    mapped = S3_SIMPLE.get(op)
    if mapped is None:
        raise KeyError(op)
    action, kind, read = mapped
    resource = call.resource
    if kind == "bucket":
        resource = bucket_arn(resource)
    elif not is_object(resource):
        raise CheckError(f"ledger line {call.line}: {op} on {resource}, expected an object ARN")
    version = call.context.get("s3:versionid") or call.params.get("query.versionId")
    context = dict(call.context)
    if version:
        context["s3:versionid"] = version
        action = S3_VERSIONED.get(action, action)
    out.append(Request(action, resource, context, "the call" if not version else f"version {version}"))
    if op in ("PutObject", "CreateMultipartUpload") and call.tagging:
        out.append(Request("s3:PutObjectTagging", resource, {}, "the x-amz-tagging header", kind="tagging"))
    if op in ("PutObject", "CreateMultipartUpload"):
        for header, lock_action in S3_LOCK_HEADERS:
            if header in call.context and not any(r.action == lock_action for r in out):
                out.append(Request(lock_action, resource, {k: v for k, v in call.context.items() if k.startswith("s3:object-lock-")},
                                   f"the x-amz-{header[3:]} header"))
    if call.kms_key:
        key = kms_key_arn(call.kms_key, call.region)
        if op == "GetObject":
            out.append(Request("kms:Decrypt", key, kms_context, "an SSE-KMS object read", kind="kms"))
        if op == "HeadObject" and call.checksum_mode:
            # HeadObject API Reference: with x-amz-checksum-mode on an SSE-KMS object.
            out.append(Request("kms:Decrypt", key, kms_context, "the checksum of an SSE-KMS object", kind="kms"))
            out.append(Request("kms:GenerateDataKey", key, kms_context, "the checksum of an SSE-KMS object", kind="kms"))
        if op in KMS_WRITES:
            out.append(Request("kms:GenerateDataKey", key, kms_context, "an SSE-KMS write", kind="kms"))
        if op in KMS_MULTIPART_DECRYPT:
            out.append(Request("kms:Decrypt", key, kms_context, "a part of an SSE-KMS multipart upload", kind="kms"))
    if read and call.not_found:
        out.append(Request("s3:ListBucket", bucket_arn(resource), {},
                           "the 404 answer", kind="404-list"))
    return out


# RDS, Lambda, AWS Backup, SSM Run Command and EventBridge Scheduler: the resources come
# from the request's own fields (`params`), the account and region from the call. Sources:
# "Actions, resources, and condition keys for Amazon RDS / AWS Lambda / AWS Backup / AWS
# Systems Manager / Amazon EventBridge Scheduler" (Service Authorization Reference), and the
# API References' permission notes (below).

def rds_arn(kind: str, name: str, region: str) -> str:
    """An RDS resource ARN from an identifier (RDS identifiers are stored lower-case) or
    an ARN passed as it is (a shared snapshot is named by its ARN)."""
    if name.startswith("arn:"):
        return name
    return f"arn:{PARTITION}:rds:{region}:{ACCOUNT}:{kind}:{name.lower()}"


RDS_TAG_KEY = re.compile(r"^Tags\.[^.]+\.(\d+)\.Key$")   # Tags.Tag.1.Key (awsQuery); Tags.member.1.Key


def rds_tags(params: dict[str, str]) -> dict[str, str]:
    tags = {}
    for name, key in params.items():
        match = RDS_TAG_KEY.match(name)
        if match:
            tags[key] = params.get(name[:-len("Key")] + "Value", "")
    return tags


def rds_requests(call: Call) -> list[Request]:
    op, params, region = call.operation, call.params, call.region
    instance = params.get("DBInstanceIdentifier")
    if op == "DescribeDBInstances":
        # Without an identifier the call lists every instance: the wildcard ARN.
        return [Request("rds:DescribeDBInstances", rds_arn("db", instance or "*", region), {}, "the call")]
    if op == "DescribeDBSnapshots":
        out = []
        if instance:
            out.append(Request("rds:DescribeDBSnapshots", rds_arn("db", instance, region), {},
                               "the DBInstanceIdentifier filter"))
        if params.get("DBSnapshotIdentifier"):
            out.append(Request("rds:DescribeDBSnapshots", rds_arn("snapshot", params["DBSnapshotIdentifier"], region),
                               {}, "the DBSnapshotIdentifier filter"))
        return out or [Request("rds:DescribeDBSnapshots", rds_arn("snapshot", "*", region), {}, "the call")]
    if op == "DeleteDBInstance":
        if not instance:
            raise CheckError(f"ledger line {call.line}: DeleteDBInstance without DBInstanceIdentifier in params")
        # A final snapshot (SkipFinalSnapshot false) would also need rds:CreateDBSnapshot.
        out = [Request("rds:DeleteDBInstance", rds_arn("db", instance, region), {}, "the call")]
        if params.get("SkipFinalSnapshot", "false").lower() != "true":
            name = params.get("FinalDBSnapshotIdentifier") or "final-snapshot"
            out.append(Request("rds:CreateDBSnapshot", rds_arn("snapshot", name, region), {},
                               "the final snapshot (SkipFinalSnapshot is not set)"))
        return out
    if op == "RestoreDBInstanceFromDBSnapshot":
        if not instance:
            raise CheckError(f"ledger line {call.line}: {op} without DBInstanceIdentifier in params")
        tags = rds_tags(params)
        tag_context = {f"aws:RequestTag/{k}": v for k, v in tags.items()}
        target = rds_arn("db", instance, region)
        out = [Request("rds:RestoreDBInstanceFromDBSnapshot", target, tag_context, "the new DB instance")]
        if params.get("DBSnapshotIdentifier"):
            out.append(Request("rds:RestoreDBInstanceFromDBSnapshot",
                               rds_arn("snapshot", params["DBSnapshotIdentifier"], region), {}, "the source snapshot"))
        if params.get("DBClusterSnapshotIdentifier"):
            out.append(Request("rds:RestoreDBInstanceFromDBSnapshot",
                               rds_arn("cluster-snapshot", params["DBClusterSnapshotIdentifier"], region), {},
                               "the source cluster snapshot"))
        # The instance's subnet group: the request's, else the default VPC's "default".
        out.append(Request("rds:RestoreDBInstanceFromDBSnapshot",
                           rds_arn("subgrp", params.get("DBSubnetGroupName") or "default", region), {},
                           "the DB subnet group the instance is placed in"))
        # The option and parameter groups: the request's, else the snapshot's own, whose
        # names the request does not carry. The stand-in name stands for "any": only a grant
        # that covers every group name of the account allows it.
        for kind, field_name, what in (("og", "OptionGroupName", "option group"),
                                       ("pg", "DBParameterGroupName", "DB parameter group")):
            named = params.get(field_name)
            out.append(Request("rds:RestoreDBInstanceFromDBSnapshot",
                               rds_arn(kind, named or UNNAMED_GROUP, region), {},
                               f"the {what} the instance gets" + ("" if named else " (the snapshot's, not named by the request)")))
        if tags:
            # RDS User Guide, "Tagging Amazon RDS resources": tags on a create or restore call
            # need rds:AddTagsToResource on the new resource.
            out.append(Request("rds:AddTagsToResource", target, tag_context, "the Tags of the request", kind="tagging"))
        return out
    if op == "AddTagsToResource":
        name = params.get("ResourceName")
        if not name:
            raise CheckError(f"ledger line {call.line}: AddTagsToResource without ResourceName in params")
        tags = rds_tags(params)
        return [Request("rds:AddTagsToResource", name, {f"aws:RequestTag/{k}": v for k, v in tags.items()}, "the call")]
    raise KeyError(op)


UNNAMED_GROUP = "(the-snapshots-own)"


LAMBDA_PATH = re.compile(r"^/[0-9-]+/functions/(?P<name>[^/]+)(?P<rest>/.*)?$")


def lambda_function_arn(name: str, qualifier: str | None, region: str) -> str:
    """FunctionName in any of its forms (name, name:qualifier, ACCOUNT:function:name,
    a full or qualified ARN) as the ARN Lambda authorizes; a Qualifier parameter is the
    alias or version the ARN is qualified with."""
    if name.startswith("arn:"):
        arn = name
    elif ":function:" in name:
        arn = f"arn:{PARTITION}:lambda:{region}:{name}"
    else:
        arn = f"arn:{PARTITION}:lambda:{region}:{ACCOUNT}:function:{name}"
    parts = arn.split(":")
    if qualifier and len(parts) == 7:
        arn = f"{arn}:{qualifier}"
    return arn


LAMBDA_ACTIONS = {"Invoke": "lambda:InvokeFunction", "GetFunction": "lambda:GetFunction",
                  "GetFunctionConfiguration": "lambda:GetFunctionConfiguration"}


def lambda_requests(call: Call) -> list[Request]:
    if call.operation == "GetAccountSettings":
        # An account-wide read: IAM knows no resource for it.
        return [Request("lambda:GetAccountSettings", "*", {}, "the account's concurrency")]
    action = LAMBDA_ACTIONS.get(call.operation)
    if action is None:
        raise KeyError(call.operation)
    match = LAMBDA_PATH.match(call.params.get("path", ""))
    if not match:
        raise CheckError(f"ledger line {call.line}: {call.operation} without a /functions/NAME path in params")
    arn = lambda_function_arn(match["name"], call.params.get("query.Qualifier"), call.region)
    return [Request(action, arn, {}, "the call")]


BACKUP_PATH = re.compile(r"^/backup-vaults/(?P<vault>[^/]+)/recovery-points(?:/(?P<point>.+)/restore-metadata)?$")


def backup_requests(call: Call) -> list[Request]:
    op, params = call.operation, call.params
    if op in ("ListRecoveryPointsByBackupVault", "GetRecoveryPointRestoreMetadata"):
        match = BACKUP_PATH.match(params.get("path", ""))
        if not match or (op == "GetRecoveryPointRestoreMetadata") != bool(match["point"]):
            raise CheckError(f"ledger line {call.line}: {op} with an unexpected path {params.get('path')!r}")
        if op == "ListRecoveryPointsByBackupVault":
            account = params.get("query.backupVaultAccountId") or ACCOUNT
            vault = f"arn:{PARTITION}:backup:{call.region}:{account}:backup-vault:{match['vault']}"
            return [Request("backup:ListRecoveryPointsByBackupVault", vault, {}, "the call")]
        return [Request("backup:GetRecoveryPointRestoreMetadata", match["point"], {}, "the call")]
    if op == "StartRestoreJob":
        point = params.get("RecoveryPointArn")
        if not point:
            raise CheckError(f"ledger line {call.line}: StartRestoreJob without RecoveryPointArn in params")
        out = [Request("backup:StartRestoreJob", point, {}, "the recovery point")]
        role = params.get("IamRoleArn")
        if role:
            # IamRoleArn is a role handed to AWS Backup, which restores with it: IAM User
            # Guide, "Grant a user permissions to pass a role to an AWS service".
            out.append(Request("iam:PassRole", role, {"iam:PassedToService": "backup.amazonaws.com"},
                               "the IamRoleArn AWS Backup restores with"))
        return out
    if op in ("DescribeRestoreJob", "PutRestoreValidationResult"):
        # No resource type: "*" (Service Authorization Reference, AWS Backup).
        return [Request(f"backup:{op}", "*", {}, "the call")]
    raise KeyError(op)


# EventBridge Scheduler (REST): GetSchedule is GET /schedules/{Name}?groupName=GROUP, the
# group `default` when the request names none. Source: "Actions, resources, and condition
# keys for Amazon EventBridge Scheduler" (resource type `schedule`:
# arn:${Partition}:scheduler:${Region}:${Account}:schedule/${GroupName}/${ScheduleName}).
SCHEDULER_PATH = re.compile(r"^/schedules/(?P<name>[^/]+)$")


def scheduler_requests(call: Call) -> list[Request]:
    if call.operation != "GetSchedule":
        raise KeyError(call.operation)
    match = SCHEDULER_PATH.match(call.params.get("path", ""))
    if not match:
        raise CheckError(f"ledger line {call.line}: GetSchedule without a /schedules/NAME path in params "
                         f"(got {call.params.get('path')!r})")
    group = call.params.get("query.groupName") or "default"
    arn = f"arn:{PARTITION}:scheduler:{call.region}:{ACCOUNT}:schedule/{group}/{match['name']}"
    return [Request("scheduler:GetSchedule", arn, {}, "the call")]


# KMS (JSON protocol): every operation names its key in KeyId: a key id, key ARN, alias
# name (alias/NAME) or alias ARN. IAM authorizes a call by alias against the key the alias
# points to, with kms:RequestAlias set (AWS KMS Developer Guide, "Using aliases to control
# access to KMS keys"), so an alias resolves through the template's AWS::KMS::Alias
# resources; one the template does not define cannot be checked and fails. Source for the
# actions and their resource type `key`: "Actions, resources, and condition keys for AWS Key
# Management Service" (Service Authorization Reference).
KMS_ACTIONS = {"GenerateMac": "kms:GenerateMac", "VerifyMac": "kms:VerifyMac",
               "DescribeKey": "kms:DescribeKey", "GetKeyRotationStatus": "kms:GetKeyRotationStatus"}
# KeyId takes no alias here (AWS KMS API Reference, GetKeyRotationStatus: "Specify the key
# ID or key ARN of the KMS key"): KMS rejects one, moto may not.
KMS_NO_ALIAS = {"GetKeyRotationStatus"}


def is_kms_alias(key: str) -> bool:
    return key.startswith("alias/") or (key.startswith("arn:") and ":alias/" in key)


def kms_requests(call: Call, aliases: dict[str, str]) -> list[Request]:
    action = KMS_ACTIONS.get(call.operation)
    if action is None:
        raise KeyError(call.operation)
    key = call.params.get("KeyId")
    if not key:
        raise CheckError(f"ledger line {call.line}: {call.operation} without KeyId in params")
    context: dict[str, str] = {}
    if is_kms_alias(key):
        if call.operation in KMS_NO_ALIAS:
            raise CheckError(f"ledger line {call.line}: {call.operation} names alias {key}, but KMS takes only a "
                             "key id or key ARN there (AWS KMS API Reference)")
        name = "alias/" + key.split(":alias/", 1)[1] if key.startswith("arn:") else key
        if name not in aliases:
            raise CheckError(f"ledger line {call.line}: {call.operation} names KMS alias {name}, which no "
                             f"AWS::KMS::Alias of the template defines (known: {', '.join(sorted(aliases)) or 'none'})")
        context["kms:RequestAlias"] = name
        resource = aliases[name]
    else:
        resource = kms_key_arn(key, call.region)
    if call.params.get("MacAlgorithm"):
        context["kms:MacAlgorithm"] = call.params["MacAlgorithm"]
    why = "the call" if "kms:RequestAlias" not in context else \
        f"alias {context['kms:RequestAlias']}, authorized against its key"
    return [Request(action, resource, context, why)]


# Step Functions (JSON protocol, SDK service name `sfn`): the execution or state machine
# comes from the request's executionArn / stateMachineArn. SendTaskSuccess, SendTaskFailure
# and SendTaskHeartbeat support no resource type: "*". Source: "Actions, resources, and
# condition keys for AWS Step Functions" (Service Authorization Reference; resource types
# `execution`: arn:${Partition}:states:${Region}:${Account}:execution:${StateMachineName}:${ExecutionId},
# `statemachine`: ...:stateMachine:${StateMachineName}).
STATES_BY_EXECUTION = {"DescribeExecution", "GetExecutionHistory", "StopExecution"}
STATES_BY_MACHINE = {"ListExecutions", "StartExecution", "DescribeStateMachine"}
STATES_TASK = {"SendTaskSuccess", "SendTaskFailure", "SendTaskHeartbeat"}


def states_requests(call: Call) -> list[Request]:
    op, params = call.operation, call.params
    if op in STATES_TASK:
        if not params.get("taskToken"):
            raise CheckError(f"ledger line {call.line}: {op} without taskToken in params")
        return [Request(f"states:{op}", "*", {}, "the call")]
    if op in STATES_BY_EXECUTION:
        field_name = "executionArn"
    elif op in STATES_BY_MACHINE:
        field_name = "stateMachineArn"
    else:
        raise KeyError(op)
    arn = params.get(field_name)
    if not arn and op == "ListExecutions" and params.get("mapRunArn"):
        arn = params["mapRunArn"]
    if not arn:
        raise CheckError(f"ledger line {call.line}: {op} without {field_name} in params")
    return [Request(f"states:{op}", arn, {}, "the call")]


# SNS (query protocol: the ledger records the form fields as params): Publish names its
# topic in TopicArn (or a target in TargetArn). Source: "Actions, resources, and condition
# keys for Amazon SNS" (resource type `topic`).
def sns_requests(call: Call) -> list[Request]:
    if call.operation != "Publish":
        raise KeyError(call.operation)
    target = call.params.get("TopicArn") or call.params.get("TargetArn")
    if not target:
        raise CheckError(f"ledger line {call.line}: Publish without TopicArn or TargetArn in params")
    return [Request("sns:Publish", target, {}, "the call")]


SSM_RUN_COMMAND = {"SendCommand", "GetCommandInvocation", "ListCommandInvocations"}
# SSM reserves these prefixes for AWS-owned documents (no one else may create one); their
# ARN has no account.
AWS_DOCUMENT_PREFIXES = ("aws", "amazon", "amzn")
TARGET_INSTANCES = "(resolved-from-targets)"


def ssm_document_arn(name: str, region: str) -> str:
    if name.startswith("arn:"):
        return name
    owner = "" if name.lower().startswith(AWS_DOCUMENT_PREFIXES) else ACCOUNT
    return f"arn:{PARTITION}:ssm:{region}:{owner}:document/{name}"


def ssm_node_arn(node: str, region: str) -> str:
    """An EC2 instance (i-...) is authorized as an ec2 ARN, a managed node (mi-...) as ssm's."""
    if node.startswith("mi-"):
        return f"arn:{PARTITION}:ssm:{region}:{ACCOUNT}:managed-instance/{node}"
    return f"arn:{PARTITION}:ec2:{region}:{ACCOUNT}:instance/{node}"


def run_command_requests(call: Call) -> list[Request]:
    op, params, region = call.operation, call.params, call.region
    if op in ("GetCommandInvocation", "ListCommandInvocations"):
        # No resource type: "*" (Service Authorization Reference, AWS Systems Manager).
        return [Request(f"ssm:{op}", "*", {}, "the call")]
    document = params.get("DocumentName")
    if not document:
        raise CheckError(f"ledger line {call.line}: SendCommand without DocumentName in params")
    doc = ssm_document_arn(document, region)
    out = [Request("ssm:SendCommand", doc, {}, "the document",
                   kind="aws-owned" if doc.split(":")[4] == "" else "call")]
    nodes = [i for i in params.get("InstanceIds", "").split(",") if i]
    tagged = False
    if params.get("Targets"):
        try:
            targets = json.loads(params["Targets"])
        except json.JSONDecodeError as e:
            raise CheckError(f"ledger line {call.line}: SendCommand Targets is not JSON: {e}") from e
        for target in targets or []:
            if str(target.get("Key", "")).lower() == "instanceids":
                nodes.extend(str(v) for v in target.get("Values") or [])
            else:
                tagged = True
    for node in dict.fromkeys(nodes):
        out.append(Request("ssm:SendCommand", ssm_node_arn(node, region), {}, f"node {node}"))
    if tagged:
        # Tag (or resource group) targets resolve to nodes only SSM knows: a stand-in for
        # "any EC2 instance and any managed node of the account".
        for arn in (f"arn:{PARTITION}:ec2:{region}:{ACCOUNT}:instance/{TARGET_INSTANCES}",
                    f"arn:{PARTITION}:ssm:{region}:{ACCOUNT}:managed-instance/{TARGET_INSTANCES}"):
            out.append(Request("ssm:SendCommand", arn, {}, "the nodes the tag targets resolve to"))
    return out


# --------------------------------------------------------------------------------------
# State machine: static requests


TASK_LAMBDA = re.compile(r"^arn:aws[a-z-]*:states:::lambda:invoke(\.waitForTaskToken)?$")
TASK_SNS = re.compile(r"^arn:aws[a-z-]*:states:::sns:publish(\.waitForTaskToken)?$")
LOG_DELIVERY_ACTIONS = ["logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery",
                        "logs:DeleteLogDelivery", "logs:ListLogDeliveries", "logs:PutResourcePolicy",
                        "logs:DescribeResourcePolicies", "logs:DescribeLogGroups"]


def definition_text(model: Model, logical: str) -> str:
    sam_res = (model.sam.get("Resources") or {}).get(logical)
    props = (sam_res or {}).get("Properties") or {}
    if isinstance(props.get("DefinitionUri"), str) and not props["DefinitionUri"].startswith("s3://"):
        path = (model.template_dir / props["DefinitionUri"]).resolve()
        try:
            return path.read_text()
        except OSError as e:
            raise CheckError(f"{logical}: cannot read its definition {path}: {e}") from e
    if isinstance(props.get("Definition"), dict):
        return json.dumps(props["Definition"])
    cfn_props = model.resolver.resources[logical].get("Properties") or {}
    if "DefinitionString" in cfn_props:
        return str(model.resolver.resolve(cfn_props["DefinitionString"]))
    raise CheckError(f"{logical}: no local definition to check")


def walk_states(states: dict, path: str = ""):
    for name, state in (states or {}).items():
        yield f"{path}{name}", state
        for branch in state.get("Branches") or []:
            yield from walk_states(branch.get("States"), f"{path}{name}/")
        for key in ("Iterator", "ItemProcessor"):
            if isinstance(state.get(key), dict):
                yield from walk_states(state[key].get("States"), f"{path}{name}/")


def state_machine_requests(model: Model) -> tuple[list[tuple[Role, Request, str]], list[str]]:
    """(role, request, what) triples the state machines' roles must allow, and problems."""
    out: list[tuple[Role, Request, str]] = []
    problems: list[str] = []
    for logical, props, role in model.state_machines:
        text = definition_text(model, logical)
        subs = {k: model.resolver.resolve(v) for k, v in (props.get("DefinitionSubstitutions") or {}).items()}

        def fill(match: re.Match) -> str:
            name = match.group(1)
            if name not in subs:
                problems.append(f"{logical}: the definition uses ${{{name}}}, which DefinitionSubstitutions does not supply")
                return match.group(0)
            return str(subs[name])

        try:
            definition = json.loads(re.sub(r"\$\{([A-Za-z0-9_]+)\}", fill, text))
        except json.JSONDecodeError as e:
            problems.append(f"{logical}: definition is not JSON after substitution: {e}")
            continue
        for state_name, state in walk_states(definition.get("States")):
            if state.get("Type") != "Task":
                continue
            resource = str(state.get("Resource", ""))
            args = state.get("Arguments") if isinstance(state.get("Arguments"), dict) else state.get("Parameters") or {}
            what = f"{logical} state {state_name}"
            if TASK_LAMBDA.match(resource) or resource.startswith(f"arn:{PARTITION}:lambda:"):
                target = resource if resource.startswith(f"arn:{PARTITION}:lambda:") else args.get("FunctionName")
                if not isinstance(target, str) or "{%" in target or "FunctionName.$" in args:
                    problems.append(f"{what}: FunctionName is not static ({target!r}); cannot check the invoke permission")
                    continue
                arn = target if target.startswith("arn:") else f"arn:{PARTITION}:lambda:{REGION}:{ACCOUNT}:function:{target}"
                out.append((role, Request("lambda:InvokeFunction", arn, {}, f"state {state_name} invokes it"), what))
            elif TASK_SNS.match(resource):
                target = args.get("TopicArn") or args.get("TargetArn")
                if not isinstance(target, str) or "{%" in target or "TopicArn.$" in args:
                    problems.append(f"{what}: TopicArn is not static ({target!r}); cannot check the publish permission")
                    continue
                out.append((role, Request("sns:Publish", target, {}, f"state {state_name} publishes to it"), what))
            else:
                problems.append(f"{what}: service integration {resource} is not mapped by infra/permissions.py")
        logging = props.get("LoggingConfiguration") or {}
        if logging.get("Destinations"):
            # Step Functions Developer Guide, "Logging in CloudWatch Logs": the role needs
            # these log-delivery actions on "*" to deliver execution logs.
            for action in LOG_DELIVERY_ACTIONS:
                out.append((role, Request(action, "*", {}, "execution logging to CloudWatch Logs"),
                            f"{logical} logging"))
    # Schedules and rules that start an execution, or invoke a function, with their own role.
    machine_arns = {model.resolver.ref(lid): lid for lid, _, _ in model.state_machines}
    function_arns = {fn.arn for fn in model.functions.values()}
    for logical, res in model.resolver.resources.items():
        if not model.resolver.enabled(logical):
            continue
        props = res.get("Properties") or {}
        targets = []
        if res["Type"] == "AWS::Scheduler::Schedule":
            targets = [props.get("Target") or {}]
        elif res["Type"] == "AWS::Events::Rule":
            targets = as_list(props.get("Targets"))
        for target in targets:
            arn = model.resolver.resolve(target.get("Arn"))
            if (arn not in machine_arns and arn not in function_arns) or not target.get("RoleArn"):
                continue
            try:
                role_logical = role_ref_of(target["RoleArn"], model)
            except CheckError as e:
                problems.append(str(e))
                continue
            if arn in machine_arns:
                request = Request("states:StartExecution", arn, {}, f"{logical} starts an execution")
            else:
                # EventBridge Scheduler invokes a Lambda target with the schedule's role
                # (EventBridge Scheduler User Guide, "Set up the execution role").
                request = Request("lambda:InvokeFunction", arn, {}, f"{logical} invokes it")
            out.append((model.roles[role_logical], request, f"{logical} target"))
    return out, problems


def role_ref_of(value: Any, model: Model) -> str:
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        target = value["Fn::GetAtt"]
        target = target.split(".", 1) if isinstance(target, str) else target
        if target[0] in model.roles:
            return target[0]
    raise CheckError(f"role {value!r} is not a role of the template")


# --------------------------------------------------------------------------------------
# Simulation


def global_context(role: Role, region: str) -> dict[str, str]:
    """Keys AWS sets on every request of the role's sessions."""
    return {"aws:PrincipalArn": role.arn, "aws:PrincipalAccount": ACCOUNT,
            "aws:RequestedRegion": region, "aws:SecureTransport": "true"}


def resource_policy(model: Model, req: Request) -> tuple[str, dict] | None:
    """(an id, the resource policy) the request is evaluated with, or None. KMS: every
    request on a key (the approval key's GenerateMac and VerifyMac, DescribeKey, and the
    SSE-KMS and SSM requests on the data and profile keys) carries that key's key policy:
    the template key's own KeyPolicy, else the default key policy (see DEFAULT_KEY_POLICY).
    A key named by alias was already resolved to the key (kms_requests)."""
    if not req.action.startswith("kms:"):
        return None
    if req.resource in model.key_policies:
        return req.resource, model.key_policies[req.resource]
    return "default-key-policy", DEFAULT_KEY_POLICY


def request_entry(model: Model, role: Role, session: str, region: str, req: Request, ident: int) -> dict:
    """The simulator's entry for one request of `role` (a session named `session`)."""
    context = dict(global_context(role, region))
    context.update(req.context)
    entry = {"id": ident, "role": role.logical, "action": req.action, "resource": req.resource,
             "context": context, "account": ACCOUNT,
             "principal": f"arn:{PARTITION}:sts::{ACCOUNT}:assumed-role/{role.name}/{session}"}
    policy = resource_policy(model, req)
    if policy is not None:
        entry["resourcePolicy"] = policy[1]
    if req.kind == "aws-owned":
        entry["local"] = True
    return entry


def decide(model: Model, requests: list[tuple[Role, str, Request]], region: str = REGION) -> list[dict]:
    """The decisions for (role, session, request) triples, evaluated as run() evaluates the
    ledger's requests (same context, same resource policies); `role` may be one the
    template does not have (the tests' account administrator). One result per triple."""
    entries = [request_entry(model, role, session, region, req, i) for i, (role, session, req) in enumerate(requests)]
    roles = {role.logical: role for role, _, _ in requests}
    remote = [e for e in entries if not e.get("local")]
    results = simulate(remote, {logical: r.simulator_policies() for logical, r in roles.items()}) if remote else {}
    return [results[e["id"]] if not e.get("local") else evaluate_locally(roles[e["role"]], e) for e in entries]


def simulate(batch: list[dict], policies: dict[str, list[dict]]) -> dict[int, dict]:
    node = os.environ.get("NODE", "node")
    if not (INFRA / "node_modules" / "@cloud-copilot" / "iam-simulate").exists():
        raise CheckError("@cloud-copilot/iam-simulate is not installed in infra/node_modules (run scripts/ensure-infra-tools.sh)")
    proc = subprocess.run([node, str(SIMULATOR)], input=json.dumps({"policies": policies, "requests": batch}),
                          capture_output=True, text=True, cwd=INFRA)
    if proc.returncode != 0:
        raise CheckError(f"the simulator failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return {r["id"]: r for r in json.loads(proc.stdout)["results"]}


def evaluate_locally(role: Role, entry: dict) -> dict:
    """The decision for a request the simulator cannot take: an ARN of an AWS-owned SSM
    document has no account (`arn:aws:ssm:REGION::document/AWS-RunShellScript`), which
    iam-simulate does not parse as any resource type. IAM's rules, narrowed to what such a
    request needs: an Allow statement whose Action and Resource patterns (or NotAction /
    NotResource) match grants it; a statement with a Condition never grants it (the
    request carries no context to judge one by) and any matching Deny denies it."""
    action, resource = entry["action"], entry["resource"]

    def matching(patterns: list, value: str, fold: bool) -> list[str]:
        found = []
        for pattern in patterns:
            text = str(pattern)
            if glob_regex(text.lower() if fold else text).fullmatch(value.lower() if fold else value):
                found.append(text)
        return found

    out = {"id": entry["id"], "decision": "ImplicitlyDenied", "dropped": [], "allow": [], "nearMisses": [],
           "error": None}
    for stmt in role.statements:
        doc = stmt.document
        if "NotAction" in doc:
            actions = [] if matching(as_list(doc["NotAction"]), action, True) else ["*"]
        else:
            actions = matching(as_list(doc.get("Action")), action, True)
        if "NotResource" in doc:
            resources = [] if matching(as_list(doc["NotResource"]), resource, False) else ["*"]
        else:
            resources = matching(as_list(doc.get("Resource")), resource, False)
        if not actions or not resources:
            continue
        if doc.get("Effect") == "Deny":
            out["decision"] = "ExplicitlyDenied"
            return out
        if doc.get("Condition"):
            out["nearMisses"].append({"sid": stmt.sid, "conditions": [
                {"operator": op, "key": key, "missing": True, "supported": True}
                for op, entries in doc["Condition"].items() for key in entries]})
            continue
        out["decision"] = "Allowed"
        out["allow"].append({"sid": stmt.sid, "actions": actions, "resources": resources})
    return out


# --------------------------------------------------------------------------------------
# Lint


def lint(roles: dict[str, Role]) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Parliament over every generated policy: (failures, accepted as (where, finding, reason))."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from parliament import analyze_policy_string
    failures, accepted = [], []
    for role in roles.values():
        for name, document in role.documents:
            text = json.dumps(document)
            policy = analyze_policy_string(text)
            for finding in policy.findings:
                detail = f"{finding.issue} {finding.detail}".strip()
                reason = next((why for issue, pattern, why in LINT_ALLOW
                               if issue == finding.issue and re.search(pattern, str(finding.detail))), None)
                if finding.issue == "NO_VERSION" and "${" not in text:
                    # SAM writes inline policies and its policy templates without a Version;
                    # IAM then applies 2008-10-17, whose only difference is that policy
                    # variables are not expanded. Accepted while the policy uses none.
                    reason = "no Version means 2008-10-17, which only disables policy variables; this policy uses none"
                if reason:
                    accepted.append((role.logical, detail, reason))
                else:
                    failures.append(f"{role.logical} ({name}): {detail}")
    return failures, accepted


# --------------------------------------------------------------------------------------
# Report


def glob_regex(pattern: str) -> re.Pattern:
    """IAM's wildcards: * any run of characters, ? one character; nothing else special."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern),
                      re.DOTALL)


class ResourceClasses:
    """Partitions resources by how every Resource/NotResource pattern of a role matches
    them (whole ARN and segment by segment), so that resources in one class get the same
    decision and match the same statements. Roles whose patterns use policy variables are
    not partitioned (each resource is its own class)."""

    def __init__(self, role: Role):
        patterns = []
        for stmt in role.statements:
            for key in ("Resource", "NotResource"):
                patterns.extend(str(p) for p in as_list(stmt.document.get(key)))
        self.exact = any("${" in p for p in patterns)
        self.patterns = [(glob_regex(p), [glob_regex(seg) for seg in p.split(":", 5)])
                         for p in dict.fromkeys(patterns)]
        self.cache: dict[str, tuple] = {}

    def of(self, resource: str) -> Any:
        if self.exact:
            return resource
        if resource not in self.cache:
            segments = resource.split(":", 5)
            signature = [is_object(resource), len(segments)]
            for whole, parts in self.patterns:
                per_segment = len(parts) == len(segments) and all(
                    p.fullmatch(seg) for p, seg in zip(parts, segments))
                signature.append((bool(whole.fullmatch(resource)), per_segment))
            self.cache[resource] = tuple(signature)
        return self.cache[resource]


def resource_pattern(resource: str, prefixes: list[str]) -> str:
    """Groups object ARNs by the template prefix they fall under (run ids vary per test)."""
    if not is_object(resource):
        return resource
    bucket, key = resource[len("arn:aws:s3:::"):].split("/", 1)
    for prefix in sorted(prefixes, key=len, reverse=True):
        if prefix and key.startswith(prefix):
            return f"arn:aws:s3:::{bucket}/{prefix}*"
    first = key.split("/", 1)[0]
    return f"arn:aws:s3:::{bucket}/{first}/*" if "/" in key else f"arn:aws:s3:::{bucket}/*"


def denial_line(fn: str, call_desc: str, status_note: str, req: Request, result: dict) -> str:
    if req.kind == "404-list":
        needs = (f"needs s3:ListBucket on {req.resource} without s3:prefix "
                 "(S3 answers 403 otherwise)")
    else:
        needs = f"needs {req.action} on {req.resource}"
        if req.context:
            kept = {k: v for k, v in req.context.items() if k not in set(result.get("dropped") or [])}
            if kept:
                needs += " with " + ", ".join(f"{k}={v}" for k, v in sorted(kept.items()))
        if req.why and req.why != "the call":
            needs += f" (for {req.why})"
    hints = []
    for miss in result.get("nearMisses") or []:
        for c in miss["conditions"]:
            if not c["supported"]:
                hints.append(f"a statement grants it only under {c['operator']} {c['key']}, "
                             f"a key {req.action} never has")
            elif c["missing"]:
                hints.append(f"a statement grants it only under {c['operator']} {c['key']}, absent here")
            else:
                hints.append(f"a statement grants it only under {c['operator']} {c['key']}, which does not match")
    if result.get("error"):
        hints.append(f"simulator error: {result['error']}")
    hint = f" [{'; '.join(dict.fromkeys(hints))}]" if hints else ""
    return f"DENY {fn}: {call_desc}{status_note} -> {needs}{hint}"


def statement_elements(stmt: Statement) -> list[tuple[str, str]]:
    doc = stmt.document
    actions = [f"NotAction {a}" for a in as_list(doc.get("NotAction"))] or as_list(doc.get("Action"))
    resources = [f"NotResource {r}" for r in as_list(doc.get("NotResource"))] or as_list(doc.get("Resource"))
    return [(a, r) for a in actions for r in resources]


def condition_summary(doc: dict) -> str:
    parts = []
    for operator, entries in (doc.get("Condition") or {}).items():
        for key, values in entries.items():
            parts.append(f"{operator} {key}={','.join(str(v) for v in as_list(values))}")
    return f" [if {'; '.join(parts)}]" if parts else ""


def note_for(owner: str, action: str) -> str:
    for who, act, note in UNEXERCISED_NOTES:
        if who in ("*", owner) and act == action:
            return f" ({note})"
    return ""


def run(template: Path, ledger: Path, parameters: Path) -> int:
    out: list[str] = []
    failed = False
    try:
        calls = read_ledger(ledger)
        overrides = load_parameters(parameters)
        sam, cfn, params = translate(template, overrides)
        model = build_model(sam, cfn, params, template.parent)
    except CheckError as e:
        print(f"permissions: cannot check: {e}")
        print("permissions: FAILED, nothing checked")
        return 1

    for role in model.roles.values():
        for problem in role.problems:
            out.append(f"FAIL role {role.logical}: {problem}")
            failed = True

    prefixes = [str(v) for v in params.values() if isinstance(v, str) and v.endswith("/")]

    # 1. ledger -> requests
    unmapped: Counter = Counter()
    unknown_functions: Counter = Counter()
    planned: list[tuple[Call, Function, Request]] = []
    for call in calls:
        fn = model.functions.get(call.function)
        if fn is None:
            unknown_functions[call.function] += 1
            continue
        try:
            reqs = requests_for(call, model.kms_aliases)
        except KeyError:
            unmapped[(call.service, call.operation)] += 1
            continue
        except CheckError as e:
            out.append(f"FAIL {e}")
            failed = True
            continue
        planned.extend((call, fn, r) for r in reqs)
    silent = sorted(set(model.functions) - {c.function for c in calls})
    if silent:
        out.append(f"FAIL the ledger has no call from {', '.join(silent)}: "
                   "their roles went unchecked (is the call ledger attached to their clients?)")
        failed = True
    for name, count in sorted(unknown_functions.items()):
        out.append(f"FAIL {count} calls from {name!r}: no function of the template builds that binary "
                   f"(known: {', '.join(sorted(model.functions))})")
        failed = True
    for (service, op), count in sorted(unmapped.items()):
        out.append(f"FAIL unmapped operation {service}:{op} ({count} calls): map it in infra/permissions.py "
                   "(requests_for) and docs/permissions.md")
        failed = True

    # 2. static requests of the state machines and schedules
    static, sm_problems = state_machine_requests(model)
    for problem in sm_problems:
        out.append(f"FAIL state machine: {problem}")
        failed = True

    # 3. one simulator batch, each distinct request once
    batch: list[dict] = []
    index: dict[tuple, int] = {}

    signatures = {logical: ResourceClasses(role) for logical, role in model.roles.items()}

    def submit(role: Role, session: str, region: str, req: Request) -> int | None:
        if req.needs_nothing:
            return None
        entry = request_entry(model, role, session, region, req, len(batch))
        # Resources the role's patterns cannot tell apart get the same answer: one
        # simulation per class keeps a ledger of thousands of objects fast. The class is the
        # role's; resources under different resource policies (two KMS keys the role's
        # patterns do not tell apart) are never one class.
        policy = resource_policy(model, req)
        key = (role.logical, req.action, signatures[role.logical].of(req.resource),
               tuple(sorted(entry["context"].items())), policy[0] if policy else None)
        if key not in index:
            index[key] = len(batch)
            batch.append(entry)
        return index[key]

    call_ids = [(call, fn, req, submit(fn.role, fn.name, call.region, req)) for call, fn, req in planned]
    static_ids = [(role, req, what, submit(role, "drpilot-execution", REGION, req)) for role, req, what in static]
    policies = {logical: role.simulator_policies() for logical, role in model.roles.items()}
    remote = [entry for entry in batch if not entry.get("local")]
    try:
        results = simulate(remote, policies) if remote else {}
    except CheckError as e:
        print(f"permissions: cannot check: {e}")
        print("permissions: FAILED, nothing checked")
        return 1
    for entry in batch:
        if entry.get("local"):
            results[entry["id"]] = evaluate_locally(model.roles[entry["role"]], entry)

    # 4. denials, deduplicated
    exercised: set[tuple[str, str, str, str]] = set()   # (role, sid, action pattern, resource pattern)

    def absorb(role: Role, result: dict) -> None:
        for allow in result.get("allow") or []:
            for a in allow["actions"] or ["*"]:
                for r in allow["resources"] or ["*"]:
                    exercised.add((role.logical, allow["sid"], a, r))

    denials: dict[tuple, list] = {}
    denied_calls: set[int] = set()
    free = 0
    for call, fn, req, rid in call_ids:
        if rid is None:
            free += 1
            continue
        result = results[rid]
        if result["decision"] == "Allowed":
            absorb(fn.role, result)
            continue
        denied_calls.add(call.line)
        status = f" answered {call.status}" if call.not_found else ""
        key = (fn.binary, call.operation, req.action, req.kind, resource_pattern(req.resource, prefixes),
               resource_pattern(call.resource, prefixes), call.not_found)
        entry = denials.setdefault(key, [denial_line(fn.binary, call.describe(), status, req, result), 0, set()])
        entry[1] += 1
        entry[2].add(call.line)
    sm_denials = []
    for role, req, what, rid in static_ids:
        result = results[rid]
        if result["decision"] == "Allowed":
            absorb(role, result)
        else:
            sm_denials.append(f"DENY {role.logical}: {what} -> needs {req.action} on {req.resource}"
                              + (f" [simulator error: {result['error']}]" if result.get("error") else ""))

    for line, count, lines in sorted(denials.values(), key=lambda e: e[0]):
        out.append(line + (f"  (x{count})" if count > 1 else ""))
    out.extend(sm_denials)
    if denials or sm_denials:
        failed = True

    # 5. lint
    lint_failures, lint_accepted = lint(model.roles)
    for line in lint_failures:
        out.append(f"LINT {line}")
    if lint_failures:
        failed = True

    # 6. least privilege the other way
    owners = {fn.role.logical: fn.binary for fn in model.functions.values()}
    static_roles = {role.logical for role, _, _ in static}
    unexercised = []
    for role in model.roles.values():
        if role.logical not in owners and role.logical not in static_roles:
            continue
        owner = owners.get(role.logical, role.logical)
        for stmt in role.statements:
            if stmt.managed or stmt.document.get("Effect") != "Allow":
                continue
            for action, resource in statement_elements(stmt):
                if (role.logical, stmt.sid, action, resource) not in exercised:
                    unexercised.append(f"unexercised: {owner} {action} on {resource}"
                                       f"{condition_summary(stmt.document)}{note_for(owner, action)}")

    # print
    functions_seen = Counter(c.function for c in calls)
    print(f"permissions: template {template.relative_to(ROOT) if template.is_relative_to(ROOT) else template}, "
          f"ledger {ledger} ({len(calls)} calls: "
          + ", ".join(f"{k} {v}" for k, v in sorted(functions_seen.items())) + ")")
    for line in out:
        print(line)
    if lint_accepted:
        grouped: dict[str, list[str]] = defaultdict(list)
        for where, finding, reason in lint_accepted:
            grouped[f"{finding} [{reason}]"].append(where)
        print(f"lint: {len(lint_accepted)} findings accepted on purpose:")
        for finding, where in grouped.items():
            print(f"  {finding} x{len(where)}: {', '.join(dict.fromkeys(where))}")
    if free:
        print(f"note: {free} calls need no permission (sts:GetCallerIdentity)")
    if unexercised:
        print("granted but not exercised by the recorded calls (informational):")
        for line in unexercised:
            print(f"  {line}")
    if failed:
        print("permissions: FAILED (see the DENY, FAIL and LINT lines above)")
    print(f"permissions: {len(calls)} calls checked, {len(denied_calls)} denied, "
          f"{len(unexercised)} grants unexercised")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", type=Path, default=INFRA / "template.yaml")
    parser.add_argument("--ledger", type=Path, default=ROOT / "target" / "permission-ledger.jsonl")
    parser.add_argument("--parameters", type=Path, default=INFRA / "permissions" / "test-parameters.json")
    args = parser.parse_args(argv)
    return run(args.template.resolve(), args.ledger.resolve(), args.parameters.resolve())


if __name__ == "__main__":
    sys.exit(main())
