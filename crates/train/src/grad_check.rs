//! Gradients through candle's autograd, checked against values worked out by hand.
//!
//! pixlm builds candle-core with a patched `backprop.rs` (`vendor/README.md`): a tensor's first
//! gradient is stored instead of being added to a fresh zero tensor. These tests exercise the
//! paths that change touches and the model uses: a tensor used twice (the sum of two
//! contributions), subtraction and division (the negated contributions), broadcasting and
//! reductions (strided gradients that must be made contiguous), narrow and concatenation
//! (per-sequence slices of a packed batch), transposes, matrix products and unary ops.

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    fn close(got: &Tensor, want: &[f32]) {
        let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{got:?} vs {want:?}"
            );
        }
    }

    fn var(v: &[f32]) -> Var {
        Var::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn a_tensor_used_twice_sums_both_contributions() {
        // f = sum(x + x) + sum(x * x): df/dx = 2 + 2x.
        let x = var(&[1.0, -2.0, 0.5]);
        let f = ((x.as_tensor() + x.as_tensor()).unwrap().sum_all().unwrap()
            + x.as_tensor().sqr().unwrap().sum_all().unwrap())
        .unwrap();
        let g = f.backward().unwrap();
        close(g.get(&x).unwrap(), &[4.0, -2.0, 3.0]);
    }

    #[test]
    fn subtraction_and_division_negate_the_right_operand() {
        // f = sum((a - b) / c): df/da = 1/c, df/db = -1/c, df/dc = -(a - b)/c².
        let (a, b, c) = (var(&[3.0, 1.0]), var(&[1.0, 4.0]), var(&[2.0, -0.5]));
        let f = ((a.as_tensor() - b.as_tensor()).unwrap() / c.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap();
        let g = f.backward().unwrap();
        close(g.get(&a).unwrap(), &[0.5, -2.0]);
        close(g.get(&b).unwrap(), &[-0.5, 2.0]);
        close(g.get(&c).unwrap(), &[-0.5, 12.0]);
        // Only the subtracted operand: its first (and only) contribution is negated.
        let f = (a.as_tensor().ones_like().unwrap() - b.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap();
        close(f.backward().unwrap().get(&b).unwrap(), &[-1.0, -1.0]);
    }

    #[test]
    fn broadcasts_and_reductions_give_contiguous_gradients_of_the_right_shape() {
        // f = sum(w ⊙ broadcast(v) over rows) + sum(max over rows(w)).
        let w = Var::from_tensor(
            &Tensor::new(&[[1.0f32, 5.0, 2.0], [4.0, 0.0, 3.0]], &Device::Cpu).unwrap(),
        )
        .unwrap();
        let v = var(&[2.0, -1.0, 0.5]);
        let bv = v
            .as_tensor()
            .unsqueeze(0)
            .unwrap()
            .broadcast_as((2, 3))
            .unwrap();
        let f = ((w.as_tensor() * bv).unwrap().sum_all().unwrap()
            + w.as_tensor().max_keepdim(1).unwrap().sum_all().unwrap())
        .unwrap();
        let g = f.backward().unwrap();
        let gw = g.get(&w).unwrap();
        assert_eq!(gw.dims(), &[2, 3]);
        assert!(gw.is_contiguous());
        close(gw, &[2.0, 0.0, 0.5, 3.0, -1.0, 0.5]);
        let gv = g.get(&v).unwrap();
        assert!(gv.is_contiguous());
        close(gv, &[5.0, 5.0, 5.0]);
    }

    #[test]
    fn narrow_concat_transpose_and_matmul() {
        // x (2x3); y = cat(x[:, 1..], x[:, ..1]) (a rotation of the columns); f = sum(y · Wᵀ)
        // with W = [[1, 2, 3]], so df/dx[i, j] = W of the column x's column j lands in.
        let x = Var::from_tensor(
            &Tensor::arange(0f32, 6., &Device::Cpu)
                .unwrap()
                .reshape((2, 3))
                .unwrap(),
        )
        .unwrap();
        let w = Tensor::new(&[[1.0f32, 2.0, 3.0]], &Device::Cpu).unwrap();
        let y = Tensor::cat(
            &[
                x.as_tensor().narrow(1, 1, 2).unwrap(),
                x.as_tensor().narrow(1, 0, 1).unwrap(),
            ],
            1,
        )
        .unwrap();
        let f = y.matmul(&w.t().unwrap()).unwrap().sum_all().unwrap();
        let g = f.backward().unwrap();
        close(g.get(&x).unwrap(), &[3.0, 1.0, 2.0, 3.0, 1.0, 2.0]);
        // And through a transpose on the left: f = sum(xᵀ · u), df/dx[i, j] = u[i].
        let u = Tensor::new(&[[1.0f32], [-2.0]], &Device::Cpu).unwrap();
        let f = x
            .as_tensor()
            .t()
            .unwrap()
            .matmul(&u)
            .unwrap()
            .sum_all()
            .unwrap();
        close(
            f.backward().unwrap().get(&x).unwrap(),
            &[1.0, 1.0, 1.0, -2.0, -2.0, -2.0],
        );
    }

    #[test]
    fn unary_ops_match_finite_differences() {
        // f = sum(exp(x) * silu(x) + sqrt(x) - x²/2), checked by central differences.
        let xs = [0.3f32, 1.2, 2.5];
        let f_of = |t: &Tensor| -> Tensor {
            let a = (t.exp().unwrap() * candle_nn::ops::silu(t).unwrap()).unwrap();
            let b = (t.sqrt().unwrap() - (t.sqr().unwrap() * 0.5).unwrap()).unwrap();
            (a + b).unwrap().sum_all().unwrap()
        };
        let x = var(&xs);
        let g = f_of(x.as_tensor()).backward().unwrap();
        let h = 1e-2f64;
        let want: Vec<f32> = (0..xs.len())
            .map(|i| {
                let at = |d: f64| -> f64 {
                    let mut v: Vec<f64> = xs.iter().map(|&x| x as f64).collect();
                    v[i] += d;
                    let t = Tensor::new(v.as_slice(), &Device::Cpu).unwrap();
                    f_of(&t)
                        .to_dtype(DType::F64)
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap()
                };
                ((at(h) - at(-h)) / (2.0 * h)) as f32
            })
            .collect();
        let got: Vec<f32> = g.get(&x).unwrap().to_vec1().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() < 1e-3 * (1.0 + w.abs()),
                "{got:?} vs {want:?}"
            );
        }
    }
}
