//! Dense weights packed once, at load, into the strips [`super::gemm`] multiplies: every
//! product of a packed weight, one row of `x` or a thousand, is summed in one order, so a
//! sequence's answer does not depend on how many others share its decode step.
//!
//! Layout: strip `g` holds output features `g·NR .. g·NR + NR` ([`NR`] = 16, zeros past `n`),
//! interleaved along `k`: value `(p, j)` (input `p`, feature `g·NR + j`) at `g·NR·k + p·NR + j`,
//! in the stored type (f32, f16 or bf16). That is the panel `gemm` would pack on every call,
//! so a many-row product skips its packing (f32) or only widens a contiguous block (f16/bf16).
//!
//! Every output is the sum, over blocks of [`KC`] inputs in order, of one FMA chain per block
//! (`gemm`'s micro-kernel); the few-rows kernel here ([`PackedDense::matmul_t`] for at most
//! [`MAX_ROWS`] rows) runs the same chains, reading the strips directly and widening f16/bf16
//! in registers, with as many strips in flight as keep the FMA unit busy (four strips for one
//! row: eight independent chains). The weights are read once per step whatever the number of
//! rows up to 8 (one row group after another on a block in L1), which is what lets 8 decode
//! rows cost little more than one.
//!
//! The row-major kernels ([`super::matvec`]) sum in another order (four accumulators across
//! `k`); a weight is either packed or not for the life of a model, so a model's answers come
//! from one order only.

use super::gemm::{KC, NR};
use super::matvec::{SharedOut, Weights};
use candle_core::DType;
use half::{bf16, f16};

/// Most rows [`PackedDense::matmul_t`] gives the few-rows kernel; more go through `gemm`'s
/// tiles (the same sums, in the same order).
pub const MAX_ROWS: usize = 8;

/// The packed values in their stored type.
#[derive(Debug)]
enum Data {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

/// A dense `(n, k)` weight matrix packed into strips of [`NR`] features (module docs).
#[derive(Debug)]
pub struct PackedDense {
    n: usize,
    k: usize,
    data: Data,
}

/// Transposes rows `g·NR..` of the row-major `src` into strip `g` of `dst`, for every strip.
fn pack_into<T: Copy + Default + Send + Sync>(src: &[T], n: usize, k: usize) -> Vec<T> {
    let strips = n.div_ceil(NR);
    let mut dst = vec![T::default(); strips * NR * k];
    let out = SharedOut(dst.as_mut_ptr());
    super::parallel_for(strips, |range| {
        for g in range {
            // SAFETY: strip g is the values g·NR·k..(g+1)·NR·k of `dst` (length strips·NR·k),
            // written by this iteration only; each strip goes to one thread.
            let strip =
                unsafe { std::slice::from_raw_parts_mut(out.ptr().add(g * NR * k), NR * k) };
            for j in 0..NR.min(n - g * NR) {
                let row = &src[(g * NR + j) * k..(g * NR + j + 1) * k];
                for (p, v) in row.iter().enumerate() {
                    strip[p * NR + j] = *v;
                }
            }
        }
    });
    dst
}

impl PackedDense {
    /// Whether this CPU runs the packed kernels (AVX2, FMA, F16C). Where it does not, weights
    /// stay row-major.
    pub fn available() -> bool {
        super::gemm::available()
    }

    /// Packs the row-major `(n, k)` matrix `w`; sizes that disagree, or a CPU without
    /// [`PackedDense::available`], are refused.
    pub fn pack(w: Weights, n: usize, k: usize) -> Result<Self, String> {
        if w.len() != n * k {
            return Err(format!("pack: {} weights for ({n}, {k})", w.len()));
        }
        if !Self::available() {
            return Err("packed weights need AVX2, FMA and F16C".into());
        }
        let data = match w {
            Weights::F32(v) => Data::F32(pack_into(v, n, k)),
            Weights::F16(v) => Data::F16(pack_into(v, n, k)),
            Weights::BF16(v) => Data::BF16(pack_into(v, n, k)),
        };
        Ok(Self { n, k, data })
    }

