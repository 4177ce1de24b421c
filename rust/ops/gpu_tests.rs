//! Device-resident autograd: every op's forward and backward on GPU tensors against the same
//! graph on the CPU, on awkward shapes (sizes 1, 3, 17, 127), and the device-mixing errors.

use crate::autograd::{backward, Var};
use crate::error::{ErrorKind, Result};
use crate::gpu::tests::{assert_rel, require_gpu};
use crate::ops::cross_entropy::Reduction;
use crate::ops::test_support::rand_vec;
use crate::ops::{
    activation, attention, cross_entropy, elementwise, embedding, layer_norm, linear, matmul,
    reduce, shape, softmax,
};
use crate::tensor::{numel, Device, Tensor};

/// Runs `f` on leaves made from `shapes` (random values in [lo, hi)) on the CPU and on the GPU,
/// and compares the output and the gradients of `Σ output·w` for a random `w`.
fn check(what: &str, shapes: &[&[usize]], lo: f32, hi: f32, f: impl Fn(&[Var]) -> Result<Var>) {
    let values: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| Tensor::new(rand_vec(i as u64 + 7, numel(s), lo, hi), s).unwrap())
        .collect();
    let run = |device: Device| {
        let leaves: Vec<Var> = values
            .iter()
            .map(|v| Var::leaf(v.to_device(device).unwrap(), true))
            .collect();
        let y = f(&leaves).unwrap();
        assert_eq!(y.device(), device, "{what}: output device");
        let yv = y.value();
        let w = Tensor::new(rand_vec(99, yv.numel(), -1.0, 1.0), yv.shape()).unwrap();
        backward(&y, Some(w.to_device(device).unwrap()), false).unwrap();
        let grads: Vec<Vec<f32>> = leaves
            .iter()
            .map(|l| {
                let g = l.grad().expect("every leaf takes part");
                assert_eq!(g.device(), device, "{what}: gradient device");
                g.to_vec().unwrap()
            })
            .collect();
        (yv.to_vec().unwrap(), grads)
    };
    let (want_y, want_g) = run(Device::Cpu);
    let (got_y, got_g) = run(Device::Gpu);
    assert_rel(&format!("{what}: output"), &got_y, &want_y, 1e-4);
    for (i, (g, w)) in got_g.iter().zip(&want_g).enumerate() {
        assert_rel(&format!("{what}: gradient {i}"), g, w, 1e-4);
    }
}

#[test]
fn elementwise_reductions_and_shape_ops_match_cpu() {
    if !require_gpu("graph: elementwise") {
        return;
    }
    use elementwise::{add, div, mul, sub};
    check(
        "broadcast add/mul",
        &[&[3, 17], &[17], &[3, 1]],
        -2.0,
        2.0,
        |v| mul(&add(&v[0], &v[1])?, &sub(&v[2], &v[1])?),
    );
    check("div by scalar constant", &[&[127]], 0.5, 2.0, |v| {
        let c = Var::constant(Tensor::scalar(3.0));
        div(&c, &v[0])
    });
    check("unary chain", &[&[17]], 0.5, 2.0, |v| {
        use elementwise::UnaryOp::*;
        let y = elementwise::unary(Log, &elementwise::unary(Exp, &v[0])?)?;
        elementwise::unary(Pow(3.0), &elementwise::unary(Tanh, &y)?)
    });
    check("sum/mean over dims", &[&[3, 17, 5]], -1.0, 1.0, |v| {
        let s = reduce::sum(&v[0], &[1], true)?;
        let m = reduce::mean(&v[0], &[0, 2], false)?;
        add(
            &reduce::mean(&s, &[], false)?,
            &reduce::sum(&m, &[], false)?,
        )
    });
    check(
        "permute/slice/cat/reshape",
        &[&[3, 17, 5], &[3, 4, 5]],
        -1.0,
        1.0,
        |v| {
            let p = shape::permute(&v[0], &[2, 0, 1])?;
            let s = shape::slice(&p, 2, 1, 17, 3)?;
            let t = shape::transpose(&s, 0, 1)?;
            let c = shape::cat(&[shape::slice(&v[0], 1, 3, 5, 1)?, v[1].clone()], 1)?;
            add(&shape::reshape(&t, &[-1])?, &shape::reshape(&c, &[-1])?)
        },
    );
}

