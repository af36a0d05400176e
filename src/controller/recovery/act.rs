//! Writes for one RecoveryRequest reconcile: ask Kratos for the link or code, write it into the
//! Secret (the only place it ever goes), clear the Secret when it expires, and remove the Secret
//! of an earlier `spec.secretName`.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
};
use secrecy::{ExposeSecret, SecretString};
use tracing::info;

use super::{
    Blocked,
    plan::{
        self, ANNOTATION_EXPIRES_AT, ANNOTATION_GENERATION, ANNOTATION_IDENTITY_ID,
        ANNOTATION_ISSUED_AT, ANNOTATION_METHOD, Issue, IssuedFacts, KEY_CODE, KEY_EXPIRES_AT,
        KEY_LINK, SECRET_FIELD_MANAGER,
    },
};
use crate::{
    Error, Result,
    api::{
        MANAGED_BY_LABEL, MANAGED_BY_VALUE,
        recovery_request::{RecoveryMethod, RecoveryRequest},
    },
    controller::Context,
    kratos::{CreateRecoveryCodeBody, CreateRecoveryLinkBody},
};

/// A link or code Kratos just issued. `Debug` shows neither.
#[derive(Debug)]
pub struct Minted {
    /// The recovery link (for `code`, the flow's URL).
    pub link: SecretString,
    /// The recovery code (method `code`).
    pub code: Option<SecretString>,
    /// When Kratos expires it.
    pub expires_at: Timestamp,
}

/// Asks Kratos for the link or code.
async fn mint(ctx: &Context, issue: &Issue) -> Result<Minted, crate::kratos::Error> {
    match issue.method {
        RecoveryMethod::Link => {
            let body = CreateRecoveryLinkBody {
                identity_id: issue.identity_id.clone(),
                expires_in: issue.expires_in,
            };
            let link = ctx
                .kratos
                .create_recovery_link(&body, issue.return_to.as_deref())
                .await?;
            Ok(Minted {
                link: link.recovery_link,
                code: None,
                expires_at: link.expires_at,
            })
        }
        RecoveryMethod::Code => {
            // A browser flow (Kratos' default): the user opens the delivered flow URL in the
            // self-service UI and enters the code there.
            let body = CreateRecoveryCodeBody {
                identity_id: issue.identity_id.clone(),
                expires_in: issue.expires_in,
                flow_type: None,
            };
            let code = ctx.kratos.create_recovery_code(&body).await?;
            Ok(Minted {
                link: code.recovery_link,
                code: Some(code.recovery_code),
                expires_at: code.expires_at,
            })
        }
    }
}

/// The annotations that describe what the Secret holds (no secret in them).
pub fn annotations(facts: &IssuedFacts, method: RecoveryMethod) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert(
        ANNOTATION_GENERATION.to_string(),
        facts.generation.to_string(),
    );
    a.insert(
        ANNOTATION_EXPIRES_AT.to_string(),
        facts.expires_at.to_string(),
    );
    a.insert(ANNOTATION_METHOD.to_string(), method.as_str().to_string());
    if let Some(t) = facts.issued_at {
        a.insert(ANNOTATION_ISSUED_AT.to_string(), t.to_string());
    }
    if let Some(id) = &facts.identity_id {
        a.insert(ANNOTATION_IDENTITY_ID.to_string(), id.clone());
    }
    a
}

/// The data of the Secret: the only place the link and code are exposed.
fn data(minted: &Minted) -> BTreeMap<String, ByteString> {
    let mut d = BTreeMap::new();
    d.insert(
        KEY_LINK.to_string(),
        ByteString(minted.link.expose_secret().as_bytes().to_vec()),
    );
    if let Some(code) = &minted.code {
        d.insert(
            KEY_CODE.to_string(),
            ByteString(code.expose_secret().as_bytes().to_vec()),
        );
    }
    d.insert(
        KEY_EXPIRES_AT.to_string(),
        ByteString(minted.expires_at.to_string().into_bytes()),
    );
    d
}

/// The Secret as the operator applies it: owned by `obj` (controller), labelled as managed by
/// the operator, with `annotations`, and with `data` (none once expired).
pub fn secret_manifest(
    obj: &RecoveryRequest,
    name: &str,
    annotations: BTreeMap<String, String>,
    data: Option<BTreeMap<String, ByteString>>,
) -> Result<Secret> {
    let owner = obj
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))?;
    let ns = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                MANAGED_BY_VALUE.to_string(),
            )])),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data,
        ..Secret::default()
    })
}

async fn apply_secret(ctx: &Context, secret: &Secret) -> Result<()> {
    let ns = secret
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch(
        &secret.name_any(),
        &PatchParams::apply(SECRET_FIELD_MANAGER).force(),
        &Patch::Apply(secret),
    )
    .await?;
    Ok(())
}

