//! A location's limits on the images of OpenAI chat requests (`images`): how many, how large decoded,
//! how many pixels each and all together, which formats, and remote URLs refused (a backend that
//! fetches them could be made to reach any address) or fetched by the gateway itself (`fetch`).
//! Checked on the images `cost::read_chat` read from their headers, before the backend sees a byte
//! of the request.

use super::fetch::{self, FetchPolicy};
use super::resize::Resize;
use crate::config::{ImageBoundsConfig, ImagesConfig};
use crate::error::{GatewayError, ImageRefusal};
use crate::images::{Format, Image};
use bytes::Bytes;
use http::StatusCode;
use std::sync::Arc;

/// What a request's images may be.
#[derive(Debug, Clone, PartialEq)]
struct Bounds {
    max_count: usize,
    max_bytes: u64,
    max_pixels: u64,
    max_request_pixels: u64,
    formats: Vec<Format>,
}

impl Bounds {
    /// `config`'s bounds, what it leaves out taken from `base`.
    fn over(base: &Bounds, config: &ImageBoundsConfig) -> Bounds {
        Bounds {
            max_count: config.max_count.unwrap_or(base.max_count),
            max_bytes: config.max_bytes.map_or(base.max_bytes, |size| size.0),
            max_pixels: config.max_pixels.unwrap_or(base.max_pixels),
            max_request_pixels: config.max_request_pixels.unwrap_or(base.max_request_pixels),
            formats: config.formats.as_ref().map_or_else(|| base.formats.clone(), |names| formats(names)),
        }
    }
}

fn formats(names: &[String]) -> Vec<Format> {
    names.iter().filter_map(|name| Format::named(name)).collect()
}

/// `images` of a location, compiled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ImageLimits {
    bounds: Bounds,
    /// Models' own bounds, by glob, longest glob first.
    per_model: Vec<(String, Bounds)>,
    /// Images above these sizes are scaled down (`resize`).
    resize: Option<Arc<Resize>>,
    /// How remote images are fetched (`remote = "fetch"`); `None`: they are refused.
    fetch: Option<FetchPolicy>,
}

impl ImageLimits {
    /// The largest image worth uploading here, for a client that scales images down before it
    /// sends them: the `resize` bounds when set (pixels, longer side), else the pixels an image may
    /// have.
    pub(crate) fn upload_bounds(&self) -> (u64, Option<u32>) {
        match self.resize.as_ref().map(|resize| resize.bounds()) {
            Some((side, pixels)) => (pixels.unwrap_or(self.bounds.max_pixels).min(self.bounds.max_pixels), side),
            None => (self.bounds.max_pixels, None),
        }
    }

    /// The limits of a validated `images` table, for a location that reads its requests' bodies
    /// whole anyway (`reads_bodies`) or not; `None` when they are off there.
    pub(crate) fn new(config: &ImagesConfig, reads_bodies: bool) -> Option<ImageLimits> {
        if !config.enabled.unwrap_or(reads_bodies) {
            return None;
        }
        let bounds = Bounds {
            max_count: config.max_count,
            max_bytes: config.max_bytes.0,
            max_pixels: config.max_pixels,
            max_request_pixels: config.max_request_pixels,
            formats: formats(config.formats.get_ref()),
        };
        let mut per_model: Vec<(String, Bounds)> =
            config.models.iter().map(|(glob, model)| (glob.clone(), Bounds::over(&bounds, model))).collect();
        per_model.sort_by_key(|(glob, _)| std::cmp::Reverse(glob.len()));
        Some(ImageLimits {
            bounds,
            per_model,
            resize: config.resize.as_ref().map(|resize| Arc::new(Resize::new(resize.get_ref()))),
            fetch: (config.remote.get_ref() == "fetch").then_some(FetchPolicy {
                timeout: config.fetch_timeout.0,
                max_bytes: config.max_bytes.0,
                private: config.fetch_private,
            }),
        })
    }

