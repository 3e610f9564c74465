//! Training a NEO-architecture model on the shapes task with candle's autograd, through the
//! same model code that inference runs.
//!
//! AdamW (decoupled weight decay on matrices only), linear warmup then cosine decay to
//! `min_lr_ratio · lr`, global gradient-norm clipping, loss on the assistant's answer tokens
//! only. Every step's data is drawn from an RNG seeded by (seed, step), so a run is
//! reproducible and a resumed run continues exactly where it stopped. Checkpoints are written
//! in the Hugging Face layout and load through `Engine::load` like any NEO checkpoint.

use crate::data::{draw_batch, DataError, Example, Turns};
use crate::model_spec::ModelSpec;
use crate::shapes::{QuestionBalancer, ShapesRng};
use crate::tokenizer_train;
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use pixlm_media::PreprocessConfig;
use pixlm_models::{
    AttnProbe, KvCache, LogitsWanted, Model, ModelConfig, NeoSpecialIds, SeqInput, Trace,
};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] pixlm_models::ModelError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

type Result<T> = std::result::Result<T, TrainError>;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    pub spec: ModelSpec,
    pub steps: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Questions drawn per rendered image.
    pub per_image: usize,
    pub lr: f64,
    pub min_lr_ratio: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    pub clip: f64,
    pub seed: u64,
    /// Write a checkpoint every this many steps (and at the end).
    pub save_every: usize,
    /// Also train the description turn (see `data::draw_batch`).
    #[serde(default)]
    pub describe: bool,
    /// Data-parallel workers: threads that each differentiate micro-batches of every step's
    /// batch with single-threaded kernels (see `Trainer::loss_and_grads`). On small models
    /// this scales far better than multi-threaded kernels. Results do not depend on it: the
    /// micro-batches' gradients are summed in a fixed order.
    #[serde(default = "one")]
    pub workers: usize,
    /// Weight of the auxiliary image-token targets (each covered image token predicts its
    /// object's colour and shape words) relative to an answer token. 0 turns them off.
    #[serde(default)]
    pub aux_weight: f64,
    /// Weight of the training-only object-shape head: from the patch embedding's output,
    /// mean- and max-pooled over the image tokens each object covers, a linear head names the
    /// object's shape. It hands the visual stem a direct, local shape signal, which the
    /// answers alone deliver far too slowly; the head is not part of the saved model. 0 turns
    /// it off.
    #[serde(default)]
    pub stem_aux_weight: f64,
    /// Weight of the answer tokens of each question kind (`exists`, `left_of`, ...,
    /// `describe`) relative to the default 1. The batch loss is the weighted mean over
    /// answer tokens, so a weight shifts the gradient's share between kinds without changing
    /// its scale.
    #[serde(default)]
    pub kind_weights: BTreeMap<String, f64>,
    /// Training-only `How many {color} {shape}s are there?` questions per conversation (see
    /// `shapes::count_pair_for`); 0 turns them off.
    #[serde(default)]
    pub pair_counts: usize,
    /// Training-only `Where is the {color} {shape}?` questions per conversation (see
    /// `shapes::position_for`); 0 turns them off.
    #[serde(default)]
    pub pair_positions: usize,
    /// With `aux_weight`, each covered image token also predicts its object's position (the
    /// fifth of the width holding its centre, the `position` questions' answer).
    #[serde(default)]
    pub aux_positions: bool,
    /// Weight of the training-only attention targets (`Example::attn_targets`): at each
    /// answer position, query heads 0 and 1 of layer `attn_aux_layer` are pulled towards the
    /// image tokens of the objects the question names (the mean over targets of
    /// -log(attention mass on them)). It hands the model the retrieval that binding questions
    /// need (which object's colour, which two objects' positions) instead of leaving it to be
    /// discovered from the answers. 0 turns it off.
    #[serde(default)]
    pub attn_aux_weight: f64,
    /// The decoder layer (0-based) whose heads the attention targets supervise.
    #[serde(default)]
    pub attn_aux_layer: usize,
    /// The question kinds whose answers get attention targets; empty means every kind.
    #[serde(default)]
    pub attn_aux_kinds: Vec<String>,
    /// With `Some(f)`, the attention targets keep `attn_aux_weight` through warmup, then
    /// their weight falls linearly to 0 at step `f × steps` and stays 0 after: the targets
    /// start the lookup, then the answers alone shape it. (Warmup is where a time limit may
    /// cut `steps`, so the weights before it never depend on `steps`.) `None`: the same weight
    /// for the whole run.
    #[serde(default)]
    pub attn_aux_until: Option<f64>,
    /// A checkpoint (a `pixlm train` output directory) whose weights start this run instead
    /// of a random initialisation: a fine-tune, with a fresh optimizer and schedule. Its
    /// `config.json` fixes the model's sizes. Ignored when a run resumes (its own checkpoint
    /// holds the weights by then).
    #[serde(default)]
    pub init_from: Option<PathBuf>,
}

impl TrainConfig {
    /// The attention targets' weight at `step` (see `attn_aux_until`).
    pub fn attn_aux_weight_at(&self, step: usize) -> f64 {
        match self.attn_aux_until {
            None => self.attn_aux_weight,
            Some(_) if step < self.warmup => self.attn_aux_weight,
            Some(f) => {
                let (warm, end) = (self.warmup as f64, f * self.steps as f64);
                if end <= warm {
                    return 0.0;
                }
                self.attn_aux_weight * (1.0 - (step as f64 - warm) / (end - warm)).max(0.0)
            }
        }
    }

    /// The weight of an answer token of question kind `kind` (1 unless `kind_weights` says).
    pub fn kind_weight(&self, kind: &str) -> f64 {
        self.kind_weights.get(kind).copied().unwrap_or(1.0)
    }

