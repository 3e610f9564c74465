//! The NEO tokenizer ids of spec §2 (reference encodings) with the fixture's tokenizer.json,
//! and the ids the engine looks up by string.

use std::path::PathBuf;

fn tokenizer() -> Option<tokenizers::Tokenizer> {
    let root = std::env::var_os("PIXLM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
        });
    let p = root.join("neo-tiny/model/tokenizer.json");
    if !p.is_file() {
        eprintln!("no fixture tokenizer at {}; skipping", p.display());
        return None;
    }
    Some(tokenizers::Tokenizer::from_file(p).unwrap())
}

fn enc(t: &tokenizers::Tokenizer, s: &str) -> Vec<u32> {
    t.encode(s, false).unwrap().get_ids().to_vec()
}

#[test]
fn spec_reference_encodings() {
    let Some(t) = tokenizer() else { return };
    assert_eq!(enc(&t, "<|im_start|>user\n"), [151644, 872, 198]);
    assert_eq!(
        enc(&t, "<|im_end|>\n<|im_start|>assistant\n"),
        [151645, 198, 151644, 77091, 198]
    );
    assert_eq!(
        enc(&t, "<|im_start|>system\nReason step by step.<|im_end|>\n"),
        [151644, 8948, 198, 25139, 3019, 553, 3019, 13, 151645, 198]
    );
    let prompt = pixlm_engine::prompt::expand_images(
        "<|im_start|>user\n<image>\nWhat is in this image?<|im_end|>\n<|im_start|>assistant\n",
        &[4],
    );
    assert_eq!(
        enc(&t, &prompt),
        [
            151644, 872, 198, 151670, 151669, 151669, 151669, 151669, 151671, 198, 3838, 374, 304,
            419, 2168, 30, 151645, 198, 151644, 77091, 198
        ]
    );
    // `<image>` itself is not a token.
    assert_eq!(enc(&t, "<image>"), [27, 1805, 29]);
}

#[test]
fn neo_special_tokens_by_string() {
    let Some(t) = tokenizer() else { return };
    let want = [
        ("<IMG_CONTEXT>", 151669),
        ("<img>", 151670),
        ("</img>", 151671),
        ("<quad>", 151672),
        ("</quad>", 151673),
        ("<ref>", 151674),
        ("</ref>", 151675),
        ("<box>", 151676),
        ("</box>", 151677),
        ("<|action_start|>", 151678),
        ("<|action_end|>", 151679),
        ("<|plugin|>", 151680),
        ("<|interpreter|>", 151681),
    ];
    for (s, id) in want {
        assert_eq!(t.token_to_id(s), Some(id), "{s}");
    }
    assert_eq!(t.get_vocab_size(true), 151682);
}
