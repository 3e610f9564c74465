//! NEO 1.0 (spec `neo.md`): a Qwen3 backbone with Native-RoPE attention, fed by a two-conv
//! patch embedding layer. Everything NEO shares with Qwen3 lives in `transformer`.

use crate::config::NeoConfig;
use crate::error::{ModelError, Result};
use crate::kv::KvCache;
use crate::layers::linear::WeightRole;
use crate::layers::{rope, Linear};
use crate::transformer::{Backbone, Positions, Trace};
use crate::weights;
use crate::{ImageInput, SeqInput};
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

/// The ids of NEO's image tokens, looked up in the tokenizer by their strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeoSpecialIds {
    pub img_start: u32,
    pub img_end: u32,
    pub img_context: u32,
}

/// The patch embedding layer (spec §4): conv16 → GELU → 2-D interleaved RoPE → 2x2 conv.
struct PatchEmbedding {
    patch_w: Linear, // (C, 3*p*p)
    patch_b: Tensor, // (C)
    dense_w: Linear, // (D, 4*C) in (c, dy, dx) order
    dense_b: Tensor, // (D)
    channels: usize,
    patch: usize,
    inv_freq: Vec<f32>,
}

impl PatchEmbedding {
    fn load(vb: &VarBuilder, cfg: &NeoConfig) -> Result<Self> {
        let v = &cfg.vision_config;
        let (c, p, d) = (v.hidden_size, v.patch_size, cfg.llm_config.hidden_size);
        let vb = vb.pp("vision_model").pp("embeddings");
        let patch_w = Linear::load_as(
            &vb,
            (c, 3, p, p).into(),
            3 * p * p,
            c,
            "patch_embedding",
            WeightRole::Embedding,
        )?;
        let patch_b = weights::get(&vb, c, "patch_embedding.bias", candle_nn::Init::Const(0.))?;
        let dense_w = Linear::load_as(
            &vb,
            (d, c, 2, 2).into(),
            4 * c,
            d,
            "dense_embedding",
            WeightRole::Embedding,
        )?;
        let dense_b = weights::get(&vb, d, "dense_embedding.bias", candle_nn::Init::Const(0.))?;
        Ok(Self {
            patch_w,
            patch_b,
            dense_w,
            dense_b,
            channels: c,
            patch: p,
            inv_freq: rope::inv_freq(c / 2, v.rope_theta_vision),
        })
    }

    /// All images' tokens, concatenated in order: (Σ gh·gw/4, D).
    fn forward(&self, images: &[&ImageInput], dtype: DType) -> Result<Tensor> {
        let dev = self.patch_b.device();
        let feat = 3 * self.patch * self.patch;
        let mut pixels = Vec::new();
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for img in images {
            img.validate(self.patch)?;
            // The reference feeds bf16-rounded pixel values (spec §3.8).
            pixels.extend(img.pixels.iter().map(|&x| half::bf16::from_f32(x).to_f32()));
            for n in 0..img.grid_h * img.grid_w {
                xs.push((n % img.grid_w) as i64);
                ys.push((n / img.grid_w) as i64);
            }
        }
        let total = xs.len();
        let x = Tensor::from_vec(pixels, (total, feat), dev)?.to_dtype(dtype)?;
        let p = self
            .patch_w
            .forward(&x)?
            .broadcast_add(&self.patch_b)?
            .gelu_erf()?;
        // 2-D RoPE in f32: channel pairs of the first half rotate by column x, of the second
        // half by row y.
        let (cx, sx) = rope::tables(&xs, &self.inv_freq, dev)?;
        let (cy, sy) = rope::tables(&ys, &self.inv_freq, dev)?;
        let cos = Tensor::cat(&[cx, cy], 1)?;
        let sin = Tensor::cat(&[sx, sy], 1)?;
        let p = rope::interleaved(&p, &cos, &sin)?.to_dtype(dtype)?;
        // 2x2 stride-2 conv per image, as one matmul over gathered (c, dy, dx) vectors.
        let c = self.channels;
        let mut off = 0;
        let mut gathered = Vec::with_capacity(images.len());
        for img in images {
            let (gh, gw) = (img.grid_h, img.grid_w);
            let n = gh * gw;
            let g = p
                .narrow(0, off, n)?
                .reshape((gh / 2, 2, gw / 2, 2, c))?
                .permute((0, 2, 4, 1, 3))?
                .contiguous()?
                .reshape((gh / 2 * gw / 2, 4 * c))?;
            gathered.push(g);
            off += n;
        }
        let g = Tensor::cat(&gathered, 0)?;
        Ok(self.dense_w.forward(&g)?.broadcast_add(&self.dense_b)?)
    }
}