    /// The summed weight of `ex`'s answer tokens.
    fn answer_weight(&self, ex: &Example) -> f64 {
        ex.target_kinds.iter().map(|k| self.kind_weight(k)).sum()
    }
}

/// Adds `grads` (in optimizer order; `None` where a variable got no gradient) into `sum`.
fn add_grads(
    sum: &mut [Option<Tensor>],
    grads: impl IntoIterator<Item = Option<Tensor>>,
) -> Result<()> {
    for (acc, g) in sum.iter_mut().zip(grads) {
        *acc = match (acc.take(), g) {
            (Some(a), Some(g)) => Some((a + g)?),
            (a, g) => a.or(g),
        };
    }
    Ok(())
}

/// Most sequences differentiated in one packed forward and backward (see
/// `Trainer::loss_and_grads`).
const MICRO_BATCH: usize = 4;

/// Parts of a batch whose gradients are summed separately, then added (see
/// `Trainer::loss_and_grads`): the summation order of the two-worker trainer that produced the
/// shipped model, kept so its recipe still reproduces it bit for bit.
const SUM_PARTS: usize = 2;

/// Classes of the object-shape head: circle, square, triangle.
const SHAPE_CLASSES: usize = 3;
/// Where a run keeps the object-shape head (beside, not in, the model).
const STEM_HEAD_FILE: &str = "stem_head.safetensors";

fn one() -> usize {
    1
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            spec: ModelSpec::preset("small").unwrap_or_else(|| unreachable!()),
            steps: 3000,
            batch: 32,
            per_image: 4,
            lr: 2e-3,
            min_lr_ratio: 0.05,
            warmup: 100,
            weight_decay: 0.01,
            clip: 1.0,
            seed: 0,
            save_every: 250,
            describe: true,
            workers: 1,
            aux_weight: 0.0,
            stem_aux_weight: 0.0,
            kind_weights: BTreeMap::new(),
            pair_counts: 0,
            pair_positions: 0,
            aux_positions: false,
            attn_aux_weight: 0.0,
            attn_aux_layer: 0,
            attn_aux_kinds: Vec::new(),
            attn_aux_until: None,
            init_from: None,
        }
    }
}

/// What a step reports to the caller (for the progress bar).
#[derive(Clone, Debug)]
pub struct StepStats {
    pub step: usize,
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f32,
    pub tokens: usize,
    pub secs: f64,
    /// The schedule's last step (`config.steps`, which a time limit may shorten).
    pub planned: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    config: TrainConfig,
    elapsed_secs: f64,
    loss_history: Vec<(usize, f32)>,
}

/// Learning rate at `step`: linear warmup, then cosine to `min_lr_ratio · lr`.
pub fn lr_at(c: &TrainConfig, step: usize) -> f64 {
    if step < c.warmup {
        return c.lr * (step + 1) as f64 / c.warmup as f64;
    }
    let span = (c.steps.saturating_sub(c.warmup)).max(1) as f64;
    let p = ((step - c.warmup) as f64 / span).min(1.0);
    let min = c.lr * c.min_lr_ratio;
    min + 0.5 * (c.lr - min) * (1.0 + (std::f64::consts::PI * p).cos())
}

/// AdamW with its moments kept so training can resume exactly.
struct AdamW {
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: usize,
    beta1: f64,
    beta2: f64,
    eps: f64,
    wd: f64,
}

impl AdamW {
    fn new(varmaps: &[&VarMap], wd: f64) -> Result<Self> {
        let mut vars: Vec<(String, Var)> = Vec::new();
        for vm in varmaps {
            vars.extend(
                vm.data()
                    .lock()
                    .map_err(|_| TrainError::Other("variable map lock poisoned".into()))?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let m = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            vars,
            m,
            v,
            t: 0,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            wd,
        })
    }

    /// `grads[i]` is the gradient of `vars[i]` (None: not reached by the loss).
    fn step(&mut self, grads: &[Option<Tensor>], lr: f64, scale: f64) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let Some(g) = &grads[i] else {
                continue;
            };
            let g = (g * scale)?;
            self.m[i] = ((&self.m[i] * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            self.v[i] = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let mhat = (&self.m[i] / bc1)?;
            let vhat = (&self.v[i] / bc2)?;
            let upd = (mhat / (vhat.sqrt()? + self.eps)?)?;
            let decay = if var.rank() >= 2 && !name.contains("norm") {
                self.wd
            } else {
                0.0
            };
            let theta = ((var.as_tensor() * (1.0 - lr * decay))? - (upd * lr)?)?;
            var.set(&theta)?;
        }
        Ok(())
    }

    fn save(&self, path: &Path) -> Result<()> {
        let mut map = std::collections::HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            map.insert(format!("m.{name}"), self.m[i].clone());
            map.insert(format!("v.{name}"), self.v[i].clone());
        }
        map.insert("t".into(), Tensor::new(&[self.t as u32], &Device::Cpu)?);
        candle_core::safetensors::save(&map, path)?;
        Ok(())
    }

    fn load(&mut self, path: &Path) -> Result<()> {
        let map = candle_core::safetensors::load(path, &Device::Cpu)?;
        for (i, (name, _)) in self.vars.iter().enumerate() {
            let get = |k: String| {
                map.get(&k)
                    .cloned()
                    .ok_or_else(|| TrainError::Other(format!("{}: no {k}", path.display())))
            };
            self.m[i] = get(format!("m.{name}"))?;
            self.v[i] = get(format!("v.{name}"))?;
        }
        let t: Vec<u32> = map
            .get("t")
            .ok_or_else(|| TrainError::Other("no optimizer step".into()))?
            .to_vec1()?;
        self.t = t.first().copied().unwrap_or(0) as usize;
        Ok(())
    }
}

