//! The glue every provider's `api.rs` shares.
//!
//! - [`JsonBody`]: a request body documented as the provider's typed JSON, handed to the
//!   handler unread, so that it can be read under a size limit and authenticated over its
//!   raw bytes before anything parses it.
//! - [`Answer`]: an answer documented by the provider's response enum but made of the bytes
//!   the engine stored, so that duplicates get exactly the first request's answer.
//! - [`Contract`]: what a provider answers when poem-openapi cannot extract a parameter
//!   (a missing header, a missing credential): the provider's own 4xx, not a generic 400.
//! - [`parse_json`]: depth-limited parsing into a typed body, keeping every original field.
//! - [`unavailable`]: the one place an engine error becomes an answer (a 503 that makes the
//!   provider retry). The error is logged in full; the body says nothing about it.

use std::marker::PhantomData;

use poem::{IntoResponse, Request, RequestBody, Response, http::StatusCode};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions,
    registry::{MetaMediaType, MetaRequest, MetaResponses, Registry},
    types::{ParseFromJSON, ToJSON, Type},
};
use serde_json::{Value, json};
use switchboard_core::{ingest::Ingestor, store::StoredResponse};

/// Limits every provider endpoint applies before it parses anything.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest body accepted, in bytes, with or without a Content-Length.
    pub body: usize,
    /// Deepest JSON nesting accepted.
    pub json_depth: usize,
}

/// What provider endpoints need from the running server. Handed in as request data, so
/// that the API types can be built (for the spec) without a store.
#[derive(Clone)]
pub struct Ctx {
    /// The engine's front door.
    pub ingest: Ingestor,
    /// Body and JSON limits.
    pub limits: Limits,
}

/// A request body documented as JSON of type `T`, not yet read.
pub struct JsonBody<T> {
    body: poem::Body,
    content_length: Option<u64>,
    _t: PhantomData<fn() -> T>,
}

/// Why a body could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Larger than the limit (declared or actual).
    TooLarge,
    /// The client broke off or sent a malformed transfer encoding.
    Unreadable,
}

impl<T> JsonBody<T> {
    /// Reads the body, refusing it as soon as it exceeds `limit` bytes, whether or not the
    /// client declared a Content-Length.
    pub async fn read(self, limit: usize) -> Result<Vec<u8>, BodyError> {
        if self.content_length.is_some_and(|n| n > limit as u64) {
            return Err(BodyError::TooLarge);
        }
        match self.body.into_bytes_limit(limit).await {
            Ok(b) => Ok(b.to_vec()),
            Err(poem::error::ReadBodyError::PayloadTooLarge) => Err(BodyError::TooLarge),
            Err(_) => Err(BodyError::Unreadable),
        }
    }
}

impl<'a, T: Type> ApiExtractor<'a> for JsonBody<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: "application/json",
                schema: T::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        // Any content type is read as JSON: a provider that forgets the header still has
        // its notification accepted.
        let content_length = request
            .header(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.parse().ok());
        Ok(JsonBody {
            body: body.take().unwrap_or_default(),
            content_length,
            _t: PhantomData,
        })
    }
}

/// What a provider answers when a parameter cannot be extracted.
pub trait Contract: ApiResponse {
    /// The answer for a request poem-openapi could not extract (a missing header, a
    /// missing credential, an unreadable parameter).
    fn on_bad_request(err: &poem::Error) -> StoredResponse;
}

/// An answer documented by `R` and made of stored bytes.
pub struct Answer<R> {
    response: Response,
    _r: PhantomData<fn() -> R>,
}

impl<R> Answer<R> {
    /// Answers exactly `stored`.
    pub fn stored(stored: &StoredResponse) -> Self {
        Answer {
            response: to_response(stored),
            _r: PhantomData,
        }
    }
}

impl<R: Contract> ApiResponse for Answer<R> {
    const BAD_REQUEST_HANDLER: bool = true;

