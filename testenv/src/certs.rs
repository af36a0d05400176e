//! A throw-away PKI for the local control plane: a CA, the apiserver's serving certificate,
//! an admin client certificate (group `system:masters`) and the service-account signing key.

use std::{fs, path::Path};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::{Result, io_err};

/// File names written by [`generate`] into the PKI directory.
pub mod files {
    /// CA certificate (trust anchor for clients and the client-CA of the apiserver).
    pub const CA_CERT: &str = "ca.crt";
    /// apiserver serving certificate.
    pub const SERVING_CERT: &str = "apiserver.crt";
    /// apiserver serving key.
    pub const SERVING_KEY: &str = "apiserver.key";
    /// admin client certificate (`CN=admin`, `O=system:masters`).
    pub const ADMIN_CERT: &str = "admin.crt";
    /// admin client key.
    pub const ADMIN_KEY: &str = "admin.key";
    /// service-account signing key.
    pub const SA_KEY: &str = "sa.key";
    /// service-account verification key (the public half of [`SA_KEY`]).
    pub const SA_PUB: &str = "sa.pub";
}

/// Writes a fresh PKI into `dir`. The serving certificate is valid for loopback and for
/// `extra_ips` (the node's bridge address, where pods reach the API server).
pub fn generate(dir: &Path, extra_ips: &[std::net::Ipv4Addr]) -> Result<()> {
    fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kratos-operator testenv CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let serving_key = KeyPair::generate()?;
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
    ];
    names.extend(extra_ips.iter().map(ToString::to_string));
    let mut serving = CertificateParams::new(names)?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving.signed_by(&serving_key, &issuer)?;

    let admin_key = KeyPair::generate()?;
    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin.distinguished_name.push(DnType::CommonName, "admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin.signed_by(&admin_key, &issuer)?;

    let sa_key = KeyPair::generate()?;

    let write = |name: &str, contents: String| {
        let path = dir.join(name);
        fs::write(&path, contents).map_err(io_err(format!("writing {}", path.display())))
    };
    write(files::CA_CERT, ca_cert.pem())?;
    write(files::SERVING_CERT, serving_cert.pem())?;
    write(files::SERVING_KEY, serving_key.serialize_pem())?;
    write(files::ADMIN_CERT, admin_cert.pem())?;
    write(files::ADMIN_KEY, admin_key.serialize_pem())?;
    write(files::SA_KEY, sa_key.serialize_pem())?;
    write(files::SA_PUB, sa_key.public_key_pem())?;
    Ok(())
}
