//! The Lua script that runs governor's GCRA on Redis, the key names it
//! works on, and the mapping of its reply to [`Decision`]s.
//!
//! GCRA as governor does it (`gcra.rs`), in nanoseconds: `t` = one cell's
//! replenish interval, `tau = t * (burst - 1)`; with TAT the stored
//! theoretical arrival time (missing = now), a request is refused when
//! `TAT - now > tau` and must wait `TAT - now - tau`; otherwise it is allowed
//! and `TAT = max(TAT, now) + t`. The script reports `TAT - now` before the
//! update (the backlog) or the wait; the `RateLimit` numbers are computed
//! from them here, with the same integer arithmetic as the local limiter.
//!
//! Instants are stored as decimal nanoseconds since the Unix epoch and read
//! back in two parts (seconds, nanoseconds), so that Lua's doubles stay
//! exact: every value the script computes with is a difference of at most
//! `tau + t` (exact below 2^53 ns, about 104 days).

use std::fmt::Write;
use std::net::IpAddr;
use std::time::Duration;

use crate::ratelimit::per_ip::bucket as ip_bucket;
use crate::ratelimit::{Decision, Rate};

/// KEYS: `[block]`, then one key per GCRA limiter.
/// ARGV: op (`check` | `fail`), has_block (`0` | `1`), then `t`, `tau` per
/// limiter (for `fail`: the failure counter's).
///
/// Reply: `{now_s, now_ns, blocked, block_left_ns}`, then for `check` one
/// `allowed, backlog_or_wait` pair per limiter checked, stopping at the
/// first refusal.
pub(super) const LUA: &str = r#"
local clock = redis.call('TIME')
local now_s = tonumber(clock[1])
local now_ns = tonumber(clock[2]) * 1000

-- A stored instant minus now, in ns (nil if the value is not ours).
local function ahead(v)
  local n = #v
  local s = tonumber(string.sub(v, 1, n - 9))
  local ns = tonumber(string.sub(v, n - 8))
  if not s or not ns then return nil end
  return (s - now_s) * 1e9 + (ns - now_ns)
end

-- Store now + d (ns, > 0) under key, expiring when that instant passes.
local function store(key, d)
  local total = now_ns + d
  local s = math.floor(total / 1e9)
  local ns = total - s * 1e9
  if ns < 0 then s = s - 1; ns = ns + 1e9 elseif ns >= 1e9 then s = s + 1; ns = ns - 1e9 end
  redis.call('SET', key, string.format('%d%09d', now_s + s, ns), 'PX', math.ceil(d / 1e6))
end

local function gcra(key, t, tau)
  local backlog = 0
  local v = redis.call('GET', key)
  if v then backlog = math.max(ahead(v) or 0, 0) end
  if backlog > tau then return 0, backlog - tau end
  store(key, backlog + t)
  return 1, backlog
end

local out = {now_s, now_ns, 0, 0}
local first = 1
if ARGV[2] == '1' then
  local v = redis.call('GET', KEYS[1])
  local left = v and ahead(v)
  if left and left > 0 then
    out[3] = 1; out[4] = left
    return out
  end
  first = 2