pub struct Neo {
    pub cfg: NeoConfig,
    pub special: NeoSpecialIds,
    vision: PatchEmbedding,
    backbone: Backbone,
}

/// T/H/W positions (spec §6.1) of prompt tokens continuing from the cache's state, and the
/// H/W grid of each image's context tokens. Decode steps use [`decode_positions`].
pub fn prompt_positions(
    ids: &[u32],
    images: &[&ImageInput],
    special: &NeoSpecialIds,
    merge: usize,
    last_t: i64,
    last_id: Option<u32>,
) -> Result<Positions> {
    let mut pos = Positions {
        t: Vec::with_capacity(ids.len()),
        h: Vec::with_capacity(ids.len()),
        w: Vec::with_capacity(ids.len()),
    };
    let mut t = last_t;
    let mut prev = last_id;
    let mut img = 0usize;
    let mut q = 0usize;
    for &id in ids {
        let shift = (prev == Some(special.img_start)) as i64;
        let is_ctx = id == special.img_context;
        t += shift + (!is_ctx) as i64;
        let (mut h, mut w) = (0, 0);
        if is_ctx {
            let Some(im) = images.get(img) else {
                return Err(ModelError::Input(format!(
                    "the prompt has more image-context tokens than the {} image(s) provide",
                    images.len()
                )));
            };
            let cols = im.grid_w / merge;
            h = (q / cols) as i64;
            w = (q % cols) as i64;
            q += 1;
            if q == im.num_tokens(merge) {
                img += 1;
                q = 0;
            }
        }
        pos.t.push(t);
        pos.h.push(h);
        pos.w.push(w);
        prev = Some(id);
    }
    if img != images.len() || q != 0 {
        let want: usize = images.iter().map(|i| i.num_tokens(merge)).sum();
        let got = ids.iter().filter(|&&i| i == special.img_context).count();
        return Err(ModelError::Input(format!(
            "the prompt has {got} image-context tokens but the images provide {want}"
        )));
    }
    Ok(pos)
}

/// Decode steps: T continues from the largest T so far, H = W = 0 (spec §6.3).
pub fn decode_positions(n: usize, last_t: i64) -> Positions {
    Positions {
        t: (1..=n as i64).map(|i| last_t + i).collect(),
        h: vec![0; n],
        w: vec![0; n],
    }
}

impl Neo {
    pub fn load(vb: &VarBuilder, cfg: &NeoConfig, special: NeoSpecialIds) -> Result<Self> {
        Ok(Self {
            vision: PatchEmbedding::load(vb, cfg)?,
            backbone: Backbone::load(&vb.pp("language_model"), &cfg.llm_config, cfg.tied(), true)?,
            cfg: cfg.clone(),
            special,
        })
    }

    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    pub(crate) fn backbone_mut(&mut self) -> &mut Backbone {
        &mut self.backbone
    }

    pub fn merge(&self) -> usize {
        self.cfg.vision_config.merge_size()
    }

    /// Positions of one sequence's new tokens given its cache state.
    pub fn positions(&self, s: &SeqInput, cache: &KvCache) -> Result<Positions> {
        if s.decode {
            Ok(decode_positions(s.ids.len(), cache.last_t))
        } else {
            let imgs: Vec<&ImageInput> = s.images.iter().collect();
            prompt_positions(
                s.ids,
                &imgs,
                &self.special,
                self.merge(),
                cache.last_t,
                cache.last_id,
            )
        }
    }

