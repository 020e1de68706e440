//! The built-in CA and the commands over it: `switchboard ca ...`, `switchboard tls ...`,
//! `switchboard keys ...` (onboarding a provider that authenticates with certificates,
//! Verestro, and encrypts with JWE). `switchboard init` makes its CA and server certificate
//! here too: this is the only place switchboard makes certificates.
//!
//! - [`ca_init`] makes a self-signed CA; [`sign_csr`] turns a provider's CSR into an
//!   end-entity client certificate, whatever extensions the CSR requests (they are
//!   reported in [`Issued::ignored`], never copied); [`server_cert`] and [`client_cert`]
//!   issue a certificate and a new key. All four go through [`end_entity`] or
//!   `ca_params`, and every certificate is strict DER (no encoded defaults: an end
//!   entity's basicConstraints is the empty SEQUENCE, not an explicit `cA FALSE`).
//! - Keys are written with mode 0600.
//!
//! What does not live here: serving TLS, verifying client certificates and reloading them
//! (`switchboard_openapi::tls`).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, anyhow, bail};
use clap::Subcommand;
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    SerialNumber, SubjectPublicKeyInfo,
};
use sha2::{Digest, Sha256};
use switchboard_core::{fsutil::write_private, peer::PeerIdentity};
use switchboard_openapi::tls::identity;
use switchboard_plugins::providers::verestro::jwe;
use time::{Duration, OffsetDateTime};
use x509_parser::{
    certification_request::X509CertificationRequest,
    cri_attributes::ParsedCriAttribute,
    extensions::{GeneralName, ParsedExtension, X509Extension},
    oid_registry::Oid,
    prelude::FromDer,
    x509::X509Name,
};

/// File name of the CA certificate in the CA directory.
pub const CA_CERT: &str = "ca.crt";
/// File name of the CA key in the CA directory.
pub const CA_KEY: &str = "ca.key";

/// `2.5.29.19`, basicConstraints.
const OID_BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
/// `2.5.29.14`, subjectKeyIdentifier.
const OID_SUBJECT_KEY_ID: &[u64] = &[2, 5, 29, 14];

/// Serial number and validity: from an hour ago (for clocks a little behind) for `days`.
fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
    let mut serial = [0u8; 16];
    rand::rng().fill_bytes(&mut serial);
    // Positive, and 16 bytes long as DER writes it (no leading zero byte to drop).
    serial[0] = (serial[0] & 0x7f) | 0x40;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
}

/// Writes a certificate (0644) and, if given, its key (0600), creating their directories.
pub fn write_pair(cert: &Path, cert_pem: &str, key: Option<(&Path, &str)>) -> anyhow::Result<()> {
    for p in [Some(cert), key.map(|k| k.0)].into_iter().flatten() {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
    }
    if let Some((path, pem)) = key {
        write_private(path, pem.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    std::fs::write(cert, cert_pem).with_context(|| format!("cannot write {}", cert.display()))
}

/// A CA loaded from its directory.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
}

/// The CA certificate: a CA for end entities only (path length 0), signing certificates
/// and CRLs.
fn ca_params(name: &str, days: u32) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "switchboard");
    params.distinguished_name = dn;
    // rcgen writes `cA TRUE, pathLen 0` and the subject key identifier: no defaults.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    params
}

/// Creates a CA key and a self-signed CA certificate in `dir`. Refuses to overwrite an
/// existing CA unless `force`.
pub fn ca_init(
    dir: &Path,
    name: &str,
    days: u32,
    force: bool,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if !force && (cert_path.exists() || key_path.exists()) {
        bail!(
            "{} already holds a CA; pass --force to replace it (certificates it signed will no longer verify)",
            dir.display()
        );
    }
    let key = KeyPair::generate().context("key generation")?;
    let cert = ca_params(name, days)
        .self_signed(&key)
        .context("CA certificate")?;
    write_pair(
        &cert_path,
        &cert.pem(),
        Some((&key_path, &key.serialize_pem())),
    )?;
    Ok((cert_path, key_path))
}

/// Loads the CA of `dir`.
pub fn load_ca(dir: &Path) -> anyhow::Result<Ca> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).with_context(|| {
            format!(
                "cannot read {} (create a CA with `switchboard ca init`)",
                p.display()
            )
        })
    };
    let cert_pem = read(CA_CERT)?;
    let key = KeyPair::from_pem(&read(CA_KEY)?).map_err(|e| anyhow!("{CA_KEY}: {e}"))?;
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| anyhow!("{CA_CERT}: {e}"))?;
    Ok(Ca { issuer })
}

