//! The run report: a few lines of text, or one self-contained HTML page (inline CSS, no
//! external assets) with the phase timeline, RTO/RPO against targets, parity and approval.

use drpilot_shared::component::ComponentOutcome;
use drpilot_shared::failback::FailbackSummary;
use drpilot_shared::receipt::{PhaseReceipt, PhaseStatus, RunStatus};
use drpilot_shared::summary::RunSummary;
use drpilot_shared::time::Objective;

use crate::audit::AuditReport;
use crate::CliError;

fn seconds(v: Option<f64>) -> String {
    v.map_or("not measured".to_owned(), |s| format!("{s:.1} s"))
}

pub fn text_report(s: &RunSummary) -> Vec<String> {
    let mut lines = vec![
        format!(
            "run {} ({} of profile {}): {}",
            s.run_id,
            s.mode,
            s.profile,
            status_word(s.status)
        ),
        format!("  RTO {}   RPO {}", s.rto.describe(), s.rpo.describe()),
        format!(
            "  parity delta {}   promoted {}   torn down {}   manual interventions {}",
            s.parity_delta.map_or("n/a".to_owned(), |d| d.to_string()),
            s.promoted,
            s.torn_down,
            s.manual_interventions
        ),
    ];
    if let (Some(a), Some(t)) = (&s.approver, &s.ticket) {
        lines.push(format!("  approved by {a}, ticket {t}"));
    }
    for p in &s.phases {
        lines.push(format!(
            "  {:<14} {:<8} {:>9}  {}",
            p.phase.as_str(),
            p.status.as_str(),
            p.duration_ms.map_or(String::new(), |ms| format!("{ms} ms")),
            p.reason.as_deref().unwrap_or("")
        ));
    }
    if s.executions.len() > 1 {
        for e in &s.executions {
            lines.push(format!(
                "  execution {:<20} {:<28} {}",
                e.name.as_deref().unwrap_or("-"),
                e.window(),
                e.ended()
            ));
        }
    }
    for c in &s.components {
        lines.push(format!(
            "  component {:<16} {:<13} {:<9} RTO {}{}",
            c.name,
            c.kind,
            c.status.as_str(),
            against(c.rto_seconds, Some(c.rto_target_seconds)),
            c.rpo_seconds
                .map(|_| format!("   RPO {}", against(c.rpo_seconds, c.rpo_target_seconds)))
                .unwrap_or_default()
        ));
    }
    if let Some(f) = &s.failure {
        lines.push(format!(
            "  failure in {}: {} {}",
            f.phase.map_or("?", |p| p.as_str()),
            f.error,
            crate::history::readable_cause(&f.cause)
        ));
    }
    lines
}

/// The report page (`templates/report.html`); askama escapes every value for HTML.
#[derive(askama::Template)]
#[template(path = "report.html")]
struct ReportPage<'a> {
    run: &'a str,
    mode: String,
    status: &'static str,
    profile: &'a str,
    backup: String,
    kickoff: String,
    finished: String,
    failure: Option<FailureLine>,
    objectives: [ObjectiveCard; 2],
    parity_class: &'static str,
    parity: String,
    approver: Option<&'a str>,
    ticket: &'a str,
    promoted: bool,
    manual_interventions: u32,
    rows: Vec<PhaseRow>,
    torn_down: bool,
    execution: &'a str,
    /// The run's executions, when it took more than one.
    executions: Vec<ExecutionRow>,
    components: Vec<ComponentRow>,
    /// The post-mortem page's measured timeline, in order.
    timeline: Vec<TimelineRow>,
    /// The auditor's section, when the report was gathered with the run's evidence.
    audit: Option<AuditView>,
}

/// The auditor's facts, as the page shows them.
struct AuditView {
    trigger: String,
    started_by: String,
    backup_id: String,
    backup_created: String,
    state_sha256: String,
    manifests_sha256: String,
    restored: String,
    verified: String,
    approval: String,
    principal: String,
    seal: String,
    audit_record: String,
    evidence: String,
    retained_until: String,
    /// The evidence's version-history findings (`key: why`); empty: none.
    findings: Vec<String>,
    targets: Vec<TargetRow>,
    differences: Vec<String>,
    all_differences: String,
    more_differences: bool,
    /// The two trend charts, inline SVG built from numbers and escaped run ids.
    trend_svg: String,
    trend_runs: usize,
}

