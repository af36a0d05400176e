//! Resilience: capped exponential backoff with jitter, which calls may be retried, and a
//! client-side token-bucket rate limit shared by every clone of the client.

use std::{
    hash::{BuildHasher, Hasher, RandomState},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

/// When and how often idempotent calls are retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 disables retrying).
    pub max_retries: u32,
    /// The backoff before the first retry; it doubles for each further one.
    pub initial_backoff: Duration,
    /// The cap of the exponential backoff.
    pub max_backoff: Duration,
    /// The longest server-requested wait (`x-ratelimit-reset`, `Retry-After`) the client sleeps
    /// through itself; a longer one is returned to the caller as [`super::Error::RateLimited`].
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// The wait before retry number `retry` (1-based): `initial * 2^(retry-1)` capped at
    /// `max_backoff`, then "equal jitter" picks a point in `[half, full]` of it.
    pub fn backoff(&self, retry: u32) -> Duration {
        backoff_with(self, retry, random_unit())
    }

    /// The wait before the next attempt when the server asked for `retry_after`: that long plus
    /// up to 10% jitter (so clones do not stampede at the reset), or `None` when it exceeds
    /// [`RetryPolicy::max_retry_after`].
    pub fn server_wait(&self, retry_after: Duration) -> Option<Duration> {
        if retry_after > self.max_retry_after {
            return None;
        }
        Some(retry_after + retry_after.mul_f64(0.1 * random_unit()))
    }
}

/// [`RetryPolicy::backoff`] with the random draw `unit` in `[0, 1)` given, for tests.
pub(crate) fn backoff_with(policy: &RetryPolicy, retry: u32, unit: f64) -> Duration {
    let exponent = retry.saturating_sub(1).min(30);
    let full = policy
        .initial_backoff
        .checked_mul(1u32 << exponent)
        .unwrap_or(policy.max_backoff)
        .min(policy.max_backoff);
    let half = full / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// Whether a call may be sent again after an attempt that may have reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Sending it twice has the effect of sending it once (GET, PUT, DELETE, JSON Patch with
    /// add/replace of fixed paths): retried on transient errors.
    Idempotent,
    /// Sending it twice may create twice (POST create, batch PATCH, recovery links): retried
    /// only when the request surely did not reach Kratos (connect failure, 429).
    NotIdempotent,
}

/// A uniform draw in `[0, 1)`, from the std hasher's random keys (no extra dependency; good
/// enough for jitter, not for anything secret).
pub(crate) fn random_unit() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// A token bucket shared by all clones of a client, plus a shared cool-down that a 429 with a
/// reset time sets, so that every caller waits for the reset and not only the one that hit it.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Option<f64>,
    burst: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    last: Instant,
    cooldown_until: Option<Instant>,
}

impl RateLimiter {
    /// `rate` requests per second with bursts of `burst`; `None` means no limit (only the
    /// cool-down after 429s applies).
    pub fn new(rate: Option<f64>, burst: u32) -> Self {
        let rate = rate.filter(|r| r.is_finite() && *r > 0.0);
        let burst = f64::from(burst.max(1));
        Self {
            rate,
            burst,
            state: Mutex::new(BucketState {
                tokens: burst,
                last: Instant::now(),
                cooldown_until: None,
            }),
        }
    }

    /// Waits until a request may be sent. Each call takes one token; callers that find the
    /// bucket empty reserve a future token and sleep until it is due, so waiting is fair.
    pub async fn acquire(&self) {
        let wait = self.reserve(Instant::now());
        if let Some(until) = wait {
            tokio::time::sleep_until(until).await;
        }
    }

    /// Takes a token at `now`; returns when the caller may go, if not right away.
    fn reserve(&self, now: Instant) -> Option<Instant> {
        let mut state = match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let cooldown = state.cooldown_until.filter(|until| *until > now);
        let start = cooldown.unwrap_or(now);
        let Some(rate) = self.rate else {
            return cooldown;
        };
        let elapsed = start.saturating_duration_since(state.last).as_secs_f64();
        state.tokens = (state.tokens + elapsed * rate).min(self.burst);
        state.last = start.max(state.last);
        state.tokens -= 1.0;
        if state.tokens >= 0.0 {
            return cooldown;
        }
        Some(start + Duration::from_secs_f64(-state.tokens / rate))
    }

    /// Makes every caller wait until `now + wait` (after a 429 with a reset time).
    pub fn cool_down(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut state = match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if state.cooldown_until.is_none_or(|current| current < until) {
            state.cooldown_until = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_jitter_bounds_and_is_capped() {
        let policy = RetryPolicy {
            max_retries: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(30),
        };
        assert_eq!(backoff_with(&policy, 1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff_with(&policy, 1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff_with(&policy, 3, 1.0), Duration::from_millis(400));
        assert_eq!(backoff_with(&policy, 3, 0.0), Duration::from_millis(200));
        assert_eq!(backoff_with(&policy, 10, 1.0), Duration::from_secs(2));
        assert_eq!(backoff_with(&policy, 10, 0.0), Duration::from_secs(1));
        assert_eq!(backoff_with(&policy, u32::MAX, 1.0), Duration::from_secs(2));
        for retry in 1..20 {
            let d = policy.backoff(retry);
            let full = (Duration::from_millis(100) * 2u32.pow((retry - 1).min(20)))
                .min(Duration::from_secs(2));
            assert!(
                d >= full / 2 && d <= full,
                "retry {retry}: {d:?} not in [{:?}, {full:?}]",
                full / 2
            );
        }
    }

    #[test]
    fn jitter_is_spread() {
        let draws: Vec<f64> = (0..200).map(|_| random_unit()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        assert!(draws.iter().any(|d| *d < 0.25) && draws.iter().any(|d| *d > 0.75));
    }

    #[test]
    fn server_waits_are_honoured_up_to_the_cap() {
        let policy = RetryPolicy::default();
        let wait = policy.server_wait(Duration::from_secs(2)).unwrap();
        assert!(wait >= Duration::from_secs(2) && wait <= Duration::from_millis(2200));
        assert_eq!(policy.server_wait(Duration::from_secs(31)), None);
    }

    #[tokio::test]
    async fn token_bucket_limits_the_rate() {
        let limiter = RateLimiter::new(Some(50.0), 2);
        let start = Instant::now();
        for _ in 0..12 {
            limiter.acquire().await;
        }
        // Two from the burst, then ten at 50/s.
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(195) && elapsed < Duration::from_millis(400),
            "{elapsed:?}"
        );
    }

    #[tokio::test]
    async fn cool_down_delays_every_caller() {
        let limiter = RateLimiter::new(None, 1);
        let start = Instant::now();
        limiter.acquire().await;
        assert!(start.elapsed() < Duration::from_millis(50));
        limiter.cool_down(Duration::from_millis(300));
        limiter.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(300));
    }
}
