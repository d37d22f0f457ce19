//! Path → route: the longest prefix that matches whole segments.

use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Route {
    /// Without trailing slash; `/` matches everything.
    pub prefix: Arc<str>,
    pub upstream: Arc<str>,
    pub auth: RouteAuth,
}

/// What a route asks of a request before it goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAuth {
    /// A valid gateway key of the host's tenant (`auth: key`, `true`).
    Key,
    /// Nothing (`auth: none`, `false`): Twenty's own checks only.
    None,
    /// A non-empty `token` query parameter (`auth: twenty_token`): Twenty's
    /// signed file links, which Twenty checks itself.
    TwentyToken,
}

impl RouteAuth {
    /// The config's spelling, or `None` if `s` is not one.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "key" => Some(RouteAuth::Key),
            "none" => Some(RouteAuth::None),
            "twenty_token" => Some(RouteAuth::TwentyToken),
            _ => None,
        }
    }
}

/// Routes in config order, searched longest prefix first. The config's
/// table holds [`Route`]s; the runtime compiles one per tenant whose entries
/// carry the tenant's upstream and counters ([`RouteTable::map`]).
#[derive(Debug)]
pub struct RouteTable<V = Route> {
    prefixes: Vec<Arc<str>>,
    entries: Vec<V>,
    by_length: Vec<usize>,
}

impl<V> Default for RouteTable<V> {
    fn default() -> Self {
        RouteTable {
            prefixes: Vec::new(),
            entries: Vec::new(),
            by_length: Vec::new(),
        }
    }
}

impl RouteTable<Route> {
    pub fn new(routes: Vec<Route>) -> Self {
        let prefixes: Vec<Arc<str>> = routes.iter().map(|r| r.prefix.clone()).collect();
        let mut by_length: Vec<usize> = (0..routes.len()).collect();
        by_length.sort_by_key(|i| std::cmp::Reverse(prefixes[*i].len()));
        RouteTable {
            prefixes,
            entries: routes,
            by_length,
        }
    }
}

impl<V> RouteTable<V> {
    /// Entries in config order.
    pub fn routes(&self) -> &[V] {
        &self.entries
    }

    /// The entry whose prefix is the longest that matches `path` by whole
    /// segments.
    pub fn lookup(&self, path: &str) -> Option<&V> {
        self.by_length
            .iter()
            .find(|i| segment_prefix(&self.prefixes[**i], path))
            .map(|i| &self.entries[*i])
    }

    /// The same table with every entry replaced by `f(index, entry)`
    /// (`index`: the entry's place in config order).
    pub fn map<U>(&self, mut f: impl FnMut(usize, &V) -> U) -> RouteTable<U> {
        RouteTable {
            prefixes: self.prefixes.clone(),
            entries: self
                .entries
                .iter()
                .enumerate()
                .map(|(i, v)| f(i, v))
                .collect(),
            by_length: self.by_length.clone(),
        }
    }
}

fn segment_prefix(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable::new(
            [
                ("/rest/metadata", "metadata"),
                ("/metadata", "metadata"),
                ("/rest", "core"),
                ("/graphql", "core"),
            ]
            .into_iter()
            .map(|(p, u)| Route {
                prefix: p.into(),
                upstream: u.into(),
                auth: RouteAuth::Key,
            })
            .collect(),
        )
    }

    #[test]
    fn longest_whole_segment_prefix() {
        let t = table();
        let up = |p: &str| t.lookup(p).map(|r| &*r.upstream);
        assert_eq!(up("/rest/metadata/objects"), Some("metadata"));
        assert_eq!(up("/rest/metadata"), Some("metadata"));
        assert_eq!(up("/rest/metadatax"), Some("core"));
        assert_eq!(up("/rest/people"), Some("core"));
        assert_eq!(up("/rest"), Some("core"));
        assert_eq!(up("/rest/"), Some("core"));
        assert_eq!(up("/restaurant"), None);
        assert_eq!(up("/graphql"), Some("core"));
        assert_eq!(up("/metadata"), Some("metadata"));
        assert_eq!(up("/"), None);
    }
}
