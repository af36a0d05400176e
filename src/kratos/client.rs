//! The Kratos admin API client: [`KratosClient`], built from a [`ClientConfig`], speaking
//! through the transport and caching the detected server version. Its operations live in one
//! file per Kratos resource: identities, sessions, schemas and recovery.

use std::{fmt, sync::Arc};

use tokio::sync::OnceCell;

// Also reachable as `kratos::client::ClientConfig`, where it was defined before.
pub use super::config::ClientConfig;
use super::{
    error::Error,
    metrics::KratosMetrics,
    models::{ServerVersion, VersionResponse},
    transport::{Request, Transport, with_query},
};

/// A typed client of the Kratos admin API. Cheap to clone; clones share the connection pool,
/// rate limit, in-flight cap, metrics and detected server version.
#[derive(Clone)]
pub struct KratosClient {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Transport,
    version: OnceCell<ServerVersion>,
    page_size: u32,
}

impl fmt::Debug for KratosClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("KratosClient");
        self.inner.transport.describe(&mut out);
        out.finish_non_exhaustive()
    }
}

impl KratosClient {
    /// Builds the client: checks the URLs, loads the CA bundle and reads the token file once.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        Ok(Self {
            inner: Arc::new(Inner {
                transport: Transport::new(&config)?,
                version: OnceCell::new(),
                page_size: config.page_size.max(1),
            }),
        })
    }

    /// The client's metrics (shared by clones), to read or to register.
    pub fn metrics(&self) -> &KratosMetrics {
        self.inner.transport.metrics()
    }

    /// The connection the operations send their requests through.
    pub(crate) fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// The page size of lists.
    pub(crate) fn page_size(&self) -> u32 {
        self.inner.page_size
    }

    // -----------------------------------------------------------------------------------------
    // Version

    /// The server version: `GET /admin/version` (self-hosted), or when that is missing, a
    /// feature probe (v25+ refuses a malformed `organization_id` filter, v1.x ignores it).
    /// Detected once and cached; errors are not cached.
    pub async fn server_version(&self) -> Result<ServerVersion, Error> {
        self.inner
            .version
            .get_or_try_init(|| self.detect_version())
            .await
            .cloned()
    }

    /// Whether Kratos answers at all, for `/readyz`: yes once its version is known; otherwise one
    /// request to its version endpoint, not retried, so that a probe gets the reason (a name
    /// that does not resolve, a refused connection) within its own timeout. Any HTTP answer
    /// counts: [`KratosClient::server_version`] judges what it says.
    pub async fn answers(&self) -> Result<(), Error> {
        if self.inner.version.get().is_some() {
            return Ok(());
        }
        let transport = self.transport();
        let request =
            Request::get("server_version", transport.admin(&["admin", "version"])?).once();
        match transport.call_json::<VersionResponse>(request).await {
            Ok(reported) => {
                // What `server_version` would ask first: kept, so that it does not ask again.
                if let Some(version) = ServerVersion::parse(&reported.version) {
                    let _ = self.inner.version.set(version);
                }
                Ok(())
            }
            Err(Error::NotFound { .. } | Error::Unexpected { .. } | Error::Unauthorized { .. }) => {
                Ok(())
            }
            Err(other) => Err(other),
        }
    }

    async fn detect_version(&self) -> Result<ServerVersion, Error> {
        let transport = self.transport();
        let request = Request::get("server_version", transport.admin(&["admin", "version"])?);
        match transport.call_json::<VersionResponse>(request).await {
            Ok(reported) => {
                if let Some(version) = ServerVersion::parse(&reported.version) {
                    return Ok(version);
                }
            }
            Err(Error::NotFound { .. } | Error::Unexpected { .. } | Error::Unauthorized { .. }) => {
            }
            Err(other) => return Err(other),
        }
        let url = with_query(
            transport.admin(&["admin", "identities"])?,
            &[
                ("page_size", "1".into()),
                ("organization_id", "not-a-uuid".into()),
            ],
        );
        match transport
            .call_empty(Request::get("server_version_probe", url), &[])
            .await
        {
            Ok(_) => Ok(ServerVersion {
                raw: "probe:v1.x".into(),
                major: 1,
                minor: 3,
                patch: 0,
            }),
            Err(Error::Invalid { .. }) => Ok(ServerVersion {
                raw: "probe:v25+".into(),
                major: 25,
                minor: 4,
                patch: 0,
            }),
            Err(other) => Err(other),
        }
    }
}
