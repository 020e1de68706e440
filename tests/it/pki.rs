//! Certificates and keys for the mutual-TLS tests, and the tests of the built-in CA.
//! switchboard's own commands make the CA, the server certificate and the JWE key, as an
//! operator would; the provider's key and CSR, and a foreign CA, come from the `openssl`
//! CLI and Java's `keytool`, independently of switchboard; Python `cryptography`, a strict
//! DER parser, reads what switchboard issued.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::support::*;

pub struct Pki {
    pub dir: PathBuf,
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

/// The same run, expecting failure: exit code 1 and the message on stderr.
pub fn switchboard_fails(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("SWITCHBOARD_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Each certificate as Python `cryptography` reads it (`tests/tools/x509_strict.py`): its
/// parser is strict DER and refuses encoded defaults, which `openssl` and rustls accept.
pub fn strict_x509(dir: &Path, files: &[&str]) -> Vec<serde_json::Value> {
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/x509_strict.py");
    let out = Command::new("python3")
        .arg(&tool)
        .args(files)
        .current_dir(dir)
        .output()
        .expect("python3 is needed for the certificate tests");
    assert!(
        out.status.success(),
        "a strict DER parser refuses a certificate (is `cryptography` installed? `pip install cryptography`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A Java keystore with a fresh RSA key, and the CSR `keytool -certreq` makes for it, as a
/// Java integrator (Verestro's documents point to Java) would send it: `keytool.csr`, with
/// the key exported to `keytool.key` for the test's own client.
fn keytool_csr(dir: &Path, dname: &str) {
    let keytool = |args: &[&str]| {
        run(Command::new("keytool")
            .args(args)
            .args(["-keystore", "keytool.p12", "-storetype", "PKCS12"])
            .args(["-storepass", "changeit"])
            .current_dir(dir))
    };
    keytool(&[
        "-genkeypair",
        "-alias",
        "verestro",
        "-keyalg",
        "RSA",
        "-keysize",
        "2048",
        "-validity",
        "30",
        "-dname",
        dname,
    ]);
    keytool(&["-certreq", "-alias", "verestro", "-file", "keytool.csr"]);
    openssl(
        dir,
        &[
            "pkcs12",
            "-in",
            "keytool.p12",
            "-nocerts",
            "-nodes",
            "-passin",
            "pass:changeit",
            "-out",
            "keytool-bags.pem",
        ],
    );
    openssl(
        dir,
        &["pkey", "-in", "keytool-bags.pem", "-out", "keytool.key"],
    );
}

/// An `openssl req` CSR for a new P-256 key that requests what integrators' tooling often
/// adds: a subject key identifier, basicConstraints (critical), a certificate policy, a
/// private critical extension, key usages and EKUs for another purpose, and alternative
/// names switchboard can and cannot copy.
fn openssl_csr_with_extensions(dir: &Path, name: &str, basic: &str) {
    std::fs::write(
        dir.join(format!("{name}.cnf")),
        format!(
            "[req]\ndistinguished_name = dn\nreq_extensions = ext\n[dn]\n[ext]\n\
             subjectKeyIdentifier = hash\n\
             basicConstraints = {basic}\n\
             certificatePolicies = 1.2.616.1.113527.2.5.1.1\n\
             1.3.6.1.4.1.55555.7 = critical,ASN1:UTF8String:verestro\n\
             keyUsage = keyCertSign, cRLSign\n\
             extendedKeyUsage = serverAuth, codeSigning\n\
             subjectAltName = DNS:notifications.verestro.example, IP:10.1.2.3, otherName:1.2.3.4;UTF8:x\n"
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            "/C=PL/ST=Mazowieckie/O=Verestro S.A./OU=Notifications/CN=verestro-openssl",
            "-config",
            &format!("{name}.cnf"),
        ],
    );
}

fn sign(dir: &Path, name: &str) -> String {
    switchboard(
        dir,
        &[
            "ca",
            "sign-csr",
            &format!("{name}.csr"),
            "--dir",
            "ca",
            "--out",
            &format!("{name}.crt"),
        ],
    )
}

/// The `sha256` line `sign-csr` printed.
fn printed_fingerprint(out: &str) -> String {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("sha256"))
        .unwrap()
        .trim()
        .to_owned()
}

/// A Verestro OTP notification (plaintext; encryption is not what these tests are about).
const OTP: &str = r#"{"storageCustomerId": "1337", "storageCardId": "1337", "balanceId": "b334b384-328c-11ed-a261-0242ac120002", "amount": "1000", "currency": "PLN", "merchantName": "merchant test", "otp": "482913"}"#;

#[tokio::test]
async fn csrs_from_keytool_and_with_any_extensions_are_signed_and_pass_mutual_tls() {
    let dir = Dir::new();
    let pki = Pki::new(dir.path());
    let d = &pki.dir;

    // Java's keytool always requests a subjectKeyIdentifier.
    keytool_csr(d, "CN=verestro-keytool, OU=Notifications, O=Verestro, C=PL");
    let out = sign(d, "keytool");
    assert!(out.contains("ignored  subjectKeyIdentifier"), "{out}");
    assert!(
        out.contains("subject  C=PL, O=Verestro, OU=Notifications, CN=verestro-keytool"),
        "{out}"
    );
    let keytool_sha = printed_fingerprint(&out);
    assert_eq!(keytool_sha, pki.fingerprint("keytool.crt"));
    // Java itself accepts the answer: the certificate installs as the reply to its CSR,
    // chained to our CA.
    for args in [
        [
            "-importcert",
            "-alias",
            "switchboard-ca",
            "-file",
            "ca/ca.crt",
        ],
        ["-importcert", "-alias", "verestro", "-file", "keytool.crt"],
    ] {
        run(Command::new("keytool")
            .args(args)
            .args([
                "-keystore",
                "keytool.p12",
                "-storepass",
                "changeit",
                "-noprompt",
            ])
            .current_dir(d));
    }
    let list = run(Command::new("keytool")
        .args([
            "-list",
            "-v",
            "-alias",
            "verestro",
            "-keystore",
            "keytool.p12",
        ])
        .args(["-storepass", "changeit"])
        .current_dir(d));
    assert!(list.contains("Certificate chain length: 2"), "{list}");

    // openssl CSRs asking for everything an end entity should not have, CA:FALSE and
    // CA:TRUE alike.
    openssl_csr_with_extensions(d, "ext-false", "critical, CA:FALSE");
    openssl_csr_with_extensions(d, "ext-true", "critical, CA:TRUE, pathlen:3");
    let out = sign(d, "ext-false");
    for ignored in [
        "subjectKeyIdentifier (2.5.29.14)",
        "basicConstraints CA:FALSE (2.5.29.19, critical)",
        "certificatePolicies (2.5.29.32)",
        "extension 1.3.6.1.4.1.55555.7 (critical)",
        "keyUsage (2.5.29.15",
        "extendedKeyUsage (2.5.29.37",
        "subjectAltName OtherName",
    ] {
        assert!(
            out.contains(&format!("ignored  {ignored}")),
            "{ignored}: {out}"
        );
    }
    let out = sign(d, "ext-true");
    assert!(out.contains("ignored  basicConstraints CA:TRUE"), "{out}");

    // What was issued, as a strict parser sees it: end-entity client certificates with
    // nothing of what the CSRs asked for but the subject and the names.
    let ca = &strict_x509(d, &["ca/ca.crt"])[0];
    for (c, subject) in strict_x509(d, &["keytool.crt", "ext-false.crt", "ext-true.crt"])
        .iter()
        .zip([
            "CN=verestro-keytool,OU=Notifications,O=Verestro,C=PL",
            "CN=verestro-openssl,OU=Notifications,O=Verestro S.A.,ST=Mazowieckie,C=PL",
            "CN=verestro-openssl,OU=Notifications,O=Verestro S.A.,ST=Mazowieckie,C=PL",
        ])
    {
        assert_eq!(c["subject"], subject);
        assert_eq!(c["ca"], false, "{c}");
        assert_eq!(c["eku"], serde_json::json!(["clientAuth"]), "{c}");
        assert_eq!(c["aki"], ca["ski"], "{c}");
        assert!(
            !c["extensions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e == "2.5.29.32" || e == "1.3.6.1.4.1.55555.7"),
            "{c}"
        );
        assert!(
            !c["key_usage"]
                .as_array()
                .unwrap()
                .iter()
                .any(|u| u == "key_cert_sign"),
            "{c}"
        );
    }
    let ext = &strict_x509(d, &["ext-false.crt"])[0];
    assert_eq!(
        ext["san"],
        serde_json::json!(["notifications.verestro.example", "10.1.2.3"])
    );
    assert_eq!(
        ext["key_usage"],
        serde_json::json!(["digital_signature"]),
        "an EC key does not encipher"
    );
    let rsa = &strict_x509(d, &["keytool.crt"])[0];
    assert_eq!(
        rsa["key_usage"],
        serde_json::json!(["digital_signature", "key_encipherment"])
    );

    // A CA:TRUE certificate would let its holder sign clients of its own: make sure the
    // one issued cannot.
    openssl(
        d,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "sub.key",
            "-out",
            "sub.csr",
            "-subj",
            "/CN=sub-client",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "sub.csr",
            "-CA",
            "ext-true.crt",
            "-CAkey",
            "ext-true.key",
            "-CAcreateserial",
            "-out",
            "sub.crt",
            "-days",
            "2",
            "-extfile",
            "client.ext",
        ],
    );
    let mut chain = std::fs::read(d.join("sub.crt")).unwrap();
    chain.extend(std::fs::read(d.join("ext-true.crt")).unwrap());
    std::fs::write(d.join("sub-chain.crt"), chain).unwrap();

    // Each certificate passes a real mutual-TLS request to the Verestro listener, as the
    // subject it was issued to; the fingerprint sign-csr printed is the one to pin.
    let pins = format!(
        "pin_sha256 = [\"{keytool_sha}\", \"{}\"]",
        pki.fingerprint("ext-false.crt")
    );
    let s = verestro_server(dir.clone(), &pki, &pins, "");
    for (name, cn) in [
        ("keytool", "CN=verestro-keytool"),
        ("ext-false", "CN=verestro-openssl"),
    ] {
        let r = pki
            .client(Some((&format!("{name}.crt"), &format!("{name}.key"))))
            .post(s.verestro_url("/notifications/otp"))
            .header("x-idempotency-key", uuid::Uuid::new_v4().to_string())
            .body(OTP)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{name}");
        let evs = events(&client(), &s, "provider=verestro").await;
        assert!(
            evs[0]["meta"]["client_subject"]
                .as_str()
                .unwrap()
                .contains(cn),
            "{}",
            evs[0]
        );
    }
    // Not pinned: the handshake passes (our CA), the pin refuses.
    let r = pki
        .client(Some(("ext-true.crt", "ext-true.key")))
        .post(s.verestro_url("/notifications/otp"))
        .body(OTP)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // And a client certificate signed with it, sent with it as the intermediate, fails
    // the handshake.
    let sub = pki
        .client(Some(("sub-chain.crt", "sub.key")))
        .post(s.verestro_url("/notifications/otp"))
        .body(OTP)
        .send()
        .await;
    assert!(sub.is_err(), "{sub:?}");
    until_logged(&s, "EndEntityUsedAsCa").await;
}

/// Waits until the server's log contains `text` (the log is written asynchronously).
pub async fn until_logged(s: &Server, text: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !s.logs().contains(text) {
        assert!(
            std::time::Instant::now() < deadline,
            "`{text}` never appeared in the log:\n{}",
            s.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[test]
fn every_certificate_switchboard_issues_is_strict_der() {
    let dir = Dir::new();
    let pki = Pki::new(dir.path());
    let d = &pki.dir;
    switchboard(
        d,
        &[
            "ca",
            "issue-client",
            "--dir",
            "ca",
            "--name",
            "sim",
            "--out-cert",
            "sim.crt",
            "--out-key",
            "sim.key",
        ],
    );
    switchboard(d, &["init", "installation"]);
    let all = strict_x509(
        d,
        &[
            "ca/ca.crt",
            "installation/data/ca/ca.crt",
            "server.crt",
            "installation/data/tls/server.crt",
            "provider.crt",
            "sim.crt",
        ],
    );
    let (cas, leaves) = all.split_at(2);
    for ca in cas {
        assert_eq!(ca["ca"], true, "{ca}");
        assert_eq!(ca["path_length"], 0, "{ca}");
        assert_eq!(ca["basic_constraints_critical"], true, "{ca}");
    }
    for (leaf, eku) in leaves
        .iter()
        .zip(["serverAuth", "serverAuth", "clientAuth", "clientAuth"])
    {
        assert_eq!(leaf["ca"], false, "{leaf}");
        assert_eq!(leaf["path_length"], serde_json::Value::Null, "{leaf}");
        assert_eq!(leaf["eku"], serde_json::json!([eku]), "{leaf}");
        assert!(
            leaf["ski"].as_str().is_some_and(|s| s.len() == 40),
            "{leaf}"
        );
        assert!(leaf["serial_bits"].as_u64().unwrap() > 64, "{leaf}");
    }
    assert_eq!(leaves[0]["aki"], cas[0]["ski"]);
    assert_eq!(leaves[1]["aki"], cas[1]["ski"]);
    assert_eq!(
        leaves[0]["san"],
        serde_json::json!(["localhost", "127.0.0.1"])
    );
}

#[test]
fn a_csr_that_is_not_one_or_not_signed_by_its_key_is_refused_with_the_reason() {
    let dir = Dir::new();
    let pki = Pki::new(dir.path());
    let d = &pki.dir;
    std::fs::write(d.join("junk.csr"), "hello").unwrap();
    let e = switchboard_fails(
        d,
        &[
            "ca", "sign-csr", "junk.csr", "--dir", "ca", "--out", "junk.crt",
        ],
    );
    assert!(
        e.contains("junk.csr") && e.contains("cannot be parsed"),
        "{e}"
    );
    // One bit of the signature flipped.
    openssl(
        d,
        &[
            "req",
            "-in",
            "provider.csr",
            "-outform",
            "DER",
            "-out",
            "provider.der",
        ],
    );
    let mut der = std::fs::read(d.join("provider.der")).unwrap();
    let last = der.len() - 1;
    der[last] ^= 1;
    std::fs::write(d.join("forged.der"), &der).unwrap();
    let e = switchboard_fails(
        d,
        &[
            "ca",
            "sign-csr",
            "forged.der",
            "--dir",
            "ca",
            "--out",
            "forged.crt",
        ],
    );
    assert!(e.contains("signature does not verify"), "{e}");
    assert!(!d.join("forged.crt").exists());
    // The same CSR as DER, untouched, is fine.
    let out = switchboard(
        d,
        &[
            "ca",
            "sign-csr",
            "provider.der",
            "--dir",
            "ca",
            "--out",
            "der.crt",
        ],
    );
    assert!(out.contains("CN=verestro-notifications"), "{out}");
}
