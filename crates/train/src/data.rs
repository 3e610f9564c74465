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
    /// The question kind of each of `targets` (the turn it answers): `color`, ...,
    /// `left_of`, or `describe`; training may weigh answer tokens by kind.
    pub target_kinds: Vec<String>,
    /// Auxiliary targets on image tokens, (position, word id): the colour and the shape word
    /// of the object covering that token (see [`token_objects`]). Training weighs them by
    /// `TrainConfig::aux_weight`; empty unless the scene is known.
    pub aux: Vec<(usize, u32)>,
    /// The objects of the example's images with the image tokens each covers (the targets
    /// of the training-only object-shape head, `TrainConfig::stem_aux_weight`); empty unless
    /// the scene is known.
    pub objects: Vec<ObjectTokens>,
    /// Per turn, the position whose logits predict the turn's first answer token.
    pub turn_queries: Vec<usize>,
    /// Training-only attention targets (`TrainConfig::attn_aux_weight`): at a turn's answer
    /// position, which image tokens a query head should attend to (those of the objects the
    /// question names); empty unless the scene is known.
    pub attn_targets: Vec<AttnTarget>,
    pub kind: String,
}

/// Where one query head should look: at position `query`, head `head` should put its
/// attention on the positions `keys` (image tokens of the objects a question names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttnTarget {
    pub query: usize,
    pub head: usize,
    pub keys: Vec<u32>,
    /// The kind of the question whose answer position `query` is.
    pub kind: String,
}

/// One object of an example's image: its shape and the image tokens it covers.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectTokens {
    /// Which of the example's images.
    pub image: usize,
    /// Rows of that image's tokens (row-major over the merged grid) the object covers most
    /// of, as [`token_objects`] assigns them; never empty.
    pub tokens: Vec<u32>,
    /// Index into [`shapes::Shape::ALL`].
    pub shape: u32,
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

/// The turns each conversation of [`draw_batch`] asks about its image.
#[derive(Clone, Copy, Debug)]
pub struct Turns {
    /// Task questions (the spec's kinds).
    pub per_image: usize,
    /// Also ask [`shapes::DESCRIBE_QUESTION`].
    pub describe: bool,
    /// Training-only [`shapes::count_pair_for`] questions.
    pub pair_counts: usize,
    /// Training-only [`shapes::position_for`] questions (where the scene allows).
    pub positions: usize,
    /// The auxiliary image-token targets also name the covering object's position (see
    /// [`image_token_targets`]).
    pub aux_positions: bool,
}

/// Draws `n` fresh sequences. Each rendered image becomes one conversation holding up to
/// `turns.per_image` of its questions as successive user/assistant turns (the `build_history`
/// layout NEO uses for several turns), so the image is encoded once for several supervised
/// answers. The first turn is exactly the single-question prompt that `pixlm run` and
/// `pixlm eval` build.
///
/// With `turns.describe`, each conversation also asks [`shapes::DESCRIBE_QUESTION`]: as its last
/// turn, or (one conversation in [`DESCRIBE_ONLY`]) as its only turn, so that the model also
/// answers it first. It comes last otherwise so that no task question is answered with a
/// description of the image already in context, which the evaluation never has.
///
/// The training-only questions (`turns.pair_counts`, `turns.positions`) join each
/// conversation's task questions, in random places among them.
pub fn draw_batch(
    rng: &mut ShapesRng,
    balancer: &mut QuestionBalancer,
    tok: &Tokenizer,
    pre: &PreprocessConfig,
    n: usize,
    turns: Turns,
) -> Result<Vec<Example>, DataError> {
    use rand::Rng;
    let Turns {
        per_image,
        describe,
        pair_counts,
        positions,
        aux_positions,
    } = turns;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let only = describe && rng.random_bool(DESCRIBE_ONLY);
        let asked = if only { 0 } else { per_image };
        let (scene, img, mut qs) = shapes::sample_balanced_example_with_scene(rng, balancer, asked);
        if !only {
            for _ in 0..pair_counts {
                let at = rng.random_range(0..=qs.len());
                qs.insert(at, shapes::count_pair_for(&scene, rng));
            }
            for _ in 0..positions {
                if let Some(q) = shapes::position_for(&scene, rng) {
                    let at = rng.random_range(0..=qs.len());
                    qs.insert(at, q);
                }
            }
        }
        if describe {
            qs.push((
                shapes::DESCRIBE_QUESTION.to_string(),
                shapes::describe_answer(&scene),
                shapes::DESCRIBE_KIND.to_string(),
            ));
        }
        let patches = pixlm_media::preprocess(&img, pre)?;
        let mut ex = build_conversation(tok, &patches, &qs)?;
        ex.aux = image_token_targets(tok, &ex.ids, &scene, &patches, aux_positions)?;
        ex.objects = object_tokens(&scene, &patches, 0);
        ex.attn_targets = attention_targets(tok, &ex, &scene, &patches, &qs)?;
        out.push(ex);
    }
    Ok(out)
}

