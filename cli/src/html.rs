//! The run report: a few lines of text, or one self-contained HTML page (inline CSS, no
//! external assets) with the phase timeline, RTO/RPO against targets, parity and approval.

use drpilot_shared::receipt::{Objective, PhaseReceipt, PhaseStatus, RunStatus, RunSummary};

fn seconds(v: Option<f64>) -> String {
    v.map_or("not measured".to_owned(), |s| format!("{s:.1} s"))
}

fn verdict(o: &Objective) -> &'static str {
    match o.met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "not measured",
    }
}

fn status(s: PhaseStatus) -> &'static str {
    match s {
        PhaseStatus::Success => "success",
        PhaseStatus::Failed => "failed",
        PhaseStatus::Skipped => "skipped",
    }
}

pub fn text_report(s: &RunSummary) -> Vec<String> {
    let mut lines = vec![
        format!(
            "run {} ({} of profile {}): {}",
            s.run_id,
            s.mode,
            s.profile,
            match s.status {
                RunStatus::Succeeded => "succeeded",
                RunStatus::Failed => "FAILED",
            }
        ),
        format!(
            "  RTO {} (target {} s, {})   RPO {} (target {} s, {})",
            seconds(s.rto_seconds),
            s.rto.target_seconds,
            verdict(&s.rto),
            seconds(s.rpo_seconds),
            s.rpo.target_seconds,
            verdict(&s.rpo)
        ),
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
            status(p.status),
            p.duration_ms.map_or(String::new(), |ms| format!("{ms} ms")),
            p.reason.as_deref().unwrap_or("")
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

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One HTML page, everything inline.
pub fn render(s: &RunSummary, receipts: &[PhaseReceipt]) -> String {
    let start = s.kickoff_at;
    let total_ms = (s.finished_at - start).num_milliseconds().max(1) as f64;
    let mut rows = String::new();
    for p in &s.phases {
        let (left, width) = match (p.started_at, p.duration_ms) {
            (Some(at), Some(ms)) => (
                ((at - start).num_milliseconds().max(0) as f64 / total_ms * 100.0).min(100.0),
                (ms as f64 / total_ms * 100.0).clamp(0.5, 100.0),
            ),
            _ => (0.0, 0.0),
        };
        let attempt = receipts
            .iter()
            .find(|r| r.phase == p.phase)
            .map_or(1, |r| r.attempt);
        rows.push_str(&format!(
            "<tr class=\"{cls}\"><td>{phase}</td><td>{status}</td><td class=\"num\">{dur}</td><td>{attempt}</td>\
             <td class=\"bar\"><div style=\"margin-left:{left:.2}%;width:{width:.2}%\"></div></td><td>{reason}</td></tr>\n",
            cls = status(p.status),
            phase = p.phase.as_str(),
            status = status(p.status),
            dur = p.duration_ms.map_or(String::new(), |ms| format!("{:.2} s", ms as f64 / 1000.0)),
            reason = esc(p.reason.as_deref().unwrap_or("")),
        ));
    }
    let objective = |name: &str, o: &Objective| {
        format!(
            "<div class=\"card {cls}\"><h2>{name}</h2><p class=\"big\">{value}</p><p>target {target} s — {verdict}</p></div>",
            cls = match o.met {
                Some(true) => "ok",
                Some(false) => "bad",
                None => "na",
            },
            value = seconds(o.seconds),
            target = o.target_seconds,
            verdict = verdict(o),
        )
    };
    let approval = match (&s.approver, &s.ticket) {
        (Some(a), Some(t)) => format!("approved by <b>{}</b>, ticket <b>{}</b>", esc(a), esc(t)),
        _ if s.promoted => "promoted through the drill-only bypass (no approver)".to_owned(),
        _ => "not approved; nothing promoted".to_owned(),
    };
    let failure = s.failure.as_ref().map_or(String::new(), |f| {
        format!(
            "<p class=\"failure\">Failed in <b>{}</b>: {} — {}</p>",
            f.phase.map_or("?", |p| p.as_str()),
            esc(&f.error),
            esc(&crate::history::readable_cause(&f.cause))
        )
    });
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>drpilot run {run}</title>
<style>
body{{font:15px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:980px;color:#1d2430;padding:0 1rem}}
h1{{font-size:1.5rem;margin-bottom:.2rem}} .sub{{color:#5b6472;margin-top:0}}
.cards{{display:flex;gap:1rem;flex-wrap:wrap;margin:1.2rem 0}}
.card{{flex:1;min-width:180px;border-radius:10px;padding:.6rem 1rem;background:#f3f5f8;border-left:6px solid #9aa3af}}
.card h2{{font-size:.85rem;text-transform:uppercase;letter-spacing:.05em;margin:.2rem 0;color:#5b6472}}
.card .big{{font-size:1.6rem;font-weight:600;margin:.1rem 0}}
.card.ok{{border-color:#1a9c5b}} .card.bad{{border-color:#d0342c}} .card.na{{border-color:#9aa3af}}
table{{width:100%;border-collapse:collapse;margin-top:1rem}} th,td{{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #e3e7ed;vertical-align:middle}}
td.num{{text-align:right;font-variant-numeric:tabular-nums}}
td.bar{{width:35%}} td.bar div{{height:12px;border-radius:3px;background:#3b73d9}}
tr.failed td.bar div{{background:#d0342c}} tr.skipped td.bar div{{background:#c3c9d2}}
tr.failed td:nth-child(2){{color:#d0342c;font-weight:600}} tr.skipped td:nth-child(2){{color:#7a828e}}
.failure{{background:#fdecea;border-radius:8px;padding:.6rem 1rem}}
footer{{margin-top:2rem;color:#7a828e;font-size:.85rem}}
</style></head>
<body>
<h1>drpilot {mode} <code>{run}</code> — {status}</h1>
<p class="sub">profile <b>{profile}</b> · backup <code>{backup}</code> · kickoff {kickoff} · finished {finished}</p>
{failure}
<div class="cards">
{rto}
{rpo}
<div class="card {parity_cls}"><h2>Parity delta</h2><p class="big">{parity}</p><p>staging vs root/ before promotion</p></div>
<div class="card na"><h2>Approval</h2><p>{approval}</p><p>manual interventions: {manual}</p></div>
</div>
<h2>Phases</h2>
<table><thead><tr><th>phase</th><th>status</th><th>duration</th><th>attempt</th><th>timeline</th><th>reason</th></tr></thead>
<tbody>
{rows}</tbody></table>
<footer>promoted: {promoted} · staging torn down: {torn_down} · execution {execution}</footer>
</body></html>
"#,
        run = esc(&s.run_id),
        mode = s.mode,
        status = match s.status {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "FAILED",
        },
        profile = esc(&s.profile),
        backup = esc(&s
            .backup_uri
            .as_ref()
            .map_or("unknown".to_owned(), |u| u.to_string())),
        kickoff = s.kickoff_at.format("%Y-%m-%d %H:%M:%S UTC"),
        finished = s.finished_at.format("%Y-%m-%d %H:%M:%S UTC"),
        failure = failure,
        rto = objective("RTO", &s.rto),
        rpo = objective("RPO", &s.rpo),
        parity_cls = match s.parity_delta {
            Some(0) => "ok",
            Some(_) => "bad",
            None => "na",
        },
        parity = s.parity_delta.map_or("n/a".to_owned(), |d| d.to_string()),
        approval = approval,
        manual = s.manual_interventions,
        rows = rows,
        promoted = s.promoted,
        torn_down = s.torn_down,
        execution = esc(s.execution_arn.as_deref().unwrap_or("unknown")),
    )
}
