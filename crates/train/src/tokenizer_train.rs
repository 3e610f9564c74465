//! The tokenizer of the shipped shapes model: a small byte-level BPE trained with the
//! `tokenizers` crate's [`BpeTrainer`] on the shapes task's text (every question the templates
//! can produce, every answer, the chat scaffolding) plus some general English.
//!
//! * Byte-level (GPT-2 style) pre-tokenizer and decoder, no normalizer: any UTF-8 text encodes,
//!   and decoding gives the text back exactly.
//! * [`BPE_VOCAB_SIZE`] learned entries (the 256 byte symbols included), then the special tokens
//!   of [`SPECIAL_TOKENS`] at ids `BPE_VOCAB_SIZE..BPE_VOCAB_SIZE + 6`, in that order.
//! * Deterministic: the corpus is a fixed list, the trainer breaks ties by pair ids, and the
//!   serialization orders everything by id, so `tokenizer.json` has the same bytes on every run.
//! * Every answer word of the task, and `"\n"`, is one token when it starts the text (as after
//!   `<|im_start|>assistant\n`).

use crate::shapes::{all_answers, all_question_texts};
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

/// Entries of the BPE vocabulary: 256 byte symbols plus learned merges.
pub const BPE_VOCAB_SIZE: usize = 768;

/// The added special tokens, at ids `BPE_VOCAB_SIZE + i`.
pub const SPECIAL_TOKENS: [&str; 6] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<IMG_CONTEXT>",
    "<img>",
    "</img>",
];

/// End of a conversation turn; the end-of-sequence token of the chat model.
pub const EOS_TOKEN: &str = "<|im_end|>";
/// Padding token.
pub const PAD_TOKEN: &str = "<|endoftext|>";
/// `model_max_length` written to `tokenizer_config.json`.
pub const MODEL_MAX_LENGTH: usize = 4096;
/// The system prompt the corpus assumes the chat template may use.
pub const SYSTEM_PROMPT: &str = "You are a helpful assistant.";

/// Errors of building and saving the tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerTrainError {
    #[error("training the tokenizer failed: {0}")]
    Train(String),
    #[error("{}: {message}", .path.display())]
    Save { path: PathBuf, message: String },
}

/// General English so that other text (prompts, descriptions) still tokenizes compactly.
const ENGLISH: &str = "\
The picture shows a few simple shapes on a light background. Look at the image and answer the \
question with one word. There is a red circle near the top left corner, and a small blue square \
below it. The green triangle points up; the other one points down. How many of them can you see? \
I can see two of them. What is in this image? This image contains several objects of different \
colors and sizes. Please describe the scene in detail. The objects do not overlap and each one \
is fully inside the picture.
You are a helpful assistant. Answer the question about the image. If you are not sure, say so. \
The user asked a question and the assistant gave an answer. Thank you for your help! \
Here is a short story: once upon a time there was a little house at the end of a long road. \
People who lived there worked in the fields during the day and came back home in the evening. \
They talked about the weather, the water in the river, the animals, the children and the \
school. Some of them would read a book, write a letter, or play music with their friends. \
One day a man came from another country with a new idea. He said that the world was changing \
and that everyone should learn to use computers, numbers and language models. \
The first, second and third parts of this system are the model, the data and the training. \
It is important to test your work, to measure the results and to think about what they mean. \
We will show how this works with an example: the model reads the text, looks at the image, and \
writes the answer. Because the training data is small, the model must be small as well. \
Which one is larger? Where is it? When did it happen? Why does it matter? Who made it? \
Yes, it is. No, it is not. Maybe. Left, right, above, below, top, bottom, middle, center, \
between, next to, inside, outside, big, small, large, little, long, short, high, low, \
light, dark, white, brown, pink, color, colour, shape, size, number, count, total, first, last. \
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 20 100 2024 3.14 1,000 50% $5 #1 (a) [b] {c} <d> \
\"quoted\" 'single' a-b a_b a/b a\\b a|b a:b a;b a=b a+b a*b a^b a~b a@b a&b ...! ?? \
Also: the, of, and, to, in, is, you, that, it, he, was, for, on, are, as, with, his, they, at, \
be, this, have, from, or, had, by, not, word, but, what, some, we, can, out, other, were, all, \
there, when, up, use, your, how, said, an, each, she, which, do, their, time, if, will, way, \
about, many, then, them, would, like, so, these, her, make, thing, see, him, two, has, look, \
more, day, could, go, come, did, my, sound, no, most, who, over, know, than, call, may, down, \
side, been, now, find, any, new, work, part, take, get, place, made, live, back, only, year, \
good, give, name, very, through, just, form, much, great, think, say, help, line, turn, cause, \
same, mean, differ, move, right, boy, old, too, does, tell, set, three, want, air, well, also, \
play, small, end, put, home, hand, port, spell, add, even, land, here, must, such, follow, act, \
why, ask, men, change, went, kind, off, need, house, picture, try, us, again, animal, point, \
mother, world, near, build, self, earth, father, head, stand, own, page, should, found, answer, \
school, grow, study, still, learn, plant, cover, food, sun, four, thought, let, keep, eye, never, \
city, tree, cross, since, hard, start, might, story, saw, far, sea, draw, late, run, while, \
press, close, night, real, life, few, stop, open, seem, together, begin, got, walk, paper, \
group, always, often, those, both, mark, book, carry, took, science, eat, room, began, idea, \
fish, mountain, once, base, hear, horse, cut, sure, watch, face, wood, main, enough, plain, \
girl, usual, young, ready, ever, red, list, though, feel, talk, bird, soon, body, dog, family, \
direct, pose, leave, song, measure, door, product, black, short, numeral, class, wind, question, \
happen, complete, ship, area, half, rock, order, fire, south, problem, piece, told, knew, pass, \
farm, top, whole, king, space, heard, best, hour, better, true, during, hundred, five, remember, \
step, early, hold, west, ground, interest, reach, fast, verb, sing, listen, six, table, travel, \
less, morning, ten, simple, several, vowel, toward, war, lay, against, pattern, slow, love, \
person, money, serve, appear, road, map, science, rule, govern, pull, cold, notice, voice, fall, \
power, town, fine, certain, fly, unit, lead, cry, dark, machine, note, wait, plan, figure, star, \
box, noun, field, rest, correct, able, pound, done, beauty, drive, stood, contain, front, teach, \
week, final, gave, green, oh, quick, develop, sleep, warm, free, minute, strong, special, mind, \
behind, clear, tail, produce, fact, street, inch, lot, nothing, course, stay, wheel, full, force, \
blue, object, decide, surface, deep, moon, island, foot, yet, busy, test, record, boat, common, \
gold, possible, plane, age, dry, wonder, laugh, thousand, ago, ran, check, game, equal, hot, miss, \
brought, heat, snow, bed, bring, sit, perhaps, fill, east, weight, language, among.
";

