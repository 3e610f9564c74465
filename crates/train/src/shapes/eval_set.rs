//! Evaluation sets on disk: `questions.jsonl` plus the images it names (specs/shapes-task.md).

use super::{encode_image, render, rng_from_seed, Question, QuestionBalancer, Scene};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// The question file of an evaluation set directory.
pub const QUESTIONS_FILE: &str = "questions.jsonl";
/// The sub-directory [`write_eval_set`] puts images in.
pub const IMAGES_DIR: &str = "images";
/// Written next to the questions by [`write_eval_set`], for analysis only: one JSON object a line,
/// `{"image": ..., "scene": {...}}`. Not part of the format; readers ignore it.
pub const SCENES_FILE: &str = "scenes.jsonl";

/// Errors of writing and reading evaluation sets.
#[derive(Debug, thiserror::Error)]
pub enum ShapesError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot encode the image: {source}", .path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error("{}: cannot serialize: {source}", .path.display())]
    Serialize {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: no such file (an evaluation set is a directory holding {QUESTIONS_FILE} and the images it names)", .path.display())]
    MissingFile { path: PathBuf },
    #[error("{} line {line}: bad JSON: {message}", .path.display())]
    BadJson {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{} line {line}: missing key \"{key}\" (each line needs \"image\", \"question\", \"answer\" and \"kind\")", .path.display())]
    MissingKey {
        path: PathBuf,
        line: usize,
        key: &'static str,
    },
    #[error("{} line {line}: key \"{key}\" must be a non-empty string, found {found}", .path.display())]
    BadValue {
        path: PathBuf,
        line: usize,
        key: &'static str,
        found: String,
    },
    #[error("{} line {line}: image {} does not exist", .path.display(), .image.display())]
    MissingImage {
        path: PathBuf,
        line: usize,
        image: PathBuf,
    },
    #[error("{}: holds no questions", .path.display())]
    Empty { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ShapesError + '_ {
    move |source| ShapesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes an evaluation set of `n_images` freshly drawn scenes into `dir` (created if needed):
/// `images/NNNNN.png` or `.jpg` (JPEG at the scene's quality, 70..=100), `questions.jsonl` with
/// up to `questions_per_image` distinct questions per image picked by a [`QuestionBalancer`]
/// (balanced across kinds, then answers, as far as each scene allows), and `scenes.jsonl`
/// describing each scene. The whole set is a function of `seed`. Returns the number of questions.
pub fn write_eval_set(
    dir: &Path,
    n_images: usize,
    questions_per_image: usize,
    seed: u64,
) -> Result<usize, ShapesError> {
    let images_dir = dir.join(IMAGES_DIR);
    std::fs::create_dir_all(&images_dir).map_err(io_err(&images_dir))?;
    let mut rng = rng_from_seed(seed);
    let mut balancer = QuestionBalancer::new();
    let digits = n_images.saturating_sub(1).to_string().len().max(5);
    let mut questions = String::new();
    let mut scenes = String::new();
    let mut count = 0;
    let questions_path = dir.join(QUESTIONS_FILE);
    let scenes_path = dir.join(SCENES_FILE);
    for i in 0..n_images {
        let scene = Scene::sample(&mut rng);
        let img = render(&scene, &mut rng);
        let rel = format!(
            "{IMAGES_DIR}/{i:0digits$}.{}",
            scene.format.extension(),
            digits = digits
        );
        let path = dir.join(&rel);
        let bytes = encode_image(&img, scene.format).map_err(|source| ShapesError::Encode {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, bytes).map_err(io_err(&path))?;
        for c in balancer.pick(&scene, questions_per_image, &mut rng) {
            let line = serde_json::to_string(&c.to_question(&rel)).map_err(|source| {
                ShapesError::Serialize {
                    path: questions_path.clone(),
                    source,
                }
            })?;
            questions.push_str(&line);
            questions.push('\n');
            count += 1;
        }
        let line = serde_json::to_string(&serde_json::json!({"image": rel, "scene": scene}))
            .map_err(|source| ShapesError::Serialize {
                path: scenes_path.clone(),
                source,
            })?;
        scenes.push_str(&line);
        scenes.push('\n');
    }
    write_atomically(&questions_path, questions.as_bytes())?;
    write_atomically(&scenes_path, scenes.as_bytes())?;
    Ok(count)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ShapesError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Reads and validates the evaluation set in `dir`: `questions.jsonl` must exist, every
/// non-blank line must be a JSON object with string keys `image`, `question`, `answer` and
/// `kind` (other keys are ignored), and every image it names must exist (relative to `dir`).
/// Errors name the file and the 1-based line.
pub fn read_eval_set(dir: &Path) -> Result<Vec<Question>, ShapesError> {
    let path = dir.join(QUESTIONS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(ShapesError::MissingFile { path });
        }
        Err(source) => return Err(ShapesError::Io { path, source }),
    };
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = if i == 0 {
            raw.trim_start_matches('\u{feff}')
        } else {
            raw
        };
        if raw.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| ShapesError::BadJson {
                path: path.clone(),
                line,
                message: e.to_string(),
            })?;
        let Some(obj) = value.as_object() else {
            return Err(ShapesError::BadJson {
                path: path.clone(),
                line,
                message: format!("expected a JSON object, found {}", json_type(&value)),
            });
        };
        let get = |key: &'static str| -> Result<String, ShapesError> {
            match obj.get(key) {
                None => Err(ShapesError::MissingKey {
                    path: path.clone(),
                    line,
                    key,
                }),
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
                Some(v) => Err(ShapesError::BadValue {
                    path: path.clone(),
                    line,
                    key,
                    found: v.to_string(),
                }),
            }
        };
        let q = Question {
            image: get("image")?,
            question: get("question")?,
            answer: get("answer")?,
            kind: get("kind")?,
        };
        let image = dir.join(&q.image);
        if !image.is_file() {
            return Err(ShapesError::MissingImage {
                path: path.clone(),
                line,
                image,
            });
        }
        out.push(q);
    }
    if out.is_empty() {
        return Err(ShapesError::Empty { path });
    }
    Ok(out)
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