struct TargetRow {
    name: String,
    measured: String,
    target: u64,
    class: &'static str,
    verdict: &'static str,
}

struct ComponentRow {
    name: String,
    kind: String,
    status: &'static str,
    required: bool,
    rto: String,
    rto_class: &'static str,
    rpo: String,
    resources: String,
    reason: String,
}

struct TimelineRow {
    at: String,
    offset: String,
    what: String,
}

struct ExecutionRow {
    name: String,
    started: String,
    window: String,
    ended: String,
}

struct FailureLine {
    phase: String,
    error: String,
    cause: String,
}

struct ObjectiveCard {
    name: &'static str,
    class: &'static str,
    value: String,
    target_seconds: u64,
    verdict: &'static str,
}

impl ObjectiveCard {
    fn new(name: &'static str, o: &Objective) -> Self {
        Self {
            name,
            class: objective_class(o.met),
            value: seconds(o.seconds),
            target_seconds: o.target_seconds,
            verdict: o.verdict(),
        }
    }
}

/// One line of the phase table, with its bar on the run's timeline (percentages).
struct PhaseRow {
    phase: &'static str,
    status: &'static str,
    duration: String,
    attempt: u32,
    left: f64,
    width: f64,
    reason: String,
}

fn objective_class(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "ok",
        Some(false) => "bad",
        None => "na",
    }
}

/// A component's measurement in words: against its target when it has one.
fn against(measured: Option<f64>, target: Option<u64>) -> String {
    match (target, measured) {
        (Some(target), _) => Objective::measure(measured, target).describe(),
        (None, Some(_)) => seconds(measured),
        // Nothing to measure (a check restores no point in time).
        (None, None) => "n/a".to_owned(),
    }
}

/// The measured timeline the post-mortem starts from: detected (the alarm, or the start),
/// started, each component verified, promoted, torn down.
fn timeline(s: &RunSummary) -> Vec<TimelineRow> {
    use drpilot_shared::input::Trigger;
    use drpilot_shared::stage::Phase;
    let mut events: Vec<(chrono::DateTime<chrono::Utc>, String)> = Vec::new();
    let detected = match &s.trigger {
        Some(Trigger::Alarm {
            alarm_name,
            fired_at: Some(at),
            ..
        }) => Some((*at, format!("detected: alarm {alarm_name} went into ALARM"))),
        Some(Trigger::Schedule {
            fired_at: Some(at), ..
        }) => Some((*at, "detected: the scheduled drill fired".to_owned())),
        _ => None,
    };
    events.extend(detected);
    events.push((s.kickoff_at, format!("started: {} {}", s.mode, s.run_id)));
    for c in &s.components {
        if let Some(at) = c.verified_at {
            events.push((at, format!("component {} ({}) verified", c.name, c.kind)));
        } else {
            events.push((
                s.finished_at,
                format!("component {} ({}) {}", c.name, c.kind, c.status.as_str()),
            ));
        }
    }
    for p in &s.phases {
        let Some(at) = p.finished_at else { continue };
        match (p.phase, p.status) {
            (Phase::Restore, PhaseStatus::Success) => {
                events.push((at, "S3 data restored into staging".to_owned()))
            }
            (Phase::Validate, PhaseStatus::Success) => {
                events.push((at, "staging validated".to_owned()))
            }
            (Phase::Promote, PhaseStatus::Success) if s.promoted => {
                events.push((at, "promoted into root/".to_owned()))
            }
            (Phase::Teardown, _) => events.push((
                at,
                if s.torn_down {
                    "torn down".to_owned()
                } else {
                    "teardown ended (staging kept)".to_owned()
                },
            )),
            (phase, PhaseStatus::Failed) => events.push((at, format!("{phase} failed"))),
            _ => {}
        }
    }
    events.sort_by_key(|(at, _)| *at);
    events
        .into_iter()
        .map(|(at, what)| TimelineRow {
            at: at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            offset: format!(
                "{:+.1} s",
                (at - s.kickoff_at).num_milliseconds() as f64 / 1000.0
            ),
            what,
        })
        .collect()
}

