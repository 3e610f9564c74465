//! A sequence's KV cache and position state, kept in blocks.
//!
//! Each layer holds its keys and values as a list of blocks, (n_kv, capacity, d) and
//! (n_kv, capacity, dv) each, the cached tokens in order (a block keeps any room an append
//! did not fit into; only the last block is ever written again). A prompt chunk of at least
//! [`BLOCK_TOKENS`] tokens becomes a block as it is, without a copy; shorter appends (decode
//! steps) are written in place into the last block while it has room and belongs to this
//! cache alone, and otherwise into a new block of [`BLOCK_TOKENS`] tokens. Appending never
//! copies or moves what is cached (only [`KvCache::shrink_to_fit`] copies, blocks with room).
//!
//! Blocks are shared, never copied: [`KvCache::prefix`] and `clone` hand out the same blocks
//! (the last one cut to the prefix's length) marked as not owned, so the new cache starts a
//! block of its own at its first append. A cache writes only into its own last block, past
//! its own length, which no view of that block covers. So a second chat turn over the first
//! turn's cache (the server's prefix cache) costs no copy of the first turn, whatever its
//! length, and the blocks live as long as some cache holds them.
//!
//! Within one cache every layer has the same blocks over the same tokens (each layer gets
//! the same appends); [`KvCache::block_usage`] counts a block as the keys and values of its
//! tokens in every layer.

use candle_core::Tensor;
use std::sync::atomic::{AtomicU64, Ordering};

/// Tokens a block for short appends (decode steps) has room for.
pub const BLOCK_TOKENS: usize = 64;

/// Source of block ids (a block keeps its id in every cache that shares it).
static NEXT_BLOCK: AtomicU64 = AtomicU64::new(0);

/// One layer's keys and values for `len` tokens, in buffers of (n_kv, capacity, d).
#[derive(Debug)]
struct Block {
    k: Tensor,
    v: Tensor,
    /// Tokens of the buffers this cache uses (the first `len`).
    len: usize,
    /// Whether this cache may write into the buffers past `len`.
    owned: bool,
    /// The same in every cache sharing the buffers.
    id: u64,
    /// Bytes of the buffers (capacity included), whatever part this cache uses.
    bytes: usize,
}

impl Block {
    fn new(k: Tensor, v: Tensor, len: usize) -> Block {
        let bytes = (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes();
        Block {
            k,
            v,
            len,
            owned: true,
            id: NEXT_BLOCK.fetch_add(1, Ordering::Relaxed),
            bytes,
        }
    }

    fn capacity(&self) -> usize {
        self.k.dims().get(1).copied().unwrap_or(0)
    }

    /// The first `len` tokens, (n_kv, len, d) and (n_kv, len, dv): the buffers themselves when
    /// that is all of them, else views.
    fn views(&self, len: usize) -> candle_core::Result<(Tensor, Tensor)> {
        if len == self.capacity() {
            Ok((self.k.clone(), self.v.clone()))
        } else {
            Ok((self.k.narrow(1, 0, len)?, self.v.narrow(1, 0, len)?))
        }
    }

    /// The first `len` tokens of this block as a view another cache holds (never written).
    fn shared(&self, len: usize) -> candle_core::Result<Block> {
        let (k, v) = self.views(len)?;
        Ok(Block {
            k,
            v,
            len,
            owned: false,
            id: self.id,
            bytes: self.bytes,
        })
    }
}

impl Clone for Block {
    /// The clone shares the buffers' filled part and never writes into them.
    fn clone(&self) -> Self {
        Block {
            k: self.k.clone(),
            v: self.v.clone(),
            len: self.len,
            owned: false,
            id: self.id,
            bytes: self.bytes,
        }
    }
}

/// One layer's keys and values for attention: the cache's blocks in token order, each
/// (n_kv, tokens, d) for keys and (n_kv, tokens, dv) for values, possibly strided views with
/// their last dimension contiguous.
#[derive(Clone, Debug)]
pub struct KvBlocks {
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

impl KvBlocks {
    /// Keys and values in one block each.
    pub fn single(k: Tensor, v: Tensor) -> KvBlocks {
        KvBlocks {
            k: vec![k],
            v: vec![v],
        }
    }

    /// Keys over all blocks.
    pub fn n_keys(&self) -> usize {
        self.k
            .iter()
            .map(|k| k.dims().get(1).copied().unwrap_or(0))
            .sum()
    }

