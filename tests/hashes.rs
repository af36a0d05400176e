//! Every password hash format Kratos v1.3.1 imports, imported through
//! `spec.credentials.password.hashedSecretRef` and proven by a real login against the real
//! Kratos; and the formats it refuses, which give `Ready=False` reason `InvalidSpec` without the
//! hash in the message.
//!
//! What Kratos accepts is `IsValidHashFormat` in its `hash/hash_comparator.go`: a regular
//! expression on the hash's prefix. How each format is read at login is the matching `Compare*`
//! function there. Every hash here is computed at test time from the password, with cheap
//! parameters:
//!
//! | format                                             | made by                                 |
//! |----------------------------------------------------|-----------------------------------------|
//! | `$2a$`, `$2b$`, `$2y$` bcrypt, cost 4              | `bcrypt`                                |
//! | `$argon2id$`, `$argon2i$` (PHC string)             | `argon2`                                |
//! | `$pbkdf2-sha1$`, `-sha256$`, `-sha512$`            | `pbkdf2` with `sha1` / `sha2`           |
//! | `$pbkdf2-sha224$`, `-sha384$` (SHA3, see below)    | `pbkdf2` with `sha3`                    |
//! | `$scrypt$` (`ln=` is N itself, see below)          | `scrypt`                                |
//! | `$firescrypt$` (Firebase's modified scrypt)        | `scrypt`, then `aes` + `ctr`            |
//! | `{SSHA}`, `{SSHA256}`, `{SSHA512}`                 | `sha1` / `sha2`                         |
//! | `$sha1$`, `$sha256$`, `$sha512$` (salt pattern)    | `sha1` / `sha2`                         |
//! | `$md5$`, unsalted and with a salt pattern          | `md-5`                                  |
//! | `$md5-crypt$` (crypt(3) `$1$` re-prefixed)         | `md5crypt`                              |
//! | `$sha256-crypt$`, `$sha512-crypt$` (`$5$`, `$6$`)  | `sha-crypt`, rounds given and omitted   |
//! | `$hmac-md4$`, `-md5$`, `-sha1$`, `-sha224$`, `-sha256$`, `-sha384$`, `-sha512$` | `hmac` with `md4` / `md-5` / `sha1` / `sha2` |
//!
//! Each of these 32 hashes signs in with its password and refuses a wrong one
//! (`every_hash_format_kratos_imports_signs_in`). Firebase's scrypt has no crate of its own;
//! it is written here from the description of the format (scrypt, then AES-256-CTR of the signer
//! key), with no vector copied from Kratos.
//!
//! What Kratos v1.3.1 does with hashes that look right but are not (found reading the code above
//! and proven by `kratos_checks_only_the_prefix_at_import`): the import checks the prefix only,
//! so a hash whose body is broken, or written with another tool's meaning of its parameters, is
//! imported (the Identity is `Ready=True`, `Synced`) and its password does not sign in. Three such
//! traps, each proven:
//! - a hash cut short (`$argon2id$...` without its digest);
//! - `$scrypt$ln=8`: Kratos takes `ln` as the cost N itself (its own test has `ln=16384`), where
//!   passlib's `ln` is log2 N (`$firescrypt$`'s `ln` is log2 N, as Firebase's `mem_cost`);
//! - `$pbkdf2-sha384$` computed with SHA-384: Kratos uses SHA3-384 for `sha384` and SHA3-224 for
//!   `sha224` (and, by its code, not tested here, SHA-256 for any other `sha<digits>`).
//!
//! Formats Kratos refuses at import, with `InvalidSpec` (`hash_formats_kratos_refuses_are_invalid_spec`):
//! crypt(3)'s own `$1$`, `$5$`, `$6$` (Kratos wants them re-prefixed), bcrypt `$2x$`, argon2d,
//! LDAP's unsalted `{SHA}` and Django's `pbkdf2_sha256$`.

// Test code: panicking on unexpected results is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD},
};
use hmac::{Mac, SimpleHmac, digest::core_api::BlockSizeUser};
use k8s_openapi::api::core::v1::Secret;
use kratos_operator::api::Identity;
use rand::{Rng, distr::Alphanumeric, random};
use serde_json::{Map, Value, json};
use sha2::Digest;
use support::{
    TestEnv, apply, events_for, login, ready_message, setup, start_operator, wait_ready,
};

