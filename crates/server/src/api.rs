//! The OpenAI wire format: request validation (every field checked, errors naming it) and
//! the error body `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use pixlm_engine::{ChatMessage, Content, EngineError, ImageUrl, Part, SamplingParams};
use serde_json::{json, Map, Value};

/// An error answered to the client in OpenAI's format.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after_secs: None,
        }
    }

    /// 400 invalid_request_error, naming the offending field.
    pub fn bad(param: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        let p: String = param.into();
        if !p.is_empty() {
            e.param = Some(p);
        }
        e
    }

    pub fn param(mut self, p: impl Into<String>) -> Self {
        self.param = Some(p.into());
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
            .with_code("invalid_api_key")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
            .with_code("service_unavailable")
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }

    /// An engine error met while preparing a request (before anything was queued).
    pub fn from_engine(e: &EngineError) -> Self {
        match e {
            EngineError::ContextOverflow { .. } => {
                Self::bad("messages", e.to_string()).with_code("context_length_exceeded")
            }
            EngineError::Image { .. } => {
                Self::bad("messages", e.to_string()).with_code("invalid_image")
            }
            EngineError::Request(m) => Self::bad("messages", m.clone()),
            EngineError::Template(_) => Self::bad("messages", e.to_string()),
            EngineError::Sampling(s) => {
                let field = match s {
                    pixlm_engine::sampler::SamplingError::OutOfRange { field, .. } => *field,
                };
                Self::bad(field, e.to_string())
            }
            other => Self::internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after_secs {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}

/// A validated `POST /v1/chat/completions` body.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Choices to generate (`n`), each sampled on its own.
    pub n: usize,
}

/// The most choices (`n`) one request may ask for.
pub const MAX_CHOICES: usize = 16;

impl ChatRequest {
    /// Greedy, or seeded: the same request gives the same answer.
    pub fn is_deterministic(&self) -> bool {
        self.sampling.is_greedy() || self.sampling.seed.is_some()
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(field: &str, want: &str, got: &Value) -> ApiError {
    ApiError::bad(
        field,
        format!("'{field}' must be {want}, got {}", type_name(got)),
    )
    .with_code("invalid_type")
}

/// A field that is absent or null reads as `None`.
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

fn opt_f32(obj: &Map<String, Value>, name: &str) -> Result<Option<f32>, ApiError> {
    match field(obj, name) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|x| Some(x as f32))
            .ok_or_else(|| wrong_type(name, "a number", v)),
    }
}

fn opt_int(obj: &Map<String, Value>, name: &str) -> Result<Option<i64>, ApiError> {
    match field(obj, name) {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(i) => Ok(Some(i)),
            None => match v.as_u64() {
                Some(u) => Ok(Some(i64::try_from(u).unwrap_or(i64::MAX))),
                None => Err(wrong_type(name, "an integer", v)),
            },
        },
    }
}

fn opt_bool(obj: &Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    match field(obj, name) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| wrong_type(name, "a boolean", v)),
    }
}

/// Parses and validates a request body. Everything but the prompt itself (template, images,
/// context length: `Engine::prepare`) is checked here.
pub fn parse_chat_request(body: &[u8]) -> Result<ChatRequest, ApiError> {
    parse_chat_request_with(body, false)
}