/// Deterministic initialisation from the seed: matrices N(0, 0.02²), norms 1, biases 0.
fn init_weights(varmap: &VarMap, seed: u64, patch_fan_in: usize) -> Result<()> {
    use rand_distr::{Distribution, Normal};
    let data = varmap
        .data()
        .lock()
        .map_err(|_| TrainError::Other("lock poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let shape = var.shape().clone();
        let n = shape.elem_count();
        let vals: Vec<f32> = if name.contains("norm") {
            vec![1.0; n]
        } else if name.ends_with("bias") {
            vec![0.0; n]
        } else {
            let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
            for b in name.bytes() {
                h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
            }
            let mut rng = ShapesRng::seed_from_u64(h);
            let std = if name.contains("patch_embedding") {
                1.0 / (patch_fan_in as f64).sqrt()
            } else {
                0.02
            };
            let normal = Normal::new(0.0, std).map_err(|e| TrainError::Other(e.to_string()))?;
            (0..n).map(|_| normal.sample(&mut rng) as f32).collect()
        };
        var.set(&Tensor::from_vec(vals, shape, &Device::Cpu)?)?;
    }
    Ok(())
}

/// Loads the model weights of the checkpoint in `dir` into `varmap`, and, when the run has
/// an object-shape head (`head` not empty), that head's from beside them: required when
/// resuming the run's own checkpoint; optional when fine-tuning, since the head is
/// training-only and a checkpoint written without one leaves it at zero.
fn load_weights(varmap: &VarMap, head: &VarMap, dir: &Path, head_required: bool) -> Result<()> {
    let load = |vm: &VarMap, path: PathBuf| -> Result<()> {
        vm.clone()
            .load(&path)
            .map_err(|e| TrainError::Other(format!("{}: {e}", path.display())))
    };
    load(varmap, dir.join("model.safetensors"))?;
    let stem = dir.join(STEM_HEAD_FILE);
    if !head.all_vars().is_empty() && (head_required || stem.is_file()) {
        load(head, stem)?;
    }
    Ok(())
}

/// The model sizes of the checkpoint in `dir` (its `config.json`, as `save` writes it).
fn checkpoint_spec(dir: &Path) -> Result<ModelSpec> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| TrainError::Other(format!("{}: {e}", path.display())))?;
    let spec = v.get("pixlm_model_spec").cloned().ok_or_else(|| {
        TrainError::Other(format!(
            "{} has no `pixlm_model_spec`: only checkpoints written by `pixlm train` can start a \
             fine-tune",
            path.display()
        ))
    })?;
    serde_json::from_value(spec)
        .map_err(|e| TrainError::Other(format!("{}: pixlm_model_spec: {e}", path.display())))
}

/// The pieces of a training run that do not change between steps.
pub struct Trainer {
    pub config: TrainConfig,
    pub out: PathBuf,
    tokenizer: tokenizers::Tokenizer,
    varmap: VarMap,
    /// The training-only object-shape head (empty when `stem_aux_weight` is 0), saved apart
    /// from the model in `stem_head.safetensors`.
    head: VarMap,
    model: Model,
    opt: AdamW,
    pre: PreprocessConfig,
    vocab_rows: usize,
    pub step: usize,
    elapsed: f64,
    history: Vec<(usize, f32)>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

impl Trainer {
    /// Starts a new run in `out`, or resumes the one there when `resume` is set and a
    /// checkpoint exists.
    pub fn new(config: TrainConfig, out: &Path, resume: bool) -> Result<Self> {
        let tokenizer = tokenizer_train::try_build_tokenizer()
            .map_err(|e| TrainError::Other(format!("building the tokenizer: {e}")))?;
        let vocab_rows = tokenizer.get_vocab_size(true).div_ceil(64) * 64;
        let special = NeoSpecialIds {
            img_start: tok_id(&tokenizer, "<img>")?,
            img_end: tok_id(&tokenizer, "</img>")?,
            img_context: tok_id(&tokenizer, "<IMG_CONTEXT>")?,
        };
        let state_path = out.join("trainer_state.json");
        let (mut config, prior) = if resume && state_path.is_file() {
            let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
            let st: TrainerState = serde_json::from_str(&text)
                .map_err(|e| TrainError::Other(format!("{}: {e}", state_path.display())))?;
            (st.config.clone(), Some(st))
        } else {
            (config, None)
        };
        let init_from = match (&prior, &config.init_from) {
            (None, Some(dir)) => {
                config.spec = checkpoint_spec(dir)?;
                Some(dir.clone())
            }
            _ => None,
        };
        let neo = config.spec.neo_config(vocab_rows)?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = Model::from_var_builder(&vb, &ModelConfig::Neo(neo), Some(special))?;
        init_weights(&varmap, config.seed, 3 * config.spec.patch_size.pow(2))?;
        let head = VarMap::new();
        if config.stem_aux_weight > 0.0 {
            let hb = VarBuilder::from_varmap(&head, DType::F32, &Device::Cpu);
            let zero = candle_nn::Init::Const(0.0);
            let width = 2 * config.spec.hidden;
            hb.get_with_hints((SHAPE_CLASSES, width), "stem_head.weight", zero)?;
            hb.get_with_hints(SHAPE_CLASSES, "stem_head.bias", zero)?;
            init_weights(&head, config.seed, 1)?;
        }
        let mut opt = AdamW::new(&[&varmap, &head], config.weight_decay)?;
        let mut step = 0;
        let (mut elapsed, mut history) = (0.0, Vec::new());
        if let Some(st) = prior {
            load_weights(&varmap, &head, out, true)?;
            opt.load(&out.join("optimizer.safetensors"))?;
            step = st.step;
            elapsed = st.elapsed_secs;
            history = st.loss_history;
        } else if let Some(dir) = init_from {
            load_weights(&varmap, &head, &dir, false)?;
        }
        let pre = PreprocessConfig {
            patch_size: config.spec.patch_size,
            min_pixels: config.spec.min_pixels,
            max_pixels: config.spec.max_pixels,
            ..PreprocessConfig::default()
        };
        Ok(Self {
            config,
            out: out.to_path_buf(),
            tokenizer,
            varmap,
            head,
            model,
            opt,
            pre,
            vocab_rows,
            step,
            elapsed,
            history,
        })
    }

    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    pub fn preprocess_config(&self) -> &PreprocessConfig {
        &self.pre
    }

