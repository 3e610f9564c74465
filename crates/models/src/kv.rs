//! A sequence's KV cache and position state.

use candle_core::Tensor;

/// Keys (post-RoPE) and values of every layer for one sequence, plus the T index of every
/// cached token (for the block mask) and the position state the next tokens continue from.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
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

    /// Bytes of keys and values held, over all layers.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }

    /// A cache of this one's first `len` tokens (views of the same keys and values, which are
    /// never written in place: appending makes new tensors), continuing after the token
    /// `last_id` at position `len - 1`. Errors when `len` is 0 or past the end.
    pub fn prefix(&self, len: usize, last_id: u32) -> candle_core::Result<KvCache> {
        if len == 0 || len > self.len() {
            candle_core::bail!("prefix of {len} tokens of a {}-token cache", self.len());
        }
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some((k, v)) => Ok(Some((k.narrow(1, 0, len)?, v.narrow(1, 0, len)?))),
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
            layers: vec![z.map(|z| (z.clone(), z))],
            key_t: (0..n as i64).collect(),
            last_t: n as i64 - 1,
            last_id: None,
        }
    }

    /// Appends this step's keys (n_kv, n, dk) and values (n_kv, n, dv) for `layer`, returning
    /// the whole cache of that layer.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, None);
        }
        let (k, v) = match self.layers[layer].take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 1)?, Tensor::cat(&[&pv, &v], 1)?),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        Ok((k, v))
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
