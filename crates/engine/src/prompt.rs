//! From messages to a prompt string with `<image>` placeholders, then to token ids with the
//! placeholders expanded (NEO spec §2, §10; fixtures README §3.1).
//!
//! NEO follows VLMEvalKit's `NEOChat` routes exactly, since those built the reference prompts:
//! - one user turn (`generate_inner` → `reorganize_prompt`): one image → `"<image>\n"` + the
//!   text parts joined by `"\n"` (the image moves to the front); several images →
//!   `"Image-1: <image>\nImage-2: <image>\n…"` + the parts concatenated, each image part
//!   written as `<Image-k>`, and the run `<Image-1>…<Image-k>` removed when the images are
//!   adjacent; no image → the text parts concatenated.
//! - several turns (`build_history` + `chat(history=…)`): each earlier message's parts
//!   concatenated with an image part as `"<image>\n"` and `Image<N>` rewritten `Image-<N>`;
//!   the last user message likewise.
//! - template `neo1_0`: an optional system block, `<|im_start|>{role}\n…<|im_end|>\n` per
//!   turn, and an open `<|im_start|>assistant\n`.
//!
//! Text models (Qwen3, Qwen3-MoE) build their prompt from the checkpoint's own chat template
//! (`chat_template` in `tokenizer_config.json`, or `chat_template.jinja`), rendered with
//! minijinja set up as Hugging Face's `apply_chat_template` sets up Jinja2: `trim_blocks`,
//! `lstrip_blocks`, Python string/dict methods (`.startswith`, `.split`, `.strip`, …),
//! `raise_exception`, and a `tojson` that writes what Python's `json.dumps` writes.

use crate::error::{EngineError, Result};
use crate::messages::{ChatMessage, Content, Part};
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};
use serde_json::{Map, Value as Json};
use std::path::Path;

/// A prompt with `<image>` placeholders and the image URLs in placeholder order.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptParts {
    pub text: String,
    pub images: Vec<String>,
}

pub const IMAGE_PLACEHOLDER: &str = "<image>";

