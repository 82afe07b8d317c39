//! The auditor's report of a real drill on the local stack, JSON and HTML, the page
//! checked in a real headless Chromium (infra/browser-check.mjs): a screenshot is taken,
//! the page logs no console error, makes no network request, and shows the key figures.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

mod common;

use std::process::Command;
use std::time::Duration;

use drpilot_cli::history::fetch;
use drpilot_cli::{approve, evidence, follow, report, Ctx, Report};
use drpilot_testkit::{
    make_backup, repo_root, sh, LocalAws, TempDir, BACKUP_BUCKET, BACKUP_PREFIX,
    EVIDENCE_RETENTION_DAYS, PROFILE,
};
use serde_json::{json, Value};

use common::{drill_stack, start_run};

async fn stack(aws: &LocalAws, tmp: &TempDir) -> Ctx {
    let ctx = drill_stack(aws).await;
    let src = tmp.path().join("src");
    sh(&format!(
        "mkdir -p '{0}/x' && for i in $(seq 1 10); do echo \"{{\\\"n\\\": $i}}\" > '{0}/x/'$i.json; done",
        src.display()
    ));
    let out = tmp.path().join("b1");
    make_backup(&src, &out, &[]);
    aws.upload_dir(BACKUP_BUCKET, &format!("{BACKUP_PREFIX}b1"), &out)
        .await;
    ctx
}