/// The auditor's report in a few lines of text (after [`text_report`]).
pub fn audit_text(a: &AuditReport) -> Vec<String> {
    let mut lines = vec![format!(
        "  trigger {} {}   backup {} created {}",
        a.trigger.kind,
        a.trigger.source.as_deref().unwrap_or(""),
        a.backup.backup_id.as_deref().unwrap_or("?"),
        a.backup
            .created_at
            .map_or("?".to_owned(), |t| t.to_rfc3339())
    )];
    if a.approval.approver.is_some() {
        lines.push(format!(
            "  approval: principal {} ({}), seal {}",
            a.approval.principal.as_deref().unwrap_or("none"),
            if a.approval.principal_verified {
                "verified by IAM"
            } else {
                "unverified"
            },
            if a.approval.sealed {
                "verified"
            } else {
                "none"
            }
        ));
    }
    for finding in &a.evidence.findings {
        lines.push(format!(
            "  EVIDENCE FINDING {}: {}",
            finding.key, finding.why
        ));
    }
    lines.push(format!(
        "  evidence {} retained until {}",
        a.evidence.location,
        a.evidence
            .retained_until
            .map_or("(no Object Lock)".to_owned(), |t| t
                .format("%Y-%m-%d")
                .to_string())
    ));
    lines
}

/// The auditor's page: the run's page with its evidence, targets and trend.
pub fn render_audit(a: &AuditReport, receipts: &[PhaseReceipt]) -> Result<String, CliError> {
    let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or("unknown".to_owned(), |t| {
            t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
        })
    };
    let or_none = |v: Option<&str>| v.unwrap_or("none").to_owned();
    let view = AuditView {
        trigger: match &a.trigger.alarm_name {
            Some(alarm) => format!("{} (alarm {alarm})", a.trigger.kind),
            None => a.trigger.kind.clone(),
        },
        started_by: a
            .trigger
            .source
            .clone()
            .unwrap_or_else(|| "not recorded".to_owned()),
        backup_id: or_none(a.backup.backup_id.as_deref()),
        backup_created: when(a.backup.created_at),
        state_sha256: or_none(a.backup.state_sha256.as_deref()),
        manifests_sha256: or_none(a.backup.manifests_sha256.as_deref()),
        restored: a.restored.as_ref().map_or("not restored".to_owned(), |r| {
            format!("{} objects, {} bytes in {:.1} s", r.objects, r.bytes, r.seconds)
        }),
        verified: a.verified.as_ref().map_or("not validated".to_owned(), |v| {
            format!(
                "{} of {} objects as the manifests list them, {} differences{}; checks {}/{} passed",
                v.objects,
                v.expected,
                v.differences,
                if v.rehashed { ", every object re-hashed" } else { "" },
                v.checks_passed,
                v.checks
            )
        }),
        approval: match (&a.approval.approver, &a.approval.ticket) {
            (Some(approver), Some(ticket)) => format!("{approver}, ticket {ticket}"),
            _ if a.approval.bypass => "drill-only bypass (no approver)".to_owned(),
            _ => "not approved".to_owned(),
        },
        principal: match &a.approval.principal {
            Some(p) if a.approval.principal_verified => format!("{p} (proven by a signed STS GetCallerIdentity)"),
            Some(p) => p.clone(),
            None => "none: no proven identity".to_owned(),
        },
        seal: if a.approval.sealed {
            "KMS HMAC seal verified by promote".to_owned()
        } else {
            "no seal".to_owned()
        },
        audit_record: a
            .audit_record
            .as_ref()
            .map_or("none (not promoted)".to_owned(), ToString::to_string),
        evidence: a.evidence.location.to_string(),
        retained_until: match (&a.evidence.retained_until, &a.evidence.lock_mode) {
            (Some(t), mode) => format!(
                "{} ({} mode)",
                t.format("%Y-%m-%d"),
                mode.as_deref().unwrap_or("unknown")
            ),
            (None, _) => "not under Object Lock".to_owned(),
        },
        findings: a
            .evidence
            .findings
            .iter()
            .map(|f| format!("{}: {}", f.key, f.why))
            .collect(),
        targets: a
            .targets
            .iter()
            .map(|t| TargetRow {
                name: t.name.clone(),
                measured: seconds(t.measured_seconds),
                target: t.target_seconds,
                class: objective_class(t.met),
                verdict: Objective::measure(t.measured_seconds, t.target_seconds).verdict(),
            })
            .collect(),
        differences: a
            .parity
            .as_ref()
            .map(|p| p.first_differences.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        all_differences: a
            .parity
            .as_ref()
            .map_or(String::new(), |p| p.all_differences.to_string()),
        more_differences: a
            .parity
            .as_ref()
            .is_some_and(|p| p.delta as usize > p.first_differences.len()),
        trend_svg: crate::audit::trend_svg(&a.trend, &a.run_id),
        trend_runs: a.trend.len(),
    };
    page(&a.summary, receipts, Some(view))
}

