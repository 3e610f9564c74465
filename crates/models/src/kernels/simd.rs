//! AVX2 pieces the kernels share (x86_64 only; each caller has checked for AVX2, FMA and
//! F16C before calling into code that uses them).
use std::arch::x86_64::*;

/// The sum of the eight lanes of `v`, in one fixed order (halves, then pairs, then the two
/// left), so every kernel that reduces a chain with it gets the same bits for the same chain.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// Eight values from element `i` of `p`, stored as `DT` (0 f32, 1 f16, 2 bf16), widened.
///
/// # Safety
/// AVX2 and F16C; elements `i..i + 8` of `p` (in the stored type) are readable.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn load8<const DT: u8>(p: *const u8, i: usize) -> __m256 {
    match DT {
        0 => _mm256_loadu_ps(p.cast::<f32>().add(i)),
        1 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<u16>().add(i).cast())),
        _ => {
            // bf16 is the top half of an f32: zero-extend to 32 bits, shift left by 16.
            let h = _mm_loadu_si128(p.cast::<u16>().add(i).cast());
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
    }
}
