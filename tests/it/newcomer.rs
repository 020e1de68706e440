//! What a new user does first, as the README says it: "Run it" and "Onboarding Verestro"
//! are run as written, block by block, in an empty directory, with `switchboard` on the
//! `PATH` (the binary under test) as `cargo install` would put it; and `.gitignore` keeps
//! what those commands create out of git.
//!
//! The README's fixed ports (8080, 8443) become free ones, so that the test can run beside
//! others. `cargo` lines are skipped (the binary is already built); a `switchboard serve`
//! line starts the server in the background, as the README's "leave it running" does.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use crate::{servers::free_port, support::*};

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The text of `## {name}`, up to the next `## ` heading.
fn section(readme: &str, name: &str) -> String {
    let start = readme
        .find(&format!("\n## {name}\n"))
        .unwrap_or_else(|| panic!("README has no `## {name}`"));
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    rest[..end].to_owned()
}

/// The fenced code blocks of a section: (language, text).
fn blocks(section: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = section.lines();
    while let Some(l) = lines.next() {
        if let Some(lang) = l.strip_prefix("```") {
            let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            out.push((lang.to_owned(), body.join("\n") + "\n"));
        }
    }
    out
}

/// Runs a README section in `dir`: its shell blocks and its `# switchboard.toml` file.
struct Reader {
    dir: PathBuf,
    ports: BTreeMap<&'static str, String>,
    path: String,
    servers: Vec<Child>,
    output: String,
}

impl Reader {
    fn new(dir: &Path) -> Reader {
        let bin_dir = Path::new(BIN).parent().unwrap();
        let mut ports = BTreeMap::new();
        ports.insert("127.0.0.1:8080", format!("127.0.0.1:{}", free_port()));
        ports.insert("127.0.0.1:8443", format!("127.0.0.1:{}", free_port()));
        Reader {
            dir: dir.to_owned(),
            ports,
            path: format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
            servers: Vec::new(),
            output: String::new(),
        }
    }

    fn ported(&self, text: &str) -> String {
        self.ports
            .iter()
            .fold(text.to_owned(), |t, (from, to)| t.replace(from, to))
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.current_dir(&self.dir)
            .env("PATH", &self.path)
            .env("SWITCHBOARD_SERVER__LISTEN", &self.ports["127.0.0.1:8080"])
            .env_remove("SWITCHBOARD_CONFIG");
        c
    }

    /// Runs `script` with bash (`set -euo pipefail`), as a reader pasting it would, and
    /// keeps its output.
    fn script(&mut self, script: &str) {
        let script = format!("set -euo pipefail\n{}", self.ported(script));
        let out_path = self.dir.join("script.out");
        let out = std::fs::File::create(&out_path).unwrap();
        let mut child = self
            .command("bash")
            .args(["-c", &script])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let status = wait_with_deadline(&mut child, Duration::from_secs(120));
        let text = std::fs::read_to_string(&out_path).unwrap();
        assert!(
            status.success(),
            "README commands failed:\n{script}\n---\n{text}"
        );
        self.output.push_str(&text);
    }

