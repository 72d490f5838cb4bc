//! An API key's token budgets kept in Redis (`[redis] share_api_keys = true`), so that a key's
//! budget is spent once across every gateway: a request reserves in Redis (one Lua script,
//! `budget.lua`, the buckets of `budget.rs` on Redis's clock) and settles there when it ends. The
//! key's local buckets mirror the levels Redis last answered (they give OpenAI's headers), and count
//! alone while Redis cannot be reached: then each gateway may spend what it last saw remain, plus the
//! refill. What a request used meanwhile, or a settlement Redis did not take, is added up per budget
//! and written to Redis with the key's next request that reaches it: nothing spent is lost from the
//! shared books, nor counted twice.

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
}

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
        SharedBudgets { store, keys, limits, unwritten: Mutex::new(vec![0; budgets.len()]) }
    }

    /// Reserves `tokens` (one count per budget) in Redis; `None` when it could not be asked.
    pub(crate) async fn reserve(&self, tokens: &[i64]) -> Option<Reserved> {
        let answer = self.run(tokens, "reserve").await?;
        let reserved = read(&answer, self.keys.len())?;
        if matches!(reserved, Reserved::Levels(_)) {
            self.write_unwritten().await;
        }
        Some(reserved)
    }

    /// Takes `tokens` (one count per budget; below zero, gives them back) in Redis whatever the
    /// levels: a settlement, or what a request used while Redis was down. Kept to be written later
    /// when Redis does not take them.
    pub(crate) async fn settle(&self, tokens: Vec<i64>) {
        if self.run(&tokens, "settle").await.is_none() {
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

    /// Writes what Redis has not taken yet, now that it answers again.
    async fn write_unwritten(&self) {
        let taken = {
            let mut unwritten = self.unwritten.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(&mut *unwritten, vec![0; self.keys.len()])
        };
        if taken.iter().any(|tokens| *tokens != 0) {
            self.settle(taken).await;
        }
    }

    async fn run(&self, tokens: &[i64], mode: &str) -> Option<Vec<i64>> {
        let mut invocation = BUDGET.prepare_invoke();
        for ((key, (limit, window)), tokens) in self.keys.iter().zip(&self.limits).zip(tokens) {
            invocation.key(key.as_slice()).arg(*limit).arg(*window).arg(*tokens);
        }
        invocation.arg(mode);
        self.store.run(&invocation).await
    }
}

/// The script's answer read: `{1, level...}` or `{0, budget (from 1), ms}`; `None` for anything
/// else.
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