    /// The matrices `parts` stacked along the output features, as one packed matrix (the
    /// product of the result is the parts' products side by side, bit for bit: each feature
    /// keeps its own sums). `None` unless they share `k` and the stored type and every part
    /// but the last fills whole strips (a multiple of [`NR`] features), so that the strips are
    /// the parts' own, joined.
    pub fn concat(parts: &[&PackedDense]) -> Option<PackedDense> {
        let (first, init) = (parts.first()?, &parts[..parts.len() - 1]);
        if parts
            .iter()
            .any(|p| p.k != first.k || p.dtype() != first.dtype())
            || init.iter().any(|p| !p.n.is_multiple_of(NR))
        {
            return None;
        }
        fn join<'a, T: Copy + 'a>(
            parts: impl Iterator<Item = Option<&'a Vec<T>>>,
        ) -> Option<Vec<T>> {
            let mut out = Vec::new();
            for p in parts {
                out.extend_from_slice(p?);
            }
            Some(out)
        }
        let data = match &first.data {
            Data::F32(_) => Data::F32(join(parts.iter().map(|p| match &p.data {
                Data::F32(v) => Some(v),
                _ => None,
            }))?),
            Data::F16(_) => Data::F16(join(parts.iter().map(|p| match &p.data {
                Data::F16(v) => Some(v),
                _ => None,
            }))?),
            Data::BF16(_) => Data::BF16(join(parts.iter().map(|p| match &p.data {
                Data::BF16(v) => Some(v),
                _ => None,
            }))?),
        };
        Some(PackedDense {
            n: parts.iter().map(|p| p.n).sum(),
            k: first.k,
            data,
        })
    }

    /// Output features (rows of the unpacked matrix).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Inputs (columns of the unpacked matrix).
    pub fn k(&self) -> usize {
        self.k
    }

    /// The stored type.
    pub fn dtype(&self) -> DType {
        match self.data {
            Data::F32(_) => DType::F32,
            Data::F16(_) => DType::F16,
            Data::BF16(_) => DType::BF16,
        }
    }

    /// Row `o` of the unpacked matrix, widened to f32, into `dst` (length `k`).
    pub fn row_into(&self, o: usize, dst: &mut [f32]) {
        let (g, j) = (o / NR, o % NR);
        let base = g * NR * self.k + j;
        let at = (0..self.k).map(|p| base + p * NR);
        match &self.data {
            Data::F32(v) => dst.iter_mut().zip(at).for_each(|(d, i)| *d = v[i]),
            Data::F16(v) => dst.iter_mut().zip(at).for_each(|(d, i)| *d = v[i].to_f32()),
            Data::BF16(v) => dst.iter_mut().zip(at).for_each(|(d, i)| *d = v[i].to_f32()),
        }
    }

    /// The unpacked `(n, k)` matrix, widened to f32, row-major.
    pub fn to_f32_rows(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.n * self.k];
        for (o, row) in out.chunks_exact_mut(self.k.max(1)).enumerate().take(self.n) {
            self.row_into(o, row);
        }
        out
    }

    /// Strip `g`'s inputs `b0..b0 + kc`, `(p, j)` at `p·NR + j`, when stored in f32.
    pub(crate) fn f32_block(&self, g: usize, b0: usize, kc: usize) -> Option<&[f32]> {
        let at = (g * self.k + b0) * NR;
        match &self.data {
            Data::F32(v) => Some(&v[at..at + kc * NR]),
            _ => None,
        }
    }

    /// The same block widened to f32 into `dst` (kc·NR values).
    pub(crate) fn widen_block(&self, g: usize, b0: usize, kc: usize, dst: &mut [f32]) {
        let at = (g * self.k + b0) * NR;
        let len = kc * NR;
        match &self.data {
            Data::F32(v) => dst[..len].copy_from_slice(&v[at..at + len]),
            Data::F16(v) => dst[..len]
                .iter_mut()
                .zip(&v[at..at + len])
                .for_each(|(d, s)| *d = s.to_f32()),
            Data::BF16(v) => dst[..len]
                .iter_mut()
                .zip(&v[at..at + len])
                .for_each(|(d, s)| *d = s.to_f32()),
        }
    }

    /// `y[r·n + o] = Σ_j x[r·k + j] · w[o·k + j]` for `m` rows of `x`: the few-rows kernel up
    /// to [`MAX_ROWS`] rows, else `gemm`'s tiles; the same bits either way. Sizes that do not
    /// agree are refused (a caller's bug, never user input).
    pub fn matmul_t(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), String> {
        let (n, k) = (self.n, self.k);
        if x.len() != m * k || y.len() != m * n {
            return Err(format!(
                "packed matmul sizes: ({n}, {k}) weight, x {} for {m} rows, y {}",
                x.len(),
                y.len()
            ));
        }
        if m > MAX_ROWS {
            return super::gemm::gemm_packed(self, x, m, y);
        }
        if n == 0 || m == 0 {
            return Ok(());
        }
        if k == 0 {
            y.fill(0.0);
            return Ok(());
        }
        self.few_rows(x, m, y);
        Ok(())
    }

