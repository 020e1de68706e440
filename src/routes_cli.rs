//! `switchboard test` and `switchboard init`.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, bail};
use switchboard_core::{
    fsutil::write_private,
    route::{
        engine,
        scripts::{Scripts, Source},
        testing,
    },
};
use switchboard_openapi::{config::Config, routes::EMBEDDED};
use switchboard_plugins::providers::verestro::jwe;

use crate::pki;

/// Runs `switchboard test [DIR]`: every `*.test.toml` under DIR against the scripts of
/// DIR. Exits non-zero when a case fails or a script does not compile.
pub fn test(dir: Option<PathBuf>, config: Option<&Path>) -> anyhow::Result<()> {
    let cfg = Config::load(config)?;
    let dir = dir.unwrap_or_else(|| cfg.routes.dir.clone());
    if !dir.is_dir() {
        bail!("{} is not a directory of route scripts", dir.display());
    }
    let engine = Arc::new(engine::build(&cfg.routes));
    let scripts = Scripts::load(engine, Source::Dir(dir.clone()));
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let results = testing::run_all(
        &dir,
        &scripts,
        &testing::limits(&cfg.routes),
        rt.handle().clone(),
    );
    let mut failed = 0;
    for e in scripts.errors() {
        out!("FAIL {e}");
        failed += 1;
    }
    for r in &results {
        let file = r.file.strip_prefix(&dir).unwrap_or(&r.file).display();
        let script = r.script.as_deref().unwrap_or("-");
        match &r.failure {
            None => out!("PASS {file}: {} ({script})", r.name),
            Some(why) => {
                failed += 1;
                out!(
                    "FAIL {file}: {} ({script})\n  {}",
                    r.name,
                    why.replace('\n', "\n  ")
                );
            }
        }
    }
    out!(
        "\n{} passed, {failed} failed",
        results.len() + scripts.errors().len() - failed
    );
    if results.is_empty() {
        bail!("no *.test.toml files under {}", dir.display());
    }
    if failed > 0 {
        bail!("{failed} failure(s)");
    }
    Ok(())
}

/// `switchboard.toml` as `init` writes it: [`CONFIG`], every provider's commented example
/// (from the registry, then a generic one), [`CONFIG_TAIL`].
fn config_template() -> String {
    let mut s = CONFIG.to_owned();
    for p in switchboard_plugins::providers::BUILTIN {
        s.push_str(p.example);
        s.push('\n');
    }
    s.push_str(switchboard_plugins::providers::generic::EXAMPLE);
    s.push_str(CONFIG_TAIL);
    s
}

/// The start of `switchboard.toml` as `init` writes it; each provider's commented example
/// follows ([`config_template`]), then [`CONFIG_TAIL`].
const CONFIG: &str = r#"# switchboard configuration, written by `switchboard init`. Relative paths below are
# resolved against this file's directory. Every key is in the README's reference.

[server]
listen = "127.0.0.1:8080"

[store]
path = "data"

[admin]
token = "file:secrets/admin-token"

[dev]
# Development secrets for the providers not configured below (loopback listeners only).
# Turn off in production.
secrets = true

[routes]
dir = "routes"

# Verestro's key for encrypted requests (`init` generated it; `GET /public-key` serves it).
[[providers.verestro.jwe_keys]]
private_key = "file:data/keys/jwe.pem"

"#;

/// The end of `switchboard.toml` as `init` writes it, after the providers' examples.
const CONFIG_TAIL: &str = r#"
# Where the default routes look card holders up, and deliver card and compliance events:
# [services.customers]
# base_url = "https://customers.internal/api"
# headers = { Authorization = "env:CUSTOMERS_TOKEN" }
# [services.cards]
# base_url = "https://cards.internal/api"
# [services.compliance]
# base_url = "https://compliance.internal/api"

# [channels.email]
# kind = "smtp"
# host = "smtp.example.com"
# username = "otp@bank.example"
# password = "env:SMTP_PASSWORD"
# from = "Bank <otp@bank.example>"

# [channels.sms]
# kind = "twilio"
# url = "https://api.twilio.com/2010-04-01"
# account_sid = "AC..."
# auth_token = "env:TWILIO_AUTH_TOKEN"
# from = "+15005550006"
"#;

fn write_new(path: &Path, contents: &[u8], private: bool, force: bool) -> anyhow::Result<bool> {
    if path.exists() && !force {
        out!("  kept     {}", path.display());
        return Ok(false);
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    if private {
        write_private(path, contents)
    } else {
        std::fs::write(path, contents)
    }
    .with_context(|| format!("cannot write {}", path.display()))?;
    out!("  wrote    {}", path.display());
    Ok(true)
}

/// Runs `switchboard init [DIR]`: a configuration, the default routes and their tests, an
/// admin token, a CA, a server certificate for localhost and a JWE key. Existing files are
/// kept unless `force`.
pub fn init(dir: &Path, force: bool) -> anyhow::Result<()> {
    out!("Initialising {}", dir.display());
    write_new(
        &dir.join("switchboard.toml"),
        config_template().as_bytes(),
        false,
        force,
    )?;
    for (name, text) in EMBEDDED {
        write_new(
            &dir.join("routes").join(name),
            text.as_bytes(),
            false,
            force,
        )?;
    }
    let token = format!("admin-{}", uuid::Uuid::new_v4().simple());
    write_new(
        &dir.join("secrets/admin-token"),
        format!("{token}\n").as_bytes(),
        true,
        force,
    )?;
    let ca = dir.join("data/ca");
    if force || !ca.join(pki::CA_CERT).exists() {
        pki::ca_init(&ca, "switchboard CA", 3650, force)?;
        out!("  wrote    {}/{{ca.crt, ca.key}}", ca.display());
        let issued = pki::server_cert(
            &pki::load_ca(&ca)?,
            &["localhost".into()],
            &["127.0.0.1".parse()?],
            397,
        )?;
        pki::write_pair(
            &dir.join("data/tls/server.crt"),
            &issued.cert_pem,
            Some((
                &dir.join("data/tls/server.key"),
                issued.key_pem.as_deref().unwrap_or(""),
            )),
        )?;
        out!(
            "  wrote    {}/data/tls/{{server.crt, server.key}}",
            dir.display()
        );
    } else {
        out!("  kept     {}", ca.display());
    }
    let key = dir.join("data/keys/jwe.pem");
    if force || !key.exists() {
        let (private, public) = jwe::generate(4096)?;
        write_new(&key, private.as_bytes(), true, true)?;
        write_new(
            &dir.join("data/keys/jwe.pem.pub"),
            public.as_bytes(),
            false,
            true,
        )?;
    } else {
        out!("  kept     {}", key.display());
    }
    out!(
        "\nNext: cd {} && switchboard check --config switchboard.toml && switchboard test && switchboard serve --config switchboard.toml\n\
         Then, beside it: switchboard events list --config switchboard.toml (the admin commands read the URL and token from it; or export SWITCHBOARD_CONFIG)",
        dir.display()
    );
    Ok(())
}
