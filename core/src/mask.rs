//! Masking of secret values (OTPs, tokens, card data) before anything leaves the engine
//! for a human: admin answers, logs, route previews.

use serde_json::Value;

/// What a masked value is replaced with. Fixed, so that it reveals no length.
pub const MASK: &str = "******";

/// Field names that are secret wherever they appear, used for bodies whose schema is not
/// known (quarantined events).
pub const SECRET_NAMES: &[&str] = &[
    "otp",
    "password",
    "pin",
    "pan",
    "cvv",
    "cvc",
    "cvv2",
    "card_number",
    "cardnumber",
    "secret",
    "token_value",
    "access_token",
];

/// Replaces the values at `pointers` (RFC 6901) with [`MASK`].
pub fn mask_pointers(value: &mut Value, pointers: &[String]) {
    for p in pointers {
        if let Some(v) = value.pointer_mut(p) {
            *v = Value::String(MASK.into());
        }
    }
}

/// Replaces every value whose key is one of [`SECRET_NAMES`] (case-insensitive), at any
/// depth, with [`MASK`].
pub fn mask_by_name(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let lower = k.to_ascii_lowercase();
                if SECRET_NAMES.contains(&lower.as_str()) {
                    *v = Value::String(MASK.into());
                } else {
                    mask_by_name(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_by_name),
        _ => {}
    }
}

/// Replaces every occurrence of each of `values` in every string of `value` with
/// [`MASK`] (an OTP inside an email text, for instance).
pub fn mask_values(value: &Value, values: &[String]) -> Value {
    match value {
        Value::String(s) => Value::String(mask_text(s, values)),
        Value::Array(items) => Value::Array(items.iter().map(|v| mask_values(v, values)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), mask_values(v, values)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// All but the last `n` characters replaced by `*`.
pub fn keep_last(s: &str, n: usize) -> String {
    let count = s.chars().count();
    s.chars()
        .enumerate()
        .map(|(i, c)| if i + n < count { '*' } else { c })
        .collect()
}

/// A phone number with its last three digits: `+48500100200` → `+********200`.
pub fn phone(s: &str) -> String {
    match s.strip_prefix('+') {
        Some(rest) => format!("+{}", keep_last(rest, 3)),
        None => keep_last(s, 3),
    }
}

/// An email address with the first letter and the domain: `jan@example.com` →
/// `j***@example.com`.
pub fn email(s: &str) -> String {
    match s.split_once('@') {
        Some((user, domain)) => {
            let first: String = user.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => keep_last(s, 0),
    }
}

/// `text` on one line: line breaks written as `\n`, so that a message cannot split (or
/// forge) a log line.
pub fn one_line(text: &str) -> String {
    text.replace('\r', "\\r").replace('\n', "\\n")
}

/// Replaces every occurrence of each of `values` in `text` with [`MASK`].
pub fn mask_text(text: &str, values: &[String]) -> String {
    let mut out = text.to_owned();
    for v in values.iter().filter(|v| !v.is_empty()) {
        if out.contains(v.as_str()) {
            out = out.replace(v.as_str(), MASK);
        }
    }
    out
}

/// A body of unknown shape, made safe to show: parsed and masked by name when it is JSON,
/// otherwise only described.
pub fn mask_raw_body(body: &[u8]) -> Value {
    match serde_json::from_slice::<Value>(body) {
        Ok(mut v) => {
            mask_by_name(&mut v);
            v
        }
        Err(_) => Value::String(format!(
            "[{} bytes, not JSON; shown only when secrets may be revealed]",
            body.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_and_names_are_masked() {
        let mut v = json!({"otp": "123456", "token": {"card_id": "c"}, "to": "m***"});
        mask_pointers(&mut v, &["/otp".into(), "/missing".into()]);
        assert_eq!(v["otp"], MASK);
        assert_eq!(v["token"]["card_id"], "c");

        let mut w = json!({"a": [{"OTP": "1"}, {"Pan": "4111"}], "b": 1});
        mask_by_name(&mut w);
        assert_eq!(w, json!({"a": [{"OTP": MASK}, {"Pan": MASK}], "b": 1}));
    }

    #[test]
    fn raw_bodies_that_are_not_json_are_described_not_shown() {
        let v = mask_raw_body(b"otp=123456");
        assert!(!v.to_string().contains("123456"));
        let v = mask_raw_body(br#"{"otp":"123456"}"#);
        assert!(!v.to_string().contains("123456"));
    }
}