    pub fn forward(
        &self,
        batch: &mut [SeqInput],
        mut trace: Option<&mut Trace>,
    ) -> Result<Vec<Option<Tensor>>> {
        let mut pos = Positions::default();
        let mut ids = Vec::new();
        let mut images: Vec<&ImageInput> = Vec::new();
        for s in batch.iter() {
            pos.extend(&self.positions(s, s.cache)?);
            ids.extend_from_slice(s.ids);
            images.extend(s.images.iter());
        }
        let dtype = self.backbone.dtype();
        let text = self.backbone.embed(&ids)?;
        let x = if images.is_empty() {
            text
        } else {
            let vis = self.vision.forward(&images, dtype)?;
            if let Some(t) = trace.as_deref_mut() {
                t.vision_embeds = Some(vis.clone());
            }
            // Context rows are replaced (not summed) by the image tokens, in order (spec §5).
            let n = ids.len();
            let n_vis = vis.dim(0)?;
            let mut k = 0u32;
            let idx: Vec<u32> = ids
                .iter()
                .enumerate()
                .map(|(j, &id)| {
                    if id == self.special.img_context {
                        k += 1;
                        (n as u32) + k - 1
                    } else {
                        j as u32
                    }
                })
                .collect();
            if k as usize != n_vis {
                return Err(ModelError::Input(format!(
                    "{k} image-context tokens for {n_vis} image tokens"
                )));
            }
            let all = Tensor::cat(&[text, vis.to_dtype(dtype)?], 0)?;
            all.index_select(&Tensor::from_vec(idx, n, all.device())?, 0)?
        };
        if let Some(t) = trace.as_deref_mut() {
            t.inputs_embeds = Some(x.clone());
        }
        self.backbone.forward(x, &pos, batch, trace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SP: NeoSpecialIds = NeoSpecialIds {
        img_start: 151670,
        img_end: 151671,
        img_context: 151669,
    };

    fn image(gh: usize, gw: usize) -> ImageInput {
        ImageInput {
            pixels: vec![0.0; gh * gw * 768],
            grid_h: gh,
            grid_w: gw,
        }
    }

    #[test]
    fn spec_worked_example() {
        // Spec §2/§6.1: a 2x2-token image (4x4 patches) in the single-image prompt.
        let ids = [
            151644, 872, 198, 151670, 151669, 151669, 151669, 151669, 151671, 198, 3838, 374, 304,
            419, 2168, 30, 151645, 198, 151644, 77091, 198,
        ];
        let img = image(4, 4);
        let p = prompt_positions(&ids, &[&img], &SP, 2, -1, None).unwrap();
        let mut t: Vec<i64> = vec![0, 1, 2, 3, 4, 4, 4, 4];
        t.extend(5..=17);
        assert_eq!(p.t, t);
        assert_eq!(&p.h[..9], &[0, 0, 0, 0, 0, 0, 1, 1, 0]);
        assert_eq!(&p.w[..9], &[0, 0, 0, 0, 0, 1, 0, 1, 0]);
        assert_eq!(*p.t.iter().max().unwrap(), 17);
        let d = decode_positions(2, 17);
        assert_eq!(d.t, vec![18, 19]);
    }

    #[test]
    fn two_images_max_t() {
        // Addendum 1: <img> C C </img> <img> C C </img>: T = 0 1 1 2 3 4 4 5.
        let ids = [
            151670, 151669, 151669, 151671, 151670, 151669, 151669, 151671,
        ];
        let (a, b) = (image(2, 4), image(2, 4));
        let p = prompt_positions(&ids, &[&a, &b], &SP, 2, -1, None).unwrap();
        assert_eq!(p.t, vec![0, 1, 1, 2, 3, 4, 4, 5]);
        assert_eq!(p.w, vec![0, 0, 1, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn context_count_mismatch_is_an_error() {
        let ids = [151670, 151669, 151671];
        let img = image(2, 4);
        assert!(prompt_positions(&ids, &[&img], &SP, 2, -1, None).is_err());
        assert!(prompt_positions(&ids, &[], &SP, 2, -1, None).is_err());
    }
}