/// One HTML page, everything inline.
pub fn render(s: &RunSummary, receipts: &[PhaseReceipt]) -> Result<String, CliError> {
    page(s, receipts, None)
}

fn page(
    s: &RunSummary,
    receipts: &[PhaseReceipt],
    audit: Option<AuditView>,
) -> Result<String, CliError> {
    let page = ReportPage {
        run: &s.run_id,
        mode: s.mode.to_string(),
        status: status_word(s.status),
        profile: &s.profile,
        backup: s
            .backup_uri
            .as_ref()
            .map_or("unknown".to_owned(), ToString::to_string),
        kickoff: s.kickoff_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        finished: s.finished_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        failure: s.failure.as_ref().map(|f| FailureLine {
            phase: f.phase.map_or("?", |p| p.as_str()).to_owned(),
            error: f.error.clone(),
            cause: crate::history::readable_cause(&f.cause),
        }),
        objectives: [
            ObjectiveCard::new("RTO", &s.rto),
            ObjectiveCard::new("RPO", &s.rpo),
        ],
        parity_class: match s.parity_delta {
            Some(0) => "ok",
            Some(_) => "bad",
            None => "na",
        },
        parity: s.parity_delta.map_or("n/a".to_owned(), |d| d.to_string()),
        // The approval line names approver and ticket only when both are known.
        approver: s.approver.as_deref().filter(|_| s.ticket.is_some()),
        ticket: s.ticket.as_deref().unwrap_or_default(),
        promoted: s.promoted,
        manual_interventions: s.manual_interventions,
        rows: phase_rows(s, receipts),
        torn_down: s.torn_down,
        execution: s.execution_arn.as_deref().unwrap_or("unknown"),
        executions: if s.executions.len() > 1 {
            s.executions
                .iter()
                .map(|e| ExecutionRow {
                    name: e.name.clone().unwrap_or_else(|| "-".to_owned()),
                    started: e.started_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                    window: e.window(),
                    ended: e.ended(),
                })
                .collect()
        } else {
            Vec::new()
        },
        components: s.components.iter().map(component_row).collect(),
        timeline: timeline(s),
        audit,
    };
    askama::Template::render(&page)
        .map_err(|e| CliError::Encoding(format!("rendering the report: {e}")))
}

