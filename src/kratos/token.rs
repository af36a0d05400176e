//! The bearer token (Ory Network), read from a file and re-read when the file changes:
//! Kubernetes rotates a mounted Secret by swapping its files, which changes their modification
//! time. The token is kept in a [`SecretString`] and sent as a sensitive header value.

use std::{path::PathBuf, sync::Mutex, time::SystemTime};

use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use super::error::Error;

/// A bearer token file, re-read when its modification time or size changes (Kubernetes swaps
/// the mounted Secret's files on rotation).
pub(crate) struct TokenFile {
    pub(crate) path: PathBuf,
    cache: Mutex<Option<CachedToken>>,
}

struct CachedToken {
    stamp: (Option<SystemTime>, u64),
    token: SecretString,
}

impl TokenFile {
    /// A token file, read on first use.
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            cache: Mutex::new(None),
        }
    }

    pub(crate) fn load_sync(&self) -> Result<(), Error> {
        let metadata =
            std::fs::metadata(&self.path).map_err(|source| self.io("reading", source))?;
        let content =
            std::fs::read_to_string(&self.path).map_err(|source| self.io("reading", source))?;
        self.store((metadata.modified().ok(), metadata.len()), content)
            .map(drop)
    }

    pub(crate) async fn header(&self) -> Result<HeaderValue, Error> {
        let metadata = tokio::fs::metadata(&self.path)
            .await
            .map_err(|source| self.io("reading", source))?;
        let stamp = (metadata.modified().ok(), metadata.len());
        let cached = self
            .lock()
            .as_ref()
            .filter(|c| c.stamp == stamp)
            .map(|c| c.token.clone());
        let token = match cached {
            Some(token) => token,
            None => {
                let content = tokio::fs::read_to_string(&self.path)
                    .await
                    .map_err(|source| self.io("reading", source))?;
                self.store(stamp, content)?
            }
        };
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
            .map_err(|_| {
                Error::Config(format!(
                    "the token in {} is not a valid header value",
                    self.path.display()
                ))
            })?;
        value.set_sensitive(true);
        Ok(value)
    }

    fn store(
        &self,
        stamp: (Option<SystemTime>, u64),
        content: String,
    ) -> Result<SecretString, Error> {
        let content = SecretString::from(content);
        let token = SecretString::from(content.expose_secret().trim());
        if token.expose_secret().is_empty() {
            return Err(Error::Config(format!(
                "the token file {} is empty",
                self.path.display()
            )));
        }
        *self.lock() = Some(CachedToken {
            stamp,
            token: token.clone(),
        });
        Ok(token)
    }

    pub(crate) fn invalidate(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<CachedToken>> {
        match self.cache.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn io(&self, what: &str, source: std::io::Error) -> Error {
        Error::Io {
            context: format!("{what} the Kratos token file {}", self.path.display()),
            source,
        }
    }
}