/// The objects of `scene` (image `image` of its example) with the tokens [`token_objects`]
/// gives them; objects that cover no token are left out.
pub fn object_tokens(
    scene: &shapes::Scene,
    patches: &pixlm_media::Patches,
    image: usize,
) -> Vec<ObjectTokens> {
    let owners = token_objects(scene, patches);
    scene
        .objects
        .iter()
        .enumerate()
        .filter_map(|(k, o)| {
            let tokens: Vec<u32> = (0..owners.len())
                .filter(|&i| owners[i] == Some(k))
                .map(|i| i as u32)
                .collect();
            let shape = shapes::Shape::ALL.iter().position(|&s| s == o.shape)? as u32;
            (!tokens.is_empty()).then_some(ObjectTokens {
                image,
                tokens,
                shape,
            })
        })
        .collect()
}

/// For each image token (row-major over the merged grid, the order the patch embedding emits
/// them), the index of the object covering most of the token's area when it covers at least
/// a quarter of it (estimated on an 8x8 grid of sample points in the original image).
pub fn token_objects(scene: &shapes::Scene, patches: &pixlm_media::Patches) -> Vec<Option<usize>> {
    const S: usize = 8;
    let (p, m) = (patches.patch_size, patches.merge_size.max(1));
    let (th, tw) = (patches.grid_h / m, patches.grid_w / m);
    let side = (p * m) as f32;
    let sx = scene.width as f32 / (patches.grid_w * p) as f32;
    let sy = scene.height as f32 / (patches.grid_h * p) as f32;
    let mut out = Vec::with_capacity(th * tw);
    for r in 0..th {
        for c in 0..tw {
            let mut counts = vec![0usize; scene.objects.len()];
            for i in 0..S {
                for j in 0..S {
                    let x = (c as f32 * side + (j as f32 + 0.5) * side / S as f32) * sx;
                    let y = (r as f32 * side + (i as f32 + 0.5) * side / S as f32) * sy;
                    for (k, o) in scene.objects.iter().enumerate() {
                        if o.sdf(x, y) <= 0.0 {
                            counts[k] += 1;
                        }
                    }
                }
            }
            let best = (0..counts.len()).max_by_key(|&k| (counts[k], std::cmp::Reverse(k)));
            out.push(best.filter(|&k| counts[k] * 4 >= S * S));
        }
    }
    out
}

