//! Execution input: every trigger shape normalises to one `RunInput`; bad input is an
//! `InputError` naming the field.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use drpilot_shared::input::{normalize, Trigger, TriggerDefaults};
use drpilot_shared::{ErrorKind, Mode, Phase, RunInput};
use serde_json::{json, Value};

fn defaults() -> TriggerDefaults {
    TriggerDefaults {
        profile: Some("payments".into()),
    }
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).expect(&path)
}

#[test]
fn console_input_with_defaults() {
    let n = normalize(
        &json!({"mode": "drill", "profile": "payments"}),
        &defaults(),
    )
    .unwrap();
    assert_eq!(n.trigger, Trigger::manual());
    assert_eq!(n.input, RunInput::drill("payments"));
    assert!(n.input.teardown);
    assert_eq!(n.input.start_at, Phase::Bringup);
    assert_eq!(n.input.stop_after, Phase::Teardown);
    assert!(!n.input.approval_bypassed());
}

#[test]
fn console_input_with_every_field() {
    let raw = json!({
        "run_id": "drill-2026-11-01", "mode": "drill", "profile": "payments",
        "backup_uri": "s3://backups-bucket/prod/backups/b-20261101",
        "auto_promote": true, "allow_promote_bypass": true, "teardown": false,
        "start_at": "restore", "stop_after": "parity-report", "dry_run": true
    });
    let input = normalize(&raw, &defaults()).unwrap().input;
    assert_eq!(input.run_id.as_deref(), Some("drill-2026-11-01"));
    assert_eq!(input.backup_uri.as_ref().unwrap().bucket, "backups-bucket");
    assert_eq!(
        input.backup_uri.as_ref().unwrap().key,
        "prod/backups/b-20261101"
    );
    assert!(input.approval_bypassed());
    assert!(!input.teardown && input.dry_run);
    assert!(input.runs(Phase::Restore) && input.runs(Phase::ParityReport));
    assert!(
        input.runs(Phase::Bringup),
        "bringup is the precondition gate"
    );
    assert!(!input.runs(Phase::Promote));
    assert_eq!(
        input.skip_reason(Phase::Promote).as_deref(),
        Some("stop_after=parity-report")
    );
    assert!(input.runs(Phase::Teardown), "teardown always runs");
    // The normalised input round-trips through its own JSON.
    let again = RunInput::from_json(&serde_json::to_value(&input).unwrap()).unwrap();
    assert_eq!(again, input);
}

#[test]
fn bypass_needs_both_flags_in_a_drill() {
    let only_auto = json!({"mode": "drill", "profile": "p", "auto_promote": true});
    assert!(!RunInput::from_json(&only_auto).unwrap().approval_bypassed());
    let only_allow = json!({"mode": "drill", "profile": "p", "allow_promote_bypass": true});
    assert!(!RunInput::from_json(&only_allow)
        .unwrap()
        .approval_bypassed());
}

#[test]
fn aws_sample_scheduled_event_is_a_drill() {
    let n = normalize(&fixture("scheduled-event.json"), &defaults()).unwrap();
    assert_eq!(n.input.mode, Mode::Drill);
    assert_eq!(n.input.profile, "payments");
    assert!(!n.input.approval_bypassed());
    match n.trigger {
        Trigger::Schedule { source, fired_at } => {
            assert_eq!(
                source.as_deref(),
                Some("arn:aws:events:us-east-1:123456789012:rule/my-scheduled-rule")
            );
            assert_eq!(fired_at.unwrap().to_rfc3339(), "2015-10-08T16:53:06+00:00");
        }
        other => panic!("expected a schedule trigger, got {other:?}"),
    }
}

#[test]
fn aws_sample_alarm_state_change_is_a_recovery() {
    let n = normalize(&fixture("alarm-state-change.json"), &defaults()).unwrap();
    assert_eq!(n.input.mode, Mode::Recovery);
    assert_eq!(n.input.profile, "payments");
    assert!(!n.input.approval_bypassed());
    match n.trigger {
        Trigger::Alarm {
            alarm_name,
            alarm_reason,
            source,
            ..
        } => {
            assert_eq!(alarm_name, "ServerCpuTooHigh");
            let reason = alarm_reason.unwrap();
            assert!(reason.starts_with("Threshold Crossed"), "{reason}");
            assert!(source.unwrap().starts_with("arn:aws:cloudwatch:"));
        }
        other => panic!("expected an alarm trigger, got {other:?}"),
    }
}

#[test]
fn aws_sample_alarm_lambda_action_is_a_recovery() {
    let n = normalize(&fixture("alarm-lambda-action.json"), &defaults()).unwrap();
    assert_eq!(n.input.mode, Mode::Recovery);
    assert!(
        matches!(n.trigger, Trigger::Alarm { ref alarm_name, .. } if alarm_name == "lambda-demo-metric-alarm")
    );
}