    /// Keys and values as one (n_kv, n_keys, d) and (n_kv, n_keys, dv) tensor each: the
    /// block itself when there is one, else the blocks concatenated (a copy).
    pub fn joined(&self) -> candle_core::Result<(Tensor, Tensor)> {
        match (self.k.as_slice(), self.v.as_slice()) {
            ([k], [v]) => Ok((k.clone(), v.clone())),
            (k, v) => Ok((Tensor::cat(k, 1)?, Tensor::cat(v, 1)?)),
        }
    }
}

/// Keys (post-RoPE) and values of every layer for one sequence, plus the T index of every
/// cached token (for the block mask) and the position state the next tokens continue from.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<Vec<Block>>,
    key_t: Vec<i64>,
    /// T of the last token seen; -1 before any.
    pub(crate) last_t: i64,
    /// The last token id seen (the NEO T rule looks one token back).
    pub(crate) last_id: Option<u32>,
}

impl KvCache {
    pub fn new() -> Self {
        Self {
            layers: Vec::new(),
            key_t: Vec::new(),
            last_t: -1,
            last_id: None,
        }
    }

    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.key_t.len()
    }

    pub fn is_empty(&self) -> bool {
        self.key_t.is_empty()
    }

    /// The T index the next decoded token gets minus one (the largest T so far).
    pub fn last_t(&self) -> i64 {
        self.last_t
    }

    pub(crate) fn key_t(&self) -> &[i64] {
        &self.key_t
    }

    /// Bytes of the key and value buffers held, over all layers (capacity included, and
    /// blocks shared with other caches counted in full).
    pub fn bytes(&self) -> usize {
        self.layers.iter().flatten().map(|b| b.bytes).sum()
    }

    /// Tokens the blocks of `layer` have room for (tests and diagnostics).
    pub fn capacity(&self, layer: usize) -> usize {
        self.layers
            .get(layer)
            .map_or(0, |l| l.iter().map(Block::capacity).sum())
    }

    /// Blocks of `layer` (tests and diagnostics).
    pub fn blocks(&self, layer: usize) -> usize {
        self.layers.get(layer).map_or(0, Vec::len)
    }

    /// Each block this cache holds, as its id (shared by every cache holding it) and its
    /// bytes summed over the layers, so that a caller can count blocks several caches share
    /// once.
    pub fn block_usage(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        let first = self.layers.first().map_or(&[][..], Vec::as_slice);
        first.iter().enumerate().map(|(i, b)| {
            let bytes = self
                .layers
                .iter()
                .filter_map(|l| l.get(i))
                .map(|b| b.bytes)
                .sum();
            (b.id, bytes)
        })
    }

    /// Drops the unused room of this cache's blocks (one copy of at most [`BLOCK_TOKENS`]
    /// tokens per block with room: the last one, or one a longer append skipped), for a cache
    /// that will only be read from now on, such as one kept for prefix reuse.
    pub fn shrink_to_fit(&mut self) -> candle_core::Result<()> {
        for l in self.layers.iter_mut() {
            for b in l.iter_mut() {
                if b.owned && b.capacity() > b.len {
                    let (k, v) = b.views(b.len)?;
                    *b = Block::new(k.contiguous()?, v.contiguous()?, b.len);
                }
            }
        }
        Ok(())
    }

    /// A cache of this one's first `len` tokens (the same blocks, the last one cut to `len`,
    /// which this cache never writes below its own length and which the new cache never
    /// writes), continuing after the token `last_id` at position `len - 1`. Errors when `len`
    /// is 0 or past the end.
    pub fn prefix(&self, len: usize, last_id: u32) -> candle_core::Result<KvCache> {
        if len == 0 || len > self.len() {
            candle_core::bail!("prefix of {len} tokens of a {}-token cache", self.len());
        }
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let mut out = Vec::new();
                let mut left = len;
                for b in l {
                    if left == 0 {
                        break;
                    }
                    let take = b.len.min(left);
                    out.push(b.shared(take)?);
                    left -= take;
                }
                Ok(out)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let key_t = self.key_t[..len].to_vec();
        Ok(KvCache {
            layers,
            last_t: key_t[len - 1],
            key_t,
            last_id: Some(last_id),
        })
    }