/// Text pieces as they occur between special tokens in the chat layout
/// `<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<img>…</img>\n{question}<|im_end|>\n
/// <|im_start|>assistant\n{answer}<|im_end|>\n`, plus English. Special tokens are never in the
/// corpus (they are added after training, so no merge is spent on their pieces).
pub fn training_corpus() -> Vec<String> {
    let mut corpus: Vec<String> = Vec::new();
    let questions = all_question_texts();
    // Short templates are rare among the texts (the 552 left_of ones dominate): repeat them.
    for q in &questions {
        let reps = if q.starts_with("Is the ") { 1 } else { 12 };
        for _ in 0..reps {
            corpus.push(format!("\n{q}"));
        }
    }
    // Answers start the assistant turn: make each a single token even without a leading space.
    for a in all_answers() {
        for _ in 0..40 {
            corpus.push(format!("assistant\n{a}"));
            corpus.push(a.to_string());
        }
        corpus.push(format!("The answer is {a}."));
        corpus.push(format!("Answer: {a}"));
    }
    for _ in 0..40 {
        corpus.push(format!("system\n{SYSTEM_PROMPT}"));
        corpus.push("user\n".to_string());
        corpus.push("\n".to_string());
        corpus.push("assistant\n".to_string());
    }
    for _ in 0..3 {
        corpus.extend(ENGLISH.lines().map(str::to_string));
    }
    corpus
}

/// Trains the tokenizer (a fraction of a second). See the module documentation.
pub fn try_build_tokenizer() -> Result<Tokenizer, TokenizerTrainError> {
    let train_err = |e: tokenizers::Error| TokenizerTrainError::Train(e.to_string());
    let mut trainer = BpeTrainer::builder()
        .vocab_size(BPE_VOCAB_SIZE)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tk = TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel>::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(Some(ByteLevel::new(false, false, true)))
        .with_decoder(Some(ByteLevel::default()))
        .build()
        .map_err(train_err)?;
    tk.train(&mut trainer, training_corpus().into_iter())
        .map_err(train_err)?;
    let mut tokenizer: Tokenizer = tk.into();
    let learned = tokenizer.get_vocab_size(false);
    if learned != BPE_VOCAB_SIZE {
        return Err(TokenizerTrainError::Train(format!(
            "the corpus yields {learned} vocabulary entries, expected {BPE_VOCAB_SIZE}"
        )));
    }
    let specials: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|s| AddedToken::from(*s, true).normalized(false))
        .collect();
    tokenizer
        .add_special_tokens(specials.clone())
        .map_err(train_err)?;
    for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
        if tokenizer.token_to_id(s) != Some((BPE_VOCAB_SIZE + i) as u32) {
            return Err(TokenizerTrainError::Train(format!(
                "special token {s} did not get id {}",
                BPE_VOCAB_SIZE + i
            )));
        }
    }
    Ok(tokenizer)
}