fn fix_image_refs(s: &str) -> String {
    // re.sub(r'Image(\d+)', r'Image-\1', s)
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with("Image") && b.get(i + 5).is_some_and(|c| c.is_ascii_digit()) {
            out.push_str("Image-");
            i += 5;
        } else {
            let ch = s[i..].chars().next().unwrap_or_default();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn concat_turn(parts: &[Part], images: &mut Vec<String>) -> String {
    let mut s = String::new();
    for p in parts {
        match p {
            Part::Text { text } => s.push_str(&fix_image_refs(text)),
            Part::ImageUrl { image_url } => {
                s.push_str("<image>\n");
                images.push(image_url.url.clone());
            }
        }
    }
    s
}

fn single_turn_question(parts: &[Part], images: &mut Vec<String>) -> String {
    let n_img = parts
        .iter()
        .filter(|p| matches!(p, Part::ImageUrl { .. }))
        .count();
    for p in parts {
        if let Part::ImageUrl { image_url } = p {
            images.push(image_url.url.clone());
        }
    }
    let texts = parts.iter().filter_map(|p| match p {
        Part::Text { text } => Some(text.as_str()),
        _ => None,
    });
    if n_img == 1 {
        return format!("<image>\n{}", texts.collect::<Vec<_>>().join("\n"));
    }
    let mut body = String::new();
    let mut k = 1;
    for p in parts {
        match p {
            Part::Text { text } => body.push_str(text),
            Part::ImageUrl { .. } => {
                body.push_str(&format!("<Image-{k}>"));
                k += 1;
            }
        }
    }
    let mut head = String::new();
    for i in 1..=n_img {
        head.push_str(&format!("Image-{i}: <image>\n"));
    }
    let run: String = (1..=n_img).map(|i| format!("<Image-{i}>")).collect();
    let q = head + &body;
    if n_img > 0 {
        q.replace(&run, "")
    } else {
        q
    }
}

/// Builds the `neo1_0` prompt from OpenAI-style messages.
pub fn neo_prompt(messages: &[ChatMessage]) -> Result<PromptParts> {
    let mut system = String::new();
    let mut turns: Vec<&ChatMessage> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        match m.role.as_str() {
            "system" | "developer" => {
                if !turns.is_empty() {
                    return Err(EngineError::Request(format!(
                        "messages[{i}]: a system message must come before the conversation"
                    )));
                }
                if m.parts().iter().any(|p| matches!(p, Part::ImageUrl { .. })) {
                    return Err(EngineError::Request(format!(
                        "messages[{i}]: images are not allowed in a system message"
                    )));
                }
                system.push_str(&m.text_content());
            }
            "user" | "assistant" => turns.push(m),
            other => {
                return Err(EngineError::Request(format!(
                    "messages[{i}]: unknown role {other:?} (expected system, user or assistant)"
                )))
            }
        }
    }
    let Some(last) = turns.last() else {
        return Err(EngineError::Request("no user message".into()));
    };
    if last.role != "user" {
        return Err(EngineError::Request(
            "the last message must be from the user".into(),
        ));
    }
    let history = &turns[..turns.len() - 1];
    if !history.len().is_multiple_of(2)
        || history
            .chunks(2)
            .any(|c| c[0].role != "user" || c[1].role != "assistant")
    {
        return Err(EngineError::Request(
            "messages must alternate user, assistant, …, user".into(),
        ));
    }
    let mut images = Vec::new();
    let mut text = String::new();
    if !system.is_empty() {
        text.push_str(&format!("<|im_start|>system\n{system}<|im_end|>\n"));
    }
    let last_parts = last.parts();
    if history.is_empty() {
        let q = single_turn_question(&last_parts, &mut images);
        text.push_str(&format!("<|im_start|>user\n{q}<|im_end|>\n"));
    } else {
        for pair in history.chunks(2) {
            let q = concat_turn(&pair[0].parts(), &mut images);
            let a = concat_turn(&pair[1].parts(), &mut images);
            text.push_str(&format!(
                "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n"
            ));
        }
        let q = if let [Part::Text { text }] = last_parts.as_slice() {
            fix_image_refs(text)
        } else {
            concat_turn(&last_parts, &mut images)
        };
        text.push_str(&format!("<|im_start|>user\n{q}<|im_end|>\n"));
    }
    text.push_str("<|im_start|>assistant\n");
    let placeholders = text.matches(IMAGE_PLACEHOLDER).count();
    if placeholders < images.len() {
        return Err(EngineError::Request(format!(
            "{} images but only {placeholders} <image> placeholders in the prompt",
            images.len()
        )));
    }
    Ok(PromptParts { text, images })
}

/// Replaces the k-th `<image>` (first occurrence each time) with `<img>` + N_k ×
/// `<IMG_CONTEXT>` + `</img>`, as the reference's `chat()` does.
pub fn expand_images(prompt: &str, tokens_per_image: &[usize]) -> String {
    let mut out = prompt.to_string();
    for &n in tokens_per_image {
        let block = format!("<img>{}</img>", "<IMG_CONTEXT>".repeat(n));
        out = out.replacen(IMAGE_PLACEHOLDER, &block, 1);
    }
    out
}

/// A checkpoint's chat template with the special-token strings it may refer to.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatTemplate {
    /// The Jinja source.
    pub source: String,
    /// `bos_token`, `eos_token`, `pad_token`, `unk_token` as the template sees them.
    pub special_tokens: Map<String, Json>,
}

/// A special token in `tokenizer_config.json`: a string, or an object with `"content"`.
fn token_string(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

/// The template of a `chat_template` value: a string, or a list of `{name, template}`
/// (the one named `default`, else the first).
fn template_source(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Array(list) => {
            let named = |n: &str| {
                list.iter()
                    .find(|t| t.get("name").and_then(Json::as_str) == Some(n))
            };
            named("default")
                .or_else(|| list.first())
                .and_then(|t| t.get("template"))
                .and_then(Json::as_str)
                .map(str::to_string)
        }
        _ => None,
    }
}

fn read_json_file(path: &Path) -> Result<Option<Json>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| EngineError::Template(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::Template(format!("{}: {e}", path.display()))),
    }
}

impl ChatTemplate {
    /// Reads the chat template of a model directory: `chat_template` in
    /// `tokenizer_config.json`, else `chat_template.jinja`, else `chat_template.json`.
    /// `Ok(None)` when the directory has none.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = read_json_file(&cfg_path)?.unwrap_or(Json::Null);
        let mut special_tokens = Map::new();
        for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
            if let Some(t) = cfg.get(key).and_then(token_string) {
                special_tokens.insert(key.to_string(), Json::String(t));
            }
        }
        let mut source = cfg.get("chat_template").and_then(template_source);
        if source.is_none() {
            let jinja = dir.join("chat_template.jinja");
            match std::fs::read_to_string(&jinja) {
                Ok(t) => source = Some(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(EngineError::Template(format!("{}: {e}", jinja.display()))),
            }
        }
        if source.is_none() {
            if let Some(v) = read_json_file(&dir.join("chat_template.json"))? {
                source = v.get("chat_template").and_then(template_source);
            }
        }
        Ok(source.map(|source| Self {
            source,
            special_tokens,
        }))
    }

    /// Renders the prompt for `messages` (see [`render_chat_template`]).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        kwargs: &Map<String, Json>,
    ) -> Result<String> {
        let tok = |k: &str| self.special_tokens.get(k).and_then(Json::as_str);
        let mut extra = Map::new();
        for (k, v) in &self.special_tokens {
            if !matches!(k.as_str(), "bos_token" | "eos_token") {
                extra.insert(k.clone(), v.clone());
            }
        }
        extra.extend(kwargs.iter().map(|(k, v)| (k.clone(), v.clone())));
        render_chat_template(
            &self.source,
            messages,
            add_generation_prompt,
            &extra,
            tok("bos_token"),
            tok("eos_token"),
        )
    }
}

