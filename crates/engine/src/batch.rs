//! Batched generation: many prompts through one packed forward per step, so the weights are
//! read once per step for all of them. Used by `pixlm eval`; the server's scheduler builds on
//! the same `Model::forward` over a packed batch.

use crate::engine::{Engine, Prepared};
use crate::error::{EngineError, Result};
use crate::sampler::{Sampler, SamplingParams};
use pixlm_models::{KvCache, LogitsWanted, SeqInput};

/// Greedy answers for every prompt of `batch`, at most `max_new_tokens` each, stopping at the
/// model's stop tokens. Returns the generated ids (stop token excluded) per prompt.
pub fn greedy_batch(
    engine: &Engine,
    batch: &[Prepared],
    max_new_tokens: usize,
) -> Result<Vec<Vec<u32>>> {
    let mut caches: Vec<KvCache> = batch.iter().map(|_| KvCache::new()).collect();
    let mut outs: Vec<Vec<u32>> = vec![Vec::new(); batch.len()];
    let mut inputs: Vec<SeqInput> = batch
        .iter()
        .zip(caches.iter_mut())
        .map(|(p, cache)| SeqInput {
            ids: &p.ids,
            images: &p.images,
            decode: false,
            cache,
            logits: LogitsWanted::Last,
        })
        .collect();
    let mut logits = engine.model.forward(&mut inputs, None)?;
    drop(inputs);
    let mut active: Vec<usize> = (0..batch.len()).collect();
    let mut greedy = Sampler::new(SamplingParams::greedy())?;
    for _ in 0..max_new_tokens {
        let mut next_ids: Vec<[u32; 1]> = Vec::new();
        let mut still = Vec::new();
        for (slot, &i) in active.iter().enumerate() {
            let l = logits
                .get(slot)
                .and_then(|l| l.as_ref())
                .ok_or_else(|| EngineError::Request("model returned no logits".into()))?;
            let row: Vec<f32> = l.squeeze(0)?.to_vec1()?;
            let id = greedy.sample(&row, &[]);
            if engine.stop_ids.contains(&id) {
                continue;
            }
            outs[i].push(id);
            if outs[i].len() < max_new_tokens {
                still.push(i);
                next_ids.push([id]);
            }
        }
        if still.is_empty() {
            break;
        }
        let mut inputs: Vec<SeqInput> = Vec::with_capacity(still.len());
        let mut cache_refs: Vec<Option<&mut KvCache>> = caches.iter_mut().map(Some).collect();
        for (k, &i) in still.iter().enumerate() {
            let cache = cache_refs[i]
                .take()
                .ok_or_else(|| EngineError::Request("cache reused".into()))?;
            inputs.push(SeqInput {
                ids: &next_ids[k],
                images: &[],
                decode: true,
                cache,
                logits: LogitsWanted::Last,
            });
        }
        logits = engine.model.forward(&mut inputs, None)?;
        active = still;
    }
    Ok(outs)
}