/// Trains the tokenizer. Training works on a fixed, built-in corpus and cannot fail in practice;
/// it panics if it does (a bug, caught by the tests). Use [`try_build_tokenizer`] to handle it.
pub fn build_tokenizer() -> Tokenizer {
    match try_build_tokenizer() {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    }
}

/// The tokenizer's JSON, exactly as [`save`] writes it (pretty-printed).
pub fn tokenizer_json(tokenizer: &Tokenizer) -> Result<String, TokenizerTrainError> {
    tokenizer
        .to_string(true)
        .map_err(|e| TokenizerTrainError::Train(e.to_string()))
}

/// Trains the tokenizer and writes it as `tokenizer.json` to `path`; returns it.
pub fn save(path: &Path) -> Result<Tokenizer, TokenizerTrainError> {
    let tokenizer = try_build_tokenizer()?;
    let json = tokenizer_json(&tokenizer)?;
    std::fs::write(path, json).map_err(|e| TokenizerTrainError::Save {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(tokenizer)
}

/// Trains the tokenizer and writes `tokenizer.json` and `tokenizer_config.json` into `dir`
/// (created if needed); returns it.
pub fn save_dir(dir: &Path) -> Result<Tokenizer, TokenizerTrainError> {
    let save_err = |path: &Path, message: String| TokenizerTrainError::Save {
        path: path.to_path_buf(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| save_err(dir, e.to_string()))?;
    let tokenizer = save(&dir.join("tokenizer.json"))?;
    let config_path = dir.join("tokenizer_config.json");
    let config = serde_json::to_string_pretty(&tokenizer_config_json_for(&tokenizer))
        .map_err(|e| save_err(&config_path, e.to_string()))?;
    std::fs::write(&config_path, config + "\n")
        .map_err(|e| save_err(&config_path, e.to_string()))?;
    Ok(tokenizer)
}

/// A minimal Hugging Face `tokenizer_config.json` for [`build_tokenizer`]'s tokenizer.
pub fn tokenizer_config_json() -> serde_json::Value {
    tokenizer_config_json_for(&build_tokenizer())
}

/// A minimal Hugging Face `tokenizer_config.json` for `tokenizer` (ids of the special tokens
/// looked up in it): `PreTrainedTokenizerFast`, eos `<|im_end|>`, pad `<|endoftext|>`.
pub fn tokenizer_config_json_for(tokenizer: &Tokenizer) -> serde_json::Value {
    let mut decoder = serde_json::Map::new();
    for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
        let id = tokenizer
            .token_to_id(s)
            .unwrap_or((BPE_VOCAB_SIZE + i) as u32);
        decoder.insert(
            id.to_string(),
            serde_json::json!({
                "content": s,
                "lstrip": false,
                "normalized": false,
                "rstrip": false,
                "single_word": false,
                "special": true,
            }),
        );
    }
    let additional: Vec<&str> = SPECIAL_TOKENS
        .iter()
        .copied()
        .filter(|s| *s != EOS_TOKEN && *s != PAD_TOKEN)
        .collect();
    serde_json::json!({
        "add_bos_token": false,
        "add_prefix_space": false,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": additional,
        "bos_token": null,
        "clean_up_tokenization_spaces": false,
        "eos_token": EOS_TOKEN,
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": PAD_TOKEN,
        "split_special_tokens": false,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(tok: &Tokenizer, text: &str) -> Vec<u32> {
        tok.encode(text, false).expect("encode").get_ids().to_vec()
    }

    #[test]
    fn special_tokens_follow_the_vocabulary() {
        let tok = build_tokenizer();
        assert_eq!(tok.get_vocab_size(false), BPE_VOCAB_SIZE);
        assert_eq!(
            tok.get_vocab_size(true),
            BPE_VOCAB_SIZE + SPECIAL_TOKENS.len()
        );
        for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
            assert_eq!(tok.token_to_id(s), Some((BPE_VOCAB_SIZE + i) as u32), "{s}");
        }
        let added = tok.get_added_tokens_decoder();
        assert_eq!(added.len(), SPECIAL_TOKENS.len());
        for t in added.values() {
            assert!(t.special && !t.normalized, "{t:?}");
        }
        assert!(tok.get_normalizer().is_none());
    }

    #[test]
    fn chat_prompt_round_trips_with_single_special_ids() {
        let tok = build_tokenizer();
        let text = "<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nWhat color is the circle?<|im_end|>\n<|im_start|>assistant\n";
        let enc = ids(&tok, text);
        let id = |s: &str| tok.token_to_id(s).expect("special");
        let count = |s: &str| enc.iter().filter(|&&i| i == id(s)).count();
        assert_eq!(count("<|im_start|>"), 2);
        assert_eq!(count("<|im_end|>"), 1);
        assert_eq!(count("<IMG_CONTEXT>"), 2);
        assert_eq!(count("<img>"), 1);
        assert_eq!(count("</img>"), 1);
        assert_eq!(enc[0], id("<|im_start|>"));
        assert_eq!(enc.last(), ids(&tok, "\n").first());
        assert_eq!(tok.decode(&enc, false).expect("decode"), text);
        // The question itself is compact.
        assert!(ids(&tok, "What color is the circle?").len() <= 6);
        eprintln!("chat prompt: {} tokens", enc.len());
    }

    #[test]
    fn answers_and_newline_are_single_tokens() {
        let tok = build_tokenizer();
        for a in all_answers() {
            assert_eq!(ids(&tok, a).len(), 1, "{a}: {:?}", ids(&tok, a));
        }
        assert_eq!(ids(&tok, "\n").len(), 1);
        // After the assistant header the answer is still one token, followed by <|im_end|>.
        for a in all_answers() {
            let e = ids(&tok, &format!("<|im_start|>assistant\n{a}<|im_end|>"));
            assert_eq!(e.len(), 5, "{a}: {e:?}");
        }
    }

    #[test]
    fn any_utf8_round_trips() {
        let tok = build_tokenizer();
        for text in [
            "Hello, world! 🎉🦀 你好，世界。 Ünïcödé — ∑ x² ≤ 10\t\r\n",
            "  leading and trailing spaces  ",
            "\u{0}\u{7f}\u{10ffff}",
            "The model answered: yes.",
        ] {
            let e = ids(&tok, text);
            assert!(!e.is_empty());
            assert_eq!(tok.decode(&e, false).expect("decode"), text);
        }
        // General English stays compact.
        let s = "Please describe the picture in detail and tell me what you see.";
        assert!(ids(&tok, s).len() <= 24, "{:?}", ids(&tok, s));
    }

    #[test]
    fn training_is_deterministic() {
        let a = tokenizer_json(&build_tokenizer()).expect("json");
        let b = tokenizer_json(&build_tokenizer()).expect("json");
        assert_eq!(a, b);
        // The JSON loads back into the same tokenizer.
        let loaded: Tokenizer = a.parse().expect("parse");
        assert_eq!(tokenizer_json(&loaded).expect("json"), a);
    }

    #[test]
    fn config_names_the_special_tokens() {
        let tok = build_tokenizer();
        let cfg = tokenizer_config_json_for(&tok);
        assert_eq!(cfg["tokenizer_class"], "PreTrainedTokenizerFast");
        assert_eq!(cfg["eos_token"], "<|im_end|>");
        assert_eq!(cfg["pad_token"], "<|endoftext|>");
        assert_eq!(cfg["model_max_length"], MODEL_MAX_LENGTH);
        let dec = cfg["added_tokens_decoder"]
            .as_object()
            .expect("added_tokens_decoder");
        assert_eq!(dec.len(), 6);
        for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
            let e = &dec[&(BPE_VOCAB_SIZE + i).to_string()];
            assert_eq!(e["content"], *s);
            assert_eq!(e["special"], true);
            assert_eq!(e["normalized"], false);
        }
        assert_eq!(tokenizer_config_json(), cfg);
    }

    #[test]
    fn save_dir_writes_both_files() {
        let tmp = tempfile::tempdir().expect("a scratch directory");
        let d = tmp.path().join("tok");
        let tok = save_dir(&d).expect("save");
        let json = std::fs::read_to_string(d.join("tokenizer.json")).expect("read");
        assert_eq!(json, tokenizer_json(&tok).expect("json"));
        let loaded = Tokenizer::from_file(d.join("tokenizer.json")).expect("load");
        assert_eq!(loaded.get_vocab_size(true), tok.get_vocab_size(true));
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(d.join("tokenizer_config.json")).expect("read"),
        )
        .expect("json");
        assert_eq!(cfg, tokenizer_config_json_for(&tok));
        let _ = std::fs::remove_dir_all(&d);
    }
}
