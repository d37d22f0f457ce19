//! A pool: the servers of one upstream in one config generation, the
//! choice among them (power of two choices on requests in flight) and
//! failover of what was never sent.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::connect::TlsClient;
use super::health::Outcome;
use super::server::Server;

/// The servers one upstream name stands for (at least one), with the TLS
/// client its `https://` servers are reached with.
#[derive(Debug)]
pub struct ServerPool {
    upstream: Arc<str>,
    servers: Box<[Arc<Server>]>,
    tls: Option<TlsClient>,
}

/// A server chosen for one request: it counts as outstanding there until
/// this is dropped. Keep it for as long as the exchange lasts (the response
/// body included).
#[derive(Debug)]
pub struct Pick {
    server: Arc<Server>,
    index: usize,
}

impl Pick {
    fn new(pool: &ServerPool, index: usize) -> Self {
        let server = pool.servers[index].clone();
        server.begin();
        Pick { server, index }
    }

    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// The server's place in its pool (same order as the config).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Passive health: what became of the request.
    pub fn report(&self, outcome: Outcome) {
        self.server.report(outcome);
    }

    pub fn report_at(&self, outcome: Outcome, now: Instant) {
        self.server.report_at(outcome, now);
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.server.end();
    }
}

impl ServerPool {
    pub(crate) fn new(
        upstream: Arc<str>,
        servers: Vec<Arc<Server>>,
        tls: Option<TlsClient>,
    ) -> Self {
        debug_assert!(!servers.is_empty());
        ServerPool {
            upstream,
            servers: servers.into(),
            tls,
        }
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    pub fn servers(&self) -> &[Arc<Server>] {
        &self.servers
    }

    /// The TLS client for this pool's `https://` servers.
    pub fn tls(&self) -> Option<&TlsClient> {
        self.tls.as_ref()
    }

    /// Which server? The one with fewer requests in flight of two different
    /// healthy ones taken at random; one server is simply it; when none is
    /// healthy, still one of them.
    pub fn pick(&self) -> Pick {
        self.pick_with(&mut Instant::now)
    }

    /// [`Self::pick`] at a given time (tests drive the clock).
    pub fn pick_at(&self, now: Instant) -> Pick {
        self.pick_with(&mut || now)
    }

    fn pick_with(&self, now: &mut impl FnMut() -> Instant) -> Pick {
        let index = if self.servers.len() == 1 {
            0
        } else {
            let mut now = lazy(now);
            self.choose(&[], &mut now).unwrap_or(0)
        };
        Pick::new(self, index)
    }

    /// Power of two choices among the servers not in `tried` that may take
    /// requests now, or, when none may, among all not in `tried`.
    fn choose(&self, tried: &[usize], now: &mut impl FnMut() -> Instant) -> Option<usize> {
        let n = self.servers.len();
        // Flags taken once (a down server costs a lock), on the stack for
        // any pool of a sane size.
        let (mut stack, mut heap) = ([false; 16], Vec::new());
        let eligible: &mut [bool] = if n <= stack.len() {
            &mut stack[..n]
        } else {
            heap.resize(n, false);
            &mut heap
        };
        for (i, flag) in eligible.iter_mut().enumerate() {
            *flag = !tried.contains(&i) && self.servers[i].eligible(now);
        }
        if !eligible.contains(&true) {
            for (i, flag) in eligible.iter_mut().enumerate() {
                *flag = !tried.contains(&i);
            }
        }
        let count = eligible.iter().filter(|e| **e).count();
        (count > 0).then(|| self.two_choices(count, |rank| nth(eligible, rank)))
    }

    /// Two different candidates out of `count` (by rank, `index` maps a
    /// rank to a server); the one with fewer requests in flight.
    fn two_choices(&self, count: usize, index: impl Fn(usize) -> usize) -> usize {
        if count == 1 {
            return index(0);
        }
        let (a, mut b) =
            RNG.with_borrow_mut(|rng| (rng.random_range(0..count), rng.random_range(0..count - 1)));
        if b >= a {
            b += 1;
        }
        let (a, b) = (index(a), index(b));
        if self.servers[b].outstanding() < self.servers[a].outstanding() {
            b
        } else {
            a
        }
    }

    /// Start a request's way to a server, never sent anywhere yet, with
    /// `budget` (the connect timeout) for every attempt together.
    pub fn failover(&self, budget: Duration) -> Failover<'_> {
        Failover {
            pool: self,
            tried: Vec::new(),
            deadline: Instant::now() + budget,
        }
    }
}

