//! Which requests are inference requests: generations that, before their first response byte, have
//! had no effect beyond GPU time, so a gateway may send them to another server (see `proxy::retry`).

/// Which requests of a location are inference requests (`inference` of a location).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Inference {
    /// POSTs to the OpenAI-compatible generation paths (`INFERENCE_PATHS`), the default.
    #[default]
    ByPath,
    /// Every POST (`inference = true`).
    AllPosts,
    /// None (`inference = false`): nginx's rule alone.
    Never,
}

/// The generation endpoints of OpenAI-compatible servers (vLLM, SGLang, TGI) and the seed's.
pub(crate) const INFERENCE_PATHS: [&str; 6] =
    ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/chat", "/v1/inference"];

impl Inference {
    /// `inference = true|false` of a location, or none.
    pub(crate) fn of(setting: Option<bool>) -> Inference {
        match setting {
            None => Inference::ByPath,
            Some(true) => Inference::AllPosts,
            Some(false) => Inference::Never,
        }
    }

    /// Whether a request is an inference request here.
    pub(crate) fn covers(self, method: &http::Method, path: &str) -> bool {
        if method != http::Method::POST {
            return false;
        }
        match self {
            Inference::ByPath => INFERENCE_PATHS.iter().any(|p| path.strip_suffix('/').unwrap_or(path) == *p),
            Inference::AllPosts => true,
            Inference::Never => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_requests_are_posts_to_generation_paths_unless_the_location_says() {
        let post = http::Method::POST;
        for path in INFERENCE_PATHS {
            assert!(Inference::ByPath.covers(&post, path), "{path}");
        }
        assert!(Inference::ByPath.covers(&post, "/v1/chat/completions/"));
        assert!(!Inference::ByPath.covers(&http::Method::GET, "/v1/chat/completions"));
        assert!(!Inference::ByPath.covers(&post, "/v1/files"));
        assert!(!Inference::ByPath.covers(&post, "/v1/chat/completionsX"));
        assert!(Inference::of(Some(true)).covers(&post, "/generate"));
        assert!(!Inference::of(Some(false)).covers(&post, "/v1/chat/completions"));
        assert_eq!(Inference::of(None), Inference::ByPath);
    }
}