#[test]
fn layer_ops_match_cpu() {
    if !require_gpu("graph: layers") {
        return;
    }
    check(
        "linear with bias",
        &[&[3, 17, 5], &[127, 5], &[127]],
        -1.0,
        1.0,
        |v| linear::linear(&v[0], &v[1], Some(&v[2])),
    );
    check("linear, one row", &[&[1, 3], &[1, 3]], -1.0, 1.0, |v| {
        linear::linear(&v[0], &v[1], None)
    });
    for (a, b) in [
        (&[3, 17][..], &[17, 5][..]),
        (&[2, 3, 17], &[17, 1]),
        (&[17], &[3, 17, 5]),
        (&[2, 1, 3, 4], &[3, 4, 5]),
    ] {
        check(&format!("matmul {a:?}·{b:?}"), &[a, b], -1.0, 1.0, |v| {
            matmul::matmul(&v[0], &v[1])
        });
    }
    check(
        "add_layer_norm",
        &[&[3, 17], &[3, 17], &[17], &[17]],
        -1.0,
        1.0,
        |v| layer_norm::add_layer_norm(&v[0], &v[1], Some(&v[2]), Some(&v[3]), 1e-5),
    );
    check("layer_norm without params", &[&[127, 3]], 1.0, 3.0, |v| {
        layer_norm::layer_norm(&v[0], None, None, 1e-5)
    });
    check("gelu, relu", &[&[127]], -3.0, 3.0, |v| {
        activation::relu(&activation::gelu(&v[0], false)?)
    });
    let mask = Tensor::new(vec![0.0, f32::NEG_INFINITY, 0.0], &[3]).unwrap();
    check("masked log_softmax", &[&[17, 3]], -3.0, 3.0, |v| {
        softmax::log_softmax(&v[0], Some(&mask))
    });
    check("embedding", &[&[17, 3]], -1.0, 1.0, |v| {
        embedding::embedding(&[0, 16, 3, 3, 1], &[5], &v[0], Some(3))
    });
    for (n, c) in [(1, 1), (5, 17), (9, 300), (4, 1000)] {
        // Every third row ignored; the others' classes spread over [0, c).
        let target: Vec<i64> = (0..n)
            .map(|k| {
                if k % 3 == 2 {
                    -100
                } else {
                    ((k * 5) % c) as i64
                }
            })
            .collect();
        for eps in [0.0, 0.1] {
            for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
                check(
                    &format!("cross_entropy {n}x{c} eps={eps} {reduction:?}"),
                    &[&[n, c]],
                    -5.0,
                    5.0,
                    |v| cross_entropy::cross_entropy(&v[0], &target, -100, eps, reduction),
                );
            }
        }
    }
    let pad = Tensor::new(vec![0.0, 0.0, f32::NEG_INFINITY], &[1, 1, 3]).unwrap();
    check(
        "attention, masked",
        &[&[2, 17, 8], &[2, 3, 8], &[2, 3, 5]],
        -1.0,
        1.0,
        |v| {
            attention::scaled_dot_product_attention(
                &v[0],
                &v[1],
                &v[2],
                Some(&pad),
                0.0,
                false,
                None,
            )
        },
    );
    check(
        "attention, causal",
        &[&[3, 17, 4], &[3, 17, 4], &[3, 17, 4]],
        -1.0,
        1.0,
        |v| attention::scaled_dot_product_attention(&v[0], &v[1], &v[2], None, 0.0, true, None),
    );
}

#[test]
fn cross_entropy_rejects_what_the_cpu_rejects() {
    if !require_gpu("graph: cross_entropy errors") {
        return;
    }
    let run = |logits: Vec<f32>, target: &[i64]| {
        let c = logits.len() / target.len();
        let x = Tensor::new(logits, &[target.len(), c]).unwrap();
        let x = Var::leaf(x.to_device(Device::Gpu).unwrap(), true);
        let err = cross_entropy::cross_entropy(&x, target, -100, 0.0, Reduction::Mean).err();
        err.expect("an error").kind
    };
    assert_eq!(run(vec![0.0; 4], &[0, 2]), ErrorKind::Index);
    assert_eq!(
        run(vec![0.0, f32::NAN, 1.0, 2.0], &[0, 1]),
        ErrorKind::NonFinite
    );
    assert_eq!(run(vec![1.0, f32::INFINITY], &[0]), ErrorKind::NonFinite);
    let neg = f32::NEG_INFINITY;
    assert_eq!(run(vec![0.0, 1.0, neg, neg], &[0, 1]), ErrorKind::NonFinite);
    // An ignored row of −inf logits is fine, as on the CPU.
    let x = Tensor::new(vec![0.0, 1.0, neg, neg], &[2, 2]).unwrap();
    let x = Var::leaf(x.to_device(Device::Gpu).unwrap(), true);
    let loss = cross_entropy::cross_entropy(&x, &[0, -100], -100, 0.0, Reduction::Mean).unwrap();
    let want = (1.0f64.exp() + 1.0).ln() as f32;
    assert!((loss.value().to_vec().unwrap()[0] - want).abs() < 1e-6);
}

#[test]
fn mixing_devices_is_an_error_naming_the_op_and_both_devices() {
    if !require_gpu("graph: mixing") {
        return;
    }
    let cpu = Var::leaf(Tensor::full(&[2, 3], 1.0), true);
    let gpu = Var::leaf(Tensor::full_on(&[3, 3], 1.0, Device::Gpu).unwrap(), true);
    let cases = [
        ("linear", linear::linear(&cpu, &gpu, None).err()),
        ("matmul", matmul::matmul(&cpu, &gpu).err()),
        ("cat", shape::cat(&[cpu.clone(), gpu.clone()], 0).err()),
        ("add", elementwise::add(&cpu, &gpu).err()),
    ];
    for (op, err) in cases {
        let err = err.unwrap_or_else(|| panic!("{op}: no error"));
        assert_eq!(err.kind, ErrorKind::Device, "{err}");
        assert_eq!(err.op, op, "{err}");
        assert!(err.msg.contains("cpu") && err.msg.contains("gpu"), "{err}");
    }
    // A gradient assigned on the wrong device is refused too.
    assert_eq!(
        gpu.set_grad(Some(Tensor::zeros(&[3, 3]))).unwrap_err().kind,
        ErrorKind::Device
    );
}
