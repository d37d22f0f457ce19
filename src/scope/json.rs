//! A GraphQL `POST` body: one JSON object whose `query` member is a string,
//! with no member name repeated anywhere in it.
//!
//! serde_json (like Twenty's `JSON.parse`) keeps the last of two members
//! with the same name; a checker and a server that pick differently could
//! be shown two documents. So duplicates are an error here, at every depth
//! (`variables` included: SPEC refuses "JSON with a repeated member name"
//! without exception), and names are compared decoded, so `"\u0071uery"`
//! repeats `"query"`.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::Refusal;
use crate::error::BadGraphQl;

/// The document of a GraphQL `POST` body, or why there is none.
pub(super) fn graphql_query(body: &[u8]) -> Result<Cow<'_, str>, Refusal> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let top = Walk { top: true }
        .deserialize(&mut de)
        .and_then(|top| de.end().map(|()| top))
        .map_err(|e| -> Refusal {
            match e.classify() {
                // Our only custom error; every syntax fault is Syntax or Eof.
                serde_json::error::Category::Data => BadGraphQl::DuplicateMember.into(),
                _ => BadGraphQl::InvalidJson.into(),
            }
        })?;
    match top {
        Walked::Object(Some(query)) => Ok(query),
        Walked::Object(None) => Err(BadGraphQl::MissingQuery.into()),
        Walked::Array => Err(BadGraphQl::Batch.into()),
        Walked::Str(_) | Walked::Scalar => Err(BadGraphQl::NotObject.into()),
    }
}

/// What a JSON value was, keeping only what the check needs.
enum Walked<'de> {
    Str(Cow<'de, str>),
    /// An object; at the top level, its `query` member if that is a string.
    Object(Option<Cow<'de, str>>),
    Array,
    Scalar,
}

/// Walks one JSON value, refusing any object with a repeated member name.
#[derive(Clone, Copy)]
struct Walk {
    top: bool,
}

impl<'de> DeserializeSeed<'de> for Walk {
    type Value = Walked<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Walked<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk {
    type Value = Walked<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Walked<'de>, A::Error> {
        let mut seen = HashSet::new();
        let mut query = None;
        let inner = Walk { top: false };
        while let Some(name) = map.next_key_seed(Walk { top: false })? {
            let Walked::Str(name) = name else {
                return Err(de::Error::custom("member name is not a string"));
            };
            let is_query = self.top && name == "query";
            if !seen.insert(name) {
                return Err(de::Error::custom("repeated member name"));
            }
            let value = map.next_value_seed(inner)?;
            if let (true, Walked::Str(q)) = (is_query, value) {
                query = Some(q);
            }
        }
        Ok(Walked::Object(query))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Walked<'de>, A::Error> {
        while seq.next_element_seed(Walk { top: false })?.is_some() {}
        Ok(Walked::Array)
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Walked<'de>, E> {
        Ok(Walked::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Walked<'de>, E> {
        Ok(Walked::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Walked<'de>, E> {
        Ok(Walked::Str(Cow::Owned(v)))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Walked<'de>, E> {
        Ok(Walked::Scalar)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Walked<'de>, E> {
        Ok(Walked::Scalar)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Walked<'de>, E> {
        Ok(Walked::Scalar)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Walked<'de>, E> {
        Ok(Walked::Scalar)
    }
    fn visit_unit<E>(self) -> Result<Walked<'de>, E> {
        Ok(Walked::Scalar)
    }
}
