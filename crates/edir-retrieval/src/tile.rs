//! One score tile: `out = Q[q0..q1] x C[c0..c1]^T`, through the `gemm` crate's kernels
//! (AVX-512 when the CPU has it). The one place this workspace uses `unsafe`: `gemm::gemm`
//! takes raw pointers and strides; the safe wrapper below checks every bound first.

#![allow(
    unsafe_code,
    reason = "the gemm crate's entry point takes raw pointers; bounds are checked before the call"
)]

use crate::matrix::Matrix;

/// Computes `out[i * cols + j] = dot(q.row(q0 + i), c.row(c0 + j))` for `i < qn`, `j < cn`,
/// single-threaded (the caller parallelises over query blocks).
///
/// # Panics
/// When a range is out of bounds, the dimensions differ or `out` is too small.
pub(crate) fn scores(
    q: &Matrix,
    q0: usize,
    qn: usize,
    c: &Matrix,
    c0: usize,
    cn: usize,
    out: &mut [f32],
) {
    assert_eq!(q.dim, c.dim, "query and corpus dimensions differ");
    assert!(q0 + qn <= q.rows && c0 + cn <= c.rows, "tile out of bounds");
    assert!(out.len() >= qn * cn, "tile buffer too small");
    if qn == 0 || cn == 0 {
        return;
    }
    let d = q.dim;
    let lhs = q.data[q0 * d..(q0 + qn) * d].as_ptr();
    let rhs = c.data[c0 * d..(c0 + cn) * d].as_ptr();
    let stride = |n: usize| isize::try_from(n).unwrap_or(isize::MAX);
    // SAFETY: lhs is qn x d row-major (row stride d, column stride 1), rhs is the d x cn
    // transpose of the corpus tile (row stride 1, column stride d), out is qn x cn row-major
    // (row stride cn, column stride 1); all three slices were bounds-checked above, and
    // `read_dst = false` means `out` is only written.
    unsafe {
        gemm::gemm(
            qn,
            cn,
            d,
            out.as_mut_ptr(),
            1,
            stride(cn),
            false,
            lhs,
            1,
            stride(d),
            rhs,
            stride(d),
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    reason = "small test fixtures"
)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_dot_products() {
        let q = Matrix::new(3, 5, (0..15).map(|x| x as f32 * 0.1).collect());
        let c = Matrix::new(4, 5, (0..20).map(|x| (x as f32 - 7.0) * 0.05).collect());
        let mut out = vec![0.0; 2 * 3];
        scores(&q, 1, 2, &c, 1, 3, &mut out);
        for i in 0..2 {
            for j in 0..3 {
                let naive: f32 = q
                    .row(1 + i)
                    .iter()
                    .zip(c.row(1 + j))
                    .map(|(a, b)| a * b)
                    .sum();
                assert!((out[i * 3 + j] - naive).abs() < 1e-5);
            }
        }
    }
}
