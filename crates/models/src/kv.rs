//! A sequence's KV cache and position state.
//!
//! Each layer keeps its keys and values in buffers of shape (n_kv, capacity, d) with the first
//! `len()` tokens filled. Appending writes the new tokens in place after them while the buffer
//! has room and belongs to this cache alone, and otherwise copies into a buffer of twice the
//! size, so a decode step copies only its own token (amortised), not the whole cache.
//!
//! Sharing is safe because a buffer is only ever written past the end of every view of it:
//! [`KvCache::prefix`] and `clone` hand out views of the first tokens and mark the new cache's
//! layers as shared, so its first append copies instead of writing into another's buffer; the
//! cache that owns the buffer writes only at positions at or past its own length, which no view
//! covers.

use candle_core::Tensor;

/// One layer's key and value buffers, (n_kv, capacity, dk) and (n_kv, capacity, dv).
#[derive(Debug)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
    /// Whether this cache may write into the buffers past its length.
    owned: bool,
}

impl Clone for LayerKv {
    /// The clone shares the buffers' filled part and never writes into them.
    fn clone(&self) -> Self {
        LayerKv {
            k: self.k.clone(),
            v: self.v.clone(),
            owned: false,
        }
    }
}

/// Keys (post-RoPE) and values of every layer for one sequence, plus the T index of every
/// cached token (for the block mask) and the position state the next tokens continue from.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
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

    /// Bytes of the key and value buffers held, over all layers (capacity included).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|l| (l.k.elem_count() + l.v.elem_count()) * l.k.dtype().size_in_bytes())
            .sum()
    }

    /// Tokens the buffers of `layer` have room for (tests and diagnostics).
    pub fn capacity(&self, layer: usize) -> usize {
        self.layers
            .get(layer)
            .and_then(|l| l.as_ref())
            .map_or(0, |l| l.k.dims().get(1).copied().unwrap_or(0))
    }

    /// Drops unused capacity (one copy of each layer whose buffer has room left), for a cache
    /// that will only be read from now on, such as one kept for prefix reuse.
    pub fn shrink_to_fit(&mut self) -> candle_core::Result<()> {
        let len = self.len();
        for l in self.layers.iter_mut().flatten() {
            if l.k.dim(1)? > len {
                l.k = l.k.narrow(1, 0, len)?.contiguous()?;
                l.v = l.v.narrow(1, 0, len)?.contiguous()?;
                l.owned = true;
            }
        }
        Ok(())
    }

    /// A cache of this one's first `len` tokens (views of the same buffers, which this cache
    /// never writes below its own length, and which the new cache copies before it appends),
    /// continuing after the token `last_id` at position `len - 1`. Errors when `len` is 0 or
    /// past the end.
    pub fn prefix(&self, len: usize, last_id: u32) -> candle_core::Result<KvCache> {
        if len == 0 || len > self.len() {
            candle_core::bail!("prefix of {len} tokens of a {}-token cache", self.len());
        }
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some(l) => Ok(Some(LayerKv {
                    k: l.k.narrow(1, 0, len)?,
                    v: l.v.narrow(1, 0, len)?,
                    owned: false,
                })),
                None => Ok(None),
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
            layers: vec![z.map(|z| LayerKv {
                k: z.clone(),
                v: z,
                owned: true,
            })],
            key_t: (0..n as i64).collect(),
            last_t: n as i64 - 1,
            last_id: None,
        }
    }

    /// Appends this step's keys (n_kv, n, dk) and values (n_kv, n, dv) for `layer`, returning
    /// views of the whole cache of that layer (the cached tokens, then these). The views may
    /// be strided (the buffers have room past them); their last dimension is contiguous.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, None);
        }
        let len = self.key_t.len();
        let n = k.dim(1)?;
        let total = len + n;
        let l = match self.layers[layer].take() {
            None => {
                if len != 0 {
                    candle_core::bail!("layer {layer} has no cache but {len} tokens are cached");
                }
                // The first chunk is the buffer (exactly full: the next append grows it).
                LayerKv { k, v, owned: true }
            }
            Some(l) => {
                let cap = l.k.dim(1)?;
                // In place: a buffer of our own with room, and no gradient to keep (training
                // runs one chunk per sequence and never gets here).
                let in_place = l.owned
                    && total <= cap
                    && l.k.is_contiguous()
                    && l.v.is_contiguous()
                    && !k.track_op()
                    && !v.track_op();
                if in_place {
                    l.k.slice_set(&k.contiguous()?, 1, len)?;
                    l.v.slice_set(&v.contiguous()?, 1, len)?;
                    l
                } else if k.track_op() || v.track_op() {
                    // Differentiable: exactly the tokens, through autograd's cat.
                    LayerKv {
                        k: Tensor::cat(&[&l.k.narrow(1, 0, len)?, &k], 1)?,
                        v: Tensor::cat(&[&l.v.narrow(1, 0, len)?, &v], 1)?,
                        owned: true,
                    }
                } else {
                    // Our own full buffer doubles (amortised O(1) per decoded token). A shared
                    // one (a prefix another cache holds, e.g. the server's prefix cache) is
                    // copied with a quarter of headroom instead: a second chat turn over a
                    // long image prompt would otherwise allocate and fault in twice its whole
                    // cache (measured: a third of a NEO-2B second turn's time).
                    let new_cap = if l.owned {
                        total.max(2 * cap).max(total + 16)
                    } else {
                        total + (total / 4).max(16)
                    };
                    let grow = |buf: &Tensor, new: &Tensor| -> candle_core::Result<Tensor> {
                        let (h, _, d) = new.dims3()?;
                        let pad =
                            Tensor::zeros((h, new_cap - total, d), new.dtype(), new.device())?;
                        Tensor::cat(&[&buf.narrow(1, 0, len)?, new, &pad], 1)
                    };
                    LayerKv {
                        k: grow(&l.k, &k)?,
                        v: grow(&l.v, &v)?,
                        owned: true,
                    }
                }
            }
        };
        let views = (l.k.narrow(1, 0, total)?, l.v.narrow(1, 0, total)?);
        self.layers[layer] = Some(l);
        Ok(views)
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

    /// Appends `n` tokens (one layer) from `seed` and commits them.
    fn push(c: &mut KvCache, seed: u64, n: usize) -> (Tensor, Tensor) {
        let (k, v) = kv(seed, n);
        let out = c.append(0, k, v).unwrap();
        let t0 = c.len() as i64;
        c.commit(&(t0..t0 + n as i64).collect::<Vec<_>>(), None);
        out
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

    #[test]
    fn appends_in_place_with_amortised_growth() {
        let mut c = KvCache::new();
        let mut chunks = vec![(1, 5)];
        same(&push(&mut c, 1, 5), &expected(&chunks));
        assert_eq!(c.capacity(0), 5);
        let mut grows = 0;
        for s in 2..40 {
            let cap = c.capacity(0);
            chunks.push((s, 1));
            same(&push(&mut c, s, 1), &expected(&chunks));
            grows += usize::from(c.capacity(0) != cap);
        }
        assert_eq!(c.len(), 43);
        // 5 -> 22 (at least 16 spare) -> 44: two copies for 38 single-token steps.
        assert_eq!(grows, 2, "capacity {}", c.capacity(0));
        assert_eq!(c.capacity(0), 44);
        assert_eq!(c.bytes(), 2 * 44 * (4 + 3) * 4);
        c.shrink_to_fit().unwrap();
        assert_eq!(c.capacity(0), 43);
        chunks.push((99, 2));
        same(&push(&mut c, 99, 2), &expected(&chunks));
    }

    #[test]
    fn prefixes_and_clones_never_see_later_writes() {
        let mut a = KvCache::new();
        push(&mut a, 1, 6);
        push(&mut a, 2, 1); // grown: room to write in place from now on
        assert!(a.capacity(0) > a.len());
        let mut b = a.prefix(4, 0).unwrap();
        let mut c = a.clone();
        // The owner writes in place past its length; the prefix and the clone branch off.
        push(&mut a, 3, 2);
        push(&mut b, 4, 3);
        // A shared prefix is copied with a quarter (at least 16) of headroom, not doubled.
        assert_eq!(b.capacity(0), 7 + 16);
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
    }

    #[test]
    fn gradients_flow_through_appends() {
        let var = candle_core::Var::from_tensor(&crate::seeded_randn(3, 1.0, &[2, 3, 4])).unwrap();
        let mut c = KvCache::new();
        let (k, v) = c.append(0, var.as_tensor().clone(), kv(1, 3).1).unwrap();
        c.commit(&[0, 1, 2], None);
        assert!(k.track_op() || k.is_variable());
        let (k2, _) = c
            .append(0, (var.as_tensor() * 2.0).unwrap(), v.clone())
            .unwrap();
        let g = k2.sum_all().unwrap().backward().unwrap();
        let grad = g.get(var.as_tensor()).unwrap();
        // d/dvar of sum(var) + sum(2 var) = 3 everywhere.
        let want = Tensor::full(3f32, (2, 3, 4), &Device::Cpu).unwrap();
        assert_eq!(crate::max_abs_diff(grad, &want).unwrap(), 0.0);
        let _ = DType::F32;
    }
}
