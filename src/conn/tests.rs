use super::*;

const IDLE: Duration = Duration::from_secs(60);
const HEAD: Duration = Duration::from_secs(10);

/// The tests' "now": the clock only ever sees instants it is given.
fn t0() -> Instant {
    Instant::now()
}
/// A connection whose last request started or finished at `at`.
fn activity(at: Instant) -> Activity {
    Activity::at(at, 0, false)
}
/// ... and that request has finished, nothing read since.
fn between(at: Instant) -> Activity {
    Activity::at(at, 0, true)
}
/// ... with a request in flight since `at`.
fn busy(at: Instant) -> Activity {
    Activity::at(at, 1, false)
}
fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
fn later_in(idle: Idle, now: Instant) -> Duration {
    match idle {
        Idle::Later(at) => at.saturating_duration_since(now),
        other => panic!("expected Later, got {other:?}"),
    }
}
/// Follow the connection's timer from `from` (each look at the instant
/// the previous one asked for) until the clock parks or closes — what it
/// said and when — or asks to look again after `until`: `Later` and the
/// instant of that next look.
fn run(c: &mut IdleClock, a: &Activity, from: Instant, until: Instant) -> (Idle, Instant) {
    let mut now = from;
    loop {
        match c.check(a, now) {
            Idle::Later(at) if at <= until => {
                assert!(at > now, "the clock asked to look again at once");
                now = at;
            }
            Idle::Later(at) => return (Idle::Later(at), at),
            other => return (other, now),
        }
    }
}

#[test]
fn a_quiet_connection_parks_park_after_its_last_request() {
    let now = t0();
    let mut c = IdleClock::with(IDLE, HEAD, true);
    assert_eq!(c.check(&between(now - ms(150)), now), Idle::Park);
    // looked too early: next look when PARK_AFTER is reached, no back-off
    let mut c = IdleClock::with(IDLE, HEAD, true);
    let wait = later_in(c.check(&between(now - ms(30)), now), now);
    assert_eq!(wait, ms(70));
    assert_eq!(c.interval, PARK_AFTER);
}

#[test]
fn a_busy_connection_is_looked_at_less_and_less_often() {
    let now = t0();
    let mut c = IdleClock::with(IDLE, HEAD, true);
    let busy = busy(now);
    let intervals: Vec<u128> = (0..6)
        .map(|_| {
            let wait = later_in(c.check(&busy, now), now);
            assert_eq!(wait, c.interval);
            c.interval.as_millis()
        })
        .collect();
    assert_eq!(intervals, [200, 400, 800, 1600, 2000, 2000]);
    // parking (a wake-up) starts over
    assert_eq!(c.restart(now), now + PARK_AFTER);
    assert_eq!(c.interval, PARK_AFTER);
    // never longer than half of header_read_timeout
    let mut c = IdleClock::with(IDLE, Duration::from_secs(1), true);
    let waits: Vec<Duration> = (0..6).map(|_| later_in(c.check(&busy, now), now)).collect();
    assert!(waits.iter().all(|w| *w <= ms(500)), "{waits:?}");
}

#[test]
fn never_parked_mid_head_or_before_the_first_request() {
    let now = t0();
    let mut c = IdleClock::with(IDLE, HEAD, true);
    let arriving = between(now - ms(500));
    arriving.read_bytes();
    assert!(matches!(c.check(&arriving, now), Idle::Later(_)));
    let fresh = activity(now - Duration::from_secs(5));
    assert!(matches!(c.check(&fresh, now), Idle::Later(_)));
}

#[test]
fn idle_timeout_closes_and_http2_never_parks() {
    let now = t0();
    for parks in [true, false] {
        let mut c = IdleClock::with(IDLE, HEAD, parks);
        assert_eq!(c.check(&between(now - IDLE), now), Idle::Close);
    }
    let mut c = IdleClock::with(IDLE, HEAD, false);
    let wait = later_in(c.check(&between(now - Duration::from_secs(5)), now), now);
    assert_eq!(wait, Duration::from_secs(55));
}

/// `idle_timeout: 1s`, `header_read_timeout: 30s` (tests/hostile_slow.rs,
/// tests/hostile_h2.rs): a connection that never sent a request, or has
/// been idle since its last one, is closed exactly at `idle_timeout` —
/// HTTP/2 and an HTTP/1.1 one that never parks — and not a moment before.
#[test]
fn an_idle_connection_closes_at_idle_timeout_and_not_before() {
    let idle = Duration::from_secs(1);
    let start = t0();
    let horizon = start + Duration::from_secs(3600);
    for (parks, a) in [
        (false, activity(start)),
        (false, between(start)),
        (true, activity(start)),
    ] {
        let mut c = IdleClock::with(idle, Duration::from_secs(30), parks);
        let first = c.restart(start);
        let (said, at) = run(&mut c, &a, first, horizon);
        assert_eq!(said, Idle::Close, "parks {parks}");
        assert_eq!(
            at,
            start + idle,
            "parks {parks}: closed at {:?}",
            at - start
        );
        let mut c = IdleClock::with(idle, Duration::from_secs(30), parks);
        let early = start + idle - ms(1);
        assert!(matches!(c.check(&a, early), Idle::Later(at) if at <= start + idle));
    }
}

/// `idle_timeout: 1s` (tests/hostile_slow.rs): a request in flight keeps
/// its connection however long it takes — an hour of looks, HTTP/1.1 and
/// HTTP/2, neither parks nor closes — and once it has finished, the
/// connection is idle from the finish: HTTP/2 closes at `idle_timeout`;
/// HTTP/1.1 parks once `PARK_AFTER` has passed or closes once
/// `idle_timeout` has — at its next look, which its back-off may put up
/// to [`PARK_CHECK_MAX`] after the finish.
#[test]
fn a_request_in_flight_is_never_cut_and_idle_counts_from_its_end() {
    let idle = Duration::from_secs(1);
    let start = t0();
    let finish = start + Duration::from_secs(3600);
    for parks in [true, false] {
        let mut c = IdleClock::with(idle, Duration::from_secs(30), parks);
        let first = c.restart(start);
        let (said, next_look) = run(&mut c, &busy(start), first, finish);
        assert!(matches!(said, Idle::Later(_)), "parks {parks}: {said:?}");
        let done = between(finish);
        let (said, at) = run(&mut c, &done, next_look, finish + Duration::from_secs(60));
        let after = at - finish;
        match said {
            Idle::Park if parks => assert!(after >= PARK_AFTER && after < idle, "{after:?}"),
            Idle::Close if parks => assert!(after >= idle && after <= PARK_CHECK_MAX),
            Idle::Close => assert_eq!(after, idle),
            other => panic!("parks {parks}: {other:?} {after:?} after the finish"),
        }
    }
}

/// Every connection's future holds `linger`'s state, idle or not: it must
/// not carry its read buffer inline (an 8 KiB array there cost every idle
/// connection 8 KiB).
#[test]
fn lingering_adds_little_to_every_connections_future() {
    let f = linger(tokio::io::empty());
    assert!(
        std::mem::size_of_val(&f) < 512,
        "{}",
        std::mem::size_of_val(&f)
    );
}
