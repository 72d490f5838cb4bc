//! What a chat request will cost the model, estimated before it runs, in the model's own units:
//! prompt text at about four characters a token, each image by its pixel size as the model counts it
//! (`ImageCost`; by default as GLM-4V and Qwen-VL do, 14-pixel patches merged 2x2: one token per 28x28
//! pixels; the size read from the image's header, never a full decode), and the output tokens it asks
//! for. One estimator for the gateway (token budgets, usage) and the simulated model (its prefill
//! time), so the two agree.

use crate::glob;
use crate::images::{self, Image};
use memchr::memmem::Finder;
use serde::Deserialize;
use std::borrow::Cow;
use std::sync::LazyLock;

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

    /// What the request holds of a model while it runs, for `max_inflight_tokens`: its prompt tokens
    /// and the output it may ask for (`max_tokens`, when it sets one).
    pub(crate) fn held_tokens(&self) -> u64 {
        self.prompt_tokens() + u64::from(self.max_tokens.unwrap_or(0))
    }
}

/// Images given by http(s) URL are counted as this size, never fetched.
const REMOTE_IMAGE_SIDE: usize = 448;

/// How a model counts an image's tokens: one per `side` x `side` pixels (at least one along each
/// side), at most `max` (a model that scales larger images down), plus `extra` (its markers around
/// an image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImageCost {
    pub(crate) side: u32,
    pub(crate) max: Option<u32>,
    pub(crate) extra: u32,
}

impl Default for ImageCost {
    /// GLM-4V's and Qwen-VL's: 14-pixel patches merged 2x2, one token per 28x28 pixels.
    fn default() -> ImageCost {
        ImageCost { side: 28, max: None, extra: 0 }
    }
}

impl ImageCost {
    /// Tokens of a `width` x `height` image.
    pub(crate) fn tokens(&self, width: usize, height: usize) -> u32 {
        let side = self.side.max(1) as usize;
        let grid = u32::try_from((width / side).max(1) * (height / side).max(1)).unwrap_or(u32::MAX);
        self.max.map_or(grid, |max| grid.min(max)).saturating_add(self.extra)
    }
}

/// Image costs by model (`[[image_cost]]`): the first rule with a glob that matches, else the default.
#[derive(Debug, Default)]
pub(crate) struct ImageCosts {
    rules: Vec<(Vec<String>, ImageCost)>,
}

impl ImageCosts {
    /// Rules of model globs and their cost, in order.
    pub(crate) fn new(rules: Vec<(Vec<String>, ImageCost)>) -> ImageCosts {
        ImageCosts { rules }
    }

    /// How `model` counts images.
    pub(crate) fn of(&self, model: Option<&str>) -> ImageCost {
        let Some(model) = model else { return ImageCost::default() };
        self.rules
            .iter()
            .find(|(globs, _)| globs.iter().any(|pattern| glob::matches(pattern, model)))
            .map_or_else(ImageCost::default, |(_, cost)| *cost)
    }
}

/// A chat completion body, read: its model, its estimate, and its images with their places.
#[derive(Debug)]
pub(crate) struct ChatReading {
    /// The body's `model`.
    pub(crate) model: Option<String>,
    /// What it will cost.
    pub(crate) cost: PromptCost,
    /// Its images in order, each with its message's and its part's index.
    pub(crate) images: Vec<((usize, usize), Image)>,
}

/// Reads an OpenAI chat completion body and estimates its prompt, images counted as `costs` says for
/// its model; errors say what is wrong, for a 400. Read into borrowed, typed fields rather than a
/// JSON tree: the tree's allocations were most of what a budgeted request cost (callgrind). The body
/// is checked as UTF-8 once, whole: read from bytes, serde_json checks every string on its own, at
/// twice the cost.
pub(crate) fn read_chat(body: &[u8], costs: &ImageCosts) -> Result<ChatReading, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let chat: ChatBody = serde_json::from_str(text).map_err(|e| format!("invalid JSON body: {e}"))?;
    if chat.messages.is_empty() {
        return Err("`messages` must not be empty".into());
    }
    let image_cost = costs.of(chat.model.as_deref());
    let (mut text_chars, mut image_tokens, mut images) = (0usize, 0u32, Vec::new());
    for (i, message) in chat.messages.iter().enumerate() {
        match &message.content {
            Some(Content::Text(text)) => text_chars += text.chars().count(),
            Some(Content::Parts(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    match (part.kind.as_ref(), &part.image_url) {
                        ("text", _) => text_chars += part.text.as_ref().map_or(0, |t| t.chars().count()),
                        ("image_url", Some(image)) => {
                            let image =
                                images::read(image.url()).map_err(|e| format!("messages[{i}].content[{j}]: {e}"))?;
                            let tokens = match image {
                                Image::Inline(inline) => image_cost.tokens(inline.width, inline.height),
                                Image::Remote => image_cost.tokens(REMOTE_IMAGE_SIDE, REMOTE_IMAGE_SIDE),
                            };
                            image_tokens = image_tokens.saturating_add(tokens);
                            images.push(((i, j), image));
                        }
                        ("image_url", None) => {
                            return Err(format!("messages[{i}].content[{j}].image_url.url must be a string"))
                        }
                        _ => return Err(format!("messages[{i}].content[{j}].type must be \"text\" or \"image_url\"")),
                    }
                }
            }
            None => {}
        }
    }
    let requested = chat.max_completion_tokens.or(chat.max_tokens);
    let cost = PromptCost {
        text_tokens: u32::try_from(text_chars.div_ceil(4)).unwrap_or(u32::MAX).max(1),
        image_tokens,
        max_tokens: requested.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        stream: chat.stream.unwrap_or(false),
        include_usage: chat.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
    };
    Ok(ChatReading { model: chat.model.map(Cow::into_owned), cost, images })
}

