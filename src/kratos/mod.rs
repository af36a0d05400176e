//! The Kratos admin API client: every operation of the IdentityAPI, typed, with retries,
//! rate limiting, pagination, version gating and metrics.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kratos_operator::kratos::Error> {
//! use kratos_operator::kratos::{ClientConfig, CreateIdentityBody, KratosClient};
//! let url = url::Url::parse("http://127.0.0.1:4434").map_err(|e| kratos_operator::kratos::Error::Config(e.to_string()))?;
//! let client = KratosClient::new(ClientConfig::new(url))?;
//! let created = client
//!     .create_identity(&CreateIdentityBody::new("customer", serde_json::json!({"email": "a@example.com"})))
//!     .await?;
//! client.delete_identity(&created.id).await?;
//! # Ok(())
//! # }
//! ```

mod body;
pub mod client;
mod config;
mod destination;
pub mod error;
mod identities;
pub mod metrics;
pub mod models;
pub mod pagination;
mod recovery;
mod redirect;
mod resolve;
pub mod retry;
mod schemas;
mod sessions;
mod token;
mod transport;

pub use body::DEFAULT_MAX_RESPONSE_BYTES;
pub use client::{ClientConfig, KratosClient};
pub use error::{Error, parse_instance_pointer, retry_after_from_headers};
pub use metrics::{CallLabels, KratosMetrics, OPERATIONS, OUTCOMES, OperationLabels};
pub use models::*;
pub use pagination::{DEFAULT_IDENTITY_PAGE_SIZE, Page, link_target, next_page_token};
pub use redirect::MAX_REDIRECTS;
pub use retry::{Idempotency, RateLimiter, RetryPolicy};
