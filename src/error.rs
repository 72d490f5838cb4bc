//! Errors the gateway answers itself, and how they look to the client: OpenAI's JSON error shape for
//! API locations, one line of text elsewhere.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde::Deserialize;
use std::time::Duration;

/// Errors a response body can end with; hyper then aborts the response so the client sees it
/// incomplete, never a clean end.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The machine-readable code of an error the gateway answered itself, as a response extension.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorCode(pub &'static str);

/// Error bodies: OpenAI's JSON shape for API clients or one line of plain text.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ErrorFormat {
    /// `{"error": {"message", "type", "code"}}`
    Json,
    /// `STATUS REASON: message`
    Text,
}

/// Why a request was not admitted; both are answered 503 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// The queue already holds `queue.max` requests.
    QueueFull {
        /// Seconds until a slot is likely free, from the recent drain rate.
        retry_after: u64,
    },
    /// The request waited `queue.timeout` without getting a slot.
    QueueTimeout {
        /// Seconds until a slot is likely free, from the recent drain rate.
        retry_after: u64,
    },
}

/// Why a response that had begun was cut off.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamTimedOut {
    /// Nothing arrived for the idle timeout.
    #[error("upstream sent nothing for {0:?}")]
    Idle(Duration),
    /// The whole response took longer than the total timeout.
    #[error("upstream response exceeded the total timeout of {0:?}")]
    Total(Duration),
    /// The server was drained or removed, and the stream outlived the grace given to it.
    #[error("the model server was taken out of service; retry")]
    Drained,
}

impl StreamTimedOut {
    /// The final SSE event telling a streaming client why its stream ends.
    pub(crate) fn sse_event(&self) -> Bytes {
        let code = match self {
            StreamTimedOut::Idle(_) => "upstream_idle_timeout",
            StreamTimedOut::Total(_) => "upstream_total_timeout",
            StreamTimedOut::Drained => "upstream_drained",
        };
        let error = serde_json::json!({"error": {"message": self.to_string(), "type": "timeout_error", "code": code}});
        Bytes::from(format!("event: error\ndata: {error}\n\n"))
    }
}

/// Why a location refuses a request's image (`images`): the status (400, or 413 for an image too
/// large), OpenAI's `code` and `param` (the image's place in `messages`), and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageRefusal {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) param: String,
    pub(crate) message: String,
}

/// Why an authenticated location refuses a request: 401 for a key missing or unknown, 403 for a
/// key that may not do this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyRefusal {
    /// No `Authorization: Bearer` or `X-API-Key`.
    Missing,
    /// A key no `[[api_key]]` has.
    Unknown,
    /// The key is `disabled`.
    Disabled,
    /// The key's `expires` has passed.
    Expired,
    /// The key's `models` do not include the one the request names.
    ModelNotAllowed,
}

impl KeyRefusal {
    fn message(self) -> &'static str {
        match self {
            KeyRefusal::Missing => "no API key given (send `Authorization: Bearer KEY` or `X-API-Key: KEY`)",
            KeyRefusal::Unknown => "incorrect API key provided",
            KeyRefusal::Disabled => "this API key is disabled",
            KeyRefusal::Expired => "this API key has expired",
            KeyRefusal::ModelNotAllowed => "this API key may not use the model the request names",
        }
    }
}