/// Many identities are imported at once on a small, shared machine.
const T: Duration = Duration::from_secs(120);

/// One hash to import: the Identity (and Secret key) named `name`, made from `password`.
struct Case {
    name: &'static str,
    password: String,
    hash: String,
}

impl Case {
    fn new(name: &'static str, hash: impl FnOnce(&str) -> String) -> Self {
        // Not ASCII, so that every format is shown to hash the same UTF-8 bytes Kratos does.
        let password = format!("old-{name}-Pässwort!");
        let hash = hash(&password);
        Self {
            name,
            password,
            hash,
        }
    }
}

/// Text salt for the formats that put it in the hash as text (crypt(3), salt patterns).
fn text_salt(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn bcrypt(password: &str, version: bcrypt::Version) -> String {
    bcrypt::hash_with_result(password, 4)
        .unwrap()
        .format_for_version(version)
}

/// The PHC string of the `argon2` crate, as it is: `$argon2id$v=19$m=..,t=..,p=..$salt$hash`.
fn argon2(algorithm: argon2::Algorithm, password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(256, 1, 1, Some(32)).unwrap();
    let salt = SaltString::encode_b64(&random::<[u8; 16]>()).unwrap();
    argon2::Argon2::new(algorithm, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

/// `$pbkdf2-<name>$i=<rounds>,l=<length>$<salt>$<key>`, unpadded standard base64.
fn pbkdf2<D: Digest + BlockSizeUser + Clone + Sync>(name: &str, password: &str) -> String {
    let salt = random::<[u8; 16]>();
    let rounds = 1000;
    let mut key = [0u8; 32];
    pbkdf2::pbkdf2::<SimpleHmac<D>>(password.as_bytes(), &salt, rounds, &mut key).unwrap();
    format!(
        "$pbkdf2-{name}$i={rounds},l={}${}${}",
        key.len(),
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(key)
    )
}

/// `$scrypt$ln=<N>,r=<r>,p=<p>$<salt>$<key>`, padded base64. Kratos passes `ln` to scrypt as the
/// cost N itself; `ln_is_log2` writes log2 N instead (passlib's meaning), which Kratos misreads.
fn scrypt(password: &str, ln_is_log2: bool) -> String {
    let (log_n, r, p) = (8u8, 8, 1);
    let salt = random::<[u8; 16]>();
    let mut key = [0u8; 32];
    let params = scrypt::Params::new(log_n, r, p, key.len()).unwrap();
    scrypt::scrypt(password.as_bytes(), &salt, &params, &mut key).unwrap();
    let ln = if ln_is_log2 {
        u32::from(log_n)
    } else {
        1 << log_n
    };
    format!(
        "$scrypt$ln={ln},r={r},p={p}${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(key)
    )
}

/// Firebase's modified scrypt: a key is derived by scrypt from the password and the salt followed
/// by the salt separator; the hash is the signer key encrypted with AES-256-CTR under that key,
/// counter starting at zero. `$firescrypt$ln=<log2 N>,r=<r>,p=<p>$<salt>$<hash>$<separator>$<signer
/// key>`, padded base64.
fn firescrypt(password: &str) -> String {
    use ctr::cipher::{KeyIvInit, StreamCipher};
    let (mem_cost, rounds, p) = (8u8, 8, 1);
    let salt = random::<[u8; 16]>();
    let separator = random::<[u8; 2]>();
    let mut signer_key = [0u8; 64];
    rand::rng().fill(&mut signer_key);
    let mut key = [0u8; 32];
    let params = scrypt::Params::new(mem_cost, rounds, p, key.len()).unwrap();
    scrypt::scrypt(
        password.as_bytes(),
        &[&salt[..], &separator[..]].concat(),
        &params,
        &mut key,
    )
    .unwrap();
    let mut hash = signer_key;
    ctr::Ctr128BE::<aes::Aes256>::new(&key.into(), &[0u8; 16].into()).apply_keystream(&mut hash);
    format!(
        "$firescrypt$ln={mem_cost},r={rounds},p={p}${}${}${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(hash),
        STANDARD.encode(separator),
        STANDARD.encode(signer_key)
    )
}

/// LDAP's salted SHA: `{<label>}` then base64 of digest(password + salt) followed by the salt.
fn ssha<D: Digest>(label: &str, password: &str) -> String {
    let salt = random::<[u8; 8]>();
    let mut raw = D::new()
        .chain_update(password)
        .chain_update(salt)
        .finalize()
        .to_vec();
    raw.extend_from_slice(&salt);
    format!("{{{label}}}{}", STANDARD.encode(raw))
}

/// `$<prefix>$pf=<pattern>$<salt>$<digest>`, padded base64: the digest of `pattern` with
/// `{SALT}` and `{PASSWORD}` put in (the `$sha1$`, `$sha256$`, `$sha512$` and salted `$md5$`
/// formats).
fn salted<D: Digest>(prefix: &str, pattern: &str, password: &str) -> String {
    let salt = text_salt(12);
    let input = pattern
        .replace("{SALT}", &salt)
        .replace("{PASSWORD}", password);
    format!(
        "${prefix}$pf={}${}${}",
        STANDARD.encode(pattern),
        STANDARD.encode(&salt),
        STANDARD.encode(D::digest(input))
    )
}

/// Unsalted MD5: `$md5$<digest>`, padded base64.
fn md5(password: &str) -> String {
    format!("$md5${}", STANDARD.encode(md5::Md5::digest(password)))
}

/// crypt(3) MD5: `$1$<salt>$<hash>`.
fn crypt_md5(password: &str) -> String {
    String::from_utf8(md5crypt::md5crypt(
        password.as_bytes(),
        text_salt(8).as_bytes(),
    ))
    .unwrap()
}

/// crypt(3) SHA-256: `$5$rounds=<n>$<salt>$<hash>`, or `$5$<salt>$<hash>` for the default 5000.
fn crypt_sha256(password: &str, rounds: Option<usize>) -> String {
    let salt = text_salt(16);
    let params = sha_crypt::Sha256Params::new(rounds.unwrap_or(5000)).unwrap();
    let hash = sha_crypt::sha256_crypt_b64(password.as_bytes(), salt.as_bytes(), &params).unwrap();
    match rounds {
        Some(n) => format!("$5$rounds={n}${salt}${hash}"),
        None => format!("$5${salt}${hash}"),
    }
}

/// crypt(3) SHA-512: `$6$rounds=<n>$<salt>$<hash>`, or `$6$<salt>$<hash>` for the default 5000.
fn crypt_sha512(password: &str, rounds: Option<usize>) -> String {
    let salt = text_salt(16);
    let params = sha_crypt::Sha512Params::new(rounds.unwrap_or(5000)).unwrap();
    let hash = sha_crypt::sha512_crypt_b64(password.as_bytes(), salt.as_bytes(), &params).unwrap();
    match rounds {
        Some(n) => format!("$6$rounds={n}${salt}${hash}"),
        None => format!("$6${salt}${hash}"),
    }
}

/// Kratos' name for a crypt(3) hash: its `$<id>$` replaced by `$<name>$`.
fn kratos_crypt(crypt: &str, id: &str, name: &str) -> String {
    let rest = crypt
        .strip_prefix(&format!("${id}$"))
        .expect("a crypt(3) hash");
    format!("${name}${rest}")
}

/// `$hmac-<name>$<hex of the MAC, in base64>$<key, in base64>`: the MAC of the password under
/// the key, its lowercase hex digits base64-encoded.
fn hmac<D: Digest + BlockSizeUser>(name: &str, password: &str) -> String {
    let key = random::<[u8; 16]>();
    let mac = <SimpleHmac<D> as Mac>::new_from_slice(&key)
        .unwrap()
        .chain_update(password)
        .finalize()
        .into_bytes();
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "$hmac-{name}${}${}",
        STANDARD.encode(hex),
        STANDARD.encode(key)
    )
}

/// Every format Kratos v1.3.1 accepts at import, each as Kratos reads it at login.
fn accepted() -> Vec<Case> {
    use bcrypt::Version::{TwoA, TwoB, TwoY};
    vec![
        Case::new("bcrypt-2a", |p| bcrypt(p, TwoA)),
        Case::new("bcrypt-2b", |p| bcrypt(p, TwoB)),
        Case::new("bcrypt-2y", |p| bcrypt(p, TwoY)),
        Case::new("argon2id", |p| argon2(argon2::Algorithm::Argon2id, p)),
        Case::new("argon2i", |p| argon2(argon2::Algorithm::Argon2i, p)),
        Case::new("pbkdf2-sha1", |p| pbkdf2::<sha1::Sha1>("sha1", p)),
        Case::new("pbkdf2-sha224", |p| pbkdf2::<sha3::Sha3_224>("sha224", p)),
        Case::new("pbkdf2-sha256", |p| pbkdf2::<sha2::Sha256>("sha256", p)),
        Case::new("pbkdf2-sha384", |p| pbkdf2::<sha3::Sha3_384>("sha384", p)),
        Case::new("pbkdf2-sha512", |p| pbkdf2::<sha2::Sha512>("sha512", p)),
        Case::new("scrypt", |p| scrypt(p, false)),
        Case::new("firescrypt", firescrypt),
        Case::new("ssha", |p| ssha::<sha1::Sha1>("SSHA", p)),
        Case::new("ssha256", |p| ssha::<sha2::Sha256>("SSHA256", p)),
        Case::new("ssha512", |p| ssha::<sha2::Sha512>("SSHA512", p)),
        Case::new("sha1", |p| {
            salted::<sha1::Sha1>("sha1", "{SALT}{PASSWORD}", p)
        }),
        Case::new("sha256", |p| {
            salted::<sha2::Sha256>("sha256", "{PASSWORD}--{SALT}", p)
        }),
        Case::new("sha512", |p| {
            salted::<sha2::Sha512>("sha512", "{SALT}$${PASSWORD}", p)
        }),
        Case::new("md5", md5),
        Case::new("md5-salted", |p| {
            salted::<md5::Md5>("md5", "{PASSWORD}{SALT}", p)
        }),
        Case::new("md5-crypt", |p| {
            kratos_crypt(&crypt_md5(p), "1", "md5-crypt")
        }),
        Case::new("sha256-crypt", |p| {
            kratos_crypt(&crypt_sha256(p, Some(1000)), "5", "sha256-crypt")
        }),
        Case::new("sha256-crypt-5000", |p| {
            kratos_crypt(&crypt_sha256(p, None), "5", "sha256-crypt")
        }),
        Case::new("sha512-crypt", |p| {
            kratos_crypt(&crypt_sha512(p, Some(1000)), "6", "sha512-crypt")
        }),
        Case::new("sha512-crypt-5000", |p| {
            kratos_crypt(&crypt_sha512(p, None), "6", "sha512-crypt")
        }),
        Case::new("hmac-md4", |p| hmac::<md4::Md4>("md4", p)),
        Case::new("hmac-md5", |p| hmac::<md5::Md5>("md5", p)),
        Case::new("hmac-sha1", |p| hmac::<sha1::Sha1>("sha1", p)),
        Case::new("hmac-sha224", |p| hmac::<sha2::Sha224>("sha224", p)),
        Case::new("hmac-sha256", |p| hmac::<sha2::Sha256>("sha256", p)),
        Case::new("hmac-sha384", |p| hmac::<sha2::Sha384>("sha384", p)),
        Case::new("hmac-sha512", |p| hmac::<sha2::Sha512>("sha512", p)),
    ]
}

/// One Secret `hashes` with a key per case, and an Identity per case importing its key.
async fn import(t: &TestEnv, cases: &[Case]) {
    let data: Map<String, Value> = cases
        .iter()
        .map(|c| (c.name.to_string(), Value::from(c.hash.clone())))
        .collect();
    apply::<Secret>(
        t,
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "hashes" },
            "stringData": data }),
    )
    .await;
    for c in cases {
        apply::<Identity>(
            t,
            json!({
                "apiVersion": "kratos-operator.dev/v1alpha1", "kind": "Identity",
                "metadata": { "name": c.name },
                "spec": { "schemaId": "customer", "traits": { "email": t.email(c.name) },
                    "credentials": { "password": {
                        "hashedSecretRef": { "name": "hashes", "key": c.name } } } }
            }),
        )
        .await;
    }
}

