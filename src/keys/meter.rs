//! A key's token spend, read as its response passes. The response of a request that names an API
//! key's model is wrapped in a `Metered` body that reads the backend's `usage` (a JSON answer's, or a
//! stream's last chunk); what was used is the backend's prompt and completion tokens, without them
//! the prompt estimate and the events (about one a token) the client received. That reading is the
//! request's usage (`usage`, taken by accounting when the response ends), and for a key with budgets it settles the
//! reservation made up front (`KeyBudgets::reserve`) when the body ends or is dropped. A stream whose
//! client did not ask for its usage is asked for it (`stream_options.include_usage`), and the usage
//! chunk the client did not ask for is taken out of what it receives.

use super::budget::{Bucket, Shortfall};
use super::shared_budget::{Reserved, SharedBudgets};
use super::usage::Spend;
use crate::config::{BudgetLimit, Counted};
use crate::cost::{self, PromptCost, COMPLETION_TOKENS, PROMPT_TOKENS};
use crate::error::{BoxError, GatewayError};
use crate::shared::SharedStore;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use memchr::memmem::Finder;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use tokio::time::Instant;

/// A key's token budgets (of all tokens, of prompt or of completion tokens, per minute or per day),
/// kept across reloads while their limits stay.
pub(crate) struct KeyBudgets {
    /// In the order of `ApiKeyConfig::budgets`.
    budgets: Vec<Budget>,
    /// The limits they were made of, to tell whether a reload changed them.
    limits: Vec<BudgetLimit>,
    /// The budgets' clock starts here.
    epoch: Instant,
    /// Where the budgets are kept when gateways share them; `budgets` then mirror Redis's levels as
    /// last answered, and count alone while Redis is down (`shared_budget`).
    shared: Option<SharedBudgets>,
}

/// One of a key's budgets.
struct Budget {
    /// What it counts.
    counted: Counted,
    bucket: Bucket,
    /// Its limit as `x-ratelimit-limit-tokens` says it, made once.
    limit_header: HeaderValue,
}

/// The 429 of a budget that has room again in `ms`.
fn too_soon(ms: u64) -> GatewayError {
    GatewayError::TokensExceeded { retry_after_secs: ms.div_ceil(1000).max(1) }
}

fn signed(tokens: u64) -> i64 {
    i64::try_from(tokens).unwrap_or(i64::MAX)
}

/// Tokens a request may produce when it sets no `max_tokens`, for its reservation.
pub(crate) const DEFAULT_MAX_TOKENS: u64 = 1024;

/// The tokens of a request, prompt and completion apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tokens {
    prompt: u64,
    completion: u64,
}

impl Tokens {
    /// What a request reserves: `prompt`, and `max_tokens` or the default.
    fn asked(prompt: u64, max_tokens: Option<u64>) -> Tokens {
        Tokens { prompt, completion: max_tokens.unwrap_or(DEFAULT_MAX_TOKENS) }
    }

    /// What a budget counting `counted` counts of them.
    fn counted(self, counted: Counted) -> u64 {
        match counted {
            Counted::Tokens => self.prompt.saturating_add(self.completion),
            Counted::Prompt => self.prompt,
            Counted::Completion => self.completion,
        }
    }
}

impl KeyBudgets {
    /// The budgets of `limits` (`ApiKeyConfig::budgets`), kept in `shared` (the store, and the key's
    /// name) when gateways share them; `None` when there are none.
    pub(crate) fn new(limits: Vec<BudgetLimit>, shared: Option<(&Arc<SharedStore>, &str)>) -> Option<KeyBudgets> {
        if limits.is_empty() {
            return None;
        }
        let budgets = limits
            .iter()
            .map(|&(counted, window, limit)| Budget {
                counted,
                bucket: Bucket::new(limit, window, 0),
                limit_header: HeaderValue::from(limit),
            })
            .collect();
        let shared = shared.map(|(store, name)| {
            let named: Vec<(&str, u64, u64)> =
                limits.iter().map(|&(counted, window, limit)| (counted.name(), limit, window)).collect();
            SharedBudgets::new(store.clone(), name, &named)
        });
        Some(KeyBudgets { budgets, limits, epoch: Instant::now(), shared })
    }

