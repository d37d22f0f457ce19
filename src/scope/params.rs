//! GraphQL over `GET`: the document in the query string, read the way
//! Twenty's server reads it (WHATWG `application/x-www-form-urlencoded`:
//! `&`-separated, percent-decoding, `+` as space, names compared after
//! decoding, so `%71uery` is `query`).

use std::borrow::Cow;

use super::Refusal;
use crate::error::BadGraphQl;

/// The `query` parameter of a `GET`: present exactly once, with at most one
/// `operationName` beside it.
pub(super) fn graphql_query(query_string: Option<&str>) -> Result<Cow<'_, str>, Refusal> {
    let mut query = None;
    let mut operation_name = false;
    for (name, value) in form_urlencoded::parse(query_string.unwrap_or("").as_bytes()) {
        let repeated = match &*name {
            "query" => query.replace(value).is_some(),
            "operationName" => std::mem::replace(&mut operation_name, true),
            _ => false,
        };
        if repeated {
            return Err(BadGraphQl::DuplicateParam.into());
        }
    }
    query.ok_or(BadGraphQl::MissingQuery.into())
}

/// Whether a query string holds a `query` parameter (a `POST` must not).
pub(super) fn has_query(query_string: Option<&str>) -> bool {
    query_string
        .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(name, _)| name == "query"))
}
