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
use std::sync::OnceLock;
use std::time::Duration;

use crate::ratelimit::per_ip::bucket as ip_bucket;
use crate::ratelimit::{Decision, Rate};

/// One call decides a batch of requests (every request that arrived while
/// the previous call was in flight, see `cluster::drive`), in order, at one
/// `TIME`: two requests of one key in one batch see each other's update.
/// Each key is read (`GET`) once per call and written (`SET ... PX`) once
/// at its end: a busy key's requests share them (those commands were
/// ~60 % of Redis's work per request).
///
/// KEYS: per entry `[block]`, then one key per GCRA limiter.
/// ARGV: the batch's distinct quotas: their number, then `t`, `tau` each;
/// then per entry a head `n + 4 * has_block + 8 * is_failure` (`n` the
/// number of limiters) and, per limiter, the 1-based index of its quota.
/// (Every argument costs Redis ~750 instructions to hand to the script:
/// most requests of a batch share one quota.)
///
/// Reply: one string of decimal integers separated by spaces (one bulk
/// reply parses much cheaper in the client than an array of integers):
/// `now_s now_ns`, then per entry either `-left` (braked, or a failure
/// that tripped the brake: ns until the block ends), or for a failure `0`,
/// or for a check the number of limiters checked (stopping at the first
/// refusal) followed by one value each: the backlog in ns (allowed) or
/// `-wait` (refused; a wait is never 0).
pub(super) const LUA: &str = r#"
local clock = redis.call('TIME')
local now_s = tonumber(clock[1])
local now_ns = tonumber(clock[2]) * 1000

-- A stored instant minus now, in ns (nil if the value is not ours: Lua's
-- tonumber also reads fractions, "inf" and "nan").
local function ahead(v)
  local n = #v
  local s = tonumber(string.sub(v, 1, n - 9))
  local ns = tonumber(string.sub(v, n - 8))
  if not s or not ns or s % 1 ~= 0 or ns % 1 ~= 0 then return nil end
  return (s - now_s) * 1e9 + (ns - now_ns)
end

-- What the batch knows of each key: ns ahead of now of its stored instant
-- (false: none). Read once per call, written once at the end: the
-- requests of one busy key share one GET and one SET.
local ahead_of, dirty = {}, {}
local function read(key)
  local d = ahead_of[key]
  if d == nil then
    local v = redis.call('GET', key)
    d = v and ahead(v) or false
    ahead_of[key] = d
  end
  return d or 0
end