    /// The examples of step `step` (same for every run with the same seed).
    pub fn batch_for(
        config: &TrainConfig,
        tok: &tokenizers::Tokenizer,
        pre: &PreprocessConfig,
        step: usize,
    ) -> Result<Vec<Example>> {
        let mut rng = ShapesRng::seed_from_u64(
            config
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add(step as u64),
        );
        let mut bal = QuestionBalancer::new();
        let mut batch = draw_batch(
            &mut rng,
            &mut bal,
            tok,
            pre,
            config.batch,
            Turns {
                per_image: config.per_image,
                describe: config.describe,
                pair_counts: config.pair_counts,
                positions: config.pair_positions,
                aux_positions: config.aux_positions,
            },
        )?;
        if !config.attn_aux_kinds.is_empty() {
            for ex in &mut batch {
                ex.attn_targets
                    .retain(|t| config.attn_aux_kinds.contains(&t.kind));
            }
        }
        Ok(batch)
    }

    /// Logits at every position of each example, one packed forward from empty caches.
    fn logits(&self, batch: &[Example], trace: Option<&mut Trace>) -> Result<Vec<Option<Tensor>>> {
        let mut caches: Vec<KvCache> = batch.iter().map(|_| KvCache::new()).collect();
        let mut inputs: Vec<SeqInput> = batch
            .iter()
            .zip(caches.iter_mut())
            .map(|(ex, cache)| SeqInput {
                ids: &ex.ids,
                images: &ex.images,
                decode: false,
                cache,
                logits: LogitsWanted::All,
            })
            .collect();
        let logits = self.model.forward(&mut inputs, trace)?;
        Ok(logits)
    }

    /// The cross-entropy summed over the supervised tokens of `part`, each weighed by its
    /// kind's weight, divided by `total`: the part's share of the weighted mean over a batch
    /// whose answer tokens weigh `total` in all; plus, with the
    /// object-shape head, its share of that head's mean loss over the batch's `objects`.
    fn loss_share(
        &self,
        batch: &[Example],
        total: f64,
        objects: usize,
        attn_total: usize,
    ) -> Result<Tensor> {
        let mut trace = Trace::default();
        let attn_w = self.config.attn_aux_weight_at(self.step);
        if attn_w > 0.0 {
            trace.attn_probe = Some(attn_probe(batch, self.config.attn_aux_layer));
        }
        let logits = self.logits(batch, Some(&mut trace))?;
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        let mut weights = Vec::new();
        let aux_w = self.config.aux_weight as f32;
        for (ex, l) in batch.iter().zip(logits) {
            let l = l.ok_or_else(|| TrainError::Other("no logits".into()))?;
            let aux: &[(usize, u32)] = if aux_w > 0.0 { &ex.aux } else { &[] };
            let all = ex.targets.iter().chain(aux);
            let pos: Vec<u32> = all.clone().map(|&(p, _)| p as u32).collect();
            let k = pos.len();
            rows.push(l.index_select(&Tensor::from_vec(pos, k, &Device::Cpu)?, 0)?);
            targets.extend(all.map(|&(_, t)| t));
            weights.extend(
                ex.target_kinds
                    .iter()
                    .map(|k| self.config.kind_weight(k) as f32),
            );
            weights.extend(std::iter::repeat_n(aux_w, aux.len()));
        }
        let n = weights.len();
        let picked = target_log_probs(&Tensor::cat(&rows, 0)?, targets)?;
        let weights = Tensor::from_vec(weights, n, &Device::Cpu)?;
        // Weighted negative log-likelihood over the batch's answer tokens, `total` their summed
        // weight (1 when every answer weighs nothing, so the auxiliary terms stay finite).
        let denom = if total > 0.0 { total } else { 1.0 };
        let mut loss = ((picked * weights)?.sum_all()? * (-1.0 / denom))?;
        if attn_w > 0.0 && attn_total > 0 {
            let nll = attn_target_nll(batch, &trace)?;
            loss = (loss + (nll * (attn_w / attn_total as f64))?)?;
        }
        match self.stem_head_logits(batch, trace.vision_embeds.as_ref())? {
            Some((logits, targets)) => {
                let nll = target_log_probs(&logits, targets)?.sum_all()?;
                let w = self.config.stem_aux_weight / objects.max(1) as f64;
                Ok((loss - (nll * w)?)?)
            }
            None => Ok(loss),
        }
    }

