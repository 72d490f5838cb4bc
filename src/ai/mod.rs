//! Understanding OpenAI-compatible traffic: routing a request to the upstream serving the model its
//! JSON body names, answering `GET /v1/models` from the config, and telling inference requests
//! (`inference`) from the rest.

mod fetch;
pub(crate) mod images;
mod inference;
mod resize;

pub(crate) use inference::Inference;

use crate::client::ClientInfo;
use crate::client::{ClientBody, ClientRequest};
use crate::error::{GatewayError, KeyRefusal};
use crate::keys::ApiKey;
use crate::proxy::{self, BodyLimits, Proxied, RequestBody};
use crate::upstream::Claim;
use crate::upstream::Upstream;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, Response};
use http_body_util::BodyExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A location's `models` table, compiled: model name to upstream, and the `/v1/models` answer.
pub(crate) struct ModelRouter {
    routes: HashMap<String, Arc<Upstream>>,
    /// The known names, sorted, for the 404 message.
    known: String,
    /// `GET /v1/models`, built once at load.
    listing: Bytes,
    /// The body's limits while it is read to find the model (413 beyond the size, 408 when the client
    /// stalls).
    limits: BodyLimits,
}

/// Only the field the router needs; serde skips the rest of the body (images included) unparsed.
#[derive(serde::Deserialize)]
struct ModelField {
    model: Option<String>,
}

impl ModelRouter {
    /// Compiles `models = { NAME = "UPSTREAM" }` (upstreams already resolved).
    pub(crate) fn new(models: BTreeMap<String, Arc<Upstream>>, limits: BodyLimits) -> ModelRouter {
        let known = models.keys().cloned().collect::<Vec<_>>().join(", ");
        let data: Vec<_> =
            models.keys().map(|id| serde_json::json!({"id": id, "object": "model", "owned_by": "infergate"})).collect();
        let listing = Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string());
        ModelRouter { routes: models.into_iter().collect(), known, listing, limits }
    }

    /// The answer to `GET .../models`, OpenAI's list of the models served here; `None` for any other
    /// request, which `forward` routes.
    pub(crate) fn listing<B>(&self, request: &Request<B>) -> Option<Response<Bytes>> {
        if request.method() != Method::GET || !request.uri().path().ends_with("/models") {
            return None;
        }
        let mut response = Response::new(self.listing.clone());
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Some(response)
    }

    /// The upstreams it routes to.
    pub(crate) fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.routes.values()
    }

    /// Forwards a request of a model-routing location to the upstream of the model its body names.
    pub(crate) async fn forward(
        &self,
        request: ClientRequest,
        client: &ClientInfo,
        inference: Inference,
        claim: Claim,
    ) -> Result<Response<Proxied>, GatewayError> {
        let (head, body, model) = read_model(request, self.limits, None).await?;
        self.route(head, body, &model, client, inference, claim).await
    }

    /// Forwards a request whose body (naming `model`) was read already.
    pub(crate) async fn route(
        &self,
        head: ClientRequest,
        body: Bytes,
        model: &str,
        client: &ClientInfo,
        inference: Inference,
        claim: Claim,
    ) -> Result<Response<Proxied>, GatewayError> {
        let (upstream, inference) = self.upstream(model, head.method(), inference)?;
        proxy::forward_buffered(head, body, client, &upstream, inference, claim).await
    }

    /// The upstream serving `model` (404 for one not served here), and whether a request of `method`
    /// to it is an inference request: one naming a model is, unless the location says otherwise.
    pub(crate) fn upstream(
        &self,
        model: &str,
        method: &Method,
        inference: Inference,
    ) -> Result<(Arc<Upstream>, bool), GatewayError> {
        let upstream = self
            .routes
            .get(model)
            .ok_or_else(|| GatewayError::UnknownModel { model: model.to_string(), known: self.known.clone() })?;
        Ok((upstream.clone(), method == Method::POST && inference != Inference::Never))
    }
}

/// Reads a request's body in full (up to `limits`) and the `model` it names, refused with 403 when
/// `key` (the request's API key) may not use it. Answers 400 for a body that is not a JSON object
/// naming a model, 413 for one larger than the limit.
pub(crate) async fn read_model(
    head: ClientRequest,
    limits: BodyLimits,
    key: Option<&ApiKey>,
) -> Result<(ClientRequest, Bytes, String), GatewayError> {
    let (head, body) = read_body(head, limits).await?;
    let model = model_of(&body)?;
    check_model(key, &model)?;
    Ok((head, body, model))
}

/// Reads a request's body in full, up to `limits` (413 past it).
pub(crate) async fn read_body(
    mut head: ClientRequest,
    limits: BodyLimits,
) -> Result<(ClientRequest, Bytes), GatewayError> {
    if head.body().declared_length().is_some_and(|length| length > limits.max) {
        return Err(GatewayError::BodyTooLarge(limits.max));
    }
    let body = std::mem::replace(head.body_mut(), ClientBody::Empty);
    let mut body = RequestBody::new(body, limits);
    // Most bodies arrive in one frame, kept as it is; `collect` would first queue every frame (and
    // any trailers) in buffers of its own.
    let mut first = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(proxy::body_error)?.into_data() else { continue };
        match &mut joined {
            Some(joined) => joined.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => {
                let mut both = BytesMut::with_capacity(first.len() + data.len());
                both.extend_from_slice(&first);
                both.extend_from_slice(&data);
                joined = Some(both);
            }
        }
    }
    Ok((head, joined.map_or(first, BytesMut::freeze)))
}

/// The `model` a JSON body names (400 when it is not a JSON object naming one).
pub(crate) fn model_of(body: &[u8]) -> Result<String, GatewayError> {
    let field: ModelField = serde_json::from_slice(body)
        .map_err(|e| GatewayError::BadRequest(format!("the body is not a JSON object: {e}")))?;
    field.model.ok_or_else(|| GatewayError::BadRequest("the body names no `model`".into()))
}

/// Whether `key` may use `model` (403 otherwise).
pub(crate) fn check_model(key: Option<&ApiKey>, model: &str) -> Result<(), GatewayError> {
    match key {
        Some(key) if !key.allows_model(model) => Err(GatewayError::KeyRefused(KeyRefusal::ModelNotAllowed)),
        _ => Ok(()),
    }
}