/// Issues a link or code and writes it into the Secret. A refusal by Kratos is an outcome
/// (`Ok(Err(..))`); anything else is an error, retried with backoff.
///
/// If the Secret write fails after Kratos issued, the next attempt issues again: the lost link
/// or code was never delivered and simply expires.
pub async fn issue(
    ctx: &Context,
    obj: &RecoveryRequest,
    issue: &Issue,
) -> Result<Result<IssuedFacts, Blocked>> {
    let minted = match mint(ctx, issue).await {
        Ok(m) => m,
        Err(e) => {
            let identity_ref = obj.spec.identity_ref.as_ref().map(|r| r.name.as_str());
            return match plan::refusal(issue.method, identity_ref, &issue.identity_id, &e) {
                Some(blocked) => Ok(Err(blocked)),
                None => Err(e.into()),
            };
        }
    };
    let facts = IssuedFacts {
        generation: issue.generation,
        identity_id: Some(issue.identity_id.clone()),
        issued_at: Some(Timestamp::now()),
        expires_at: minted.expires_at,
        secret_name: issue.secret_name.clone(),
    };
    let secret = secret_manifest(
        obj,
        &issue.secret_name,
        annotations(&facts, issue.method),
        Some(data(&minted)),
    )?;
    apply_secret(ctx, &secret).await?;
    info!(
        namespace = obj.namespace().unwrap_or_default(),
        name = obj.name_any(),
        method = issue.method.as_str(),
        identity = %issue.identity_id,
        secret = %issue.secret_name,
        expires_at = %facts.expires_at,
        "issued a recovery {} into its Secret",
        issue.method.as_str()
    );
    Ok(Ok(facts))
}

/// Clears the data of the Secret (keeping its annotations, labels and owner), if it still
/// exists and belongs to `obj`.
pub async fn clear(ctx: &Context, obj: &RecoveryRequest, facts: &IssuedFacts) -> Result<()> {
    let ns = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let uid = obj.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let Some(state) = super::observe::secret(ctx, &ns, &facts.secret_name, &uid).await? else {
        return Ok(());
    };
    if !state.ours {
        return Ok(());
    }
    let method = obj.spec.method;
    let secret = secret_manifest(obj, &facts.secret_name, annotations(facts, method), None)?;
    apply_secret(ctx, &secret).await?;
    info!(namespace = %ns, name = obj.name_any(), secret = %facts.secret_name, "cleared the expired recovery Secret");
    Ok(())
}

/// Deletes the Secret `name` if `obj` owns it (after `spec.secretName` changed).
pub async fn delete_previous_secret(
    ctx: &Context,
    obj: &RecoveryRequest,
    name: &str,
) -> Result<()> {
    let ns = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let uid = obj.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(secret) = api.get_opt(name).await? else {
        return Ok(());
    };
    if !super::observe::secret_state(&secret, &uid).ours {
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: secret.uid(),
            resource_version: secret.resource_version(),
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    info!(namespace = %ns, name = obj.name_any(), secret = %name, "deleted the Secret of the previous spec.secretName");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request() -> RecoveryRequest {
        serde_json::from_value(json!({
            "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "RecoveryRequest",
            "metadata": { "name": "r", "namespace": "ns", "uid": "u-1", "generation": 3 },
            "spec": { "identityId": "id-1", "method": "code" }
        }))
        .unwrap()
    }

    #[test]
    fn the_secret_is_owned_labelled_annotated_and_holds_only_the_expected_keys() {
        let obj = request();
        let facts = IssuedFacts {
            generation: 3,
            identity_id: Some("id-1".into()),
            issued_at: Some(Timestamp::from_second(100).unwrap()),
            expires_at: Timestamp::from_second(4000).unwrap(),
            secret_name: "r".into(),
        };
        let minted = Minted {
            link: SecretString::from("http://ui/recovery?flow=f"),
            code: Some(SecretString::from("123456")),
            expires_at: facts.expires_at,
        };
        assert!(!format!("{minted:?}").contains("123456"));
        let secret = secret_manifest(
            &obj,
            "r",
            annotations(&facts, RecoveryMethod::Code),
            Some(data(&minted)),
        )
        .unwrap();
        let v = serde_json::to_value(&secret).unwrap();
        assert_eq!(v["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY_VALUE);
        let owner = &v["metadata"]["ownerReferences"][0];
        assert_eq!(
            (
                owner["kind"].as_str(),
                owner["uid"].as_str(),
                owner["controller"].as_bool()
            ),
            (Some("RecoveryRequest"), Some("u-1"), Some(true))
        );
        assert_eq!(v["metadata"]["annotations"][ANNOTATION_GENERATION], "3");
        assert_eq!(
            v["metadata"]["annotations"][ANNOTATION_EXPIRES_AT],
            "1970-01-01T01:06:40Z"
        );
        assert_eq!(v["metadata"]["annotations"][ANNOTATION_METHOD], "code");
        let keys: Vec<_> = v["data"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, vec![KEY_EXPIRES_AT, KEY_CODE, KEY_LINK]);
        let back = super::super::observe::secret_state(&secret, "u-1");
        assert!(back.ours && back.has_data);
        assert_eq!(back.issued_generation, Some(3));
        assert_eq!(back.expires_at, Some(facts.expires_at));

        let cleared =
            secret_manifest(&obj, "r", annotations(&facts, RecoveryMethod::Code), None).unwrap();
        assert!(
            serde_json::to_value(&cleared)
                .unwrap()
                .get("data")
                .is_none()
        );
    }
}
