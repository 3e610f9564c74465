//! The prefix cache: the KV caches of finished sequences, keyed by what their tokens are (text
//! token ids, and each image token by its image's pixels and its place in the image), so that
//! a request whose prompt starts the same way (the next turn of a chat about the same image,
//! the same system prompt) prefills only what is new. Bounded in entries and bytes, least
//! recently used out first. Owned by the scheduler thread, so it needs no lock.

use pixlm_models::{ImageInput, KvCache};
use std::hash::{Hash, Hasher};

/// Keys of image tokens have this bit set; text tokens are their id.
const IMAGE_BIT: u64 = 1 << 63;

/// One key per prompt token: the token id for text, and for the `q`-th token of an image a
/// hash of the image's pixels, grid and `q`. `img_context` is the id image tokens have in the
/// prompt (`None` for text-only models); image `i` covers the `i`-th run of
/// `images[i].num_tokens(merge)` such tokens, as the model reads them.
pub fn content_key(
    ids: &[u32],
    images: &[ImageInput],
    img_context: Option<u32>,
    merge: usize,
) -> Vec<u64> {
    let mut out = Vec::with_capacity(ids.len());
    let mut img = 0usize;
    let mut q = 0usize;
    let mut image_hash = None;
    for &id in ids {
        if Some(id) != img_context {
            out.push(id as u64);
            continue;
        }
        let Some(im) = images.get(img) else {
            // More image tokens than images: the model refuses such a prompt; key it as text.
            out.push(id as u64);
            continue;
        };
        let h = *image_hash.get_or_insert_with(|| hash_image(im));
        let mut s = std::collections::hash_map::DefaultHasher::new();
        (h, q).hash(&mut s);
        out.push(s.finish() | IMAGE_BIT);
        q += 1;
        if q >= im.num_tokens(merge.max(1)) {
            img += 1;
            q = 0;
            image_hash = None;
        }
    }
    out
}

fn hash_image(im: &ImageInput) -> u64 {
    let mut s = std::collections::hash_map::DefaultHasher::new();
    (im.grid_h, im.grid_w, im.pixels.len()).hash(&mut s);
    for p in &im.pixels {
        p.to_bits().hash(&mut s);
    }
    s.finish()
}

pub fn is_image(k: u64) -> bool {
    k & IMAGE_BIT != 0
}

/// Whether cutting `key` before token `at` would split an image between two of its tokens.
pub fn splits_image(key: &[u64], at: usize) -> bool {
    at > 0 && at < key.len() && is_image(key[at]) && is_image(key[at - 1])
}

/// What a lookup found: a cache holding the first `len` tokens of the prompt, of which
/// `images` whole images.
pub struct Hit {
    pub cache: KvCache,
    pub len: usize,
    pub images: usize,
}

struct Entry {
    key: Vec<u64>,
    cache: KvCache,
    used: u64,
}

pub struct PrefixCache {
    entries: Vec<Entry>,
    max_entries: usize,
    max_bytes: usize,
    /// The blocks the entries hold (id to bytes), and their bytes: a block several entries
    /// share counted once.
    blocks: Blocks,
    bytes: usize,
    tick: u64,
    /// Reuse only prefixes at least this long (shorter ones save less than they cost).
    min_len: usize,
}