    /// The object-shape head's logits, one row per object of `batch` whose tokens are known,
    /// and the objects' shapes. `vision` is the patch embedding's output for all of the
    /// batch's images, in order. `None` when the head is off or no object is known.
    fn stem_head_logits(
        &self,
        batch: &[Example],
        vision: Option<&Tensor>,
    ) -> Result<Option<(Tensor, Vec<u32>)>> {
        let Some(vision) = vision else {
            return Ok(None);
        };
        // Clone the variables out (cheap handles) so that concurrent workers do not wait on
        // the map's lock while they pool.
        let (w, b) = match self.head.data().lock() {
            Ok(vars) => (
                vars.get("stem_head.weight").cloned(),
                vars.get("stem_head.bias").cloned(),
            ),
            Err(_) => return Err(TrainError::Other("variable map lock poisoned".into())),
        };
        let (Some(w), Some(b)) = (w, b) else {
            return Ok(None);
        };
        let per_token = self.pre.merge_size.max(1).pow(2);
        let act = vision.gelu_erf()?;
        let (mut pooled, mut targets, mut off) = (Vec::new(), Vec::new(), 0u32);
        for ex in batch {
            let mut starts = Vec::with_capacity(ex.images.len());
            for img in &ex.images {
                starts.push(off);
                off += (img.grid_h * img.grid_w / per_token) as u32;
            }
            for o in &ex.objects {
                let Some(&start) = starts.get(o.image) else {
                    continue;
                };
                let rows: Vec<u32> = o.tokens.iter().map(|&t| start + t).collect();
                let n = rows.len();
                let t = act.index_select(&Tensor::from_vec(rows, n, &Device::Cpu)?, 0)?;
                pooled.push(Tensor::cat(&[t.mean(0)?, t.max(0)?], 0)?);
                targets.push(o.shape);
            }
        }
        if pooled.is_empty() {
            return Ok(None);
        }
        let logits = Tensor::stack(&pooled, 0)?
            .matmul(&w.as_tensor().t()?)?
            .broadcast_add(b.as_tensor())?;
        Ok(Some((logits, targets)))
    }

    /// The mean attention mass that the attention targets' heads (layer `layer`) put on their
    /// target keys over `batch`: how well the model looks up the objects questions name
    /// (`None` when the batch has no attention target).
    pub fn attention_on_targets(&self, batch: &[Example], layer: usize) -> Result<Option<f64>> {
        let n: usize = batch.iter().map(|e| e.attn_targets.len()).sum();
        if n == 0 {
            return Ok(None);
        }
        let mut trace = Trace {
            attn_probe: Some(attn_probe(batch, layer)),
            ..Trace::default()
        };
        self.logits(batch, Some(&mut trace))?;
        let mut sum = 0f64;
        for ((ex, probs), rows) in batch.iter().zip(&trace.attn_probs).zip(probe_rows(&trace)?) {
            let Some(probs) = probs else { continue };
            for t in &ex.attn_targets {
                let Ok(row) = rows.binary_search(&(t.query as u32)) else {
                    continue;
                };
                let p: Vec<f32> = probs.get(row)?.get(t.head)?.to_vec1()?;
                sum += t.keys.iter().map(|&k| p[k as usize] as f64).sum::<f64>();
            }
        }
        Ok(Some(sum / n as f64))
    }

    /// How often the image tokens' auxiliary targets are the arg-max over the target words
    /// (colour words among colours, shape words among shapes): `(colour, shape)` accuracy;
    /// and how often the object-shape head names an object's shape (`None` when it is off).
    pub fn aux_accuracy(&self, batch: &[Example]) -> Result<(f64, f64, Option<f64>)> {
        let mut trace = Trace::default();
        let logits = self.logits(batch, Some(&mut trace))?;
        let head = match self.stem_head_logits(batch, trace.vision_embeds.as_ref())? {
            Some((logits, targets)) => {
                let pred: Vec<u32> = logits.argmax(candle_core::D::Minus1)?.to_vec1()?;
                let right = pred.iter().zip(&targets).filter(|(p, t)| p == t).count();
                Some(right as f64 / targets.len().max(1) as f64)
            }
            None => None,
        };
        let ids = |names: &[&str]| -> Vec<u32> {
            names
                .iter()
                .filter_map(|n| self.tokenizer.token_to_id(n))
                .collect()
        };
        let colors = ids(&[
            "red", "green", "blue", "yellow", "purple", "orange", "black", "gray",
        ]);
        let shapes = ids(&["circle", "square", "triangle"]);
        let (mut ok, mut n) = ([0usize; 2], [0usize; 2]);
        for (ex, l) in batch.iter().zip(logits) {
            let l = l.ok_or_else(|| TrainError::Other("no logits".into()))?;
            for &(p, t) in &ex.aux {
                let row: Vec<f32> = l.get(p)?.to_vec1()?;
                let (set, k) = if colors.contains(&t) {
                    (&colors, 0)
                } else {
                    (&shapes, 1)
                };
                let best = set
                    .iter()
                    .copied()
                    .max_by(|&a, &b| row[a as usize].total_cmp(&row[b as usize]));
                n[k] += 1;
                ok[k] += usize::from(best == Some(t));
            }
        }
        Ok((
            ok[0] as f64 / n[0].max(1) as f64,
            ok[1] as f64 / n[1].max(1) as f64,
            head,
        ))
    }

    /// Loss share and gradients (in optimizer order) of one micro-batch.
    fn micro_grads(
        &self,
        micro: &[Example],
        total: f64,
        objects: usize,
        attn_total: usize,
    ) -> Result<(f32, Vec<Option<Tensor>>)> {
        let loss = self.loss_share(micro, total, objects, attn_total)?;
        let grads = loss.backward()?;
        let grads = self
            .opt
            .vars
            .iter()
            .map(|(_, v)| grads.get(v.as_tensor()).cloned())
            .collect();
        Ok((loss.to_scalar::<f32>()?, grads))
    }

