//! Streaming detokenizer and stop strings.
//!
//! * [`StreamDecoder`] turns token ids, one at a time, into text chunks that never split a
//!   UTF-8 character, whose concatenation equals `tokenizer.decode(all_ids)`.
//! * [`StopMatcher`] cuts a text stream at the first stop string, holding back text that
//!   might be the start of one.

use std::sync::Arc;
use tokenizers::Tokenizer;

/// An error from the tokenizer while decoding a stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// `tokenizers` failed to decode the current window of ids.
    #[error("failed to decode token ids {ids:?}: {message}")]
    Decode {
        /// The window of ids that was being decoded.
        ids: Vec<u32>,
        /// The tokenizer's error message.
        message: String,
    },
}

/// If a trailing run of U+FFFD is held back for more than this many tokens, it is treated as
/// genuinely invalid and flushed, which bounds the decode window.
const MAX_PENDING_TOKENS: usize = 32;

const REPLACEMENT: char = '\u{FFFD}';

/// Incremental, UTF-8-safe detokenizer.
///
/// Byte-level BPE tokens can hold part of a character (an emoji is often 2-4 tokens). The
/// decoder keeps a small window of recent ids and, on every [`push`](Self::push), decodes
/// that window and emits only what is new compared with the text already emitted. A trailing
/// run of U+FFFD (what the tokenizer produces for an incomplete byte sequence) is held back
/// until later tokens complete it. Once the window's text is fully emitted, the window is
/// shrunk to the last chunk's tokens (kept as left context so that decoders which strip or
/// add spaces behave as they do on the whole sequence), so each push decodes only a few ids.
///
/// Token ids the tokenizer does not know (the model's embedding usually has more rows than
/// the tokenizer has ids, e.g. 151936 rows for the 151669 ids of Qwen3's tokenizer) decode
/// to the empty string and are otherwise ignored. `tokenizers::Tokenizer::decode` (0.22)
/// silently drops such ids too rather than failing, so the stream still equals
/// `tokenizer.decode(all_ids)`; checking `id_to_token` first also keeps them out of the
/// decode window.
#[derive(Clone)]
pub struct StreamDecoder {
    tokenizer: Arc<Tokenizer>,
    skip_special_tokens: bool,
    /// Window of ids: `ids[..read]` is the left context plus the tokens already fully
    /// emitted; `ids[read..]` are tokens whose text is (partly) held back.
    ids: Vec<u32>,
    /// Number of ids in the window whose text is fully emitted.
    read: usize,
    /// The prefix of `decode(ids)` that has already been emitted (or belongs to the
    /// left context).
    emitted: String,
}

impl std::fmt::Debug for StreamDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecoder")
            .field("skip_special_tokens", &self.skip_special_tokens)
            .field("ids", &self.ids)
            .field("read", &self.read)
            .field("emitted", &self.emitted)
            .finish_non_exhaustive()
    }
}

impl StreamDecoder {
    /// Builds a decoder over a clone of `tokenizer`.
    ///
    /// Cloning a large tokenizer costs a few milliseconds; prefer
    /// [`from_shared`](Self::from_shared) when one tokenizer serves many requests.
    /// `skip_special_tokens` is passed to `Tokenizer::decode`: with `true`, special added
    /// tokens (e.g. `<|im_end|>`) produce no text.
    pub fn new(tokenizer: &Tokenizer, skip_special_tokens: bool) -> Self {
        Self::from_shared(Arc::new(tokenizer.clone()), skip_special_tokens)
    }

    /// Builds a decoder over a shared tokenizer (no copy).
    pub fn from_shared(tokenizer: Arc<Tokenizer>, skip_special_tokens: bool) -> Self {
        Self {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            read: 0,
            emitted: String::new(),
        }
    }

    /// The tokenizer this decoder uses.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// Whether special tokens are skipped.
    pub fn skip_special_tokens(&self) -> bool {
        self.skip_special_tokens
    }

