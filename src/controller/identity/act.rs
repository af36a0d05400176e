//! Writes for one Identity reconcile: carries out one [`Write`] of the plan and records Kratos'
//! answer in [`Observed`], or the finalizer's [`Cleanup`]. Nothing here decides: a refusal
//! (409, 400) is recorded for the plan to read; any other failure is an error, retried with
//! backoff.

use tracing::info;

use super::Context;
use super::plan::{Answer, Cleanup, Observed, Refusal, Write};
use crate::{
    Result,
    kratos::{self, JsonPatchOp},
};

/// Carries out `write` and records the answer in `o`.
pub async fn write(ctx: &Context, write: Write, o: &mut Observed<'_>) -> Result<()> {
    match write {
        Write::Create { body } => {
            let created = match &ctx.state.creates {
                Some(batcher) => batcher.create(*body).await,
                None => ctx.kratos.create_identity(&body).await.map(|i| i.id),
            };
            let answered = answer(created);
            if answered.is_err() {
                // Not a refusal: it may have reached Kratos all the same, and commit later.
                ctx.state.pending.failed(o.owner.uid);
                ctx.state.late.suspect(o.owner.uid, o.namespace);
            }
            o.created = Some(answered?);
        }
        Write::Unlink { id, links } => {
            o.unlinked = Some(unlink(ctx, &id, &links).await?);
        }
        Write::Update { id, body } => {
            o.updated = Some(answer(ctx.kratos.update_identity(&id, &body).await)?);
        }
        Write::Verify { id, ops } => {
            o.verified = Some(ctx.kratos.patch_identity(&id, &ops).await?);
        }
        Write::Revoke { id, all, disable } => {
            if all {
                ctx.kratos.delete_identity_sessions(&id).await?;
            }
            for session in &disable {
                match ctx.kratos.disable_session(session).await {
                    Ok(()) | Err(kratos::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            o.revoked = true;
        }
    }
    Ok(())
}

/// A Kratos result as an answer: 409 and 400 are refusals, any other failure an error.
fn answer<T>(result: Result<T, kratos::Error>) -> Result<Answer<T>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(kratos::Error::Conflict { reason }) => Ok(Err(Refusal::Conflict(reason))),
        Err(kratos::Error::Invalid { reason, pointer }) => {
            Ok(Err(Refusal::Invalid { reason, pointer }))
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes OIDC links one by one; a link already gone counts as removed. Stops at the first
/// one Kratos refuses (400).
async fn unlink(ctx: &Context, id: &str, links: &[String]) -> Result<Answer<()>> {
    for link in links {
        match ctx
            .kratos
            .delete_identity_credentials(id, kratos::CredentialType::Oidc, Some(link))
            .await
        {
            Ok(()) | Err(kratos::Error::NotFound { .. }) => {
                info!(identity = %id, "unlinked an OIDC provider removed from the spec");
            }
            Err(kratos::Error::Invalid { reason, pointer }) => {
                return Ok(Err(Refusal::Invalid { reason, pointer }));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Ok(()))
}

/// Carries out the finalizer's decision (its Events are the report's).
pub async fn cleanup(ctx: &Context, cleanup: &Cleanup) -> Result<()> {
    match cleanup {
        Cleanup::Delete { id, .. } => ctx.kratos.delete_identity(id).await?,
        Cleanup::Release {
            id, metadata_admin, ..
        } => {
            let op = JsonPatchOp::replace("/metadata_admin", metadata_admin.clone());
            match ctx.kratos.patch_identity(id, &[op]).await {
                Ok(_) | Err(kratos::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Cleanup::Nothing { .. } | Cleanup::Wait(_) | Cleanup::Observe(_) => {}
    }
    Ok(())
}
