//! A key's token spend, settled when its response ends. A request to a key with budgets reserves its
//! estimate up front (`KeyBudgets::reserve`); its response body is wrapped in a `Metered` body that
//! reads the backend's `usage` as it passes (a JSON answer's, or a stream's last chunk) and, when the
//! body ends or is dropped, settles the reservation with what was used: the backend's prompt and
//! completion tokens; without them, the prompt estimate and the tokens the client received. A stream
//! whose client did not ask for its usage is asked for it (`stream_options.include_usage`), and the
//! usage chunk the client did not ask for is taken out of what it receives.

use super::budget::{Bucket, Shortfall};
use crate::cost::{self, PromptCost, COMPLETION_TOKENS, PROMPT_TOKENS};
use crate::error::{BoxError, GatewayError};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use memchr::memmem::Finder;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use tokio::time::Instant;

/// A key's token budgets (per minute, per day), kept across reloads while their limits stay.
pub(crate) struct KeyBudgets {
    pub(crate) minute: Option<Bucket>,
    pub(crate) day: Option<Bucket>,
    /// The budgets' clock starts here.
    epoch: Instant,
}

/// Tokens a request may produce when it sets no `max_tokens`, for its reservation.
pub(crate) const DEFAULT_MAX_TOKENS: u64 = 1024;

impl KeyBudgets {
    /// Budgets of `per_minute` and `per_day` tokens; `None` when the key has neither.
    pub(crate) fn new(per_minute: Option<u64>, per_day: Option<u64>) -> Option<KeyBudgets> {
        if per_minute.is_none() && per_day.is_none() {
            return None;
        }
        Some(KeyBudgets {
            minute: per_minute.map(|limit| Bucket::new(limit, 60_000, 0)),
            day: per_day.map(|limit| Bucket::new(limit, 86_400_000, 0)),
            epoch: Instant::now(),
        })
    }

    /// Whether these budgets have these limits (a reload keeps them then).
    pub(crate) fn same_limits(&self, per_minute: Option<u64>, per_day: Option<u64>) -> bool {
        self.minute.as_ref().map(Bucket::limit) == per_minute && self.day.as_ref().map(Bucket::limit) == per_day
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn buckets(&self) -> impl Iterator<Item = &Bucket> {
        self.minute.iter().chain(self.day.iter())
    }

    /// Reserves `prompt` tokens and the output a request may ask for in every budget, or answers why
    /// not: 429 with the seconds until it fits.
    pub(crate) fn reserve(self: &Arc<Self>, prompt: u64, max_tokens: Option<u64>) -> Result<Reservation, GatewayError> {
        let tokens = prompt.saturating_add(max_tokens.unwrap_or(DEFAULT_MAX_TOKENS));
        let now = self.now_ms();
        for bucket in self.buckets() {
            match bucket.check(tokens, now) {
                Ok(()) => {}
                Err(Shortfall::RetryAfterMs(ms)) => {
                    return Err(GatewayError::TokensExceeded { retry_after_secs: ms.div_ceil(1000).max(1) })
                }
                Err(Shortfall::TooLarge) => return Err(GatewayError::RequestTooLargeForBudget { tokens }),
            }
        }
        for bucket in self.buckets() {
            bucket.take(tokens, now);
        }
        Ok(Reservation { budgets: self.clone(), reserved: tokens, prompt_estimate: prompt, settled: false })
    }

    /// Reserves what the request with `body` may cost: its prompt and `max_tokens` as `cost` estimates
    /// them for a chat completion; a body that is not one (embeddings) costs its length over four,
    /// with no output.
    /// `chat` is the body read as a chat completion (`cost::read_chat`), if it is one. Also says
    /// whether the body is a stream that did not ask for its usage.
    pub(crate) fn reserve_for(
        self: &Arc<Self>,
        body: &[u8],
        chat: Option<&PromptCost>,
    ) -> Result<(Reservation, bool), GatewayError> {
        match chat {
            Some(estimate) => {
                let reservation = self.reserve(estimate.prompt_tokens(), estimate.max_tokens.map(u64::from))?;
                Ok((reservation, estimate.stream && !estimate.include_usage))
            }
            None => Ok((self.reserve((body.len() as u64).div_ceil(4), Some(0))?, false)),
        }
    }

    /// OpenAI's token headers for an answer: the first budget's limit, what remains of it, and when it
    /// is full again.
    pub(crate) fn headers(&self, headers: &mut HeaderMap) {
        let Some(bucket) = self.minute.as_ref().or(self.day.as_ref()) else { return };
        let now = self.now_ms();
        headers.insert(LIMIT_TOKENS, HeaderValue::from(bucket.limit()));
        headers.insert(REMAINING_TOKENS, HeaderValue::from(bucket.remaining(now)));
        if let Ok(reset) = HeaderValue::try_from(reset_text(bucket.full_in_ms(now))) {
            headers.insert(RESET_TOKENS, reset);
        }
    }
}

// OpenAI's token headers; constants, so that no request parses their names.
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// A duration as OpenAI's `x-ratelimit-reset-*` headers write it: `20ms`, `7s`, `6m0s`.
pub(crate) fn reset_text(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{}s", ms.div_ceil(1000)),
        _ => format!("{}m{}s", ms / 60_000, (ms % 60_000).div_ceil(1000)),
    }
}