async fn all_ready(t: &TestEnv, cases: &[Case], status: &str, reason: &str) -> Vec<Identity> {
    futures::future::join_all(
        cases
            .iter()
            .map(|c| wait_ready::<Identity>(t, c.name, status, Some(reason), T)),
    )
    .await
}

/// Each format Kratos accepts: imported, Ready, signs in with its password and not with another.
/// All failures are gathered, so that one run tells every format that does not work.
#[tokio::test]
async fn every_hash_format_kratos_imports_signs_in() {
    let t = setup("hashes").await;
    let _op = start_operator(&t).await;
    let cases = accepted();
    import(&t, &cases).await;
    all_ready(&t, &cases, "True", "Synced").await;

    let mut failures = Vec::new();
    for c in &cases {
        let address = t.email(c.name);
        if let Err(e) = login(&t.kratos_public_url, &address, &c.password).await {
            failures.push(format!("{}: its password was refused: {e}", c.name));
        }
        if login(&t.kratos_public_url, &address, "not-the-password")
            .await
            .is_ok()
        {
            failures.push(format!("{}: a wrong password signed in", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} formats failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    t.cleanup().await;
}

/// Kratos checks only the prefix at import: these are imported (Ready, Synced) and their
/// password does not sign in. They are here so that a change of that (in Kratos, or a check of
/// the operator's own) is seen.
#[tokio::test]
async fn kratos_checks_only_the_prefix_at_import() {
    let t = setup("hashes-prefix").await;
    let _op = start_operator(&t).await;
    let cases = vec![
        // A real argon2id hash without its digest.
        Case::new("argon2id-cut", |p| {
            let full = argon2(argon2::Algorithm::Argon2id, p);
            full[..full.rfind('$').unwrap()].to_string()
        }),
        // passlib's meaning of ln (log2 N): Kratos runs scrypt with N = 8.
        Case::new("scrypt-log2", |p| scrypt(p, true)),
        // SHA-2's SHA-384: Kratos' pbkdf2-sha384 is SHA3-384.
        Case::new("pbkdf2-sha2-384", |p| pbkdf2::<sha2::Sha384>("sha384", p)),
    ];
    import(&t, &cases).await;
    all_ready(&t, &cases, "True", "Synced").await;
    for c in &cases {
        let signed_in = login(&t.kratos_public_url, &t.email(c.name), &c.password).await;
        assert!(
            signed_in.is_err(),
            "{}: Kratos now verifies this hash; move it to the accepted formats",
            c.name
        );
    }
    t.cleanup().await;
}

/// Real hashes in formats Kratos does not know: `InvalidSpec`, a message about the hash, and no
/// part of the hash in it nor in the Events about the Identity. "No part" is checked as: no 8
/// characters in a row of the hash (every salt and digest is longer than that).
#[tokio::test]
async fn hash_formats_kratos_refuses_are_invalid_spec() {
    let t = setup("hashes-refused").await;
    let _op = start_operator(&t).await;
    let cases = vec![
        Case::new("crypt-md5", crypt_md5),
        Case::new("crypt-sha256", |p| crypt_sha256(p, Some(1000))),
        Case::new("crypt-sha512", |p| crypt_sha512(p, None)),
        Case::new("bcrypt-2x", |p| bcrypt(p, bcrypt::Version::TwoX)),
        Case::new("argon2d", |p| argon2(argon2::Algorithm::Argon2d, p)),
        // LDAP's unsalted SHA-1.
        Case::new("ldap-sha", |p| {
            format!("{{SHA}}{}", STANDARD.encode(sha1::Sha1::digest(p)))
        }),
        // Django's PBKDF2: pbkdf2_sha256$<rounds>$<salt>$<key>.
        Case::new("django-pbkdf2", |p| {
            let salt = text_salt(12);
            let mut key = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<sha2::Sha256>(p.as_bytes(), salt.as_bytes(), 1000, &mut key);
            format!("pbkdf2_sha256$1000${salt}${}", STANDARD.encode(key))
        }),
    ];
    import(&t, &cases).await;
    let refused = all_ready(&t, &cases, "False", "InvalidSpec").await;
    for (c, obj) in cases.iter().zip(&refused) {
        let message = ready_message(obj);
        assert!(message.contains("hash"), "{}: {message}", c.name);
        let mut said = vec![message];
        said.extend(
            events_for(&t, c.name)
                .await
                .into_iter()
                .filter_map(|e| e.note),
        );
        let chars: Vec<char> = c.hash.chars().collect();
        for text in &said {
            let leaked = chars
                .windows(8)
                .map(|w| w.iter().collect::<String>())
                .find(|w| text.contains(w.as_str()));
            assert!(
                leaked.is_none(),
                "{}: {leaked:?} of the hash is in {text:?}",
                c.name
            );
        }
    }
    t.cleanup().await;
}
