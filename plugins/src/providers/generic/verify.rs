//! A generic provider's authentication, as plain functions over header values and the raw
//! body. Every comparison of a secret or signature is in constant time; every failure is
//! one 401 to the caller, the reason only counted and logged.

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD},
};
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;
use switchboard_core::peer::{ConnectionInfo, Pins};

use super::config::{Algorithm, Encoding, Scheme, SignatureFormat};

/// The shortest HMAC key accepted, in bytes (after decoding).
pub const MIN_SECRET_BYTES: usize = 16;

/// Why a request was refused. Never told to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No secret is configured.
    NotConfigured,
    /// A header the scheme needs is missing.
    MissingHeader,
    /// The signature header cannot be read.
    MalformedSignature,
    /// No signature matches any secret.
    BadSignature,
    /// The timestamp is not an integer.
    MalformedTimestamp,
    /// The timestamp is older than the tolerance.
    Stale,
    /// The timestamp is further in the future than the tolerance.
    Future,
    /// The token, key or password is wrong.
    BadCredentials,
    /// No verified client certificate (not a mutual-TLS listener).
    NoCertificate,
    /// The certificate is not pinned.
    NotPinned,
}

impl Refusal {
    /// A metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NotConfigured => "not_configured",
            Refusal::MissingHeader => "missing_header",
            Refusal::MalformedSignature => "malformed_signature",
            Refusal::BadSignature => "bad_signature",
            Refusal::MalformedTimestamp => "malformed_timestamp",
            Refusal::Stale => "stale",
            Refusal::Future => "future",
            Refusal::BadCredentials => "bad_credentials",
            Refusal::NoCertificate => "no_certificate",
            Refusal::NotPinned => "not_pinned",
        }
    }
}

/// One part of the signed content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// Text as written in the template.
    Text(String),
    /// The raw body.
    Body,
    /// The timestamp, as sent.
    Timestamp,
    /// The id header's value.
    Id,
    /// The request method.
    Method,
    /// The request path.
    Path,
    /// The public URL the provider called: `auth.public_url` + path + query (Twilio).
    Url,
    /// The form fields sorted by name, each name followed by its value (Twilio).
    Form,
}

/// Parses a `signed_content` template. The error names the unknown placeholder.
pub fn template(t: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let close = rest[open..].find('}').ok_or("a `{` is not closed")? + open;
        parts.push(match &rest[open + 1..close] {
            "body" => Part::Body,
            "timestamp" => Part::Timestamp,
            "id" => Part::Id,
            "method" => Part::Method,
            "path" => Part::Path,
            "url" => Part::Url,
            "form" => Part::Form,
            other => {
                return Err(format!(
                    "unknown placeholder `{{{other}}}` (known: {{body}}, {{timestamp}}, {{id}}, {{method}}, {{path}}, {{url}}, {{form}})"
                ));
            }
        });
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

/// The HMAC scheme, resolved.
#[derive(Clone, Debug)]
pub struct HmacScheme {
    /// The hash.
    pub algorithm: Algorithm,
    /// The keys, newest first.
    pub keys: Vec<Vec<u8>>,
    /// The signature header (lower case).
    pub header: String,
    /// Its layout.
    pub format: SignatureFormat,
    /// `plain`: the prefix before the signature.
    pub prefix: String,
    /// How signatures are written.
    pub encoding: Encoding,
    /// What is signed.
    pub content: Vec<Part>,
    /// The timestamp header, if any (lower case).
    pub timestamp_header: Option<String>,
    /// The id header, if any (lower case).
    pub id_header: Option<String>,
    /// Two-sided tolerance, in seconds.
    pub tolerance_secs: i64,
    /// The public base URL `{url}` starts with.
    pub public_url: String,
}

/// A generic provider's authentication, resolved.
#[derive(Clone, Debug)]
pub enum Auth {
    /// HMAC.
    Hmac(HmacScheme),
    /// `Authorization: Bearer`.
    Bearer(Vec<Vec<u8>>),
    /// A named header (lower case) and the accepted values.
    Header(String, Vec<Vec<u8>>),
    /// HTTP Basic: user name and passwords.
    Basic(String, Vec<Vec<u8>>),
    /// Mutual TLS with pins.
    Mtls(Pins),
    /// None.
    None,
}

/// What a request shows the verifier.
pub struct Request<'a> {
    /// A header's value by lower-case name.
    pub header: &'a dyn Fn(&str) -> Option<String>,
    /// The method.
    pub method: &'a str,
    /// The path as received.
    pub path: &'a str,
    /// The query string as received, if any.
    pub query: Option<&'a str>,
    /// The raw body.
    pub body: &'a [u8],
    /// The connection (for mTLS).
    pub conn: Option<&'a ConnectionInfo>,
    /// Now, Unix seconds.
    pub now: i64,
}

