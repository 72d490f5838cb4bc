//! Scaling down the images of a chat request that are larger than a location's `images.resize`
//! allows, so that prefill pays for what the model needs: each such image is decoded, scaled with a
//! Lanczos 3 filter (aspect kept) and encoded again, in its own format or the configured one, and the
//! body is forwarded with the new `data:` URL in its place. CPU-bound: run on tokio's blocking pool.

use crate::config::ResizeConfig;
use crate::error::GatewayError;
use crate::images::{Format, Image};
use base64::Engine as _;
use bytes::Bytes;
use image::imageops::FilterType;
use image::ImageFormat;
use serde_json::Value;

/// `images.resize`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Resize {
    max_side: Option<u32>,
    max_pixels: Option<u64>,
    /// The output format; `None` keeps each image's own.
    format: Option<ImageFormat>,
}

impl Resize {
    /// Compiles a validated `images.resize`.
    pub(crate) fn new(config: &ResizeConfig) -> Resize {
        let format = match config.format.get_ref().as_str() {
            "png" => Some(ImageFormat::Png),
            "jpeg" => Some(ImageFormat::Jpeg),
            "webp" => Some(ImageFormat::WebP),
            _ => None,
        };
        Resize { max_side: config.max_side, max_pixels: config.max_pixels, format }
    }

    /// Its limits: on the longer side, and in pixels.
    pub(crate) fn bounds(&self) -> (Option<u32>, Option<u64>) {
        (self.max_side, self.max_pixels)
    }

    /// The size a `width` x `height` image is scaled to, or `None` when it fits: one scale for both
    /// sides (the aspect kept), the largest that meets both limits, each side at least 1.
    pub(crate) fn target(&self, width: u32, height: u32) -> Option<(u32, u32)> {
        let longer = f64::from(width.max(height).max(1));
        let pixels = f64::from(width.max(1)) * f64::from(height.max(1));
        let by_side = self.max_side.map_or(1.0, |side| f64::from(side) / longer);
        let by_pixels = self.max_pixels.map_or(1.0, |max| (max as f64 / pixels).sqrt());
        let scale = by_side.min(by_pixels);
        if scale >= 1.0 {
            return None;
        }
        let side = |length: u32| ((f64::from(length) * scale).floor() as u32).max(1);
        Some((side(width), side(height)))
    }

    /// Whether any of a request's images is larger than allowed.
    pub(crate) fn applies(&self, images: &[((usize, usize), Image)]) -> bool {
        images.iter().any(
            |(_, image)| matches!(image, Image::Inline(i) if self.target(i.width as u32, i.height as u32).is_some()),
        )
    }

    /// The chat body `body` with its images that are too large scaled down (`images`: their places,
    /// as `cost::read_chat` found them). Errors are the client's: an image that does not decode.
    pub(crate) fn apply(&self, body: &[u8], images: &[((usize, usize), Image)]) -> Result<Bytes, GatewayError> {
        let bad = |message: String| GatewayError::BadRequest(message);
        let mut chat: Value = serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
        for ((i, j), image) in images {
            let Image::Inline(inline) = image else { continue };
            let Some((width, height)) = self.target(inline.width as u32, inline.height as u32) else { continue };
            let part = &mut chat["messages"][*i]["content"][*j]["image_url"];
            let url = if part.is_string() { part } else { &mut part["url"] };
            let Some(text) = url.as_str() else { continue };
            let scaled = self
                .scale(text, inline.format, width, height)
                .map_err(|e| bad(format!("messages[{i}].content[{j}]: {e}")))?;
            *url = Value::String(scaled);
        }
        serde_json::to_vec(&chat).map(Bytes::from).map_err(|e| bad(e.to_string()))
    }

    /// One `data:` URL's image, decoded, scaled to `width` x `height` and encoded as a new `data:` URL.
    fn scale(&self, url: &str, format: Format, width: u32, height: u32) -> Result<String, String> {
        let encoded = url.split_once(";base64,").map_or("", |(_, data)| data).trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| format!("invalid base64 image: {e}"))?;
        let decoded = image::load_from_memory(&bytes).map_err(|e| format!("undecodable image: {e}"))?;
        let scaled = decoded.resize_exact(width, height, FilterType::Lanczos3);
        let format = self.format.unwrap_or(match format {
            Format::Jpeg => ImageFormat::Jpeg,
            Format::Webp => ImageFormat::WebP,
            Format::Png | Format::Gif | Format::Other => ImageFormat::Png,
        });
        // JPEG has no alpha channel; WebP's encoder here is lossless and takes 8-bit RGB(A).
        let scaled = match format {
            ImageFormat::Jpeg => image::DynamicImage::ImageRgb8(scaled.to_rgb8()),
            _ if scaled.color().has_alpha() => image::DynamicImage::ImageRgba8(scaled.to_rgba8()),
            _ => image::DynamicImage::ImageRgb8(scaled.to_rgb8()),
        };
        let mut out = std::io::Cursor::new(Vec::new());
        scaled.write_to(&mut out, format).map_err(|e| format!("cannot encode the scaled image: {e}"))?;
        let data = base64::engine::general_purpose::STANDARD.encode(out.into_inner());
        Ok(format!("data:{};base64,{data}", format.to_mime_type()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_keep_the_aspect_and_meet_both_limits() {
        let resize = |max_side, max_pixels| Resize { max_side, max_pixels, format: None };
        let rows = [
            (resize(Some(1024), None), (4000, 3000), Some((1024, 768))),
            (resize(Some(1024), None), (1000, 3000), Some((341, 1024))),
            (resize(Some(1024), None), (1024, 500), None),
            (resize(None, Some(1_000_000)), (4000, 3000), Some((1154, 866))),
            (resize(Some(1024), Some(100_000)), (4000, 3000), Some((365, 273))),
            (resize(Some(10), None), (100_000, 1), Some((10, 1))),
        ];
        for (resize, (width, height), expected) in rows {
            assert_eq!(resize.target(width, height), expected, "{width}x{height}");
            if let Some((w, h)) = expected {
                assert!(resize.max_pixels.is_none_or(|max| u64::from(w) * u64::from(h) <= max));
                assert!(resize.max_side.is_none_or(|side| w.max(h) <= side));
            }
        }
    }
}