    /// The batch's mean loss and gradients.
    ///
    /// The batch is split into [`SUM_PARTS`] contiguous parts of about equal token counts, and
    /// each part into micro-batches of at most [`MICRO_BATCH`] sequences. `config.workers`
    /// threads take the micro-batches from a shared counter, each differentiating one at a
    /// time with single-threaded kernels. The gradients are then summed in a fixed order
    /// (each part's micro-batches in order, then the parts in order), so the result is the
    /// same for any number of workers, and the same as the earlier two-worker trainer that
    /// produced the shipped model (each worker summed its half; then the halves were added).
    /// Pulling work keeps every core busy to the end of a step whatever the micro-batches'
    /// costs (fixed halves left one worker idle for up to 15% of a step).
    ///
    /// Why micro-batches: a packed forward slices each sequence out of the packed activations,
    /// and candle's backward of a slice is a zero tensor of the *whole* packed size plus an add,
    /// so one backward costs O(sequences x packed length) in allocations and adds (profiled:
    /// page faults and element-wise adds were over 40% of a 16-sequence backward's time).
    fn loss_and_grads(&self, batch: &[Example]) -> Result<(f32, Vec<Option<Tensor>>)> {
        type Grads = Result<(f32, Vec<Option<Tensor>>)>;
        let total: f64 = batch.iter().map(|e| self.config.answer_weight(e)).sum();
        let objects: usize = batch.iter().map(|e| e.objects.len()).sum();
        let attn_total: usize = batch.iter().map(|e| e.attn_targets.len()).sum();
        let parts = split_balanced(batch, SUM_PARTS);
        // (part, micro-batch) in summation order.
        let micros: Vec<(usize, &[Example])> = parts
            .iter()
            .enumerate()
            .flat_map(|(p, part)| part.chunks(MICRO_BATCH).map(move |m| (p, m)))
            .collect();
        let slots: Vec<std::sync::Mutex<Option<Grads>>> =
            micros.iter().map(|_| Default::default()).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let work = || loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(&(_, micro)) = micros.get(i) else {
                break;
            };
            let r = self.micro_grads(micro, total, objects, attn_total);
            if let Ok(mut slot) = slots[i].lock() {
                *slot = Some(r);
            }
        };
        let workers = self.config.workers.clamp(1, micros.len().max(1));
        std::thread::scope(|sc| {
            let helpers: Vec<_> = (1..workers).map(|_| sc.spawn(work)).collect();
            work();
            for h in helpers {
                // A panicked helper leaves its micro-batch's slot empty: reported below.
                let _ = h.join();
            }
        });
        let n_vars = self.opt.vars.len();
        let mut part_sums: Vec<(f32, Vec<Option<Tensor>>)> =
            parts.iter().map(|_| (0f32, vec![None; n_vars])).collect();
        for ((part, _), slot) in micros.iter().zip(slots) {
            let r = slot
                .into_inner()
                .ok()
                .flatten()
                .ok_or_else(|| TrainError::Other("a training worker panicked".into()))?;
            let (l, grads) = r?;
            let (loss, sum) = &mut part_sums[*part];
            *loss += l;
            add_grads(sum, grads)?;
        }
        let mut loss = 0f32;
        let mut sum: Vec<Option<Tensor>> = vec![None; n_vars];
        for (l, grads) in part_sums {
            loss += l;
            add_grads(&mut sum, grads)?;
        }
        Ok((loss, sum))
    }

