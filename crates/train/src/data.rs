//! Training examples: a rendered shapes image with one question, turned into token ids and
//! patches through the same prompt builder and preprocessing that inference uses.

use crate::shapes::{self, QuestionBalancer, ShapesRng};
use pixlm_engine::prompt::{expand_images, neo_prompt};
use pixlm_engine::{ChatMessage, Content, ImageUrl, Part};
use pixlm_media::PreprocessConfig;
use pixlm_models::ImageInput;
use tokenizers::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("building the prompt: {0}")]
    Prompt(#[from] pixlm_engine::EngineError),
    #[error("preprocessing: {0}")]
    Media(#[from] pixlm_media::MediaError),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// One supervised sequence.
#[derive(Clone, Debug)]
pub struct Example {
    pub ids: Vec<u32>,
    pub images: Vec<ImageInput>,
    /// (position, target id): the logits at `position` should predict `target`. Only the
    /// assistant's answer and its `<|im_end|>` are supervised.
    pub targets: Vec<(usize, u32)>,
    pub kind: String,
}

/// The user message for a question about one image, as `pixlm run --image` builds it.
pub fn question_message(image_url: &str, question: &str) -> ChatMessage {
    ChatMessage {
        role: "user".into(),
        content: Content::Parts(vec![
            Part::ImageUrl {
                image_url: ImageUrl {
                    url: image_url.into(),
                },
            },
            Part::Text {
                text: question.into(),
            },
        ]),
    }
}

/// Builds the example for (image, question, answer).
pub fn build_example(
    tok: &Tokenizer,
    pre: &PreprocessConfig,
    img: &image::RgbImage,
    question: &str,
    answer: &str,
    kind: &str,
) -> Result<Example, DataError> {
    let patches = pixlm_media::preprocess(img, pre)?;
    build_conversation(
        tok,
        &patches,
        &[(question.into(), answer.into(), kind.into())],
    )
}

/// Draws `n` fresh sequences. Each rendered image becomes one conversation holding up to
/// `per_image` of its questions as successive user/assistant turns (the `build_history`
/// layout NEO uses for several turns), so the image is encoded once for several supervised
/// answers. The first turn is exactly the single-question prompt that `pixlm run` and
/// `pixlm eval` build.
pub fn draw_batch(
    rng: &mut ShapesRng,
    balancer: &mut QuestionBalancer,
    tok: &Tokenizer,
    pre: &PreprocessConfig,
    n: usize,
    per_image: usize,
) -> Result<Vec<Example>, DataError> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let (img, qs) = shapes::sample_balanced_example(rng, balancer, per_image);
        let patches = pixlm_media::preprocess(&img, pre)?;
        out.push(build_conversation(tok, &patches, &qs)?);
    }
    Ok(out)
}

/// One conversation about one image: `qa` as (question, answer, kind) turns; every answer and
/// its `<|im_end|>` are supervised.
pub fn build_conversation(
    tok: &Tokenizer,
    patches: &pixlm_media::Patches,
    qa: &[(String, String, String)],
) -> Result<Example, DataError> {
    let enc = |s: &str| -> Result<Vec<u32>, DataError> {
        tok.encode(s, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| DataError::Tokenizer(e.to_string()))
    };
    let mut ids = Vec::new();
    let mut targets = Vec::new();
    for (i, (q, a, _)) in qa.iter().enumerate() {
        let prompt = if i == 0 {
            let parts = neo_prompt(&[question_message("image", q)])?;
            expand_images(&parts.text, &[patches.num_tokens()])
        } else {
            format!("\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")
        };
        ids.extend(enc(&prompt)?);
        let answer = enc(&format!("{a}<|im_end|>"))?;
        let start = ids.len();
        targets.extend((0..answer.len()).map(|k| (start + k - 1, answer[k])));
        ids.extend(answer);
    }
    Ok(Example {
        ids,
        images: vec![ImageInput {
            pixels: patches.data.clone(),
            grid_h: patches.grid_h,
            grid_w: patches.grid_w,
        }],
        targets,
        kind: qa.first().map(|q| q.2.clone()).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer_train::build_tokenizer;

    #[test]
    fn conversation_matches_the_engine_prompt() {
        let tok = build_tokenizer();
        let pre = PreprocessConfig {
            min_pixels: 16384,
            max_pixels: 16384,
            ..Default::default()
        };
        let img = image::RgbImage::from_pixel(128, 128, image::Rgb([255, 255, 255]));
        let patches = pixlm_media::preprocess(&img, &pre).unwrap();
        let qa = vec![
            (
                "What color is the circle?".to_string(),
                "red".to_string(),
                "color".to_string(),
            ),
            (
                "How many objects are there?".to_string(),
                "2".to_string(),
                "count_all".to_string(),
            ),
        ];
        let ex = build_conversation(&tok, &patches, &qa).unwrap();
        let msgs = vec![
            question_message("image", &qa[0].0),
            ChatMessage::text("assistant", "red"),
            ChatMessage::text("user", qa[1].0.clone()),
        ];
        let parts = neo_prompt(&msgs).unwrap();
        let full = expand_images(&parts.text, &[patches.num_tokens()]) + "2<|im_end|>";
        let want = tok.encode(full.as_str(), false).unwrap().get_ids().to_vec();
        assert_eq!(ex.ids, want);
        // Supervised: each answer token and its <|im_end|>, predicted from the previous position.
        assert_eq!(ex.targets.len(), 4);
        for &(p, t) in &ex.targets {
            assert_eq!(ex.ids[p + 1], t);
        }
    }
}