impl Auth {
    /// The scheme's name.
    pub fn scheme(&self) -> Scheme {
        match self {
            Auth::Hmac(_) => Scheme::Hmac,
            Auth::Bearer(_) => Scheme::Bearer,
            Auth::Header(..) => Scheme::Header,
            Auth::Basic(..) => Scheme::Basic,
            Auth::Mtls(_) => Scheme::Mtls,
            Auth::None => Scheme::None,
        }
    }

    /// How many secrets are active (1 for schemes without secrets).
    pub fn credentials(&self) -> usize {
        match self {
            Auth::Hmac(h) => h.keys.len(),
            Auth::Bearer(s) | Auth::Header(_, s) | Auth::Basic(_, s) => s.len(),
            Auth::Mtls(_) | Auth::None => 1,
        }
    }

    /// Checks a request. On success, the position of the secret that matched.
    pub fn verify(&self, r: &Request<'_>) -> Result<usize, Refusal> {
        match self {
            Auth::Hmac(h) => h.verify(r),
            Auth::Bearer(tokens) => {
                let v = (r.header)("authorization").ok_or(Refusal::MissingHeader)?;
                let token = v
                    .split_once(' ')
                    .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
                    .map(|(_, t)| t.trim().to_owned())
                    .ok_or(Refusal::BadCredentials)?;
                any_equal(tokens, token.as_bytes())
            }
            Auth::Header(name, values) => {
                let v = (r.header)(name).ok_or(Refusal::MissingHeader)?;
                any_equal(values, v.trim().as_bytes())
            }
            Auth::Basic(user, passwords) => {
                let v = (r.header)("authorization").ok_or(Refusal::MissingHeader)?;
                let decoded = v
                    .split_once(' ')
                    .filter(|(s, _)| s.eq_ignore_ascii_case("basic"))
                    .and_then(|(_, b)| STANDARD.decode(b.trim()).ok())
                    .ok_or(Refusal::BadCredentials)?;
                let colon = decoded
                    .iter()
                    .position(|b| *b == b':')
                    .ok_or(Refusal::BadCredentials)?;
                let user_ok = bool::from(decoded[..colon].ct_eq(user.as_bytes()));
                let found = any_equal(passwords, &decoded[colon + 1..]);
                match (user_ok, found) {
                    (true, Ok(i)) => Ok(i),
                    _ => Err(Refusal::BadCredentials),
                }
            }
            Auth::Mtls(pins) => {
                let peer = r
                    .conn
                    .and_then(|c| c.peer.as_deref())
                    .ok_or(Refusal::NoCertificate)?;
                if pins.allow(peer) {
                    Ok(0)
                } else {
                    Err(Refusal::NotPinned)
                }
            }
            Auth::None => Ok(0),
        }
    }
}

/// The position of the secret equal to `presented`, comparing with every one in constant
/// time.
fn any_equal(secrets: &[Vec<u8>], presented: &[u8]) -> Result<usize, Refusal> {
    if secrets.is_empty() {
        return Err(Refusal::NotConfigured);
    }
    let mut found = None;
    for (i, s) in secrets.iter().enumerate() {
        if bool::from(s.as_slice().ct_eq(presented)) && found.is_none() {
            found = Some(i);
        }
    }
    found.ok_or(Refusal::BadCredentials)
}

