//! Path → route: the longest prefix that matches whole segments.

use std::sync::Arc;

#[derive(Debug)]
pub struct Route {
    /// Without trailing slash; `/` matches everything.
    pub prefix: Arc<str>,
    pub upstream: Arc<str>,
    pub auth: bool,
}

/// Routes in config order, searched longest prefix first.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    by_length: Vec<usize>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        let mut by_length: Vec<usize> = (0..routes.len()).collect();
        by_length.sort_by_key(|i| std::cmp::Reverse(routes[*i].prefix.len()));
        RouteTable { routes, by_length }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for `path` and its index (the index of the tenant's
    /// resolved upstream).
    pub fn lookup(&self, path: &str) -> Option<(usize, &Route)> {
        self.by_length
            .iter()
            .map(|i| (*i, &self.routes[*i]))
            .find(|(_, r)| segment_prefix(&r.prefix, path))
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
                auth: true,
            })
            .collect(),
        )
    }

    #[test]
    fn longest_whole_segment_prefix() {
        let t = table();
        let up = |p: &str| t.lookup(p).map(|(_, r)| &*r.upstream);
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
