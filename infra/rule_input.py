#!/usr/bin/env python3
"""The execution input the deployed triggers pass to the state machine, rendered offline.

    rule_input.py alarm EVENT.json [--profile NAME] [--template PATH]
    rule_input.py schedule --time RFC3339 --schedule-arn ARN [--profile NAME] [--template PATH]
                           [--execution-id ID] [--attempt-number N]

`alarm` applies the AlarmRecovery rule's InputTransformer (InputPathsMap and InputTemplate,
read from infra/template.yaml) to an EventBridge event, the way EventBridge does (see
`transform` below). `schedule` fills the MonthlyDrill schedule's Input with the EventBridge
Scheduler context attributes (<aws.scheduler.schedule-arn>, <aws.scheduler.scheduled-time>,
<aws.scheduler.execution-id>, <aws.scheduler.attempt-number>), which Scheduler replaces as
plain text. In both, the template's `!Sub` is resolved with the ProfileName given (default:
the parameter's default).

Prints the execution input as minified JSON on stdout (EventBridge passes the target
minified JSON). Exits 1, saying why on stderr, when the result is not valid JSON or not a
drpilot execution input (mode, profile, trigger {kind, string fields}), when a JSON path
does not resolve in the event, or when the template has no such trigger.

Runs with .venv-infra's Python (cfn-lint's template decoder reads the YAML tags).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from cfnlint.decode import decode

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "infra" / "template.yaml"
ALARM_EVENT = "AlarmRecovery"
SCHEDULE_EVENT = "MonthlyDrill"


class RuleInputError(Exception):
    """The input cannot be rendered, or what it renders is not a valid execution input."""


# ---------------------------------------------------------------------------- template


def load_template(path: Path = TEMPLATE) -> dict:
    tpl, matches = decode(str(path))
    if matches:
        raise RuleInputError(f"cannot parse {path}: {matches}")
    return tpl


def state_machine_event(tpl: dict, name: str, kind: str) -> dict:
    """The Properties of the state machine's event `name`, which must be of type `kind`."""
    for logical, resource in tpl.get("Resources", {}).items():
        if resource.get("Type") != "AWS::Serverless::StateMachine":
            continue
        event = (resource.get("Properties", {}).get("Events") or {}).get(name)
        if event is None:
            continue
        if event.get("Type") != kind:
            raise RuleInputError(f"{logical}.Events.{name} is a {event.get('Type')}, expected {kind}")
        return event.get("Properties", {})
    raise RuleInputError(f"no state machine in the template has an event {name} ({kind})")


def default_profile(tpl: dict) -> str:
    param = tpl.get("Parameters", {}).get("ProfileName", {})
    if "Default" not in param:
        raise RuleInputError("the template's ProfileName parameter has no default; pass --profile")
    return str(param["Default"])


def check_profile(tpl: dict, profile: str) -> None:
    """CloudFormation refuses a ProfileName outside the parameter's AllowedPattern."""
    pattern = tpl.get("Parameters", {}).get("ProfileName", {}).get("AllowedPattern")
    if pattern and not re.fullmatch(pattern, profile):
        raise RuleInputError(f"profile {profile!r} does not match ProfileName's AllowedPattern {pattern!r}")