    /// The bounds for `model`: its longest matching glob's, else the location's.
    fn bounds(&self, model: Option<&str>) -> &Bounds {
        let matching = |(glob, _): &&(String, Bounds)| model.is_some_and(|model| crate::glob::matches(glob, model));
        self.per_model.iter().find(matching).map_or(&self.bounds, |(_, bounds)| bounds)
    }

    /// `body` with its remote images fetched and put inline (`remote = "fetch"`); `None` when it has
    /// none, or remote images are refused here (`check` refuses them).
    pub(crate) async fn inline_remote(
        &self,
        body: &Bytes,
        images: &[((usize, usize), Image)],
    ) -> Result<Option<Bytes>, GatewayError> {
        match &self.fetch {
            Some(policy) => fetch::inline_remote(body, images, policy).await,
            None => Ok(None),
        }
    }

    /// `body` with its images that are larger than `resize` allows scaled down, on tokio's blocking
    /// pool; `None` when none is (or there is no `resize`).
    pub(crate) async fn scale_down(
        &self,
        body: &Bytes,
        images: &[((usize, usize), Image)],
    ) -> Result<Option<Bytes>, GatewayError> {
        let Some(resize) = self.resize.clone().filter(|resize| resize.applies(images)) else { return Ok(None) };
        let (body, images) = (body.clone(), images.to_vec());
        let scaled = tokio::task::spawn_blocking(move || resize.apply(&body, &images));
        scaled.await.map_err(|_| GatewayError::Internal)?.map(Some)
    }