impl PrefixCache {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            entries: Vec::new(),
            max_entries,
            max_bytes,
            blocks: Blocks::new(),
            bytes: 0,
            tick: 0,
            min_len: 16,
        }
    }

    /// Cached tokens held, over all entries (a gauge for /metrics).
    pub fn tokens(&self) -> usize {
        self.entries.iter().map(|e| e.key.len()).sum()
    }

    /// Bytes of the blocks the entries hold, a block several entries share (a prefix two
    /// chats have in common) counted once: what the byte bound limits.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The blocks the entries hold, id to bytes (kept up to date by `insert`).
    pub fn blocks(&self) -> &Blocks {
        &self.blocks
    }

    /// The longest stored prefix of `key` that leaves at least one token to prefill (the
    /// model needs one to give logits) and ends outside any image (an image is encoded
    /// whole, with its bidirectional attention, or not at all). `ids` are the prompt's token
    /// ids (`key` is their [`content_key`]), for the cache's position state.
    pub fn lookup(&mut self, key: &[u64], ids: &[u32]) -> Option<Hit> {
        let limit = key.len().saturating_sub(1);
        let (best, mut len) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let n = e
                    .key
                    .iter()
                    .zip(key)
                    .take(limit)
                    .take_while(|(a, b)| a == b)
                    .count();
                (i, n)
            })
            .max_by_key(|&(_, n)| n)?;
        // Step back to the start of an image the prefix would cut.
        while splits_image(key, len) {
            len -= 1;
        }
        if len < self.min_len || len > ids.len() {
            return None;
        }
        self.tick += 1;
        let e = &mut self.entries[best];
        e.used = self.tick;
        let cache = e.cache.prefix(len, ids[len - 1]).ok()?;
        let images = count_images(&key[..len]);
        Some(Hit { cache, len, images })
    }

    /// Stores `cache`, which holds exactly the tokens `key` describes (trimmed to them). An entry whose key is
    /// a prefix of `key` (the previous turn of the same chat) is replaced.
    pub fn insert(&mut self, key: Vec<u64>, mut cache: KvCache) {
        if self.max_entries == 0 || cache.len() != key.len() || key.len() < self.min_len {
            return;
        }
        // A finished sequence's blocks may have room left; the store only reads them, so it
        // keeps (and counts) exactly the filled part.
        if cache.shrink_to_fit().is_err() {
            return;
        }
        if cache.bytes() > self.max_bytes {
            return;
        }
        self.entries
            .retain(|e| !(e.key.len() <= key.len() && key[..e.key.len()] == e.key[..]));
        // The least recently used entries go until the new one fits beside the rest.
        loop {
            let all = block_map(self.entries.iter().map(|e| &e.cache).chain([&cache]));
            let bytes: usize = all.values().sum();
            if self.entries.is_empty()
                || (self.entries.len() < self.max_entries && bytes <= self.max_bytes)
            {
                break;
            }
            let oldest = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.used)
                .map(|(i, _)| i)
                .unwrap_or(0);
            self.entries.swap_remove(oldest);
        }
        self.tick += 1;
        self.entries.push(Entry {
            key,
            cache,
            used: self.tick,
        });
        self.blocks = block_map(self.entries.iter().map(|e| &e.cache));
        self.bytes = self.blocks.values().sum();
    }
}

/// KV blocks by id, with their bytes over all layers (`KvCache::block_usage`).
pub type Blocks = std::collections::HashMap<u64, usize>;

/// The blocks `caches` hold, a block several hold once.
pub fn block_map<'a>(caches: impl Iterator<Item = &'a KvCache>) -> Blocks {
    let mut blocks = Blocks::new();
    for c in caches {
        blocks.extend(c.block_usage());
    }
    blocks
}