def resolve_sub(value: Any, parameters: dict[str, str]) -> str:
    """A plain string, or an Fn::Sub over `parameters` (and the Fn::Sub's own variables)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict) or list(value) != ["Fn::Sub"]:
        raise RuleInputError(f"expected a string or !Sub, got {value!r}")
    sub = value["Fn::Sub"]
    variables = dict(parameters)
    if isinstance(sub, list):
        text, extra = sub
        for key, val in extra.items():
            if not isinstance(val, str):
                raise RuleInputError(f"!Sub variable {key} is not a plain string: {val!r}")
            variables[key] = val
    else:
        text = sub

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name.startswith("!"):
            return "${" + name[1:] + "}"  # ${!Literal} stands for ${Literal}
        if name not in variables:
            raise RuleInputError(f"!Sub refers to ${{{name}}}, which rule_input.py cannot resolve offline")
        return variables[name]

    return re.sub(r"\$\{([^}]*)\}", replace, text)


# ---------------------------------------------------------------------- EventBridge


_PATH_STEP = re.compile(r"\.([A-Za-z0-9_\-/]+)|\[(\d+)\]")


def json_path(event: Any, path: str) -> Any:
    """EventBridge's JSON path subset: `$`, `.name` (letters, digits, _ - /), `[index]`."""
    if not path.startswith("$"):
        raise RuleInputError(f"JSON path {path!r} does not start with $")
    value, pos = event, 1
    while pos < len(path):
        step = _PATH_STEP.match(path, pos)
        if not step:
            raise RuleInputError(f"JSON path {path!r}: cannot read {path[pos:]!r}")
        key, index = step.groups()
        if key is not None:
            if not isinstance(value, dict) or key not in value:
                raise RuleInputError(f"JSON path {path} does not resolve in the event (no {key!r})")
            value = value[key]
        else:
            i = int(index)
            if not isinstance(value, list) or i >= len(value):
                raise RuleInputError(f"JSON path {path} does not resolve in the event (no [{i}])")
            value = value[i]
        pos = step.end()
    return value


def _raw(value: Any) -> str:
    """A value placed inside a quoted string: EventBridge inserts it without escaping, and
    an object or array loses its inner quotes ("to ensure a valid string")."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).replace('"', "")


def _as_json(value: Any) -> str:
    """A value placed bare, as a JSON value: strings are quoted (as JSON), objects and
    arrays inserted as JSON."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def transform(template: str, variables: dict[str, Any]) -> str:
    """Fills an InputTemplate the way EventBridge's input transformer does (EventBridge User
    Guide, "Amazon EventBridge input transformation"): a placeholder <name> standing bare in
    the template takes the variable's JSON value (a string gets its quotes); inside a quoted
    JSON string the value is inserted as it is, unescaped. A placeholder whose name is not a
    variable is left as text."""
    out: list[str] = []
    in_string = False
    i = 0
    while i < len(template):
        c = template[i]
        if c == "<":
            end = template.find(">", i + 1)
            if end != -1 and template[i + 1:end] in variables:
                value = variables[template[i + 1:end]]
                out.append(_raw(value) if in_string else _as_json(value))
                i = end + 1
                continue
        if in_string and c == "\\" and i + 1 < len(template):
            out.append(template[i:i + 2])
            i += 2
            continue
        if c == '"':
            in_string = not in_string
        out.append(c)
        i += 1
    return "".join(out)


def alarm_input(tpl: dict, event: dict, profile: str) -> str:
    props = state_machine_event(tpl, ALARM_EVENT, "EventBridgeRule")
    transformer = props.get("InputTransformer")
    if not transformer:
        raise RuleInputError(f"{ALARM_EVENT} has no InputTransformer")
    template = resolve_sub(transformer["InputTemplate"], {"ProfileName": profile})
    paths = transformer.get("InputPathsMap", {})
    variables: dict[str, Any] = {name: json_path(event, path) for name, path in paths.items()}
    # EventBridge's own variables that need nothing but the event.
    variables.setdefault("aws.events.event.json", event)
    variables.setdefault("aws.events.event", {k: v for k, v in event.items() if k != "detail"})
    for name in re.findall(r"<([^<>\s]+)>", template):
        if name not in variables:
            raise RuleInputError(f"the InputTemplate uses <{name}>, which rule_input.py cannot fill offline")
    warn_if_unmatched(props.get("Pattern", {}), event)
    return transform(template, variables)


def warn_if_unmatched(pattern: dict, event: dict) -> None:
    """A note (not an error) when the rule's fixed pattern fields would not match the event;
    the alarm names depend on the deployment (RecoveryAlarmNames) and are not compared."""
    problems = []
    for key in ("source", "detail-type"):
        wanted = pattern.get(key)
        if isinstance(wanted, list) and event.get(key) not in wanted:
            problems.append(f"{key} {event.get(key)!r} not in {wanted}")
    state = ((pattern.get("detail") or {}).get("state") or {}).get("value")
    actual = ((event.get("detail") or {}).get("state") or {}).get("value")
    if isinstance(state, list) and actual not in state:
        problems.append(f"detail.state.value {actual!r} not in {state}")
    if problems:
        print(f"rule_input.py: note: the {ALARM_EVENT} rule would not match this event: "
              + "; ".join(problems), file=sys.stderr)


