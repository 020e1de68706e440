//! `switchboard ca ...`, `switchboard tls ...`, `switchboard keys ...`: onboarding a
//! provider that authenticates with certificates (Verestro) and encrypts with JWE.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Context;
use clap::Subcommand;
use switchboard_core::fsutil::write_private;
use switchboard_openapi::pki;
use switchboard_plugins::providers::verestro::jwe;

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
    /// Sign a provider's certificate signing request into a client certificate.
    SignCsr {
        /// The CSR file (PEM) the provider sent.
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

fn print_identity(what: &str, path: &Path, issued: &pki::Issued) {
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
            let (cert, key) = pki::ca_init(&dir, &name, days, force)?;
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
            let ca = pki::load_ca(&dir)?;
            let pem = std::fs::read_to_string(&csr)
                .with_context(|| format!("cannot read {}", csr.display()))?;
            let issued = pki::sign_csr(&ca, &pem, days)?;
            pki::write_pair(&out, &issued.cert_pem, None)?;
            print_identity("Client certificate", &out, &issued);
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
            let ca = pki::load_ca(&dir)?;
            let issued = pki::client_cert(&ca, &name, days)?;
            let key = issued.key_pem.clone().unwrap_or_default();
            pki::write_pair(&out_cert, &issued.cert_pem, Some((&out_key, &key)))?;
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
            let ca = pki::load_ca(&dir)?;
            let issued = pki::server_cert(&ca, &dns, &ip, days)?;
            let key = issued.key_pem.clone().unwrap_or_default();
            pki::write_pair(&out_cert, &issued.cert_pem, Some((&out_key, &key)))?;
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
