//! Per-object exponential backoff for failed reconciles: 1 s, 2 s, 4 s ... capped at 5 minutes,
//! with ±20 % jitter, and at least what the server asked for (429 reset headers).

use std::{collections::HashMap, sync::Mutex, time::Duration};

use kube::{Resource, ResourceExt, runtime::controller::Action};
use tracing::warn;

use super::Context;
use crate::Error;

/// The backoff key of an object: `<Kind>/<namespace>/<name>`.
pub fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// The error policy of every controller: requeue `obj` after its next backoff delay.
pub fn requeue_after_failure<K: Resource<DynamicType = ()>>(
    obj: &K,
    error: &Error,
    ctx: &Context,
) -> Action {
    Action::requeue(delay_after_failure(obj, error, ctx))
}

/// Records a failed reconcile of `obj`, logs it, and returns how long to wait before the next.
pub fn delay_after_failure<K: Resource<DynamicType = ()>>(
    obj: &K,
    error: &Error,
    ctx: &Context,
) -> Duration {
    let delay = ctx.backoff.fail(&key(obj), error.retry_after());
    warn!(
        kind = %K::kind(&()),
        namespace = obj.namespace().unwrap_or_default(),
        name = obj.name_any(),
        error = %error,
        retry_in = ?delay,
        "reconcile failed"
    );
    delay
}

/// Failure counts by object key.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

/// The longest wait between retries.
pub const MAX_DELAY: Duration = Duration::from_secs(300);

/// The delay before retry number `attempt` (1-based), with `jitter` in [0, 1).
pub fn delay(attempt: u32, jitter: f64, at_least: Option<Duration>) -> Duration {
    let exp = 2f64.powi(i32::try_from(attempt.saturating_sub(1).min(16)).unwrap_or(16));
    let base = exp.min(MAX_DELAY.as_secs_f64());
    let jittered = base * (0.8 + 0.4 * jitter.clamp(0.0, 1.0));
    let d = Duration::from_secs_f64(jittered.min(MAX_DELAY.as_secs_f64()));
    at_least.map_or(d, |min| d.max(min.min(MAX_DELAY)))
}

impl Backoff {
    /// Records a failure of `key` and returns how long to wait.
    pub fn fail(&self, key: &str, at_least: Option<Duration>) -> Duration {
        let attempt = self.failures.lock().map_or(1, |mut m| {
            let n = m.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        });
        delay(attempt, crate::kratos::retry::random_unit(), at_least)
    }

    /// Forgets the failures of `key` after a success.
    pub fn reset(&self, key: &str) {
        if let Ok(mut m) = self.failures.lock() {
            m.remove(key);
        }
    }

    /// Failures recorded for `key`.
    pub fn failures(&self, key: &str) -> u32 {
        self.failures
            .lock()
            .map_or(0, |m| m.get(key).copied().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_caps() {
        assert_eq!(delay(1, 0.5, None), Duration::from_secs(1));
        assert_eq!(delay(2, 0.5, None), Duration::from_secs(2));
        assert_eq!(delay(4, 0.5, None), Duration::from_secs(8));
        assert_eq!(delay(30, 0.5, None), MAX_DELAY);
        assert!(delay(3, 0.0, None) >= Duration::from_secs_f64(3.2));
        assert!(delay(3, 0.999, None) <= Duration::from_secs_f64(4.8));
    }

    #[test]
    fn honours_the_servers_wait_but_not_beyond_the_cap() {
        assert_eq!(
            delay(1, 0.5, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(delay(1, 0.5, Some(Duration::from_secs(3600))), MAX_DELAY);
    }

    #[test]
    fn counts_per_key_and_resets() {
        let b = Backoff::default();
        b.fail("a", None);
        b.fail("a", None);
        b.fail("b", None);
        assert_eq!(b.failures("a"), 2);
        b.reset("a");
        assert_eq!(b.failures("a"), 0);
        assert_eq!(b.failures("b"), 1);
    }
}