end
if ARGV[1] == 'fail' then
  local ok, wait = gcra(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
  if ok == 0 then
    store(KEYS[1], wait)
    out[3] = 1; out[4] = wait
  end
  return out
end
local a = 3
for i = first, #KEYS do
  local ok, x = gcra(KEYS[i], tonumber(ARGV[a]), tonumber(ARGV[a + 1]))
  a = a + 2
  out[#out + 1] = ok
  out[#out + 1] = x
  if ok == 0 then break end
end
return out
"#;

/// governor's `t`: one cell's interval, at least 1 ns.
fn t_ns(rate: &Rate) -> u64 {
    u64::try_from(rate.interval().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// governor's `tau`: the tolerance beyond one cell.
fn tau_ns(rate: &Rate) -> u64 {
    t_ns(rate).saturating_mul(u64::from(rate.burst.get() - 1))
}

/// Part of every key name: a changed quota starts fresh, an unchanged one
/// continues across reloads and restarts.
fn fingerprint(rate: &Rate, out: &mut String) {
    let _ = write!(
        out,
        "q{}p{}b{}",
        rate.requests,
        rate.per.as_nanos(),
        rate.burst
    );
}

/// The decision for an allowed request that found `backlog` ns queued:
/// governor's remaining capacity, `(tau - backlog) / t` cells.
fn allowed(rate: Rate, backlog: u64) -> Decision {
    let remaining = tau_ns(&rate).saturating_sub(backlog) / t_ns(&rate);
    Decision::allowed(rate, u32::try_from(remaining).unwrap_or(u32::MAX))
}

/// Builds key names: `<prefix>{t:<tenant>}:<kind>:...`. The hash tag puts
/// every key one request touches in one Redis Cluster slot. Names and ids
/// are escaped (`%XX` outside `[A-Za-z0-9._-]`) so no two owners share a
/// key and no name can move the hash tag.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    pub prefix: String,
    /// Redis Cluster: the brake is kept per tenant and client address (its
    /// keys must share the request's slot); otherwise per client address.
    pub cluster: bool,
}

impl Keys {
    fn tenant_tag(&self, tenant: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + tenant.len() + 48);
        k.push_str(&self.prefix);
        k.push_str("{t:");
        escape(tenant, &mut k);
        k.push('}');
        k
    }

    pub fn key(&self, tenant: &str, key_id: &str, q: &Rate) -> String {
        let mut k = self.tenant_tag(tenant);
        k.push_str(":k:");
        escape(key_id, &mut k);
        k.push(':');
        fingerprint(q, &mut k);
        k
    }

    pub fn tenant(&self, tenant: &str, q: &Rate) -> String {
        let mut k = self.tenant_tag(tenant);
        k.push_str(":t:");
        fingerprint(q, &mut k);
        k
    }

    fn brake_base(&self, tenant: &str, ip: IpAddr, kind: &str) -> String {
        let mut k = if self.cluster {
            let mut k = self.tenant_tag(tenant);
            k.push(':');
            k
        } else {
            self.prefix.clone()
        };
        let _ = write!(k, "{kind}:{}:", ip_bucket(ip));
        k
    }

    /// The brake's failure counter (a GCRA at `auth_failures_per_ip`).
    pub fn failures(&self, tenant: &str, ip: IpAddr, q: &Rate) -> String {
        let mut k = self.brake_base(tenant, ip, "f");
        fingerprint(q, &mut k);
        k
    }

    /// "Blocked until": set when the failure counter refuses.
    pub fn block(&self, tenant: &str, ip: IpAddr, q: &Rate) -> String {
        let mut k = self.brake_base(tenant, ip, "b");
        fingerprint(q, &mut k);
        k
    }

    /// `limits.anonymous_per_ip`: one GCRA per client address.
    pub fn anonymous(&self, ip: IpAddr, q: &Rate) -> String {
        let mut k = self.prefix.clone();
        let _ = write!(k, "a:{}:", ip_bucket(ip));
        fingerprint(q, &mut k);
        k
    }
}

fn escape(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// The script's reply, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reply {
    /// Redis `TIME` the script ran at.
    pub now: Duration,
    /// Time left on the client's block, if braked.
    pub blocked: Option<Duration>,
    /// One per limiter checked, in order.
    pub decisions: Vec<Decision>,
}

pub(super) fn args(op: &str, has_block: bool, limiters: &[Rate]) -> Vec<String> {
    let mut a = Vec::with_capacity(2 + 2 * limiters.len());
    a.push(op.to_string());
    a.push(if has_block { "1" } else { "0" }.to_string());
    for q in limiters {
        a.push(t_ns(q).to_string());
        a.push(tau_ns(q).to_string());
    }
    a
}

/// `None`: not the shape the script returns.
pub(super) fn decode(v: &[i64], limiters: &[Rate]) -> Option<Reply> {
    let nonneg = |x: i64| u64::try_from(x).ok();
    let (&[s, ns, blocked, left], rest) = v.split_first_chunk::<4>()?;
    let now = Duration::from_secs(nonneg(s)?) + Duration::from_nanos(nonneg(ns)?);
    let blocked = match blocked {
        0 => None,
        1 => Some(Duration::from_nanos(nonneg(left)?)),
        _ => return None,
    };
    if rest.len() % 2 != 0 || rest.len() / 2 > limiters.len() {
        return None;
    }
    let mut decisions = Vec::with_capacity(rest.len() / 2);
    for (pair, q) in rest.chunks_exact(2).zip(limiters) {
        let x = nonneg(pair[1])?;
        decisions.push(match pair[0] {
            1 => allowed(*q, x),
            0 => Decision::denied(*q, Duration::from_nanos(x)),
            _ => return None,
        });
    }
    Some(Reply {
        now,
        blocked,
        decisions,
    })
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn q(requests: u32, per: Duration, burst: u32) -> Rate {
        Rate {
            requests: NonZeroU32::new(requests).unwrap(),
            per,
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    #[test]
    fn key_names_share_a_slot_and_hold_no_secrets() {
        let keys = Keys {
            prefix: "gw:".into(),
            cluster: true,
        };
        let quota = q(10, Duration::from_secs(60), 10);
        let k = keys.key("acme}x", "ci:1", &quota);
        assert_eq!(k, "gw:{t:acme%7Dx}:k:ci%3A1:q10p60000000000b10");
        let ip: IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(
            keys.block("acme}x", ip, &quota),
            "gw:{t:acme%7Dx}:b:2001:db8:::q10p60000000000b10"
        );
        let single = Keys {
            prefix: "gw:".into(),
            cluster: false,
        };
        assert_eq!(
            single.failures("acme", "192.0.2.1".parse().unwrap(), &quota),
            "gw:f:192.0.2.1:q10p60000000000b10"
        );
    }

    #[test]
    fn spec_example_numbers() {
        // {requests: 600, per: 1m, burst: 50}: first response r=49, t=1.
        let quota = q(600, Duration::from_secs(60), 50);
        assert_eq!(
            allowed(quota, 0),
            Decision::Allowed {
                remaining: 49,
                reset: 1
            }
        );
        let quota = q(1, Duration::from_secs(10), 2);
        assert_eq!(
            Decision::denied(quota, Duration::from_secs(10)),
            Decision::Denied {
                retry_after: Duration::from_secs(10),
                reset: 20
            }
        );
    }

    #[test]
    fn decode_rejects_other_shapes() {
        let quota = q(1, Duration::from_secs(1), 1);
        assert!(decode(&[1, 2, 0], &[quota]).is_none());
        assert!(decode(&[1, 2, 0, 0, 1], &[quota]).is_none());
        assert!(decode(&[1, 2, 0, 0, 1, 0, 1, 0], &[quota]).is_none());
        assert!(decode(&[1, 2, 5, 0], &[]).is_none());
        let r = decode(&[1, 2, 1, 3_000_000_000], &[]).expect("blocked");
        assert_eq!(r.blocked, Some(Duration::from_secs(3)));
    }
}
