//! Passive health, as nginx's `max_fails` / `fail_timeout`: a server that fails `max_fails` times
//! within `fail_timeout` (connect errors, timeouts, 502/503/504 answers) is skipped for `fail_timeout`,
//! then tried again. Read on every pick with one atomic load; written only when a server fails.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The failure policy of an upstream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailPolicy {
    /// Failures within `fail_timeout` that mark a server down; 0 never marks it down.
    pub max_fails: u32,
    /// The window for counting failures, and how long a server stays down.
    pub fail_timeout: Duration,
}

/// The health of one server.
#[derive(Debug)]
pub struct ServerHealth {
    origin: Instant,
    /// 0 when up; else 1 + the millisecond (since `origin`) until which the server is down.
    down_until_ms: AtomicU64,
    /// Failures in the current window and when the window began.
    window: Mutex<(u32, Instant)>,
}

impl ServerHealth {
    /// A healthy server.
    pub fn new() -> ServerHealth {
        let origin = Instant::now();
        ServerHealth { origin, down_until_ms: AtomicU64::new(0), window: Mutex::new((0, origin)) }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX / 2)
    }

    /// Whether requests may go to this server now.
    pub fn is_up(&self) -> bool {
        let down_until = self.down_until_ms.load(Ordering::Acquire);
        down_until == 0 || self.now_ms() + 1 >= down_until
    }

    /// Counts a failure; returns true when it marked the server down.
    pub fn record_failure(&self, policy: FailPolicy) -> bool {
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

impl Default for ServerHealth {
    fn default() -> Self {
        ServerHealth::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn max_fails_within_fail_timeout_marks_a_server_down_for_fail_timeout() {
        let policy = FailPolicy { max_fails: 2, fail_timeout: Duration::from_secs(10) };
        let health = ServerHealth::new();
        assert!(!health.record_failure(policy));
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(!health.record_failure(policy), "the window restarted");
        assert!(health.record_failure(policy));
        assert!(!health.is_up());
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(health.is_up(), "tried again after fail_timeout");
    }
}