#[test]
fn alarm_back_to_ok_starts_nothing() {
    let mut event = fixture("alarm-state-change.json");
    event["detail"]["state"]["value"] = json!("OK");
    let err = normalize(&event, &defaults()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InputError);
    assert!(
        err.message.contains("detail.state.value"),
        "{}",
        err.message
    );
}

#[test]
fn trigger_without_default_profile_names_profile() {
    let err = normalize(
        &fixture("scheduled-event.json"),
        &TriggerDefaults::default(),
    )
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InputError);
    assert!(err.message.starts_with("profile:"), "{}", err.message);
}

/// Each bad input, the field its error must name, and a word the message must contain.
#[test]
fn bad_inputs_are_input_errors_naming_the_field() {
    let base = || json!({"mode": "drill", "profile": "payments"});
    let with = |field: &str, value: Value| {
        let mut v = base();
        v[field] = value;
        v
    };
    let without = |field: &str| {
        let mut v = base();
        v.as_object_mut().unwrap().remove(field);
        v
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        ("not an object", json!([1, 2]), "input"),
        ("null input", Value::Null, "input"),
        ("string input", json!("drill"), "input"),
        ("unknown field", with("colour", json!("blue")), "colour"),
        (
            "typo of a field",
            with("auto_promte", json!(true)),
            "auto_promte",
        ),
        ("missing mode", without("mode"), "mode"),
        ("missing profile", without("profile"), "profile"),
        ("bad mode", with("mode", json!("rehearsal")), "mode"),
        ("mode wrong type", with("mode", json!(1)), "mode"),
        (
            "profile wrong type",
            with("profile", json!(["a"])),
            "profile",
        ),
        ("profile empty", with("profile", json!("")), "profile"),
        (
            "profile with slash",
            with("profile", json!("../etc/passwd")),
            "profile",
        ),
        (
            "auto_promote as string",
            with("auto_promote", json!("yes")),
            "auto_promote",
        ),
        (
            "allow_promote_bypass as number",
            with("allow_promote_bypass", json!(1)),
            "allow_promote_bypass",
        ),
        ("teardown null", with("teardown", Value::Null), "teardown"),
        (
            "dry_run as string",
            with("dry_run", json!("false")),
            "dry_run",
        ),
        (
            "backup_uri not s3",
            with("backup_uri", json!("https://example.com/b")),
            "backup_uri",
        ),
        (
            "backup_uri bad bucket",
            with("backup_uri", json!("s3://Bad_Bucket/x")),
            "backup_uri",
        ),
        (
            "backup_uri no key",
            with("backup_uri", json!("s3://bucket-name")),
            "backup_uri",
        ),
        (
            "backup_uri dot-dot",
            with("backup_uri", json!("s3://bucket-name/a/../b")),
            "backup_uri",
        ),
        (
            "backup_uri number",
            with("backup_uri", json!(42)),
            "backup_uri",
        ),
        (
            "bad start_at",
            with("start_at", json!("approve")),
            "start_at",
        ),
        (
            "bad stop_after",
            with("stop_after", json!("parity_report")),
            "stop_after",
        ),
        (
            "start_at after stop_after",
            {
                let mut v = with("start_at", json!("promote"));
                v["stop_after"] = json!("restore");
                v
            },
            "start_at",
        ),
        (
            "bypass in recovery",
            {
                let mut v = with("mode", json!("recovery"));
                v["allow_promote_bypass"] = json!(true);
                v["auto_promote"] = json!(true);
                v
            },
            "allow_promote_bypass",
        ),
        ("run_id with slash", with("run_id", json!("a/b")), "run_id"),
        (
            "run_id too long",
            with("run_id", json!("r".repeat(81))),
            "run_id",
        ),
        ("run_id empty", with("run_id", json!("")), "run_id"),
        ("run_id number", with("run_id", json!(7)), "run_id"),
        (
            "eventbridge event of another kind",
            json!({
                "version": "0", "id": "x", "detail-type": "EC2 Instance State-change Notification",
                "source": "aws.ec2", "account": "123456789012", "time": "2015-10-08T16:53:06Z",
                "region": "us-east-1", "resources": [], "detail": {}
            }),
            "detail-type",
        ),
    ];
    assert!(cases.len() >= 25);
    for (name, raw, field) in cases {
        let err = normalize(&raw, &defaults())
            .err()
            .unwrap_or_else(|| panic!("{name}: accepted {raw}"));
        assert_eq!(err.kind, ErrorKind::InputError, "{name}: {err}");
        assert!(
            err.message.contains(field),
            "{name}: error {:?} does not name {field:?}",
            err.message
        );
    }
}

