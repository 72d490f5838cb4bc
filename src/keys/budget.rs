//! Token budgets: how many tokens a key may spend per minute and per day. A request reserves its
//! estimate (prompt, and the output it may ask for) before it reaches the model, and settles what it
//! really used when its response ends: what was reserved and not used comes back. Each budget refills
//! continuously, `limit` tokens over its window (as OpenAI's per-minute limits do), so a key that
//! spent it all gets it back a little at a time rather than at a window's edge.
//!
//! Kept in integers: a budget's level is in tokens times milliseconds of its window, so refilling by
//! `limit` per millisecond and spending `window_ms` per token never rounds.

use std::sync::Mutex;

/// One budget: `limit` tokens per `window_ms`.
#[derive(Debug)]
pub(crate) struct Bucket {
    limit: u64,
    window_ms: u64,
    state: Mutex<Level>,
}

#[derive(Debug, Clone, Copy)]
struct Level {
    /// Tokens times milliseconds; below zero after a request used more than it reserved.
    level: i128,
    /// When `level` was last brought up to date, milliseconds on the budget's clock.
    at_ms: u64,
}

/// Why a reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shortfall {
    /// The budget has room again in this many milliseconds.
    RetryAfterMs(u64),
    /// The request alone asks for more than the whole budget.
    TooLarge,
}

impl Bucket {
    /// A full budget of `limit` tokens per `window_ms` (at least 1 ms), on a clock now at `now_ms`.
    pub(crate) fn new(limit: u64, window_ms: u64, now_ms: u64) -> Bucket {
        let window_ms = window_ms.max(1);
        let full = i128::from(limit) * i128::from(window_ms);
        Bucket { limit, window_ms, state: Mutex::new(Level { level: full, at_ms: now_ms }) }
    }

    fn full(&self) -> i128 {
        i128::from(self.limit) * i128::from(self.window_ms)
    }

    fn refilled(&self, state: &mut Level, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(state.at_ms);
        state.level = (state.level + i128::from(elapsed) * i128::from(self.limit)).min(self.full());
        state.at_ms = state.at_ms.max(now_ms);
    }

    /// Whether `tokens` fit now; nothing is taken (see `take`).
    pub(crate) fn check(&self, tokens: u64, now_ms: u64) -> Result<(), Shortfall> {
        if tokens > self.limit {
            return Err(Shortfall::TooLarge);
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refilled(&mut state, now_ms);
        let need = i128::from(tokens) * i128::from(self.window_ms);
        if state.level >= need {
            return Ok(());
        }
        let missing = need - state.level;
        let limit = i128::from(self.limit.max(1));
        Err(Shortfall::RetryAfterMs(u64::try_from((missing + limit - 1) / limit).unwrap_or(u64::MAX)))
    }

    /// Takes `tokens` (after a `check` of every budget of the key said they fit).
    pub(crate) fn take(&self, tokens: u64, now_ms: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refilled(&mut state, now_ms);
        state.level -= i128::from(tokens) * i128::from(self.window_ms);
    }

    /// Settles a reservation of `reserved` tokens that used `used`: the difference comes back (or,
    /// when the request used more, is taken too).
    pub(crate) fn settle(&self, reserved: u64, used: u64, now_ms: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refilled(&mut state, now_ms);
        let back = (i128::from(reserved) - i128::from(used)) * i128::from(self.window_ms);
        state.level = (state.level + back).min(self.full());
    }

    /// Its limit (tokens per window) and window (ms).
    pub(crate) fn limit_and_window(&self) -> (u64, u64) {
        (self.limit, self.window_ms)
    }

    /// Takes `level` (tokens times milliseconds) as the level now: what the shared budget in
    /// Redis answered (`shared_budget`).
    pub(crate) fn mirror(&self, level: i128, now_ms: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *state = Level { level: level.min(self.full()), at_ms: now_ms };
    }

    /// Whole tokens available now (none while in debt).
    pub(crate) fn remaining(&self, now_ms: u64) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refilled(&mut state, now_ms);
        u64::try_from(state.level.max(0) / i128::from(self.window_ms)).unwrap_or(u64::MAX)
    }

