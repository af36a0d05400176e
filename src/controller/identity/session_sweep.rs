//! The session part of a drift sweep, at a cost bounded by the objects the operator manages,
//! not by the sessions of everyone else in Kratos.
//!
//! Kratos lists active sessions newest first (by the time it stored them), 500 per request
//! here, and says how many there are. A sweep reads that list only as far back as the sessions
//! that may be new since its previous sweep: a session of a managed identity that recorded none
//! shows up there. Sessions also end (logout, revocation, expiry) without a trace in that list,
//! so each managed identity that recorded some has its own sessions listed, one request each;
//! unless reading the rest of the global list costs fewer requests, which then counts every
//! identity exactly. The first sweep of a process reads the whole list once.
//!
//! An idle resync of M managed identities among many others therefore costs ceil(M/500)
//! identity list requests, one session list request, and one request per managed identity
//! with active sessions (at most the whole session list's pages).

use std::{collections::HashMap, sync::Arc, time::Duration};

use jiff::Timestamp;

use super::Context;
use crate::{
    api::Identity,
    kratos::{Error, SessionExpand},
};

/// What a sweep knows of one identity's active sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActiveSessions {
    /// How many there are.
    pub count: i32,
    /// The earliest authentication among them (sessions without one are not counted here).
    pub earliest_authenticated_at: Option<Timestamp>,
}

impl ActiveSessions {
    /// Adds one active session authenticated at `at`.
    pub fn add(&mut self, at: Option<Timestamp>) {
        self.count = self.count.saturating_add(1);
        if let Some(at) = at {
            self.earliest_authenticated_at = Some(
                self.earliest_authenticated_at
                    .map_or(at, |earliest| earliest.min(at)),
            );
        }
    }
}

/// What a sweep keeps between its session passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The newest `issued_at` (Kratos' clock) among the sessions the previous passes saw;
    /// `None` before the first pass, which reads the whole list.
    pub newest: Option<Timestamp>,
}

/// Whether a page whose oldest stored session was issued at `last_issued` reaches past the
/// sessions that may be new since `newest` (pure). A session is stored at most `lookback` after
/// it was issued, and another may have been issued up to `lookback` before `newest` but stored
/// after the previous pass read the list: paging stops once the list is two lookbacks older.
pub fn past_the_new(
    last_issued: Option<Timestamp>,
    newest: Option<Timestamp>,
    lookback: Duration,
) -> bool {
    let (Some(last), Some(newest)) = (last_issued, newest) else {
        return false;
    };
    let Ok(window) = jiff::SignedDuration::try_from(lookback.saturating_mul(2)) else {
        return false;
    };
    newest
        .checked_sub(window)
        .is_ok_and(|boundary| last < boundary)
}

/// Whether reading the rest of the list (`total` sessions, `page_size` a page, `read` pages
/// read) costs fewer requests than listing the sessions of `tracked` identities one by one
/// (pure). Without a total the identities are listed one by one: their number is bounded by
/// the objects.
pub fn read_on(total: Option<u64>, read: u64, page_size: u64, tracked: usize) -> bool {
    let Some(total) = total else {
        return false;
    };
    let remaining = total.div_ceil(page_size.max(1)).saturating_sub(read);
    remaining < u64::try_from(tracked).unwrap_or(u64::MAX)
}

/// The Kratos ids of the candidates whose status counts active sessions (pure): only their
/// sessions can end unseen.
pub fn tracked(candidates: &[(Arc<Identity>, String)]) -> Vec<String> {
    candidates
        .iter()
        .filter(|(o, _)| {
            o.status
                .as_ref()
                .and_then(|s| s.active_sessions)
                .is_some_and(|n| n > 0)
        })
        .map(|(_, id)| id.clone())
        .collect()
}

/// The active sessions a sweep needs, by identity id: exact for every identity when the whole
/// list was read, else exact for the `tracked` ones and the new sessions of the others.
pub async fn observe(
    ctx: &Context,
    cursor: &mut Cursor,
    candidates: &[(Arc<Identity>, String)],
) -> Result<HashMap<String, ActiveSessions>, Error> {
    let tracked = tracked(candidates);
    let lookback = ctx.settings.session_lookback;
    let page_size = u64::from(ctx.kratos.page_size());
    let mut out: HashMap<String, ActiveSessions> = HashMap::new();
    let mut newest = cursor.newest;
    let (mut token, mut read, mut total) = (None, 0u64, None);
    let whole = loop {
        let page = ctx
            .kratos
            .list_active_sessions_page(&[SessionExpand::Identity], token.take())
            .await?;
        read += 1;
        total = total.or(page.total);
        let last_issued = page.items.last().and_then(|s| s.issued_at);
        for session in &page.items {
            newest = newest.max(session.issued_at);
            if let Some(identity) = session.identity.as_ref() {
                out.entry(identity.id.clone())
                    .or_default()
                    .add(session.authenticated_at);
            }
        }
        match page.next_page_token {
            Some(next) if !page.items.is_empty() => {
                if past_the_new(last_issued, cursor.newest, lookback)
                    && !read_on(total, read, page_size, tracked.len())
                {
                    break false;
                }
                token = Some(next);
            }
            _ => break true,
        }
    };
    if !whole {
        for id in tracked {
            let mut counted = ActiveSessions::default();
            for session in ctx.kratos.list_identity_sessions(&id, Some(true)).await? {
                counted.add(session.authenticated_at);
            }
            out.insert(id, counted);
        }
    }
    cursor.newest = newest;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn paging_stops_two_lookbacks_before_the_newest_session_seen() {
        let newest = Some(at("2026-01-01T12:00:00Z"));
        let lookback = Duration::from_secs(30);
        assert!(!past_the_new(
            Some(at("2026-01-01T11:59:01Z")),
            newest,
            lookback
        ));
        assert!(!past_the_new(
            Some(at("2026-01-01T11:59:00Z")),
            newest,
            lookback
        ));
        assert!(past_the_new(
            Some(at("2026-01-01T11:58:59Z")),
            newest,
            lookback
        ));
        assert!(
            !past_the_new(Some(at("2026-01-01T11:00:00Z")), None, lookback),
            "the first pass reads everything"
        );
        assert!(
            !past_the_new(None, newest, lookback),
            "no issued_at: read on"
        );
    }

    #[test]
    fn the_rest_of_the_list_is_read_when_that_is_cheaper_than_one_request_per_identity() {
        // 20,000 sessions, 500 a page, 1 read: 39 pages left.
        assert!(!read_on(Some(20_000), 1, 500, 39));
        assert!(read_on(Some(20_000), 1, 500, 40));
        assert!(!read_on(Some(20_000), 1, 500, 0));
        assert!(!read_on(None, 1, 500, 1_000_000), "unknown total");
        assert!(read_on(Some(400), 1, 500, 1), "nothing left to read");
    }

    #[test]
    fn only_identities_that_recorded_sessions_are_tracked() {
        let object = |n: Option<i32>| {
            Arc::new(
                serde_json::from_value::<Identity>(json!({
                    "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
                    "metadata": { "name": "a", "namespace": "ns" },
                    "spec": { "schemaId": "customer", "traits": {} },
                    "status": { "activeSessions": n }
                }))
                .unwrap(),
            )
        };
        let candidates = vec![
            (object(Some(2)), "k2".to_string()),
            (object(Some(0)), "k0".to_string()),
            (object(None), "kn".to_string()),
        ];
        assert_eq!(tracked(&candidates), vec!["k2".to_string()]);
    }
}
