//! The response cache: stored answers of deterministic requests (greedy or seeded), bounded
//! in entries and bytes, least recently used evicted first.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

#[derive(Clone, Debug, PartialEq)]
pub struct CachedAnswer {
    pub text: String,
    pub finish_reason: &'static str,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// A 128-bit key from two independent SipHash passes over the canonical request text.
pub fn key_of(canonical: &str) -> u128 {
    let mut a = std::collections::hash_map::DefaultHasher::new();
    ("pixlm-a", canonical).hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    ("pixlm-b", canonical).hash(&mut b);
    ((a.finish() as u128) << 64) | b.finish() as u128
}

pub struct ResponseCache {
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    tick: u64,
    map: HashMap<u128, (CachedAnswer, u64)>,
    order: BTreeMap<u64, u128>,
}

fn size_of(a: &CachedAnswer) -> usize {
    a.text.len() + 64
}

impl ResponseCache {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            max_entries,
            max_bytes,
            bytes: 0,
            tick: 0,
            map: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&mut self, key: u128) -> Option<CachedAnswer> {
        self.tick += 1;
        let tick = self.tick;
        let (a, t) = self.map.get_mut(&key)?;
        self.order.remove(t);
        *t = tick;
        self.order.insert(tick, key);
        Some(a.clone())
    }

    pub fn insert(&mut self, key: u128, answer: CachedAnswer) {
        let size = size_of(&answer);
        if self.max_entries == 0 || size > self.max_bytes {
            return;
        }
        if let Some((old, t)) = self.map.remove(&key) {
            self.order.remove(&t);
            self.bytes -= size_of(&old);
        }
        while self.map.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            let Some((_, k)) = self.order.pop_first() else {
                break;
            };
            if let Some((old, _)) = self.map.remove(&k) {
                self.bytes -= size_of(&old);
            }
        }
        self.tick += 1;
        self.order.insert(self.tick, key);
        self.map.insert(key, (answer, self.tick));
        self.bytes += size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ans(t: &str) -> CachedAnswer {
        CachedAnswer {
            text: t.into(),
            finish_reason: "stop",
            prompt_tokens: 1,
            completion_tokens: 1,
        }
    }

    #[test]
    fn lru_by_entries_and_bytes() {
        let mut c = ResponseCache::new(2, 1 << 20);
        c.insert(1, ans("a"));
        c.insert(2, ans("b"));
        assert!(c.get(1).is_some());
        c.insert(3, ans("c"));
        assert!(c.get(2).is_none(), "2 was least recently used");
        assert!(c.get(1).is_some() && c.get(3).is_some());

        let mut c = ResponseCache::new(100, 200);
        c.insert(1, ans(&"x".repeat(100)));
        c.insert(2, ans(&"y".repeat(100)));
        assert_eq!(c.len(), 1);
        assert!(c.get(2).is_some());
        c.insert(3, ans(&"z".repeat(1000)));
        assert!(c.get(3).is_none(), "larger than the whole cache");
        assert_ne!(key_of("a"), key_of("b"));
    }
}