/// Messages as a text-only chat template sees them: `{role, content}` with string content.
/// Text parts are concatenated; an image part is refused.
fn text_messages(messages: &[ChatMessage]) -> Result<Vec<Json>> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let content = match &m.content {
                Content::Text(t) => t.clone(),
                Content::Parts(parts) => {
                    if parts.iter().any(|p| matches!(p, Part::ImageUrl { .. })) {
                        return Err(EngineError::Request(format!(
                            "messages[{i}]: this is a text-only model; image parts are not accepted"
                        )));
                    }
                    m.text_content()
                }
            };
            let mut o = Map::new();
            o.insert("role".into(), Json::String(m.role.clone()));
            o.insert("content".into(), Json::String(content));
            Ok(Json::Object(o))
        })
        .collect()
}

/// Writes a string as Python's `json.dumps` does (`ensure_ascii` escapes non-ASCII).
fn py_json_str(s: &str, ensure_ascii: bool, out: &mut String) {
    let quoted = serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    if !ensure_ascii {
        out.push_str(&quoted);
        return;
    }
    for c in quoted.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for u in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
}

struct PyJson {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

impl PyJson {
    fn newline(&self, level: usize, out: &mut String) {
        if let Some(ind) = &self.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    }

    fn write(
        &self,
        v: &Value,
        level: usize,
        out: &mut String,
    ) -> std::result::Result<(), minijinja::Error> {
        match v.kind() {
            minijinja::value::ValueKind::String => {
                py_json_str(v.as_str().unwrap_or_default(), self.ensure_ascii, out)
            }
            minijinja::value::ValueKind::Seq | minijinja::value::ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(level + 1, out);
                    self.write(item, level + 1, out)?;
                }
                self.newline(level, out);
                out.push(']');
            }
            minijinja::value::ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                if keys.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(level + 1, out);
                    match k.as_str() {
                        Some(s) => py_json_str(s, self.ensure_ascii, out),
                        None => py_json_str(&k.to_string(), self.ensure_ascii, out),
                    }
                    out.push_str(&self.key_sep);
                    self.write(&v.get_item(k)?, level + 1, out)?;
                }
                self.newline(level, out);
                out.push('}');
            }
            minijinja::value::ValueKind::Undefined | minijinja::value::ValueKind::None => {
                out.push_str("null")
            }
            _ => {
                out.push_str(&serde_json::to_string(v).map_err(|e| {
                    minijinja::Error::new(ErrorKind::BadSerialization, e.to_string())
                })?)
            }
        }
        Ok(())
    }
}