    /// Whether these budgets have these limits and are kept where `shared` says (a reload keeps
    /// them then).
    pub(crate) fn same(&self, limits: &[BudgetLimit], shared: Option<&Arc<SharedStore>>) -> bool {
        let store = self.shared.as_ref().map(|shared| &shared.store);
        self.limits == limits && store.map(Arc::as_ptr) == shared.map(Arc::as_ptr)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Reserves `prompt` tokens and the output a request may ask for in every budget of this
    /// gateway's, or answers why not: 429 with the seconds until it fits.
    pub(crate) fn reserve(self: &Arc<Self>, prompt: u64, max_tokens: Option<u64>) -> Result<Reservation, GatewayError> {
        let tokens = Tokens::asked(prompt, max_tokens);
        let now = self.now_ms();
        for budget in &self.budgets {
            match budget.bucket.check(tokens.counted(budget.counted), now) {
                Ok(()) => {}
                Err(Shortfall::RetryAfterMs(ms)) => return Err(too_soon(ms)),
                Err(Shortfall::TooLarge) => {
                    return Err(GatewayError::RequestTooLargeForBudget { tokens: tokens.counted(budget.counted) })
                }
            }
        }
        for budget in &self.budgets {
            budget.bucket.take(tokens.counted(budget.counted), now);
        }
        Ok(Reservation { budgets: self.clone(), reserved: tokens, settled: false, in_redis: None })
    }

    /// Reserves what a request may cost: `estimate`'s prompt and the output it may ask for; in Redis
    /// when the budgets are shared and it answers, else in this gateway's.
    pub(crate) async fn reserve_for(self: &Arc<Self>, estimate: &Estimate) -> Result<Reservation, GatewayError> {
        let Some(shared) = &self.shared else { return self.reserve(estimate.prompt, estimate.max_tokens) };
        let tokens = Tokens::asked(estimate.prompt, estimate.max_tokens);
        if let Some(budget) = self.budgets.iter().find(|b| tokens.counted(b.counted) > b.bucket.limit_and_window().0) {
            return Err(GatewayError::RequestTooLargeForBudget { tokens: tokens.counted(budget.counted) });
        }
        if shared.store.reachable() {
            let counts: Vec<i64> = self.budgets.iter().map(|b| signed(tokens.counted(b.counted))).collect();
            let id = fastrand::u64(..);
            match shared.reserve(&counts, id).await {
                Some(Reserved::Levels(levels)) => {
                    let now = self.now_ms();
                    for (budget, level) in self.budgets.iter().zip(levels) {
                        budget.bucket.mirror(level, now);
                    }
                    return Ok(Reservation {
                        budgets: self.clone(),
                        reserved: tokens,
                        settled: false,
                        in_redis: Some(id),
                    });
                }
                Some(Reserved::Short(_, ms)) => return Err(too_soon(ms)),
                None => {}
            }
        }
        shared.store.fell_back();
        self.reserve(estimate.prompt, estimate.max_tokens)
    }

    /// OpenAI's token headers for an answer, of the budget with the fewest tokens left (the first of
    /// those): its limit, what remains of it, and when it is full again.
    pub(crate) fn headers(&self, headers: &mut HeaderMap) {
        let now = self.now_ms();
        let least =
            self.budgets.iter().map(|budget| (budget, budget.bucket.remaining(now))).min_by_key(|(_, left)| *left);
        let Some((budget, left)) = least else { return };
        headers.insert(LIMIT_TOKENS, budget.limit_header.clone());
        headers.insert(REMAINING_TOKENS, HeaderValue::from(left));
        headers.insert(RESET_TOKENS, reset_value(budget.bucket.full_in_ms(now)));
    }
}

// OpenAI's token headers; constants, so that no request parses their names.
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// A duration as OpenAI's `x-ratelimit-reset-*` headers write it: `20ms`, `7s`, `6m0s`. Written with
/// `itoa` into a buffer on the stack: the formatter was a fifth of what a budget's headers cost.
pub(crate) fn reset_value(ms: u64) -> HeaderValue {
    let mut text = [0u8; 32];
    let mut len = 0;
    let mut push = |bytes: &[u8]| {
        text[len..len + bytes.len()].copy_from_slice(bytes);
        len += bytes.len();
    };
    let mut number = itoa::Buffer::new();
    match ms {
        0..1_000 => {
            push(number.format(ms).as_bytes());
            push(b"ms");
        }
        1_000..60_000 => {
            push(number.format(ms.div_ceil(1000)).as_bytes());
            push(b"s");
        }
        _ => {
            push(number.format(ms / 60_000).as_bytes());
            push(b"m");
            push(number.format((ms % 60_000).div_ceil(1000)).as_bytes());
            push(b"s");
        }
    }
    HeaderValue::from_bytes(&text[..len]).unwrap_or(HeaderValue::from_static("0s"))
}

/// Tokens taken from a key's budgets for one request, until it settles. Dropped unsettled (the
/// request got no answer from the model), all of it comes back.
pub(crate) struct Reservation {
    budgets: Arc<KeyBudgets>,
    reserved: Tokens,
    settled: bool,
    /// Reserved in Redis (shared budgets) as this reservation, not only in this gateway's.
    in_redis: Option<u64>,
}

impl Reservation {
    fn settle(&mut self, used: Tokens) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let now = self.budgets.now_ms();
        for budget in &self.budgets.budgets {
            budget.bucket.settle(self.reserved.counted(budget.counted), used.counted(budget.counted), now);
        }
        if self.budgets.shared.is_none() {
            return;
        }
        // Shared (settled from a body's end, always on a worker's runtime): Redis took the reservation (so the difference is due), or nothing (so all of it).
        let taken = if self.in_redis.is_some() { self.reserved } else { Tokens::default() };
        let due: Vec<i64> = self
            .budgets
            .budgets
            .iter()
            .map(|b| signed(used.counted(b.counted)).saturating_sub(signed(taken.counted(b.counted))))
            .collect();
        // A reservation in Redis is settled even when nothing is due: that removes its marker.
        if self.in_redis.is_none() && due.iter().all(|tokens| *tokens == 0) {
            return;
        }
        let (Some(shared), Ok(runtime)) = (&self.budgets.shared, tokio::runtime::Handle::try_current()) else {
            return;
        };
        if !shared.store.reachable() {
            shared.keep_unwritten(&due);
            return;
        }
        let (budgets, id) = (self.budgets.clone(), self.in_redis);
        runtime.spawn(async move {
            if let Some(shared) = &budgets.shared {
                shared.settle(due, id).await;
            }
        });
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.settle(Tokens::default());
    }
}

