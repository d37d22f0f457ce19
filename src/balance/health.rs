//! A server's health as a plain state machine: request outcomes (passive)
//! and check results (active) in, `Down`/`Up` transitions out. Time comes
//! in as an argument, so tests drive it without sleeping.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use super::connect::TlsClient;

/// Without active checks: connect failures or timeouts in a row that take a
/// server out.
pub const PASSIVE_UNHEALTHY_AFTER: u32 = 3;
/// Without active checks: how long a server that went down is skipped
/// before requests try it again.
pub const PASSIVE_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Active health checks of a pool's servers (`health_check` in the config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// Requested with `GET`; any 2xx passes.
    pub path: http::uri::PathAndQuery,
    pub interval: Duration,
    /// For connecting, the TLS handshake and the response head together.
    pub timeout: Duration,
    /// Failed checks (and, for requests, connect failures or timeouts) in a
    /// row that take a server out.
    pub unhealthy_after: NonZeroU32,
    /// Passed checks in a row that bring it back.
    pub healthy_after: NonZeroU32,
}

/// What a check task was started with; a reload that changes it restarts
/// the task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSettings {
    pub check: HealthCheck,
    pub tls: Option<TlsClient>,
}

/// What became of a request sent to a server, for passive health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered (any status: a 5xx is Twenty speaking).
    Success,
    /// No connection: refused, reset or closed before anything was sent,
    /// TLS handshake failed.
    ConnectFailure,
    /// Connecting or the response head took too long.
    Timeout,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Down,
    Up,
}

/// The thresholds in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub unhealthy_after: u32,
    pub healthy_after: u32,
    /// Active checks run: only they bring a server back.
    pub active: bool,
}

impl Policy {
    pub fn new(check: Option<&HealthCheck>) -> Self {
        match check {
            Some(c) => Policy {
                unhealthy_after: c.unhealthy_after.get(),
                healthy_after: c.healthy_after.get(),
                active: true,
            },
            None => Policy {
                unhealthy_after: PASSIVE_UNHEALTHY_AFTER,
                healthy_after: 1,
                active: false,
            },
        }
    }
}

#[derive(Debug)]
pub struct Health {
    healthy: bool,
    /// Requests that failed to connect or timed out, in a row.
    strikes: u32,
    check_failures: u32,
    check_passes: u32,
    /// While down: since when (a failed retry restarts the passive wait).
    down_since: Option<Instant>,
    policy: Policy,
}