-- Keep now + d (ns, > 0) under key, expiring when that instant passes.
local function write(key, d)
  if not dirty[key] then dirty[key] = true; dirty[#dirty + 1] = key end
  ahead_of[key] = d
end

local function store(key, d)
  local total = now_ns + d
  local s = math.floor(total / 1e9)
  local ns = total - s * 1e9
  if ns < 0 then s = s - 1; ns = ns + 1e9 elseif ns >= 1e9 then s = s + 1; ns = ns - 1e9 end
  redis.call('SET', key, string.format('%d%09d', now_s + s, ns), 'PX', math.ceil(d / 1e6))
end

local function gcra(key, t, tau)
  local backlog = math.max(read(key), 0)
  if backlog > tau then return 0, backlog - tau end
  write(key, backlog + t)
  return 1, backlog
end

-- Lua writes numbers with %.14g: exact digits below 1e14 only; %d wraps
-- at 2^63 (a quota's tau can be that large: ~292 years, capped there).
local out = {now_s, now_ns}
local function put(x)
  if x >= 1e14 or x <= -1e14 then
    x = string.format('%d', math.max(math.min(x, 9e18), -9e18))
  end
  out[#out + 1] = x
end

local nq = tonumber(ARGV[1])
local ts, taus = {}, {}
for i = 1, nq do ts[i] = tonumber(ARGV[2 * i]); taus[i] = tonumber(ARGV[2 * i + 1]) end
local k, a = 1, 2 + 2 * nq
while a <= #ARGV do
  local head = tonumber(ARGV[a])
  local n = head % 4
  local block
  if head % 8 >= 4 then block = KEYS[k]; k = k + 1 end
  local first_key, first_arg = k, a + 1
  k = k + n
  a = a + 1 + n
  local left = 0
  if block then left = read(block) end
  if left > 0 then
    put(-left)
  elseif head >= 8 then
    local q = tonumber(ARGV[first_arg])
    local ok, wait = gcra(KEYS[first_key], ts[q], taus[q])
    if ok == 0 then
      write(block, wait)
      put(-wait)
    else
      put(0)
    end
  else
    local at = #out + 1
    out[at] = 0
    for i = 0, n - 1 do
      local q = tonumber(ARGV[first_arg + i])
      local ok, x = gcra(KEYS[first_key + i], ts[q], taus[q])
      out[at] = out[at] + 1
      if ok == 0 then put(-x); break end
      put(x)
    end
  end
end
for i = 1, #dirty do store(dirty[i], ahead_of[dirty[i]]) end
return table.concat(out, ' ')
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
    let mut n = itoa::Buffer::new();
    out.push('q');
    out.push_str(n.format(rate.requests.get()));
    out.push('p');
    // u64 (585 years in ns) formats much faster than u128.
    match u64::try_from(rate.per.as_nanos()) {
        Ok(per) => out.push_str(n.format(per)),
        Err(_) => out.push_str(n.format(rate.per.as_nanos())),
    }
    out.push('b');
    out.push_str(n.format(rate.burst.get()));
}

/// The client's address (its /64 for IPv6) as `Display` writes it; IPv4
/// by hand (formatting an address was a tenth of a request's key names).
fn push_ip(ip: IpAddr, out: &mut String) {
    match ip_bucket(ip) {
        IpAddr::V4(v4) => {
            let mut n = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(n.format(octet));
            }
        }
        v6 => {
            let _ = write!(out, "{v6}");
        }
    }
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
    /// The brake's quota as names hold it (the brake's key names are built
    /// per request; its quota seldom changes).
    brake_fingerprint: OnceLock<(Rate, Box<str>)>,
}

impl Keys {
    pub fn new(prefix: String, cluster: bool) -> Keys {
        Keys {
            prefix,
            cluster,
            brake_fingerprint: OnceLock::new(),
        }
    }

    fn push_brake_fingerprint(&self, q: &Rate, out: &mut String) {
        match self.brake_fingerprint.get() {
            Some((rate, fp)) if rate == q => out.push_str(fp),
            _ => {
                let start = out.len();
                fingerprint(q, out);
                let _ = self.brake_fingerprint.set((*q, out[start..].into()));
            }
        }
    }

    /// `prefix` + a name from [`key_suffix`] or [`tenant_suffix`].
    pub fn with_prefix(&self, suffix: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + suffix.len());
        k.push_str(&self.prefix);
        k.push_str(suffix);
        k
    }

    pub fn key(&self, tenant: &str, key_id: &str, q: &Rate) -> String {
        self.with_prefix(&key_suffix(tenant, key_id, q))
    }

    pub fn tenant(&self, tenant: &str, q: &Rate) -> String {
        self.with_prefix(&tenant_suffix(tenant, q))
    }

    fn brake_base(&self, tenant: &str, ip: IpAddr, kind: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + tenant.len() + 96);
        k.push_str(&self.prefix);
        if self.cluster {
            push_tenant_tag(tenant, &mut k);
            k.push(':');
        }
        k.push_str(kind);
        k.push(':');
        push_ip(ip, &mut k);
        k.push(':');
        k
    }

    /// The brake's failure counter (a GCRA at `auth_failures_per_ip`).
    pub fn failures(&self, tenant: &str, ip: IpAddr, q: &Rate) -> String {
        let mut k = self.brake_base(tenant, ip, "f");
        self.push_brake_fingerprint(q, &mut k);
        k
    }

    /// "Blocked until": set when the failure counter refuses.
    pub fn block(&self, tenant: &str, ip: IpAddr, q: &Rate) -> String {
        let mut k = self.brake_base(tenant, ip, "b");
        self.push_brake_fingerprint(q, &mut k);
        k
    }

    /// `limits.anonymous_per_ip`: one GCRA per client address.
    pub fn anonymous(&self, ip: IpAddr, q: &Rate) -> String {
        let mut k = self.prefix.clone();
        k.push_str("a:");
        push_ip(ip, &mut k);
        k.push(':');
        fingerprint(q, &mut k);
        k
    }
}

fn push_tenant_tag(tenant: &str, out: &mut String) {
    out.push_str("{t:");
    escape(tenant, out);
    out.push('}');
}

