//! Token embeddings: a (vocab, hidden) table read by row, dense or block-quantized.
//!
//! The table loads through [`Linear::load_as`] with [`WeightRole::Embedding`], so the same
//! loader decides its format as for every other weight matrix; a tied output head is the same
//! weight used as a [`Linear`]. A quantized table is looked up by copying the wanted rows'
//! blocks and dequantizing only those.

use super::linear::{Linear, WeightRole};
use crate::error::{ModelError, Result};
use crate::kernels::packed::PackedDense;
use candle_core::quantized::{QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub enum Embedding {
    /// A dense table (differentiable when it comes from a `VarMap`).
    Dense(Tensor),
    /// A quantized table. Off the CPU, `lookup` keeps a dequantized copy: reading rows of a
    /// device buffer one request at a time would copy the whole table to the host each time.
    Quantized {
        table: Arc<QTensor>,
        lookup: Option<Tensor>,
    },
    /// A dense table packed for the CPU kernels (a tied head multiplies with it as it is);
    /// rows are gathered from its strips.
    Packed(Arc<PackedDense>),
}

impl Embedding {
    /// Loads the (rows, cols) table `name` (`name.weight` under `vb`).
    pub fn load(vb: &VarBuilder, rows: usize, cols: usize, name: &str) -> Result<Self> {
        Ok(
            match Linear::load_as(
                vb,
                (rows, cols).into(),
                cols,
                rows,
                name,
                WeightRole::Embedding,
            )? {
                Linear::Dense(t) => Embedding::Dense(t),
                Linear::Quantized(q) => Self::from_quantized(q)?,
                Linear::Packed(p) => Embedding::Packed(p),
            },
        )
    }

    pub fn from_quantized(table: Arc<QTensor>) -> Result<Self> {
        let lookup = if table.device().is_cpu() {
            None
        } else {
            Some(table.dequantize(&table.device())?)
        };
        Ok(Embedding::Quantized { table, lookup })
    }

    /// The table as the weight of a linear layer (a tied output head).
    pub fn as_linear(&self) -> Linear {
        match self {
            Embedding::Dense(t) => Linear::Dense(t.clone()),
            Embedding::Quantized { table, .. } => Linear::Quantized(table.clone()),
            Embedding::Packed(p) => Linear::Packed(p.clone()),
        }
    }

    /// Rows in the table (the vocabulary size).
    pub fn rows(&self) -> Result<usize> {
        Ok(match self {
            Embedding::Dense(t) => t.dim(0)?,
            Embedding::Quantized { table, .. } => table.shape().dims2()?.0,
            Embedding::Packed(p) => p.n(),
        })
    }

    /// Rows `ids` of the table as an (ids.len(), cols) tensor in `dtype` on `device`; an id
    /// past the table is an error that names it.
    pub fn lookup(&self, ids: &[u32], dtype: DType, device: &Device) -> Result<Tensor> {
        let rows = self.rows()?;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= rows) {
            return Err(ModelError::Input(format!(
                "token id {bad} is past the embedding table ({rows} rows)"
            )));
        }
        let idx = || Tensor::from_slice(ids, ids.len(), device);
        match self {
            Embedding::Dense(t) => Ok(t.index_select(&idx()?, 0)?.to_dtype(dtype)?),
            Embedding::Packed(p) => {
                let k = p.k();
                let mut buf = vec![0f32; ids.len() * k];
                for (row, &id) in buf.chunks_exact_mut(k.max(1)).zip(ids) {
                    p.row_into(id as usize, row);
                }
                Ok(Tensor::from_vec(buf, (ids.len(), k), device)?.to_dtype(dtype)?)
            }
            Embedding::Quantized {
                lookup: Some(t), ..
            } => Ok(t.index_select(&idx()?, 0)?.to_dtype(dtype)?),
            Embedding::Quantized { table, .. } => {
                let cols = table.shape().dims2()?.1;
                if ids.is_empty() {
                    return Ok(Tensor::zeros((0, cols), dtype, device)?);
                }
                let ty = table.dtype();
                let row_bytes = cols / ty.block_size() * ty.type_size();
                let data = table.data()?;
                let mut buf = Vec::with_capacity(ids.len() * row_bytes);
                for &id in ids {
                    let id = id as usize;
                    buf.extend_from_slice(&data[id * row_bytes..(id + 1) * row_bytes]);
                }
                let storage = QStorage::from_data(std::borrow::Cow::Owned(buf), &Device::Cpu, ty)?;
                let rows = QTensor::new(storage, (ids.len(), cols))?;
                Ok(rows.dequantize(device)?.to_dtype(dtype)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QuantFormat;

    #[test]
    fn packed_lookup_is_the_table_row_and_the_tied_head_its_product() {
        if !PackedDense::available() {
            return;
        }
        let w = crate::seeded_randn(6, 0.5, &[37, 40]);
        for dt in [DType::F32, DType::BF16] {
            let wd = w.to_dtype(dt).unwrap();
            let Linear::Packed(p) = Linear::packed(wd.clone()).unwrap() else {
                panic!("not packed")
            };
            let e = Embedding::Packed(p);
            assert_eq!(e.rows().unwrap(), 37);
            let ids = [0u32, 36, 5, 5, 17, 16];
            let got = e.lookup(&ids, DType::F32, &Device::Cpu).unwrap();
            let want = Embedding::Dense(wd.clone())
                .lookup(&ids, DType::F32, &Device::Cpu)
                .unwrap();
            assert_eq!(crate::max_abs_diff(&got, &want).unwrap(), 0.0, "{dt:?}");
            let err = e.lookup(&[37], DType::F32, &Device::Cpu).unwrap_err();
            assert!(err.to_string().contains("37"), "{err}");
            // The tied head: x · tableᵀ, as the dense layer computes it.
            let x = crate::seeded_randn(7, 1.0, &[3, 40]);
            let y = e.as_linear().forward(&x).unwrap();
            let y_dense = Linear::Dense(wd.to_dtype(DType::F32).unwrap())
                .forward(&x)
                .unwrap();
            assert_eq!(y.dims(), &[3, 37]);
            assert!(crate::max_abs_diff(&y, &y_dense).unwrap() < 1e-4, "{dt:?}");
        }
    }

    #[test]
    fn quantized_lookup_is_the_dequantized_table_row() {
        let w = crate::seeded_randn(5, 0.5, &[37, 64]);
        let dense = Embedding::Dense(w.clone());
        for fmt in [QuantFormat::Q8_0, QuantFormat::Q4K] {
            let Linear::Quantized(q) = Linear::quantized(&w, fmt).unwrap() else {
                panic!("not quantized")
            };
            let full = q.dequantize(&Device::Cpu).unwrap();
            let e = Embedding::from_quantized(q).unwrap();
            let ids = [0u32, 36, 5, 5, 17];
            let got = e.lookup(&ids, DType::F32, &Device::Cpu).unwrap();
            let idx = Tensor::new(&ids, &Device::Cpu).unwrap();
            let want = full.index_select(&idx, 0).unwrap();
            assert_eq!(crate::max_abs_diff(&got, &want).unwrap(), 0.0, "{fmt}");
            // Close to the f32 rows, within the format's error.
            let d =
                crate::max_abs_diff(&got, &dense.lookup(&ids, DType::F32, &Device::Cpu).unwrap())
                    .unwrap();
            assert!(d < 0.25, "{fmt}: {d}");
            assert_eq!(
                e.lookup(&[], DType::F32, &Device::Cpu).unwrap().dims(),
                &[0, 64]
            );
            let err = e.lookup(&[37], DType::F32, &Device::Cpu).unwrap_err();
            assert!(err.to_string().contains("37"), "{err}");
            let err = dense.lookup(&[40], DType::F32, &Device::Cpu).unwrap_err();
            assert!(err.to_string().contains("token id 40"), "{err}");
            // The tied head computes with the same quantized weight.
            assert!(e.as_linear().ggml_type().is_some());
        }
    }
}