thread_local! {
    /// Load balancing wants speed, not secrecy: a small generator per
    /// thread, seeded once from the OS.
    static RNG: std::cell::RefCell<SmallRng> = std::cell::RefCell::new(SmallRng::from_os_rng());
}

/// The index of the `rank`-th set flag (there are more than `rank`).
fn nth(flags: &[bool], rank: usize) -> usize {
    flags
        .iter()
        .enumerate()
        .filter(|(_, f)| **f)
        .nth(rank)
        .map_or(0, |(i, _)| i)
}

/// `now` called at most once.
fn lazy(now: &mut impl FnMut() -> Instant) -> impl FnMut() -> Instant + '_ {
    let mut at = None;
    move || *at.get_or_insert_with(&mut *now)
}

/// One request's attempts: which servers it tried and by when it must be
/// on a connection. A request goes to another server only while nothing of
/// it was sent (connection refused, TLS failed, reset before the first
/// byte); once sent, it is never replayed.
pub struct Failover<'p> {
    pool: &'p ServerPool,
    tried: Vec<usize>,
    deadline: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum Unreachable<E> {
    #[error("no server connected within the connect timeout")]
    Timeout,
    #[error(transparent)]
    Failed(E),
}

impl Failover<'_> {
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The first choice, as [`ServerPool::pick`].
    pub fn first(&mut self) -> Pick {
        let pick = self.pool.pick();
        self.tried.push(pick.index);
        pick
    }

    /// `failed` could not take the request (nothing was sent): report it
    /// and choose a server not tried yet (a healthy one if any is left).
    pub fn next(&mut self, failed: Pick, outcome: Outcome) -> Option<Pick> {
        failed.report(outcome);
        drop(failed);
        let index = self
            .pool
            .choose(&self.tried, &mut lazy(&mut Instant::now))?;
        self.tried.push(index);
        Some(Pick::new(self.pool, index))
    }

    /// Connect with `connect`, starting at `pick`, moving to the next
    /// server on every failure, until one connects, none is left, or the
    /// deadline passes (reported as a timeout of the server being tried).
    pub async fn connect<C, E, F, Fut>(
        &mut self,
        mut pick: Pick,
        mut connect: F,
    ) -> Result<(Pick, C), Unreachable<E>>
    where
        F: FnMut(&Pick) -> Fut,
        Fut: Future<Output = Result<C, E>>,
    {
        let deadline = tokio::time::Instant::from_std(self.deadline);
        loop {
            match tokio::time::timeout_at(deadline, connect(&pick)).await {
                Ok(Ok(c)) => return Ok((pick, c)),
                Ok(Err(e)) => match self.next(pick, Outcome::ConnectFailure) {
                    Some(p) => pick = p,
                    None => return Err(Unreachable::Failed(e)),
                },
                Err(_) => {
                    pick.report(Outcome::Timeout);
                    return Err(Unreachable::Timeout);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{PoolSpec, Registry, ServerUrl};

    fn pool(n: usize) -> Arc<ServerPool> {
        let spec = PoolSpec {
            servers: (0..n)
                .map(|i| ServerUrl::parse(&format!("http://10.0.0.{i}:3000")).unwrap())
                .collect(),
            health_check: None,
            tls: None,
        };
        let registry = Registry::default();
        let mut build = registry.build();
        let pool = build.pool("core", &spec).unwrap();
        build.commit();
        pool
    }

    /// Picks per server over `rounds` picks, each released at once.
    fn spread(pool: &ServerPool, rounds: usize, now: Instant) -> Vec<usize> {
        let mut counts = vec![0; pool.servers().len()];
        for _ in 0..rounds {
            counts[pool.pick_at(now).index] += 1;
        }
        counts
    }

    fn down(server: &Server, now: Instant) {
        for _ in 0..crate::balance::health::PASSIVE_UNHEALTHY_AFTER {
            server.report_at(Outcome::ConnectFailure, now);
        }
        assert!(!server.is_healthy());
    }

    #[test]
    fn one_server_is_always_it() {
        let pool = pool(1);
        let now = Instant::now();
        down(&pool.servers()[0], now);
        assert_eq!(spread(&pool, 100, now), [100]);
    }

    #[test]
    fn idle_servers_share_evenly() {
        let pool = pool(3);
        let counts = spread(&pool, 30_000, Instant::now());
        for c in &counts {
            assert!((9_000..11_000).contains(c), "{counts:?}");
        }
        assert!(pool.servers().iter().all(|s| s.outstanding() == 0));
    }

    #[test]
    fn a_slow_server_gets_less() {
        // Server 0 holds each request for the next 20 picks; the others
        // answer at once.
        let pool = pool(3);
        let mut held = std::collections::VecDeque::new();
        let mut counts = [0usize; 3];
        for _ in 0..3_000 {
            let pick = pool.pick();
            counts[pick.index] += 1;
            if pick.index == 0 {
                held.push_back(pick);
            }
            if held.len() > 20 {
                held.pop_front();
            }
        }
        assert!(counts[0] < 300, "{counts:?}");
        assert!(counts[1] > 1_000 && counts[2] > 1_000, "{counts:?}");
        assert_eq!(pool.servers()[0].outstanding(), held.len());
        drop(held);
        assert_eq!(pool.servers()[0].outstanding(), 0);
    }

    #[test]
    fn down_servers_are_skipped_then_tried_again() {
        let pool = pool(3);
        let t0 = Instant::now();
        down(&pool.servers()[0], t0);
        let counts = spread(&pool, 3_000, t0 + Duration::from_secs(9));
        assert_eq!(counts[0], 0, "{counts:?}");
        // The passive wait is over: it takes requests again, and the first
        // answer makes it healthy.
        let t10 = t0 + crate::balance::health::PASSIVE_RETRY_AFTER;
        let counts = spread(&pool, 3_000, t10);
        assert!(counts[0] > 500, "{counts:?}");
        let pick = (0..)
            .map(|_| pool.pick_at(t10))
            .find(|p| p.index == 0)
            .unwrap();
        pick.report_at(Outcome::Success, t10);
        assert!(pool.servers()[0].is_healthy());
    }

    #[test]
    fn with_every_server_down_requests_still_go_somewhere() {
        let pool = pool(2);
        let t0 = Instant::now();
        for s in pool.servers() {
            down(s, t0);
        }
        let counts = spread(&pool, 2_000, t0 + Duration::from_secs(1));
        assert!(counts.iter().all(|c| *c > 500), "{counts:?}");
    }

    #[test]
    fn failover_tries_each_server_once() {
        let pool = pool(3);
        let mut failover = pool.failover(Duration::from_secs(1));
        let mut seen = vec![];
        let mut pick = Some(failover.first());
        while let Some(p) = pick {
            seen.push(p.index);
            assert_eq!(p.server().outstanding(), 1);
            pick = failover.next(p, Outcome::ConnectFailure);
        }
        seen.sort();
        assert_eq!(seen, [0, 1, 2]);
        assert!(pool.servers().iter().all(|s| s.outstanding() == 0));
    }

    #[tokio::test]
    async fn failover_connects_to_the_next_and_stops_at_the_deadline() {
        let pool = pool(3);
        let bad = pool.servers()[0].clone();
        // Server 0 refuses, the others connect: always ends elsewhere.
        for _ in 0..10 {
            let mut failover = pool.failover(Duration::from_secs(5));
            let first = failover.first();
            let (pick, ()) = failover
                .connect(first, |p| {
                    let refuse = Arc::ptr_eq(p.server(), &bad);
                    async move { if refuse { Err("refused") } else { Ok(()) } }
                })
                .await
                .unwrap();
            assert!(!Arc::ptr_eq(pick.server(), &bad));
        }
        assert!(pool.servers().iter().all(|s| s.outstanding() == 0));

        // Nobody answers: the budget ends it.
        let mut failover = pool.failover(Duration::from_millis(50));
        let first = failover.first();
        let hung = first.server().clone();
        let r: Result<(Pick, ()), Unreachable<&str>> =
            failover.connect(first, |_| std::future::pending()).await;
        assert!(matches!(r, Err(Unreachable::Timeout)));
        assert_eq!(hung.outstanding(), 0);

        // Everyone refuses: the last error.
        let mut failover = pool.failover(Duration::from_secs(5));
        let first = failover.first();
        let r: Result<(Pick, ()), _> = failover.connect(first, |_| async { Err("refused") }).await;
        assert!(matches!(r, Err(Unreachable::Failed("refused"))));
    }
}
