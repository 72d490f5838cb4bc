//! Fetching a chat request's remote images (`images.remote = "fetch"`), so that the backend never
//! reaches out on a client's word: the gateway resolves the URL's host, refuses loopback, private,
//! link-local and other non-public addresses (unless `fetch_private`), connects to the address it
//! checked (a second lookup could answer otherwise), fetches over HTTP/1.1 (TLS with Mozilla's roots
//! for `https://`) within a time and size cap, follows no redirect, and puts the image inline.

use crate::error::{BoxError, GatewayError};
use crate::images::Image;
use base64::Engine as _;
use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// How remote images are fetched.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FetchPolicy {
    /// The longest one fetch may take.
    pub(crate) timeout: Duration,
    /// The most bytes an image may have.
    pub(crate) max_bytes: u64,
    /// Whether loopback, private and link-local addresses may be reached.
    pub(crate) private: bool,
}

/// Whether `ip` is an address of the public internet: not loopback, private, link-local, shared
/// (carrier NAT), documentation, benchmarking, multicast, broadcast or unspecified. An IPv4 address
/// inside IPv6 (mapped or compatible) is judged as IPv4.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped().or_else(|| v6.to_ipv4()) {
            Some(v4) if !v6.is_loopback() && !v6.is_unspecified() => is_public(IpAddr::V4(v4)),
            _ => {
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || v6.is_unique_local()
                    || v6.is_unicast_link_local()
                    || v6.segments()[0] == 0x2001 && v6.segments()[1] == 0x0db8)
            }
        },
    }
}

/// The chat body `body` with its remote images (`images`: their places, as `cost::read_chat` found
/// them) fetched and put inline as `data:` URLs; `None` when it has none.
pub(crate) async fn inline_remote(
    body: &[u8],
    images: &[((usize, usize), Image)],
    policy: &FetchPolicy,
) -> Result<Option<Bytes>, GatewayError> {
    if !images.iter().any(|(_, image)| *image == Image::Remote) {
        return Ok(None);
    }
    let refused = |(i, j): (usize, usize), status, code, message: String| {
        GatewayError::ImageRefused(crate::error::ImageRefusal {
            status,
            code,
            param: format!("messages[{i}].content[{j}]"),
            message,
        })
    };
    let mut chat: Value =
        serde_json::from_slice(body).map_err(|e| GatewayError::BadRequest(format!("invalid JSON body: {e}")))?;
    for (at, _) in images.iter().filter(|(_, image)| *image == Image::Remote) {
        let part = &mut chat["messages"][at.0]["content"][at.1]["image_url"];
        let url = if part.is_string() { part } else { &mut part["url"] };
        let Some(text) = url.as_str() else { continue };
        let fetched = tokio::time::timeout(policy.timeout, fetch(text, policy)).await.unwrap_or_else(|_| {
            Err(Failure::Failed(format!("the image took longer than {:?} to fetch", policy.timeout)))
        });
        let bytes = fetched.map_err(|failure| match failure {
            Failure::Refused(message) => refused(*at, StatusCode::BAD_REQUEST, "image_url_not_allowed", message),
            Failure::TooLarge => refused(
                *at,
                StatusCode::PAYLOAD_TOO_LARGE,
                "image_too_large",
                format!("the image is larger than {} bytes", policy.max_bytes),
            ),
            Failure::Failed(message) => refused(*at, StatusCode::BAD_REQUEST, "image_fetch_failed", message),
        })?;
        let mime = imagesize::image_type(&bytes).map_or("application/octet-stream", |kind| match kind {
            imagesize::ImageType::Png => "image/png",
            imagesize::ImageType::Jpeg => "image/jpeg",
            imagesize::ImageType::Webp => "image/webp",
            imagesize::ImageType::Gif => "image/gif",
            _ => "application/octet-stream",
        });
        *url =
            Value::String(format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(&bytes)));
    }
    serde_json::to_vec(&chat).map(|body| Some(Bytes::from(body))).map_err(|e| GatewayError::BadRequest(e.to_string()))
}

