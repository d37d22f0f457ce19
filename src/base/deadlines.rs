//! A map of name → deadline that costs nothing to ask while it is empty:
//! the local memories of refusals and blocks, looked up on every request
//! and usually empty.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

pub struct Deadlines<K: Eq + Hash> {
    map: DashMap<K, Instant>,
    /// False while the map is known empty (the usual case): lookups then
    /// hash nothing and lock no shard. Set after each insert, cleared by
    /// `prune` when it empties the map (and set again if an insert raced
    /// with it).
    used: AtomicBool,
}

impl<K: Eq + Hash> Default for Deadlines<K> {
    fn default() -> Self {
        Deadlines {
            map: DashMap::new(),
            used: AtomicBool::new(false),
        }
    }
}

impl<K: Eq + Hash> Deadlines<K> {
    pub fn is_empty(&self) -> bool {
        !self.used.load(Ordering::Acquire)
    }

    /// Entries held, live or not yet pruned.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Time left, if `key`'s deadline has not passed (a passed one is
    /// dropped).
    pub fn left<Q>(&self, key: &Q) -> Option<Duration>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        if self.is_empty() {
            return None;
        }
        let until = *self.map.get(key)?;
        let now = Instant::now();
        if until > now {
            Some(until - now)
        } else {
            self.map.remove_if(key, |_, u| *u <= now);
            None
        }
    }

    pub fn insert(&self, key: K, left: Duration) {
        self.map.insert(key, Instant::now() + left);
        self.used.store(true, Ordering::SeqCst);
    }

    /// [`Deadlines::insert`], holding at most `cap` entries: when full,
    /// passed deadlines are dropped first; if it is still full of live
    /// ones the new one is not kept (memory stays bounded; its owner is
    /// asked again next time).
    pub fn insert_bounded(&self, key: K, left: Duration, cap: usize) {
        if self.map.len() >= cap {
            self.prune();
            if self.map.len() >= cap {
                return;
            }
        }
        self.insert(key, left);
    }

    /// Drops every deadline that has passed.
    pub fn prune(&self) {
        let now = Instant::now();
        self.map.retain(|_, u| *u > now);
        if self.map.is_empty() {
            self.used.store(false, Ordering::SeqCst);
            // An `insert` that landed meanwhile set the flag before this
            // cleared it: look again.
            if !self.map.is_empty() {
                self.used.store(true, Ordering::SeqCst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_the_deadline_and_empties_on_prune() {
        let d: Deadlines<String> = Deadlines::default();
        assert!(d.is_empty());
        assert_eq!(d.left("a"), None);
        d.insert("a".into(), Duration::from_secs(60));
        d.insert("gone".into(), Duration::ZERO);
        assert!(!d.is_empty());
        let left = d.left("a").expect("live");
        assert!(left > Duration::from_secs(59) && left <= Duration::from_secs(60));
        assert_eq!(d.left("gone"), None, "a passed deadline answers nothing");
        assert_eq!(d.len(), 1, "and is dropped when looked up");
        d.prune();
        assert!(!d.is_empty(), "a live entry keeps the flag");
        let d: Deadlines<u8> = Deadlines::default();
        d.insert(1, Duration::ZERO);
        d.prune();
        assert!(d.is_empty());
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn a_bounded_insert_prunes_then_refuses_when_full_of_live_ones() {
        let d: Deadlines<u8> = Deadlines::default();
        d.insert_bounded(1, Duration::ZERO, 2);
        d.insert_bounded(2, Duration::from_secs(60), 2);
        d.insert_bounded(3, Duration::from_secs(60), 2);
        assert_eq!(d.left(&1), None);
        assert!(d.left(&3).is_some(), "the passed one made room");
        d.insert_bounded(4, Duration::from_secs(60), 2);
        assert_eq!(d.left(&4), None, "full of live ones: not kept");
        assert_eq!(d.len(), 2);
    }
}