    /// Whether a request's images, each with its message's and part's index, pass for `model`; the
    /// first that does not is named in the refusal (400, or 413 for one too large).
    pub(crate) fn check(&self, images: &[((usize, usize), Image)], model: Option<&str>) -> Result<(), GatewayError> {
        let bounds = self.bounds(model);
        let refuse = |&(i, j): &(usize, usize), status, code, message: String| {
            Err(GatewayError::ImageRefused(ImageRefusal {
                status,
                code,
                param: format!("messages[{i}].content[{j}]"),
                message,
            }))
        };
        if let Some((at, _)) = images.get(bounds.max_count) {
            let message =
                format!("{} images in one request; this location takes at most {}", images.len(), bounds.max_count);
            return refuse(at, StatusCode::BAD_REQUEST, "too_many_images", message);
        }
        let mut pixels = 0u64;
        for (at, image) in images {
            let Image::Inline(image) = image else {
                if self.fetch.is_some() {
                    // Fetched, then checked as the image it is.
                    continue;
                }
                let message = "image URLs are not accepted here; send the image inline as a data: URL".to_string();
                return refuse(at, StatusCode::BAD_REQUEST, "image_url_not_allowed", message);
            };
            if !bounds.formats.contains(&image.format) {
                let allowed: Vec<&str> = bounds.formats.iter().map(|format| format.name()).collect();
                let message =
                    format!("{} images are not accepted here (accepted: {})", image.format.name(), allowed.join(", "));
                return refuse(at, StatusCode::BAD_REQUEST, "image_format_not_allowed", message);
            }
            if image.bytes > bounds.max_bytes {
                let message =
                    format!("the image is {} bytes; this location takes at most {}", image.bytes, bounds.max_bytes);
                return refuse(at, StatusCode::PAYLOAD_TOO_LARGE, "image_too_large", message);
            }
            if image.pixels() > bounds.max_pixels {
                let message = format!(
                    "the image is {}x{} ({} pixels); this location takes at most {} pixels an image",
                    image.width,
                    image.height,
                    image.pixels(),
                    bounds.max_pixels
                );
                return refuse(at, StatusCode::BAD_REQUEST, "image_too_many_pixels", message);
            }
            pixels = pixels.saturating_add(image.pixels());
            if pixels > bounds.max_request_pixels {
                let message = format!(
                    "the images come to {pixels} pixels; this location takes at most {} a request",
                    bounds.max_request_pixels
                );
                return refuse(at, StatusCode::BAD_REQUEST, "images_too_many_pixels", message);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::Inline;

    fn image(format: Format, width: usize, height: usize, bytes: u64) -> Image {
        Image::Inline(Inline { format, width, height, bytes })
    }

    #[test]
    fn each_limit_refuses_the_first_image_past_it() {
        let config = ImagesConfig {
            max_count: 2,
            max_bytes: crate::config::Size(1_000),
            max_pixels: 100,
            max_request_pixels: 150,
            formats: toml::Spanned::new(0..0, vec!["png".into(), "jpeg".into()]),
            ..ImagesConfig::default()
        };
        let limits = ImageLimits::new(&config, true).unwrap();
        let png = image(Format::Png, 10, 10, 500);
        // The images of a request, and the refusal: (param, code, status), or none.
        type Refused = Option<(&'static str, &'static str, u16)>;
        let rows: [(Vec<Image>, Refused); 7] = [
            (vec![png, png], Some(("messages[0].content[1]", "images_too_many_pixels", 400))),
            (vec![png], None),
            (vec![png, image(Format::Jpeg, 5, 5, 10)], None),
            (vec![png, png, png], Some(("messages[0].content[2]", "too_many_images", 400))),
            (vec![image(Format::Webp, 1, 1, 1)], Some(("messages[0].content[0]", "image_format_not_allowed", 400))),
            (vec![image(Format::Png, 1, 1, 1_001)], Some(("messages[0].content[0]", "image_too_large", 413))),
            (vec![png, Image::Remote], Some(("messages[0].content[1]", "image_url_not_allowed", 400))),
        ];
        for (images, expected) in rows {
            let placed: Vec<_> = images.into_iter().enumerate().map(|(j, image)| ((0, j), image)).collect();
            let refusal = match limits.check(&placed, None) {
                Ok(()) => None,
                Err(GatewayError::ImageRefused(refusal)) => Some(refusal),
                Err(other) => panic!("{other}"),
            };
            let got = refusal.as_ref().map(|r| (r.param.as_str(), r.code, r.status.as_u16()));
            assert_eq!(got, expected, "{placed:?}");
        }
        let tall = [((3, 1), image(Format::Png, 20, 10, 1))];
        let Err(GatewayError::ImageRefused(refusal)) = limits.check(&tall, None) else { panic!() };
        assert_eq!(refusal.message, "the image is 20x10 (200 pixels); this location takes at most 100 pixels an image");
        // A model's own limits: the longest matching glob's, the rest the location's.
        let mut models = std::collections::BTreeMap::new();
        models.insert("qwen*".to_string(), ImageBoundsConfig { max_count: Some(1), ..ImageBoundsConfig::default() });
        models.insert(
            "qwen2-vl*".to_string(),
            ImageBoundsConfig {
                max_count: Some(3),
                formats: Some(vec!["webp".into()]),
                ..ImageBoundsConfig::default()
            },
        );
        let limits = ImageLimits::new(&ImagesConfig { models, ..config.clone() }, true).unwrap();
        let two_png = [((0, 0), png), ((0, 1), image(Format::Png, 1, 1, 1))];
        let two_webp = [((0, 0), image(Format::Webp, 1, 1, 1)), ((0, 1), image(Format::Webp, 1, 1, 1))];
        assert!(limits.check(&two_png, None).is_ok(), "the location's: two");
        assert!(limits.check(&two_png, Some("qwen-vl")).is_err(), "qwen*: one");
        assert!(limits.check(&two_webp, Some("qwen2-vl-7b")).is_ok(), "qwen2-vl*: three, webp");
        assert!(limits.check(&two_png, Some("qwen2-vl-7b")).is_err(), "qwen2-vl*: webp only");
        assert!(ImageLimits::new(&ImagesConfig::default(), false).is_none(), "off where bodies stream");
        assert!(ImageLimits::new(&ImagesConfig { enabled: Some(true), ..ImagesConfig::default() }, false).is_some());
        assert!(ImageLimits::new(&ImagesConfig { enabled: Some(false), ..ImagesConfig::default() }, true).is_none());
    }
}
