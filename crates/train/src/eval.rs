//! Accuracy on a shapes evaluation directory (spec: `questions.jsonl` + images), batched.

use crate::data::question_message;
use crate::shapes::{read_eval_set, Question};
use pixlm_engine::batch::greedy_batch;
use pixlm_engine::Engine;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub overall: f64,
    pub per_kind: BTreeMap<String, f64>,
    pub questions: usize,
    #[serde(skip)]
    pub failures: Vec<(Question, String)>,
}

/// The spec's normalisation: trim whitespace and one trailing full stop, lower-case.
pub fn normalise(s: &str) -> String {
    let t = s.trim();
    let t = t.strip_suffix('.').unwrap_or(t);
    t.trim().to_lowercase()
}

/// Evaluates `engine` on the set in `dir`, `batch` prompts per packed forward. `progress`
/// gets (done, total).
pub fn evaluate(
    engine: &Engine,
    dir: &Path,
    batch: usize,
    limit: Option<usize>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport, Box<dyn std::error::Error + Send + Sync>> {
    let mut qs = read_eval_set(dir)?;
    if let Some(n) = limit {
        qs.truncate(n);
    }
    let total = qs.len();
    let mut correct: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut done = 0;
    for chunk in qs.chunks(batch.max(1)) {
        let mut prepared = Vec::with_capacity(chunk.len());
        for q in chunk {
            let msg = question_message(&q.image, &q.question);
            prepared.push(engine.prepare(&[msg], Some(dir))?);
        }
        let outs = greedy_batch(engine, &prepared, 8)?;
        for (q, ids) in chunk.iter().zip(outs) {
            let text = engine.tokenizer.decode(&ids, true).unwrap_or_default();
            let ok = normalise(&text) == q.answer;
            let e = correct.entry(q.kind.clone()).or_default();
            e.1 += 1;
            if ok {
                e.0 += 1;
            } else {
                failures.push((q.clone(), text));
            }
        }
        done += chunk.len();
        progress(done, total);
    }
    let right: usize = correct.values().map(|c| c.0).sum();
    Ok(EvalReport {
        overall: right as f64 / total.max(1) as f64,
        per_kind: correct
            .into_iter()
            .map(|(k, (r, n))| (k, r as f64 / n.max(1) as f64))
            .collect(),
        questions: total,
        failures,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn normalisation() {
        assert_eq!(super::normalise("  Red.\n"), "red");
        assert_eq!(super::normalise("yes"), "yes");
        assert_eq!(super::normalise("3 ."), "3");
    }
}
