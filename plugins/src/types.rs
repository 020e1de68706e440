//! Field types the providers' bodies share: lenient integers and open enums.
//!
//! Providers send integers as JSON strings (`"userId": "1337"`) and add enum values
//! without notice. Both are documented precisely in the spec and accepted leniently.

use std::borrow::Cow;

use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef, Registry},
    types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
};
use serde_json::Value;

/// An integer that may arrive as a JSON number or as a string of digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Int(pub i64);

impl Type for Int {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "integer_int64".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        let mut schema = MetaSchema::new_with_format("integer", "int64");
        schema.description =
            Some("An integer. A JSON string holding an integer (\"1337\") is accepted too.");
        MetaSchemaRef::Inline(Box::new(schema))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for Int {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Int)
                .ok_or_else(|| ParseError::custom("not a 64-bit integer")),
            Some(Value::String(s)) => s
                .trim()
                .parse()
                .map(Int)
                .map_err(|_| ParseError::custom("a string that is not an integer")),
            Some(Value::Null) | None => Err(ParseError::expected_input()),
            Some(_) => Err(ParseError::custom(
                "neither a number nor a string of digits",
            )),
        }
    }
}

impl ToJSON for Int {
    fn to_json(&self) -> Option<Value> {
        Some(Value::from(self.0))
    }
}

/// An enum value that is either one of the documented ones or, because providers add
/// values without notice, any other string. An unknown value is accepted, passed on to
/// the route as the string it was, and flagged on the event (see [`collect_unknown`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Open<E> {
    /// A documented value.
    Known(E),
    /// A value the documentation does not list (yet).
    Unknown(String),
}

impl<E> Open<E> {
    /// The unknown value, if it is one.
    pub fn unknown(&self) -> Option<&str> {
        match self {
            Open::Known(_) => None,
            Open::Unknown(s) => Some(s),
        }
    }
}

impl<E: Type> Type for Open<E> {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        E::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        E::schema_ref()
    }

    fn register(registry: &mut Registry) {
        E::register(registry);
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl<E: ParseFromJSON> ParseFromJSON for Open<E> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match E::parse_from_json(value.clone()) {
            Ok(known) => Ok(Open::Known(known)),
            Err(_) => match value {
                Some(Value::String(s)) => {
                    note_unknown(&E::name(), &s);
                    Ok(Open::Unknown(s))
                }
                Some(Value::Null) | None => Err(ParseError::expected_input()),
                Some(_) => Err(ParseError::custom("expected a string")),
            },
        }
    }
}

impl<E: ToJSON> ToJSON for Open<E> {
    fn to_json(&self) -> Option<Value> {
        match self {
            Open::Known(e) => e.to_json(),
            Open::Unknown(s) => Some(Value::String(s.clone())),
        }
    }
}

thread_local! {
    static UNKNOWN: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `parse` and returns, with its result, one flag per unknown enum value it met:
/// `unknown_enum_value: ContactMethod=PUSH`. Parsing is synchronous, so a thread-local
/// collector sees exactly the values of this one parse.
pub fn collect_unknown<R>(parse: impl FnOnce() -> R) -> (R, Vec<String>) {
    let previous = UNKNOWN.with(|u| u.borrow_mut().replace(Vec::new()));
    let result = parse();
    let flags = UNKNOWN.with(|u| std::mem::replace(&mut *u.borrow_mut(), previous));
    (result, flags.unwrap_or_default())
}

fn note_unknown(type_name: &str, value: &str) {
    UNKNOWN.with(|u| {
        if let Some(list) = u.borrow_mut().as_mut() {
            let shown: String = value.chars().take(64).collect();
            list.push(format!("unknown_enum_value: {type_name}={shown}"));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use poem_openapi::Enum;
    use serde_json::json;

    #[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
    enum Color {
        Red,
    }

    #[test]
    fn ints_accept_numbers_and_strings() {
        assert_eq!(Int::parse_from_json(Some(json!(1337))).unwrap(), Int(1337));
        assert_eq!(
            Int::parse_from_json(Some(json!("1337"))).unwrap(),
            Int(1337)
        );
        assert!(Int::parse_from_json(Some(json!("13x"))).is_err());
        assert!(Int::parse_from_json(Some(json!(1.5))).is_err());
        assert!(Int::parse_from_json(None).is_err());
        assert_eq!(Int(7).to_json(), Some(json!(7)));
    }

    #[test]
    fn open_enums_keep_unknown_strings() {
        let k = Open::<Color>::parse_from_json(Some(json!("Red"))).unwrap();
        assert_eq!(k, Open::Known(Color::Red));
        let u = Open::<Color>::parse_from_json(Some(json!("Blue"))).unwrap();
        assert_eq!(u.unknown(), Some("Blue"));
        assert_eq!(u.to_json(), Some(json!("Blue")));
        assert!(Open::<Color>::parse_from_json(Some(json!(3))).is_err());
        let (_, flags) = collect_unknown(|| {
            Open::<Color>::parse_from_json(Some(json!("Green"))).unwrap();
            Open::<Color>::parse_from_json(Some(json!("Red"))).unwrap();
        });
        assert_eq!(flags, vec!["unknown_enum_value: Color=Green".to_string()]);
    }
}
