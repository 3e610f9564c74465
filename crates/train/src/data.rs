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
    build_example_from_patches(tok, &patches, question, answer, kind)
}

/// Draws `n` fresh examples: each rendered image serves `per_image` questions, balanced over
/// kinds and answers by `balancer`.
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
        let (img, qs) =
            shapes::sample_balanced_example(rng, balancer, per_image.min(n - out.len()));
        let patches = pixlm_media::preprocess(&img, pre)?;
        for (q, a, k) in qs {
            out.push(build_example_from_patches(tok, &patches, &q, &a, &k)?);
        }
    }
    Ok(out)
}

fn build_example_from_patches(
    tok: &Tokenizer,
    patches: &pixlm_media::Patches,
    question: &str,
    answer: &str,
    kind: &str,
) -> Result<Example, DataError> {
    let parts = neo_prompt(&[question_message("image", question)])?;
    let prompt = expand_images(&parts.text, &[patches.num_tokens()]);
    let enc = |s: &str| -> Result<Vec<u32>, DataError> {
        tok.encode(s, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| DataError::Tokenizer(e.to_string()))
    };
    let mut ids = enc(&prompt)?;
    let answer_ids = enc(&format!("{answer}<|im_end|>"))?;
    let start = ids.len();
    ids.extend_from_slice(&answer_ids);
    let targets = (0..answer_ids.len())
        .map(|i| (start + i - 1, answer_ids[i]))
        .collect();
    Ok(Example {
        ids,
        images: vec![ImageInput {
            pixels: patches.data.clone(),
            grid_h: patches.grid_h,
            grid_w: patches.grid_w,
        }],
        targets,
        kind: kind.into(),
    })
}