/// Images among `key` (runs of image keys).
pub fn count_images(key: &[u64]) -> usize {
    let mut n = 0;
    let mut prev = false;
    for &k in key {
        let img = is_image(k);
        if img && !prev {
            n += 1;
        }
        prev = img;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(v: f32) -> ImageInput {
        ImageInput {
            pixels: vec![v; 4 * 4 * 3 * 4],
            grid_h: 4,
            grid_w: 4,
        }
    }

    #[test]
    fn keys_tell_images_apart_by_content() {
        let ids = [1, 2, 9, 9, 9, 9, 3];
        let a = content_key(&ids, &[image(0.5)], Some(9), 2);
        let b = content_key(&ids, &[image(0.5)], Some(9), 2);
        let c = content_key(&ids, &[image(0.25)], Some(9), 2);
        assert_eq!(a, b);
        assert_eq!(a[..2], c[..2]);
        assert_ne!(a[2..6], c[2..6]);
        assert_eq!(a[6], 3);
        // The four tokens of one image differ from each other.
        let mut img = a[2..6].to_vec();
        img.dedup();
        assert_eq!(img.len(), 4);
        assert!(a[2..6].iter().all(|&k| is_image(k)));
        assert_eq!(count_images(&a), 1);
    }

    fn cache_of(n: usize) -> KvCache {
        KvCache::filled_for_tests(n)
    }

    #[test]
    fn lookup_finds_the_longest_prefix_and_never_cuts_an_image() {
        let mut pc = PrefixCache::new(4, 1 << 30);
        pc.min_len = 1;
        let ids: Vec<u32> = vec![1, 2, 9, 9, 9, 9, 3, 4, 5];
        let key = content_key(&ids, &[image(0.5)], Some(9), 2);
        pc.insert(key.clone(), cache_of(key.len()));
        assert_eq!(pc.tokens(), 9);
        // The same prompt: all but the last token is reused.
        let hit = pc.lookup(&key, &ids).unwrap();
        assert_eq!((hit.len, hit.images, hit.cache.len()), (8, 1, 8));
        // The hit holds the entry's blocks (no copy): one copy of them in use.
        let ids_of = |c: &KvCache| c.block_usage().map(|(id, _)| id).collect::<Vec<_>>();
        let mut held = ids_of(&hit.cache);
        held.sort_unstable();
        let mut stored: Vec<u64> = pc.blocks().keys().copied().collect();
        stored.sort_unstable();
        assert_eq!(held, stored);
        // A longer prompt (next turn): the whole entry.
        let mut ids2 = ids.clone();
        ids2.extend([6, 7]);
        let key2 = content_key(&ids2, &[image(0.5)], Some(9), 2);
        assert_eq!(pc.lookup(&key2, &ids2).unwrap().len, 9);
        // A prompt that differs inside the image: back to before the image.
        let key3 = content_key(&ids, &[image(0.25)], Some(9), 2);
        assert_eq!(pc.lookup(&key3, &ids).unwrap().len, 2);
        // A prompt that ends inside the image (limit len-1): never a partial image.
        let short = &ids[..5];
        let key4 = content_key(short, &[image(0.5)], Some(9), 2);
        assert_eq!(pc.lookup(&key4, short).unwrap().len, 2);
        // Nothing in common.
        assert!(pc.lookup(&[7, 7, 7], &[7, 7, 7]).is_none());
        // The next turn replaces the entry it extends.
        pc.insert(key2.clone(), cache_of(key2.len()));
        assert_eq!(pc.tokens(), 11);
    }

    #[test]
    fn bounded_in_entries_and_bytes() {
        let mut pc = PrefixCache::new(2, 1 << 30);
        pc.min_len = 1;
        for t in 0..3u64 {
            let key: Vec<u64> = (0..5).map(|i| 100 * t + i).collect();
            pc.insert(key, cache_of(5));
        }
        assert_eq!(pc.entries.len(), 2);
        // The least recently used (the first) went.
        assert!(pc
            .lookup(&[0, 1, 2, 3, 4, 5], &[0, 1, 2, 3, 4, 5])
            .is_none());
        assert!(pc
            .lookup(&[200, 201, 202, 9], &[200, 201, 202, 9])
            .is_some());
        let per = cache_of(5).bytes();
        let mut pc = PrefixCache::new(100, per * 2);
        pc.min_len = 1;
        for t in 0..5u64 {
            pc.insert((0..5).map(|i| 100 * t + i).collect(), cache_of(5));
            assert!(pc.bytes() <= per * 2);
        }
        // Entries that share blocks count them once: a cache of 70 of an 80-token entry's
        // tokens (the same block) fits beside it under a bound of one and a half entries.
        let whole = cache_of(80);
        let per = whole.bytes();
        let part = whole.prefix(70, 0).unwrap();
        let mut pc = PrefixCache::new(100, per * 3 / 2);
        pc.min_len = 1;
        pc.insert((0..80).collect(), whole);
        pc.insert((0..70).map(|i| i + 1000).collect(), part);
        assert_eq!(pc.entries.len(), 2);
        assert_eq!(pc.bytes(), per);
        // A cache of its own does not fit beside them: the least recently used entry goes.
        pc.insert((0..80).map(|i| i + 2000).collect(), cache_of(80));
        assert_eq!(pc.entries.len(), 1);
        assert_eq!(pc.bytes(), per);
        // A cache that does not match its key is not stored.
        pc.insert(vec![1, 2, 3], cache_of(5));
        assert!(pc.lookup(&[1, 2, 3, 4], &[1, 2, 3, 4]).is_none());
    }
}