/// A certificate just issued.
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its key, PEM, when switchboard generated it.
    pub key_pem: Option<String>,
    /// Subject and fingerprint, to pin.
    pub identity: PeerIdentity,
    /// What the CSR asked for and did not get, one line each (`sign_csr` only).
    pub ignored: Vec<String>,
}

/// What an end-entity certificate is for.
struct Purpose {
    key_usages: Vec<KeyUsagePurpose>,
    extended: ExtendedKeyUsagePurpose,
}

/// Makes `params` an end-entity certificate for `purpose`, valid for `days`, and signs
/// it, for `public_key`, with the CA. The one place end-entity certificates are signed.
///
/// rcgen's own end-entity marking (`IsCa::ExplicitNoCa`) encodes basicConstraints as
/// `SEQUENCE { BOOLEAN FALSE }`: an encoded default, which DER forbids and strict parsers
/// (Python `cryptography`) refuse. So the extension is written here, as the empty
/// SEQUENCE, and so is the subject key identifier that goes with it (RFC 7093 method 1:
/// the first 160 bits of the SHA-256 of the public key).
fn end_entity(
    ca: &Ca,
    mut params: CertificateParams,
    purpose: Purpose,
    days: u32,
    public_key: &impl PublicKeyData,
) -> anyhow::Result<Issued> {
    params.is_ca = IsCa::NoCa;
    params.key_usages = purpose.key_usages;
    params.extended_key_usages = vec![purpose.extended];
    params.use_authority_key_identifier_extension = true;
    let mut basic = CustomExtension::from_oid_content(OID_BASIC_CONSTRAINTS, vec![0x30, 0x00]);
    basic.set_criticality(true);
    let mut ski = vec![0x04, 20];
    ski.extend_from_slice(&Sha256::digest(public_key.der_bytes())[..20]);
    params.custom_extensions = vec![
        basic,
        CustomExtension::from_oid_content(OID_SUBJECT_KEY_ID, ski),
    ];
    validity(&mut params, days);
    let cert = params
        .signed_by(public_key, &ca.issuer)
        .context("signing")?;
    Ok(Issued {
        identity: identity(cert.der()),
        cert_pem: cert.pem(),
        key_pem: None,
        ignored: Vec::new(),
    })
}

/// Signs a provider's CSR (PEM, any `... CERTIFICATE REQUEST` label, or DER) into a client
/// certificate valid for `days`.
///
/// Taken from the CSR: its subject (copied exactly, so that `pin_subject` matches what the
/// provider asked for), its public key (after checking the CSR's signature with it) and
/// its DNS, IP, email and URI alternative names. Everything else it requests (key usages,
/// basicConstraints, subjectKeyIdentifier, policies, private extensions, attributes) is
/// ignored and listed in [`Issued::ignored`]: the certificate is always an end-entity
/// certificate for client authentication.
pub fn sign_csr(ca: &Ca, csr: &[u8], days: u32) -> anyhow::Result<Issued> {
    let der = csr_der(csr)?;
    let (rest, req) = X509CertificationRequest::from_der(&der)
        .map_err(|e| anyhow!("the CSR cannot be parsed: {e}"))?;
    if !rest.is_empty() {
        bail!("the CSR has {} bytes of trailing data", rest.len());
    }
    req.verify_signature().map_err(|e| {
        anyhow!("the CSR's signature does not verify with the key it carries ({e})")
    })?;
    let info = &req.certification_request_info;
    let key = SubjectPublicKeyInfo::from_der(info.subject_pki.raw).map_err(|e| {
        anyhow!(
            "the CSR's public key is not supported (RSA, ECDSA P-256/P-384 and Ed25519 are): {e}"
        )
    })?;
    let rsa =
        info.subject_pki.algorithm.algorithm == x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION;

    let mut params = CertificateParams::default();
    params.distinguished_name = subject(&info.subject)?;
    let mut ignored = Vec::new();
    for attr in info.attributes() {
        match attr.parsed_attribute() {
            ParsedCriAttribute::ExtensionRequest(req) => {
                for ext in &req.extensions {
                    match ext.parsed_extension() {
                        ParsedExtension::SubjectAlternativeName(san) => {
                            for name in &san.general_names {
                                match alt_name(name) {
                                    Some(n) => params.subject_alt_names.push(n),
                                    None => ignored.push(format!(
                                        "subjectAltName {name} (only DNS, IP, email and URI names are copied)"
                                    )),
                                }
                            }
                        }
                        _ => ignored.push(describe_extension(ext)),
                    }
                }
            }
            ParsedCriAttribute::ChallengePassword(_) => {
                ignored.push("challengePassword attribute".into());
            }
            ParsedCriAttribute::UnsupportedAttribute => {
                ignored.push(format!("attribute {}", oid_name(&attr.oid)));
            }
        }
    }
    let key_usages = if rsa {
        vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ]
    } else {
        vec![KeyUsagePurpose::DigitalSignature]
    };
    let mut issued = end_entity(
        ca,
        params,
        Purpose {
            key_usages,
            extended: ExtendedKeyUsagePurpose::ClientAuth,
        },
        days,
        &key,
    )?;
    // The subject must be the CSR's, byte for byte: a pin on it must match what the
    // provider sees in its own request.
    let pem = pem::parse(&issued.cert_pem).context("the issued certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(pem.contents())
        .map_err(|e| anyhow!("the issued certificate cannot be parsed: {e}"))?;
    if cert.subject().as_raw() != info.subject.as_raw() {
        bail!(
            "the CSR's subject `{}` cannot be copied exactly; ask for a CSR with one value per attribute",
            info.subject
        );
    }
    issued.ignored = ignored;
    Ok(issued)
}

