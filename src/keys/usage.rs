//! What each API key used, by model: requests and tokens (prompt, completion, image) since the
//! gateway started and over the last hour, for `GET /usage` on the admin API and the Prometheus
//! counters `infergate_api_key_requests_total` and `infergate_api_key_tokens_total`. Every request of
//! a key that reached a model is counted once, when its response ends (`accounting`).
//!
//! The labels are bounded: a key is a configured key (its name), a model one the config names (a
//! `models` route, or a key's model that is not a glob); any other model is counted as `other`. The
//! book is kept across reloads, so a revoked key's usage stays in it until the process ends.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;
use tokio::time::Instant;

/// What one request spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Spend {
    /// Prompt tokens: the backend's `usage.prompt_tokens`, else the gateway's estimate.
    pub(crate) prompt: u64,
    /// Completion tokens: the backend's `usage.completion_tokens`, else the tokens the client received.
    pub(crate) completion: u64,
    /// Image tokens among the prompt's, as the gateway estimates them (`cost`).
    pub(crate) image: u64,
}

/// Requests and tokens added up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    requests: u64,
    prompt: u64,
    completion: u64,
    image: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.prompt += other.prompt;
        self.completion += other.completion;
        self.image += other.image;
    }

    fn json(&self) -> Value {
        json!({
            "requests": self.requests,
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "image_tokens": self.image,
        })
    }
}

/// Minutes in the recent window of `GET /usage`.
const WINDOW_MINUTES: usize = 60;

/// One key's counts for one model: in total, and per minute over the last hour (a ring of minutes,
/// each slot stamped with the minute it holds).
struct Tally {
    total: Counts,
    minutes: [(u64, Counts); WINDOW_MINUTES],
}

impl Tally {
    fn new() -> Tally {
        Tally { total: Counts::default(), minutes: [(u64::MAX, Counts::default()); WINDOW_MINUTES] }
    }

    fn add(&mut self, counts: &Counts, minute: u64) {
        self.total.add(counts);
        let slot = &mut self.minutes[(minute % WINDOW_MINUTES as u64) as usize];
        if slot.0 != minute {
            *slot = (minute, Counts::default());
        }
        slot.1.add(counts);
    }

    /// The counts of the window that ends with `minute`.
    fn recent(&self, minute: u64) -> Counts {
        let mut recent = Counts::default();
        for (stamp, counts) in &self.minutes {
            if *stamp <= minute && minute - stamp < WINDOW_MINUTES as u64 {
                recent.add(counts);
            }
        }
        recent
    }
}

/// One key's usage, by model.
pub(crate) struct KeyUsage {
    name: String,
    /// The book's clock: minutes count from here.
    epoch: Instant,
    models: Mutex<Vec<(Arc<str>, Tally)>>,
}

impl KeyUsage {
    /// Counts one request of `model` (a label of `ModelLabels`) that spent `spend`.
    pub(crate) fn add(&self, model: &Arc<str>, spend: &Spend) {
        let minute = self.epoch.elapsed().as_secs() / 60;
        let counts = Counts { requests: 1, prompt: spend.prompt, completion: spend.completion, image: spend.image };
        let mut models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        match models.iter_mut().find(|(label, _)| label == model) {
            Some((_, tally)) => tally.add(&counts, minute),
            None => {
                let mut tally = Tally::new();
                tally.add(&counts, minute);
                models.push((model.clone(), tally));
            }
        }
    }
}

/// Every key's usage since the process started; kept across reloads.
pub(crate) struct UsageBook {
    started: SystemTime,
    epoch: Instant,
    keys: Mutex<Vec<Arc<KeyUsage>>>,
}

impl Default for UsageBook {
    fn default() -> UsageBook {
        UsageBook { started: SystemTime::now(), epoch: Instant::now(), keys: Mutex::new(Vec::new()) }
    }
}

impl UsageBook {
    /// The usage of the key named `name`, made on its first use.
    pub(crate) fn key(&self, name: &str) -> Arc<KeyUsage> {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(usage) = keys.iter().find(|usage| usage.name == name) {
            return usage.clone();
        }
        let usage = Arc::new(KeyUsage { name: name.to_string(), epoch: self.epoch, models: Mutex::new(Vec::new()) });
        keys.push(usage.clone());
        usage
    }

    /// Every (key, model) with its counts since start and over the last hour, keys in the order
    /// they were configured.
    fn rows(&self) -> Vec<(String, Arc<str>, Counts, Counts)> {
        let minute = self.epoch.elapsed().as_secs() / 60;
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut rows = Vec::new();
        for usage in keys {
            let models = usage.models.lock().unwrap_or_else(PoisonError::into_inner);
            for (model, tally) in models.iter() {
                rows.push((usage.name.clone(), model.clone(), tally.total, tally.recent(minute)));
            }
        }
        rows
    }

