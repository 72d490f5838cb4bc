//! OpenAI's chat completion shapes, as vLLM and SGLang serve them: reading a request (text and
//! `image_url` parts) and writing responses and SSE chunks.

use super::engine::LatencyModel;
use crate::cost;
use serde_json::{json, Value};

/// What the latency model needs from a chat request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChatRequest {
    /// The `model` field, echoed back.
    pub(crate) model: String,
    /// `stream: true`.
    pub(crate) stream: bool,
    /// `stream_options.include_usage: true`.
    pub(crate) include_usage: bool,
    /// Output tokens to produce.
    pub(crate) max_tokens: u32,
    /// Whether `max_tokens` came from the request (then the answer ends with `length`).
    pub(crate) limited: bool,
    /// Prompt text tokens (about four characters each).
    pub(crate) text_tokens: u32,
    /// Image tokens over all images.
    pub(crate) image_tokens: u32,
}

/// Reads an OpenAI chat completion body, images counted as GLM-4V counts them; errors say what is
/// wrong for a 400.
pub(crate) fn parse_chat(body: &[u8], model: &LatencyModel, default_model: &str) -> Result<ChatRequest, String> {
    let reading = cost::read_chat(body, &cost::ImageCosts::default())?;
    let cost = reading.cost;
    Ok(ChatRequest {
        model: reading.model.unwrap_or_else(|| default_model.to_string()),
        stream: cost.stream,
        include_usage: cost.include_usage,
        max_tokens: cost.max_tokens.unwrap_or(model.default_max_tokens).max(1),
        limited: cost.max_tokens.is_some(),
        text_tokens: cost.text_tokens,
        image_tokens: cost.image_tokens,
    })
}

/// The words the simulated model says, one per token.
const WORDS: [&str; 16] = [
    "The",
    "image",
    "shows",
    "a",
    "simulated",
    "answer",
    "from",
    "infergate",
    "sim,",
    "one",
    "token",
    "at",
    "a",
    "time,",
    "as",
    "asked.",
];

/// The text of output token `index`.
pub(crate) fn token(index: u32) -> String {
    let word = WORDS[index as usize % WORDS.len()];
    if index == 0 {
        word.to_string()
    } else {
        format!(" {word}")
    }
}

/// The `finish_reason` of a complete answer.
pub(crate) fn finish_reason(request: &ChatRequest) -> &'static str {
    if request.limited {
        "length"
    } else {
        "stop"
    }
}

fn usage(request: &ChatRequest, completion_tokens: u32) -> Value {
    let prompt = request.text_tokens + request.image_tokens;
    json!({"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens})
}

/// A non-streamed answer.
pub(crate) fn completion(id: &str, created: u64, request: &ChatRequest) -> Value {
    let content: String = (0..request.max_tokens).map(token).collect();
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": request.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": null, "finish_reason": finish_reason(request)}],
        "usage": usage(request, request.max_tokens),
    })
}

/// One SSE chunk: `delta` with optional `finish_reason`; with `include_usage`, `usage: null` as OpenAI sends.
pub(crate) fn chunk(id: &str, created: u64, request: &ChatRequest, delta: Value, finish: Option<&str>) -> String {
    let mut value = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": request.model,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    });
    if request.include_usage {
        value["usage"] = Value::Null;
    }
    format!("data: {value}\n\n")
}

/// The final usage chunk (`choices: []`), sent when `stream_options.include_usage` is set.
pub(crate) fn usage_chunk(id: &str, created: u64, request: &ChatRequest, completion_tokens: u32) -> String {
    let value = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": request.model,
        "choices": [],
        "usage": usage(request, completion_tokens),
    });
    format!("data: {value}\n\n")
}

/// An OpenAI-shaped error body.
pub(crate) fn error(message: &str, kind: &str, code: u16) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn png(width: u32, height: u32) -> String {
        // A PNG signature and IHDR chunk are all imagesize reads.
        let mut bytes = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, b'I', b'H', b'D', b'R'];
        bytes.extend_from_slice(&width.to_be_bytes());
        bytes.extend_from_slice(&height.to_be_bytes());
        bytes.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
        format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    #[test]
    fn reads_text_and_image_parts() {
        let body = json!({
            "model": "glm-4v-flash",
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": 5,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": png(1024, 1024)}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
            ]}]
        });
        let request = parse_chat(body.to_string().as_bytes(), &LatencyModel::default(), "m").unwrap();
        assert_eq!(request.image_tokens, 1296 + 256);
        assert_eq!(request.text_tokens, 6);
        assert!(request.stream && request.include_usage && request.limited);
        assert_eq!(request.max_tokens, 5);
    }

    #[test]
    fn rejects_what_is_not_a_chat_request() {
        let model = LatencyModel::default();
        assert!(parse_chat(b"{not json", &model, "m").unwrap_err().contains("invalid JSON"));
        assert!(parse_chat(b"{\"prompt\": \"hi\"}", &model, "m").unwrap_err().contains("messages"));
        let bad_image = json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]});
        assert!(parse_chat(bad_image.to_string().as_bytes(), &model, "m").unwrap_err().contains("unreadable image"));
    }
}