/// Each `<IMG_CONTEXT>` position of `ids` with the object covering its token
/// ([`token_objects`]); an error when the prompt and the grid disagree on the token count.
fn image_token_owners(
    tok: &Tokenizer,
    ids: &[u32],
    scene: &shapes::Scene,
    patches: &pixlm_media::Patches,
) -> Result<Vec<(u32, Option<usize>)>, DataError> {
    let ctx = tok
        .token_to_id("<IMG_CONTEXT>")
        .ok_or_else(|| DataError::Tokenizer("no <IMG_CONTEXT> token".into()))?;
    let positions: Vec<u32> = (0..ids.len())
        .filter(|&i| ids[i] == ctx)
        .map(|i| i as u32)
        .collect();
    let owners = token_objects(scene, patches);
    if positions.len() != owners.len() {
        return Err(DataError::Tokenizer(format!(
            "{} image tokens in the prompt, {} in the grid",
            positions.len(),
            owners.len()
        )));
    }
    Ok(positions.into_iter().zip(owners).collect())
}

/// The auxiliary targets of one conversation: at each `<IMG_CONTEXT>` position whose token an
/// object covers, its colour word and its shape word, and with `with_positions` also the fifth of
/// the width holding its centre (`0` to `4`, [`shapes::position_fifth`]): the horizontal
/// position `left_of` compares, written into every token of the object.
fn image_token_targets(
    tok: &Tokenizer,
    ids: &[u32],
    scene: &shapes::Scene,
    patches: &pixlm_media::Patches,
    with_positions: bool,
) -> Result<Vec<(usize, u32)>, DataError> {
    let id = |s: &str| -> Result<u32, DataError> {
        let e = tok
            .encode(s, false)
            .map_err(|e| DataError::Tokenizer(e.to_string()))?;
        match e.get_ids() {
            [one] => Ok(*one),
            _ => Err(DataError::Tokenizer(format!("{s:?} is not one token"))),
        }
    };
    let mut out = Vec::new();
    for (pos, owner) in image_token_owners(tok, ids, scene, patches)? {
        let pos = pos as usize;
        if let Some(k) = owner {
            let o = &scene.objects[k];
            out.push((pos, id(o.color.name())?));
            out.push((pos, id(o.shape.name())?));
            if with_positions {
                out.push((pos, id(&shapes::position_fifth(o, scene).to_string())?));
            }
        }
    }
    Ok(out)
}

/// The object descriptors a question names, in order: a colour word and/or a shape word
/// (`red circle`, `triangle`, `red object`, `circles`). `How many objects are there?` names
/// none.
pub fn descriptors(question: &str) -> Vec<(Option<shapes::ColorName>, Option<shapes::Shape>)> {
    use shapes::{ColorName, Shape};
    let mut out = Vec::new();
    let mut color: Option<ColorName> = None;
    for word in question.split(|c: char| !c.is_ascii_alphabetic()) {
        if let Some(c) = ColorName::from_name(word) {
            color = Some(c);
            continue;
        }
        let shape =
            Shape::from_name(word).or_else(|| word.strip_suffix('s').and_then(Shape::from_name));
        if let Some(s) = shape {
            out.push((color.take(), Some(s)));
        } else if word == "object" {
            if let Some(c) = color.take() {
                out.push((Some(c), None));
            }
        }
    }
    out
}

/// The objects of `scene` with colour `c` and shape `s` (either may be left open).
fn matching(
    scene: &shapes::Scene,
    c: Option<shapes::ColorName>,
    s: Option<shapes::Shape>,
) -> Vec<usize> {
    (0..scene.objects.len())
        .filter(|&k| {
            let o = &scene.objects[k];
            c.is_none_or(|c| o.color == c) && s.is_none_or(|s| o.shape == s)
        })
        .collect()
}

/// The objects a question names, one group per [`descriptors`] entry; a descriptor that
/// matches no object (an `exists` question answered `no`) gives an empty group.
pub fn named_objects(scene: &shapes::Scene, question: &str) -> Vec<Vec<usize>> {
    descriptors(question)
        .into_iter()
        .map(|(c, s)| matching(scene, c, s))
        .collect()
}

