//! The session operations of [`KratosClient`]: an identity's sessions, and sessions by id
//! (`/admin/sessions`).

use std::collections::HashSet;

use futures::Stream;
use reqwest::{Method, StatusCode};

use super::{
    client::KratosClient,
    error::Error,
    models::{Session, SessionExpand},
    pagination::{Page, paged},
    transport::{Request, decode, with_query},
};

/// The page size of identity session lists: the most Kratos returns at once.
const IDENTITY_SESSIONS_PAGE_SIZE: u32 = 1000;

impl KratosClient {
    /// `DELETE /admin/identities/{id}/sessions`: deletes all of them; none (404) counts as done.
    pub async fn delete_identity_sessions(&self, id: &str) -> Result<(), Error> {
        let url = self
            .transport()
            .admin(&["admin", "identities", id, "sessions"])?;
        self.transport()
            .call_empty(
                Request::new("delete_identity_sessions", Method::DELETE, url),
                &[StatusCode::NOT_FOUND],
            )
            .await
            .map(drop)
    }

    /// `GET /admin/sessions/{id}`; nothing is expanded unless asked.
    pub async fn get_session(&self, id: &str, expand: &[SessionExpand]) -> Result<Session, Error> {
        let query: Vec<_> = expand
            .iter()
            .map(|e| ("expand", e.as_str().to_string()))
            .collect();
        let url = with_query(self.transport().admin(&["admin", "sessions", id])?, &query);
        self.transport()
            .call_json(Request::get("get_session", url))
            .await
    }

    /// `GET /admin/sessions` as a stream (newest first), all or only (in)active ones.
    pub fn list_sessions(
        &self,
        active: Option<bool>,
        expand: &[SessionExpand],
    ) -> impl Stream<Item = Result<Session, Error>> + Send + 'static {
        let client = self.clone();
        let expand = expand.to_vec();
        paged(None, move |token| {
            let client = client.clone();
            let expand = expand.clone();
            async move {
                let mut query = vec![("page_size", client.page_size().to_string())];
                query.extend(active.map(|a| ("active", a.to_string())));
                query.extend(expand.iter().map(|e| ("expand", e.as_str().to_string())));
                query.extend(token.map(|t| ("page_token", t)));
                let url = with_query(client.transport().admin(&["admin", "sessions"])?, &query);
                client
                    .transport()
                    .fetch_page(Request::get("list_sessions", url))
                    .await
            }
        })
    }

    /// One page of `GET /admin/sessions` (newest first: by the time Kratos stored them), only
    /// active ones, with `expand` (the client's page size; `token` from the previous page).
    pub async fn list_active_sessions_page(
        &self,
        expand: &[SessionExpand],
        token: Option<String>,
    ) -> Result<Page<Session>, Error> {
        let mut query = vec![
            ("page_size", self.page_size().to_string()),
            ("active", "true".to_string()),
        ];
        query.extend(expand.iter().map(|e| ("expand", e.as_str().to_string())));
        query.extend(token.map(|t| ("page_token", t)));
        let url = with_query(self.transport().admin(&["admin", "sessions"])?, &query);
        self.transport()
            .fetch_page(Request::get("list_sessions", url))
            .await
    }

    /// `GET /admin/identities/{id}/sessions`, all pages (identity and devices expanded).
    ///
    /// Kratos v1.3.1 pages this list wrongly: its offset pagination treats the 0-based page of
    /// its own `next` links as 1-based (page 1 repeats page 0, the last page is never linked) and
    /// answers offsets past the end with the first page again. The client therefore asks for
    /// the largest page Kratos allows (1000), drops repeated sessions and stops at the first page
    /// that brings nothing new.
    pub async fn list_identity_sessions(
        &self,
        identity_id: &str,
        active: Option<bool>,
    ) -> Result<Vec<Session>, Error> {
        let base = self
            .transport()
            .admin(&["admin", "identities", identity_id, "sessions"])?;
        let mut sessions = Vec::new();
        let mut seen = HashSet::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("page_size", IDENTITY_SESSIONS_PAGE_SIZE.to_string())];
            query.extend(active.map(|a| ("active", a.to_string())));
            query.extend(token.take().map(|t| ("page_token", t)));
            let request = Request::get("list_identity_sessions", with_query(base.clone(), &query));
            let page = self.transport().fetch_page::<Session>(request).await?;
            let before = sessions.len();
            sessions.extend(page.items.into_iter().filter(|s| seen.insert(s.id.clone())));
            match page.next_page_token {
                Some(next) if sessions.len() > before => token = Some(next),
                _ => return Ok(sessions),
            }
        }
    }

    /// `DELETE /admin/sessions/{id}`: revokes it. [`Error::NotFound`] when it does not exist.
    pub async fn disable_session(&self, id: &str) -> Result<(), Error> {
        let url = self.transport().admin(&["admin", "sessions", id])?;
        self.transport()
            .call_empty(Request::new("disable_session", Method::DELETE, url), &[])
            .await
            .map(drop)
    }

    /// `PATCH /admin/sessions/{id}/extend`: the extended session (200), or `None` when the
    /// server answers 204 (`faster_session_extend`). [`Error::NotFound`] when it does not exist
    /// or was extended too recently.
    pub async fn extend_session(&self, id: &str) -> Result<Option<Session>, Error> {
        let url = self
            .transport()
            .admin(&["admin", "sessions", id, "extend"])?;
        let request = Request::new("extend_session", Method::PATCH, url);
        self.transport()
            .call_with(&request, |response| {
                if response.status == StatusCode::NO_CONTENT || response.body.is_empty() {
                    return Ok(None);
                }
                decode(&response, false).map(Some)
            })
            .await
    }
}
