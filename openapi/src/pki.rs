//! switchboard's own small CA: it signs the CSR a provider sends (Verestro's onboarding
//! asks the integrator to do exactly that), issues the server's certificate, and issues
//! client certificates for simulations. Keys are written with mode 0600.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use switchboard_core::{fsutil::write_private, peer::PeerIdentity};
use time::{Duration, OffsetDateTime};

use crate::{Error, Result};

/// File name of the CA certificate in the CA directory.
pub const CA_CERT: &str = "ca.crt";
/// File name of the CA key in the CA directory.
pub const CA_KEY: &str = "ca.key";

fn err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("{what}: {e}"))
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // An hour of slack for clocks that are a little behind.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
    let mut serial = [0u8; 16];
    rand::rng().fill_bytes(&mut serial);
    serial[0] &= 0x7f; // positive
    params.serial_number = Some(SerialNumber::from_slice(&serial));
}

/// Writes a certificate (0644) and, if given, its key (0600).
pub fn write_pair(cert: &Path, cert_pem: &str, key: Option<(&Path, &str)>) -> Result<()> {
    for p in [Some(cert), key.map(|k| k.0)].into_iter().flatten() {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(&dir.display().to_string(), e))?;
        }
    }
    if let Some((path, pem)) = key {
        write_private(path, pem.as_bytes()).map_err(|e| err(&path.display().to_string(), e))?;
    }
    std::fs::write(cert, cert_pem).map_err(|e| err(&cert.display().to_string(), e))
}

/// A CA loaded from its directory.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub cert_pem: String,
}

/// Creates a CA key and a self-signed CA certificate in `dir`. Refuses to overwrite an
/// existing CA unless `force`.
pub fn ca_init(dir: &Path, name: &str, days: u32, force: bool) -> Result<(PathBuf, PathBuf)> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if !force && (cert_path.exists() || key_path.exists()) {
        return Err(Error::Config(format!(
            "{} already holds a CA; pass --force to replace it (certificates it signed will no longer verify)",
            dir.display()
        )));
    }
    let key = KeyPair::generate().map_err(|e| err("key generation", e))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "switchboard");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    let cert = params
        .self_signed(&key)
        .map_err(|e| err("CA certificate", e))?;
    write_pair(
        &cert_path,
        &cert.pem(),
        Some((&key_path, &key.serialize_pem())),
    )?;
    Ok((cert_path, key_path))
}

/// Loads the CA of `dir`.
pub fn load_ca(dir: &Path) -> Result<Ca> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).map_err(|e| {
            err(
                &p.display().to_string(),
                format!("{e} (create a CA with `switchboard ca init`)"),
            )
        })
    };
    let cert_pem = read(CA_CERT)?;
    let key = KeyPair::from_pem(&read(CA_KEY)?).map_err(|e| err(CA_KEY, e))?;
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| err(CA_CERT, e))?;
    Ok(Ca { issuer, cert_pem })
}

/// A certificate just issued.
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its key, PEM, when switchboard generated it.
    pub key_pem: Option<String>,
    /// Subject and fingerprint, to pin.
    pub identity: PeerIdentity,
}

fn issued(cert: rcgen::Certificate, key_pem: Option<String>) -> Issued {
    Issued {
        identity: crate::tls::identity(cert.der()),
        cert_pem: cert.pem(),
        key_pem,
    }
}

/// Makes `params` an end-entity certificate for `purpose` with `key_usages`, valid for
/// `days`, and signs it, for `public_key`, with the CA.
fn sign_leaf(
    ca: &Ca,
    mut params: CertificateParams,
    key_usages: Vec<KeyUsagePurpose>,
    purpose: ExtendedKeyUsagePurpose,
    days: u32,
    public_key: &impl rcgen::PublicKeyData,
) -> Result<rcgen::Certificate> {
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = key_usages;
    params.extended_key_usages = vec![purpose];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    params
        .signed_by(public_key, &ca.issuer)
        .map_err(|e| err("signing", e))
}

/// Signs a provider's CSR into a client certificate valid for `days`. Only the CSR's
/// subject, public key and alternative names are taken: the certificate is always an
/// end-entity certificate for client authentication, whatever the CSR asks for.
pub fn sign_csr(ca: &Ca, csr_pem: &str, days: u32) -> Result<Issued> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
        err(
            "the CSR cannot be used (not PEM, an invalid signature, or an unsupported extension)",
            e,
        )
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = csr.params.distinguished_name.clone();
    params.subject_alt_names = csr.params.subject_alt_names.clone();
    let cert = sign_leaf(
        ca,
        params,
        vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ],
        ExtendedKeyUsagePurpose::ClientAuth,
        days,
        &csr.public_key,
    )?;
    Ok(issued(cert, None))
}

/// Issues a certificate and key for the server, for these DNS names and IP addresses.
pub fn server_cert(ca: &Ca, dns: &[String], ips: &[IpAddr], days: u32) -> Result<Issued> {
    if dns.is_empty() && ips.is_empty() {
        return Err(Error::Config(
            "give at least one --dns name or --ip address".into(),
        ));
    }
    let key = KeyPair::generate().map_err(|e| err("key generation", e))?;
    let mut params = CertificateParams::default();
    for d in dns {
        params.subject_alt_names.push(SanType::DnsName(
            d.clone()
                .try_into()
                .map_err(|e| err(&format!("DNS name {d}"), e))?,
        ));
    }
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let cn = dns.first().cloned().unwrap_or_else(|| ips[0].to_string());
    params.distinguished_name.push(DnType::CommonName, cn);
    let cert = sign_leaf(
        ca,
        params,
        vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ],
        ExtendedKeyUsagePurpose::ServerAuth,
        days,
        &key,
    )?;
    Ok(issued(cert, Some(key.serialize_pem())))
}

/// Issues a client certificate and key with common name `cn` (for simulations and
/// clients that do not bring a CSR).
pub fn client_cert(ca: &Ca, cn: &str, days: u32) -> Result<Issued> {
    let key = KeyPair::generate().map_err(|e| err("key generation", e))?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    let cert = sign_leaf(
        ca,
        params,
        vec![KeyUsagePurpose::DigitalSignature],
        ExtendedKeyUsagePurpose::ClientAuth,
        days,
        &key,
    )?;
    Ok(issued(cert, Some(key.serialize_pem())))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(sign_csr(&ca, "not a csr", 30).is_err());
    }
}
