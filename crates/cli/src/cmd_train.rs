//! `pixlm train`, `pixlm eval` and `pixlm gen-shapes`: the shapes model's life cycle.

use crate::common::{resolve_model, ComputeArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pixlm_engine::Engine;
use pixlm_train::model_spec::ModelSpec;
use pixlm_train::trainer::{TrainConfig, Trainer};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct TrainArgs {
    /// Output directory: the checkpoint (config.json, model.safetensors, tokenizer files) and
    /// the state to resume from.
    #[arg(long, short, default_value = "runs/shapes")]
    pub out: PathBuf,
    /// Model size preset: small (the shipped model) or tiny (smoke tests).
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Optimisation steps.
    #[arg(long, default_value_t = 3000)]
    pub steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Linear warmup steps before the cosine decay.
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// Seed for initialisation and data: the same seed gives the same run.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write a checkpoint every N steps.
    #[arg(long, default_value_t = 250)]
    pub save_every: usize,
    /// Task questions per rendered image (successive turns of one conversation).
    #[arg(long, default_value_t = 4)]
    pub per_image: usize,
    /// Do not train the "Describe the image." turn (it lists every object; on by default
    /// because it teaches shapes much faster).
    #[arg(long)]
    pub no_describe: bool,
    /// Weight of the auxiliary image-token targets: each image token an object covers learns
    /// to predict that object's colour and shape words (a dense signal that teaches the model
    /// to see; only answer tokens count at inference). 0 turns it off.
    #[arg(long, default_value_t = 0.25)]
    pub aux_weight: f64,
    /// Weight of the training-only object-shape head: from the patch embedding's output,
    /// pooled over the image tokens each object covers, it names the object's shape, which
    /// teaches the visual stem shapes directly. Not saved with the model. 0 turns it off.
    #[arg(long, default_value_t = 1.0)]
    pub stem_aux_weight: f64,
    /// Weight of one question kind's answer tokens, as KIND=W (repeatable; kinds: color,
    /// shape, count_shape, count_all, exists, left_of, describe, count_pair, position; others
    /// weigh 1). The loss stays a weighted mean, so this moves the gradient's share between
    /// kinds.
    #[arg(long = "kind-weight", value_name = "KIND=W", value_parser = parse_kind_weight)]
    pub kind_weights: Vec<(String, f64)>,
    /// Training-only questions per conversation that count objects of one colour and shape
    /// ("How many red circles are there?"): a graded form of `exists` that teaches the model
    /// to bind colours to shapes. 0 turns them off.
    #[arg(long, default_value_t = 0)]
    pub pair_counts: usize,
    /// Training-only questions per conversation that ask where one object is ("Where is the
    /// red circle?", answered with the fifth of the width, 0 to 4): they teach the positions
    /// that `left_of` compares. 0 turns them off.
    #[arg(long, default_value_t = 0)]
    pub pair_positions: usize,
    /// With --aux-weight, each image token an object covers also predicts the object's
    /// horizontal position (the fifth of the width holding its centre, 0 to 4), so that
    /// every object's tokens carry where it is: what `left_of` compares.
    #[arg(long)]
    pub aux_positions: bool,
    /// Weight of training-only attention targets: at each answer position, two query heads
    /// of --attn-aux-layer are pulled towards the image tokens of the objects the question
    /// names (head 0 the first named, head 1 the last), which teaches the model to look up
    /// the object a question is about. 0 turns them off.
    #[arg(long, default_value_t = 0.0)]
    pub attn_aux_weight: f64,
    /// The decoder layer (0-based) whose heads --attn-aux-weight supervises.
    #[arg(long, default_value_t = 3)]
    pub attn_aux_layer: usize,
    /// Give attention targets only to these question kinds (comma-separated, e.g.
    /// `count_shape,count_pair`; the kinds of --kind-weight). Default: every kind that names
    /// an object.
    #[arg(long, value_delimiter = ',', value_name = "KINDS", value_parser = parse_kind)]
    pub attn_aux_kinds: Vec<String>,
    /// Let the attention targets hand over to the answers: their weight falls linearly from
    /// --attn-aux-weight at the first step to 0 at this fraction of --steps (0 to 1), and
    /// stays 0 after. Default: the same weight for the whole run.
    #[arg(long, value_name = "FRACTION")]
    pub attn_aux_until: Option<f64>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Fine-tune: start from the weights of this checkpoint (a `pixlm train` output
    /// directory, e.g. models/shapes-neo) instead of a random initialisation, with a fresh
    /// optimizer and learning-rate schedule. The checkpoint's config.json fixes the model's
    /// sizes (--preset is not used). Use a --seed other than the first run's so the data
    /// differ.
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    pub init_from: Option<PathBuf>,
    /// Finish within this many minutes. At the end of warmup the run times its steps; if the
    /// remaining ones would not fit in 96% of the limit, it cuts --steps to the number that
    /// does (the cosine decay then ends at the new last step, and `--steps N` with that
    /// number reproduces the run exactly). If the machine slows down later, the run saves and
    /// stops at the limit.
    #[arg(long)]
    pub time_limit_min: Option<f64>,
    /// Save and end the run after step N, on the learning-rate schedule of --steps: the
    /// checkpoint is the one the whole run holds at that step, and --resume continues it.
    /// With --time-limit-min, the run is planned to reach step N; if that does not fit, the
    /// schedule is shortened as described there and the run goes to its new end.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub stop_after: Option<u64>,
    /// Print one line per N steps instead of a progress bar.
    #[arg(long)]
    pub log_every: Option<usize>,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// Parses a question kind: the task's and the training-only ones.
fn parse_kind(kind: &str) -> std::result::Result<String, String> {
    use pixlm_train::shapes::{Kind, TRAINING_ONLY_KINDS};
    let known: Vec<&str> = Kind::ALL
        .iter()
        .map(|k| k.name())
        .chain(TRAINING_ONLY_KINDS)
        .collect();
    if !known.contains(&kind) {
        return Err(format!(
            "unknown question kind {kind:?} (one of {})",
            known.join(", ")
        ));
    }
    Ok(kind.to_string())
}

/// Parses `--kind-weight KIND=W`.
fn parse_kind_weight(s: &str) -> std::result::Result<(String, f64), String> {
    let (kind, w) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected KIND=W, e.g. exists=4"))?;
    let kind = parse_kind(kind)?;
    let w: f64 = w
        .parse()
        .map_err(|_| format!("{w:?} is not a number (in {s:?})"))?;
    if !(w >= 0.0 && w.is_finite()) {
        return Err(format!("the weight in {s:?} must be a non-negative number"));
    }
    Ok((kind, w))
}

pub fn train(a: TrainArgs) -> Result<i32> {
    a.compute.load_options()?;
    // Training is data-parallel: --threads workers, each running single-threaded kernels on
    // its share of the batch (small matrices scale poorly across threads inside one kernel).
    let workers = a
        .compute
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    std::env::set_var("RAYON_NUM_THREADS", "1");
    let Some(spec) = ModelSpec::preset(&a.preset) else {
        bail!("unknown --preset {:?} (small or tiny)", a.preset);
    };
    for (flag, w) in [
        ("--aux-weight", a.aux_weight),
        ("--stem-aux-weight", a.stem_aux_weight),
        ("--attn-aux-weight", a.attn_aux_weight),
    ] {
        if !(w >= 0.0 && w.is_finite()) {
            bail!("{flag} must be a non-negative number");
        }
    }
    if a.attn_aux_weight > 0.0 && a.attn_aux_layer >= spec.layers {
        bail!(
            "--attn-aux-layer {} is past the model's {} layers (0-based)",
            a.attn_aux_layer,
            spec.layers
        );
    }
    if let Some(f) = a.attn_aux_until {
        if !(f > 0.0 && f <= 1.0) {
            bail!("--attn-aux-until must be a fraction of the run, above 0 and at most 1");
        }
    }
    if a.steps == 0 || a.batch == 0 || a.save_every == 0 || a.per_image == 0 {
        bail!("--steps, --batch, --per-image and --save-every must be positive");
    }
    let config = TrainConfig {
        spec,
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        warmup: a.warmup.min(a.steps),
        seed: a.seed,
        save_every: a.save_every,
        per_image: a.per_image,
        describe: !a.no_describe,
        workers,
        aux_weight: a.aux_weight,
        stem_aux_weight: a.stem_aux_weight,
        kind_weights: a.kind_weights.iter().cloned().collect(),
        pair_counts: a.pair_counts,
        pair_positions: a.pair_positions,
        aux_positions: a.aux_positions,
        attn_aux_weight: a.attn_aux_weight,
        attn_aux_layer: a.attn_aux_layer,
        attn_aux_kinds: a.attn_aux_kinds.clone(),
        attn_aux_until: a.attn_aux_until,
        init_from: a.init_from.clone(),
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(config, &a.out, a.resume).context("setting up training")?;
    let steps = trainer.config.steps;
    let stop = a.stop_after.map(|n| n as usize).filter(|&n| n < steps);
    eprintln!(
        "training {} steps{} × {} sequences into {} (starting at step {}{}, {} worker{})",
        steps,
        stop.map_or(String::new(), |n| format!(" (stopping after step {n})")),
        trainer.config.batch,
        a.out.display(),
        trainer.step,
        match (&a.init_from, trainer.step) {
            (Some(d), 0) => format!(" from the weights of {}", d.display()),
            _ => String::new(),
        },
        trainer.config.workers,
        if trainer.config.workers == 1 { "" } else { "s" }
    );
    let bar = if a.log_every.is_some() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(stop.unwrap_or(steps) as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(trainer.step as u64);
    let mut ema = None::<f32>;
    // `planned` follows the schedule's length; `end`, the last step this run will take.
    let mut planned = steps;
    let mut end = stop.unwrap_or(steps);
    let log_every = a.log_every;
    let limit = a.time_limit_min.map(|m| Duration::from_secs_f64(m * 60.0));
    trainer.run(limit, stop, &mut |s| {
        let e = ema.map_or(s.loss, |e| 0.95 * e + 0.05 * s.loss);
        ema = Some(e);
        let msg = format!(
            "loss {e:.4} lr {:.2e} |g| {:.2} {:.0} tok/s",
            s.lr,
            s.grad_norm,
            s.tokens as f64 / s.secs
        );
        if s.planned != planned {
            bar.suspend(|| {
                eprintln!(
                    "step {}: at this machine's speed {} steps would not end within \
                     --time-limit-min; the schedule now ends at step {} (`--steps {}` \
                     reproduces this run)",
                    s.step, end, s.planned, s.planned
                )
            });
            planned = s.planned;
            end = planned;
            bar.set_length(end as u64);
        }
        bar.set_position(s.step as u64);
        bar.set_message(msg.clone());
        if log_every.is_some_and(|n| s.step % n == 0 || s.step == 1) {
            eprintln!("step {:>6}/{end}  {msg}", s.step);
        }
    })?;
    bar.finish();
    eprintln!("saved {} at step {}", a.out.display(), trainer.step);
    Ok(0)
}

#[derive(Args)]
pub struct EvalArgs {
    /// Model directory (default: the shipped shapes model).
    #[arg(long, short)]
    pub model: Option<PathBuf>,
    /// Evaluation directory: questions.jsonl and the images it names.
    pub dir: PathBuf,
    /// Prompts per packed forward.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Evaluate only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print {"overall":…, "per_kind":{…}, "questions":N} for scripts.
    #[arg(long)]
    pub json: bool,
    /// List every wrong answer.
    #[arg(long)]
    pub failures: bool,
    /// Exit non-zero when overall accuracy is below this fraction.
    #[arg(long)]
    pub min_accuracy: Option<f64>,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

pub fn eval(a: EvalArgs) -> Result<i32> {
    let dir = resolve_model(&a.model)?;
    let opts = a.compute.load_options()?;
    let engine =
        Engine::load(&dir, &opts).with_context(|| format!("loading model {}", dir.display()))?;
    let bar = if a.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} questions [{elapsed_precise}<{eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let t0 = std::time::Instant::now();
    let r = pixlm_train::eval::evaluate(&engine, &a.dir, a.batch, a.limit, &mut |d, t| {
        bar.set_length(t as u64);
        bar.set_position(d as u64);
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "accuracy {:.2}% on {} questions ({:.1}s)",
            100.0 * r.overall,
            r.questions,
            t0.elapsed().as_secs_f64()
        );
        for (k, v) in &r.per_kind {
            println!("  {k:<12} {:.2}%", 100.0 * v);
        }
    }
    if a.failures {
        for (q, got) in &r.failures {
            println!(
                "WRONG {} | {} | expected {:?} got {:?}",
                q.image,
                q.question,
                q.answer,
                got.trim()
            );
        }
    }
    if let Some(m) = a.min_accuracy {
        if r.overall < m {
            eprintln!("accuracy {:.4} is below --min-accuracy {m}", r.overall);
            return Ok(1);
        }
    }
    Ok(0)
}

#[derive(Args)]
pub struct GenShapesArgs {
    /// Directory to write (images/ and questions.jsonl).
    pub out: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 250)]
    pub images: usize,
    /// Questions per image.
    #[arg(long, default_value_t = 4)]
    pub per_image: usize,
    /// Seed (use one that training does not: training seeds its data from --seed of train).
    #[arg(long, default_value_t = 12345)]
    pub seed: u64,
}

pub fn gen_shapes(a: GenShapesArgs) -> Result<i32> {
    let n = pixlm_train::shapes::write_eval_set(&a.out, a.images, a.per_image, a.seed)
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!("wrote {n} questions to {}", a.out.display());
    Ok(0)
}