/// What the gateway estimated of a request before it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Estimate {
    /// Prompt tokens, images included.
    pub(crate) prompt: u64,
    /// Image tokens among them.
    pub(crate) image: u64,
    /// The output it may ask for (`max_tokens`; `None`: it sets none).
    pub(crate) max_tokens: Option<u64>,
    /// It streams: its answer's content deltas are counted, for a client that leaves.
    pub(crate) stream: bool,
    /// It streams without asking for its usage.
    pub(crate) unasked_stream: bool,
}

impl Estimate {
    /// The estimate of a request with `body`: its prompt and `max_tokens` as `cost` estimates them for
    /// a chat completion (`chat`: the body read as one); a body that is not one (embeddings) costs its
    /// length over four, with no output.
    pub(crate) fn of(body: &[u8], chat: Option<&PromptCost>) -> Estimate {
        match chat {
            Some(chat) => Estimate {
                prompt: chat.prompt_tokens(),
                image: u64::from(chat.image_tokens),
                max_tokens: chat.max_tokens.map(u64::from),
                stream: chat.stream,
                unasked_stream: chat.stream && !chat.include_usage,
            },
            None => Estimate {
                prompt: (body.len() as u64).div_ceil(4),
                image: 0,
                max_tokens: Some(0),
                stream: false,
                unasked_stream: false,
            },
        }
    }
}