/// Something the gateway answers instead of (or because of) the backend.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayError {
    /// No location matches the path.
    #[error("no route for this path")]
    NoRoute,
    /// No such static file.
    #[error("file not found")]
    NotFound,
    /// A static file or folder that may not be served (unreadable, a folder without index, or a
    /// symlink leaving the root).
    #[error("forbidden")]
    Forbidden,
    /// A method the handler does not serve (static files: only GET and HEAD).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The backend refused the connection or could not be reached.
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    /// Connecting to the backend took longer than the connect timeout.
    #[error("upstream connect timed out: {0}")]
    ConnectTimeout(String),
    /// Writing the request to the backend stalled longer than the send timeout.
    #[error("upstream timed out while sending the request")]
    SendTimeout,
    /// The backend sent no response head within the read (or first byte) timeout.
    #[error("upstream timed out before sending a response")]
    ReadTimeout,
    /// The exchange took longer than the upstream's total timeout before the response head.
    #[error("upstream exceeded the total timeout of {0:?}")]
    TotalTimeout(std::time::Duration),
    /// The backend broke the protocol or closed the connection before answering.
    #[error("upstream failed: {0}")]
    BadGateway(String),
    /// The request target is longer than `[http] max_uri_size`.
    #[error("request URI too long")]
    UriTooLong,
    /// The client's request could not be forwarded as sent.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Every server of the upstream is at `max_inflight` and the queue is full or the wait timed out.
    #[error("{}", match .0 { Rejection::QueueFull { .. } => "the model is at capacity and its queue is full; retry later", Rejection::QueueTimeout { .. } => "the model stayed at capacity for the whole queue timeout; retry later" })]
    Overloaded(Rejection),
    /// The request body is larger than the location reads.
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    /// The client sent nothing of its request body for `client_body_timeout`.
    #[error("the client sent no request body for {0:?}")]
    BodyTimeout(std::time::Duration),
    /// The body names a model no upstream serves.
    #[error("model `{model}` is not served here (known: {known})")]
    UnknownModel {
        /// The name the request gave.
        model: String,
        /// The names configured, comma-separated.
        known: String,
    },
    /// Every server of the upstream is marked down (passive health).
    #[error("no healthy server for this request; retry later")]
    NoHealthyServer,
    /// A `limit_req` zone refused the request.
    #[error("rate limit exceeded; retry after {retry_after_secs} s")]
    RateLimited {
        /// The zone's rejection status (429 unless configured).
        status: StatusCode,
        /// Seconds until the request would fit the limit.
        retry_after_secs: u64,
    },
    /// A shared zone with `fallback = "refuse"` could not reach its Redis.
    #[error("the shared rate limits cannot be checked now; retry after {retry_after_secs} s")]
    LimitsUnavailable {
        /// Seconds until Redis is tried again.
        retry_after_secs: u64,
    },
    /// The request's key has not enough tokens left in a budget for this request's estimate.
    #[error("the API key's token budget is spent for now; retry after {retry_after_secs} s")]
    TokensExceeded {
        /// Seconds until the estimate fits.
        retry_after_secs: u64,
    },
    /// The request's estimate alone is larger than a budget of its key.
    #[error("the request's estimated {tokens} tokens are more than the API key's whole budget")]
    RequestTooLargeForBudget {
        /// The estimate: prompt and the output it may ask for.
        tokens: u64,
    },
    /// An authenticated location refused the request's key.
    #[error("{}", .0.message())]
    KeyRefused(KeyRefusal),
    /// A location's image limits refused an image of the request.
    #[error("{}: {}", .0.param, .0.message)]
    ImageRefused(ImageRefusal),
    /// A bug: a request handler panicked. Logged; the process lives on.
    #[error("internal error")]
    Internal,
}

