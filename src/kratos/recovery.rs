//! The recovery operations of [`KratosClient`]: links and codes (`/admin/recovery`).

use reqwest::Method;

use super::{
    client::KratosClient,
    error::Error,
    models::{CreateRecoveryCodeBody, CreateRecoveryLinkBody, RecoveryCode, RecoveryLink},
    transport::{Request, with_query},
};

impl KratosClient {
    /// `POST /admin/recovery/link[?return_to=]`: a new recovery link (earlier ones stay valid
    /// until they expire). An unknown identity gives [`Error::Invalid`] in v1.3; a disabled link
    /// method gives [`Error::NotFound`].
    pub async fn create_recovery_link(
        &self,
        body: &CreateRecoveryLinkBody,
        return_to: Option<&str>,
    ) -> Result<RecoveryLink, Error> {
        let query: Vec<_> = return_to
            .map(|r| ("return_to", r.to_string()))
            .into_iter()
            .collect();
        let url = with_query(
            self.transport().admin(&["admin", "recovery", "link"])?,
            &query,
        );
        let request = Request::new("create_recovery_link", Method::POST, url)
            .json(body)?
            .not_idempotent()
            .sensitive(true);
        self.transport().call_json(request).await
    }

    /// `POST /admin/recovery/code`: a new recovery code and its flow's link. An unknown identity
    /// gives [`Error::NotFound`].
    pub async fn create_recovery_code(
        &self,
        body: &CreateRecoveryCodeBody,
    ) -> Result<RecoveryCode, Error> {
        let url = self.transport().admin(&["admin", "recovery", "code"])?;
        let request = Request::new("create_recovery_code", Method::POST, url)
            .json(body)?
            .not_idempotent()
            .sensitive(true);
        self.transport().call_json(request).await
    }
}