    /// The `GET /usage` document: per key and model, since start and over the last hour.
    pub(crate) fn report(&self) -> Value {
        let since = self.started.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        let usage: Vec<Value> = self
            .rows()
            .into_iter()
            .map(|(key, model, total, recent)| {
                json!({"key": key, "model": &*model, "since_start": total.json(), "last_hour": recent.json()})
            })
            .collect();
        json!({"since": since, "window_seconds": WINDOW_MINUTES * 60, "usage": usage})
    }

    /// Registers the usage counters in `registry` (made at each scrape).
    pub(crate) fn register(&self, registry: &mut Registry) {
        let requests = Family::<UsageLabels, Counter>::default();
        let tokens = Family::<TokenLabels, Counter>::default();
        for (key, model, total, _) in self.rows() {
            let labels = UsageLabels { key, model: model.to_string() };
            requests.get_or_create(&labels).inc_by(total.requests);
            for (kind, count) in [("prompt", total.prompt), ("completion", total.completion), ("image", total.image)] {
                let labels = TokenLabels { key: labels.key.clone(), model: labels.model.clone(), kind };
                tokens.get_or_create(&labels).inc_by(count);
            }
        }
        registry.register("api_key_requests", "Requests of each API key that reached a model, by model", requests);
        registry.register("api_key_tokens", "Tokens of each API key's requests, by model and kind", tokens);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UsageLabels {
    key: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    key: String,
    model: String,
    kind: &'static str,
}

/// The model labels of a config: the models it names, each once; any other is `other`.
pub(crate) struct ModelLabels {
    known: HashMap<Box<str>, Arc<str>>,
    other: Arc<str>,
}

impl Default for ModelLabels {
    fn default() -> ModelLabels {
        ModelLabels { known: HashMap::new(), other: Arc::from("other") }
    }
}

impl ModelLabels {
    /// Labels for `names` (a glob, with `*`, names no one model and is left out).
    pub(crate) fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> ModelLabels {
        let mut labels = ModelLabels::default();
        for name in names.into_iter().filter(|name| !name.contains('*')) {
            labels.known.entry(name.into()).or_insert_with(|| Arc::from(name));
        }
        labels
    }

    /// The label `model` is counted under.
    pub(crate) fn label(&self, model: &str) -> Arc<str> {
        self.known.get(model).unwrap_or(&self.other).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn usage_adds_up_by_key_and_model_and_the_last_hour_forgets() {
        let book = UsageBook::default();
        let labels = ModelLabels::new(["glm-4v", "qwen-*"]);
        assert_eq!(&*labels.label("qwen-vl"), "other", "a glob names no model");
        let alice = book.key("alice");
        alice.add(&labels.label("glm-4v"), &Spend { prompt: 10, completion: 5, image: 4 });
        tokio::time::advance(Duration::from_secs(30 * 60)).await;
        alice.add(&labels.label("glm-4v"), &Spend { prompt: 1, completion: 2, image: 0 });
        alice.add(&labels.label("llama"), &Spend { prompt: 3, completion: 3, image: 0 });
        assert!(Arc::ptr_eq(&book.key("alice"), &alice), "one usage per key name");
        let rows = book.rows();
        assert_eq!(rows.len(), 2);
        let glm = Counts { requests: 2, prompt: 11, completion: 7, image: 4 };
        assert_eq!((&*rows[0].1, rows[0].2, rows[0].3), ("glm-4v", glm, glm));
        assert_eq!(&*rows[1].1, "other");
        // 45 minutes on, the first request has left the hour; the totals keep it.
        tokio::time::advance(Duration::from_secs(45 * 60)).await;
        let rows = book.rows();
        assert_eq!(rows[0].2, glm);
        assert_eq!(rows[0].3, Counts { requests: 1, prompt: 1, completion: 2, image: 0 });
        let report = book.report();
        assert_eq!(report["usage"][0]["since_start"]["prompt_tokens"], 11);
        assert_eq!(report["usage"][0]["last_hour"]["requests"], 1);
        // Two hours on, nothing is recent.
        tokio::time::advance(Duration::from_secs(120 * 60)).await;
        assert_eq!(book.rows()[0].3, Counts::default());
    }

    #[test]
    fn the_counters_name_each_key_model_and_kind() {
        let book = UsageBook::default();
        book.key("bob").add(&Arc::from("glm-4v"), &Spend { prompt: 7, completion: 9, image: 2 });
        let mut registry = Registry::with_prefix("infergate");
        book.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"infergate_api_key_requests_total{key="bob",model="glm-4v"} 1"#), "{text}");
        assert!(text.contains(r#"infergate_api_key_tokens_total{key="bob",model="glm-4v",kind="completion"} 9"#));
        assert!(text.contains(r#"infergate_api_key_tokens_total{key="bob",model="glm-4v",kind="image"} 2"#));
    }
}
