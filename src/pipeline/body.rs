//! The one response body type the gateway serves: empty, a fixed buffer, a backend's stream, or a
//! wrapper. An enum of small variants rather than a boxed trait object: fixed answers allocate nothing
//! for their body, and the response hyper and the pipeline move around stays small.

use super::keepalive::WaitingBody;
use crate::accounting::{Metering, TrackedBody, UpstreamInfo};
use crate::compress::CompressedBody;
use crate::error::BoxError;
use crate::keys::meter::{MeterReading, Metered};
use crate::proxy::UpstreamBody;
use crate::static_files::FileBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A response body.
#[derive(Default)]
pub(crate) enum ResponseBody {
    /// No bytes (redirects, 101, HEAD).
    #[default]
    Empty,
    /// A body known in full (error pages, `return`).
    Full { data: Option<Bytes> },
    /// A backend's response, forwarded frame by frame. Boxed like the others: inline it made every
    /// response 500 bytes, copied at each step of the pipeline.
    Upstream { inner: Box<UpstreamBody> },
    /// A body whose end is accounted (access log) or releases concurrency places (`limit_conn`).
    Tracked { inner: Box<TrackedBody<ResponseBody>> },
    /// A body compressed as it streams.
    Compressed { inner: Box<CompressedBody<ResponseBody>> },
    /// A static file, read as the client takes it.
    File { inner: Box<FileBody> },
    /// A body whose tokens are read for its API key's usage and budgets.
    Metered { inner: Box<Metered<ResponseBody>> },
    /// A streamed answer whose head went out before the model's (`sse_keepalive`).
    Waiting { inner: Box<WaitingBody> },
}

impl ResponseBody {
    /// A body whose end is accounted.
    pub(crate) fn tracked(body: Box<TrackedBody<ResponseBody>>) -> Self {
        ResponseBody::Tracked { inner: body }
    }

    /// A body metered for its API key's usage and budgets.
    pub(crate) fn metered(body: Metered<ResponseBody>) -> Self {
        ResponseBody::Metered { inner: Box::new(body) }
    }

    /// A static file's body, or none.
    pub(crate) fn file(body: Option<FileBody>) -> Self {
        body.map_or(ResponseBody::Empty, |inner| ResponseBody::File { inner: Box::new(inner) })
    }

    /// A body compressed as it streams.
    pub(crate) fn compressed(body: CompressedBody<ResponseBody>) -> Self {
        ResponseBody::Compressed { inner: Box::new(body) }
    }

    /// A body of known bytes.
    pub(crate) fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        if data.is_empty() {
            ResponseBody::Empty
        } else {
            ResponseBody::Full { data: Some(data) }
        }
    }
}

impl Metering for ResponseBody {
    /// A metered body's reading, through compression (accounting wraps the rest).
    fn take_reading(&mut self) -> Option<MeterReading> {
        match self {
            ResponseBody::Metered { inner } => inner.take_reading(),
            ResponseBody::Compressed { inner } => inner.source_mut().take_reading(),
            _ => None,
        }
    }

    fn meters_usage(&self) -> bool {
        match self {
            ResponseBody::Metered { .. } => true,
            ResponseBody::Compressed { inner } => inner.source().meters_usage(),
            _ => false,
        }
    }

    /// The backend exchange this body comes from, through any wrapper (compression, accounting, a
    /// keep-alive stream once the model answered).
    fn upstream_info(&self) -> Option<UpstreamInfo> {
        match self {
            ResponseBody::Upstream { inner } => inner.info(),
            ResponseBody::Compressed { inner } => inner.source().upstream_info(),
            ResponseBody::Tracked { inner } => inner.source().upstream_info(),
            ResponseBody::Metered { inner } => inner.source().upstream_info(),
            ResponseBody::Waiting { inner } => inner.streaming().and_then(ResponseBody::upstream_info),
            ResponseBody::Empty | ResponseBody::Full { .. } | ResponseBody::File { .. } => None,
        }
    }
}

impl From<Bytes> for ResponseBody {
    fn from(data: Bytes) -> Self {
        ResponseBody::full(data)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Empty => Poll::Ready(None),
            ResponseBody::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseBody::Upstream { inner } => Pin::new(&mut **inner).poll_frame(cx),
            ResponseBody::Tracked { inner } => Pin::new(&mut **inner).poll_frame(cx),
            ResponseBody::Compressed { inner } => Pin::new(&mut **inner).poll_frame(cx),
            ResponseBody::File { inner } => Pin::new(&mut **inner).poll_frame(cx),
            ResponseBody::Metered { inner } => Pin::new(&mut **inner).poll_frame(cx),
            ResponseBody::Waiting { inner } => Pin::new(&mut **inner).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Empty => true,
            ResponseBody::Full { data } => data.is_none(),
            ResponseBody::Upstream { inner } => inner.is_end_stream(),
            ResponseBody::Tracked { inner } => inner.is_end_stream(),
            ResponseBody::Compressed { inner } => inner.is_end_stream(),
            ResponseBody::File { inner } => inner.is_end_stream(),
            ResponseBody::Metered { inner } => inner.is_end_stream(),
            ResponseBody::Waiting { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Empty => SizeHint::with_exact(0),
            ResponseBody::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            ResponseBody::Upstream { inner } => inner.size_hint(),
            ResponseBody::Tracked { inner } => inner.size_hint(),
            ResponseBody::Compressed { .. } => SizeHint::default(),
            ResponseBody::File { inner } => inner.size_hint(),
            ResponseBody::Metered { inner } => inner.size_hint(),
            ResponseBody::Waiting { .. } => SizeHint::default(),
        }
    }
}
