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

use crate::error::{EngineError, Result};
use crate::messages::{ChatMessage, Part};

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
    if history.len() % 2 != 0
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
        assert!(p.text.contains("Image-1: <image>\nImage-2: <image>\n<Image-1>vs<Image-2>"));
    }

    #[test]
    fn system_block_only_when_non_empty() {
        let p = neo_prompt(&[
            ChatMessage::text("system", "Reason step by step."),
            ChatMessage::text("user", "hi"),
        ])
        .unwrap();
        assert!(p.text.starts_with("<|im_start|>system\nReason step by step.<|im_end|>\n"));
        let p = neo_prompt(&[ChatMessage::text("system", ""), ChatMessage::text("user", "hi")]).unwrap();
        assert_eq!(p.text, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
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
        assert!(neo_prompt(&[ChatMessage::text("user", "a"), ChatMessage::text("user", "b")]).is_err());
    }

    #[test]
    fn expansion() {
        assert_eq!(
            expand_images("x<image>y<image>", &[1, 2]),
            "x<img><IMG_CONTEXT></img>y<img><IMG_CONTEXT><IMG_CONTEXT></img>"
        );
    }
}