    fn decode_window(&self) -> Result<String, StreamError> {
        self.tokenizer
            .decode(&self.ids, self.skip_special_tokens)
            .map_err(|e| StreamError::Decode {
                ids: self.ids.clone(),
                message: e.to_string(),
            })
    }

    /// Feeds one generated id; returns the text it completes (possibly empty).
    ///
    /// The returned text never ends inside a UTF-8 character and never ends with a U+FFFD
    /// that later tokens could still turn into a real character. Ids unknown to the
    /// tokenizer return `""` and leave the state untouched.
    pub fn push(&mut self, id: u32) -> Result<String, StreamError> {
        if self.tokenizer.id_to_token(id).is_none() {
            return Ok(String::new());
        }
        self.ids.push(id);
        let full = match self.decode_window() {
            Ok(full) => full,
            Err(e) => {
                // Leave the state as before this id, so later pushes are not poisoned.
                self.ids.pop();
                return Err(e);
            }
        };
        let start = self.common_start(&full);
        let stable = full.trim_end_matches(REPLACEMENT);
        let pending_tokens = self.ids.len() - self.read;
        if stable.len() == full.len() || pending_tokens > MAX_PENDING_TOKENS {
            // Everything decoded is final: emit it and shrink the window to this chunk.
            let out = full.get(start..).unwrap_or_default().to_string();
            self.compact();
            Ok(out)
        } else {
            // Hold back the trailing U+FFFD run; emit what precedes it.
            let end = stable.len().max(start);
            let out = full.get(start..end).unwrap_or_default().to_string();
            self.emitted = full.get(..end).unwrap_or_default().to_string();
            Ok(out)
        }
    }

    /// Byte offset in `full` from which new text starts: the length of the emitted prefix.
    ///
    /// Text is expected only to grow at the end. If `full` no longer starts with the emitted
    /// prefix (a decoder that rewrites earlier text; byte-level BPE never does), the same
    /// number of bytes is skipped, rounded down to a character boundary: nothing is emitted
    /// twice, at the cost of possibly missing the rewritten characters. Logged at debug.
    fn common_start(&self, full: &str) -> usize {
        if full.starts_with(self.emitted.as_str()) {
            return self.emitted.len();
        }
        tracing::debug!(
            emitted = %self.emitted,
            full = %full,
            "stream decoder: window text changed before the emitted point"
        );
        let mut start = self.emitted.len().min(full.len());
        while !full.is_char_boundary(start) {
            start -= 1;
        }
        start
    }

    /// All window text is emitted: keep the tokens since the last compaction as left
    /// context for the next ones (HF `prefix_offset = read_offset` scheme).
    fn compact(&mut self) {
        let context_start = self.read;
        self.ids.drain(..context_start);
        self.read = self.ids.len();
        match self.decode_window() {
            Ok(text) => self.emitted = text,
            Err(e) => {
                // Only the left context is lost; the stream goes on.
                tracing::warn!("stream decoder: dropping context after decode error: {e}");
                self.reset();
            }
        }
    }

    /// Flushes the text still held back (an invalid trailing byte sequence comes out as
    /// U+FFFD rather than being lost) and resets the decoder for a new sequence.
    pub fn finish(&mut self) -> String {
        let out = match self.decode_window() {
            Ok(full) => {
                let start = self.common_start(&full);
                full.get(start..).unwrap_or_default().to_string()
            }
            Err(e) => {
                tracing::warn!("stream decoder: final decode failed: {e}");
                String::new()
            }
        };
        self.reset();
        out
    }

    /// Drops all state (window and held-back text) without emitting anything.
    pub fn reset(&mut self) {
        self.ids.clear();
        self.read = 0;
        self.emitted.clear();
    }
}

/// Result of [`StopMatcher::push`] / [`StopMatcher::finish`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopOutcome {
    /// Text that is safe to emit now.
    pub text: String,
    /// Index (into the `stops` given to [`StopMatcher::new`]) of the stop string that was
    /// hit; `None` while generation may go on. When set, `text` is everything before the
    /// stop string and generation should end.
    pub stop: Option<usize>,
}

impl StopOutcome {
    /// Whether a stop string was hit.
    pub fn is_stop(&self) -> bool {
        self.stop.is_some()
    }
}