/// What a metered response used, for its request's record.
pub(crate) struct MeterReading {
    /// The model the request named (empty when it named none).
    pub(crate) model: String,
    /// Its usage label (`usage::ModelLabels`).
    pub(crate) label: Arc<str>,
    /// The tokens it spent.
    pub(crate) spend: Spend,
}

/// A response body whose tokens are read as it passes (see the module doc).
///
/// A JSON answer's last bytes join a window of the body's end, where its `usage` is read once, when
/// the body ends. An event stream's frames are each searched once, for `"completion_tokens":`, as
/// they pass: the one search finds the usage chunk, which is then read and, when the gateway asked
/// for it, taken out; its events are counted by their blank lines. Accounting leaves a metered
/// stream's search to it (`Metering::meters_usage`), so a streamed token costs one search either way.
pub(crate) struct Metered<B> {
    inner: B,
    estimate: Estimate,
    /// The request's model and label, until accounting takes them.
    model: Option<(String, Arc<str>)>,
    /// The key's budgets' reservation, settled when the body ends.
    reservation: Option<Reservation>,
    /// The backend's `usage` (prompt, completion): a JSON answer's once read from the window, a
    /// stream's the last its events held.
    usage: Option<(Option<u64>, Option<u64>)>,
    /// Line feeds of an event stream so far: two an event (`\n\n`, or `\r\n\r\n`), about one event a
    /// token, so half of them is what a client that left received.
    line_feeds: u64,
    /// The usage chunk is the gateway's, not the client's: it is taken out of the stream.
    strip_usage: bool,
    /// A JSON answer's last bytes, where its `usage` is: filled up to `WINDOW` bytes (allocated with
    /// the first frame), then a ring written at `window_at`. A stream's event split across frames,
    /// joined until a frame ends it (its last `WINDOW` bytes).
    window: Vec<u8>,
    window_at: usize,
}

/// How much of the body's end is kept to read its `usage` from: a usage object with OpenAI's
/// details and what follows it (`system_fingerprint`, `[DONE]`) is about 500 bytes.
const WINDOW: usize = 1024;

impl<B> Metered<B> {
    /// `inner`, the response of a request for `model` (counted under `label`) estimated as `estimate`.
    pub(crate) fn new(inner: B, model: String, label: Arc<str>, estimate: Estimate) -> Metered<B> {
        Metered {
            inner,
            estimate,
            model: Some((model, label)),
            reservation: None,
            usage: None,
            line_feeds: 0,
            strip_usage: false,
            window: Vec::new(),
            window_at: 0,
        }
    }

    /// Settles `reservation` with what was used when the body ends.
    pub(crate) fn settling(mut self, reservation: Option<Reservation>) -> Metered<B> {
        self.reservation = reservation;
        self
    }

    /// Takes the stream's usage chunk out of what the client receives (the gateway asked for it).
    pub(crate) fn stripping_usage(mut self, strip: bool) -> Metered<B> {
        self.strip_usage = strip;
        self
    }

    /// The body being metered.
    pub(crate) fn source(&self) -> &B {
        &self.inner
    }

    /// What the response used so far, once: the request's record takes it when the response ends.
    pub(crate) fn take_reading(&mut self) -> Option<MeterReading> {
        let (model, label) = self.model.take()?;
        Some(MeterReading { model, label, spend: self.spend() })
    }

    /// Reads a frame as it passes (`last`: the body ends with it); whether it holds a usage chunk.
    fn observe(&mut self, data: &[u8], last: bool) -> bool {
        if !self.estimate.stream {
            // An answer in one frame, as most are, is read where it is.
            match last && self.window.is_empty() {
                true => self.usage = Some(usage_in(data)),
                false => self.keep_end(data),
            }
            return false;
        }
        self.line_feeds += line_feeds(data);
        // Most frames end their last event: they are searched as they are.
        let ends_event = data.ends_with(b"\n\n") || data.ends_with(b"\r\n\r\n");
        if self.window.is_empty() && ends_event {
            return self.read_events(data);
        }
        self.window.extend_from_slice(data);
        if let Some(over) = self.window.len().checked_sub(WINDOW).filter(|&over| over > 0) {
            self.window.drain(..over);
        }
        if !ends_event {
            return false;
        }
        let joined = std::mem::take(&mut self.window);
        let found = self.read_events(&joined);
        self.window = joined;
        self.window.clear();
        found
    }