    /// One optimisation step on `batch`.
    pub fn train_step(&mut self, batch: &[Example]) -> Result<StepStats> {
        let t0 = Instant::now();
        let lr = lr_at(&self.config, self.step);
        let (loss, grads) = self.loss_and_grads(batch)?;
        let mut sq = 0f64;
        for g in grads.iter().flatten() {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        let norm = sq.sqrt();
        let scale = if norm > self.config.clip {
            self.config.clip / norm
        } else {
            1.0
        };
        self.opt.step(&grads, lr, scale)?;
        if !loss.is_finite() {
            return Err(TrainError::Other(format!(
                "loss became {loss} at step {}",
                self.step
            )));
        }
        self.step += 1;
        let secs = t0.elapsed().as_secs_f64();
        self.elapsed += secs;
        self.history.push((self.step, loss));
        Ok(StepStats {
            step: self.step,
            loss,
            lr,
            grad_norm: norm as f32,
            tokens: batch.iter().map(|e| e.ids.len()).sum(),
            secs,
            planned: self.config.steps,
        })
    }

    /// Writes the checkpoint (HF layout) and the state to resume from, atomically per file.
    pub fn save(&self) -> Result<()> {
        let out = &self.out;
        std::fs::create_dir_all(out).map_err(io(out))?;
        let write = |name: &str, bytes: &[u8]| -> Result<()> {
            let tmp = out.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
            std::fs::rename(&tmp, out.join(name)).map_err(io(out))
        };
        let cfg = self.config.spec.config_json(self.vocab_rows);
        write(
            "config.json",
            serde_json::to_string_pretty(&cfg)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        let tj = tokenizer_train::tokenizer_json(&self.tokenizer)
            .map_err(|e| TrainError::Other(e.to_string()))?;
        write("tokenizer.json", tj.as_bytes())?;
        let tc = tokenizer_train::tokenizer_config_json();
        write(
            "tokenizer_config.json",
            serde_json::to_string_pretty(&tc)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        let gen = serde_json::json!({"eos_token_id": tok_id(&self.tokenizer, "<|im_end|>")?, "do_sample": false});
        write(
            "generation_config.json",
            serde_json::to_string_pretty(&gen)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        let save = |name: &str, f: &dyn Fn(&Path) -> Result<()>| -> Result<()> {
            let tmp = out.join(format!(".{name}.tmp"));
            f(&tmp)?;
            std::fs::rename(&tmp, out.join(name)).map_err(io(out))
        };
        save("model.safetensors", &|p| Ok(self.varmap.save(p)?))?;
        if !self.head.all_vars().is_empty() {
            save(STEM_HEAD_FILE, &|p| Ok(self.head.save(p)?))?;
        }
        save("optimizer.safetensors", &|p| self.opt.save(p))?;
        let st = TrainerState {
            step: self.step,
            config: self.config.clone(),
            elapsed_secs: self.elapsed,
            loss_history: self.history.clone(),
        };
        write(
            "trainer_state.json",
            serde_json::to_string_pretty(&st)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        Ok(())
    }

    /// Runs to `config.steps`, drawing data on a second thread. `on_step` sees every step's
    /// figures.
    ///
    /// With a `time_limit`, the run is fitted to it once, at the end of warmup: the steps
    /// timed since the fifth step of this invocation give the time per step, and if the
    /// remaining steps would not end within [`TIME_PLAN_SHARE`] of the limit, `config.steps`
    /// is cut to the number that does. Up to the end of warmup the learning rate does not
    /// depend on `config.steps`, so the shortened run is exactly the run that `--steps` of
    /// the new length would give: it is reproducible, and its cosine decay still ends at its
    /// last step. If the machine then slows down, the run still saves and stops at the limit.
    ///
    /// With `stop_after`, the run saves and ends after that step, on the schedule of
    /// `config.steps`: the checkpoint is the one a full run holds at that step. The time fit
    /// then plans for the stop; if even that does not fit, the schedule is shortened as above
    /// and the run goes to its new end.
    pub fn run(
        &mut self,
        time_limit: Option<Duration>,
        stop_after: Option<usize>,
        on_step: &mut dyn FnMut(&StepStats),
    ) -> Result<()> {
        let mut stop_after = stop_after.filter(|&s| s < self.config.steps);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Example>>>(2);
        let (cfg, tok, pre) = (
            self.config.clone(),
            self.tokenizer.clone(),
            self.pre.clone(),
        );
        let (start, end) = (self.step, stop_after.unwrap_or(self.config.steps));
        let producer = std::thread::spawn(move || {
            for s in start..end {
                if tx.send(Trainer::batch_for(&cfg, &tok, &pre, s)).is_err() {
                    break;
                }
            }
        });
        let t0 = Instant::now();
        // Steps before this one pay for start-up and first-touch memory: not timed.
        let calibrate_from = start + 5;
        let mut calibration_start = None;
        while self.step < stop_after.unwrap_or(self.config.steps) {
            let batch = rx
                .recv()
                .map_err(|_| TrainError::Other("data thread stopped".into()))??;
            let stats = self.train_step(&batch)?;
            if self.step == calibrate_from {
                calibration_start = Some(Instant::now());
            }
            if let (Some(limit), Some(since)) = (time_limit, calibration_start) {
                let timed = self.step - calibrate_from;
                if self.step == self.config.warmup && timed >= 10 {
                    let per_step = since.elapsed().as_secs_f64() / timed as f64;
                    let end = stop_after.unwrap_or(self.config.steps);
                    let fit = fit_steps(
                        end,
                        self.step,
                        t0.elapsed().as_secs_f64(),
                        per_step,
                        limit.as_secs_f64(),
                    );
                    if fit < end {
                        self.config.steps = fit;
                        stop_after = None;
                    }
                }
            }
            on_step(&StepStats {
                planned: self.config.steps,
                ..stats
            });
            if self.step.is_multiple_of(self.config.save_every)
                || self.step == self.config.steps
                || Some(self.step) == stop_after
            {
                self.save()?;
            }
            if time_limit.is_some_and(|l| t0.elapsed() > l) {
                self.save()?;
                break;
            }
        }
        drop(rx);
        let _ = producer.join();
        Ok(())
    }
}

/// The share of a time limit that a run is planned to fill (see [`Trainer::run`]): the rest
/// absorbs the noise of the step-time estimate and the final save.
pub const TIME_PLAN_SHARE: f64 = 0.96;

/// How many steps a run planned for `steps` should take so that it ends within
/// [`TIME_PLAN_SHARE`] of `limit` seconds, given that `done` steps took `elapsed` seconds and
/// the rest take `per_step` seconds each: `steps` if they fit, never fewer than `done + 1`.
pub fn fit_steps(steps: usize, done: usize, elapsed: f64, per_step: f64, limit: f64) -> usize {
    let budget = TIME_PLAN_SHARE * limit - elapsed;
    if per_step <= 0.0 || steps.saturating_sub(done) as f64 * per_step <= budget {
        return steps;
    }
    // The rest does not fit, so `more` is below it and the result below `steps`.
    let more = (budget.max(0.0) / per_step).floor() as usize;
    done + more.max(1)
}

/// The attention probe of a batch: the query rows of each example's attention targets.
fn attn_probe(batch: &[Example], layer: usize) -> AttnProbe {
    let rows = batch
        .iter()
        .map(|ex| {
            let mut rows: Vec<u32> = ex.attn_targets.iter().map(|t| t.query as u32).collect();
            rows.sort_unstable();
            rows.dedup();
            rows
        })
        .collect();
    AttnProbe {
        layer,
        heads: ATTN_TARGET_HEADS,
        rows,
    }
}

/// The query rows a trace's attention probe asked for, per sequence.
fn probe_rows(trace: &Trace) -> Result<&[Vec<u32>]> {
    match &trace.attn_probe {
        Some(p) => Ok(&p.rows),
        None => Err(TrainError::Other("no attention probe in the trace".into())),
    }
}

/// Query heads the attention targets use (`AttnTarget::head` is below this).
const ATTN_TARGET_HEADS: usize = 2;

/// The summed -log(attention mass on the target keys) of `batch`'s attention targets, from
/// the probabilities of the probe [`attn_probe`] asked for.
fn attn_target_nll(batch: &[Example], trace: &Trace) -> Result<Tensor> {
    let mut sum: Option<Tensor> = None;
    for ((ex, probs), rows) in batch.iter().zip(&trace.attn_probs).zip(probe_rows(trace)?) {
        let Some(probs) = probs else { continue };
        let (r, heads, keys) = probs.dims3()?;
        let mut on = vec![0f32; r * heads * keys];
        let mut wanted = vec![0f32; r * heads];
        for t in &ex.attn_targets {
            let (Ok(row), true) = (rows.binary_search(&(t.query as u32)), t.head < heads) else {
                return Err(TrainError::Other(
                    "attention target outside the probe".into(),
                ));
            };
            wanted[row * heads + t.head] = 1.0;
            for &k in &t.keys {
                if (k as usize) < keys {
                    on[(row * heads + t.head) * keys + k as usize] = 1.0;
                }
            }
        }
        let on = Tensor::from_vec(on, (r, heads, keys), &Device::Cpu)?;
        let wanted = Tensor::from_vec(wanted, (r, heads), &Device::Cpu)?;
        let mass = (probs * on)?.sum(D::Minus1)?;
        let nll = ((mass + 1e-6)?.log()? * wanted)?.sum_all()?.neg()?;
        sum = Some(match sum {
            Some(s) => (s + nll)?,
            None => nll,
        });
    }
    match sum {
        Some(s) => Ok(s),
        None => Ok(Tensor::zeros((), DType::F32, &Device::Cpu)?),
    }
}

/// Log-probability of each row's target under `logits` (rows × classes): a (rows,) tensor.
fn target_log_probs(logits: &Tensor, targets: Vec<u32>) -> Result<Tensor> {
    let n = targets.len();
    let targets = Tensor::from_vec(targets, (n, 1), logits.device())?;
    let logp = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
    Ok(logp.gather(&targets, 1)?.squeeze(1)?)
}

/// Splits `batch` into at most `n` contiguous, non-empty parts of about equal token counts.
fn split_balanced(batch: &[Example], n: usize) -> Vec<&[Example]> {
    let n = n.clamp(1, batch.len().max(1));
    let total: usize = batch.iter().map(|e| e.ids.len()).sum();
    let mut parts = Vec::with_capacity(n);
    let (mut start, mut acc) = (0, 0);
    for (i, e) in batch.iter().enumerate() {
        acc += e.ids.len();
        let k = parts.len() + 1;
        // Close part k once it holds its share, keeping at least one example per later part.
        if k < n && acc * n >= total * k && batch.len() - (i + 1) >= n - k {
            parts.push(&batch[start..=i]);
            start = i + 1;
        }
    }
    if start < batch.len() {
        parts.push(&batch[start..]);
    }
    parts
}

fn tok_id(tok: &tokenizers::Tokenizer, s: &str) -> Result<u32> {
    tok.token_to_id(s)
        .ok_or_else(|| TrainError::Other(format!("tokenizer lacks {s}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_target_weight_hands_over_after_warmup() {
        let c = TrainConfig {
            steps: 1000,
            warmup: 100,
            attn_aux_weight: 0.5,
            ..TrainConfig::default()
        };
        assert_eq!(
            c.attn_aux_weight_at(900),
            0.5,
            "constant without a hand-over"
        );
        let c = TrainConfig {
            attn_aux_until: Some(0.5),
            ..c
        };
        // Full weight through warmup, then a straight line to 0 at step 500, and 0 after.
        assert_eq!(c.attn_aux_weight_at(0), 0.5);
        assert_eq!(c.attn_aux_weight_at(99), 0.5);
        assert_eq!(c.attn_aux_weight_at(100), 0.5);
        assert!((c.attn_aux_weight_at(300) - 0.25).abs() < 1e-12);
        assert_eq!(c.attn_aux_weight_at(500), 0.0);
        assert_eq!(c.attn_aux_weight_at(999), 0.0);
        // Warmup's weights do not depend on the run's length (a time limit may cut it).
        let cut = TrainConfig {
            steps: 400,
            ..c.clone()
        };
        assert_eq!(cut.attn_aux_weight_at(50), c.attn_aux_weight_at(50));
        // A hand-over that would end inside warmup ends with it.
        let short = TrainConfig {
            attn_aux_until: Some(0.05),
            ..c
        };
        assert_eq!(short.attn_aux_weight_at(99), 0.5);
        assert_eq!(short.attn_aux_weight_at(100), 0.0);
    }

    #[test]
    fn fit_steps_keeps_a_run_that_fits_and_cuts_one_that_does_not() {
        // 60 of 1000 steps done in 60 s, 1 s a step, 20 minutes: 1000 s more fits in 1152 s.
        assert_eq!(fit_steps(1000, 60, 60.0, 1.0, 1200.0), 1000);
        // A 10-minute limit: 0.96 × 600 − 60 = 516 s left, 516 more steps.
        assert_eq!(fit_steps(1000, 60, 60.0, 1.0, 600.0), 576);
        // Already past the limit: one more step, never fewer.
        assert_eq!(fit_steps(1000, 60, 700.0, 1.0, 600.0), 61);
        // Never longer than asked, whatever the estimate.
        assert_eq!(fit_steps(100, 60, 1.0, 0.001, 600.0), 100);
        assert_eq!(fit_steps(100, 60, 1.0, 0.0, 600.0), 100);
    }

    #[test]
    fn split_balanced_parts_are_contiguous_and_cover_the_batch() {
        let ex = |len: usize| Example {
            ids: vec![0; len],
            images: vec![],
            targets: vec![],
            target_kinds: vec![],
            aux: vec![],
            objects: vec![],
            turn_queries: vec![],
            attn_targets: vec![],
            kind: String::new(),
        };
        let batch: Vec<Example> = [10, 30, 20, 20, 5, 15].into_iter().map(ex).collect();
        let parts = split_balanced(&batch, 2);
        let sizes: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        // 100 tokens: the first part closes once it holds half (10 + 30 + 20 = 60 >= 50).
        assert_eq!(sizes, vec![3, 3]);
        let mut at = batch.as_ptr();
        for p in &parts {
            assert_eq!(p.as_ptr(), at);
            at = at.wrapping_add(p.len());
        }
        assert_eq!(split_balanced(&batch[..1], 2).len(), 1);
        assert!(split_balanced(&[], 2).is_empty());
    }
}