/// The fields of a chat completion body the estimate reads; the others are skipped unread.
#[derive(Deserialize)]
struct ChatBody<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    messages: Vec<Message<'a>>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    #[expect(dead_code, reason = "read only to check that it is a string, as OpenAI does")]
    role: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
}

/// A message's content: text, or an array of parts.
enum Content<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Content<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an array of parts")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(text.to_string())))
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element()? {
                    parts.push(part);
                }
                Ok(Content::Parts(parts))
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    image_url: Option<ImageUrl<'a>>,
}

/// `image_url`: `{"url": ...}`, or the URL itself.
#[derive(Deserialize)]
#[serde(untagged)]
enum ImageUrl<'a> {
    Object {
        #[serde(borrow)]
        url: Cow<'a, str>,
    },
    Url(#[serde(borrow)] Cow<'a, str>),
}

impl ImageUrl<'_> {
    fn url(&self) -> &str {
        match self {
            ImageUrl::Object { url } | ImageUrl::Url(url) => url,
        }
    }
}

/// `usage.completion_tokens` of an OpenAI answer, as `usage_field` looks for it. Searchers are built
/// once: building one per search was most of what a search cost.
pub(crate) static COMPLETION_TOKENS: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"completion_tokens\":"));
/// `usage.prompt_tokens`.
pub(crate) static PROMPT_TOKENS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"prompt_tokens\":"));

/// The number after `key` (`COMPLETION_TOKENS` or `PROMPT_TOKENS`) in `data`, an SSE event or a JSON
/// body, if there is one.
pub(crate) fn usage_field(data: &[u8], key: &Finder) -> Option<u64> {
    let at = key.find(data)? + key.needle().len();
    let mut digits = data[at..].iter().skip_while(|b| b.is_ascii_whitespace()).take_while(|b| b.is_ascii_digit());
    let first = digits.next()?;
    digits.try_fold(u64::from(first - b'0'), |n, digit| n.checked_mul(10)?.checked_add(u64::from(digit - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tokens_follow_the_models_grid() {
        let glm = ImageCost::default();
        assert_eq!((glm.tokens(448, 448), glm.tokens(1024, 1024), glm.tokens(10, 10)), (256, 1296, 1));
        let capped = ImageCost { side: 14, max: Some(1000), extra: 2 };
        assert_eq!((capped.tokens(140, 28), capped.tokens(4000, 4000)), (22, 1002));
        let costs = ImageCosts::new(vec![(vec!["llava*".into()], capped)]);
        assert_eq!((costs.of(Some("llava-1.6")), costs.of(Some("glm-4v")), costs.of(None)), (capped, glm, glm));
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
        let reading = read_chat(body.to_string().as_bytes(), &ImageCosts::default()).unwrap();
        assert_eq!(reading.images.iter().map(|(at, _)| *at).collect::<Vec<_>>(), [(1, 1), (1, 2)]);
        let cost = reading.cost;
        assert_eq!(
            cost,
            PromptCost { text_tokens: 3, image_tokens: 512, max_tokens: Some(7), stream: true, include_usage: false }
        );
        assert_eq!(cost.prompt_tokens(), 515);
        let per_image = ImageCosts::new(vec![(vec!["m".into()], ImageCost { side: 28, max: Some(100), extra: 0 })]);
        assert_eq!(
            read_chat(body.to_string().as_bytes(), &per_image).unwrap().cost.image_tokens,
            200,
            "the model's own"
        );
        let bare =
            read_chat(br#"{"messages": [{"role": "user", "content": "hi"}]}"#, &ImageCosts::default()).unwrap().cost;
        assert_eq!((bare.text_tokens, bare.max_tokens), (1, None));
        assert!(
            read_chat(b"[]", &ImageCosts::default()).unwrap_err().starts_with("invalid JSON body"),
            "an array is no chat request"
        );
    }
}
