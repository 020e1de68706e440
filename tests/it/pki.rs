//! Certificates and keys for the mutual-TLS tests. switchboard's own commands make the CA,
//! the server certificate and the JWE key, as an operator would; the provider's key and
//! CSR, and a foreign CA, come from the `openssl` CLI, independently of switchboard.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::support::*;

pub struct Pki {
    pub dir: PathBuf,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn switchboard(dir: &Path, args: &[&str]) -> String {
    run(Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("SWITCHBOARD_CONFIG"))
}

pub fn openssl(dir: &Path, args: &[&str]) -> String {
    run(Command::new("openssl").args(args).current_dir(dir))
}

impl Pki {
    /// A CA, a server certificate for 127.0.0.1, a provider certificate from an `openssl`
    /// CSR signed by `ca sign-csr`, a foreign CA with its own client, and a JWE key.
    pub fn new(dir: &Path) -> Pki {
        let d = dir.join("pki");
        std::fs::create_dir_all(&d).unwrap();
        switchboard(&d, &["ca", "init", "--dir", "ca"]);
        switchboard(
            &d,
            &[
                "tls",
                "server-cert",
                "--dir",
                "ca",
                "--ip",
                "127.0.0.1",
                "--dns",
                "localhost",
                "--out-cert",
                "server.crt",
                "--out-key",
                "server.key",
            ],
        );
        // The provider's side: its own key and CSR.
        openssl(
            &d,
            &[
                "req",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "provider.key",
                "-out",
                "provider.csr",
                "-subj",
                "/C=PL/O=Verestro/CN=verestro-notifications",
            ],
        );
        let signed = switchboard(
            &d,
            &[
                "ca",
                "sign-csr",
                "provider.csr",
                "--dir",
                "ca",
                "--out",
                "provider.crt",
                "--days",
                "30",
            ],
        );
        assert!(signed.contains("sha256"), "{signed}");
        // Somebody else's CA and client.
        openssl(
            &d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "foreign-ca.key",
                "-out",
                "foreign-ca.crt",
                "-subj",
                "/CN=foreign CA",
                "-days",
                "2",
            ],
        );
        openssl(
            &d,
            &[
                "req",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "intruder.key",
                "-out",
                "intruder.csr",
                "-subj",
                "/CN=verestro-notifications",
            ],
        );
        std::fs::write(
            d.join("client.ext"),
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        openssl(
            &d,
            &[
                "x509",
                "-req",
                "-in",
                "intruder.csr",
                "-CA",
                "foreign-ca.crt",
                "-CAkey",
                "foreign-ca.key",
                "-CAcreateserial",
                "-out",
                "intruder.crt",
                "-days",
                "2",
                "-extfile",
                "client.ext",
            ],
        );
        switchboard(
            &d,
            &["keys", "generate", "--bits", "2048", "--out", "jwe.pem"],
        );
        Pki { dir: d }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The SHA-256 fingerprint of a certificate, computed by `openssl`.
    pub fn fingerprint(&self, cert: &str) -> String {
        let out = openssl(
            &self.dir,
            &["x509", "-in", cert, "-noout", "-fingerprint", "-sha256"],
        );
        out.trim()
            .rsplit('=')
            .next()
            .unwrap()
            .replace(':', "")
            .to_ascii_lowercase()
    }

    /// The `[listeners.verestro]` and `[providers.verestro]` tables, plus `extra` lines for
    /// `[providers.verestro]`.
    pub fn config(&self, verestro_extra: &str) -> String {
        self.config_with_ca(&self.path("ca/ca.crt"), verestro_extra)
    }

    /// Like [`Pki::config`], with another file as the listener's client CA.
    pub fn config_with_ca(&self, client_ca: &str, verestro_extra: &str) -> String {
        format!(
            r#"
[listeners.verestro]
listen = "127.0.0.1:0"
providers = ["verestro"]
tls = {{ cert = "{cert}", key = "{key}", client_ca = "{ca}", handshake_timeout = "2s" }}

[providers.verestro]
{verestro_extra}

[[providers.verestro.jwe_keys]]
private_key = "file:{jwe}"
"#,
            cert = self.path("server.crt"),
            key = self.path("server.key"),
            ca = client_ca,
            jwe = self.path("jwe.pem"),
        )
    }

    /// An HTTPS client that trusts our CA and presents `cert`/`key` (if given).
    pub fn client(&self, identity: Option<(&str, &str)>) -> reqwest::Client {
        let ca = std::fs::read(self.dir.join("ca/ca.crt")).unwrap();
        let mut b = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .timeout(std::time::Duration::from_secs(20));
        if let Some((cert, key)) = identity {
            let mut pem = std::fs::read(self.dir.join(cert)).unwrap();
            pem.extend(std::fs::read(self.dir.join(key)).unwrap());
            b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        b.build().unwrap()
    }

    /// The client Verestro would be.
    pub fn provider(&self) -> reqwest::Client {
        self.client(Some(("provider.crt", "provider.key")))
    }

    /// A JWE token made by jwcrypto (`tests/tools/jwe.py`), not by switchboard.
    pub fn jwe(&self, public_key: &str, plaintext: &[u8], args: &[&str]) -> String {
        use std::io::Write;
        let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/jwe.py");
        let mut child = Command::new("python3")
            .arg(&tool)
            .args(["--pub", public_key])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3 is needed for the JWE tests");
        child.stdin.take().unwrap().write_all(plaintext).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "jwe.py failed (is jwcrypto installed? `pip install jwcrypto`): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

/// A server with the Verestro mutual-TLS listener; `verestro_extra` goes into
/// `[providers.verestro]`, `server_extra` into `[server]`.
pub fn verestro_server(
    dir: std::sync::Arc<Dir>,
    pki: &Pki,
    verestro_extra: &str,
    server_extra: &str,
) -> Server {
    let tail = pki.config(verestro_extra);
    Server::start_in(dir, &[("tail", &tail), ("server", server_extra)])
}

impl Server {
    /// `https://127.0.0.1:<port>` of the Verestro listener, plus `path`.
    pub fn verestro_url(&self, path: &str) -> String {
        format!("https://{}{path}", self.listeners["verestro"])
    }
}