/// Finds stop strings in a stream of text chunks.
///
/// Text that could be the beginning of a stop string is held back until the next chunks
/// decide. A stop string may span any number of chunks. The stream is cut at the first
/// position where a stop string *ends* (if several end there, the longest wins); the text
/// before that stop string is emitted, the stop string and everything after it are not.
/// This rule gives the same result however the text is split into chunks.
///
/// Empty stop strings are ignored.
#[derive(Clone, Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Held-back text: a suffix of the stream that is a proper prefix of some stop string.
    held: String,
    /// Stop string hit, once the stream has stopped.
    stopped: Option<usize>,
    /// Length in bytes of the longest stop string.
    max_len: usize,
}

impl StopMatcher {
    /// Creates a matcher for `stops`. Indices reported in [`StopOutcome::stop`] refer to
    /// this vector.
    pub fn new(stops: Vec<String>) -> Self {
        let max_len = stops.iter().map(String::len).max().unwrap_or(0);
        Self {
            stops,
            held: String::new(),
            stopped: None,
            max_len,
        }
    }

    /// The stop strings, as given to [`new`](Self::new).
    pub fn stops(&self) -> &[String] {
        &self.stops
    }

    /// Whether a stop string has been hit.
    pub fn is_stopped(&self) -> bool {
        self.stopped.is_some()
    }

    /// Text currently held back as a possible stop-string prefix.
    pub fn held_back(&self) -> &str {
        &self.held
    }