impl GatewayError {
    /// The HTTP status this error is answered with.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute | GatewayError::NotFound | GatewayError::UnknownModel { .. } => StatusCode::NOT_FOUND,
            GatewayError::Forbidden => StatusCode::FORBIDDEN,
            GatewayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::UpstreamUnreachable(_) | GatewayError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            GatewayError::ConnectTimeout(_)
            | GatewayError::SendTimeout
            | GatewayError::ReadTimeout
            | GatewayError::TotalTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::UriTooLong => StatusCode::URI_TOO_LONG,
            GatewayError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::Overloaded(_) | GatewayError::NoHealthyServer | GatewayError::LimitsUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::RateLimited { status, .. } => *status,
            GatewayError::TokensExceeded { .. } | GatewayError::RequestTooLargeForBudget { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GatewayError::KeyRefused(KeyRefusal::Missing | KeyRefusal::Unknown) => StatusCode::UNAUTHORIZED,
            GatewayError::KeyRefused(_) => StatusCode::FORBIDDEN,
            GatewayError::ImageRefused(refusal) => refusal.status,
        }
    }

    /// OpenAI's `type` and a stable machine-readable `code`.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            GatewayError::NoRoute | GatewayError::NotFound => ("invalid_request_error", "not_found"),
            GatewayError::Forbidden => ("invalid_request_error", "forbidden"),
            GatewayError::MethodNotAllowed => ("invalid_request_error", "method_not_allowed"),
            GatewayError::UnknownModel { .. } => ("invalid_request_error", "model_not_found"),
            GatewayError::BodyTooLarge(_) => ("invalid_request_error", "body_too_large"),
            GatewayError::BodyTimeout(_) => ("invalid_request_error", "request_timeout"),
            GatewayError::UpstreamUnreachable(_) => ("upstream_error", "upstream_unreachable"),
            GatewayError::BadGateway(_) => ("upstream_error", "bad_gateway"),
            GatewayError::ConnectTimeout(_) => ("timeout_error", "upstream_connect_timeout"),
            GatewayError::SendTimeout => ("timeout_error", "upstream_send_timeout"),
            GatewayError::ReadTimeout => ("timeout_error", "upstream_read_timeout"),
            GatewayError::TotalTimeout(_) => ("timeout_error", "upstream_total_timeout"),
            GatewayError::BadRequest(_) => ("invalid_request_error", "bad_request"),
            GatewayError::UriTooLong => ("invalid_request_error", "uri_too_long"),
            GatewayError::Internal => ("server_error", "internal_error"),
            GatewayError::Overloaded(Rejection::QueueFull { .. }) => ("server_error", "queue_full"),
            GatewayError::Overloaded(Rejection::QueueTimeout { .. }) => ("server_error", "queue_timeout"),
            GatewayError::RateLimited { .. } => ("rate_limit_error", "rate_limit_exceeded"),
            GatewayError::NoHealthyServer => ("server_error", "no_healthy_server"),
            GatewayError::LimitsUnavailable { .. } => ("server_error", "shared_limits_unavailable"),
            GatewayError::TokensExceeded { .. } | GatewayError::RequestTooLargeForBudget { .. } => {
                ("tokens", "rate_limit_exceeded")
            }
            GatewayError::KeyRefused(KeyRefusal::Missing | KeyRefusal::Unknown) => {
                ("invalid_request_error", "invalid_api_key")
            }
            GatewayError::KeyRefused(KeyRefusal::Disabled) => ("permission_error", "api_key_disabled"),
            GatewayError::KeyRefused(KeyRefusal::Expired) => ("permission_error", "api_key_expired"),
            GatewayError::KeyRefused(KeyRefusal::ModelNotAllowed) => ("permission_error", "model_not_allowed"),
            GatewayError::ImageRefused(refusal) => ("invalid_request_error", refusal.code),
        }
    }

    /// The response for this error in the location's format.
    pub(crate) fn to_response(&self, format: ErrorFormat) -> Response<Bytes> {
        let (kind, code) = self.kind();
        let param = match self {
            GatewayError::ImageRefused(refusal) => Some(refusal.param.as_str()),
            _ => None,
        };
        let mut response = error_response(self.status(), kind, code, param, &self.to_string(), format);
        response.extensions_mut().insert(ErrorCode(code));
        let retry_after = match self {
            GatewayError::Overloaded(
                Rejection::QueueFull { retry_after } | Rejection::QueueTimeout { retry_after },
            ) => Some(*retry_after),
            GatewayError::RateLimited { retry_after_secs, .. }
            | GatewayError::LimitsUnavailable { retry_after_secs }
            | GatewayError::TokensExceeded { retry_after_secs } => Some(*retry_after_secs),
            GatewayError::NoHealthyServer => Some(1),
            _ => None,
        };
        if let GatewayError::KeyRefused(KeyRefusal::Missing | KeyRefusal::Unknown) = self {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let GatewayError::MethodNotAllowed = self {
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Builds an error response; also used for errors that have no `GatewayError` (e.g. hyper's own).
/// `param` is OpenAI's: the request field at fault, when there is one.
pub(crate) fn error_response(
    status: StatusCode,
    kind: &str,
    code: &str,
    param: Option<&str>,
    message: &str,
    format: ErrorFormat,
) -> Response<Bytes> {
    let (content_type, body) = match format {
        ErrorFormat::Json => {
            let body = serde_json::json!({"error": {"message": message, "type": kind, "code": code, "param": param}});
            ("application/json", body.to_string())
        }
        ErrorFormat::Text => {
            let reason = status.canonical_reason().unwrap_or("");
            ("text/plain; charset=utf-8", format!("{} {reason}: {message}\n", status.as_u16()))
        }
    };
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_have_openai_shape() {
        let response = GatewayError::ReadTimeout.to_response(ErrorFormat::Json);
        let body = response.into_body();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["error"]["code"], "upstream_read_timeout");
        assert_eq!(value["error"]["type"], "timeout_error");
    }

    #[test]
    fn statuses_follow_the_mapping() {
        assert_eq!(GatewayError::UpstreamUnreachable("x".into()).status(), 502);
        assert_eq!(GatewayError::ConnectTimeout("x".into()).status(), 504);
        assert_eq!(GatewayError::ReadTimeout.status(), 504);
    }
}