/// [`parse_chat_request`], accepting `http(s)` image URLs when `remote_images` (the server
/// fetches them before preparing the prompt: `remote::resolve`).
pub fn parse_chat_request_with(body: &[u8], remote_images: bool) -> Result<ChatRequest, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad("", format!("the request body is not valid JSON: {e}"))
            .with_code("invalid_json")
    })?;
    let Value::Object(obj) = &v else {
        return Err(ApiError::bad(
            "",
            format!(
                "the request body must be a JSON object, got {}",
                type_name(&v)
            ),
        ));
    };
    let model = match field(obj, "model") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(x) => return Err(wrong_type("model", "a string", x)),
    };
    let messages_json = obj.get("messages").cloned().ok_or_else(|| {
        ApiError::bad("messages", "'messages' is required").with_code("missing_required_parameter")
    })?;
    let messages = parse_messages(&messages_json, remote_images)?;

    let max_tokens = match opt_int(obj, "max_completion_tokens")? {
        Some(x) => Some(("max_completion_tokens", x)),
        None => opt_int(obj, "max_tokens")?.map(|x| ("max_tokens", x)),
    };
    let max_tokens = match max_tokens {
        None => None,
        Some((name, x)) if x < 1 => {
            return Err(ApiError::bad(
                name,
                format!("'{name}' must be at least 1, got {x}"),
            ))
        }
        Some((_, x)) => Some(usize::try_from(x).unwrap_or(usize::MAX)),
    };
    let n = match opt_int(obj, "n")? {
        None => 1,
        Some(n) if (1..=MAX_CHOICES as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::bad(
                "n",
                format!("'n' must be between 1 and {MAX_CHOICES}, got {n}"),
            ))
        }
    };
    let mut sampling = SamplingParams {
        // OpenAI's default temperature is 1.
        temperature: 1.0,
        ..SamplingParams::default()
    };
    if let Some(t) = opt_f32(obj, "temperature")? {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::bad(
                "temperature",
                format!("'temperature' must be between 0 and 2, got {t}"),
            ));
        }
        sampling.temperature = t;
    }
    if let Some(p) = opt_f32(obj, "top_p")? {
        sampling.top_p = p;
    }
    if let Some(p) = opt_f32(obj, "frequency_penalty")? {
        sampling.frequency_penalty = p;
    }
    if let Some(p) = opt_f32(obj, "presence_penalty")? {
        sampling.presence_penalty = p;
    }
    // Extensions beyond OpenAI's set (vLLM spells them the same way).
    if let Some(p) = opt_f32(obj, "min_p")? {
        sampling.min_p = p;
    }
    if let Some(p) = opt_f32(obj, "repetition_penalty")? {
        sampling.repetition_penalty = p;
    }
    if let Some(k) = opt_int(obj, "top_k")? {
        // vLLM uses -1 for "off".
        sampling.top_k = if k <= 0 { 0 } else { k as usize };
    }
    if let Some(s) = opt_int(obj, "seed")? {
        sampling.seed = Some(s as u64);
    }
    sampling.validate().map_err(|e| match &e {
        pixlm_engine::sampler::SamplingError::OutOfRange { field, .. } => {
            ApiError::bad(*field, e.to_string())
        }
    })?;

    let stop = match field(obj, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for (i, x) in a.iter().enumerate() {
                match x {
                    Value::String(s) => out.push(s.clone()),
                    other => return Err(wrong_type(&format!("stop[{i}]"), "a string", other)),
                }
            }
            if out.len() > 16 {
                return Err(ApiError::bad(
                    "stop",
                    "at most 16 stop strings are accepted",
                ));
            }
            out
        }
        Some(x) => return Err(wrong_type("stop", "a string or an array of strings", x)),
    };
    let stop: Vec<String> = stop.into_iter().filter(|s| !s.is_empty()).collect();
    let stream = opt_bool(obj, "stream")?.unwrap_or(false);
    let include_usage = match field(obj, "stream_options") {
        None => false,
        Some(Value::Object(o)) => opt_bool(o, "include_usage")
            .map_err(|e| ApiError {
                param: Some("stream_options.include_usage".into()),
                message: e
                    .message
                    .replace("'include_usage'", "'stream_options.include_usage'"),
                ..e
            })?
            .unwrap_or(false),
        Some(x) => return Err(wrong_type("stream_options", "an object", x)),
    };
    if let Some(true) = opt_bool(obj, "logprobs")? {
        return Err(ApiError::bad(
            "logprobs",
            "'logprobs' is not supported by this server",
        ));
    }
    // Structured output is not honoured here, and answering free text to a client that
    // asked for JSON would drop its request silently.
    match field(obj, "response_format") {
        None => {}
        Some(Value::Object(o)) => match o.get("type") {
            Some(Value::String(t)) if t == "text" => {}
            Some(Value::String(t)) => {
                return Err(ApiError::bad(
                    "response_format",
                    format!(
                        "'response_format' of type {t:?} is not supported by this server \
                         (only \"text\")"
                    ),
                ))
            }
            Some(x) => return Err(wrong_type("response_format.type", "a string", x)),
            None => {
                return Err(ApiError::bad(
                    "response_format.type",
                    "'response_format.type' is required",
                ))
            }
        },
        Some(x) => return Err(wrong_type("response_format", "an object", x)),
    }
    if let Some(tools) = field(obj, "tools") {
        if tools.as_array().is_some_and(|a| !a.is_empty()) {
            return Err(ApiError::bad(
                "tools",
                "tool calling is not supported by this server",
            ));
        }
    }
    Ok(ChatRequest {
        model,
        messages,
        max_tokens,
        sampling,
        stop,
        stream,
        include_usage,
        n,
    })
}

fn parse_messages(v: &Value, remote_images: bool) -> Result<Vec<ChatMessage>, ApiError> {
    let Value::Array(items) = v else {
        return Err(wrong_type("messages", "an array of messages", v));
    };
    if items.is_empty() {
        return Err(ApiError::bad("messages", "'messages' must not be empty"));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let here = format!("messages[{i}]");
        let Value::Object(o) = m else {
            return Err(wrong_type(&here, "an object", m));
        };
        let role = match o.get("role") {
            Some(Value::String(r)) => r.clone(),
            None => {
                return Err(ApiError::bad(
                    format!("{here}.role"),
                    format!("'{here}.role' is required"),
                ))
            }
            Some(x) => return Err(wrong_type(&format!("{here}.role"), "a string", x)),
        };
        if !matches!(role.as_str(), "system" | "developer" | "user" | "assistant") {
            return Err(ApiError::bad(
                format!("{here}.role"),
                format!("'{here}.role' = {role:?} is not supported (system, developer, user or assistant)"),
            ));
        }
        let content = match o.get("content") {
            Some(Value::String(s)) => Content::Text(s.clone()),
            Some(Value::Array(parts)) => {
                if parts.is_empty() {
                    return Err(ApiError::bad(
                        format!("{here}.content"),
                        format!("'{here}.content' must not be an empty array"),
                    ));
                }
                let mut ps = Vec::with_capacity(parts.len());
                for (j, p) in parts.iter().enumerate() {
                    ps.push(parse_part(
                        p,
                        &format!("{here}.content[{j}]"),
                        remote_images,
                    )?);
                }
                Content::Parts(ps)
            }
            None | Some(Value::Null) => {
                return Err(ApiError::bad(
                    format!("{here}.content"),
                    format!("'{here}.content' is required"),
                ))
            }
            Some(x) => {
                return Err(wrong_type(
                    &format!("{here}.content"),
                    "a string or an array of content parts",
                    x,
                ))
            }
        };
        out.push(ChatMessage { role, content });
    }
    Ok(out)
}

