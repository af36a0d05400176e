//! The chart's MutatingAdmissionPolicy (the finalizer at admission), on or off for a scenario.

use super::*;

/// Whether the API server serves `admissionregistration.k8s.io/v1` MutatingAdmissionPolicy.
pub(super) async fn serves_mutating_admission_policies(client: &Client) -> Result<bool, String> {
    match client
        .list_api_group_resources("admissionregistration.k8s.io/v1")
        .await
    {
        Ok(list) => Ok(list
            .resources
            .iter()
            .any(|r| r.name == "mutatingadmissionpolicies")),
        Err(e) => Err(format!("discovering admissionregistration.k8s.io/v1: {e}")),
    }
}

/// Installs (`on`) or removes the chart's finalizer policy, rendered from the chart as users get
/// it, and waits until a server-side dry-run create of an Identity shows it in effect (or gone).
pub(super) async fn finalizer_policy(
    env: &Environment,
    repo: &Path,
    on: bool,
) -> Result<(), String> {
    let helm = kratos_operator_testenv::build::HELM
        .binary("helm")
        .map_err(err)?;
    let chart = repo.join("charts").join("kratos-operator");
    let out = std::process::Command::new(helm)
        .args(["template", "bench"])
        .arg(&chart)
        .args([
            "--show-only",
            "templates/admission-policies.yaml",
            "--set",
            "kratos.adminUrl=http://127.0.0.1:4434,tenancy.enforce=false,admissionPolicies.operatorSecrets=false",
            "--kube-version",
            kratos_operator_testenv::versions::KUBERNETES,
            "--api-versions",
            "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy",
        ])
        .output()
        .map_err(err)?;
    if !out.status.success() {
        return Err(format!(
            "rendering the finalizer policy: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let manifests = String::from_utf8_lossy(&out.stdout).into_owned();
    if on {
        crate::kubectl(
            env,
            &["apply", "--server-side", "-f", "-"],
            Some(&manifests),
        )?;
    } else {
        crate::kubectl(
            env,
            &["delete", "--ignore-not-found", "-f", "-"],
            Some(&manifests),
        )?;
    }
    let probe = json!({
        "apiVersion": "kratos-operator.dev/v1alpha1",
        "kind": "Identity",
        "metadata": { "name": "finalizer-probe", "namespace": "default" },
        "spec": { "schemaId": "customer", "traits": { "email": "probe@bench.test" } }
    })
    .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // A CRD just established may not be served on every path yet: the dry run answers
        // ServiceUnavailable until it is; that is retried like a policy not yet in effect.
        match crate::kubectl(
            env,
            &["create", "--dry-run=server", "-o", "json", "-f", "-"],
            Some(&probe),
        ) {
            Ok(created) if created.contains(kratos_operator::api::FINALIZER) == on => {
                return Ok(());
            }
            Ok(_) => {}
            Err(e) if e.contains("ServiceUnavailable") => {}
            Err(e) => return Err(e),
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the finalizer policy is not {} after 60 s",
                if on { "in effect" } else { "gone" }
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
