//! Remote images (`--allow-remote-images`): `http(s)` image URLs are fetched with a size and a
//! time limit and put back into the request as `data:` URLs, so that everything after (the
//! response cache key, the prompt, the prefix cache) sees the image's bytes, not its address.

use crate::api::ApiError;
use base64::Engine as _;
use pixlm_engine::{short_url, ChatMessage, Content, Part};
use std::io::Read;
use std::time::Duration;

/// Limits on fetching one image.
#[derive(Clone, Debug)]
pub struct RemoteLimits {
    /// Largest image body accepted, in bytes.
    pub max_bytes: usize,
    /// Time for the whole fetch (connect, redirects, body).
    pub timeout: Duration,
}

impl Default for RemoteLimits {
    fn default() -> Self {
        Self {
            max_bytes: 20 << 20,
            timeout: Duration::from_secs(10),
        }
    }
}

pub fn is_remote(url: &str) -> bool {
    let l = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://")
}

/// Whether any image of `messages` is a remote URL.
pub fn has_remote(messages: &[ChatMessage]) -> bool {
    messages.iter().any(|m| match &m.content {
        Content::Parts(ps) => ps
            .iter()
            .any(|p| matches!(p, Part::ImageUrl { image_url } if is_remote(&image_url.url))),
        Content::Text(_) => false,
    })
}

/// Replaces every remote image URL of `messages` by a `data:` URL of its fetched bytes.
/// Blocking: call it off the async runtime.
pub fn resolve(messages: &mut [ChatMessage], limits: &RemoteLimits) -> Result<(), ApiError> {
    for (i, m) in messages.iter_mut().enumerate() {
        let Content::Parts(ps) = &mut m.content else {
            continue;
        };
        for (j, p) in ps.iter_mut().enumerate() {
            if let Part::ImageUrl { image_url } = p {
                if is_remote(&image_url.url) {
                    let param = format!("messages[{i}].content[{j}].image_url.url");
                    let bytes = fetch(&image_url.url, limits).map_err(|e| e.param(param))?;
                    image_url.url = format!(
                        "data:{};base64,{}",
                        sniff_mime(&bytes),
                        base64::engine::general_purpose::STANDARD.encode(&bytes)
                    );
                }
            }
        }
    }
    Ok(())
}

/// The media type of an image from its first bytes (the decoder sniffs them again; this only
/// makes the data: URL the same as a client's inline one).
fn sniff_mime(b: &[u8]) -> &'static str {
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        "image/jpeg"
    } else if b.starts_with(b"GIF8") {
        "image/gif"
    } else if b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        "image/webp"
    } else if b.starts_with(b"BM") {
        "image/bmp"
    } else {
        "application/octet-stream"
    }
}

/// GETs `url`: at most `limits.max_bytes` of body within `limits.timeout`, at most 3
/// redirects, status 200 only.
pub fn fetch(url: &str, limits: &RemoteLimits) -> Result<Vec<u8>, ApiError> {
    let u = short_url(url);
    let failed = |why: String| {
        ApiError::bad("", format!("could not fetch the image {u}: {why}"))
            .with_code("image_fetch_failed")
    };
    let too_large = || {
        ApiError::bad(
            "",
            format!(
                "the image {u} is larger than the limit of {} bytes (--remote-image-max-mb)",
                limits.max_bytes
            ),
        )
        .with_code("image_too_large")
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(limits.timeout))
        .max_redirects(3)
        .http_status_as_error(false)
        .user_agent(concat!("pixlm/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut resp = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Timeout(_) => failed(format!(
            "no answer within {} s",
            limits.timeout.as_secs_f64()
        )),
        e => failed(e.to_string()),
    })?;
    let status = resp.status();
    if status != 200 {
        return Err(failed(format!("the server answered HTTP {status}")));
    }
    let declared = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        return Err(too_large());
    }
    // Read one byte past the limit to tell "exactly at the limit" from "over it".
    let mut bytes = Vec::new();
    resp.body_mut()
        .with_config()
        .limit(limits.max_bytes as u64 + 1)
        .reader()
        .take(limits.max_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::TimedOut
                || e.to_string().to_lowercase().contains("timeout")
            {
                failed(format!(
                    "no answer within {} s",
                    limits.timeout.as_secs_f64()
                ))
            } else {
                failed(e.to_string())
            }
        })?;
    if bytes.len() > limits.max_bytes {
        return Err(too_large());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_urls_and_media_types() {
        assert!(is_remote("https://example.com/a.png"));
        assert!(is_remote("HTTP://example.com/a.png"));
        assert!(!is_remote("data:image/png;base64,AAAA"));
        assert!(!is_remote("file:///etc/passwd"));
        assert!(!is_remote("http"));
        assert_eq!(sniff_mime(b"\x89PNG\r\n\x1a\nxxxx"), "image/png");
        assert_eq!(sniff_mime(&[0xFF, 0xD8, 0xFF, 0xE0]), "image/jpeg");
        assert_eq!(sniff_mime(b"RIFF\0\0\0\0WEBPVP8 "), "image/webp");
        assert_eq!(sniff_mime(b"<html>"), "application/octet-stream");
    }
}
