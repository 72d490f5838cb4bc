//! Server health. Passive, as nginx's `max_fails` / `fail_timeout`: a server that fails `max_fails`
//! times within `fail_timeout` (connect errors, timeouts, 502/503/504 answers) is skipped for
//! `fail_timeout`, then tried again. Active, when configured: a `GET` of a cheap path (never a
//! generation) at an interval; `fall` failed checks in a row take a server out, `rise` good ones bring
//! it back. Read on every pick with two atomic loads; written only when something changes.

use super::Upstream;
use http::StatusCode;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The failure policy of an upstream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FailPolicy {
    /// Failures within `fail_timeout` that mark a server down; 0 never marks it down.
    pub(crate) max_fails: u32,
    /// The window for counting failures, and how long a server stays down.
    pub(crate) fail_timeout: Duration,
}

/// The health of one server.
#[derive(Debug)]
pub struct ServerHealth {
    /// Its upstream's name and its address, for the log.
    upstream: Arc<str>,
    server: http::uri::Authority,
    origin: Instant,
    /// 0 when up; else 1 + the millisecond (since `origin`) until which the server is down.
    down_until_ms: AtomicU64,
    /// Failures in the current window and when the window began.
    window: Mutex<(u32, Instant)>,
    /// Taken out by active checks.
    checked_down: AtomicBool,
    /// Consecutive active check results against the current state (toward `rise` or `fall`).
    streak: AtomicU32,
}

impl ServerHealth {
    /// A healthy server, `server` of `upstream`.
    pub(crate) fn new(upstream: Arc<str>, server: http::uri::Authority) -> ServerHealth {
        let origin = Instant::now();
        ServerHealth {
            upstream,
            server,
            origin,
            down_until_ms: AtomicU64::new(0),
            window: Mutex::new((0, origin)),
            checked_down: AtomicBool::new(false),
            streak: AtomicU32::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX / 2)
    }

    /// Whether requests may go to this server now.
    pub fn is_up(&self) -> bool {
        if self.checked_down.load(Ordering::Acquire) {
            return false;
        }
        let down_until = self.down_until_ms.load(Ordering::Acquire);
        down_until == 0 || self.now_ms() + 1 >= down_until
    }

    /// Records an active check; returns the new state when it changed (true: up).
    pub(crate) fn record_check(&self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        let down = self.checked_down.load(Ordering::Acquire);
        // A result agreeing with the current state resets the streak toward a change.
        if passed != down {
            self.streak.store(0, Ordering::Release);
            return None;
        }
        let streak = self.streak.fetch_add(1, Ordering::AcqRel) + 1;
        if streak < if down { rise } else { fall } {
            return None;
        }
        self.streak.store(0, Ordering::Release);
        self.checked_down.store(!down, Ordering::Release);
        if passed {
            // Back in service: passive failures from before start afresh.
            self.down_until_ms.store(0, Ordering::Release);
        }
        Some(passed)
    }

    /// Counts a failure of the server's own (passive health); says so in the log when it marks the
    /// server down.
    pub(crate) fn count_failure(&self, policy: FailPolicy) {
        if self.record_failure(policy) {
            tracing::warn!(upstream = %self.upstream, server = %self.server, "server marked down");
        }
    }

    /// Counts a failure; returns true when it marked the server down.
    fn record_failure(&self, policy: FailPolicy) -> bool {
        if policy.max_fails == 0 {
            return false;
        }
        let now = Instant::now();
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(window.1) >= policy.fail_timeout {
            *window = (0, now);
        }
        window.0 += 1;
        if window.0 < policy.max_fails {
            return false;
        }
        *window = (0, now);
        let until = self.now_ms() + u64::try_from(policy.fail_timeout.as_millis()).unwrap_or(u64::MAX / 4);
        self.down_until_ms.store(until + 1, Ordering::Release);
        true
    }
}

/// Where a response body that may still be cut counts its server's failure.
pub(crate) struct FailureReport {
    /// The server's health.
    pub(crate) health: Arc<ServerHealth>,
    /// Its upstream's `max_fails` / `fail_timeout`.
    pub(crate) policy: FailPolicy,
}

impl FailureReport {
    /// Counts one failure of the server (`ServerHealth::count_failure`).
    pub(crate) fn record(&self) {
        self.health.count_failure(self.policy);
    }
}

/// `health = { ... }` of an upstream, compiled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ActiveCheck {
    /// Path requested with `GET`.
    pub(crate) path: String,
    /// Time between two checks of a server.
    pub(crate) interval: Duration,
    /// Longest wait for a check's answer.
    pub(crate) timeout: Duration,
    /// Statuses that pass.
    pub(crate) expect: Vec<StatusCode>,
    /// Passed checks in a row that bring a server back.
    pub(crate) rise: u32,
    /// Failed checks in a row that take a server out.
    pub(crate) fall: u32,
}

/// Runs an upstream's active checks until the upstream is dropped (replaced by a reload).
pub(crate) fn spawn_checks(upstream: &Arc<Upstream>) {
    let Some(check) = upstream.active_check.clone() else { return };
    let interval = check.interval;
    super::probe::every(upstream, interval, move |upstream, index| {
        let check = check.clone();
        async move {
            let server = &upstream.servers[index];
            // The body is read (and dropped) so the check sees the whole answer.
            let answer = super::probe::get(server, &check.path, check.timeout, 64 * 1024).await;
            let passed = answer.is_some_and(|(status, _)| check.expect.contains(&status));
            if let Some(up) = server.health.record_check(passed, check.rise, check.fall) {
                let state = if up { "back up" } else { "down" };
                tracing::warn!(upstream = %upstream.name, server = %server.authority, "active health check: {state}");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn max_fails_within_fail_timeout_marks_a_server_down_for_fail_timeout() {
        let policy = FailPolicy { max_fails: 2, fail_timeout: Duration::from_secs(10) };
        let health = ServerHealth::new("model".into(), http::uri::Authority::from_static("127.0.0.1:8080"));
        assert!(!health.record_failure(policy));
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(!health.record_failure(policy), "the window restarted");
        assert!(health.record_failure(policy));
        assert!(!health.is_up());
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(health.is_up(), "tried again after fail_timeout");
    }

    #[test]
    fn fall_failed_checks_take_a_server_out_and_rise_passed_ones_bring_it_back() {
        let health = ServerHealth::new("model".into(), http::uri::Authority::from_static("127.0.0.1:8080"));
        assert_eq!(health.record_check(false, 2, 3), None);
        assert_eq!(health.record_check(false, 2, 3), None);
        assert_eq!(health.record_check(true, 2, 3), None, "a pass breaks the streak");
        for _ in 0..2 {
            assert_eq!(health.record_check(false, 2, 3), None);
        }
        assert_eq!(health.record_check(false, 2, 3), Some(false));
        assert!(!health.is_up());
        assert_eq!(health.record_check(true, 2, 3), None);
        assert_eq!(health.record_check(true, 2, 3), Some(true));
        assert!(health.is_up());
    }
}
