//! `sagactl definitions`: the saga definitions this build knows (steps, kinds, compensations,
//! timeouts), and which versions still have sagas in flight (a version may be retired, that is
//! removed from [`saga_orchestrator::definition::order_saga_versions`], only when it has none).

use std::fmt::Write as _;

use saga_orchestrator::definition::{SagaDefinition, Versions};
use saga_orchestrator::store;
use serde_json::json;

/// Every known version, oldest first, with the one new sagas start on by default.
pub fn known() -> Versions {
    Versions::new(saga_orchestrator::definition::order_saga_versions(), None).expect("the built-in saga definitions are well formed")
}

/// The definitions as a table: one block per version, one line per step.
pub fn render(versions: &Versions) -> String {
    let mut out = String::new();
    for d in versions.all() {
        let default = if d.version == versions.starting().version { "  (new sagas start here unless saga.order_version says otherwise)" } else { "" };
        let _ = writeln!(out, "{} v{}: {} step(s){default}", d.name, d.version, d.steps.len());
        let _ = writeln!(out, "  {:<3} {:<18} {:<14} {:<18} {:<40} {:<36} timeout", "#", "step", "kind", "command", "succeeds on / fails on", "undo");
        for (i, s) in d.steps.iter().enumerate() {
            let replies = format!("{:?} / {}", s.succeeded_on, if s.failed_on.is_empty() { "-".to_string() } else { names(s.failed_on) });
            let undo = match (s.compensation, s.cancel) {
                (Some(c), _) => format!("{:?} -> {:?}", c.action, c.done_on),
                (None, Some(c)) => format!("cancel: {:?} -> {:?}", c.action, c.done_on),
                (None, None) => "-".into(),
            };
            let _ = writeln!(
                out,
                "  {:<3} {:<18} {:<14} {:<18} {:<40} {:<36} {} s",
                i + 1,
                s.name,
                s.kind.as_str(),
                format!("{:?}", s.action),
                replies,
                undo,
                s.timeout_ms / 1000
            );
        }
        let _ = writeln!(
            out,
            "  after compensation: {:?} -> {:?}; compensation timeout {} s",
            d.on_compensated.action,
            d.on_compensated.done_on,
            d.compensation_timeout_ms / 1000
        );
    }
    out
}

fn names(replies: &[saga_orchestrator::definition::Reply]) -> String {
    replies.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>().join(", ")
}

/// The definitions as JSON: `{"starting": 2, "definitions": [{name, version, steps: [...]}]}`.
pub fn to_json(versions: &Versions) -> serde_json::Value {
    let def = |d: &SagaDefinition| {
        json!({
            "name": d.name,
            "version": d.version,
            "steps": d.steps.iter().map(|s| json!({
                "name": s.name,
                "kind": s.kind.as_str(),
                "command": format!("{:?}", s.action),
                "succeeded_on": format!("{:?}", s.succeeded_on),
                "failed_on": s.failed_on.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>(),
                "compensation": s.compensation.map(|c| json!({"command": format!("{:?}", c.action), "done_on": format!("{:?}", c.done_on)})),
                "cancel": s.cancel.map(|c| json!({"command": format!("{:?}", c.action), "done_on": format!("{:?}", c.done_on)})),
                "timeout_ms": s.timeout_ms,
            })).collect::<Vec<_>>(),
            "on_compensated": {"command": format!("{:?}", d.on_compensated.action), "done_on": format!("{:?}", d.on_compensated.done_on)},
            "compensation_timeout_ms": d.compensation_timeout_ms,
        })
    };
    json!({ "starting": versions.starting().version, "definitions": versions.all().iter().map(def).collect::<Vec<_>>() })
}

/// Unfinished sagas of one definition version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InFlight {
    /// The version.
    pub version: i64,
    /// Whether this build knows it.
    pub known: bool,
    /// Sagas neither COMPLETED nor COMPENSATED.
    pub count: i64,
    /// Up to ten of them, oldest first.
    pub examples: Vec<String>,
}

/// Unfinished sagas per version: every known version (with 0 when it has none) and any version
/// the database holds that this build does not know.
pub async fn in_flight(db: &saga_store::Db, versions: &Versions) -> anyhow::Result<Vec<InFlight>> {
    let counts = store::in_flight_by_version(db).await?;
    let mut all: Vec<i64> = versions.all().iter().map(|d| i64::from(d.version)).chain(counts.iter().map(|(v, _)| *v)).collect();
    all.sort_unstable();
    all.dedup();
    let mut out = Vec::new();
    for version in all {
        let count = counts.iter().find(|(v, _)| *v == version).map_or(0, |(_, n)| *n);
        let examples = if count > 0 { store::in_flight_ids(db, version, 10).await? } else { vec![] };
        out.push(InFlight { version, known: versions.get(version).is_some(), count, examples });
    }
    Ok(out)
}

/// One line per version: how many sagas are in flight, a few of them, and whether it may be
/// retired.
pub fn render_in_flight(rows: &[InFlight]) -> String {
    let mut out = String::new();
    for r in rows {
        let verdict = match (r.count, r.known) {
            (0, _) => "may be retired: no saga runs it".to_string(),
            (_, true) => "in use: keep it until these end".to_string(),
            (_, false) => "UNKNOWN to this build: an orchestrator built from it refuses to start".to_string(),
        };
        let examples = if r.examples.is_empty() { String::new() } else { format!(" (e.g. {})", r.examples.join(", ")) };
        let _ = writeln!(out, "v{}: {} saga(s) in flight{examples}; {verdict}", r.version, r.count);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_every_step_of_every_version() {
        let text = render(&known());
        assert!(text.contains("order v1: 3 step(s)"), "{text}");
        assert!(text.contains("order v2: 4 step(s)  (new sagas start here"), "{text}");
        assert!(text.contains("check_risk"), "{text}");
        assert!(text.contains("cancel: VoidPayment -> PaymentVoided"), "{text}");
        let json = to_json(&known());
        assert_eq!(json["starting"], 2);
        assert_eq!(json["definitions"][1]["steps"][1]["kind"], "check");
        assert_eq!(json["definitions"][0]["steps"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn in_flight_says_which_versions_may_be_retired() {
        let rows = vec![
            InFlight { version: 1, known: true, count: 0, examples: vec![] },
            InFlight { version: 2, known: true, count: 2, examples: vec!["o1".into(), "o2".into()] },
            InFlight { version: 3, known: false, count: 1, examples: vec!["o3".into()] },
        ];
        let text = render_in_flight(&rows);
        assert!(text.contains("v1: 0 saga(s) in flight; may be retired"), "{text}");
        assert!(text.contains("v2: 2 saga(s) in flight (e.g. o1, o2); in use"), "{text}");
        assert!(text.contains("v3: 1 saga(s) in flight (e.g. o3); UNKNOWN"), "{text}");
    }
}