/// The attention targets of one conversation (see [`Example::attn_targets`]): for each turn
/// whose question names objects, head 0 at the turn's answer position should look at the first
/// named group's image tokens and head 1 at the last's (the same group when one is named). A
/// colour-and-shape pair no object has sends head 0 to that colour's objects and head 1 to
/// that shape's. Turns naming no object, or a group with no covered token, get no target.
fn attention_targets(
    tok: &Tokenizer,
    ex: &Example,
    scene: &shapes::Scene,
    patches: &pixlm_media::Patches,
    qs: &[(String, String, String)],
) -> Result<Vec<AttnTarget>, DataError> {
    let owners = image_token_owners(tok, &ex.ids, scene, patches)?;
    let keys_of = |group: &[usize]| -> Vec<u32> {
        owners
            .iter()
            .filter(|(_, o)| o.is_some_and(|k| group.contains(&k)))
            .map(|&(p, _)| p)
            .collect()
    };
    let mut out = Vec::new();
    for ((q, _, kind), &query) in qs.iter().zip(&ex.turn_queries) {
        if kind == shapes::DESCRIBE_KIND {
            continue;
        }
        let descs = descriptors(q);
        let mut groups: Vec<Vec<usize>> =
            descs.iter().map(|&(c, s)| matching(scene, c, s)).collect();
        // A colour and shape that no object has together (`Is there a red circle?` answered
        // `no`): head 0 looks at the objects of that colour, head 1 at those of that shape,
        // the near misses the answer has to tell apart from a match.
        if let ([(Some(c), Some(s))], [g]) = (descs.as_slice(), groups.as_slice()) {
            if g.is_empty() {
                groups = vec![
                    matching(scene, Some(*c), None),
                    matching(scene, None, Some(*s)),
                ];
            }
        }
        let (Some(first), Some(last)) = (groups.first(), groups.last()) else {
            continue;
        };
        for (head, group) in [first, last].into_iter().enumerate() {
            let keys = keys_of(group);
            if !keys.is_empty() {
                out.push(AttnTarget {
                    query,
                    head,
                    keys,
                    kind: kind.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// The share of training conversations that only ask for the description.
pub const DESCRIBE_ONLY: f64 = 0.15;

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
    let mut target_kinds = Vec::new();
    let mut turn_queries = Vec::new();
    for (i, (q, a, kind)) in qa.iter().enumerate() {
        let prompt = if i == 0 {
            let parts = neo_prompt(&[question_message("image", q)])?;
            expand_images(&parts.text, &[patches.num_tokens()])
        } else {
            format!("\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")
        };
        ids.extend(enc(&prompt)?);
        let answer = enc(&format!("{a}<|im_end|>"))?;
        let start = ids.len();
        turn_queries.push(start - 1);
        targets.extend((0..answer.len()).map(|k| (start + k - 1, answer[k])));
        target_kinds.extend(std::iter::repeat_n(kind.clone(), answer.len()));
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
        target_kinds,
        aux: Vec::new(),
        objects: Vec::new(),
        turn_queries,
        attn_targets: Vec::new(),
        kind: qa.first().map(|q| q.2.clone()).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::{ColorName, ImageFormat, Object, Orientation, Scene, Shape};
    use crate::tokenizer_train::build_tokenizer;

    /// A 224x224 PNG scene (a 7x7 grid of 32-pixel tokens) of upright, aliased objects given
    /// as (shape, colour, centre, side).
    fn scene_224(objects: &[(Shape, ColorName, [f32; 2], f32)]) -> Scene {
        Scene {
            width: 224,
            height: 224,
            background: [250, 250, 250],
            noise: 0,
            noise_on_objects: false,
            objects: objects
                .iter()
                .map(|&(shape, color, center, side)| Object {
                    shape,
                    color,
                    rgb: color.reference_rgb(),
                    center,
                    size: [side, side],
                    orientation: Orientation::Up,
                    antialias: false,
                })
                .collect(),
            format: ImageFormat::Png,
        }
    }

    /// The patches of a blank 224x224 image (the token grid of [`scene_224`]).
    fn patches_224() -> pixlm_media::Patches {
        let pre = PreprocessConfig {
            min_pixels: 50176,
            max_pixels: 50176,
            ..Default::default()
        };
        let img = image::RgbImage::from_pixel(224, 224, image::Rgb([250, 250, 250]));
        pixlm_media::preprocess(&img, &pre).unwrap()
    }

    #[test]
    fn image_token_targets_name_the_covering_object() {
        let tok = build_tokenizer();
        // The square covers tokens (1..=2, 1..=2) exactly; the circle (centre of token
        // (5, 5), diameter 16) covers a fifth of one.
        let scene = scene_224(&[
            (Shape::Square, ColorName::Red, [64.0, 64.0], 64.0),
            (Shape::Circle, ColorName::Blue, [176.0, 176.0], 16.0),
        ]);
        let patches = patches_224();
        let owners = token_objects(&scene, &patches);
        assert_eq!(owners.len(), 49);
        for r in 0..7 {
            for c in 0..7 {
                let want = ((1..=2).contains(&r) && (1..=2).contains(&c)).then_some(0);
                assert_eq!(owners[r * 7 + c], want, "token ({r}, {c})");
            }
        }
        // The object-shape head pools exactly those tokens for the square (shape index 1);
        // the circle covers no token and is left out.
        assert_eq!(
            object_tokens(&scene, &patches, 0),
            vec![ObjectTokens {
                image: 0,
                tokens: vec![8, 9, 15, 16],
                shape: 1,
            }]
        );
        // In a conversation the targets sit on those tokens' positions: "red" and "square".
        let qa = vec![(
            "How many objects are there?".into(),
            "2".into(),
            "count_all".into(),
        )];
        let ex = build_conversation(&tok, &patches, &qa).unwrap();
        let aux = image_token_targets(&tok, &ex.ids, &scene, &patches, false).unwrap();
        assert_eq!(aux.len(), 8);
        let ctx = tok.token_to_id("<IMG_CONTEXT>").unwrap();
        let first = ex.ids.iter().position(|&t| t == ctx).unwrap();
        let red = tok.token_to_id("red").unwrap();
        let square = tok.token_to_id("square").unwrap();
        for (i, &(p, t)) in aux.iter().enumerate() {
            let k = p - first;
            assert!(
                (1..=2).contains(&(k / 7)) && (1..=2).contains(&(k % 7)),
                "{k}"
            );
            assert_eq!(t, if i % 2 == 0 { red } else { square });
        }
        // With positions, each token also names the fifth of the width holding the square's
        // centre (x = 64 of 224: the second fifth, `1`).
        let aux = image_token_targets(&tok, &ex.ids, &scene, &patches, true).unwrap();
        assert_eq!(aux.len(), 12);
        let one = tok.token_to_id("1").unwrap();
        for (i, &(_, t)) in aux.iter().enumerate() {
            assert_eq!(t, [red, square, one][i % 3]);
        }
    }

    #[test]
    fn questions_name_their_objects_and_heads_look_at_them() {
        let scene = scene_224(&[
            (Shape::Square, ColorName::Red, [64.0, 64.0], 64.0),
            (Shape::Circle, ColorName::Blue, [160.0, 160.0], 64.0),
            (Shape::Circle, ColorName::Red, [160.0, 48.0], 40.0),
        ]);
        let named = |q: &str| named_objects(&scene, q);
        assert_eq!(named("What color is the square?"), vec![vec![0]]);
        assert_eq!(named("What shape is the blue object?"), vec![vec![1]]);
        assert_eq!(named("How many circles are there?"), vec![vec![1, 2]]);
        assert_eq!(named("How many red circles are there?"), vec![vec![2]]);
        assert!(named("How many objects are there?").is_empty());
        assert_eq!(named("Is there a green circle?"), vec![Vec::<usize>::new()]);
        assert_eq!(
            named("Is the red square left of the blue circle?"),
            vec![vec![0], vec![1]]
        );
        assert_eq!(named("Where is the red circle?"), vec![vec![2]]);

        let tok = build_tokenizer();
        let patches = patches_224();
        let q = |s: &str, a: &str, k: &str| (s.to_string(), a.to_string(), k.to_string());
        let qs = vec![
            q("How many objects are there?", "3", "count_all"),
            q(
                "Is the red square left of the blue circle?",
                "yes",
                "left_of",
            ),
            q("Is there a green circle?", "no", "exists"),
            q("What color is the square?", "red", "color"),
            q("Is there a blue square?", "no", "exists"),
        ];
        let mut ex = build_conversation(&tok, &patches, &qs).unwrap();
        ex.attn_targets = attention_targets(&tok, &ex, &scene, &patches, &qs).unwrap();
        // Each turn's query is the position whose logits predict its first answer token.
        assert_eq!(ex.turn_queries.len(), 5);
        for (&p, (_, a, _)) in ex.turn_queries.iter().zip(&qs) {
            assert_eq!(ex.ids[p + 1], tok.token_to_id(a).unwrap());
        }
        let ctx = tok.token_to_id("<IMG_CONTEXT>").unwrap();
        let first = ex.ids.iter().position(|&t| t == ctx).unwrap() as u32;
        let owners = token_objects(&scene, &patches);
        let of = |k: usize| -> Vec<u32> {
            (0..owners.len())
                .filter(|&i| owners[i] == Some(k))
                .map(|i| first + i as u32)
                .collect()
        };
        // count_all names nothing; left_of: head 0 the red square, head 1 the blue circle;
        // no object is green (nor a green circle): head 0 gets nothing, head 1 the circles;
        // color: both heads the square; no blue square: head 0 the blue circle, head 1 the
        // red square.
        let t = |turn: usize, head: usize, keys: Vec<u32>| AttnTarget {
            query: ex.turn_queries[turn],
            head,
            keys,
            kind: qs[turn].2.clone(),
        };
        let mut circles = [of(1), of(2)].concat();
        circles.sort_unstable();
        let want = vec![
            t(1, 0, of(0)),
            t(1, 1, of(1)),
            t(2, 1, circles),
            t(3, 0, of(0)),
            t(3, 1, of(0)),
            t(4, 0, of(1)),
            t(4, 1, of(0)),
        ];
        assert_eq!(ex.attn_targets, want);
        assert!(!of(0).is_empty() && !of(1).is_empty());
    }

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
        // Each target carries the kind of the turn it answers.
        assert_eq!(
            ex.target_kinds,
            ["color", "color", "count_all", "count_all"]
        );
    }

    #[test]
    fn pair_counts_join_the_task_turns_before_the_description() {
        let tok = build_tokenizer();
        let pre = PreprocessConfig {
            min_pixels: 16384,
            max_pixels: 16384,
            ..Default::default()
        };
        let mut rng = shapes::rng_from_seed(5);
        let mut bal = QuestionBalancer::new();
        let batch = draw_batch(
            &mut rng,
            &mut bal,
            &tok,
            &pre,
            40,
            Turns {
                per_image: 2,
                describe: true,
                pair_counts: 1,
                positions: 0,
                aux_positions: false,
            },
        )
        .unwrap();
        let mut with_pairs = 0;
        for ex in &batch {
            assert_eq!(ex.targets.len(), ex.target_kinds.len());
            let mut turns: Vec<&str> = ex.target_kinds.iter().map(String::as_str).collect();
            turns.dedup();
            // Describe-only conversations ask nothing else; the others end with it.
            assert_eq!(turns.last(), Some(&shapes::DESCRIBE_KIND));
            let pairs = turns
                .iter()
                .filter(|k| **k == shapes::COUNT_PAIR_KIND)
                .count();
            if turns.len() > 1 {
                assert_eq!(pairs, 1, "{turns:?}");
                with_pairs += 1;
            } else {
                assert_eq!(pairs, 0);
            }
        }
        assert!(with_pairs > 20, "{with_pairs}");
    }
}