/// The DER of a CSR given as PEM (`CERTIFICATE REQUEST`, or keytool's and Windows'
/// `NEW CERTIFICATE REQUEST`) or as DER.
fn csr_der(input: &[u8]) -> anyhow::Result<Vec<u8>> {
    if !input.windows(10).any(|w| w == b"-----BEGIN") {
        return Ok(input.to_vec());
    }
    let pems = pem::parse_many(input).map_err(|e| anyhow!("the CSR is not valid PEM: {e}"))?;
    pems.into_iter()
        .find(|p| p.tag().ends_with("CERTIFICATE REQUEST"))
        .map(|p| p.into_contents())
        .ok_or_else(|| anyhow!("no `-----BEGIN CERTIFICATE REQUEST-----` block in the file"))
}

/// The CSR's subject as rcgen's, attribute by attribute with the same string types.
fn subject(name: &X509Name<'_>) -> anyhow::Result<DistinguishedName> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let mut dn = DistinguishedName::new();
    let mut seen = Vec::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            bail!(
                "the CSR's subject `{name}` has a multi-valued name; ask for one value per attribute"
            );
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| anyhow!("the CSR's subject has an attribute type too long to read"))?
            .collect();
        if seen.contains(&oid) {
            bail!(
                "the CSR's subject `{name}` repeats {}; switchboard copies subjects exactly and cannot repeat an attribute",
                oid_name(attr.attr_type())
            );
        }
        seen.push(oid.clone());
        let value = attr.attr_value();
        let data = value.data;
        let text = || {
            std::str::from_utf8(data)
                .map_err(|_| anyhow!("the CSR's subject has a value that is not valid text"))
        };
        let bad = |e: rcgen::Error| anyhow!("the CSR's subject `{name}`: {e}");
        let v = match value.header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(text()?.try_into().map_err(bad)?),
            Tag::Ia5String => DnValue::Ia5String(text()?.try_into().map_err(bad)?),
            Tag::T61String => DnValue::TeletexString(text()?.try_into().map_err(bad)?),
            Tag::BmpString => DnValue::BmpString(
                rcgen::string::BmpString::from_utf16be(data.to_vec()).map_err(bad)?,
            ),
            Tag::UniversalString => DnValue::UniversalString(
                rcgen::string::UniversalString::from_utf32be(data.to_vec()).map_err(bad)?,
            ),
            t => bail!("the CSR's subject `{name}` has a value of type {t}, which is not a string"),
        };
        dn.push(DnType::from_oid(&oid), v);
    }
    Ok(dn)
}

/// An alternative name rcgen can write, or `None`.
fn alt_name(name: &GeneralName<'_>) -> Option<SanType> {
    match name {
        GeneralName::DNSName(s) => (*s).try_into().ok().map(SanType::DnsName),
        GeneralName::RFC822Name(s) => (*s).try_into().ok().map(SanType::Rfc822Name),
        GeneralName::URI(s) => (*s).try_into().ok().map(SanType::URI),
        GeneralName::IPAddress(b) => match b.len() {
            4 => Some(SanType::IpAddress(IpAddr::from(
                <[u8; 4]>::try_from(*b).ok()?,
            ))),
            16 => Some(SanType::IpAddress(IpAddr::from(
                <[u8; 16]>::try_from(*b).ok()?,
            ))),
            _ => None,
        },
        _ => None,
    }
}

