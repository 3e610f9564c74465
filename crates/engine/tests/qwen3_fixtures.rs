//! Qwen3 / Qwen3-MoE through the engine on the reference fixtures (skipped when
//! `shared/fixtures` is absent): the checkpoint's own chat template reproduces each case's
//! prompt byte for byte, stop ids come from generation_config.json, images are refused, and
//! the whole parity check passes.

use pixlm_engine::check;
use pixlm_engine::{ChatMessage, Content, Engine, ImageUrl, Part};
use pixlm_models::LoadOptions;
use serde_json::Value;
use std::path::PathBuf;

fn fixtures() -> Option<PathBuf> {
    let p = std::env::var_os("PIXLM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
        });
    p.join("qwen3-tiny").is_dir().then_some(p)
}

fn case(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path.join("case.json")).unwrap()).unwrap()
}

#[test]
fn prompts_and_ids_match_the_reference() {
    let Some(fx) = fixtures() else {
        eprintln!("fixtures not found; skipping");
        return;
    };
    for set in ["qwen3-tiny", "qwen3-moe-tiny"] {
        let engine = Engine::load(&fx.join(set).join("model"), &LoadOptions::default()).unwrap();
        assert_eq!(engine.stop_ids, vec![151645, 151643], "{set}");
        assert!(engine.chat_template.is_some());
        for name in ["chat_short", "long_context"] {
            let dir = fx.join(set).join("cases").join(name);
            let spec = case(&dir);
            let messages: Vec<ChatMessage> =
                serde_json::from_value(spec["messages"].clone()).unwrap();
            let kwargs = spec["chat_template_kwargs"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let p = engine
                .prepare_with_kwargs(&messages, None, &engine.preprocess, &kwargs)
                .unwrap();
            assert_eq!(p.prompt, spec["prompt"].as_str().unwrap(), "{set}/{name}");
            let want: Vec<u32> = spec["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(p.ids, want, "{set}/{name}");
            assert!(p.images.is_empty());
        }
        // A text model refuses image parts with a clear error.
        let img = ChatMessage {
            role: "user".into(),
            content: Content::Parts(vec![
                Part::ImageUrl {
                    image_url: ImageUrl {
                        url: "x.png".into(),
                    },
                },
                Part::Text {
                    text: "What is this?".into(),
                },
            ]),
        };
        let e = engine.prepare(&[img], None).unwrap_err().to_string();
        assert!(e.contains("text-only"), "{e}");
        // Without a template a text model says so.
        let mut bare = engine;
        bare.chat_template = None;
        let e = bare
            .prepare(&[ChatMessage::text("user", "hi")], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no chat template"), "{e}");
    }
}

#[test]
fn parity_check_passes_for_qwen3_and_moe() {
    let Some(fx) = fixtures() else {
        eprintln!("fixtures not found; skipping");
        return;
    };
    for set in ["qwen3-tiny", "qwen3-moe-tiny"] {
        let reports = check::run_all(&fx.join(set), &LoadOptions::default(), &mut |_| {}).unwrap();
        assert_eq!(reports.len(), 2);
        for r in &reports {
            let failed: Vec<String> = r
                .lines
                .iter()
                .filter(|l| !l.pass)
                .map(|l| format!("{} {} ({})", l.name, l.value, l.note))
                .collect();
            assert!(
                r.passed(),
                "{}/{}: {:?} {:?}",
                r.set,
                r.case,
                r.error,
                failed
            );
            let names: Vec<&str> = r.lines.iter().map(|l| l.name.as_str()).collect();
            assert!(names.contains(&"prompt"), "{names:?}");
            if set == "qwen3-moe-tiny" {
                assert!(names.contains(&"router_selected_experts"), "{names:?}");
                assert!(names.contains(&"router_weights"), "{names:?}");
            }
        }
    }
}
