//! Reads for one Identity reconcile: the schema it references, its password Secret, and the
//! Kratos identity that belongs to it.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use secrecy::SecretString;

use super::{Blocked, plan::PasswordInput};
use crate::controller::schema_ref::Fetched;
use crate::{
    Error, Result,
    api::{IdentitySchemaRef, conditions, identity::Identity},
    controller::Context,
    kratos::Identity as KratosIdentity,
    schema::CompiledSchema,
};

/// The schema an Identity uses.
pub struct SchemaResolution {
    /// Kratos schema id.
    pub schema_id: String,
    /// Its compiled form, when it could be fetched (Kratos validates either way).
    pub compiled: Option<Arc<CompiledSchema>>,
}

/// Resolves spec.schemaRef (which must be Ready) or spec.schemaId.
pub async fn schema(obj: &Identity, ctx: &Context) -> Result<Result<SchemaResolution, Blocked>> {
    let ns = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let schema_id = match (&obj.spec.schema_ref, &obj.spec.schema_id) {
        (Some(r), _) => {
            let cached = ctx.caches.schema_ref(&ns, &r.name);
            let sr = match cached {
                Some(sr) => Some(sr),
                None => {
                    let refs: Api<IdentitySchemaRef> = Api::namespaced(ctx.client.clone(), &ns);
                    refs.get_opt(&r.name).await?.map(Arc::new)
                }
            };
            let Some(sr) = sr else {
                return Ok(Err(Blocked::new(
                    "SchemaNotReady",
                    format!(
                        "IdentitySchemaRef {} does not exist in namespace {ns}",
                        r.name
                    ),
                )));
            };
            let conds = sr
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default();
            if !conditions::is_ready(conds) {
                let why = conditions::ready(conds)
                    .map(|c| c.message.clone())
                    .unwrap_or_else(|| "not resolved yet".into());
                return Ok(Err(Blocked::new(
                    "SchemaNotReady",
                    format!("IdentitySchemaRef {} is not Ready: {why}", r.name),
                )));
            }
            sr.spec.schema_id.clone()
        }
        (None, Some(id)) => id.clone(),
        (None, None) => {
            // CEL rejects this at admission; kept for objects created before the rule existed.
            return Ok(Err(Blocked::stalled(
                "InvalidSpec",
                "exactly one of spec.schemaRef and spec.schemaId must be set",
            )));
        }
    };
    // An IdentitySchemaRef's controller refreshes its schema every schema recheck interval;
    // nothing refreshes the schema of a `schemaId`, so it is fetched again at that pace here.
    let cached = if obj.spec.schema_ref.is_some() {
        ctx.schemas.get(&schema_id)
    } else {
        ctx.schemas
            .get_fresh(&schema_id, ctx.settings.schema_recheck_interval)
    };
    let compiled = match cached {
        Some(c) => Some(c),
        None => fetch_schema(ctx, &schema_id).await?,
    };
    Ok(Ok(SchemaResolution {
        schema_id,
        compiled,
    }))
}

/// Fetches and compiles a schema into the cache. `None` when Kratos does not serve it or it does
/// not compile (Kratos then validates on its own).
pub async fn fetch_schema(ctx: &Context, id: &str) -> Result<Option<Arc<CompiledSchema>>> {
    match crate::controller::schema_ref::fetch(&ctx.kratos, id).await? {
        Fetched::Compiled(c) => {
            ctx.schemas.put(c);
            Ok(ctx.schemas.get(id))
        }
        Fetched::Invalid(e) => {
            tracing::warn!(schema = id, error = %e, "schema does not compile; relying on Kratos' validation");
            Ok(None)
        }
        Fetched::NotFound => Ok(None),
    }
}

/// The password input, or why it cannot be read. `Ok(None)` when no password is configured.
pub async fn password(
    obj: &Identity,
    ctx: &Context,
) -> Result<Result<Option<PasswordInput>, Blocked>> {
    let Some(pc) = obj
        .spec
        .credentials
        .as_ref()
        .and_then(|c| c.password.as_ref())
    else {
        return Ok(Ok(None));
    };
    let (sref, hashed) = match (&pc.secret_ref, &pc.hashed_secret_ref) {
        (Some(r), None) => (r, false),
        (None, Some(r)) => (r, true),
        _ => {
            return Ok(Err(Blocked::stalled(
                "InvalidSpec",
                "exactly one of credentials.password.secretRef and hashedSecretRef must be set",
            )));
        }
    };
    let ns = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(secret) = secrets.get_opt(&sref.name).await? else {
        return Ok(Err(Blocked::new(
            "SecretNotFound",
            format!("Secret {} does not exist in namespace {ns}", sref.name),
        )));
    };
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&sref.key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&sref.key))
                .map(|s| s.clone().into_bytes())
        });
    let Some(bytes) = bytes else {
        return Ok(Err(Blocked::new(
            "SecretNotFound",
            format!("Secret {} has no key {:?}", sref.name, sref.key),
        )));
    };
    let Ok(text) = String::from_utf8(bytes) else {
        return Ok(Err(Blocked::new(
            "InvalidSecret",
            format!(
                "the value of key {:?} in Secret {} is not UTF-8 text",
                sref.key, sref.name
            ),
        )));
    };
    // A trailing newline is what `kubectl create secret --from-file` of an edited file leaves.
    let value = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text)
        .to_string();
    if value.is_empty() {
        return Ok(Err(Blocked::new(
            "InvalidSecret",
            format!("key {:?} of Secret {} is empty", sref.key, sref.name),
        )));
    }
    let version = format!(
        "{}/{}",
        secret.metadata.uid.as_deref().unwrap_or(""),
        secret.metadata.resource_version.as_deref().unwrap_or("")
    );
    Ok(Ok(Some(PasswordInput {
        value: SecretString::from(value),
        hashed,
        version,
        policy: pc.policy.unwrap_or_default(),
    })))
}

/// The Kratos identities that carry one of `identifiers` as a credential identifier.
pub async fn candidates(ctx: &Context, identifiers: &[String]) -> Result<Vec<KratosIdentity>> {
    let mut out: Vec<KratosIdentity> = Vec::new();
    for identifier in identifiers {
        for found in ctx
            .kratos
            .find_by_credentials_identifier(identifier)
            .await?
        {
            if !out.iter().any(|i| i.id == found.id) {
                out.push(found);
            }
        }
    }
    Ok(out)
}