    /// [`Self::matmul_t`] into a new `(m, n)` output. Past [`MAX_ROWS`] rows the output is
    /// not zeroed first (`gemm` stores every value before it adds to it): a prompt's output is
    /// megabytes, and zeroing it on the calling thread kept the others waiting.
    pub fn matmul_t_new(&self, x: &[f32], m: usize) -> Result<Vec<f32>, String> {
        let len = m * self.n;
        if m <= MAX_ROWS {
            let mut y = vec![0f32; len];
            self.matmul_t(x, m, &mut y)?;
            return Ok(y);
        }
        let mut y = Vec::with_capacity(len);
        super::gemm::gemm_packed_uninit(self, x, m, &mut y.spare_capacity_mut()[..len])?;
        // SAFETY: `gemm_packed_uninit` returned Ok, so it wrote all `len` values (its
        // contract; `gemm_into_fresh_memory_writes_every_output` checks it).
        unsafe { y.set_len(len) };
        Ok(y)
    }

    /// The few-rows kernel: rows in groups of at most four, strips in chunks of `per` (four
    /// for one row, two for two, else one), blocks of KC inputs, each group's chains from zero
    /// per block and added to `y` (stored for the first block): `gemm`'s order.
    fn few_rows(&self, x: &[f32], m: usize, y: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        let strips = n.div_ceil(NR);
        // Row groups as even as possible, none over four: 5 → 3 + 2, 8 → 4 + 4.
        let groups = m.div_ceil(4);
        let sizes: Vec<usize> = (0..groups)
            .map(|i| m / groups + usize::from(i < m % groups))
            .collect();
        let per = match m {
            1 => 4,
            2 => 2,
            _ => 1,
        };
        let out = SharedOut(y.as_mut_ptr());
        let body = |range: std::ops::Range<usize>| {
            let mut acc = [0f32; 4 * 4 * NR];
            let mut g = range.start;
            while g < range.end {
                let s = if range.end - g >= per { per } else { 1 };
                for b0 in (0..k).step_by(KC) {
                    let kc = KC.min(k - b0);
                    let mut r0 = 0;
                    for &rows in &sizes {
                        let full = (g + s) * NR <= n;
                        // Whole strips add straight into `y`; the last, partial one goes
                        // through `acc` and is copied out for its columns.
                        let (o, ldo) = if full {
                            (out.ptr().wrapping_add(r0 * n + g * NR), n)
                        } else {
                            (acc.as_mut_ptr(), s * NR)
                        };
                        // SAFETY: `available()` held when `self` was packed; strips g..g+s
                        // exist (g + s <= strips), each holds NR·k values, and the kernel reads
                        // values b0..b0+kc of each (b0 + kc <= k); rows r0..r0+rows of `x`
                        // (m·k values) are read at b0..b0+kc. It writes rows × s·NR values at
                        // `o` with row stride `ldo`: when `full`, rows r0.. of `y` (m·n values,
                        // checked by `matmul_t`) at columns g·NR..(g+s)·NR <= n, which belong
                        // to strips g..g+s, this range's alone, so no other thread writes them;
                        // else `acc` (4·4·NR values).
                        unsafe {
                            self.tile(
                                rows,
                                s,
                                kc,
                                x.as_ptr().add(r0 * k + b0),
                                g,
                                b0,
                                o,
                                ldo,
                                full && b0 > 0,
                                sizes.len() > 1 && r0 + rows == m,
                            )
                        };
                        if !full {
                            for r in 0..rows {
                                for q in 0..s {
                                    let c0 = (g + q) * NR;
                                    let cols = NR.min(n.saturating_sub(c0));
                                    let a = &acc[r * ldo + q * NR..r * ldo + q * NR + cols];
                                    for (c, v) in a.iter().enumerate() {
                                        // SAFETY: r0 + r < m and c0 + c < n, so the index is
                                        // inside `y`; strips g..g+s are this range's alone.
                                        unsafe {
                                            let p = out.ptr().add((r0 + r) * n + c0 + c);
                                            *p = if b0 == 0 { *v } else { *p + *v };
                                        }
                                    }
                                }
                            }
                        }
                        r0 += rows;
                    }
                }
                g += s;
            }
        };
        // Below ~64K weights the pool's wake-up costs more than the work.
        if n * k < 1 << 16 {
            body(0..strips);
        } else {
            super::parallel_for(strips, body);
        }
    }