    fn meta() -> MetaResponses {
        R::meta()
    }

    fn register(registry: &mut Registry) {
        R::register(registry);
    }

    fn from_parse_request_error(err: poem::Error) -> Self {
        tracing::debug!(error = %err, "request refused before authentication");
        Answer::stored(&R::on_bad_request(&err))
    }
}

impl<R: Send> IntoResponse for Answer<R> {
    fn into_response(self) -> Response {
        self.response
    }
}

/// A stored answer as a poem response.
pub fn to_response(stored: &StoredResponse) -> Response {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    for (k, v) in &stored.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(stored.body.clone())
}

/// The error body switchboard answers where a provider's contract names no format.
#[derive(poem_openapi::Object, Debug, Clone)]
pub struct ErrorBody {
    /// A stable, machine-readable code: `unauthorized`, `invalid_body`, `payload_too_large`,
    /// `unreadable_body`, `temporarily_unavailable`.
    pub error: String,
    /// What happened, for a human. Never contains a value from the request.
    pub message: String,
}

/// An [`ErrorBody`] answer: `{"error": code, "message": text}`.
pub fn error_json(status: u16, code: &str, message: &str) -> StoredResponse {
    StoredResponse::json(status, &json!({"error": code, "message": message}))
}

/// The answer to an engine error: `503` with `Retry-After`, so that the provider retries.
/// The error is logged here in full; the answer carries nothing of it.
pub fn unavailable(provider: &str, err: &switchboard_core::Error) -> StoredResponse {
    tracing::error!(provider, error = %err, "notification not accepted: engine error");
    let mut r = error_json(
        503,
        "temporarily_unavailable",
        "The notification was not stored. Retry later.",
    );
    r.headers.push(("retry-after".into(), "1".into()));
    r
}

/// Whether the nesting of arrays and objects in `bytes` goes deeper than `limit`,
/// scanning without parsing (strings in double quotes are skipped).
pub fn json_depth_exceeds(bytes: &[u8], limit: usize) -> bool {
    depth_exceeds(bytes, limit, false)
}

/// Like [`json_depth_exceeds`], for JSON5: strings in single or double quotes, and `//`
/// and `/* */` comments, are skipped. This guards a recursive parser, so it must not be
/// fooled: a quote inside a comment does not open a string.
pub fn json5_depth_exceeds(bytes: &[u8], limit: usize) -> bool {
    depth_exceeds(bytes, limit, true)
}

