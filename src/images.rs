//! Images of OpenAI chat requests, read without decoding them: a `data:` URL's format, its size
//! once decoded (from the base64 text's length) and its width and height (from the image's header,
//! for which only the first bytes are decoded, more only when the header runs longer, as a JPEG's
//! may behind its metadata). What the cost estimate (`cost`) and a location's image limits read.

use base64::Engine as _;
use memchr::memmem::Finder;
use std::sync::LazyLock;

/// Image formats by their header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Png,
    Jpeg,
    Webp,
    Gif,
    /// Any other that `imagesize` reads (BMP, TIFF, AVIF, ...).
    Other,
}

impl Format {
    /// The format's name, as `images.formats` writes it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Jpeg => "jpeg",
            Format::Webp => "webp",
            Format::Gif => "gif",
            Format::Other => "other",
        }
    }

    /// The format named `name`, of those a location may allow.
    pub(crate) fn named(name: &str) -> Option<Format> {
        [Format::Png, Format::Jpeg, Format::Webp, Format::Gif].into_iter().find(|format| format.name() == name)
    }
}

/// An image sent inline, as read from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Inline {
    pub(crate) format: Format,
    pub(crate) width: usize,
    pub(crate) height: usize,
    /// Its size decoded, in bytes.
    pub(crate) bytes: u64,
}

impl Inline {
    /// Width times height.
    pub(crate) fn pixels(&self) -> u64 {
        (self.width as u64).saturating_mul(self.height as u64)
    }
}

/// An image of a request: sent inline, or named by an `http(s)` URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Image {
    Inline(Inline),
    Remote,
}

/// How much of an image is decoded to read its header, in turn: most headers are in the first
/// kilobytes; a JPEG's size comes after its metadata (EXIF, up to 64 KB a segment).
const HEADER_READS: [usize; 3] = [4 << 10, 256 << 10, usize::MAX];

/// Reads an `image_url`'s URL: a `data:` URL's image, or a remote one; errors say what is wrong.
pub(crate) fn read(url: &str) -> Result<Image, String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(Image::Remote);
    }
    let data = url.strip_prefix("data:").ok_or("image_url must be a data: URL or an http(s) URL")?;
    let (_, encoded) = data.split_once(";base64,").ok_or("data: URL must be base64-encoded")?;
    let encoded = encoded.trim().as_bytes();
    let padding = encoded.iter().rev().take_while(|&&byte| byte == b'=').count() as u64;
    let bytes = (encoded.len() as u64 / 4 * 3).saturating_sub(padding);
    for decode in HEADER_READS {
        // Whole groups of four characters, so that a prefix decodes on its own.
        let prefix = &encoded[..encoded.len().min((decode / 3).saturating_mul(4))];
        let head = base64::engine::general_purpose::STANDARD
            .decode(prefix)
            .map_err(|e| format!("invalid base64 image: {e}"))?;
        let complete = prefix.len() == encoded.len();
        match imagesize::blob_size(&head) {
            Ok(size) => {
                let format = match imagesize::image_type(&head) {
                    Ok(imagesize::ImageType::Png) => Format::Png,
                    Ok(imagesize::ImageType::Jpeg) => Format::Jpeg,
                    Ok(imagesize::ImageType::Webp) => Format::Webp,
                    Ok(imagesize::ImageType::Gif) => Format::Gif,
                    _ => Format::Other,
                };
                return Ok(Image::Inline(Inline { format, width: size.width, height: size.height, bytes }));
            }
            Err(e) if complete => return Err(format!("unreadable image: {e}")),
            Err(_) => {}
        }
    }
    Err("unreadable image".into())
}

/// What names a request's first image, for `hash_key = "image"`: its `data:` URL's base64 text (at
/// most the first `AFFINITY_IMAGE` bytes of it) or its `http(s)` URL; without one, the first
/// `AFFINITY_PROMPT` bytes of the body from its `messages` on. Found by substring search, not by
/// parsing: the body may be any JSON, and affinity only needs the same bytes for the same image.
pub(crate) fn affinity_key(body: &[u8]) -> Option<&[u8]> {
    let url = IMAGE_URL.find(body).and_then(|at| {
        let rest = &body[at..];
        let start = URL_START.find(rest)? + URL_START.needle().len();
        let url = &rest[start..];
        let end = memchr::memchr(b'"', url).unwrap_or(url.len());
        let url = &url[..end];
        Some(match BASE64.find(url) {
            Some(data) => {
                &url[data + BASE64.needle().len()..][..(url.len() - data - BASE64.needle().len()).min(AFFINITY_IMAGE)]
            }
            None => url,
        })
    });
    url.or_else(|| {
        let at = MESSAGES.find(body)?;
        Some(&body[at..body.len().min(at + AFFINITY_PROMPT)])
    })
}

/// How much of an image's base64 text names it.
const AFFINITY_IMAGE: usize = 256 << 10;
/// How much of the messages names a request without images.
const AFFINITY_PROMPT: usize = 4 << 10;

static IMAGE_URL: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"image_url\""));
/// The start of a URL string after `image_url`: `"url":"...` or the string itself.
static URL_START: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b":\""));
static BASE64: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b";base64,"));
static MESSAGES: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"messages\""));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_urls_size_and_format_come_from_its_first_bytes() {
        // A 448x448 PNG's header, and the rest of a 3,000-byte image the header does not need.
        let mut png =
            base64::engine::general_purpose::STANDARD.decode("iVBORw0KGgoAAAANSUhEUgAAAcAAAAHACAYAAAAAAAAA").unwrap();
        png.resize(3_000, 0);
        let url = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(&png));
        let expected = Inline { format: Format::Png, width: 448, height: 448, bytes: 3_000 };
        assert_eq!(read(&url), Ok(Image::Inline(expected)));
        assert_eq!(read("https://example.com/cat.png"), Ok(Image::Remote));
        assert!(read("data:image/png;base64,!!!!").unwrap_err().starts_with("invalid base64"));
        assert!(read("data:image/png;base64,AAAA").unwrap_err().starts_with("unreadable image"));
        assert!(read("file:///etc/passwd").is_err());
        assert_eq!((Format::named("webp"), Format::named("bmp")), (Some(Format::Webp), None));
    }

    #[test]
    fn an_image_is_named_by_its_data_whatever_the_question() {
        let ask = |question: &str, url: &str| {
            serde_json::json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
                {"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": url}}]}]})
            .to_string()
        };
        let (cat, dog) =
            (ask("What is it?", "data:image/png;base64,Q0FU"), ask("And its colour?", "data:image/png;base64,Q0FU"));
        assert_eq!(affinity_key(cat.as_bytes()), Some(&b"Q0FU"[..]));
        assert_eq!(affinity_key(cat.as_bytes()), affinity_key(dog.as_bytes()));
        assert_eq!(affinity_key(ask("?", "https://x/cat.png").as_bytes()), Some(&b"https://x/cat.png"[..]));
        let text = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(affinity_key(text.as_bytes()), Some(&br#""messages":[{"role":"user","content":"hi"}]}"#[..]));
        assert_eq!(affinity_key(b"{}"), None);
        let sorted = r#"{"messages":[{"content":[{"text":"what?","type":"text"},{"image_url":{"url":"data:image/png;base64,AAAA"},"type":"image_url"}],"role":"user"}],"model":"m"}"#;
        assert_eq!(affinity_key(sorted.as_bytes()), Some(&b"AAAA"[..]));
    }
}