    /// A one-layer cache of `n` tokens at positions 0..n with zero keys and values (for
    /// tests of code that stores caches).
    #[doc(hidden)]
    pub fn filled_for_tests(n: usize) -> KvCache {
        let z = Tensor::zeros(
            (1, n, 2),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .ok();
        KvCache {
            layers: vec![z.map(|z| Block::new(z.clone(), z, n)).into_iter().collect()],
            key_t: (0..n as i64).collect(),
            last_t: n as i64 - 1,
            last_id: None,
        }
    }

    /// Appends this step's keys (n_kv, n, dk) and values (n_kv, n, dv) for `layer`, returning
    /// the layer's blocks (the cached tokens, then these) for attention.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
    ) -> candle_core::Result<KvBlocks> {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, Vec::new());
        }
        let len = self.key_t.len();
        let n = k.dim(1)?;
        let blocks = &mut self.layers[layer];
        let held: usize = blocks.iter().map(|b| b.len).sum();
        if held != len {
            candle_core::bail!("layer {layer} holds {held} tokens but {len} are cached");
        }
        // Differentiable keys stay in the graph as they are (training runs one chunk per
        // sequence, so they are the whole cache).
        let grad = k.track_op() || v.track_op();
        if n == 0 {
            // Nothing to store.
        } else if let Some(b) = blocks.last_mut().filter(|b| {
            b.owned
                && !grad
                && b.len + n <= b.capacity()
                && b.k.is_contiguous()
                && b.v.is_contiguous()
        }) {
            b.k.slice_set(&k.contiguous()?, 1, b.len)?;
            b.v.slice_set(&v.contiguous()?, 1, b.len)?;
            b.len += n;
        } else if grad || n >= BLOCK_TOKENS {
            // A prompt chunk is a block as it is.
            blocks.push(Block::new(k, v, n));
        } else {
            let room = |t: &Tensor| -> candle_core::Result<Tensor> {
                let (h, _, d) = t.dims3()?;
                let b = Tensor::zeros((h, BLOCK_TOKENS, d), t.dtype(), t.device())?;
                b.slice_set(&t.contiguous()?, 1, 0)?;
                Ok(b)
            };
            blocks.push(Block::new(room(&k)?, room(&v)?, n));
        }
        let (mut ks, mut vs) = (Vec::with_capacity(blocks.len()), Vec::new());
        for b in blocks.iter() {
            let (k, v) = b.views(b.len)?;
            ks.push(k);
            vs.push(v);
        }
        Ok(KvBlocks { k: ks, v: vs })
    }

    /// Records the positions of the tokens just appended to every layer.
    pub(crate) fn commit(&mut self, new_t: &[i64], last_id: Option<u32>) {
        self.key_t.extend_from_slice(new_t);
        if let Some(&t) = new_t.last() {
            self.last_t = t;
        }
        if last_id.is_some() {
            self.last_id = last_id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn kv(seed: u64, n: usize) -> (Tensor, Tensor) {
        (
            crate::seeded_randn(seed, 1.0, &[2, n, 4]),
            crate::seeded_randn(seed + 1000, 1.0, &[2, n, 3]),
        )
    }

    /// Appends `n` tokens (one layer) from `seed` and commits them; the layer's keys and
    /// values joined.
    fn push(c: &mut KvCache, seed: u64, n: usize) -> (Tensor, Tensor) {
        let (k, v) = kv(seed, n);
        let out = c.append(0, k, v).unwrap();
        let t0 = c.len() as i64;
        c.commit(&(t0..t0 + n as i64).collect::<Vec<_>>(), None);
        assert_eq!(out.n_keys(), c.len());
        out.joined().unwrap()
    }

    /// The keys and values the appended chunks concatenate to.
    fn expected(chunks: &[(u64, usize)]) -> (Tensor, Tensor) {
        let (ks, vs): (Vec<_>, Vec<_>) = chunks.iter().map(|&(s, n)| kv(s, n)).unzip();
        (Tensor::cat(&ks, 1).unwrap(), Tensor::cat(&vs, 1).unwrap())
    }

    fn same(a: &(Tensor, Tensor), b: &(Tensor, Tensor)) {
        assert_eq!(a.0.dims(), b.0.dims());
        assert_eq!(crate::max_abs_diff(&a.0, &b.0).unwrap(), 0.0);
        assert_eq!(crate::max_abs_diff(&a.1, &b.1).unwrap(), 0.0);
    }

    fn ids(c: &KvCache) -> Vec<u64> {
        c.block_usage().map(|(id, _)| id).collect()
    }

    #[test]
    fn prompts_are_blocks_and_decode_steps_fill_blocks_in_place() {
        let mut c = KvCache::new();
        let mut chunks = vec![(1, 70)];
        same(&push(&mut c, 1, 70), &expected(&chunks));
        // A prompt chunk is its own block, exactly full.
        assert_eq!((c.blocks(0), c.capacity(0)), (1, 70));
        for s in 2..140 {
            chunks.push((s, 1));
            same(&push(&mut c, s, 1), &expected(&chunks));
        }
        // 138 decode steps: blocks of 64, 64 and 10 of 64.
        assert_eq!(c.len(), 208);
        assert_eq!((c.blocks(0), c.capacity(0)), (4, 70 + 3 * BLOCK_TOKENS));
        assert_eq!(c.bytes(), 2 * (70 + 3 * BLOCK_TOKENS) * (4 + 3) * 4);
        // Short prompt chunks go into blocks too, in place while there is room.
        chunks.push((200, 5));
        same(&push(&mut c, 200, 5), &expected(&chunks));
        assert_eq!(c.blocks(0), 4);
        chunks.push((201, 60));
        same(&push(&mut c, 201, 60), &expected(&chunks));
        assert_eq!(c.blocks(0), 5);
        c.shrink_to_fit().unwrap();
        assert_eq!(c.capacity(0), c.len());
        chunks.push((99, 2));
        same(&push(&mut c, 99, 2), &expected(&chunks));
    }

    #[test]
    fn prefixes_and_clones_share_blocks_and_never_see_later_writes() {
        let mut a = KvCache::new();
        push(&mut a, 1, 6);
        push(&mut a, 2, 1); // room to write in place from now on
        assert!(a.capacity(0) > a.len());
        let mut b = a.prefix(4, 0).unwrap();
        let mut c = a.clone();
        // Nothing is copied: the prefix and the clone hold the owner's block.
        assert_eq!(ids(&b), ids(&a));
        assert_eq!(ids(&c), ids(&a));
        // The owner writes in place past its length; the prefix and the clone start blocks
        // of their own.
        push(&mut a, 3, 2);
        push(&mut b, 4, 3);
        assert_eq!(a.blocks(0), 1);
        assert_eq!(b.blocks(0), 2);
        assert_eq!(ids(&b)[0], ids(&a)[0]);
        push(&mut c, 5, 1);
        let a_all = push(&mut a, 6, 1);
        let b_all = push(&mut b, 7, 1);
        let c_all = push(&mut c, 8, 1);
        same(&a_all, &expected(&[(1, 6), (2, 1), (3, 2), (6, 1)]));
        let (k6, v6) = expected(&[(1, 6)]);
        let four = (k6.narrow(1, 0, 4).unwrap(), v6.narrow(1, 0, 4).unwrap());
        let (kb, vb) = expected(&[(4, 3), (7, 1)]);
        same(
            &b_all,
            &(
                Tensor::cat(&[&four.0, &kb], 1).unwrap(),
                Tensor::cat(&[&four.1, &vb], 1).unwrap(),
            ),
        );
        same(&c_all, &expected(&[(1, 6), (2, 1), (5, 1), (8, 1)]));
        // A prefix that ends inside a later block shares every block up to it.
        let mut long = KvCache::new();
        push(&mut long, 10, 80);
        for s in 0..10 {
            push(&mut long, 20 + s, 1);
        }
        let p = long.prefix(85, 0).unwrap();
        assert_eq!(ids(&p), ids(&long));
        assert_eq!(p.len(), 85);
        let p = long.prefix(80, 0).unwrap();
        assert_eq!(ids(&p), ids(&long)[..1].to_vec());
    }

    #[test]
    fn gradients_flow_through_appends() {
        let var = candle_core::Var::from_tensor(&crate::seeded_randn(3, 1.0, &[2, 3, 4])).unwrap();
        let mut c = KvCache::new();
        let (k, v) = c
            .append(0, var.as_tensor().clone(), kv(1, 3).1)
            .unwrap()
            .joined()
            .unwrap();
        c.commit(&[0, 1, 2], None);
        assert!(k.track_op() || k.is_variable());
        let (k2, _) = c
            .append(0, (var.as_tensor() * 2.0).unwrap(), v.clone())
            .unwrap()
            .joined()
            .unwrap();
        let g = k2.sum_all().unwrap().backward().unwrap();
        let grad = g.get(var.as_tensor()).unwrap();
        // d/dvar of sum(var) + sum(2 var) = 3 everywhere.
        let want = Tensor::full(3f32, (2, 3, 4), &Device::Cpu).unwrap();
        assert_eq!(crate::max_abs_diff(grad, &want).unwrap(), 0.0);
        let _ = DType::F32;
    }
}