/// A requested extension for the operator: `basicConstraints CA:FALSE (2.5.29.19,
/// critical)`.
fn describe_extension(ext: &X509Extension<'_>) -> String {
    use x509_parser::objects::{oid_registry, oid2sn};
    let mut s = oid2sn(&ext.oid, oid_registry())
        .map(str::to_owned)
        .unwrap_or_default();
    if let ParsedExtension::BasicConstraints(bc) = ext.parsed_extension() {
        s.push_str(if bc.ca { " CA:TRUE" } else { " CA:FALSE" });
    }
    let oid = &ext.oid;
    match (s.is_empty(), ext.critical) {
        (true, false) => format!("extension {oid}"),
        (true, true) => format!("extension {oid} (critical)"),
        (false, false) => format!("{s} ({oid})"),
        (false, true) => format!("{s} ({oid}, critical)"),
    }
}

/// An OID's short name and dotted form (`challengePassword (1.2.840.113549.1.9.7)`), or
/// the dotted form alone.
fn oid_name(oid: &Oid<'_>) -> String {
    use x509_parser::objects::{oid_registry, oid2sn};
    match oid2sn(oid, oid_registry()) {
        Ok(sn) => format!("{sn} ({oid})"),
        Err(_) => oid.to_id_string(),
    }
}

/// Issues a certificate and key for the server, for these DNS names and IP addresses.
pub fn server_cert(ca: &Ca, dns: &[String], ips: &[IpAddr], days: u32) -> anyhow::Result<Issued> {
    if dns.is_empty() && ips.is_empty() {
        bail!("give at least one --dns name or --ip address");
    }
    let key = KeyPair::generate().context("key generation")?;
    let mut params = CertificateParams::default();
    for d in dns {
        params.subject_alt_names.push(SanType::DnsName(
            d.clone()
                .try_into()
                .map_err(|e| anyhow!("DNS name {d}: {e}"))?,
        ));
    }
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let cn = dns.first().cloned().unwrap_or_else(|| ips[0].to_string());
    params.distinguished_name.push(DnType::CommonName, cn);
    let purpose = Purpose {
        key_usages: vec![KeyUsagePurpose::DigitalSignature],
        extended: ExtendedKeyUsagePurpose::ServerAuth,
    };
    let mut issued = end_entity(ca, params, purpose, days, &key)?;
    issued.key_pem = Some(key.serialize_pem());
    Ok(issued)
}

/// Issues a client certificate and key with common name `cn` (for simulations and
/// clients that do not bring a CSR).
pub fn client_cert(ca: &Ca, cn: &str, days: u32) -> anyhow::Result<Issued> {
    let key = KeyPair::generate().context("key generation")?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    let purpose = Purpose {
        key_usages: vec![KeyUsagePurpose::DigitalSignature],
        extended: ExtendedKeyUsagePurpose::ClientAuth,
    };
    let mut issued = end_entity(ca, params, purpose, days, &key)?;
    issued.key_pem = Some(key.serialize_pem());
    Ok(issued)
}

/// `switchboard ca ...`
#[derive(Subcommand)]
pub enum CaCommand {
    /// Create the CA: a key (0600) and a self-signed certificate.
    Init {
        /// Where the CA lives.
        #[arg(long, default_value = "data/ca")]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "switchboard CA")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace an existing CA (certificates it signed stop verifying).
        #[arg(long)]
        force: bool,
    },
    /// Sign a provider's certificate signing request into a client certificate. The
    /// certificate is always an end-entity certificate for client authentication: the
    /// extensions the CSR requests are ignored (and listed).
    SignCsr {
        /// The CSR file (PEM or DER) the provider sent.
        csr: PathBuf,
        /// Where to write the certificate to send back.
        #[arg(long)]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Where the CA lives.
        #[arg(long, default_value = "data/ca")]
        dir: PathBuf,
    },
    /// Issue a client certificate and key (for `switchboard simulate` or a client that
    /// brings no CSR).
    IssueClient {
        /// The certificate's common name.
        #[arg(long)]
        name: String,
        /// Where to write the certificate.
        #[arg(long)]
        out_cert: PathBuf,
        /// Where to write the key (mode 0600).
        #[arg(long)]
        out_key: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Where the CA lives.
        #[arg(long, default_value = "data/ca")]
        dir: PathBuf,
    },
}