/// Tokens taken from a key's budgets for one request, until it settles. Dropped unsettled (the
/// request got no answer from the model), all of it comes back.
pub(crate) struct Reservation {
    budgets: Arc<KeyBudgets>,
    reserved: u64,
    prompt_estimate: u64,
    settled: bool,
}

impl Reservation {
    fn settle(&mut self, used: u64) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let now = self.budgets.now_ms();
        for bucket in self.budgets.buckets() {
            bucket.settle(self.reserved, used, now);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.settle(0);
    }
}

/// A response body that settles its request's reservation when it ends or is dropped (see the
/// module doc).
pub(crate) struct Metered<B> {
    inner: B,
    reservation: Option<Reservation>,
    prompt: Option<u64>,
    completion: Option<u64>,
    /// Content deltas of an event stream received so far: the tokens a client that left received.
    received: u64,
    /// The usage chunk is the gateway's, not the client's: it is taken out of the stream.
    strip_usage: bool,
    /// The end of the previous frame, so a `usage` field split across two frames is still read.
    tail: Vec<u8>,
}

/// How many bytes of a frame are kept to read a field split across frames.
const TAIL: usize = 48;

impl<B> Metered<B> {
    /// `inner`, settling `reservation` when it ends.
    pub(crate) fn new(inner: B, reservation: Reservation) -> Metered<B> {
        Metered {
            inner,
            reservation: Some(reservation),
            prompt: None,
            completion: None,
            received: 0,
            strip_usage: false,
            tail: Vec::new(),
        }
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

    fn observe(&mut self, data: &[u8]) {
        self.received += count(data, &CONTENT) - count(data, &EMPTY_CONTENT);
        if TOKENS.find(data).is_some() {
            self.prompt = cost::usage_field(data, &PROMPT_TOKENS).or(self.prompt);
            self.completion = cost::usage_field(data, &COMPLETION_TOKENS).or(self.completion);
        }
        if !self.tail.is_empty() {
            // A field split across this frame and the last one.
            let mut joined = [0u8; 2 * TAIL];
            let head = &data[..data.len().min(TAIL)];
            joined[..self.tail.len()].copy_from_slice(&self.tail);
            joined[self.tail.len()..self.tail.len() + head.len()].copy_from_slice(head);
            let joined = &joined[..self.tail.len() + head.len()];
            self.prompt = self.prompt.or_else(|| cost::usage_field(joined, &PROMPT_TOKENS));
            self.completion = self.completion.or_else(|| cost::usage_field(joined, &COMPLETION_TOKENS));
        }
        self.tail.clear();
        self.tail.extend_from_slice(&data[data.len().saturating_sub(TAIL)..]);
    }

    /// Tokens used: the backend's `usage` when it reported one, else the estimate of the prompt and
    /// the output the client received.
    fn used(&self, reservation: &Reservation) -> u64 {
        let prompt = self.prompt.unwrap_or(reservation.prompt_estimate);
        prompt + self.completion.unwrap_or(self.received)
    }
}

/// A chat request's body asking for its stream's usage (`stream_options.include_usage`), when it
/// streams without asking; `None` when it needs no change (not a stream, asked already, not JSON).
pub(crate) fn asking_for_usage(body: &[u8]) -> Option<Bytes> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object_mut()?;
    if object.get("stream").and_then(serde_json::Value::as_bool) != Some(true) {
        return None;
    }
    let options = object.entry("stream_options").or_insert_with(|| serde_json::json!({}));
    let options = options.as_object_mut()?;
    if options.get("include_usage").and_then(serde_json::Value::as_bool) == Some(true) {
        return None;
    }
    options.insert("include_usage".into(), serde_json::Value::Bool(true));
    serde_json::to_vec(&value).ok().map(Bytes::from)
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
static CONTENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"content\":\""));
static EMPTY_CONTENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"content\":\"\""));
static TOKENS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"_tokens\""));
static NO_CHOICES: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"choices\":[]"));