/// A key's limiter, without the prefix (the same for every `cluster`
/// setting: cached in its `LimitEntry`).
pub(super) fn key_suffix(tenant: &str, key_id: &str, q: &Rate) -> String {
    let mut k = String::with_capacity(tenant.len() + key_id.len() + 48);
    push_tenant_tag(tenant, &mut k);
    k.push_str(":k:");
    escape(key_id, &mut k);
    k.push(':');
    fingerprint(q, &mut k);
    k
}

/// A tenant's limiter, without the prefix.
pub(super) fn tenant_suffix(tenant: &str, q: &Rate) -> String {
    let mut k = String::with_capacity(tenant.len() + 40);
    push_tenant_tag(tenant, &mut k);
    k.push_str(":t:");
    fingerprint(q, &mut k);
    k
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

/// One request's part of a script call: the brake's "blocked until" key
/// and up to two GCRA limiters (the key's and the tenant's for a check; the
/// failure counter for a failure).
#[derive(Debug)]
pub(super) struct Entry {
    pub fail: bool,
    pub block: Option<String>,
    pub limiters: [Option<(String, Rate)>; 2],
}

impl Entry {
    pub fn check(block: Option<String>, limiters: [Option<(String, Rate)>; 2]) -> Entry {
        Entry {
            fail: false,
            block,
            limiters,
        }
    }

    pub fn failure(block: String, failures: String, quota: Rate) -> Entry {
        Entry {
            fail: true,
            block: Some(block),
            limiters: [Some((failures, quota)), None],
        }
    }

    fn rates(&self) -> impl Iterator<Item = Rate> + '_ {
        self.limiters.iter().flatten().map(|(_, q)| *q)
    }

    /// Its KEYS, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.block
            .as_deref()
            .into_iter()
            .chain(self.limiters.iter().flatten().map(|(k, _)| k.as_str()))
    }

    /// The part of its key names Redis Cluster hashes (all of them share
    /// it): entries with the same one may go in one call.
    pub fn slot_part(&self) -> &str {
        self.keys().next().map(hash_part).unwrap_or_default()
    }
}

/// The ARGV of a call for `entries`, in order (see [`LUA`]): the distinct
/// quotas first, then each entry's head and quota indices.
pub(super) fn write_args<'a>(
    entries: impl Iterator<Item = &'a Entry> + Clone,
    cmd: &mut redis::Cmd,
) {
    // Few distinct quotas per batch: a linear search beats hashing.
    let mut quotas: Vec<Rate> = Vec::new();
    let mut index = |q: Rate| match quotas.iter().position(|&known| known == q) {
        Some(i) => i + 1,
        None => {
            quotas.push(q);
            quotas.len()
        }
    };
    let indices: Vec<usize> = entries
        .clone()
        .flat_map(Entry::rates)
        .map(&mut index)
        .collect();
    cmd.arg(quotas.len());
    for q in &quotas {
        cmd.arg(t_ns(q)).arg(tau_ns(q));
    }
    let mut indices = indices.into_iter();
    for e in entries {
        let n = e.rates().count();
        cmd.arg(n + 4 * usize::from(e.block.is_some()) + 8 * usize::from(e.fail));
        for i in indices.by_ref().take(n) {
            cmd.arg(i);
        }
    }
}

/// Redis Cluster's rule: the text between the first `{` and the next `}`
/// if not empty, else the whole name.
fn hash_part(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// The script's reply for one entry, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reply {
    /// Redis `TIME` the script ran at.
    pub now: Duration,
    /// Time left on the client's block, if braked.
    pub blocked: Option<Duration>,
    /// One per limiter checked, in order.
    pub decisions: [Option<Decision>; 2],
}

/// A non-empty run of ASCII digits as a number (no sign, no overflow).
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let d = d.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// A value of the reply: `n` or `-n` (never `-0`, never `+n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signed {
    Plus(u64),
    Minus(u64),
}

fn signed(field: &[u8]) -> Option<Signed> {
    match field.split_first() {
        Some((b'-', digits)) => match decimal(digits)? {
            0 => None,
            n => Some(Signed::Minus(n)),
        },
        _ => decimal(field).map(Signed::Plus),
    }
}

