//! Reading an admin request body as JSON, strictly: an object at the top, no key twice in any
//! object at any depth, and every refusal naming the field it is about.
//!
//! serde_json keeps the last of two equal keys (`{"v1":-1,"v1":60}` reads as 60), and serde's
//! derive takes a JSON array for a struct (`["v2"]` as `{"version":"v2"}`): an operator's typo
//! or a tool's bug would change the split instead of being refused. So the body is read twice
//! (it is at most 64 KiB): once by [`Checked`], which walks any JSON value and refuses a repeated
//! key, then into the request type. Both passes go through `serde_path_to_error`, which gives
//! the path of the value that failed (`weights.v1`).

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Why a body was refused: the path of the offending value (empty for the body itself) and what
/// is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Not UTF-8 (the whole body).
    NotUtf8,
    /// A valid JSON value other than an object.
    NotAnObject(&'static str),
    /// A key that occurs twice in one object.
    Duplicate {
        /// Where: `weights.v1`.
        path: String,
    },
    /// Not JSON, trailing bytes, too deep, a number out of range, a value of the wrong type,
    /// a missing or unknown field: serde_json's message.
    Json {
        /// Where, as far as the reader got (empty: the body itself).
        path: String,
        /// What.
        message: String,
    },
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::NotUtf8 => f.write_str("invalid JSON body: not UTF-8"),
            Invalid::NotAnObject(kind) => write!(f, "the body must be a JSON object, not {kind}"),
            Invalid::Duplicate { path } => write!(f, "duplicate key {path:?} in the JSON body"),
            Invalid::Json { path, message } if path.is_empty() => write!(f, "invalid JSON body: {message}"),
            Invalid::Json { path, message } => write!(f, "invalid JSON body at {path:?}: {message}"),
        }
    }
}

/// What a repeated key's value is refused with (recognised again in [`from_slice`]).
const DUPLICATE: &str = "key occurs more than once";
const OBJECT: &str = "an object";

/// Parses `bytes` as a `T`, refusing what is described at the top of this file.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Invalid> {
    // serde_json checks UTF-8 only inside strings, and says so less plainly.
    if std::str::from_utf8(bytes).is_err() {
        return Err(Invalid::NotUtf8);
    }
    let json = |(path, e): (String, serde_json::Error)| Invalid::Json { path, message: e.to_string() };
    let kind = parse::<Checked>(bytes).map_err(|(path, e)| {
        if e.is_data() && e.to_string().starts_with(DUPLICATE) { Invalid::Duplicate { path } } else { json((path, e)) }
    })?;
    if kind.0 != OBJECT {
        return Err(Invalid::NotAnObject(kind.0));
    }
    parse::<T>(bytes).map_err(json)
}

/// One pass of serde_json over `bytes` into `T`, with the path of a failure (empty: the root).
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, (String, serde_json::Error)> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        (if path == "." { String::new() } else { path }, e.into_inner())
    })?;
    de.end().map_err(|e| (String::new(), e))?;
    Ok(value)
}

/// Any JSON value, read for its shape only: what kind of value it is. A key repeated in one
/// of its objects, at any depth, is an error at that key's path.
struct Checked(&'static str);

impl<'de> de::Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked("a string"))
    }

    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.insert(key) {
                map.next_value::<Checked>()?;
            } else {
                // Refused as the value is read, so the path ends with the repeated key.
                map.next_value_seed(Repeated)?;
            }
        }
        Ok(Checked(OBJECT))
    }
}

/// The value of a repeated key: refused whatever it is.
struct Repeated;

impl<'de> DeserializeSeed<'de> for Repeated {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, _: D) -> Result<(), D::Error> {
        Err(de::Error::custom(DUPLICATE))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Split {
        weights: BTreeMap<String, i64>,
        #[serde(default)]
        reason: String,
    }

    fn split(text: &str) -> Result<Split, Invalid> {
        from_slice(text.as_bytes())
    }

    fn dup(path: &str) -> Invalid {
        Invalid::Duplicate { path: path.into() }
    }

    #[test]
    fn repeated_keys_are_refused_at_any_depth() {
        assert_eq!(split(r#"{"weights":{"v1":-1,"v1":60,"v2":40}}"#).unwrap_err(), dup("weights.v1"));
        assert_eq!(split(r#"{"weights":{"v1":1},"weights":{"v1":2}}"#).unwrap_err(), dup("weights"));
        assert_eq!(split(r#"{"weights":{"v1":1},"x":[{"a":1,"a":1}]}"#).unwrap_err(), dup("x[0].a"));
        // Equal keys written differently are still equal.
        assert_eq!(split(r#"{"weights":{"v1":1,"\u00761":2}}"#).unwrap_err(), dup("weights.v1"));
        assert!(split(r#"{"weights":{"v1":1,"v2":2},"reason":"ok"}"#).is_ok());
    }

    #[test]
    fn the_body_must_be_an_object() {
        for (text, kind) in
            [("[1]", "an array"), ("null", "null"), ("1", "a number"), ("\"x\"", "a string"), ("true", "a boolean")]
        {
            assert_eq!(split(text).unwrap_err(), Invalid::NotAnObject(kind), "{text}");
        }
    }

    #[test]
    fn wrong_values_name_their_field() {
        for (text, path) in [
            (r#"{"weights":{"v1":1.5}}"#, "weights.v1"),
            (r#"{"weights":{"v1":"1"}}"#, "weights.v1"),
            (r#"{"weights":{"v1":18446744073709551616}}"#, "weights.v1"),
            (r#"{"weights":[1]}"#, "weights"),
            (r#"{"weights":{},"extra":1}"#, "extra"),
        ] {
            match split(text).unwrap_err() {
                Invalid::Json { path: p, .. } => assert_eq!(p, path, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(split("{}").unwrap_err(), Invalid::Json { path, .. } if path.is_empty()));
    }

    #[test]
    fn bad_text_is_refused() {
        for (text, path) in [
            (&b"{\"weights\":"[..], "weights"),
            (b"{\"weights\":{}} x", ""),
            (b"{\"weights\":{\"v1\":1e400}}", "weights.v1"),
            (b"{\"weights\":{\"v1\":1}, \"reason\":\"\\ud800\"}", "reason"),
            (b"\xef\xbb\xbf{}", ""),
        ] {
            match from_slice::<Split>(text) {
                Err(Invalid::Json { path: p, .. }) => assert_eq!(p, path, "{}", String::from_utf8_lossy(text)),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(text)),
            }
        }
        assert_eq!(from_slice::<Split>(b"{\"a\xff\":1}").unwrap_err(), Invalid::NotUtf8);
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(split(&deep), Err(Invalid::Json { .. })));
    }
}