/// The fields of an `application/x-www-form-urlencoded` body, decoded (`+` is a space).
/// A field that does not decode is kept as it was sent.
pub fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let dec = |s: &str| {
                let s = s.replace('+', " ");
                percent_decode(&s).unwrap_or(s)
            };
            (dec(k), dec(v))
        })
        .collect()
}

/// Decodes `%XX` escapes; `None` if one is malformed or the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Decodes text as `encoding` (base64: standard or URL-safe, padded or not).
pub fn decode(text: &str, encoding: Encoding) -> Option<Vec<u8>> {
    let t = text.trim();
    match encoding {
        Encoding::Raw => Some(t.as_bytes().to_vec()),
        Encoding::Hex => hex::decode(t).ok(),
        Encoding::Base64 => STANDARD
            .decode(t)
            .or_else(|_| URL_SAFE.decode(t))
            .or_else(|_| URL_SAFE_NO_PAD.decode(t))
            .ok(),
    }
}

/// `mac(key, content)` with `algorithm`.
pub fn mac(algorithm: Algorithm, key: &[u8], content: &[u8]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], content: &[u8]) -> Vec<u8> {
        let mut m = <M as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        m.update(content);
        m.finalize().into_bytes().to_vec()
    }
    match algorithm {
        Algorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, content),
        Algorithm::Sha512 => run::<Hmac<sha2::Sha512>>(key, content),
        Algorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, content),
    }
}

/// Values the signed content is made of.
pub struct Values<'a> {
    /// The timestamp as sent.
    pub timestamp: &'a str,
    /// The id as sent.
    pub id: &'a str,
    /// The method.
    pub method: &'a str,
    /// The path.
    pub path: &'a str,
    /// The query string, if any.
    pub query: Option<&'a str>,
    /// The raw body.
    pub body: &'a [u8],
}

impl HmacScheme {
    /// The bytes that are signed.
    pub fn content(&self, v: &Values<'_>) -> Vec<u8> {
        let mut out = Vec::with_capacity(v.body.len() + 64);
        for p in &self.content {
            match p {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Body => out.extend_from_slice(v.body),
                Part::Timestamp => out.extend_from_slice(v.timestamp.as_bytes()),
                Part::Id => out.extend_from_slice(v.id.as_bytes()),
                Part::Method => out.extend_from_slice(v.method.as_bytes()),
                Part::Path => out.extend_from_slice(v.path.as_bytes()),
                Part::Url => {
                    out.extend_from_slice(self.public_url.trim_end_matches('/').as_bytes());
                    out.extend_from_slice(v.path.as_bytes());
                    if let Some(q) = v.query.filter(|q| !q.is_empty()) {
                        out.push(b'?');
                        out.extend_from_slice(q.as_bytes());
                    }
                }
                Part::Form => {
                    // As Twilio's libraries: names sorted, each name's distinct values
                    // sorted, every one as name + value.
                    let mut fields: std::collections::BTreeMap<
                        String,
                        std::collections::BTreeSet<String>,
                    > = Default::default();
                    for (k, val) in form_fields(v.body) {
                        fields.entry(k).or_default().insert(val);
                    }
                    for (k, vals) in fields {
                        for val in vals {
                            out.extend_from_slice(k.as_bytes());
                            out.extend_from_slice(val.as_bytes());
                        }
                    }
                }
            }
        }
        out
    }

    fn uses(&self, part: &Part) -> bool {
        self.content.contains(part)
    }