impl Health {
    /// Servers start healthy.
    pub fn new(policy: Policy) -> Self {
        Health {
            healthy: true,
            strikes: 0,
            check_failures: 0,
            check_passes: 0,
            down_since: None,
            policy,
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Healthy with no strike against it: a success changes nothing.
    pub fn clean(&self) -> bool {
        self.healthy && self.strikes == 0
    }

    /// May requests go to it? A healthy server, or, without active checks,
    /// one whose passive wait is over (the next requests try it again).
    pub fn eligible(&self, now: Instant) -> bool {
        self.healthy
            || (!self.policy.active
                && self
                    .down_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= PASSIVE_RETRY_AFTER))
    }

    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    pub fn on_request(&mut self, outcome: Outcome, now: Instant) -> Option<Change> {
        match outcome {
            Outcome::Success => {
                self.strikes = 0;
                // Without checks, an answer is the proof it is back; with
                // them, the checks decide.
                (!self.healthy && !self.policy.active).then(|| self.up())
            }
            Outcome::ConnectFailure | Outcome::Timeout => {
                self.strikes = self.strikes.saturating_add(1);
                if self.healthy {
                    (self.strikes >= self.policy.unhealthy_after).then(|| self.down(now))
                } else {
                    // A retry that failed: another full wait.
                    self.down_since = Some(now);
                    None
                }
            }
        }
    }

    pub fn on_check(&mut self, passed: bool, now: Instant) -> Option<Change> {
        if passed {
            self.check_failures = 0;
            self.check_passes = self.check_passes.saturating_add(1);
            (!self.healthy && self.check_passes >= self.policy.healthy_after).then(|| self.up())
        } else {
            self.check_passes = 0;
            self.check_failures = self.check_failures.saturating_add(1);
            (self.healthy && self.check_failures >= self.policy.unhealthy_after)
                .then(|| self.down(now))
        }
    }

    fn down(&mut self, now: Instant) -> Change {
        self.healthy = false;
        self.check_passes = 0;
        self.down_since = Some(now);
        Change::Down
    }

    fn up(&mut self) -> Change {
        self.healthy = true;
        self.strikes = 0;
        self.check_failures = 0;
        self.down_since = None;
        Change::Up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(unhealthy_after: u32, healthy_after: u32) -> HealthCheck {
        HealthCheck {
            path: http::uri::PathAndQuery::from_static("/healthz"),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            unhealthy_after: NonZeroU32::new(unhealthy_after).unwrap(),
            healthy_after: NonZeroU32::new(healthy_after).unwrap(),
        }
    }

    #[test]
    fn passive_three_strikes_then_ten_seconds_then_tried_again() {
        let t0 = Instant::now();
        let mut h = Health::new(Policy::new(None));
        assert_eq!(h.on_request(Outcome::ConnectFailure, t0), None);
        assert_eq!(h.on_request(Outcome::Timeout, t0), None);
        // A success in between resets the count.
        assert_eq!(h.on_request(Outcome::Success, t0), None);
        assert!(h.clean());
        for _ in 0..2 {
            assert_eq!(h.on_request(Outcome::ConnectFailure, t0), None);
        }
        assert_eq!(
            h.on_request(Outcome::ConnectFailure, t0),
            Some(Change::Down)
        );
        assert!(!h.eligible(t0 + Duration::from_secs(9)));
        let t10 = t0 + PASSIVE_RETRY_AFTER;
        assert!(h.eligible(t10));
        // The retry fails: skipped for another 10 s, no second event.
        assert_eq!(h.on_request(Outcome::ConnectFailure, t10), None);
        assert!(!h.eligible(t10 + Duration::from_secs(5)));
        let t20 = t10 + PASSIVE_RETRY_AFTER;
        assert!(h.eligible(t20));
        assert_eq!(h.on_request(Outcome::Success, t20), Some(Change::Up));
        assert!(h.clean() && h.eligible(t20));
    }

    #[test]
    fn active_checks_take_out_and_bring_back() {
        let t0 = Instant::now();
        let mut h = Health::new(Policy::new(Some(&check(2, 3))));
        assert_eq!(h.on_check(false, t0), None);
        assert_eq!(h.on_check(true, t0), None);
        assert_eq!(h.on_check(false, t0), None);
        assert_eq!(h.on_check(false, t0), Some(Change::Down));
        // Skipped until the checks pass, however long it takes; requests
        // that happen to succeed (all servers down) do not bring it back.
        assert!(!h.eligible(t0 + Duration::from_secs(3600)));
        assert_eq!(h.on_request(Outcome::Success, t0), None);
        assert_eq!(h.on_check(true, t0), None);
        assert_eq!(h.on_check(true, t0), None);
        assert_eq!(h.on_check(false, t0), None);
        assert_eq!(h.on_check(true, t0), None);
        assert_eq!(h.on_check(true, t0), None);
        assert_eq!(h.on_check(true, t0), Some(Change::Up));
        assert!(h.eligible(t0));
    }

    #[test]
    fn with_active_checks_requests_use_their_threshold_and_wait_for_checks() {
        let t0 = Instant::now();
        let mut h = Health::new(Policy::new(Some(&check(2, 1))));
        assert_eq!(h.on_request(Outcome::Timeout, t0), None);
        assert_eq!(
            h.on_request(Outcome::ConnectFailure, t0),
            Some(Change::Down)
        );
        assert!(!h.eligible(t0 + PASSIVE_RETRY_AFTER * 10));
        assert_eq!(h.on_check(true, t0), Some(Change::Up));
    }

    #[test]
    fn dropping_active_checks_falls_back_to_the_passive_wait() {
        let t0 = Instant::now();
        let mut h = Health::new(Policy::new(Some(&check(1, 1))));
        assert_eq!(h.on_check(false, t0), Some(Change::Down));
        h.set_policy(Policy::new(None));
        assert!(!h.eligible(t0));
        assert!(h.eligible(t0 + PASSIVE_RETRY_AFTER));
    }
}