fn count(haystack: &[u8], needle: &Finder) -> u64 {
    needle.find_iter(haystack).count() as u64
}

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
            this.observe(&data);
            let data = if this.strip_usage { without_usage_events(data) } else { data };
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
            let used = self.used(&reservation);
            reservation.settle(used);
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
        budgets.minute.as_ref().unwrap().remaining(budgets.now_ms())
    }

    #[tokio::test(start_paused = true)]
    async fn a_reservation_settles_on_the_backends_usage_or_on_what_was_received() {
        let budgets = Arc::new(KeyBudgets::new(Some(10_000), None).unwrap());
        // Reserved 20 + 100; the usage, split across two frames, says 12 + 30.
        let reservation = budgets.reserve(20, Some(100)).unwrap();
        assert_eq!(remaining(&budgets), 10_000 - 120);
        let metered =
            Metered::new(body(&["{\"usage\":{\"prompt_tokens\":12,\"compl", "etion_tokens\":30}}"]), reservation);
        metered.collect().await.unwrap();
        assert_eq!(remaining(&budgets), 10_000 - 42);
        // A stream the client leaves after two tokens: the prompt estimate and the two it got.
        let reservation = budgets.reserve(20, Some(100)).unwrap();
        let mut metered = Metered::new(
            body(&[
                "data: {\"choices\":[{\"delta\":{\"content\":\"The\"}}]}\n\n",
                "data: {\"choices\":[{\"delta\":{\"content\":\" image\"}}]}\n\n",
                "data: more",
            ]),
            reservation,
        );
        metered.frame().await.unwrap().unwrap();
        metered.frame().await.unwrap().unwrap();
        drop(metered);
        assert_eq!(remaining(&budgets), 10_000 - 42 - 22);
    }

    #[test]
    fn a_stream_is_asked_for_its_usage_and_the_chunk_taken_out() {
        let asked = asking_for_usage(br#"{"stream":true,"messages":[]}"#).unwrap();
        let asked: serde_json::Value = serde_json::from_slice(&asked).unwrap();
        assert_eq!(asked["stream_options"]["include_usage"], true);
        assert!(asking_for_usage(br#"{"stream":true,"stream_options":{"include_usage":true}}"#).is_none());
        assert!(asking_for_usage(br#"{"stream":false}"#).is_none());
        let end = "data: {\"choices\":[{\"finish_reason\":\"length\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        let kept = without_usage_events(Bytes::from(end));
        assert_eq!(&kept[..], b"data: {\"choices\":[{\"finish_reason\":\"length\"}]}\n\ndata: [DONE]\n\n");
        let plain = Bytes::from_static(b"data: {\"choices\":[{\"delta\":{}}]}\n\n");
        assert_eq!(without_usage_events(plain.clone()), plain);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reservation_that_does_not_fit_says_when_it_will() {
        let budgets = Arc::new(KeyBudgets::new(Some(600), Some(100_000)).unwrap());
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
        assert_eq!(reset_text(20), "20ms");
        assert_eq!(reset_text(360_000), "6m0s");
    }
}
