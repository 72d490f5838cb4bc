//! An API key's token budgets kept in Redis (`[redis] share_api_keys = true`), so that a key's
//! budget is spent once across every gateway: a request reserves in Redis (one Lua script,
//! `budget.lua`, the buckets of `budget.rs` on Redis's clock) and settles there when it ends. The
//! key's local buckets mirror the levels Redis last answered (they give OpenAI's headers), and count
//! alone while Redis cannot be reached: then each gateway may spend what it last saw remain, plus the
//! refill. What a request used meanwhile, or a settlement Redis did not take, is added up per budget
//! and written to Redis with the key's next request that reaches it: nothing spent is lost from the
//! shared books. Nor is anything counted twice: each reservation writes a marker, removed when it
//! settles; a reservation whose answer never came (Redis slow, not down) is cancelled later, which
//! gives its tokens back only if its marker shows it reached Redis.

use crate::shared::SharedStore;
use redis::Script;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

/// Where a key's budgets live in Redis.
pub(crate) struct SharedBudgets {
    pub(crate) store: Arc<SharedStore>,
    /// One key per budget, in the order of the key's budgets.
    keys: Vec<Vec<u8>>,
    /// Each budget's limit and window (ms), in that order.
    limits: Vec<(u64, u64)>,
    /// Tokens per budget used and not yet written to Redis (refunds below zero).
    unwritten: Mutex<Vec<i64>>,
    /// Reservations whose answer never came, with what they asked: each cancelled once Redis answers.
    doubtful: Mutex<Vec<(u64, Vec<i64>)>>,
}

/// Reservations in doubt remembered at most (beyond, the oldest is forgotten, and may be counted
/// twice until its budget refills).
const DOUBTFUL: usize = 10_000;

/// What Redis said of a reservation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reserved {
    /// Taken; each budget's level after it, in tokens times milliseconds.
    Levels(Vec<i128>),
    /// The budget at this index is short; it has room again in this many milliseconds.
    Short(usize, u64),
}

static BUDGET: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("budget.lua")));

impl SharedBudgets {
    /// The budgets of the key `name`: each named by what it counts (`label`), with its limit and
    /// window (ms).
    pub(crate) fn new(store: Arc<SharedStore>, name: &str, budgets: &[(&str, u64, u64)]) -> SharedBudgets {
        let keys = budgets
            .iter()
            .map(|(label, limit, window)| {
                let window = window.to_string();
                let limit = limit.to_string();
                store.key(&[
                    b"budget:",
                    name.as_bytes(),
                    b":",
                    label.as_bytes(),
                    b":",
                    limit.as_bytes(),
                    b"/",
                    window.as_bytes(),
                ])
            })
            .collect();
        let limits = budgets.iter().map(|&(_, limit, window)| (limit, window)).collect();
        let unwritten = Mutex::new(vec![0; budgets.len()]);
        SharedBudgets { store, keys, limits, unwritten, doubtful: Mutex::new(Vec::new()) }
    }

    fn marker(&self, id: u64) -> Vec<u8> {
        self.store.key(&[b"budget-reservation:", id.to_string().as_bytes()])
    }

    /// Reserves `tokens` (one count per budget) in Redis as the reservation `id`; `None` when it
    /// could not be asked (then it is in doubt: it may have reached Redis, and is cancelled later).
    pub(crate) async fn reserve(&self, tokens: &[i64], id: u64) -> Option<Reserved> {
        let Some(answer) = self.run(tokens, "reserve", Some(id)).await else {
            let mut doubtful = self.doubtful.lock().unwrap_or_else(PoisonError::into_inner);
            if doubtful.len() >= DOUBTFUL {
                doubtful.remove(0);
            }
            doubtful.push((id, tokens.to_vec()));
            return None;
        };
        let reserved = read(&answer, self.keys.len())?;
        if matches!(reserved, Reserved::Levels(_)) {
            self.write_unwritten().await;
        }
        Some(reserved)
    }

    /// Takes `tokens` (one count per budget; below zero, gives them back) in Redis whatever the
    /// levels: a settlement of the reservation `id`, or (`None`) what a request used while Redis was
    /// down. Kept to be written later when Redis does not take them.
    pub(crate) async fn settle(&self, tokens: Vec<i64>, id: Option<u64>) {
        if self.run(&tokens, "settle", id).await.is_none() {
            self.keep_unwritten(&tokens);
        }
    }

    /// Adds `tokens` to what is to be written to Redis later.
    pub(crate) fn keep_unwritten(&self, tokens: &[i64]) {
        let mut unwritten = self.unwritten.lock().unwrap_or_else(PoisonError::into_inner);
        for (sum, tokens) in unwritten.iter_mut().zip(tokens) {
            *sum = sum.saturating_add(*tokens);
        }
    }

    /// Writes what Redis has not taken yet, now that it answers again, and cancels the reservations
    /// in doubt (those that reached Redis give their tokens back: their requests were counted here).
    async fn write_unwritten(&self) {
        let taken = {
            let mut unwritten = self.unwritten.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(&mut *unwritten, vec![0; self.keys.len()])
        };
        if taken.iter().any(|tokens| *tokens != 0) {
            self.settle(taken, None).await;
        }
        let doubtful = std::mem::take(&mut *self.doubtful.lock().unwrap_or_else(PoisonError::into_inner));
        for (id, tokens) in doubtful {
            let back: Vec<i64> = tokens.iter().map(|tokens| -tokens).collect();
            if self.run(&back, "cancel", Some(id)).await.is_none() {
                self.doubtful.lock().unwrap_or_else(PoisonError::into_inner).push((id, tokens));
            }
        }
    }

    async fn run(&self, tokens: &[i64], mode: &str, id: Option<u64>) -> Option<Vec<i64>> {
        let mut invocation = BUDGET.prepare_invoke();
        invocation.arg(mode).arg(self.keys.len());
        for ((key, (limit, window)), tokens) in self.keys.iter().zip(&self.limits).zip(tokens) {
            invocation.key(key.as_slice()).arg(*limit).arg(*window).arg(*tokens);
        }
        if let Some(id) = id {
            invocation.key(self.marker(id));
        }
        self.store.run(&invocation).await
    }
}

/// The script's answer read: `{1, level...}` or `{0, budget (from 1), ms}`; `None` for anything
/// else (`{2}`, a cancelled reservation that never reached Redis, is not read).
fn read(answer: &[i64], budgets: usize) -> Option<Reserved> {
    match answer {
        [1, levels @ ..] if levels.len() == budgets => {
            Some(Reserved::Levels(levels.iter().map(|&l| i128::from(l)).collect()))
        }
        &[0, budget, ms] => {
            let index = usize::try_from(budget).ok()?.checked_sub(1).filter(|&index| index < budgets)?;
            Some(Reserved::Short(index, u64::try_from(ms).unwrap_or(0)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_answers_are_read_and_anything_else_is_not() {
        assert_eq!(read(&[1, 600, -5], 2), Some(Reserved::Levels(vec![600, -5])));
        assert_eq!(read(&[0, 2, 1500], 2), Some(Reserved::Short(1, 1500)));
        assert_eq!(read(&[0, 3, 1500], 2), None);
        assert_eq!(read(&[1, 600], 2), None);
        assert_eq!(read(&[], 1), None);
    }
}
