//! SSE keep-alive while a streamed request waits (`sse_keepalive`): when the model has not answered
//! a streamed chat request within the interval (it waits in an admission queue, or in a long
//! prefill), the client gets the response head (200, `text/event-stream`) at once and a
//! `: keep-alive` comment at every interval, so a load balancer in front does not cut an idle
//! connection before the first token. The model's stream follows as it comes; an error after the
//! head (the model answered an error status, or the gateway gave up) arrives as an SSE `error`
//! event with the OpenAI-shaped error, never as a silently ended stream.

use super::body::ResponseBody;
use crate::error::{BoxError, ErrorFormat, GatewayError};
use crate::proxy::Proxied;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// The forwarding of a request, owned, so that a response body may finish it.
pub(crate) type PendingAnswer = Pin<Box<dyn Future<Output = Result<Response<Proxied>, GatewayError>> + Send>>;

/// The response to a streamed request: the model's, when it answers within `interval`; else a
/// keep-alive stream that carries the model's events once they come.
pub(crate) async fn answer_streamed(
    mut forwarding: PendingAnswer,
    interval: Duration,
) -> Result<Response<ResponseBody>, GatewayError> {
    match tokio::time::timeout(interval, &mut forwarding).await {
        Ok(answered) => answered.map(super::proxied),
        Err(_) => {
            let body = WaitingBody {
                state: State::Waiting(forwarding),
                interval,
                tick: Box::pin(tokio::time::sleep(Duration::ZERO)),
            };
            let mut response = Response::new(ResponseBody::Waiting { inner: Box::new(body) });
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            Ok(response)
        }
    }
}

/// A keep-alive stream: comments while the model is awaited, then the model's body.
pub(crate) struct WaitingBody {
    state: State,
    interval: Duration,
    /// When the next comment is due.
    tick: Pin<Box<Sleep>>,
}

enum State {
    Waiting(PendingAnswer),
    Streaming(ResponseBody),
    Ended,
}

const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// An SSE `error` event carrying `error`'s OpenAI JSON.
fn error_event(error: &GatewayError) -> Bytes {
    let json = error.to_response(ErrorFormat::Json).into_body();
    let mut event = b"event: error\ndata: ".to_vec();
    event.extend_from_slice(&json);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

impl WaitingBody {
    /// The body being streamed, once the model answered.
    pub(crate) fn streaming(&self) -> Option<&ResponseBody> {
        match &self.state {
            State::Streaming(body) => Some(body),
            _ => None,
        }
    }
}

impl Body for WaitingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Ended => return Poll::Ready(None),
                State::Streaming(body) => return Pin::new(body).poll_frame(cx),
                State::Waiting(forwarding) => match forwarding.as_mut().poll(cx) {
                    Poll::Ready(Ok(response)) if response.status() == StatusCode::OK => {
                        this.state = State::Streaming(super::proxied(response).into_body());
                    }
                    Poll::Ready(answered) => {
                        this.state = State::Ended;
                        let error = match answered {
                            Ok(response) => GatewayError::BadGateway(format!(
                                "the model answered {} after the stream began",
                                response.status().as_u16()
                            )),
                            Err(error) => error,
                        };
                        return Poll::Ready(Some(Ok(Frame::data(error_event(&error)))));
                    }
                    Poll::Pending => {
                        std::task::ready!(this.tick.as_mut().poll(cx));
                        let next = tokio::time::Instant::now() + this.interval;
                        this.tick.as_mut().reset(next);
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(KEEP_ALIVE)))));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(&self.state, State::Ended) || self.streaming().is_some_and(Body::is_end_stream)
    }
}