#[test]
fn errors_become_diagnostics_with_the_design_names() {
    let err = RunInput::from_json(&json!({"mode": "x", "profile": "p"})).unwrap_err();
    let diagnostic: lambda_runtime::Diagnostic = err.into();
    assert_eq!(diagnostic.error_type, "InputError");
    assert!(diagnostic.error_message.contains("mode"));
}

#[test]
fn the_deployed_rules_pass_their_trigger_beside_the_settings() {
    let alarm = json!({
        "mode": "recovery", "profile": "payments",
        "trigger": {"kind": "alarm", "source": "arn:aws:cloudwatch:us-east-1:123456789012:alarm:db-down",
                    "alarm_name": "db-down", "alarm_reason": "Threshold Crossed: \"p99\" > 2",
                    "fired_at": "2026-11-22T03:00:00Z"}
    });
    let n = normalize(&alarm, &defaults()).unwrap();
    assert_eq!(n.input.mode, Mode::Recovery);
    assert_eq!(
        n.trigger,
        Trigger::Alarm {
            source: Some("arn:aws:cloudwatch:us-east-1:123456789012:alarm:db-down".into()),
            alarm_name: "db-down".into(),
            alarm_reason: Some("Threshold Crossed: \"p99\" > 2".into()),
            fired_at: Some("2026-11-22T03:00:00Z".parse().unwrap()),
        }
    );
    let schedule = json!({"mode": "drill", "profile": "payments",
        "trigger": {"kind": "schedule", "source": "arn:aws:scheduler:us-east-1:123456789012:schedule/default/monthly",
                    "fired_at": "2026-12-07T09:00:00Z"}});
    assert!(matches!(
        normalize(&schedule, &defaults()).unwrap().trigger,
        Trigger::Schedule {
            fired_at: Some(_),
            ..
        }
    ));
    let manual = json!({"mode": "drill", "profile": "payments"});
    assert_eq!(
        normalize(&manual, &defaults()).unwrap().trigger,
        Trigger::manual()
    );
}

#[test]
fn a_bad_trigger_is_named() {
    for (trigger, field) in [
        (json!({"kind": "pager"}), "trigger"),
        (json!("alarm"), "trigger"),
        (json!({"kind": "alarm"}), "alarm_name"),
        (
            json!({"kind": "schedule", "fired_at": "yesterday"}),
            "trigger: fired_at",
        ),
        (json!({"kind": "manual", "surprise": 1}), "surprise"),
    ] {
        let input = json!({"mode": "drill", "profile": "payments", "trigger": trigger});
        let err = normalize(&input, &defaults()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InputError);
        assert!(err.message.contains(field), "{field}: {err}");
    }
}

#[test]
fn max_attempts_is_bounded_by_what_the_state_machine_retries() {
    let with = |n: Value| {
        normalize(
            &json!({"mode": "drill", "profile": "p", "max_attempts": n}),
            &defaults(),
        )
    };
    assert_eq!(
        normalize(&json!({"mode": "drill", "profile": "p"}), &defaults())
            .unwrap()
            .input
            .max_attempts,
        drpilot_shared::input::DEFAULT_ATTEMPTS
    );
    assert_eq!(with(json!(1)).unwrap().input.max_attempts, 1);
    for bad in [json!(0), json!(4), json!("2")] {
        let err = with(bad.clone()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InputError, "{bad}");
        assert!(err.message.contains("max_attempts"), "{bad}: {err}");
    }
    // The bound is the deployed state machine's: every retrier's MaxAttempts plus the
    // first try.
    let asl_path = format!(
        "{}/../statemachine/drill.asl.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let asl: Value = serde_json::from_str(&std::fs::read_to_string(&asl_path).unwrap()).unwrap();
    // Every state, those in Parallel branches and Map iterations too.
    fn walk(states: &Value, into: &mut Vec<Value>) {
        for state in states.as_object().unwrap().values() {
            into.push(state.clone());
            for branch in state["Branches"].as_array().into_iter().flatten() {
                walk(&branch["States"], into);
            }
            if state["ItemProcessor"].is_object() {
                walk(&state["ItemProcessor"]["States"], into);
            }
        }
    }
    let mut all = Vec::new();
    walk(&asl["States"], &mut all);
    let mut retriers = 0;
    for state in &all {
        for retry in state["Retry"].as_array().into_iter().flatten() {
            retriers += 1;
            assert_eq!(
                retry["MaxAttempts"].as_u64().unwrap() + 1,
                u64::from(drpilot_shared::input::MAX_ATTEMPTS)
            );
        }
    }
    // Bringup, restore, the five components steps, validate, parity-report, promote, teardown.
    assert!(retriers >= 11, "{retriers} retriers");
}