/// A drill approved by `approver`, to its end.
async fn drill(ctx: &Ctx, run_id: &str, approver: &str) {
    let run = start_run(ctx, json!({"mode": "drill", "run_id": run_id})).await;
    let arn = ctx.execution_arn(&run).await.unwrap();
    for _ in 0..600 {
        if fetch(&ctx.sfn, &arn).await.unwrap().waiting_for_approval {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    approve(ctx, &run, approver, "CHG-42", None).await.unwrap();
    assert_eq!(
        follow(ctx, &arn, &run, None).await.unwrap().status,
        "SUCCEEDED"
    );
}

#[tokio::test]
async fn the_auditor_report_has_every_fact_and_renders_cleanly_in_a_browser() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("report");
    let ctx = stack(&aws, &tmp).await;
    drill(&ctx, "audit-1", "alice").await;
    drill(&ctx, "audit-2", "bob").await;

    let html = tmp.path().join("audit-2.html");
    let Report::Run(audit) = report(&ctx, "audit-2", Some(&html)).await.unwrap() else {
        panic!("a drill's report is a run report");
    };
    assert_eq!(audit.trigger.kind, "manual");
    assert_eq!(
        audit.trigger.source.as_deref(),
        Some("arn:aws:sts::123456789012:user/moto"),
        "drpilot start records its caller"
    );
    assert_eq!(audit.backup.backup_id.as_deref(), Some("b1"));
    let sha = audit.backup.state_sha256.as_deref().unwrap();
    assert!(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(audit.restored.as_ref().unwrap().objects, 10);
    assert_eq!(audit.verified.as_ref().unwrap().objects, 10);
    // The first drill promoted the same backup: nothing differs for the second.
    assert_eq!(audit.parity.as_ref().unwrap().delta, 0);
    let Report::Run(first) = report(&ctx, "audit-1", None).await.unwrap() else {
        panic!("a drill's report is a run report");
    };
    let parity = first.parity.as_ref().unwrap();
    assert_eq!((parity.delta, parity.first_differences.len()), (10, 10));
    assert_eq!(parity.first_differences[0]["key"], "x/1.json", "{parity:?}");
    assert_eq!(first.trend.len(), 1, "the trend stops at the run reported");
    assert_eq!(audit.approval.approver.as_deref(), Some("bob"));
    assert!(audit.approval.sealed);
    // Proven by the (emulator's) STS: the default test credentials' identity.
    assert!(audit.approval.principal_verified);
    assert_eq!(
        audit.approval.principal.as_deref(),
        Some("arn:aws:sts::123456789012:user/moto")
    );
    assert!(audit.audit_record.is_some());
    assert!(
        audit.targets.iter().all(|t| t.met == Some(true)),
        "{:?}",
        audit.targets
    );
    let retained = audit.evidence.retained_until.unwrap();
    let expected =
        audit.summary.finished_at + chrono::Duration::days(EVIDENCE_RETENTION_DAYS.into());
    assert!(
        (retained - expected).num_hours().abs() < 1,
        "{retained} vs {expected}"
    );
    assert_eq!(audit.evidence.lock_mode.as_deref(), Some("COMPLIANCE"));
    let trend: Vec<&str> = audit.trend.iter().map(|p| p.run_id.as_str()).collect();
    assert_eq!(trend, ["audit-1", "audit-2"]);

    // The page in a real browser.
    let shot = tmp.path().join("audit-2.png");
    let retained_text = retained.format("%Y-%m-%d").to_string();
    let out = Command::new("node")
        .arg(repo_root().join("infra/browser-check.mjs"))
        .arg("--html")
        .arg(&html)
        .arg("--screenshot")
        .arg(&shot)
        .args(["--expect", "audit-2"])
        .args(["--expect", "Evidence"])
        .args(["--expect", "KMS HMAC seal verified by promote"])
        .args(["--expect", &retained_text])
        .args(["--expect", sha])
        .args(["--expect", "10 of 10 objects as the manifests list them"])
        .args(["--expect-selector", "svg#rto-trend rect.run"])
        .args(["--expect-selector", "svg#rpo-trend line.target"])
        .args(["--expect-selector", "#targets td.obj.ok"])
        .args(["--expect", "none: staging and root/ matched before promotion"])
        .output()
        .unwrap_or_else(|e| {
            panic!("node infra/browser-check.mjs: {e} (scripts/ensure-infra-tools.sh installs node tools and Chromium)")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser check failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let checked: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(checked["ok"], true, "{checked}");
    assert_eq!(checked["svg_count"], 2, "{checked}");
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    // Kept for a person to look at.
    let kept = repo_root().join("target/report-check.png");
    let _ = std::fs::copy(&shot, kept);

    // The period's evidence in one zip.
    let zip_path = tmp.path().join("evidence.zip");
    let since = audit.summary.kickoff_at - chrono::Duration::days(1);
    let pack = Box::pin(evidence(&ctx, PROFILE, since, None, &zip_path))
        .await
        .unwrap();
    assert_eq!(pack.runs, ["audit-1", "audit-2"]);
    let controls = &pack.controls;
    assert_eq!(
        (controls.runs, controls.drills, controls.recoveries),
        (2, 2, 0)
    );
    assert_eq!(controls.rto_met_percent, Some(100.0));
    assert_eq!(controls.rpo_met_percent, Some(100.0));
    assert_eq!(controls.backup_verification_success_rate, Some(1.0));
    assert_eq!(
        (controls.drill_windows, controls.drill_windows_on_time),
        (1, 1)
    );
    assert!(controls.days_since_last_successful_drill.unwrap() < 0.01);
    // Read back with another implementation: Python's zipfile tests every CRC and hands
    // the members out as JSON.
    let read_back = Command::new("python3")
        .args([
            "-c",
            "import json,sys,zipfile; z=zipfile.ZipFile(sys.argv[1]); bad=z.testzip(); \
             print(json.dumps({'bad': bad, 'files': {n: z.read(n).decode() for n in z.namelist()}}))",
        ])
        .arg(&zip_path)
        .output()
        .unwrap();
    assert!(
        read_back.status.success(),
        "{}",
        String::from_utf8_lossy(&read_back.stderr)
    );
    let read_back: Value = serde_json::from_slice(&read_back.stdout).unwrap();
    assert_eq!(
        read_back["bad"],
        Value::Null,
        "a member's CRC does not match"
    );
    let files = read_back["files"].as_object().unwrap();
    assert_eq!(files.len(), pack.files);
    for run in ["audit-1", "audit-2"] {
        for file in [
            "drill.summary.json",
            "phases/restore.json",
            "phases/promote.json",
            "run.json",
            "report.html",
            "report.json",
        ] {
            let name = format!("runs/{run}/{file}");
            assert!(
                files.contains_key(&name),
                "{name} missing from {:?}",
                files.keys()
            );
        }
        assert!(files
            .keys()
            .any(|n| n.starts_with(&format!("runs/{run}/approvals/approve-"))));
        assert!(files
            .keys()
            .any(|n| n.starts_with(&format!("runs/{run}/audit/promotion-"))));
    }
    let index = files["index.csv"].as_str().unwrap();
    let rows: Vec<Vec<&str>> = index.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3, "{index}");
    assert_eq!(rows[0], drpilot_cli::commands::evidence::INDEX_COLUMNS);
    assert_eq!((rows[1][4], rows[1][5]), ("audit-1", "COMPLETED"));
    assert_eq!(rows[2][18], "SUCCESSFUL");
    let mut stored: drpilot_cli::Controls =
        serde_json::from_str(files["controls.json"].as_str().unwrap()).unwrap();
    // serde_json's default float parser may read the last digit of a JSON number back
    // one unit off (its exact parser is a feature every build would have to take on).
    let (read, kept) = (
        stored.days_since_last_successful_drill,
        controls.days_since_last_successful_drill,
    );
    assert!(
        matches!((read, kept), (Some(a), Some(b)) if (a - b).abs() <= 1e-12 * b.abs().max(1.0)),
        "{read:?} vs {kept:?}"
    );
    stored.days_since_last_successful_drill = kept;
    assert_eq!(&stored, controls);
    let summary: Value =
        serde_json::from_str(files["runs/audit-2/drill.summary.json"].as_str().unwrap()).unwrap();
    assert_eq!(summary["approver"], "bob");

    // Bad input names the flag and writes nothing.
    let bad = tmp.path().join("evidence.tar");
    let err = Box::pin(evidence(&ctx, PROFILE, since, None, &bad))
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("--out:"), "{err}");
    let err = Box::pin(evidence(&ctx, PROFILE, since, Some(since), &zip_path))
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("--until:"), "{err}");
    assert!(!bad.exists());
    assert!(
        audit.evidence.findings.is_empty(),
        "{:?}",
        audit.evidence.findings
    );
    assert_eq!(
        (pack.controls.evidence_findings, pack.findings.len()),
        (0, 0)
    );

    // Someone with write access to the evidence rewrites audit-1's summary (its approver),
    // deletes one of audit-2's approvals, then audit-2's summary: readers of the latest
    // versions alone would see a clean audit-1 and no audit-2 at all.
    let store = aws.receipts();
    let summary_uri = store.summary_uri("audit-1").unwrap();
    let mut forged: Value = serde_json::from_str(
        &aws.get_text(&summary_uri.bucket, &summary_uri.key)
            .await
            .unwrap(),
    )
    .unwrap();
    forged["approver"] = json!("mallory");
    aws.put_text(&summary_uri.bucket, &summary_uri.key, &forged.to_string())
        .await;
    let approvals = store.run_dir("audit-2").unwrap().join("approvals").unwrap();
    let approval = aws.keys(&approvals.bucket, &approvals.key).await[0].clone();
    aws.s3()
        .delete_object()
        .bucket(&approvals.bucket)
        .key(&approval)
        .send()
        .await
        .unwrap();
    let gone = store.summary_uri("audit-2").unwrap();
    aws.s3()
        .delete_object()
        .bucket(&gone.bucket)
        .key(&gone.key)
        .send()
        .await
        .unwrap();

    let Report::Run(rewritten) = report(&ctx, "audit-1", None).await.unwrap() else {
        panic!("a drill's report is a run report");
    };
    let found = &rewritten.evidence.findings;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, "drill.summary.json");
    assert!(
        found[0].why.contains("after the final summary"),
        "{found:?}"
    );
    let pack = Box::pin(evidence(&ctx, PROFILE, since, None, &zip_path))
        .await
        .unwrap();
    assert_eq!(pack.runs, ["audit-1"], "audit-2's summary no longer reads");
    let mut found: Vec<(&str, &str)> = pack
        .findings
        .iter()
        .map(|f| (f.run_id.as_str(), f.key.as_str()))
        .collect();
    found.sort_unstable();
    let deleted_approval = approval.rsplit_once("/audit-2/").unwrap().1;
    assert_eq!(
        found,
        [
            ("audit-1", "drill.summary.json"),
            ("audit-2", deleted_approval),
            ("audit-2", "drill.summary.json"),
        ]
    );
    assert_eq!(pack.controls.evidence_findings, 3);
}