fn depth_exceeds(bytes: &[u8], limit: usize, json5: bool) -> bool {
    enum At {
        Code,
        Str(u8),
        LineComment,
        BlockComment,
    }
    let mut depth = 0usize;
    let mut at = At::Code;
    let mut escaped = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let next = bytes.get(i + 1).copied();
        match at {
            At::Str(q) => match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, c) if c == q => at = At::Code,
                _ => {}
            },
            // As json5's grammar: a line comment ends at LF, CR, U+2028 or U+2029.
            At::LineComment => {
                let separator = b == 0xE2
                    && next == Some(0x80)
                    && matches!(bytes.get(i + 2), Some(0xA8 | 0xA9));
                if b == b'\n' || b == b'\r' {
                    at = At::Code;
                } else if separator {
                    at = At::Code;
                    i += 2;
                }
            }
            At::BlockComment => {
                if b == b'*' && next == Some(b'/') {
                    at = At::Code;
                    i += 1;
                }
            }
            At::Code => match b {
                b'"' => at = At::Str(b),
                b'\'' if json5 => at = At::Str(b),
                b'/' if json5 && next == Some(b'/') => {
                    at = At::LineComment;
                    i += 1;
                }
                b'/' if json5 && next == Some(b'*') => {
                    at = At::BlockComment;
                    i += 1;
                }
                b'[' | b'{' => {
                    depth += 1;
                    if depth > limit {
                        return true;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        i += 1;
    }
    false
}

/// A typed body and its normalised JSON (the original with the typed fields written over
/// it, so that integers sent as strings become numbers and no unknown field is lost).
pub struct Parsed<T> {
    /// The typed body.
    pub value: T,
    /// The normalised JSON, as routes see it.
    pub data: Value,
    /// Remarks for the operator: one per unknown enum value.
    pub flags: Vec<String>,
}

/// Parses `bytes` as a `T`. The error is a reason fit for an operator: it names fields and
/// types, never the values sent.
pub fn parse_json<T: ParseFromJSON + ToJSON>(
    bytes: &[u8],
    limits: &Limits,
) -> Result<Parsed<T>, String> {
    if json_depth_exceeds(bytes, limits.json_depth) {
        return Err(format!(
            "JSON nested deeper than {} levels",
            limits.json_depth
        ));
    }
    let original: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    parse_value(original)
}

/// Like [`parse_json`], but a body that is not strict JSON and is valid JSON5 (trailing
/// commas, single-quoted strings, as in some providers' own examples) is accepted too, with
/// a flag.
pub fn parse_json_lenient<T: ParseFromJSON + ToJSON>(
    bytes: &[u8],
    limits: &Limits,
) -> Result<Parsed<T>, String> {
    match parse_json(bytes, limits) {
        Err(strict) if strict.starts_with("not JSON") => {
            if json5_depth_exceeds(bytes, limits.json_depth) {
                return Err(format!(
                    "JSON nested deeper than {} levels",
                    limits.json_depth
                ));
            }
            let text = std::str::from_utf8(bytes).map_err(|_| strict.clone())?;
            let original: Value = json5::from_str(text).map_err(|_| strict)?;
            let mut parsed = parse_value(original)?;
            parsed.flags.push(
                "lenient_json: the body is not strict JSON (trailing comma or single quotes)"
                    .into(),
            );
            Ok(parsed)
        }
        other => other,
    }
}

fn parse_value<T: ParseFromJSON + ToJSON>(original: Value) -> Result<Parsed<T>, String> {
    if !original.is_object() {
        return Err("the body is not a JSON object".into());
    }
    let (value, flags) =
        crate::types::collect_unknown(|| T::parse_from_json(Some(original.clone())));
    let value = value.map_err(|e| redact_parse_error(&e.into_message()))?;
    for flag in &flags {
        tracing::warn!(type_name = std::any::type_name::<T>(), flag = %flag, "accepted a value the provider's documentation does not list");
    }
    let mut data = original;
    if let Some(typed) = value.to_json() {
        overlay(&mut data, typed);
    }
    Ok(Parsed { value, data, flags })
}

/// Writes `typed` over `base`: objects merge key by key (an absent optional field, which
/// the typed side writes as `null`, is not added), arrays element by element when their
/// lengths agree, anything else is replaced.
pub fn overlay(base: &mut Value, typed: Value) {
    match (base, typed) {
        (Value::Object(b), Value::Object(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    Some(slot) => overlay(slot, v),
                    None if v.is_null() => {}
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(t)) if b.len() == t.len() => {
            for (slot, v) in b.iter_mut().zip(t) {
                overlay(slot, v);
            }
        }
        (slot, v) => *slot = v,
    }
}

/// poem-openapi's parse errors quote the offending value (`found "123456"`); a value may
/// be an OTP in the wrong place, so the quote is cut out.
fn redact_parse_error(message: &str) -> String {
    const FOUND: &str = ", found ";
    const TAIL: &str = ". (occurred while";
    let Some(start) = message.find(FOUND) else {
        return message.to_owned();
    };
    let rest = &message[start + FOUND.len()..];
    if rest.starts_with("null.") {
        // A missing field: nothing to hide, and the operator needs to know.
        return message.to_owned();
    }
    let tail = rest.find(TAIL).map(|i| &rest[i..]).unwrap_or(".");
    format!("{}, found a value of another type{tail}", &message[..start])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_counted_outside_strings() {
        assert!(!json_depth_exceeds(br#"{"a":[1,{"b":2}]}"#, 3));
        assert!(json_depth_exceeds(br#"{"a":[1,{"b":2}]}"#, 2));
        assert!(!json_depth_exceeds(br#"{"a":"[[[[[[\"[[[["}"#, 1));
        assert!(json_depth_exceeds(&b"[".repeat(100), 64));
        assert!(!json5_depth_exceeds(b"{'a': '[[[[[['}", 2));
        assert!(json_depth_exceeds(b"{'a': '[[[[[['}", 2));
    }

    /// A quote inside a comment once switched the JSON5 scan into "in a string" for the
    /// rest of the body, so any nesting passed, and the recursive JSON5 parser overflowed
    /// the stack and aborted the process.
    #[test]
    fn json5_comments_cannot_hide_nesting() {
        let deep = |prefix: &str| {
            let mut b = prefix.as_bytes().to_vec();
            b.extend(b"[".repeat(5000));
            b.extend(b"]".repeat(5000));
            b.push(b'}');
            b
        };
        for prefix in [
            "{// \"\n 'x': ",
            "{// '\n 'x': ",
            "{/* \" ' */ 'x': ",
            "{/* \n\" */ \"x\": ",
            // U+2028 and U+2029 end a line comment too.
            "{// \"\u{2028} 'x': ",
            "{// \"\u{2029} 'x': ",
        ] {
            assert!(json5_depth_exceeds(&deep(prefix), 32), "{prefix:?}");
        }
        // Through the parser: refused for depth, on a small stack, not a crash.
        let crafted = deep("{// \"\u{2028} 'x': ");
        let refused = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let limits = Limits {
                    body: 1 << 20,
                    json_depth: 32,
                };
                parse_json_lenient::<crate::providers::pomelo::model::TokenizationOtp>(
                    &crafted, &limits,
                )
                .err()
            })
            .unwrap()
            .join()
            .expect("no stack overflow");
        assert!(
            refused.is_some_and(|e| e.contains("deeper")),
            "refused for its depth"
        );
        // Comments themselves are skipped: brackets in them do not count.
        assert!(!json5_depth_exceeds(b"{// [[[[[[\n 'a': 1 /* {{{{{ */}", 2));
        // What passes the scan is safe to parse on a small stack.
        let limits = Limits {
            body: 1 << 20,
            json_depth: 100,
        };
        let mut body = b"{// \"\n 'x': ".to_vec();
        body.extend(b"[".repeat(99));
        body.extend(b"]".repeat(99));
        body.extend(b", }");
        assert!(!json5_depth_exceeds(&body, 100));
        let parsed = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                parse_json_lenient::<crate::providers::pomelo::model::TokenizationOtp>(
                    &body, &limits,
                )
                .is_err()
            })
            .unwrap()
            .join();
        assert!(
            parsed.is_ok(),
            "no stack overflow at the deepest allowed nesting"
        );
    }

    #[test]
    fn overlay_normalises_and_keeps_unknown_fields() {
        let mut base = json!({"id": "12", "extra": true, "list": [{"n": "1", "x": 1}]});
        overlay(&mut base, json!({"id": 12, "list": [{"n": 1}]}));
        assert_eq!(
            base,
            json!({"id": 12, "extra": true, "list": [{"n": 1, "x": 1}]})
        );
    }

    #[test]
    fn parse_errors_never_quote_values() {
        let m =
            r#"Expected input type "string", found {"otp":"123456"}. (occurred while parsing "X")"#;
        let r = redact_parse_error(m);
        assert!(!r.contains("123456"), "{r}");
        assert!(r.ends_with(r#"(occurred while parsing "X")"#), "{r}");
        let m2 = r#"Expected input type "string", found 123456."#;
        assert!(!redact_parse_error(m2).contains("123456"));
    }
}