/// One reply per entry, in order, from the script's reply string; `None`:
/// not the shape the script returns.
pub(super) fn decode<'a>(
    reply: &[u8],
    entries: impl ExactSizeIterator<Item = &'a Entry>,
) -> Option<Vec<Reply>> {
    let mut values = reply.split(|&b| b == b' ').map(signed);
    let mut next = || values.next().flatten();
    let (Signed::Plus(s), Signed::Plus(ns)) = (next()?, next()?) else {
        return None;
    };
    let now = Duration::from_secs(s).checked_add(Duration::from_nanos(ns))?;
    let mut replies = Vec::with_capacity(entries.len());
    for entry in entries {
        let mut reply = Reply {
            now,
            blocked: None,
            decisions: [None, None],
        };
        let checked = match next()? {
            // Only an entry with a block key can be braked.
            Signed::Minus(_) if entry.block.is_none() => return None,
            Signed::Minus(left) => {
                reply.blocked = Some(Duration::from_nanos(left));
                replies.push(reply);
                continue;
            }
            Signed::Plus(n) => usize::try_from(n).ok()?,
        };
        // The shapes the script gives: `0` for a failure that did not trip
        // the brake; for a check every limiter, or up to the first refusal.
        let limiters = entry.rates().count();
        if entry.fail && checked != 0
            || !entry.fail && (checked > limiters || checked == 0 && limiters > 0)
        {
            return None;
        }
        let rates = entry.rates().take(checked);
        for (i, (q, slot)) in rates.zip(&mut reply.decisions).enumerate() {
            let d = match next()? {
                Signed::Plus(backlog) => allowed(q, backlog),
                Signed::Minus(wait) => Decision::denied(q, Duration::from_nanos(wait)),
            };
            // The script stops at the first refusal, and only there.
            let valid = if i + 1 < checked {
                d.is_allowed()
            } else {
                checked == limiters || !d.is_allowed()
            };
            if !valid {
                return None;
            }
            *slot = Some(d);
        }
        replies.push(reply);
    }
    values.next().is_none().then_some(replies)
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
        let keys = Keys::new("gw:".into(), true);
        let quota = q(10, Duration::from_secs(60), 10);
        let k = keys.key("acme}x", "ci:1", &quota);
        assert_eq!(k, "gw:{t:acme%7Dx}:k:ci%3A1:q10p60000000000b10");
        let ip: IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(
            keys.block("acme}x", ip, &quota),
            "gw:{t:acme%7Dx}:b:2001:db8:::q10p60000000000b10"
        );
        let single = Keys::new("gw:".into(), false);
        assert_eq!(
            single.failures("acme", "192.0.2.1".parse().unwrap(), &quota),
            "gw:f:192.0.2.1:q10p60000000000b10"
        );
    }

    #[test]
    fn addresses_in_names_as_display_writes_them() {
        for ip in ["0.0.0.0", "192.0.2.1", "255.255.255.255", "10.20.3.40"] {
            let mut out = String::new();
            push_ip(ip.parse().unwrap(), &mut out);
            assert_eq!(out, ip);
        }
        let mut out = String::new();
        push_ip("::ffff:198.51.100.9".parse().unwrap(), &mut out);
        assert_eq!(out, "198.51.100.9");
        let mut out = String::new();
        push_ip("2001:db8:1:2:3:4:5:6".parse().unwrap(), &mut out);
        assert_eq!(out, "2001:db8:1:2::");
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
    fn decode_accepts_only_the_shapes_the_script_gives() {
        let quota = q(1, Duration::from_secs(1), 1);
        let one = Entry::check(None, [Some(("k".into(), quota)), None]);
        let two = Entry::check(None, [Some(("k".into(), quota)), Some(("t".into(), quota))]);
        let braked_only = Entry::check(Some("b".into()), [None, None]);
        let decodes =
            |reply: &str, entries: &[&Entry]| decode(reply.as_bytes(), entries.iter().copied());
        let fail = Entry::failure("b".into(), "f".into(), quota);
        let cases: &[(&str, &[&Entry], bool, &str)] = &[
            ("1 2 0", &[&braked_only], true, "not braked"),
            ("1 2 -5", &[&braked_only], true, "braked"),
            ("1 2 -5", &[&two], false, "braked without a block key"),
            ("1 2 2 0 0", &[&two], true, "both allowed"),
            ("1 2 2 0 -5", &[&two], true, "tenant refused"),
            ("1 2 1 -5", &[&two], true, "key refused, tenant unchecked"),
            ("1 2 0 1 0", &[&braked_only, &one], true, "two entries"),
            ("1 2 0", &[&fail], true, "failure counted"),
            ("1 2 -7", &[&fail], true, "failure tripped the brake"),
            ("1 2 1 0", &[&fail], false, "values after a failure"),
            ("1 2 1", &[&one], false, "cut short"),
            ("1 2 2 0 0", &[&one], false, "more values than limiters"),
            ("1 2 0", &[&two], false, "no limiter checked"),
            ("1 2 1 0", &[&two], false, "stopped without a refusal"),
            ("1 2 2 -5 0", &[&two], false, "refused before the last"),
            ("1 2 0 9", &[&braked_only], false, "trailing value"),
            ("1 2 0", &[&braked_only, &braked_only], false, "entry short"),
            ("", &[&braked_only], false, "empty"),
            ("1 2 +1", &[&braked_only], false, "plus sign"),
            ("1 2 -0", &[&braked_only], false, "minus zero"),
            ("1 2 --5", &[&braked_only], false, "two signs"),
            ("1 2 -", &[&braked_only], false, "lone sign"),
            ("1 2 1 0.5", &[&one], false, "fraction"),
            ("1 2 1 1.2e+14", &[&one], false, "exponent"),
            ("1 2  0", &[&braked_only], false, "empty field"),
            ("1 2 0 ", &[&braked_only], false, "trailing space"),
            ("1 x 0", &[&braked_only], false, "not a number"),
            ("-1 2 0", &[&braked_only], false, "negative clock"),
            (
                "18446744073709551615 1000000000 0",
                &[&braked_only],
                false,
                "clock overflow",
            ),
        ];
        for (reply, entries, ok, why) in cases {
            assert_eq!(decodes(reply, entries).is_some(), *ok, "{why}: {reply:?}");
        }
        let r = decodes("1 2 -3000000000", &[&braked_only]).expect("braked");
        assert_eq!(r[0].blocked, Some(Duration::from_secs(3)));
        let r = decodes("1 2 0 1 0", &[&braked_only, &one]).expect("two entries");
        assert_eq!(r[1].decisions, [Some(allowed(quota, 0)), None]);
        let r = decodes("1 2 1 -4000000000", &[&two]).expect("refused");
        assert_eq!(
            r[0].decisions,
            [Some(Decision::denied(quota, Duration::from_secs(4))), None]
        );
        assert_eq!(decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(decimal(b"18446744073709551616"), None);
    }

    #[test]
    fn a_batch_sends_each_quota_once() {
        let a = q(1, Duration::from_secs(1), 1);
        let b = q(2, Duration::from_secs(1), 3);
        let entries = [
            Entry::check(Some("b".into()), [Some(("k1".into(), a)), None]),
            Entry::check(None, [Some(("k2".into(), a)), Some(("t".into(), b))]),
            Entry::failure("b".into(), "f".into(), b),
            Entry::check(Some("b".into()), [None, None]),
        ];
        let mut cmd = redis::Cmd::new();
        write_args(entries.iter(), &mut cmd);
        let args: Vec<String> = cmd
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => "not a plain argument".into(),
            })
            .collect();
        let want = "2 1000000000 0 500000000 1000000000 5 1 2 1 2 13 2 4";
        assert_eq!(args.join(" "), want);
    }

    #[test]
    fn entries_of_one_tenant_share_a_slot_part() {
        let keys = Keys::new("gw:".into(), true);
        let quota = q(10, Duration::from_secs(60), 10);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let check = Entry::check(
            Some(keys.block("acme", ip, &quota)),
            [Some((keys.key("acme", "ci", &quota), quota)), None],
        );
        let fail = Entry::failure(
            keys.block("acme", ip, &quota),
            keys.failures("acme", ip, &quota),
            quota,
        );
        assert_eq!(check.slot_part(), "t:acme");
        assert_eq!(fail.slot_part(), "t:acme");
        assert_eq!(hash_part("gw:a:{}x"), "gw:a:{}x");
        assert_eq!(hash_part("gw:a:1"), "gw:a:1");
        assert_eq!(check.keys().count(), 2);
    }
}
