//! Vectorised exponentials: e^x eight at a time (AVX2), and the two places that take many of
//! them, the attention softmax and the SwiGLU gate (libm's `expf` one value at a time was a
//! third of a prompt's attention and most of the gate's time).

/// `s ← softmax(s)`, in f32, as candle's (max subtracted, exponentials divided by their sum);
/// the exponential by [`avx2::softmax_in_place`] where the CPU has AVX2 (libm's one at a time
/// was a third of a 512-token prompt's attention).
pub(crate) fn softmax_in_place(s: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::qgemm::available() {
        // SAFETY: `available()` checked AVX2 and FMA.
        unsafe { avx2::softmax_in_place(s) };
        return;
    }
    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for x in s.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    for x in s.iter_mut() {
        *x /= sum;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    /// e^x for eight values (Cephes' `expf`: x = n·ln 2 + r, |r| ≤ ln 2 / 2, a degree-7
    /// polynomial for e^r, 2^n built in the exponent bits; within 2 ulp of libm's). Inputs
    /// below -87.3 (where e^x leaves the normal floats), -inf included, give 0; inputs above
    /// 88 are taken as 88.
    ///
    /// # Safety
    /// AVX2 and FMA are available.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
        let lo = _mm256_set1_ps(-87.3);
        let valid = _mm256_cmp_ps::<_CMP_GE_OQ>(x, lo);
        let x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let p = _mm256_add_ps(
            _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
            _mm256_set1_ps(1.0),
        );
        let pow2n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        _mm256_and_ps(_mm256_mul_ps(p, pow2n), valid)
    }

    /// [`super::silu_mul`], eight values at a time (the tail one at a time through the same
    /// padded vector path).
    ///
    /// # Safety
    /// AVX2 and FMA are available.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
        let n = out.len().min(g.len()).min(u.len());
        let one = _mm256_set1_ps(1.0);
        let step = |gv: __m256, uv: __m256| {
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
            _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), uv)
        };
        let full = n / 8 * 8;
        for i in (0..full).step_by(8) {
            let y = step(
                _mm256_loadu_ps(g[i..i + 8].as_ptr()),
                _mm256_loadu_ps(u[i..i + 8].as_ptr()),
            );
            _mm256_storeu_ps(out[i..i + 8].as_mut_ptr(), y);
        }
        if full < n {
            let (mut gp, mut up, mut yp) = ([0f32; 8], [0f32; 8], [0f32; 8]);
            gp[..n - full].copy_from_slice(&g[full..n]);
            up[..n - full].copy_from_slice(&u[full..n]);
            _mm256_storeu_ps(
                yp.as_mut_ptr(),
                step(_mm256_loadu_ps(gp.as_ptr()), _mm256_loadu_ps(up.as_ptr())),
            );
            out[full..n].copy_from_slice(&yp[..n - full]);
        }
    }

    /// [`super::softmax_in_place`], eight values at a time (the tail padded with -inf).
    ///
    /// # Safety
    /// AVX2 and FMA are available.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn softmax_in_place(s: &mut [f32]) {
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let m = _mm256_set1_ps(max);
        let mut sum = _mm256_setzero_ps();
        let mut chunks = s.chunks_exact_mut(8);
        for c in &mut chunks {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), m));
            sum = _mm256_add_ps(sum, e);
            _mm256_storeu_ps(c.as_mut_ptr(), e);
        }
        let tail = chunks.into_remainder();
        let mut pad = [f32::NEG_INFINITY; 8];
        pad[..tail.len()].copy_from_slice(tail);
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(pad.as_ptr()), m));
        sum = _mm256_add_ps(sum, e);
        _mm256_storeu_ps(pad.as_mut_ptr(), e);
        tail.copy_from_slice(&pad[..tail.len()]);
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
        let total: f32 = lanes.iter().sum();
        for x in s.iter_mut() {
            *x /= total;
        }
    }
}

/// `out = silu(g) · u` = `g / (1 + e^-g) · u`, element by element, in f32.
pub(crate) fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::qgemm::available() {
        // SAFETY: `available()` checked AVX2 and FMA.
        unsafe { avx2::silu_mul(g, u, out) };
        return;
    }
    for ((o, g), u) in out.iter_mut().zip(g).zip(u) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp8_agrees_with_libm() {
        if !super::super::qgemm::available() {
            return;
        }
        let mut xs: Vec<f32> = (0..20_000).map(|i| -100.0 + i as f32 * 0.0093).collect();
        xs.extend([0.0, -0.0, 1e-30, -1e-30, -87.0, f32::NEG_INFINITY]);
        for c in xs.chunks(8) {
            let mut v = [0f32; 8];
            v[..c.len()].copy_from_slice(c);
            let mut out = [0f32; 8];
            // SAFETY: AVX2 and FMA checked above.
            unsafe {
                use std::arch::x86_64::*;
                _mm256_storeu_ps(out.as_mut_ptr(), avx2::exp8(_mm256_loadu_ps(v.as_ptr())));
            }
            for (x, got) in v.iter().zip(out).take(c.len()) {
                let want = x.exp();
                if *x < -87.3 {
                    assert_eq!(got, 0.0, "e^{x}");
                } else {
                    assert!(
                        (got - want).abs() <= 3e-7 * want,
                        "e^{x}: {got} against {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn silu_mul_agrees_with_the_formula() {
        let g: Vec<f32> = (0..1003).map(|i| (i as f32 - 500.0) * 0.037).collect();
        let u: Vec<f32> = (0..1003).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let mut out = vec![f32::NAN; g.len()];
        silu_mul(&g, &u, &mut out);
        for ((o, g), u) in out.iter().zip(&g).zip(&u) {
            let want = g / (1.0 + (-g).exp()) * u;
            assert!(
                (o - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "{g}, {u}: {o} vs {want}"
            );
        }
    }
}
