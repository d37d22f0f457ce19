//! Is a GraphQL document read-only? Parsed with `apollo-parser` (a
//! spec-following, error-resilient parser, maintained by Apollo), bounded
//! in depth and tokens; verdicts cached by the document's SHA-256.

use apollo_parser::Parser;
use apollo_parser::cst;
use dashmap::DashMap;
use sha2::{Digest, Sha256};

/// Nesting the parser follows (selection sets, list and object values):
/// 128 selection sets deep at most.
/// Twenty's own queries nest a dozen levels; apollo-parser's default (500)
/// is sized for not overflowing a main thread's stack in debug builds.
pub const RECURSION_LIMIT: usize = 128;

/// Tokens the lexer produces before giving up (whitespace and comments
/// count). A 64 KiB body holds at most ~33k significant tokens; a real
/// 3 KiB query has ~1,000 tokens of all kinds.
pub const TOKEN_LIMIT: usize = 30_000;

/// What a document may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocVerdict {
    /// At least one operation, and every operation is a `query` (the
    /// anonymous `{ ... }` shorthand included) or a `subscription`.
    ReadOnly,
    /// It parses and some operation is a `mutation`.
    Writes,
    /// Not an executable GraphQL document: a syntax error, a limit reached,
    /// no operation at all, or a type-system definition (which a GraphQL
    /// server refuses to execute).
    Invalid,
}

/// Classifies one document. Never panics; runs in time linear in its
/// length (bounded by the two limits).
pub fn classify(document: &str) -> DocVerdict {
    let tree = Parser::new(document)
        .recursion_limit(RECURSION_LIMIT)
        .token_limit(TOKEN_LIMIT)
        .parse();
    if tree.errors().len() > 0 {
        return DocVerdict::Invalid;
    }
    let mut operations = 0usize;
    let mut writes = false;
    for definition in tree.document().definitions() {
        match definition {
            cst::Definition::OperationDefinition(op) => {
                operations += 1;
                match op.operation_type() {
                    // `{ ... }` with no keyword is a query.
                    None => {}
                    Some(t) if t.mutation_token().is_some() => writes = true,
                    Some(t) if t.query_token().is_some() || t.subscription_token().is_some() => {}
                    // An operation type that is none of the three cannot
                    // parse without errors; refuse it rather than guess.
                    Some(_) => return DocVerdict::Invalid,
                }
            }
            cst::Definition::FragmentDefinition(_) => {}
            _ => return DocVerdict::Invalid,
        }
    }
    match (operations, writes) {
        (0, _) => DocVerdict::Invalid,
        (_, true) => DocVerdict::Writes,
        (_, false) => DocVerdict::ReadOnly,
    }
}

/// Verdicts by SHA-256 of the document, at most `capacity` of them.
///
/// A `DashMap` (already a dependency) cleared whole when full, rather than
/// an LRU crate: verdicts are cheap to recompute (one parse), clients send
/// a small, fixed set of documents, so a rare full clear costs one parse
/// per document afterwards and needs no bookkeeping on the hit path. The
/// key is a cryptographic hash so that no one can make a mutation collide
/// with a cached read-only document.
pub struct VerdictCache {
    map: DashMap<[u8; 32], DocVerdict>,
    capacity: usize,
}

impl VerdictCache {
    pub const DEFAULT_CAPACITY: usize = 10_000;

    pub fn new(capacity: usize) -> Self {
        VerdictCache {
            map: DashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The verdict for `document`, parsed only when not cached.
    pub fn verdict(&self, document: &str) -> DocVerdict {
        let hash: [u8; 32] = Sha256::digest(document.as_bytes()).into();
        if let Some(v) = self.map.get(&hash) {
            return *v;
        }
        let verdict = classify(document);
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
        self.map.insert(hash, verdict);
        verdict
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl Default for VerdictCache {
    fn default() -> Self {
        VerdictCache::new(VerdictCache::DEFAULT_CAPACITY)
    }
}