/// `switchboard tls ...`
#[derive(Subcommand)]
pub enum TlsCommand {
    /// Issue switchboard's own server certificate, signed by the CA.
    ServerCert {
        /// A DNS name the certificate is valid for (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// An IP address the certificate is valid for (repeatable).
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// Where to write the certificate.
        #[arg(long, default_value = "data/tls/server.crt")]
        out_cert: PathBuf,
        /// Where to write the key (mode 0600).
        #[arg(long, default_value = "data/tls/server.key")]
        out_key: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 397)]
        days: u32,
        /// Where the CA lives.
        #[arg(long, default_value = "data/ca")]
        dir: PathBuf,
    },
}

/// `switchboard keys ...`
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Generate an RSA key pair for JWE: the private key (0600) and `<out>.pub` (public).
    Generate {
        /// Key size in bits (at least 2048).
        #[arg(long, default_value_t = 4096)]
        bits: u32,
        /// Where to write the private key.
        #[arg(long, default_value = "data/keys/jwe.pem")]
        out: PathBuf,
    },
}

fn print_identity(what: &str, path: &Path, issued: &Issued) {
    out!("{what} written to {}", path.display());
    out!("  subject  {}", issued.identity.subject);
    out!("  sha256   {}", issued.identity.sha256);
}

/// Runs `switchboard ca ...`.
pub fn ca(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init {
            dir,
            name,
            days,
            force,
        } => {
            let (cert, key) = ca_init(&dir, &name, days, force)?;
            out!("CA certificate written to {}", cert.display());
            out!("CA key written to {} (mode 0600)", key.display());
            out!("Use the certificate as `tls.client_ca` of a mutual-TLS listener.");
        }
        CaCommand::SignCsr {
            csr,
            out,
            days,
            dir,
        } => {
            let ca = load_ca(&dir)?;
            let bytes =
                std::fs::read(&csr).with_context(|| format!("cannot read {}", csr.display()))?;
            let issued = sign_csr(&ca, &bytes, days)
                .with_context(|| format!("cannot sign {}", csr.display()))?;
            write_pair(&out, &issued.cert_pem, None)?;
            print_identity("Client certificate", &out, &issued);
            for what in &issued.ignored {
                out!("  ignored  {what}");
            }
            if !issued.ignored.is_empty() {
                out!(
                    "The CSR's requested extensions were ignored: the certificate is an end-entity certificate for client authentication."
                );
            }
            out!(
                "Send it back to the provider; pin it with `pin_sha256` or `pin_subject` if you like."
            );
        }
        CaCommand::IssueClient {
            name,
            out_cert,
            out_key,
            days,
            dir,
        } => {
            let issued = client_cert(&load_ca(&dir)?, &name, days)?;
            let key = issued.key_pem.as_deref().unwrap_or_default();
            write_pair(&out_cert, &issued.cert_pem, Some((&out_key, key)))?;
            print_identity("Client certificate", &out_cert, &issued);
            out!("Key written to {} (mode 0600)", out_key.display());
        }
    }
    Ok(())
}

/// Runs `switchboard tls ...`.
pub fn tls(cmd: TlsCommand) -> anyhow::Result<()> {
    match cmd {
        TlsCommand::ServerCert {
            dns,
            ip,
            out_cert,
            out_key,
            days,
            dir,
        } => {
            let issued = server_cert(&load_ca(&dir)?, &dns, &ip, days)?;
            let key = issued.key_pem.as_deref().unwrap_or_default();
            write_pair(&out_cert, &issued.cert_pem, Some((&out_key, key)))?;
            print_identity("Server certificate", &out_cert, &issued);
            out!("Key written to {} (mode 0600)", out_key.display());
        }
    }
    Ok(())
}