    /// Starts `switchboard serve ...` in the background and waits until it answers.
    fn serve(&mut self, line: &str) {
        let line = self.ported(line);
        let line = line.split('#').next().unwrap().trim();
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        let log = std::fs::File::create(self.dir.join(format!("serve-{}.log", self.servers.len())))
            .unwrap();
        let child = self
            .command(BIN)
            .args(&args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.servers.push(child);
        let main = self.ports["127.0.0.1:8080"].clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&main).is_err() {
            assert!(
                Instant::now() < deadline,
                "`{line}` did not start:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        (0..self.servers.len())
            .map(|i| {
                std::fs::read_to_string(self.dir.join(format!("serve-{i}.log"))).unwrap_or_default()
            })
            .collect()
    }

    fn stop_servers(&mut self) {
        for mut s in self.servers.drain(..) {
            sigterm(&s);
            wait_with_deadline(&mut s, Duration::from_secs(30));
        }
    }

    /// Runs a section: its `# switchboard.toml` block is written out, each shell block
    /// runs (a `serve` line starts a server, `cargo` lines are skipped), and `before`
    /// gets to act (as the outside world: Verestro sending a CSR) before each block.
    fn run(&mut self, section: &str, mut before: impl FnMut(&mut Reader, &str)) {
        for (lang, text) in blocks(section) {
            match lang.as_str() {
                "toml" if text.starts_with("# switchboard.toml") => {
                    std::fs::write(self.dir.join("switchboard.toml"), self.ported(&text)).unwrap();
                }
                "sh" => {
                    before(self, &text);
                    let mut pending = String::new();
                    for line in text.split_inclusive('\n') {
                        let code = line.trim_start();
                        if code.starts_with("cargo ") {
                            continue;
                        }
                        if code.starts_with("switchboard serve") {
                            if !pending.trim().is_empty() {
                                self.script(&std::mem::take(&mut pending));
                            }
                            self.serve(code);
                            continue;
                        }
                        pending.push_str(line);
                    }
                    if !pending.trim().is_empty() {
                        self.script(&pending);
                    }
                }
                _ => {}
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

#[test]
fn run_it_works_as_written() {
    let dir = Dir::new();
    let mut r = Reader::new(dir.path());
    r.run(&section(&readme(), "Run it"), |_, _| {});
    assert!(
        r.output.matches("-> 204").count() >= 1 && r.output.contains("-> 200"),
        "{}",
        r.output
    );
    assert!(
        r.output.contains("tokenization_otp"),
        "the admin API lists the event: {}",
        r.output
    );
    r.stop_servers();
}

#[test]
fn onboarding_verestro_can_be_followed_from_the_top() {
    let readme = readme();
    let onboarding = section(&readme, "Onboarding Verestro");
    // A local trial listens on the loopback interface only.
    let toml = blocks(&onboarding)
        .into_iter()
        .find(|(lang, text)| lang == "toml" && text.contains("[listeners.verestro]"))
        .unwrap()
        .1;
    assert!(toml.contains("listen = \"127.0.0.1:"), "{toml}");
    assert!(!toml.contains("0.0.0.0"), "{toml}");

    let dir = Dir::new();
    let mut r = Reader::new(dir.path());
    let mut verestro_sent_its_csr = false;
    r.run(&onboarding, |r, block| {
        // The only thing that comes from outside: Verestro's CSR, made with Java's
        // keytool as its integrators do, when the README says it arrives.
        if block.contains("verestro.csr") && !r.dir.join("verestro.csr").exists() {
            for args in [
                &[
                    "-genkeypair",
                    "-alias",
                    "verestro",
                    "-keyalg",
                    "RSA",
                    "-keysize",
                    "2048",
                    "-dname",
                    "CN=verestro-notifications, O=Verestro, C=PL",
                ][..],
                &["-certreq", "-alias", "verestro", "-file", "verestro.csr"][..],
            ] {
                let out = Command::new("keytool")
                    .args(args)
                    .args(["-keystore", "verestro.p12", "-storetype", "PKCS12"])
                    .args(["-storepass", "changeit"])
                    .current_dir(&r.dir)
                    .output()
                    .expect("keytool (Debian: default-jre-headless)");
                assert!(out.status.success(), "{out:?}");
            }
            verestro_sent_its_csr = true;
        }
    });
    assert!(verestro_sent_its_csr, "step 6 signs verestro.csr");
    assert!(
        r.output.contains("-> 204"),
        "the simulated OTP: {}",
        r.output
    );
    assert!(
        r.output.contains("ignored  subjectKeyIdentifier"),
        "{}",
        r.output
    );
    until_in_logs(&r, "event stored provider=verestro");

    // Step 6's prose: pin the fingerprint sign-csr printed, check, restart; the
    // simulator's certificate is then refused.
    let fingerprint = r
        .output
        .lines()
        .skip_while(|l| !l.contains("verestro.crt"))
        .find_map(|l| l.trim().strip_prefix("sha256"))
        .unwrap()
        .trim()
        .to_owned();
    let config = std::fs::read_to_string(dir.path().join("switchboard.toml")).unwrap();
    let pinned = config.replacen(
        "[providers.verestro]\n",
        &format!("[providers.verestro]\npin_sha256 = [\"{fingerprint}\"]\n"),
        1,
    );
    assert_ne!(pinned, config);
    std::fs::write(dir.path().join("switchboard.toml"), pinned).unwrap();
    r.stop_servers();
    r.script("switchboard check --config switchboard.toml");
    r.serve("switchboard serve --config switchboard.toml");
    let refused = r
        .command("switchboard")
        .args([
            "simulate",
            "--config",
            "switchboard.toml",
            "verestro",
            "otp",
        ])
        .args(["--encrypt", "--cert", "sim.crt", "--key", "sim.key"])
        .args(["--ca", "data/ca/ca.crt"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!refused.status.success() && text.contains("403"), "{text}");
    until_in_logs(&r, "certificate_not_pinned");
    r.stop_servers();
}

fn until_in_logs(r: &Reader, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !r.logs().contains(text) {
        assert!(
            Instant::now() < deadline,
            "`{text}` never logged:\n{}",
            r.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn gitignore_keeps_what_the_readme_creates_out_of_git() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .expect("git");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // What the README's commands write where they run, and `init .`.
    for created in [
        "data/dev-secrets.toml",
        "data/ca/ca.key",
        "data/keys/jwe.pem",
        "switchboard.toml",
        "secrets/admin-token",
        "verestro.csr",
        "verestro.crt",
        "sim.key",
        "sim.csr",
        "sim.crt",
        "jwe.pem",
        "jwe.pem.pub",
        "verestro.p12",
    ] {
        assert_eq!(
            git(&["check-ignore", "-q", "--no-index", created]).0,
            Some(0),
            "{created} is not ignored"
        );
    }
    // Sources and fixtures are not.
    for kept in [
        "routes/verestro/otp.rhai",
        "openapi/services.json",
        "tests/fixtures/provider.crt",
        "tests/fixtures/provider.key",
    ] {
        assert_eq!(
            git(&["check-ignore", "-q", "--no-index", kept]).0,
            Some(1),
            "{kept} is ignored"
        );
    }
    // Nothing committed is ignored.
    let (_, ignored) = git(&["ls-files", "--cached", "--ignored", "--exclude-standard"]);
    assert_eq!(ignored, "", "committed files that .gitignore hides");
}
