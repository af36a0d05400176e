//! Stopping well: the signals a pod stop sends, and a bound on the work that follows them.
//!
//! Kubernetes stops a container with SIGTERM and, after `terminationGracePeriodSeconds`, SIGKILL.
//! In the image the operator is PID 1, so a signal without a handler is ignored rather than
//! fatal: the handler is what makes a pod stop take seconds instead of the whole grace period.

use std::{future::Future, time::Duration};

use tracing::{info, warn};

/// Resolves on the first SIGTERM (a pod stop) or SIGINT (Ctrl-C). If a handler cannot be
/// installed, that signal keeps its default action and only the other one is waited for.
pub async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = async {
            match signal(SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    warn!(error = %e, "cannot handle SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = term => info!("SIGTERM received; shutting down"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received; shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        info!("interrupted; shutting down");
    }
}

/// Runs `work` to its end, but once `stop` has resolved gives it at most `grace` more. Returns
/// whether `work` ended by itself.
pub async fn bounded(
    work: impl Future<Output = ()>,
    stop: impl Future<Output = ()>,
    grace: Duration,
) -> bool {
    tokio::pin!(work);
    tokio::select! {
        () = &mut work => true,
        () = stop => tokio::time::timeout(grace, work).await.is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn work_that_ends_before_the_stop_is_not_cut() {
        let done = bounded(
            tokio::time::sleep(Duration::from_secs(100)),
            std::future::pending(),
            Duration::from_secs(1),
        );
        assert!(done.await);
    }

    #[tokio::test(start_paused = true)]
    async fn work_gets_the_grace_after_the_stop_and_no_more() {
        let started = tokio::time::Instant::now();
        let finishes = bounded(
            tokio::time::sleep(Duration::from_secs(15)),
            tokio::time::sleep(Duration::from_secs(10)),
            Duration::from_secs(10),
        );
        assert!(finishes.await, "15 s of work ends inside 10 s + 10 s");
        let cut = bounded(
            std::future::pending(),
            tokio::time::sleep(Duration::from_secs(10)),
            Duration::from_secs(5),
        );
        assert!(!cut.await);
        assert_eq!(started.elapsed(), Duration::from_secs(15 + 15));
    }
}