/// Why a fetch gave no image.
enum Failure {
    /// The URL may not be fetched (its scheme, its address).
    Refused(String),
    /// The image is larger than allowed.
    TooLarge,
    /// The fetch failed (no answer, not a 200, a broken response).
    Failed(String),
}

/// Mozilla's roots, for `https://` images; built once.
static TLS: LazyLock<tokio_rustls::TlsConnector> = LazyLock::new(|| {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
});

async fn fetch(url: &str, policy: &FetchPolicy) -> Result<Bytes, Failure> {
    let uri: Uri = url.parse().map_err(|_| Failure::Refused("the image URL is not a valid URL".into()))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(Failure::Refused("image URLs must be http or https".into())),
    };
    let host = uri.host().ok_or_else(|| Failure::Refused("the image URL names no host".into()))?.to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| Failure::Failed(format!("cannot resolve {host}: {e}")))?
        .collect();
    // Every address the name has must be public: the first one reached is then one of them.
    let addr = match addrs.iter().find(|addr| !policy.private && !is_public(addr.ip())) {
        Some(inside) => {
            return Err(Failure::Refused(format!(
                "the image URL's host {host} is not a public address ({})",
                inside.ip()
            )))
        }
        None => *addrs.first().ok_or_else(|| Failure::Failed(format!("{host} has no address")))?,
    };
    let stream =
        TcpStream::connect(addr).await.map_err(|e| Failure::Failed(format!("cannot connect to {host}: {e}")))?;
    let request = Request::get(uri.path_and_query().map_or("/", |pq| pq.as_str()))
        .header(http::header::HOST, uri.authority().map_or(host.as_str(), |a| a.as_str()))
        .header(http::header::USER_AGENT, "infergate")
        .body(Empty::<Bytes>::new())
        .map_err(|e| Failure::Refused(e.to_string()))?;
    if https {
        let name = rustls::pki_types::ServerName::try_from(bare.to_string())
            .map_err(|_| Failure::Refused(format!("{host} is no TLS server name")))?;
        let tls = TLS.connect(name, stream).await.map_err(|e| Failure::Failed(format!("TLS with {host}: {e}")))?;
        get(tls, request, policy.max_bytes).await
    } else {
        get(stream, request, policy.max_bytes).await
    }
}

/// One GET over `io`: the body of a 200, at most `max_bytes`.
async fn get<S>(io: S, request: Request<Empty<Bytes>>, max_bytes: u64) -> Result<Bytes, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let failed = |e: &dyn std::fmt::Display| Failure::Failed(format!("fetching the image failed: {e}"));
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| failed(&e))?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| failed(&e))?;
    if response.status() != StatusCode::OK {
        return Err(Failure::Failed(format!("the image URL answered {}", response.status().as_u16())));
    }
    let limit = usize::try_from(max_bytes).unwrap_or(usize::MAX);
    match Limited::new(response.into_body(), limit).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(Failure::TooLarge),
        Err(error) => Err(failed(&BoxError::from(error))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for (ip, public) in [
            ("93.184.216.34", true),
            ("2606:4700::6810:84e5", true),
            ("127.0.0.1", false),
            ("10.1.2.3", false),
            ("172.16.0.1", false),
            ("192.168.1.1", false),
            ("169.254.169.254", false),
            ("100.64.0.1", false),
            ("0.0.0.0", false),
            ("255.255.255.255", false),
            ("224.0.0.1", false),
            ("::1", false),
            ("::", false),
            ("fd00::1", false),
            ("fe80::1", false),
            ("::ffff:127.0.0.1", false),
            ("::ffff:10.0.0.1", false),
            ("::ffff:93.184.216.34", true),
            ("2001:db8::1", false),
        ] {
            assert_eq!(is_public(ip.parse().unwrap()), public, "{ip}");
        }
    }
}
