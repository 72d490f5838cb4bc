//! What a chat request will cost the model, estimated before it runs, in the model's own units:
//! prompt text at about four characters a token, each image by its pixel size as GLM-4V and Qwen-VL
//! count it (14-pixel patches merged 2x2: one token per 28x28 pixels, the size read from the image's
//! header, never a full decode), and the output tokens it asks for. One estimator for the gateway
//! (token budgets) and the simulated model (its prefill time), so the two agree.

use base64::Engine as _;
use serde_json::Value;

/// The estimate of one chat completion request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PromptCost {
    /// Prompt text tokens (about four characters each; at least one).
    pub(crate) text_tokens: u32,
    /// Image tokens over all images.
    pub(crate) image_tokens: u32,
    /// `max_completion_tokens`, else `max_tokens`, when the request sets one.
    pub(crate) max_tokens: Option<u32>,
    /// `stream: true`.
    pub(crate) stream: bool,
    /// `stream_options.include_usage: true`.
    pub(crate) include_usage: bool,
}

impl PromptCost {
    /// Prompt tokens, text and images.
    pub(crate) fn prompt_tokens(&self) -> u64 {
        u64::from(self.text_tokens) + u64::from(self.image_tokens)
    }
}

/// Images given by http(s) URL are counted as this size, never fetched.
const REMOTE_IMAGE_SIDE: usize = 448;

/// Reads an OpenAI chat completion body and estimates its prompt; errors say what is wrong, for a
/// 400. Returns the body's `model` too.
pub(crate) fn read_chat(body: &[u8]) -> Result<(Option<String>, PromptCost), String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let object = value.as_object().ok_or("the body must be a JSON object")?;
    let messages = object.get("messages").and_then(Value::as_array).ok_or("`messages` must be an array")?;
    if messages.is_empty() {
        return Err("`messages` must not be empty".into());
    }
    let (mut text_chars, mut images) = (0usize, 0u32);
    for (i, message) in messages.iter().enumerate() {
        message.get("role").and_then(Value::as_str).ok_or_else(|| format!("messages[{i}].role must be a string"))?;
        match message.get("content") {
            Some(Value::String(text)) => text_chars += text.chars().count(),
            Some(Value::Array(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            text_chars += part.get("text").and_then(Value::as_str).map_or(0, |t| t.chars().count())
                        }
                        Some("image_url") => {
                            let url = part
                                .get("image_url")
                                .and_then(|u| u.get("url").or(Some(u)))
                                .and_then(Value::as_str)
                                .ok_or_else(|| format!("messages[{i}].content[{j}].image_url.url must be a string"))?;
                            images = images.saturating_add(
                                image_url_tokens(url).map_err(|e| format!("messages[{i}].content[{j}]: {e}"))?,
                            );
                        }
                        _ => return Err(format!("messages[{i}].content[{j}].type must be \"text\" or \"image_url\"")),
                    }
                }
            }
            Some(Value::Null) | None => {}
            Some(_) => return Err(format!("messages[{i}].content must be a string or an array of parts")),
        }
    }
    let requested = object.get("max_completion_tokens").or_else(|| object.get("max_tokens")).and_then(Value::as_u64);
    let stream = object.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage =
        object.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
    let cost = PromptCost {
        text_tokens: u32::try_from(text_chars.div_ceil(4)).unwrap_or(u32::MAX).max(1),
        image_tokens: images,
        max_tokens: requested.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        stream,
        include_usage,
    };
    Ok((object.get("model").and_then(Value::as_str).map(str::to_string), cost))
}

/// Image tokens of a `data:` URL (size read from the decoded image header) or a remote URL.
fn image_url_tokens(url: &str) -> Result<u32, String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(image_tokens(REMOTE_IMAGE_SIDE, REMOTE_IMAGE_SIDE));
    }
    let data = url.strip_prefix("data:").ok_or("image_url must be a data: URL or an http(s) URL")?;
    let (_, encoded) = data.split_once(";base64,").ok_or("data: URL must be base64-encoded")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| format!("invalid base64 image: {e}"))?;
    let size = imagesize::blob_size(&bytes).map_err(|e| format!("unreadable image: {e}"))?;
    Ok(image_tokens(size.width, size.height))
}

/// `usage.completion_tokens` of an OpenAI answer, as `usage_field` looks for it.
pub(crate) const COMPLETION_TOKENS: &[u8] = b"\"completion_tokens\":";
/// `usage.prompt_tokens`.
pub(crate) const PROMPT_TOKENS: &[u8] = b"\"prompt_tokens\":";

/// The number after `key` (`COMPLETION_TOKENS` or `PROMPT_TOKENS`) in `data`, an SSE event or a JSON
/// body, if there is one.
pub(crate) fn usage_field(data: &[u8], key: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(data, key)? + key.len();
    let digits: Vec<u8> =
        data[at..].iter().skip_while(|b| b.is_ascii_whitespace()).take_while(|b| b.is_ascii_digit()).copied().collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// Image tokens for a `width` x `height` image: 14-pixel patches merged 2x2, so one token per 28x28.
pub(crate) fn image_tokens(width: usize, height: usize) -> u32 {
    u32::try_from((width / 28).max(1) * (height / 28).max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tokens_follow_the_28_pixel_grid() {
        assert_eq!(image_tokens(448, 448), 256);
        assert_eq!(image_tokens(1024, 1024), 1296);
        assert_eq!(image_tokens(10, 10), 1);
    }

    #[test]
    fn prompts_are_estimated_from_text_images_and_limits() {
        // A 448x448 PNG's header: 256 image tokens.
        let png = "iVBORw0KGgoAAAANSUhEUgAAAcAAAAHACAYAAAAAAAAA";
        let body = serde_json::json!({"model": "m", "max_tokens": 7, "stream": true, "messages": [
            {"role": "system", "content": "12345678"},
            {"role": "user", "content": [
                {"type": "text", "text": "abcd"},
                {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{png}")}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ]},
        ]});
        let (_, cost) = read_chat(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            cost,
            PromptCost { text_tokens: 3, image_tokens: 512, max_tokens: Some(7), stream: true, include_usage: false }
        );
        assert_eq!(cost.prompt_tokens(), 515);
        let (_, bare) = read_chat(br#"{"messages": [{"role": "user", "content": "hi"}]}"#).unwrap();
        assert_eq!((bare.text_tokens, bare.max_tokens), (1, None));
        assert!(read_chat(b"[]").unwrap_err().contains("JSON object"));
    }
}
