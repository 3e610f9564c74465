//! Image-token probe of a training checkpoint: `cargo run --release -p pixlm-train --example
//! probe -- RUN_DIR [BATCHES]` prints how often covered image tokens predict their object's
//! colour and shape (a diagnostic of what the vision path has learned), and, per layer, how
//! much attention heads 0 and 1 put on the objects questions name at the answer position (the
//! attention targets of `--attn-aux-weight`; chance is about an object's share of the keys).
use pixlm_train::trainer::{TrainConfig, Trainer};
fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("RUN_DIR"));
    let batches: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(4);
    let t = Trainer::new(TrainConfig::default(), &dir, true).expect("loading the run");
    let (mut c, mut s, mut h) = (0.0, 0.0, None);
    let layers = t.config.spec.layers;
    let mut attn = vec![0.0; layers];
    for b in 0..batches {
        let batch = Trainer::batch_for(
            &t.config,
            t.tokenizer(),
            t.preprocess_config(),
            1_000_000 + b,
        )
        .expect("data");
        let (ci, si, head) = t.aux_accuracy(&batch).expect("forward");
        if let Some(a) = head {
            h = Some(h.unwrap_or(0.0) + a / batches as f64);
        }
        c += ci;
        s += si;
        for (l, a) in attn.iter_mut().enumerate() {
            *a += t
                .attention_on_targets(&batch, l)
                .expect("forward")
                .unwrap_or(0.0);
        }
    }
    println!(
        "image tokens: colour {:.1}%  shape {:.1}%",
        100.0 * c / batches as f64,
        100.0 * s / batches as f64
    );
    if let Some(h) = h {
        println!(
            "object-shape head: {:.1}% of objects named right",
            100.0 * h
        );
    }
    let attn: Vec<String> = attn
        .iter()
        .map(|a| format!("{:.1}%", 100.0 * a / batches as f64))
        .collect();
    println!(
        "attention on the named objects (heads 0-1, layers 0..{layers}): {}",
        attn.join(" ")
    );
}