    /// Feeds the next chunk of text.
    ///
    /// Once a stop string has been hit, every further push returns empty text with the same
    /// `stop` index.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if let Some(i) = self.stopped {
            return StopOutcome {
                text: String::new(),
                stop: Some(i),
            };
        }
        if self.max_len == 0 {
            return StopOutcome {
                text: text.to_string(),
                stop: None,
            };
        }
        self.held.push_str(text);

        // Earliest end position of any stop string; ties -> longest (earliest start).
        let mut best: Option<(usize, usize, usize)> = None; // (end, start, index)
        for (i, stop) in self.stops.iter().enumerate() {
            if stop.is_empty() {
                continue;
            }
            if let Some(start) = self.held.find(stop.as_str()) {
                let end = start + stop.len();
                let better = match best {
                    None => true,
                    Some((e, s, _)) => end < e || (end == e && start < s),
                };
                if better {
                    best = Some((end, start, i));
                }
            }
        }
        if let Some((_, start, i)) = best {
            let mut out = std::mem::take(&mut self.held);
            out.truncate(start);
            self.stopped = Some(i);
            return StopOutcome {
                text: out,
                stop: Some(i),
            };
        }

        // No stop: hold back the longest suffix that is a proper prefix of a stop string.
        let keep_from = self.holdback_start();
        let rest = self.held.split_off(keep_from);
        let out = std::mem::replace(&mut self.held, rest);
        StopOutcome {
            text: out,
            stop: None,
        }
    }

    /// Byte index in `held` where the longest suffix that is a proper prefix of some stop
    /// string begins (`held.len()` when there is none).
    fn holdback_start(&self) -> usize {
        let len = self.held.len();
        // Only suffixes shorter than the longest stop string can be proper prefixes.
        let lowest = len.saturating_sub(self.max_len.saturating_sub(1));
        let Some(first) = (lowest..len).find(|&i| self.held.is_char_boundary(i)) else {
            return len;
        };
        for (offset, _) in self.held[first..].char_indices() {
            let i = first + offset;
            let suffix = &self.held[i..];
            if self
                .stops
                .iter()
                .any(|s| s.len() > suffix.len() && s.starts_with(suffix))
            {
                return i;
            }
        }
        len
    }

    /// Ends the stream: releases the held-back text (nothing once a stop was hit).
    pub fn finish(&mut self) -> StopOutcome {
        StopOutcome {
            text: std::mem::take(&mut self.held),
            stop: self.stopped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixtures_dir() -> PathBuf {
        match std::env::var_os("PIXLM_FIXTURES") {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/fixtures"
            )),
        }
    }

    fn qwen_tokenizer() -> Option<Tokenizer> {
        let path = fixtures_dir().join("qwen3-tiny/model/tokenizer.json");
        if !path.exists() {
            eprintln!("skipping: {} not found", path.display());
            return None;
        }
        match Tokenizer::from_file(&path) {
            Ok(t) => Some(t),
            Err(e) => panic!("failed to load {}: {e}", path.display()),
        }
    }

    fn encode(tok: &Tokenizer, text: &str) -> Vec<u32> {
        tok.encode(text, false).expect("encode").get_ids().to_vec()
    }

    /// Pushes ids one by one; returns the chunks (finish appended as the last chunk).
    fn stream(dec: &mut StreamDecoder, ids: &[u32]) -> Vec<String> {
        let mut chunks: Vec<String> = ids.iter().map(|&id| dec.push(id).expect("push")).collect();
        chunks.push(dec.finish());
        chunks
    }

    const TEXTS: &[&str] = &[
        "Hello, world! This is a plain ASCII sentence.",
        "Emoji: 😀🎉👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 done.",
        "中文测试：你好，世界！机器学习模型正在生成文本。",
        "Combining accents: e\u{301} a\u{300} n\u{303} o\u{308}\u{304} Z\u{335}\u{321}a\u{33e}",
        "mixed 日本語 and 한국어 with 🚀 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math ∑∫√ and tabs\tand\nnewlines",
        "  leading spaces and trailing   ",
        "ØÆÅ ñ ü ß œ — “quotes” ‘single’ … €£¥",
    ];

    #[test]
    fn stream_equals_full_decode_and_never_splits_characters() {
        let Some(tok) = qwen_tokenizer() else { return };
        let shared = Arc::new(tok.clone());
        for &text in TEXTS {
            let ids = encode(&tok, text);
            let want = tok.decode(&ids, true).expect("decode");
            let mut dec = StreamDecoder::from_shared(shared.clone(), true);
            let chunks = stream(&mut dec, &ids);
            for c in &chunks {
                assert!(
                    !c.contains(REPLACEMENT),
                    "chunk {c:?} of {text:?} has U+FFFD"
                );
            }
            assert_eq!(chunks.concat(), want, "text {text:?}");
            // With the sequence complete, finish() has nothing left to flush.
            assert_eq!(chunks.last().map(String::as_str), Some(""));
        }
    }

    #[test]
    fn multi_token_characters_are_held_until_complete() {
        let Some(tok) = qwen_tokenizer() else { return };
        // Find a string whose encoding splits a character across tokens.
        let text = "👨‍👩‍👧‍👦𝔘";
        let ids = encode(&tok, text);
        assert!(ids.len() > 1);
        let mut dec = StreamDecoder::new(&tok, false);
        let mut empties = 0;
        let mut out = String::new();
        for &id in &ids {
            let c = dec.push(id).expect("push");
            if c.is_empty() {
                empties += 1;
            }
            assert!(!c.contains(REPLACEMENT));
            out.push_str(&c);
        }
        out.push_str(&dec.finish());
        assert!(empties > 0, "expected some tokens to complete no character");
        assert_eq!(out, text);
    }

    #[test]
    fn window_stays_small() {
        let Some(tok) = qwen_tokenizer() else { return };
        let text = TEXTS.concat().repeat(20);
        let ids = encode(&tok, &text);
        let mut dec = StreamDecoder::new(&tok, false);
        let mut out = String::new();
        for &id in &ids {
            out.push_str(&dec.push(id).expect("push"));
            assert!(dec.ids.len() <= 12, "window grew to {}", dec.ids.len());
        }
        out.push_str(&dec.finish());
        assert_eq!(out, tok.decode(&ids, false).expect("decode"));
    }

    #[test]
    fn random_token_sequences_match_full_decode() {
        let Some(tok) = qwen_tokenizer() else { return };
        let shared = Arc::new(tok.clone());
        // Random ids produce many partial and invalid byte sequences.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for trial in 0..40 {
            let len = 20 + (next() % 200) as usize;
            let ids: Vec<u32> = (0..len)
                .map(|_| match next() % 10 {
                    // Mostly byte-ish tokens (ids < 256 are single bytes), some specials,
                    // some ids past the vocabulary.
                    0..=4 => (next() % 256) as u32,
                    5 => 151_643 + (next() % 30) as u32,
                    6 => 151_669 + (next() % 300) as u32,
                    _ => (next() % 151_643) as u32,
                })
                .collect();
            for skip in [false, true] {
                let mut dec = StreamDecoder::from_shared(shared.clone(), skip);
                let got = stream(&mut dec, &ids).concat();
                let want = tok.decode(&ids, skip).expect("decode");
                assert_eq!(got, want, "trial {trial} skip {skip} ids {ids:?}");
            }
        }
    }

    #[test]
    fn ids_past_the_vocabulary_decode_to_nothing() {
        let Some(tok) = qwen_tokenizer() else { return };
        assert!(tok.id_to_token(151_900).is_none());
        let ids = encode(&tok, "Hi 😀 there");
        let mut dec = StreamDecoder::new(&tok, false);
        assert_eq!(dec.push(151_900).expect("push"), "");
        assert_eq!(dec.push(u32::MAX).expect("push"), "");
        let mut out = String::new();
        for &id in &ids {
            out.push_str(&dec.push(id).expect("push"));
            // Interleave unknown ids, even in the middle of a multi-token character.
            assert_eq!(dec.push(151_935).expect("push"), "");
        }
        out.push_str(&dec.finish());
        assert_eq!(out, "Hi 😀 there");
        // tokenizers itself drops unknown ids silently.
        assert_eq!(tok.decode(&[151_900], false).expect("decode"), "");
    }

    #[test]
    fn special_tokens_skipped_or_kept() {
        let Some(tok) = qwen_tokenizer() else { return };
        let im_end = tok.token_to_id("<|im_end|>").expect("<|im_end|> id");
        let mut ids = encode(&tok, "Answer: 42");
        ids.push(im_end);
        ids.extend(encode(&tok, " after"));

        let mut keep = StreamDecoder::new(&tok, false);
        assert_eq!(
            stream(&mut keep, &ids).concat(),
            "Answer: 42<|im_end|> after"
        );

        let mut skip = StreamDecoder::from_shared(Arc::new(tok.clone()), true);
        let chunks = stream(&mut skip, &ids);
        assert_eq!(chunks.concat(), "Answer: 42 after");
        assert_eq!(chunks.concat(), tok.decode(&ids, true).expect("decode"));
    }

    #[test]
    fn invalid_trailing_bytes_flush_as_replacement() {
        let Some(tok) = qwen_tokenizer() else { return };
        // "中" is E4 B8 AD; byte-level tokens for single bytes exist in the vocabulary
        // (byte 0xE4 is rendered as 'ä' in GPT-2 byte-level notation).
        let ids = encode(&tok, "中");
        let first_byte = tok.token_to_id("ä").expect("byte token 0xE4");
        let mut dec = StreamDecoder::new(&tok, false);
        assert_eq!(dec.push(encode(&tok, "ok")[0]).expect("push"), "ok");
        assert_eq!(dec.push(first_byte).expect("push"), "");
        assert_eq!(dec.finish(), "\u{FFFD}");

        // An incomplete byte followed by valid text: the U+FFFD comes out then.
        let mut dec = StreamDecoder::new(&tok, false);
        assert_eq!(dec.push(first_byte).expect("push"), "");
        let a = encode(&tok, "a");
        assert_eq!(dec.push(a[0]).expect("push"), "\u{FFFD}a");
        // And the decoder keeps working afterwards.
        let mut out = String::new();
        for &id in &ids {
            out.push_str(&dec.push(id).expect("push"));
        }
        out.push_str(&dec.finish());
        assert_eq!(out, "中");
    }

    fn run_stops(stops: &[&str], chunks: &[&str]) -> (String, Option<usize>) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for c in chunks {
            let o = m.push(c);
            out.push_str(&o.text);
            if o.is_stop() {
                return (out, o.stop);
            }
        }
        let o = m.finish();
        out.push_str(&o.text);
        (out, o.stop)
    }

    /// Every way to split `text` into single characters and into two pieces gives the same
    /// result as pushing it whole.
    fn check_chunking(stops: &[&str], text: &str, want: (&str, Option<usize>)) {
        let want = (want.0.to_string(), want.1);
        assert_eq!(run_stops(stops, &[text]), want, "whole {text:?}");
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(run_stops(stops, &refs), want, "per char {text:?}");
        for (i, _) in text.char_indices() {
            let (a, b) = text.split_at(i);
            assert_eq!(run_stops(stops, &[a, b]), want, "split at {i} {text:?}");
        }
    }

    #[test]
    fn stop_strings_basic_and_spanning_chunks() {
        check_chunking(&["STOP"], "hello STOP world", ("hello ", Some(0)));
        check_chunking(&["STOP"], "no stop here", ("no stop here", None));
        check_chunking(&["</answer>"], "x</ans", ("x</ans", None));
        assert_eq!(
            run_stops(&["<|end|>"], &["abc<", "|e", "nd", "|>tail"]),
            ("abc".to_string(), Some(0))
        );
    }

    #[test]
    fn overlapping_prefixes() {
        check_chunking(&["ab"], "aab", ("a", Some(0)));
        check_chunking(&["ab"], "aaab", ("aa", Some(0)));
        check_chunking(&["aab"], "aaab", ("a", Some(0)));
        check_chunking(&["abab"], "abababx", ("", Some(0)));
        check_chunking(&["abc"], "ababc", ("ab", Some(0)));
        check_chunking(&["ab"], "aa", ("aa", None));
    }

    #[test]
    fn several_stops() {
        // The stop that ends first wins; at equal end the longer one.
        check_chunking(&["world", "lo w"], "hello world", ("hel", Some(1)));
        check_chunking(&["abc", "b"], "xabc", ("xa", Some(1)));
        check_chunking(&["c", "abc"], "xabc", ("x", Some(1)));
        check_chunking(&["\n\n", "User:"], "a\nb\n\nUser:", ("a\nb", Some(0)));
        check_chunking(&["", "😀"], "emoji 😀 here", ("emoji ", Some(1)));
        check_chunking(&["中文"], "中国中文", ("中国", Some(0)));
    }

    #[test]
    fn holdback_and_release() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        let o = m.push("abc ST");
        assert_eq!(
            o,
            StopOutcome {
                text: "abc ".into(),
                stop: None
            }
        );
        assert_eq!(m.held_back(), "ST");
        let o = m.push("ART");
        assert_eq!(o.text, "START");
        assert_eq!(m.push("S").text, "");
        let o = m.finish();
        assert_eq!(
            o,
            StopOutcome {
                text: "S".into(),
                stop: None
            }
        );

        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("xSTOPy").stop, Some(0));
        assert!(m.is_stopped());
        assert_eq!(
            m.push("more"),
            StopOutcome {
                text: String::new(),
                stop: Some(0)
            }
        );
        assert_eq!(m.finish().text, "");

        let mut none = StopMatcher::new(Vec::new());
        assert_eq!(none.push("anything").text, "anything");
        assert_eq!(none.finish().text, "");
    }

    #[test]
    fn decoder_and_stop_matcher_together() {
        let Some(tok) = qwen_tokenizer() else { return };
        let text = "Think: 你好🙂 then <stop> and more";
        let ids = encode(&tok, text);
        let mut dec = StreamDecoder::new(&tok, true);
        let mut m = StopMatcher::new(vec!["<stop>".into(), "🙂 t".into()]);
        let mut out = String::new();
        let mut hit = None;
        for &id in &ids {
            let o = m.push(&dec.push(id).expect("push"));
            out.push_str(&o.text);
            if o.is_stop() {
                hit = o.stop;
                break;
            }
        }
        assert_eq!(hit, Some(1));
        assert_eq!(out, "Think: 你好");
    }
}