    /// Reads the usage of the last event in `events` that has one; whether one had.
    fn read_events(&mut self, events: &[u8]) -> bool {
        // Most frames have none: one search says so, before the search for the last.
        let Some(first) = COMPLETION_TOKENS.find(events) else { return false };
        let at = first + COMPLETION_TOKENS.find_iter(&events[first + 1..]).last().map_or(0, |after| after + 1);
        // The event's JSON is one line: its prompt tokens are on the line of its completion tokens.
        let line = &events[memchr::memrchr(b'\n', &events[..at]).map_or(0, |n| n + 1)..];
        self.usage =
            Some((cost::usage_field(line, &PROMPT_TOKENS), cost::usage_field(&events[at..], &COMPLETION_TOKENS)));
        true
    }

    /// Writes `data`'s end into the window.
    fn keep_end(&mut self, data: &[u8]) {
        let mut data = &data[data.len().saturating_sub(WINDOW)..];
        if self.window.len() < WINDOW {
            self.window.reserve_exact(WINDOW);
            let (fits, more) = data.split_at((WINDOW - self.window.len()).min(data.len()));
            self.window.extend_from_slice(fits);
            data = more;
        }
        let (first, wrapped) = data.split_at((WINDOW - self.window_at).min(data.len()));
        self.window[self.window_at..self.window_at + first.len()].copy_from_slice(first);
        self.window[..wrapped.len()].copy_from_slice(wrapped);
        self.window_at = (self.window_at + data.len()) % WINDOW;
    }

    /// The backend's prompt and completion tokens: of the last `usage` object in a JSON answer's
    /// end, or of a stream's events.
    fn usage(&mut self) -> (Option<u64>, Option<u64>) {
        if self.estimate.stream && self.usage.is_none() && !self.window.is_empty() {
            // An unfinished event (or an answer that is no event stream) at the end.
            let kept = std::mem::take(&mut self.window);
            self.read_events(&kept);
        }
        if let Some(usage) = self.usage.or(self.estimate.stream.then_some((None, None))) {
            return usage;
        }
        // The ring in order: its oldest bytes (from the write position on) first.
        self.window.rotate_left(self.window_at);
        self.window_at = 0;
        let usage = usage_in(&self.window);
        self.usage = Some(usage);
        usage
    }

    /// Tokens used: the backend's `usage` when it reported one, else the estimate of the prompt and
    /// the events the client received.
    fn spend(&mut self) -> Spend {
        let (prompt, completion) = self.usage();
        Spend {
            prompt: prompt.unwrap_or(self.estimate.prompt),
            completion: completion.unwrap_or(self.line_feeds / 2),
            image: self.estimate.image,
        }
    }
}

/// The prompt and completion tokens of the last `usage` object in a JSON answer's `end`. The last
/// match by forward, vectorized searches: memchr's reverse searcher is not vectorized, and most
/// bodies' ends hold one `usage` or none.
fn usage_in(end: &[u8]) -> (Option<u64>, Option<u64>) {
    match USAGE.find_iter(end).last() {
        Some(at) => (cost::usage_field(&end[at..], &PROMPT_TOKENS), cost::usage_field(&end[at..], &COMPLETION_TOKENS)),
        None => (None, None),
    }
}