# ----------------------------------------------------------------------- Scheduler


def schedule_input(tpl: dict, profile: str, scheduled_time: str, schedule_arn: str,
                   execution_id: str = "rule-input-py", attempt_number: int = 1) -> str:
    props = state_machine_event(tpl, SCHEDULE_EVENT, "ScheduleV2")
    if "Input" not in props:
        raise RuleInputError(f"{SCHEDULE_EVENT} has no Input")
    text = resolve_sub(props["Input"], {"ProfileName": profile})
    # EventBridge Scheduler User Guide, "Adding context attributes": each keyword is
    # replaced by its value when the schedule invokes the target.
    context = {
        "aws.scheduler.schedule-arn": schedule_arn,
        "aws.scheduler.scheduled-time": scheduled_time,
        "aws.scheduler.execution-id": execution_id,
        "aws.scheduler.attempt-number": str(attempt_number),
    }
    for key, value in context.items():
        text = text.replace(f"<{key}>", value)
    return text


def rfc3339(text: str) -> str:
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise RuleInputError(f"--time {text!r} is not an RFC 3339 time: {e}") from None
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", text):
        raise RuleInputError(f"--time {text!r} is not an RFC 3339 time (e.g. 2026-03-02T09:00:00Z)")
    return text


# ------------------------------------------------------------------------- result


TRIGGER_KINDS = {"manual", "schedule", "alarm"}


def parse_execution_input(text: str) -> dict:
    """The rendered text as a drpilot execution input, or a RuleInputError saying why not."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise RuleInputError(f"the rendered input is not valid JSON ({e}):\n{text}") from None
    if not isinstance(value, dict):
        raise RuleInputError(f"the rendered input is not a JSON object:\n{text}")
    if value.get("mode") not in ("drill", "recovery"):
        raise RuleInputError(f"mode must be drill or recovery, got {value.get('mode')!r}")
    if not isinstance(value.get("profile"), str):
        raise RuleInputError(f"profile must be a string, got {value.get('profile')!r}")
    trigger = value.get("trigger")
    if trigger is not None:
        if not isinstance(trigger, dict) or trigger.get("kind") not in TRIGGER_KINDS:
            raise RuleInputError(f"trigger must be an object with kind in {sorted(TRIGGER_KINDS)}, got {trigger!r}")
        for key, field in trigger.items():
            if not isinstance(field, str):
                raise RuleInputError(f"trigger.{key} must be a string, got {field!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="trigger", required=True)
    alarm = sub.add_parser("alarm", help="what the AlarmRecovery rule passes for an EventBridge event")
    alarm.add_argument("event", type=Path, help="an EventBridge event (JSON file), e.g. a CloudWatch Alarm State Change")
    schedule = sub.add_parser("schedule", help="what the MonthlyDrill schedule passes")
    schedule.add_argument("--time", required=True, help="the scheduled time, RFC 3339 (e.g. 2026-03-02T09:00:00Z)")
    schedule.add_argument("--schedule-arn", required=True, help="the schedule's ARN")
    schedule.add_argument("--execution-id", default="rule-input-py")
    schedule.add_argument("--attempt-number", type=int, default=1)
    for p in (alarm, schedule):
        p.add_argument("--profile", help="the stack's ProfileName (default: the parameter's default)")
        p.add_argument("--template", type=Path, default=TEMPLATE)
    args = parser.parse_args(argv)
    try:
        tpl = load_template(args.template)
        profile = args.profile if args.profile is not None else default_profile(tpl)
        check_profile(tpl, profile)
        if args.trigger == "alarm":
            try:
                event = json.loads(args.event.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise RuleInputError(f"cannot read the event {args.event}: {e}") from None
            text = alarm_input(tpl, event, profile)
        else:
            if not args.schedule_arn.startswith("arn:"):
                raise RuleInputError(f"--schedule-arn {args.schedule_arn!r} is not an ARN")
            text = schedule_input(tpl, profile, rfc3339(args.time), args.schedule_arn,
                                  args.execution_id, args.attempt_number)
        value = parse_execution_input(text)
    except RuleInputError as e:
        print(f"rule_input.py: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