    /// Milliseconds until the budget is full again.
    pub(crate) fn full_in_ms(&self, now_ms: u64) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refilled(&mut state, now_ms);
        let missing = self.full() - state.level;
        let limit = i128::from(self.limit.max(1));
        u64::try_from((missing + limit - 1) / limit).unwrap_or(u64::MAX)
    }

    /// The level, for tests: tokens times milliseconds.
    #[cfg(test)]
    fn level(&self) -> i128 {
        self.state.lock().unwrap().level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_refills_over_its_window_and_says_when_it_has_room() {
        let bucket = Bucket::new(600, 60_000, 0);
        assert_eq!(bucket.check(600, 0), Ok(()));
        assert_eq!(bucket.check(601, 0), Err(Shortfall::TooLarge));
        bucket.take(600, 0);
        assert_eq!(bucket.remaining(0), 0);
        // 600 tokens a minute: 10 a second, so 50 tokens fit again after 5 s.
        assert_eq!(bucket.check(50, 0), Err(Shortfall::RetryAfterMs(5_000)));
        assert_eq!(bucket.check(50, 5_000), Ok(()));
        assert_eq!(bucket.remaining(30_000), 300);
        assert_eq!(bucket.full_in_ms(30_000), 30_000);
        // A request that used less than it reserved gives the rest back, never above the limit.
        bucket.take(300, 30_000);
        bucket.settle(300, 100, 30_000);
        assert_eq!(bucket.remaining(30_000), 200);
        bucket.settle(1_000, 0, 30_000);
        assert_eq!(bucket.remaining(30_000), 600);
        // One that used more than it reserved leaves a debt, paid back by time.
        bucket.take(600, 30_000);
        bucket.settle(600, 700, 30_000);
        assert_eq!(bucket.remaining(30_000), 0);
        assert_eq!(bucket.check(1, 30_000), Err(Shortfall::RetryAfterMs(10_100)), "101 tokens at 10 a second");
    }

    /// Any order of reservations, settlements and time: the level never exceeds the limit; with the
    /// clock stopped, what left the budget is exactly what was used plus what is still reserved; and
    /// a reservation is refused exactly when it does not fit.
    #[test]
    fn reserve_settle_and_refund_never_leak_or_overfill() {
        arbtest::arbtest(|u| {
            let limit = u.int_in_range(1u64..=10_000)?;
            let window = u.int_in_range(1u64..=120_000)?;
            let bucket = Bucket::new(limit, window, 0);
            let full = i128::from(limit) * i128::from(window);
            let (mut now, mut outstanding, mut used_total) = (0u64, Vec::<u64>::new(), 0u128);
            let mut frozen = true;
            for _ in 0..u.int_in_range(1..=64)? {
                match u.int_in_range(0..=3)? {
                    0 => {
                        let tokens = u.int_in_range(0..=limit + 10)?;
                        let _ = bucket.remaining(now); // brings the level up to `now`
                        let before = bucket.level();
                        let fits = tokens <= limit && before >= i128::from(tokens) * i128::from(window);
                        let checked = bucket.check(tokens, now);
                        assert_eq!(checked.is_ok(), fits, "{tokens} of {limit}, level {before}");
                        if checked.is_ok() {
                            bucket.take(tokens, now);
                            outstanding.push(tokens);
                        }
                    }
                    1 if !outstanding.is_empty() => {
                        let index = u.choose_index(outstanding.len())?;
                        let reserved = outstanding.swap_remove(index);
                        let used = u.int_in_range(0..=reserved)?;
                        bucket.settle(reserved, used, now);
                        used_total += u128::from(used);
                    }
                    2 => {
                        now += u.int_in_range(0..=window)?;
                        frozen = false;
                    }
                    _ => {}
                }
                assert!(bucket.level() <= full, "never above the limit");
                if frozen {
                    let held: u128 = outstanding.iter().map(|t| u128::from(*t)).sum();
                    let spent = (full - bucket.level()) as u128;
                    assert_eq!(spent, (used_total + held) * u128::from(window), "what left is what was used or held");
                }
            }
            // Everything settled and a whole window later, the budget is full: nothing leaked.
            for reserved in outstanding.drain(..) {
                bucket.settle(reserved, reserved, now);
            }
            now += window;
            assert_eq!(bucket.remaining(now), limit);
            Ok(())
        });
    }
}