/// The body of a streamed chat request that does not ask for its usage, asking for it
/// (`stream_options.include_usage`); `None` when it cannot be changed (not a JSON object, or it asks
/// already).
pub(crate) fn asking_for_usage(body: &[u8]) -> Option<Bytes> {
    // A body with no `stream_options` anywhere gets it as its first key, written in as text (the
    // body has `stream`, so a key follows): parsed into a tree and written out again, writing the
    // tree and dropping it alone cost a streamed request 5,600 instructions (callgrind).
    let open = body.iter().position(|b| !b.is_ascii_whitespace()).filter(|&at| body[at] == b'{')?;
    if STREAM_OPTIONS.find(body).is_none() {
        let mut asked = Vec::with_capacity(body.len() + ASK_FOR_USAGE.len());
        asked.extend_from_slice(&body[..=open]);
        asked.extend_from_slice(ASK_FOR_USAGE);
        asked.extend_from_slice(&body[open + 1..]);
        return Some(Bytes::from(asked));
    }
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let options = value.as_object_mut()?.entry("stream_options").or_insert_with(|| serde_json::json!({}));
    let options = options.as_object_mut()?;
    if options.get("include_usage").and_then(serde_json::Value::as_bool) == Some(true) {
        return None;
    }
    options.insert("include_usage".into(), serde_json::Value::Bool(true));
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

/// The line feeds (`\n`) of `data`, counted in runs of 255 bytes whose count fits a byte, as a fold
/// without an early exit: written so, the compiler vectorizes it. On a token's frame (about 200
/// bytes) it costs half of memchr's count, which pays its set-up on every call (callgrind).
fn line_feeds(data: &[u8]) -> u64 {
    data.chunks(255).map(|run| u64::from(run.iter().fold(0u8, |n, &b| n + u8::from(b == b'\n')))).sum()
}

/// `data` without its usage-only SSE events (`"choices":[]` with a `usage`); only a frame that has
/// one is copied. An event split across frames is passed on as it is.
fn without_usage_events(data: Bytes) -> Bytes {
    if NO_CHOICES.find(&data).is_none() {
        return data;
    }
    let mut kept = Vec::with_capacity(data.len());
    let mut rest = &data[..];
    while !rest.is_empty() {
        let end = rest.windows(2).position(|w| w == b"\n\n").map_or(rest.len(), |at| at + 2);
        let (event, after) = rest.split_at(end);
        let usage_only = NO_CHOICES.find(event).is_some() && PROMPT_TOKENS.find(event).is_some();
        if !usage_only {
            kept.extend_from_slice(event);
        }
        rest = after;
    }
    Bytes::from(kept)
}

// What a metered body looks for, searchers built once.
static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\":{"));
static STREAM_OPTIONS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"stream_options\""));
/// The key a streamed request's body is given first.
const ASK_FOR_USAGE: &[u8] = b"\"stream_options\":{\"include_usage\":true},";
static NO_CHOICES: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"choices\":[]"));

