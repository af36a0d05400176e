//! Name resolution of the Kratos URLs with a bound of its own.
//!
//! The connect timeout covers resolving the host and connecting to it. When the cluster's DNS
//! does not answer (CoreDNS scaled to zero, a NetworkPolicy that drops port 53), the system
//! resolver waits out its retries and the connect timeout fires first, with a message that says
//! only "operation timed out". Resolving within a shorter bound makes the error say what failed:
//! the name, and that no answer came.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Resolves through the system resolver (`getaddrinfo`, as reqwest does by default), giving up
/// after `timeout`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BoundedResolver {
    timeout: Duration,
}

/// Why a name did not resolve.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResolveError {
    /// The resolver gave no answer in time.
    #[error(
        "no answer resolving {name} within {seconds:.1} s (is the cluster's DNS running and reachable?)"
    )]
    NoAnswer {
        /// The name.
        name: String,
        /// The bound.
        seconds: f64,
    },
    /// The resolver answered with an error (no such name, no server reachable).
    #[error("resolving {name} failed: {source}")]
    Failed {
        /// The name.
        name: String,
        /// What the resolver said.
        source: std::io::Error,
    },
}

impl BoundedResolver {
    /// A resolver that leaves a fifth of `connect_timeout`, at least 500 ms, to connect.
    pub(crate) fn for_connect_timeout(connect_timeout: Duration) -> Arc<Self> {
        let timeout = connect_timeout
            .saturating_sub((connect_timeout / 5).max(Duration::from_millis(500)))
            .max(Duration::from_millis(100));
        Arc::new(Self { timeout })
    }
}

impl Resolve for BoundedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let timeout = self.timeout;
        Box::pin(async move {
            let host = name.as_str().to_string();
            // The port is replaced by the URL's when connecting.
            let lookup = tokio::net::lookup_host((host.clone(), 0));
            let error: Box<dyn std::error::Error + Send + Sync> =
                match tokio::time::timeout(timeout, lookup).await {
                    Ok(Ok(addrs)) => {
                        let addrs: Vec<SocketAddr> = addrs.collect();
                        return Ok(Box::new(addrs.into_iter()) as Addrs);
                    }
                    Ok(Err(source)) => Box::new(ResolveError::Failed { name: host, source }),
                    Err(_) => Box::new(ResolveError::NoAnswer {
                        name: host,
                        seconds: timeout.as_secs_f64(),
                    }),
                };
            Err(error)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[test]
    fn the_bound_leaves_time_to_connect() {
        let r = BoundedResolver::for_connect_timeout(Duration::from_secs(5));
        assert_eq!(r.timeout, Duration::from_secs(4));
        let r = BoundedResolver::for_connect_timeout(Duration::from_secs(1));
        assert_eq!(r.timeout, Duration::from_millis(500));
        let r = BoundedResolver::for_connect_timeout(Duration::from_millis(100));
        assert_eq!(r.timeout, Duration::from_millis(100));
    }

    /// `localhost` comes from /etc/hosts: no query leaves the machine (a name that does not
    /// resolve would ask the machine's resolver; tests/cluster.rs takes the cluster's DNS away
    /// instead).
    #[tokio::test]
    async fn loopback_resolves() {
        let r = BoundedResolver::for_connect_timeout(Duration::from_secs(5));
        let addrs: Vec<SocketAddr> = r
            .resolve(Name::from_str("localhost").unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().any(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    #[test]
    fn no_answer_names_the_host_and_the_bound() {
        let e = ResolveError::NoAnswer {
            name: "kratos-admin.kratos.svc.cluster.local".into(),
            seconds: 4.0,
        };
        assert_eq!(
            e.to_string(),
            "no answer resolving kratos-admin.kratos.svc.cluster.local within 4.0 s (is the \
             cluster's DNS running and reachable?)"
        );
    }
}