/// `tojson` as Hugging Face defines it for chat templates: Python's `json.dumps(x,
/// ensure_ascii=False, indent=None, separators=None, sort_keys=False)` (so `", "` and
/// `": "` between items, non-ASCII kept, keys in insertion order).
fn tojson_filter(v: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(i) if i.is_none() || i.is_undefined() => None,
        Some(i) => match (i.as_str(), i.as_i64()) {
            (Some(s), _) => Some(s.to_string()),
            (None, Some(n)) => Some(" ".repeat(n.max(0) as usize)),
            _ => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be a number or a string",
                ))
            }
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        Some(_) => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair (item, key)",
            ))
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let w = PyJson {
        indent,
        item_sep,
        key_sep,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    w.write(&v, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn template_error(e: minijinja::Error) -> EngineError {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    EngineError::Template(msg)
}

/// Renders a Hugging Face chat template, as `tokenizer.apply_chat_template(messages,
/// tokenize=False, add_generation_prompt=…, **kwargs)` does: the template sees `messages`
/// (`{role, content}` with string content), `add_generation_prompt`, `tools` and `documents`
/// (none unless given in `kwargs`), `bos_token`/`eos_token`, and every entry of `kwargs`
/// (e.g. `enable_thinking: false`).
pub fn render_chat_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    kwargs: &Map<String, Json>,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<String> {
    for reserved in ["messages", "add_generation_prompt"] {
        if kwargs.contains_key(reserved) {
            return Err(EngineError::Request(format!(
                "chat template kwargs may not set {reserved:?}"
            )));
        }
    }
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("tojson", tojson_filter);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    let tmpl = env.template_from_str(template).map_err(template_error)?;
    let mut ctx = Map::new();
    ctx.insert("messages".into(), Json::Array(text_messages(messages)?));
    ctx.insert("tools".into(), Json::Null);
    ctx.insert("documents".into(), Json::Null);
    ctx.insert(
        "add_generation_prompt".into(),
        Json::Bool(add_generation_prompt),
    );
    if let Some(b) = bos_token {
        ctx.insert("bos_token".into(), Json::String(b.into()));
    }
    if let Some(e) = eos_token {
        ctx.insert("eos_token".into(), Json::String(e.into()));
    }
    ctx.extend(kwargs.iter().map(|(k, v)| (k.clone(), v.clone())));
    tmpl.render(Value::from_serialize(&ctx))
        .map_err(template_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Content, ImageUrl};

    fn img(u: &str) -> Part {
        Part::ImageUrl {
            image_url: ImageUrl { url: u.into() },
        }
    }
    fn txt(t: &str) -> Part {
        Part::Text { text: t.into() }
    }
    fn user(parts: Vec<Part>) -> ChatMessage {
        ChatMessage {
            role: "user".into(),
            content: Content::Parts(parts),
        }
    }

    #[test]
    fn single_image_moves_to_front() {
        let p = neo_prompt(&[user(vec![txt("What is"), img("a.png"), txt("this?")])]).unwrap();
        assert_eq!(
            p.text,
            "<|im_start|>user\n<image>\nWhat is\nthis?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(p.images, vec!["a.png"]);
    }

    #[test]
    fn two_adjacent_images() {
        let p = neo_prompt(&[user(vec![img("a"), img("b"), txt("Compare.")])]).unwrap();
        assert_eq!(
            p.text,
            "<|im_start|>user\nImage-1: <image>\nImage-2: <image>\nCompare.<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn interleaved_images_keep_markers() {
        let p = neo_prompt(&[user(vec![img("a"), txt("vs"), img("b")])]).unwrap();
        assert!(p
            .text
            .contains("Image-1: <image>\nImage-2: <image>\n<Image-1>vs<Image-2>"));
    }

    #[test]
    fn system_block_only_when_non_empty() {
        let p = neo_prompt(&[
            ChatMessage::text("system", "Reason step by step."),
            ChatMessage::text("user", "hi"),
        ])
        .unwrap();
        assert!(p
            .text
            .starts_with("<|im_start|>system\nReason step by step.<|im_end|>\n"));
        let p = neo_prompt(&[
            ChatMessage::text("system", ""),
            ChatMessage::text("user", "hi"),
        ])
        .unwrap();
        assert_eq!(
            p.text,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn multi_turn_history() {
        let p = neo_prompt(&[
            user(vec![img("a"), txt("Describe Image1.")]),
            ChatMessage::text("assistant", "A cat."),
            ChatMessage::text("user", "Color?"),
        ])
        .unwrap();
        assert_eq!(
            p.text,
            "<|im_start|>user\n<image>\nDescribe Image-1.<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n<|im_start|>user\nColor?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn bad_orders_refused() {
        assert!(neo_prompt(&[]).is_err());
        assert!(neo_prompt(&[ChatMessage::text("assistant", "x")]).is_err());
        assert!(neo_prompt(&[ChatMessage::text("tool", "x")]).is_err());
        assert!(neo_prompt(&[
            ChatMessage::text("user", "a"),
            ChatMessage::text("user", "b")
        ])
        .is_err());
    }

    fn render(t: &str, msgs: &[ChatMessage], kwargs: Json) -> Result<String> {
        let Json::Object(kw) = kwargs else { panic!() };
        render_chat_template(t, msgs, true, &kw, Some("<s>"), Some("</s>"))
    }

    #[test]
    fn template_sees_messages_tokens_and_kwargs() {
        let t = "{{ bos_token }}{% for m in messages %}[{{ m.role }}:{{ m.content.strip() }}]{% endfor %}\
                 {% if add_generation_prompt %}>{% endif %}{{ extra | default('-') }}{{ eos_token }}";
        let msgs = [
            ChatMessage::text("system", " sys "),
            ChatMessage::text("user", "hi"),
        ];
        assert_eq!(
            render(t, &msgs, serde_json::json!({})).unwrap(),
            "<s>[system:sys][user:hi]>-</s>"
        );
        assert_eq!(
            render(t, &msgs, serde_json::json!({"extra": 7})).unwrap(),
            "<s>[system:sys][user:hi]>7</s>"
        );
        // Text parts are joined; images are refused by a text template.
        let parts = user(vec![txt("a"), txt("b")]);
        assert_eq!(
            render(t, &[parts], serde_json::json!({})).unwrap(),
            "<s>[user:ab]>-</s>"
        );
        let e = render(
            t,
            &[user(vec![img("x.png"), txt("b")])],
            serde_json::json!({}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("text-only"), "{e}");
        assert!(render(t, &msgs, serde_json::json!({"messages": []})).is_err());
    }

    #[test]
    fn trim_and_lstrip_blocks_like_hf() {
        let t = "{% for m in messages %}\n    {% if m.role == 'user' %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}\n";
        let out = render(
            t,
            &[
                ChatMessage::text("user", "x"),
                ChatMessage::text("user", "y"),
            ],
            serde_json::json!({}),
        )
        .unwrap();
        assert_eq!(out, "x\ny\n");
    }

    #[test]
    fn python_methods_and_slices() {
        let t = "{% set c = messages[0].content %}{{ c.split('</think>')[-1].lstrip('\\n') }}|\
                 {{ c.startswith('<think>') }}|{{ c.endswith('!') }}|{{ (messages[::-1])[0].role }}|\
                 {{ c.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}";
        let msgs = [
            ChatMessage::text("assistant", "<think>\nhmm\n</think>\n\nHi!"),
            ChatMessage::text("user", "q"),
        ];
        assert_eq!(
            render(t, &msgs, serde_json::json!({})).unwrap(),
            "Hi!|True|True|user|hmm"
        );
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let t = "{{ tool | tojson }}|{{ tool | tojson(indent=2) }}|{{ 'é\"' | tojson }}|{{ [] | tojson }}|{{ 1.5 | tojson }}";
        let out = render(
            t,
            &[],
            serde_json::json!({"tool": {"name": "f", "args": [1, true, null]}}),
        )
        .unwrap();
        let parts: Vec<&str> = out.split('|').collect();
        // Keys come out sorted here because serde_json (without preserve_order) sorts them.
        assert_eq!(parts[0], r#"{"args": [1, true, null], "name": "f"}"#);
        assert_eq!(
            parts[1],
            "{\n  \"args\": [\n    1,\n    true,\n    null\n  ],\n  \"name\": \"f\"\n}"
        );
        assert_eq!(parts[2], r#""é\"""#);
        assert_eq!(parts[3], "[]");
        assert_eq!(parts[4], "1.5");
    }

    #[test]
    fn raise_exception_is_a_template_error() {
        let e = render(
            "{{ raise_exception('only user and assistant roles') }}",
            &[],
            serde_json::json!({}),
        )
        .unwrap_err();
        assert!(matches!(e, EngineError::Template(_)), "{e}");
        assert!(
            e.to_string().contains("only user and assistant roles"),
            "{e}"
        );
        assert!(render("{% if %}", &[], serde_json::json!({})).is_err());
    }

    #[test]
    fn loads_template_forms() {
        let tmp = tempfile::tempdir().expect("a scratch directory");
        let d = tmp.path();
        std::fs::write(
            d.join("tokenizer_config.json"),
            r#"{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "pad_token": null,
                "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}D{{ eos_token }}"}]}"#,
        )
        .unwrap();
        let t = ChatTemplate::load(d).unwrap().unwrap();
        assert_eq!(t.source, "{{ bos_token }}D{{ eos_token }}");
        assert_eq!(t.render(&[], true, &Map::new()).unwrap(), "<s>D</s>");
        // No template in the config: chat_template.jinja is used; neither: None.
        std::fs::write(d.join("tokenizer_config.json"), r#"{"eos_token": "</s>"}"#).unwrap();
        assert!(ChatTemplate::load(d).unwrap().is_none());
        std::fs::write(d.join("chat_template.jinja"), "J{{ eos_token }}").unwrap();
        let t = ChatTemplate::load(d).unwrap().unwrap();
        assert_eq!(t.render(&[], true, &Map::new()).unwrap(), "J</s>");
        std::fs::write(d.join("tokenizer_config.json"), "{not json").unwrap();
        assert!(ChatTemplate::load(d).is_err());
    }

    #[test]
    fn expansion() {
        assert_eq!(
            expand_images("x<image>y<image>", &[1, 2]),
            "x<img><IMG_CONTEXT></img>y<img><IMG_CONTEXT><IMG_CONTEXT></img>"
        );
    }
}