/// Runs `switchboard keys ...`.
pub fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Generate { bits, out } => {
            let (private, public) = jwe::generate(bits)?;
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            write_private(&out, private.as_bytes())
                .with_context(|| format!("cannot write {}", out.display()))?;
            let public_path = PathBuf::from(format!("{}.pub", out.display()));
            std::fs::write(&public_path, public)
                .with_context(|| format!("cannot write {}", public_path.display()))?;
            out!(
                "RSA-{bits} private key written to {} (mode 0600)",
                out.display()
            );
            out!("public key written to {}", public_path.display());
            out!(
                "Configure it as [[providers.verestro.jwe_keys]] private_key = \"file:{}\"",
                out.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CSR made by rcgen for a fresh key, requesting `params`' extensions.
    fn csr(params: CertificateParams) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        params
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
            .into_bytes()
    }

    fn parse(pem_text: &str) -> Vec<u8> {
        pem::parse(pem_text).unwrap().into_contents()
    }

    /// The basicConstraints extension's value as written, if any.
    fn basic_constraints(der: &[u8]) -> Option<Vec<u8>> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        cert.extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "2.5.29.19")
            .map(|e| e.value.to_vec())
    }

    #[test]
    fn a_ca_signs_server_and_client_certificates() {
        let dir = tempfile::tempdir().unwrap();
        ca_init(dir.path(), "test CA", 30, false).unwrap();
        assert!(
            ca_init(dir.path(), "again", 30, false).is_err(),
            "no silent overwrite"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(CA_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let ca = load_ca(dir.path()).unwrap();
        let s = server_cert(
            &ca,
            &["localhost".into()],
            &["127.0.0.1".parse().unwrap()],
            30,
        )
        .unwrap();
        assert_eq!(s.identity.subject, "CN=localhost");
        assert!(s.identity.issuer.contains("CN=test CA"));
        let c = client_cert(&ca, "sim", 30).unwrap();
        assert_eq!(c.identity.subject, "CN=sim");
        assert_eq!(c.identity.sha256.len(), 64);
        assert!(sign_csr(&ca, b"not a csr", 30).is_err());
        // End entities: basicConstraints is the empty SEQUENCE (cA FALSE by default, not
        // encoded); the CA's says cA TRUE, pathLen 0.
        for der in [parse(&s.cert_pem), parse(&c.cert_pem)] {
            assert_eq!(basic_constraints(&der).unwrap(), [0x30, 0x00]);
        }
        assert_eq!(
            basic_constraints(&parse(
                &std::fs::read_to_string(dir.path().join(CA_CERT)).unwrap()
            ))
            .unwrap(),
            [0x30, 0x06, 0x01, 0x01, 0xff, 0x02, 0x01, 0x00]
        );
    }

    #[test]
    fn a_csr_gets_a_client_certificate_whatever_it_requests() {
        let dir = tempfile::tempdir().unwrap();
        ca_init(dir.path(), "test CA", 30, false).unwrap();
        let ca = load_ca(dir.path()).unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CountryName, "PL");
        p.distinguished_name
            .push(DnType::OrganizationName, "Verestro");
        p.distinguished_name.push(DnType::CommonName, "verestro");
        p.subject_alt_names.push(SanType::DnsName(
            "hooks.verestro.example".try_into().unwrap(),
        ));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.custom_extensions = vec![CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 55555, 1],
            vec![0x05, 0x00],
        )];
        let issued = sign_csr(&ca, &csr(p), 30).unwrap();
        assert_eq!(issued.identity.subject, "C=PL, O=Verestro, CN=verestro");
        let ignored = issued.ignored.join("\n");
        assert!(ignored.contains("keyUsage"), "{ignored}");
        assert!(ignored.contains("extendedKeyUsage"), "{ignored}");
        assert!(ignored.contains("1.3.6.1.4.1.55555.1"), "{ignored}");
        let der = parse(&issued.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(san.general_names.len(), 1);
        assert!(
            cert.extensions()
                .iter()
                .all(|e| e.oid.to_id_string() != "1.3.6.1.4.1.55555.1")
        );
    }

    #[test]
    fn a_subject_that_cannot_be_copied_exactly_is_refused_with_the_reason() {
        // rcgen's names hold one value per attribute type: `OU=a, OU=b` cannot be copied.
        // SEQUENCE { SET { SEQUENCE { OU UTF8 "a" } } SET { SEQUENCE { OU UTF8 "b" } } }
        let ou = |v: u8| {
            [
                0x31, 0x0a, 0x30, 0x08, 0x06, 0x03, 0x55, 0x04, 0x0b, 0x0c, 0x01, v,
            ]
        };
        let mut name = vec![0x30, 24];
        name.extend(ou(b'a'));
        name.extend(ou(b'b'));
        let (_, parsed) = X509Name::from_der(&name).unwrap();
        let e = subject(&parsed).unwrap_err().to_string();
        assert!(e.contains("repeats") && e.contains("OU=a"), "{e}");
    }
}