impl<B: Body<Data = Bytes, Error = BoxError> + Unpin> Body for Metered<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let polled = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
            let Some(Ok(frame)) = polled else { return Poll::Ready(polled) };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            };
            let usage_chunk = this.observe(&data, this.inner.is_end_stream());
            let data = if this.strip_usage && usage_chunk { without_usage_events(data) } else { data };
            // A frame that held only the usage chunk is not sent at all.
            if !data.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Metered<B> {
    fn drop(&mut self) {
        if let Some(mut reservation) = self.reservation.take() {
            let spend = self.spend();
            reservation.settle(Tokens { prompt: spend.prompt, completion: spend.completion });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn body(chunks: &[&'static str]) -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            chunks.iter().map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes())))).collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    fn remaining(budgets: &KeyBudgets) -> u64 {
        budgets.budgets[0].bucket.remaining(budgets.now_ms())
    }

    const MINUTE: u64 = 60_000;

    const ESTIMATE: Estimate =
        Estimate { prompt: 20, image: 8, max_tokens: Some(100), stream: true, unasked_stream: false };

    fn metered(
        chunks: &[&'static str],
        budgets: &Arc<KeyBudgets>,
    ) -> Metered<impl Body<Data = Bytes, Error = BoxError>> {
        let reservation = budgets.reserve(ESTIMATE.prompt, ESTIMATE.max_tokens).unwrap();
        Metered::new(body(chunks), "glm-4v".into(), Arc::from("glm-4v"), ESTIMATE).settling(Some(reservation))
    }

    #[tokio::test(start_paused = true)]
    async fn a_reservation_settles_on_the_backends_usage_or_on_what_was_received() {
        let budgets = Arc::new(KeyBudgets::new(vec![(Counted::Tokens, MINUTE, 10_000)], None).unwrap());
        // Reserved 20 + 100; the usage, split across two frames, says 12 + 30.
        let mut answer = metered(&["{\"usage\":{\"prompt_tokens\":12,\"compl", "etion_tokens\":30}}"], &budgets);
        assert_eq!(remaining(&budgets), 10_000 - 120);
        while answer.frame().await.is_some() {}
        let reading = answer.take_reading().unwrap();
        assert_eq!((reading.model.as_str(), reading.spend), ("glm-4v", Spend { prompt: 12, completion: 30, image: 8 }));
        assert!(answer.take_reading().is_none(), "read once");
        drop(answer);
        assert_eq!(remaining(&budgets), 10_000 - 42);
        // A stream the client leaves after two tokens: the prompt estimate and the two it got.
        let mut stream = metered(
            &[
                "data: {\"choices\":[{\"delta\":{\"content\":\"The\"}}]}\n\n",
                "data: {\"choices\":[{\"delta\":{\"content\":\" image\"}}]}\n\n",
                "data: more",
            ],
            &budgets,
        );
        stream.frame().await.unwrap().unwrap();
        stream.frame().await.unwrap().unwrap();
        assert_eq!(stream.take_reading().unwrap().spend, Spend { prompt: 20, completion: 2, image: 8 });
        drop(stream);
        assert_eq!(remaining(&budgets), 10_000 - 42 - 22);
        assert_eq!(Estimate::of(b"12345678", None).prompt, 2, "a body that is no chat: its length over four");
    }

    #[tokio::test]
    async fn events_are_counted_by_their_blank_lines_and_usage_read_from_the_end() {
        let budgets = Arc::new(KeyBudgets::new(vec![(Counted::Tokens, MINUTE, 10_000)], None).unwrap());
        // CRLF separators (sse-starlette's), an event's end straddling two frames, and a body far
        // longer than the window with its usage (and a later `usage` of continuous stats) at the end.
        let long = Box::leak(format!("data: {}\r\n\r\n", "x".repeat(3 * WINDOW)).into_boxed_str());
        let mut stream = metered(
            &[
                "data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\r\n\r\ndata: b\r\n",
                "\r\n",
                long,
                "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n",
            ],
            &budgets,
        );
        while stream.frame().await.is_some() {}
        assert_eq!(stream.line_feeds / 2, 5);
        assert_eq!(stream.take_reading().unwrap().spend, Spend { prompt: 3, completion: 4, image: 8 });
    }

    #[tokio::test]
    async fn a_json_answer_is_read_where_it_is_or_from_its_end() {
        let answer = "{\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}";
        let estimate = Estimate { stream: false, ..ESTIMATE };
        let whole = http_body_util::Full::new(Bytes::from_static(answer.as_bytes())).map_err(|never| match never {});
        let mut one = Metered::new(whole, String::new(), Arc::from(""), estimate);
        while one.frame().await.is_some() {}
        assert!(one.window.is_empty(), "one frame is read where it is");
        let (head, tail) = answer.split_at(30);
        let mut two = Metered::new(body(&[head, tail]), String::new(), Arc::from(""), estimate);
        while two.frame().await.is_some() {}
        for reading in [one.take_reading(), two.take_reading()] {
            assert_eq!(reading.unwrap().spend, Spend { prompt: 5, completion: 6, image: 8 });
        }
    }

    #[tokio::test(start_paused = true)]
    async fn prompt_and_completion_caps_count_their_own_tokens() {
        let limits = vec![(Counted::Prompt, MINUTE, 50), (Counted::Completion, MINUTE, 100)];
        let budgets = Arc::new(KeyBudgets::new(limits, None).unwrap());
        let left = |i: usize| budgets.budgets[i].bucket.remaining(budgets.now_ms());
        let mut first = budgets.reserve(40, Some(90)).unwrap();
        assert_eq!((left(0), left(1)), (10, 10));
        assert!(
            matches!(budgets.reserve(20, Some(5)), Err(GatewayError::TokensExceeded { .. })),
            "the prompt cap is short"
        );
        assert!(matches!(budgets.reserve(5, None), Err(GatewayError::RequestTooLargeForBudget { tokens: 1024 })));
        first.settle(Tokens { prompt: 40, completion: 10 });
        assert_eq!((left(0), left(1)), (10, 90), "unused completion tokens come back; the prompt was spent");
        assert!(budgets.reserve(10, Some(90)).is_ok());
    }

    #[test]
    fn a_stream_is_asked_for_its_usage_and_the_chunk_taken_out() {
        for (body, options) in [
            (" {\"stream\":true,\"messages\":[]}", serde_json::json!({"include_usage": true})),
            (r#"{"stream": true, "stream_options": {}}"#, serde_json::json!({"include_usage": true})),
            (
                r#"{"stream_options":{"x":1,"include_usage":false},"stream":true}"#,
                serde_json::json!({"x": 1, "include_usage": true}),
            ),
        ] {
            let asked: serde_json::Value = serde_json::from_slice(&asking_for_usage(body.as_bytes()).unwrap()).unwrap();
            assert_eq!((&asked["stream_options"], &asked["stream"]), (&options, &serde_json::json!(true)), "{body}");
        }
        assert!(asking_for_usage(br#"{"stream":true,"stream_options":{"include_usage":true}}"#).is_none());
        assert!(asking_for_usage(b"[1]").is_none() && asking_for_usage(b"").is_none(), "no JSON object");
        let end = "data: {\"choices\":[{\"finish_reason\":\"length\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        let kept = without_usage_events(Bytes::from(end));
        assert_eq!(&kept[..], b"data: {\"choices\":[{\"finish_reason\":\"length\"}]}\n\ndata: [DONE]\n\n");
        let plain = Bytes::from_static(b"data: {\"choices\":[{\"delta\":{}}]}\n\n");
        assert_eq!(without_usage_events(plain.clone()), plain);
    }

    #[test]
    fn line_feeds_are_counted_across_runs() {
        // Runs of 255 bytes: line feeds on their seams, and frames of every length about them.
        arbtest::arbtest(|u| {
            let len = u.int_in_range(0..=800)?;
            let data = (0..len).map(|_| Ok(*u.choose(b"\nx")?)).collect::<arbtest::arbitrary::Result<Vec<u8>>>()?;
            assert_eq!(line_feeds(&data), data.iter().filter(|&&b| b == b'\n').count() as u64);
            Ok(())
        });
        assert_eq!(line_feeds(&[b'\n'; 600]), 600, "full runs");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reservation_that_does_not_fit_says_when_it_will() {
        let budgets = Arc::new(
            KeyBudgets::new(vec![(Counted::Tokens, MINUTE, 600), (Counted::Tokens, 1440 * MINUTE, 100_000)], None)
                .unwrap(),
        );
        let held = budgets.reserve(500, Some(0)).unwrap();
        match budgets.reserve(200, Some(0)) {
            Err(GatewayError::TokensExceeded { retry_after_secs }) => {
                assert_eq!(retry_after_secs, 10, "100 tokens at 10/s")
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("reserved past the budget"),
        }
        assert!(matches!(budgets.reserve(700, Some(0)), Err(GatewayError::RequestTooLargeForBudget { tokens: 700 })));
        let mut headers = HeaderMap::new();
        budgets.headers(&mut headers);
        assert_eq!(
            (&headers["x-ratelimit-limit-tokens"], &headers["x-ratelimit-remaining-tokens"]),
            (&HeaderValue::from(600), &HeaderValue::from(100))
        );
        assert_eq!(headers["x-ratelimit-reset-tokens"], "50s");
        drop(held);
        assert_eq!(remaining(&budgets), 600, "a request that got no answer costs nothing");
        for (ms, text) in [(20, "20ms"), (7_000, "7s"), (360_000, "6m0s"), (61_500, "1m2s")] {
            assert_eq!(reset_value(ms), text);
        }
    }
}