    /// The signatures in a header value, and the timestamp it carries (Stripe).
    fn presented(&self, value: &str) -> Result<(Vec<Vec<u8>>, Option<String>), Refusal> {
        let dec = |s: &str| decode(s, self.encoding).ok_or(Refusal::MalformedSignature);
        match self.format {
            SignatureFormat::Plain => {
                let v = value.trim();
                let sig = if self.prefix.is_empty() {
                    v
                } else {
                    v.get(..self.prefix.len())
                        .filter(|p| p.eq_ignore_ascii_case(&self.prefix))
                        .map(|_| &v[self.prefix.len()..])
                        .ok_or(Refusal::MalformedSignature)?
                };
                Ok((vec![dec(sig)?], None))
            }
            SignatureFormat::Stripe => {
                let mut ts = None;
                let mut sigs = Vec::new();
                for item in value.split(',') {
                    match item.trim().split_once('=') {
                        Some(("t", t)) => ts = Some(t.to_owned()),
                        // Other schemes (v0, test-mode) are ignored, as Stripe's libraries do.
                        Some(("v1", s)) => {
                            if let Some(b) = decode(s, self.encoding) {
                                sigs.push(b);
                            }
                        }
                        _ => {}
                    }
                }
                if sigs.is_empty() || ts.is_none() {
                    return Err(Refusal::MalformedSignature);
                }
                Ok((sigs, ts))
            }
            SignatureFormat::StandardWebhooks => {
                let sigs: Vec<Vec<u8>> = value
                    .split_whitespace()
                    .filter_map(|item| item.split_once(','))
                    .filter(|(v, _)| *v == "v1")
                    .filter_map(|(_, s)| decode(s, self.encoding))
                    .collect();
                if sigs.is_empty() {
                    return Err(Refusal::MalformedSignature);
                }
                Ok((sigs, None))
            }
        }
    }

    fn verify(&self, r: &Request<'_>) -> Result<usize, Refusal> {
        if self.keys.is_empty() {
            return Err(Refusal::NotConfigured);
        }
        let value = (r.header)(&self.header).ok_or(Refusal::MissingHeader)?;
        let (sigs, stripe_ts) = self.presented(&value)?;
        let timestamp = match (&self.timestamp_header, stripe_ts) {
            (_, Some(t)) => Some(t),
            (Some(h), None) => Some((r.header)(h).ok_or(Refusal::MissingHeader)?),
            (None, None) => None,
        };
        if let Some(t) = &timestamp {
            let ts: i64 = t.trim().parse().map_err(|_| Refusal::MalformedTimestamp)?;
            if r.now.saturating_sub(ts) > self.tolerance_secs {
                return Err(Refusal::Stale);
            }
            if ts.saturating_sub(r.now) > self.tolerance_secs {
                return Err(Refusal::Future);
            }
        }
        let id = match &self.id_header {
            Some(h) if self.uses(&Part::Id) => (r.header)(h).ok_or(Refusal::MissingHeader)?,
            _ => String::new(),
        };
        let content = self.content(&Values {
            timestamp: timestamp.as_deref().unwrap_or(""),
            id: &id,
            method: r.method,
            path: r.path,
            query: r.query,
            body: r.body,
        });
        // Every key against every signature, without stopping at the first match.
        let mut found = None;
        for (i, key) in self.keys.iter().enumerate() {
            let expected = mac(self.algorithm, key, &content);
            for sig in &sigs {
                if bool::from(expected.as_slice().ct_eq(sig)) && found.is_none() {
                    found = Some(i);
                }
            }
        }
        found.ok_or(Refusal::BadSignature)
    }

    /// The signature header's value for `content` signed with the first key (for
    /// `switchboard simulate`), and the timestamp it carries (Stripe).
    pub fn sign(&self, key: &[u8], content: &[u8], timestamp: &str) -> String {
        let raw = mac(self.algorithm, key, content);
        let sig = match self.encoding {
            Encoding::Base64 => STANDARD.encode(raw),
            _ => hex::encode(raw),
        };
        match self.format {
            SignatureFormat::Plain => format!("{}{sig}", self.prefix),
            SignatureFormat::Stripe => format!("t={timestamp},v1={sig}"),
            SignatureFormat::StandardWebhooks => format!("v1,{sig}"),
        }
    }
}