/// The timeline's rows: each phase's bar, placed by its start and length in the run.
fn phase_rows(s: &RunSummary, receipts: &[PhaseReceipt]) -> Vec<PhaseRow> {
    let start = s.kickoff_at;
    let total_ms = (s.finished_at - start).num_milliseconds().max(1) as f64;
    s.phases
        .iter()
        .map(|p| {
            let (left, width) = match (p.started_at, p.duration_ms) {
                (Some(at), Some(ms)) => (
                    ((at - start).num_milliseconds().max(0) as f64 / total_ms * 100.0).min(100.0),
                    (ms as f64 / total_ms * 100.0).clamp(0.5, 100.0),
                ),
                _ => (0.0, 0.0),
            };
            PhaseRow {
                phase: p.phase.as_str(),
                status: p.status.as_str(),
                duration: p
                    .duration_ms
                    .map_or(String::new(), |ms| format!("{:.2} s", ms as f64 / 1000.0)),
                attempt: receipts
                    .iter()
                    .find(|r| r.phase == p.phase)
                    .map_or(1, |r| r.attempt),
                left,
                width,
                reason: p.reason.clone().unwrap_or_default(),
            }
        })
        .collect()
}

/// A component's row: its state, objectives and what it created.
fn component_row(c: &ComponentOutcome) -> ComponentRow {
    ComponentRow {
        name: c.name.clone(),
        kind: c.kind.clone(),
        status: c.status.as_str(),
        required: c.required,
        rto: against(c.rto_seconds, Some(c.rto_target_seconds)),
        rto_class: objective_class(c.rto_met),
        rpo: against(c.rpo_seconds, c.rpo_target_seconds),
        resources: c
            .created_resources
            .iter()
            .map(|r| format!("{} ({:?})", r.resource.describe(), r.state).to_lowercase())
            .collect::<Vec<_>>()
            .join(", "),
        reason: c.reason.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drpilot_shared::input::Mode;
    use drpilot_shared::receipt::Failure;
    use drpilot_shared::stage::Phase;
    use drpilot_shared::summary::PhaseOutcome;

    fn summary() -> RunSummary {
        let kickoff = "2026-01-01T00:00:00Z".parse().unwrap();
        RunSummary {
            run_id: "run-<1>".into(),
            mode: Mode::Drill,
            dry_run: false,
            profile: "payments".into(),
            status: RunStatus::Failed,
            execution_arn: None,
            trigger: None,
            backup_uri: None,
            backup_created_at: None,
            kickoff_at: kickoff,
            finished_at: kickoff + chrono::TimeDelta::seconds(10),
            phases: vec![PhaseOutcome {
                phase: Phase::Restore,
                status: PhaseStatus::Failed,
                reason: Some("entry <script>alert(1)</script> & more".into()),
                started_at: Some(kickoff),
                finished_at: Some(kickoff + chrono::TimeDelta::seconds(5)),
                duration_ms: Some(5_000),
            }],
            rto_seconds: None,
            rpo_seconds: Some(7_200.0),
            rto: Objective::measure(None, 900),
            rpo: Objective::measure(Some(7_200.0), 3_600),
            parity_delta: None,
            manual_interventions: 0,
            approver: None,
            ticket: None,
            approver_principal: None,
            approval_sealed: false,
            promoted: false,
            torn_down: true,
            executions: Vec::new(),
            components: Vec::new(),
            rto_watch: None,
            failure: Some(Failure {
                phase: Some(Phase::Restore),
                error: "ContractError".into(),
                cause: "bad \"tar\"".into(),
            }),
        }
    }

    #[test]
    fn the_page_escapes_what_it_shows() {
        let page = render(&summary(), &[]).unwrap();
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&#60;script&#62;"), "{page}");
        assert!(page.contains("run-&#60;1&#62;"), "{page}");
        assert!(
            page.contains("Failed in <b>restore</b>: ContractError"),
            "{page}"
        );
    }

    #[test]
    fn the_page_shows_objectives_and_the_timeline() {
        let page = render(&summary(), &[]).unwrap();
        assert!(
            page.contains("<p class=\"big\">7200.0 s</p><p>target 3600 s — MISSED</p>"),
            "{page}"
        );
        assert!(page.contains("target 900 s — not measured"), "{page}");
        // Restore ran for 5 s of a 10 s run, from its start.
        assert!(page.contains("margin-left:0.00%;width:50.00%"), "{page}");
        assert!(page.contains("not approved; nothing promoted"), "{page}");
        assert!(!page.contains("Executions"), "one execution: no table");
    }

    #[test]
    fn a_run_of_several_executions_lists_them() {
        use drpilot_shared::input::{RunInput, Trigger};
        use drpilot_shared::record::{ExecutionEntry, ExecutionOutcome};
        let mut s = summary();
        let entry = |name: &str, start_at: Phase, failure: Option<Failure>| {
            let mut input = RunInput::drill("payments");
            input.start_at = start_at;
            let mut e = ExecutionEntry::new(
                Some(name.into()),
                None,
                s.kickoff_at,
                &input,
                Trigger::manual(),
            );
            e.outcome = Some(ExecutionOutcome {
                status: if failure.is_some() {
                    RunStatus::Failed
                } else {
                    RunStatus::Succeeded
                },
                failure,
                torn_down: true,
                finished_at: s.finished_at,
            });
            e
        };
        let failed = s.failure.clone();
        s.executions = vec![
            entry("run-1.1", Phase::Bringup, failed),
            entry("run-1.2", Phase::Restore, None),
        ];
        let page = render(&s, &[]).unwrap();
        assert!(page.contains("<h2>Executions</h2>"), "{page}");
        assert!(
            page.contains("<code>run-1.1</code>")
                && page.contains("failed (ContractError in restore)"),
            "{page}"
        );
        assert!(page.contains("restore..teardown"), "{page}");
        let text = text_report(&s).join("\n");
        assert!(text.contains("execution run-1.2"), "{text}");
    }

    #[test]
    fn components_get_a_table_and_the_post_mortem_their_timeline() {
        use drpilot_shared::component::{ComponentOutcome, ComponentStatus};
        let mut s = summary();
        let verified = s.kickoff_at + chrono::TimeDelta::seconds(7);
        s.components = vec![ComponentOutcome {
            name: "orders".into(),
            kind: "rds_snapshot".into(),
            status: ComponentStatus::Verified,
            required: true,
            rto_seconds: Some(7.0),
            rto_target_seconds: 5,
            rto_met: Some(false),
            rpo_seconds: Some(60.0),
            rpo_target_seconds: Some(300),
            rpo_met: Some(true),
            verified_at: Some(verified),
            reason: None,
            created_resources: Vec::new(),
        }];
        let page = render(&s, &[]).unwrap();
        assert!(page.contains("<h2>Components</h2>"), "{page}");
        assert!(page.contains("7.0 s (target 5 s, MISSED)"), "{page}");
        assert!(page.contains("60.0 s (target 300 s, met)"), "{page}");
        assert!(
            page.contains("<h2>Post-mortem</h2>") && page.contains("Root cause"),
            "{page}"
        );
        assert!(
            page.contains("+7.0 s</td><td>component orders (rds_snapshot) verified"),
            "{page}"
        );
        let text = text_report(&s).join("\n");
        assert!(
            text.contains("component orders") && text.contains("MISSED"),
            "{text}"
        );
    }
}

/// A failback's summary in a few lines.
pub fn failback_text(s: &FailbackSummary) -> Vec<String> {
    let mut lines = vec![format!(
        "failback {} of DR run {} (profile {}): {}{}",
        s.run_id,
        s.dr_run_id,
        s.profile,
        status_word(s.status),
        if s.dry_run { " (dry run)" } else { "" }
    )];
    if let Some(d) = &s.divergence {
        lines.push(format!(
            "  since the backup: {} keys changed on the DR site, {} on the primary only, {} lost by the primary, {} on both differently, {} on both alike, {} unchanged, {} DR drift",
            d.dr_changed, d.primary_changed, d.primary_missing, d.divergent, d.both_same, d.unchanged, d.dr_drift
        ));
    }
    if let Some(report) = &s.divergence_report {
        lines.push(format!("  plan {report}"));
    }
    if !s.confirmations.is_empty() {
        lines.push(format!("  confirmed by {}", confirmed_by(s)));
    }
    if let (Some(generation), Some(audit)) = (s.generation, &s.audit_record) {
        lines.push(format!(
            "  copied {} objects; generation {generation}; audit record {audit}",
            s.objects_copied
        ));
    }
    for r in &s.steps {
        lines.push(format!(
            "  {:<14} {:<8} {:>9}  {}",
            r.phase.as_str(),
            r.status.as_str(),
            format!("{:.2} s", r.duration_ms as f64 / 1000.0),
            r.reason.as_deref().unwrap_or("")
        ));
    }
    if let Some(f) = &s.failure {
        lines.push(format!(
            "  failure in {}: {} {}",
            f.step,
            f.error,
            crate::history::readable_cause(&f.cause)
        ));
    }
    lines.push(format!("  lock: {}", s.lock));
    lines
}

fn confirmed_by(s: &FailbackSummary) -> String {
    s.confirmations
        .iter()
        .map(|c| match &c.ticket {
            Some(t) => format!("{} ({t})", c.approver),
            None => format!("{} ({})", c.approver, c.kind),
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

/// The failback page (`templates/failback.html`).
#[derive(askama::Template)]
#[template(path = "failback.html")]
struct FailbackPage<'a> {
    run: &'a str,
    dr_run: &'a str,
    status: &'static str,
    profile: &'a str,
    dry_run: bool,
    kickoff: String,
    finished: String,
    failure: Option<FailureLine>,
    divergent_class: &'static str,
    divergent: String,
    dr_changed: String,
    primary_changed: String,
    primary_missing: String,
    copied: u64,
    confirmations: &'a [drpilot_shared::failback::Confirmation],
    confirmed_by: String,
    generation: String,
    audit_record: String,
    plan: String,
    lock: &'a str,
    rows: Vec<PhaseRow>,
    execution: &'a str,
}

/// A failback's page, everything inline.
pub fn render_failback(s: &FailbackSummary) -> Result<String, CliError> {
    let count = |f: fn(&drpilot_shared::failback::DivergenceCounts) -> u64| {
        s.divergence
            .as_ref()
            .map_or("n/a".to_owned(), |d| f(d).to_string())
    };
    let page = FailbackPage {
        run: &s.run_id,
        dr_run: &s.dr_run_id,
        status: status_word(s.status),
        profile: &s.profile,
        dry_run: s.dry_run,
        kickoff: s.kickoff_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        finished: s.finished_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        failure: s.failure.as_ref().map(|f| FailureLine {
            phase: f.step.clone(),
            error: f.error.clone(),
            cause: crate::history::readable_cause(&f.cause),
        }),
        divergent_class: match s.divergence.as_ref().map(|d| d.divergent) {
            Some(0) => "ok",
            Some(_) => "bad",
            None => "na",
        },
        divergent: count(|d| d.divergent),
        dr_changed: count(|d| d.dr_changed),
        primary_changed: count(|d| d.primary_changed),
        primary_missing: count(|d| d.primary_missing),
        copied: s.objects_copied,
        confirmations: &s.confirmations,
        confirmed_by: if s.confirmations.is_empty() {
            "none".to_owned()
        } else {
            confirmed_by(s)
        },
        generation: s
            .generation
            .map_or("unchanged".to_owned(), |g| g.to_string()),
        audit_record: s
            .audit_record
            .as_ref()
            .map_or("none".to_owned(), ToString::to_string),
        plan: s
            .divergence_report
            .as_ref()
            .map_or("none".to_owned(), ToString::to_string),
        lock: &s.lock,
        rows: s
            .steps
            .iter()
            .map(|r| PhaseRow {
                phase: r.phase.as_str(),
                status: r.status.as_str(),
                duration: format!("{:.2} s", r.duration_ms as f64 / 1000.0),
                attempt: r.attempt,
                left: 0.0,
                width: 0.0,
                reason: r.reason.clone().unwrap_or_default(),
            })
            .collect(),
        execution: s.execution_arn.as_deref().unwrap_or("unknown"),
    };
    askama::Template::render(&page)
        .map_err(|e| CliError::Encoding(format!("rendering the failback report: {e}")))
}

/// A run's or a failback's status, as the reports say it.
fn status_word(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "FAILED",
    }
}