fn parse_part(p: &Value, here: &str, remote_images: bool) -> Result<Part, ApiError> {
    let Value::Object(o) = p else {
        return Err(wrong_type(here, "an object", p));
    };
    let kind = match o.get("type") {
        Some(Value::String(t)) => t.as_str(),
        None => {
            return Err(ApiError::bad(
                format!("{here}.type"),
                format!("'{here}.type' is required"),
            ))
        }
        Some(x) => return Err(wrong_type(&format!("{here}.type"), "a string", x)),
    };
    match kind {
        "text" => match o.get("text") {
            Some(Value::String(t)) => Ok(Part::Text { text: t.clone() }),
            Some(x) => Err(wrong_type(&format!("{here}.text"), "a string", x)),
            None => Err(ApiError::bad(
                format!("{here}.text"),
                format!("'{here}.text' is required"),
            )),
        },
        "image_url" => {
            let url = match o.get("image_url") {
                Some(Value::String(u)) => u.clone(),
                Some(Value::Object(io)) => match io.get("url") {
                    Some(Value::String(u)) => u.clone(),
                    Some(x) => {
                        return Err(wrong_type(&format!("{here}.image_url.url"), "a string", x))
                    }
                    None => {
                        return Err(ApiError::bad(
                            format!("{here}.image_url.url"),
                            format!("'{here}.image_url.url' is required"),
                        ))
                    }
                },
                Some(x) => return Err(wrong_type(&format!("{here}.image_url"), "an object", x)),
                None => {
                    return Err(ApiError::bad(
                        format!("{here}.image_url"),
                        format!("'{here}.image_url' is required"),
                    ))
                }
            };
            let param = format!("{here}.image_url.url");
            if crate::remote::is_remote(&url) {
                if remote_images {
                    return Ok(Part::ImageUrl {
                        image_url: ImageUrl { url },
                    });
                }
                return Err(ApiError::bad(
                    param,
                    "remote image URLs are not fetched by this server (it was started without \
                     --allow-remote-images); send the image inline as a data: URL \
                     (data:image/png;base64,...)",
                )
                .with_code("remote_image_refused"));
            }
            if !url.starts_with("data:") {
                return Err(ApiError::bad(
                    param,
                    "only data: URLs (data:image/png;base64,...) are accepted as images",
                )
                .with_code("invalid_image_url"));
            }
            Ok(Part::ImageUrl {
                image_url: ImageUrl { url },
            })
        }
        other => Err(ApiError::bad(
            format!("{here}.type"),
            format!("content part type {other:?} is not supported (text or image_url)"),
        )),
    }
}

/// Number of image parts in the messages.
pub fn count_images(messages: &[ChatMessage]) -> usize {
    messages
        .iter()
        .map(|m| match &m.content {
            Content::Parts(ps) => ps
                .iter()
                .filter(|p| matches!(p, Part::ImageUrl { .. }))
                .count(),
            Content::Text(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_types_name_the_field() {
        let e = parse_chat_request(
            br#"{"messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#,
        )
        .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = parse_chat_request(br#"{"messages":[{"role":"user","content":5}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        let e = parse_chat_request(br#"{"messages":"x"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = parse_chat_request(b"{not json").unwrap_err();
        assert_eq!(e.code, Some("invalid_json"));
    }

    #[test]
    fn parses_a_full_request() {
        let r = parse_chat_request(
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}],
            "max_completion_tokens":7,"temperature":0,"seed":3,"stop":"x","stream":true,
            "stream_options":{"include_usage":true},"n":1}"#,
        )
        .unwrap();
        assert_eq!(r.max_tokens, Some(7));
        assert!(r.is_deterministic());
        assert_eq!(r.stop, vec!["x".to_string()]);
        assert!(r.stream && r.include_usage);
        assert_eq!(count_images(&r.messages), 1);
    }

    #[test]
    fn refuses_remote_images_and_bad_n() {
        let e = parse_chat_request(
            br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, Some("remote_image_refused"));
        for n in ["0", "17", "-1"] {
            let body = format!(r#"{{"messages":[{{"role":"user","content":"a"}}],"n":{n}}}"#);
            let e = parse_chat_request(body.as_bytes()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("n"), "{n}");
        }
        let r =
            parse_chat_request(br#"{"messages":[{"role":"user","content":"a"}],"n":3}"#).unwrap();
        assert_eq!(r.n, 3);
    }
}