    /// One row group (`rows` ≤ 4) against `s` strips from `g` (s·rows ≤ 4), inputs `b0..b0+kc`:
    /// output (r, strip, j) at `o + r·ldo + strip·NR + j`, added to what is there when `add`.
    /// The last of several groups prefetches the next block, which the first group then finds
    /// in cache (the groups before it run from cache meanwhile); measured in BENCHMARKS.md.
    ///
    /// # Safety
    /// As at the call in `few_rows`: AVX2, FMA and F16C; strips g..g+s exist; `x` points at
    /// row 0's input b0 of a group whose rows are k apart, each with kc values from there.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        &self,
        rows: usize,
        s: usize,
        kc: usize,
        x: *const f32,
        g: usize,
        b0: usize,
        o: *mut f32,
        ldo: usize,
        add: bool,
        prefetch: bool,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            let k = self.k;
            let xs = |r: usize| x.add(r * k);
            let at = |q: usize| ((g + q) * k + b0) * NR;
            macro_rules! go {
                ($dt:literal, $v:expr) => {{
                    let base = $v.as_ptr().cast::<u8>();
                    let size = std::mem::size_of_val(&$v[0]);
                    let w = |q: usize| base.add(at(q) * size);
                    match (rows, s) {
                        (1, 4) => avx2::tile::<$dt, 1, 4>(
                            kc,
                            [xs(0)],
                            [w(0), w(1), w(2), w(3)],
                            o,
                            ldo,
                            add,
                            prefetch,
                        ),
                        (1, _) => {
                            avx2::tile::<$dt, 1, 1>(kc, [xs(0)], [w(0)], o, ldo, add, prefetch)
                        }
                        (2, 2) => avx2::tile::<$dt, 2, 2>(
                            kc,
                            [xs(0), xs(1)],
                            [w(0), w(1)],
                            o,
                            ldo,
                            add,
                            prefetch,
                        ),
                        (2, _) => avx2::tile::<$dt, 2, 1>(
                            kc,
                            [xs(0), xs(1)],
                            [w(0)],
                            o,
                            ldo,
                            add,
                            prefetch,
                        ),
                        (3, _) => avx2::tile::<$dt, 3, 1>(
                            kc,
                            [xs(0), xs(1), xs(2)],
                            [w(0)],
                            o,
                            ldo,
                            add,
                            prefetch,
                        ),
                        _ => avx2::tile::<$dt, 4, 1>(
                            kc,
                            [xs(0), xs(1), xs(2), xs(3)],
                            [w(0)],
                            o,
                            ldo,
                            add,
                            prefetch,
                        ),
                    }
                }};
            }
            match &self.data {
                Data::F32(v) => go!(0, v),
                Data::F16(v) => go!(1, v),
                Data::BF16(v) => go!(2, v),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (rows, s, kc, x, g, b0, o, ldo, add, prefetch);
            unreachable!("packed weights need AVX2")
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::simd::load8 as load;
    use super::NR;
    use std::arch::x86_64::*;

    /// `o[r·ldo + q·NR + j] (+)= Σ_p x_r[p] · w_q[p·NR + j]` over p < kc, one FMA chain per
    /// output in p order from zero, then added to `o` when `add` (else stored): exactly how
    /// `gemm`'s micro-kernel sums a block.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; each `x[r]` has kc values, each `w[q]` kc·NR values of type DT,
    /// and `o` R rows of S·NR values with row stride `ldo`. With `prefetch`, the block after
    /// `w[0]`'s is prefetched as the kernel goes (a hint: an address past the weights does
    /// not fault).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile<const DT: u8, const R: usize, const S: usize>(
        kc: usize,
        x: [*const f32; R],
        w: [*const u8; S],
        o: *mut f32,
        ldo: usize,
        add: bool,
        prefetch: bool,
    ) {
        // The strip's next block follows this one in memory (the next strip's first block
        // after the last): one block ahead of the step being read.
        let step = NR * if DT == 0 { 4 } else { 2 };
        let ahead = w[0].wrapping_add(super::KC * step);
        let mut c = [[[_mm256_setzero_ps(); 2]; S]; R];
        for p in 0..kc {
            if prefetch && DT != 0 && p % 2 == 0 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(p * step).cast());
            }
            let mut wv = [[_mm256_setzero_ps(); 2]; S];
            for (q, wq) in wv.iter_mut().enumerate() {
                wq[0] = load::<DT>(w[q], p * NR);
                wq[1] = load::<DT>(w[q], p * NR + 8);
            }
            for (r, cr) in c.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*x[r].add(p));
                for (cq, wq) in cr.iter_mut().zip(&wv) {
                    cq[0] = _mm256_fmadd_ps(av, wq[0], cq[0]);
                    cq[1] = _mm256_fmadd_ps(av, wq[1], cq[1]);
                }
            }
        }
        for (r, cr) in c.iter().enumerate() {
            for (q, cq) in cr.iter().enumerate() {
                let at = o.add(r * ldo + q * NR);
                let (mut v0, mut v1) = (cq[0], cq[1]);
                if add {
                    v0 = _mm256_add_ps(_mm256_loadu_ps(at), v0);
                    v1 = _mm256_add_ps(_mm256_loadu_ps(at.add(8)), v1);
                }
                _mm256_storeu_ps(at, v0);
                _mm256_storeu_ps(at.add(8), v1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_data::{dense_reference as reference, uniform as data};

    fn pack_as(fmt: usize, w: &[f32], n: usize, k: usize) -> (PackedDense, Vec<f32>) {
        match fmt {
            0 => (
                PackedDense::pack(Weights::F32(w), n, k).unwrap(),
                w.to_vec(),
            ),
            1 => {
                let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
                let wid = h.iter().map(|v| v.to_f32()).collect();
                (PackedDense::pack(Weights::F16(&h), n, k).unwrap(), wid)
            }
            _ => {
                let b: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
                let wid = b.iter().map(|v| v.to_f32()).collect();
                (PackedDense::pack(Weights::BF16(&b), n, k).unwrap(), wid)
            }
        }
    }

    #[test]
    fn joined_parts_give_the_parts_products_bit_for_bit() {
        if !PackedDense::available() {
            return;
        }
        let k = 300;
        let sizes = [32usize, 16, 21];
        for fmt in 0..3 {
            let parts: Vec<PackedDense> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| pack_as(fmt, &data(40 + i as u64, n * k), n, k).0)
                .collect();
            let refs: Vec<&PackedDense> = parts.iter().collect();
            let joined = PackedDense::concat(&refs).unwrap();
            assert_eq!(
                (joined.n(), joined.k(), joined.dtype()),
                (69, k, parts[0].dtype())
            );
            for m in [1, 3, 8, 13] {
                let x = data(7 + m as u64, m * k);
                let y = joined.matmul_t_new(&x, m).unwrap();
                let mut off = 0;
                for p in &parts {
                    let want = p.matmul_t_new(&x, m).unwrap();
                    for r in 0..m {
                        let got = &y[r * 69 + off..r * 69 + off + p.n()];
                        let want = &want[r * p.n()..(r + 1) * p.n()];
                        let same = got
                            .iter()
                            .zip(want)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "fmt {fmt}, {m} rows, row {r}, part at {off}");
                    }
                    off += p.n();
                }
            }
            // A partial strip anywhere but last, or parts that disagree, are not joined.
            assert!(PackedDense::concat(&[&parts[2], &parts[0]]).is_none());
            let other = pack_as((fmt + 1) % 3, &data(9, 16 * k), 16, k).0;
            assert!(PackedDense::concat(&[&parts[0], &other]).is_none());
            let narrow = pack_as(fmt, &data(9, 16 * 64), 16, 64).0;
            assert!(PackedDense::concat(&[&parts[0], &narrow]).is_none());
        }
    }

    #[test]
    fn matches_reference_and_unpacks_on_odd_shapes() {
        if !PackedDense::available() {
            return;
        }
        // Partial strips, k below, at and past KC (with a partial last block), 1 to 12 rows
        // (past MAX_ROWS: gemm's tiles), and 100 and 200 rows (gemm's units cut by rows too,
        // the last share shorter).
        for &(n, k) in &[(1, 1), (5, 7), (16, 256), (37, 300), (130, 520), (200, 64)] {
            let w = data(n as u64 * 7 + k as u64, n * k);
            for fmt in 0..3 {
                let (p, wid) = pack_as(fmt, &w, n, k);
                assert_eq!((p.n(), p.k()), (n, k));
                assert_eq!(p.to_f32_rows(), wid, "unpack n={n} k={k} fmt={fmt}");
                for m in [1, 2, 3, 4, 5, 7, 8, 9, 12, 100, 200] {
                    let x = data(1000 + m as u64, m * k);
                    let want = reference(&wid, n, k, &x, m);
                    let mut y = vec![f32::NAN; m * n];
                    p.matmul_t(&x, m, &mut y).unwrap();
                    for (i, (got, (s, a))) in y.iter().zip(&want).enumerate() {
                        let tol = 1e-6 * a + 1e-6;
                        assert!(
                            (*got as f64 - s).abs() <= tol,
                            "fmt {fmt} n={n} k={k} m={m} [{i}]: {got}, want {s}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_row_gets_the_same_bits_whatever_shares_its_step() {
        // One row alone, in a group of 2..8 (few-rows kernel, groups of up to four, strips in
        // chunks of four, two or one) and among 9..20 rows (gemm's tiles, packed): the same
        // bits. Large enough to go through the pool, with a partial strip and block.
        if !PackedDense::available() {
            return;
        }
        let (n, k) = (1000, 600);
        let w = data(3, n * k);
        let xs = data(4, 20 * k);
        for fmt in 0..3 {
            let (p, _) = pack_as(fmt, &w, n, k);
            let alone: Vec<Vec<f32>> = (0..20)
                .map(|r| {
                    let mut y = vec![0f32; n];
                    p.matmul_t(&xs[r * k..(r + 1) * k], 1, &mut y).unwrap();
                    y
                })
                .collect();
            for m in [2, 3, 4, 5, 6, 7, 8, 9, 13, 20] {
                let mut y = vec![0f32; m * n];
                p.matmul_t(&xs[..m * k], m, &mut y).unwrap();
                for r in 0..m {
                    let got = &y[r * n..(r + 1) * n];
                    for (o, (a, b)) in got.iter().zip(&alone[r]).enumerate() {
                        assert_eq!(a.to_bits(), b.to_bits(), "fmt {fmt} m={m} row {r} out {o}");
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_into_fresh_memory_writes_every_output() {
        // `gemm_packed_uninit` into memory holding NaN (what a fresh allocation may hold):
        // every value overwritten, with `gemm_packed`'s bits; and `matmul_t_new`, which uses
        // it past MAX_ROWS, gives `matmul_t`'s. Odd sizes: partial tiles, strips and blocks.
        if !PackedDense::available() {
            return;
        }
        let (n, k) = (300, 600);
        let w = data(5, n * k);
        let xs = data(6, 20 * k);
        for fmt in 0..3 {
            let (p, _) = pack_as(fmt, &w, n, k);
            for m in [1, 8, 9, 13, 20] {
                let x = &xs[..m * k];
                let mut want = vec![0f32; m * n];
                p.matmul_t(x, m, &mut want).unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                let new = p.matmul_t_new(x, m).unwrap();
                assert_eq!(bits(&new), bits(&want), "fmt {fmt} m={m}");
                if m > MAX_ROWS {
                    let mut y = vec![std::mem::MaybeUninit::new(f32::NAN); m * n];
                    super::super::gemm::gemm_packed_uninit(&p, x, m, &mut y).unwrap();
                    // SAFETY: every element was initialized (NaN) before the call.
                    let got: Vec<f32> = y.iter().map(|v| unsafe { v.assume_init() }).collect();
                    assert_eq!(bits(&got), bits(&want), "fmt {fmt} m={m}");
                }
            }
        }
        // k = 0: every output is 0.
        let p = PackedDense::pack(Weights::F32(&[]), 3, 0).unwrap();
        let mut y = vec![std::mem::MaybeUninit::new(f32::NAN); 9 * 3];
        super::super::gemm::gemm_packed_uninit(&p, &[], 9, &mut y).unwrap();
        // SAFETY: as above.
        assert!(y.iter().all(|v| unsafe { v.assume_init() } == 0.0));
    }

    #[test]
    fn refuses_sizes_that_disagree() {
        if !PackedDense::available() {
            return;
        }
        assert!(PackedDense::pack(Weights::F32(&[0.0; 5]), 2, 3).is_err());
        let p = PackedDense::pack(Weights::F32(&[0.0; 6]), 2, 3).unwrap();
        assert!(p.matmul_t(&[0.0; 4], 1, &mut [0.0; 2]).is_err());
        assert!(p.matmul_t(&[0.0; 3], 1, &mut [0.0; 3]).is_err());
        assert!(p.matmul_t(&[0.0; 3], 1, &mut [0.0; 2]).is_ok());
    }
}
