//! `POST /v1/applied/{app}/{env}`, shared by edge and origin: a service instance reports the
//! revision of `app/env` it applied. This module owns the request body, its checks, and the
//! bounded table of reports a node holds until it passes them on (an edge, beside its next
//! report to the origin) or assesses them (an origin).

use std::collections::BTreeMap;
use std::sync::Mutex;

use axum::http::StatusCode;
use meridian_protocol::applied::{AppliedReport, MAX_REPORTER_BYTES};
use meridian_protocol::auth::Principal;
use serde::Deserialize;

use crate::http::ApiError;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 4096;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliedBody {
    /// The instance's name (a host or pod name), 1 to 128 printable characters.
    pub instance: String,
    /// The revision it applied.
    pub revision: u64,
    /// The key prefix it watches (default: every key).
    #[serde(default)]
    pub prefix: String,
}

/// The report a request makes, or the 400/413 naming what is wrong with it.
pub fn report(
    app: &str,
    env: &str,
    body: &[u8],
    principal: &Principal,
    now_ms: u64,
) -> Result<AppliedReport, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("a report is at most {MAX_BODY_BYTES} bytes"),
        ));
    }
    let body: AppliedBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_report",
            format!("bad report: {e}"),
        )
    })?;
    let mut reporter = principal.actor();
    if reporter.len() > MAX_REPORTER_BYTES {
        let cut = (0..=MAX_REPORTER_BYTES)
            .rev()
            .find(|i| reporter.is_char_boundary(*i))
            .unwrap_or(0);
        reporter.truncate(cut);
    }
    let report = AppliedReport {
        app: app.to_owned(),
        env: env.to_owned(),
        prefix: body.prefix,
        instance: body.instance,
        revision: body.revision,
        reporter,
        at_ms: now_ms,
    };
    report.validate().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_report",
            format!("bad report: {e}"),
        )
    })?;
    Ok(report)
}

/// Reports not yet passed on, the latest per instance, at most [`Pending::MAX_REPORTS`].
#[derive(Debug, Default)]
pub struct Pending {
    reports: Mutex<BTreeMap<(String, String, String), AppliedReport>>,
}

impl Pending {
    /// Most instances held between two passes.
    pub const MAX_REPORTS: usize = 10_000;

    /// Holds `report`, replacing the instance's earlier one; refused (503) when full.
    pub fn insert(&self, report: AppliedReport) -> Result<(), ApiError> {
        let mut reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        let key = (
            report.app.clone(),
            report.env.clone(),
            report.instance.clone(),
        );
        if reports.len() >= Self::MAX_REPORTS && !reports.contains_key(&key) {
            metrics::counter!("meridian_applied_reports_refused_total").increment(1);
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "applied_backlog_full",
                format!(
                    "{} instances are waiting to be passed on; report again shortly",
                    Self::MAX_REPORTS
                ),
            ));
        }
        reports.insert(key, report);
        Ok(())
    }

    /// Takes at most `max` reports.
    pub fn take(&self, max: usize) -> Vec<AppliedReport> {
        let mut reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<_> = reports.keys().take(max).cloned().collect();
        keys.into_iter()
            .filter_map(|k| reports.remove(&k))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal() -> Principal {
        Principal::nobody()
    }

    #[test]
    fn a_report_is_checked_and_stamped() {
        let r = report(
            "payments",
            "prod",
            br#"{"instance":"pod-1","revision":7}"#,
            &principal(),
            99,
        )
        .unwrap();
        assert_eq!((r.revision, r.at_ms, r.prefix.as_str()), (7, 99, ""));
        for (body, code) in [
            (&b"{}"[..], "invalid_report"),
            (br#"{"instance":"a b","revision":1}"#, "invalid_report"),
            (br#"{"instance":"a","revision":-1}"#, "invalid_report"),
            (br#"{"instance":"a","revision":1,"x":1}"#, "invalid_report"),
            (
                br#"{"instance":"a","revision":1,"prefix":"A B"}"#,
                "invalid_report",
            ),
        ] {
            let e = report("payments", "prod", body, &principal(), 0).unwrap_err();
            assert_eq!(e.code, code, "{}", String::from_utf8_lossy(body));
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        let e = report("payments", "prod", &big, &principal(), 0).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn the_table_keeps_the_latest_per_instance_and_is_bounded() {
        let pending = Pending::default();
        let r = |i: usize, revision| AppliedReport {
            app: "a".into(),
            env: "e".into(),
            prefix: String::new(),
            instance: format!("i{i}"),
            revision,
            reporter: String::new(),
            at_ms: 0,
        };
        for i in 0..Pending::MAX_REPORTS {
            pending.insert(r(i, 1)).unwrap();
        }
        let full = pending.insert(r(Pending::MAX_REPORTS, 1)).unwrap_err();
        assert_eq!(full.code, "applied_backlog_full");
        // An instance already held may still move on.
        pending.insert(r(0, 2)).unwrap();
        let first = pending.take(10);
        assert_eq!(first.len(), 10);
        assert_eq!(first[0].revision, 2);
        assert_eq!(pending.take(usize::MAX).len(), Pending::MAX_REPORTS - 10);
        assert!(pending.take(1).is_empty());
    }
}
