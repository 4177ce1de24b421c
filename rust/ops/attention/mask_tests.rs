//! The block-skipping kernels under structured masks against the f64 reference run with the
//! same mask as a dense −∞ array (built pair by pair from [`StructuredMask::allowed`]), and
//! the tile and row rules against that pair-by-pair definition. Tolerances as in `tests`.

use super::tests::{assert_close, data, to_f64, FWD_TOL, GRAD_TOL};
use super::*;
use crate::autograd::backward;
use crate::error::ErrorKind;

fn band(left: usize, right: usize) -> MaskSpec {
    MaskSpec::Window {
        left,
        right,
        lower_right: false,
    }
}

fn and(a: MaskSpec, b: MaskSpec) -> MaskSpec {
    MaskSpec::And(Box::new(a), Box::new(b))
}

fn or(a: MaskSpec, b: MaskSpec) -> MaskSpec {
    MaskSpec::Or(Box::new(a), Box::new(b))
}

/// Key padding of `samples` samples with lengths cycling through a few fractions of `tk`
/// (one sample with no key at all when there are three or more).
fn padding(samples: usize, tk: usize) -> MaskSpec {
    let lengths: Vec<usize> = (0..samples)
        .map(|b| [tk, tk / 2 + 1, 0, tk.div_ceil(3)][b % 4].min(tk))
        .collect();
    MaskSpec::KeyPadding {
        samples,
        valid: lengths
            .iter()
            .flat_map(|&n| (0..tk).map(move |j| j < n))
            .collect(),
    }
}

/// Every kind and some compositions, for L × S with `samples` batch samples.
fn specs(samples: usize, tq: usize, tk: usize) -> Vec<(String, MaskSpec)> {
    let globals = MaskSpec::Global {
        indices: [0, 5, tq.max(tk) - 1, 70]
            .into_iter()
            .filter(|&g| g < tq.max(tk))
            .collect(),
    };
    let bigbird = |block| MaskSpec::BlockSparse {
        block,
        window: 1,
        global: 1,
        random: 2,
        seed: 7,
    };
    let dense = {
        let n = tq * tk;
        let d: Vec<f32> = data(n, 11, 1.0)
            .iter()
            .map(|&x| if x < -0.5 { f32::NEG_INFINITY } else { 0.0 })
            .collect();
        MaskSpec::Dense(Tensor::new(d, &[tq, tk]).unwrap())
    };
    vec![
        ("causal".into(), MaskSpec::Causal { lower_right: false }),
        (
            "causal lower-right".into(),
            MaskSpec::Causal { lower_right: true },
        ),
        ("window 5+2".into(), band(5, 2)),
        ("window 70+70".into(), band(70, 70)),
        ("window 0+1".into(), band(0, 1)),
        (
            "window 64+0 lower-right".into(),
            MaskSpec::Window {
                left: 64,
                right: 0,
                lower_right: true,
            },
        ),
        ("global".into(), globals.clone()),
        ("padding".into(), padding(samples, tk)),
        ("bigbird 16".into(), bigbird(16)),
        ("bigbird 64".into(), bigbird(64)),
        ("bigbird 5".into(), bigbird(5)),
        ("dense".into(), dense.clone()),
        ("window | global".into(), or(band(9, 9), globals.clone())),
        (
            "(window | global) & padding".into(),
            and(or(band(64, 64), globals), padding(samples, tk)),
        ),
        (
            "causal & window & padding".into(),
            and(
                and(MaskSpec::Causal { lower_right: false }, band(20, 20)),
                padding(samples, tk),
            ),
        ),
        ("bigbird | dense".into(), or(bigbird(32), dense.clone())),
        ("dense & window".into(), and(dense, band(3, 100))),
    ]
}

/// The mask as an additive (0 / −∞) array (…batch, L, S), pair by pair.
fn dense_of(m: &StructuredMask, batch: &[usize]) -> Tensor {
    let bh: usize = batch.iter().product();
    let (tq, tk) = (m.tq, m.tk);
    let mut d = Vec::with_capacity(bh * tq * tk);
    for h in 0..bh {
        for i in 0..tq {
            for j in 0..tk {
                d.push(if m.allowed(h, i, j) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                });
            }
        }
    }
    let shape: Vec<usize> = batch.iter().copied().chain([tq, tk]).collect();
    Tensor::new(d, &shape).unwrap()
}

/// Fused forward (through the op, and the slice kernel for the log-sum-exp) and backward
/// against the reference with the dense mask.
fn check(name: &str, spec: &MaskSpec, batch: &[usize], tq: usize, tk: usize, e: usize) {
    let bh: usize = batch.iter().product();
    let shape = |rows: usize, cols: usize| -> Vec<usize> {
        batch.iter().copied().chain([rows, cols]).collect()
    };
    let make = |rows, cols, seed| {
        Tensor::new(data(bh * rows * cols, seed, 1.5), &shape(rows, cols)).unwrap()
    };
    let (q, k, v, dout) = (
        make(tq, e, 1),
        make(tk, e, 2),
        make(tk, e, 3),
        make(tq, e, 4),
    );
    let vars = [&q, &k, &v].map(|t| Var::leaf(t.clone(), true));
    let out =
        scaled_dot_product_attention_structured(&vars[0], &vars[1], &vars[2], spec, 0.0, None)
            .unwrap();
    backward(&out, Some(dout.clone()), false).unwrap();

    let resolved = spec.resolve(batch, tq, tk).unwrap();
    let dense = dense_of(&resolved, batch);
    let layout = HostMask::new(OP, &dense, batch, tq, tk).unwrap();
    let cfg = MaskedConfig {
        cfg: AttentionConfig {
            bh,
            tq,
            tk,
            e,
            ev: e,
            scale: default_scale(e),
            is_causal: false,
            dropout_p: 0.0,
            seed: 0,
        },
        mask: Some(layout.view()),
    };
    let f = |t: &Tensor| to_f64(t.data());
    let mut want_out = vec![0.0; bh * tq * e];
    let mut want_lse = vec![0.0; bh * tq];
    attention_forward_reference(&mut want_out, &mut want_lse, &f(&q), &f(&k), &f(&v), &cfg);
    let (mut dq, mut dk, mut dv) = (
        vec![0.0; q.numel()],
        vec![0.0; k.numel()],
        vec![0.0; v.numel()],
    );
    attention_backward_reference(
        &mut dq,
        &mut dk,
        &mut dv,
        &f(&dout),
        &f(&q),
        &f(&k),
        &f(&v),
        &cfg,
    );
    let what = format!("{name}, batch {batch:?} L {tq} S {tk} E {e}");
    assert_close(
        &format!("out, {what}"),
        out.value().data(),
        &want_out,
        FWD_TOL,
    );
    assert_close(
        &format!("dq, {what}"),
        vars[0].grad().unwrap().data(),
        &dq,
        GRAD_TOL,
    );
    assert_close(
        &format!("dk, {what}"),
        vars[1].grad().unwrap().data(),
        &dk,
        GRAD_TOL,
    );
    assert_close(
        &format!("dv, {what}"),
        vars[2].grad().unwrap().data(),
        &dv,
        GRAD_TOL,
    );

    let mut lse = vec![0.0f32; bh * tq];
    let mut o = vec![0.0f32; bh * tq * e];
    let plain = MaskedConfig { mask: None, ..cfg };
    attention_forward_masked(
        &mut o,
        &mut lse,
        q.data(),
        k.data(),
        v.data(),
        &plain,
        Some(&resolved),
    );
    for (r, (&got, &want)) in lse.iter().zip(&want_lse).enumerate() {
        if want.is_infinite() {
            assert_eq!(got, f32::INFINITY, "lse row {r} (no key), {what}");
        } else {
            assert!(
                (got as f64 - want).abs() <= FWD_TOL * want.abs().max(1.0),
                "lse row {r}: {got} vs {want}, {what}"
            );
        }
    }
}

#[test]
fn every_mask_matches_dense_attention() {
    let shapes: [(&[usize], usize, usize, usize); 7] = [
        (&[1], 1, 1, 3),
        (&[2, 2], 3, 3, 3),
        (&[2, 3], 17, 17, 8),
        (&[3], 127, 127, 16),
        (&[2], 200, 131, 17),
        (&[1, 2], 131, 200, 64),
        (&[4], 64, 64, 16),
    ];
    for (batch, tq, tk, e) in shapes {
        for (name, spec) in specs(batch[0], tq, tk) {
            check(&name, &spec, batch, tq, tk, e);
        }
    }
}

#[test]
fn long_awkward_length() {
    for (name, spec) in specs(2, 1000, 1000) {
        if name.contains("window") || name.contains("bigbird 64") || name == "padding" {
            check(&name, &spec, &[2], 1000, 1000, 8);
        }
    }
}

#[test]
fn tiles_and_rows_agree_with_the_pairwise_definition() {
    let (tq, tk) = (150, 170);
    for (name, spec) in specs(2, tq, tk) {
        let m = spec.resolve(&[2, 2], tq, tk).unwrap();
        for head in 0..4 {
            for (i0, i1) in [(0, 64), (64, 128), (128, 150), (3, 20), (149, 150)] {
                for (j0, j1) in [(0, 64), (64, 128), (128, 170), (5, 9), (169, 170)] {
                    let pairs: Vec<bool> = (i0..i1)
                        .flat_map(|i| (j0..j1).map(move |j| (i, j)))
                        .map(|(i, j)| m.allowed(head, i, j))
                        .collect();
                    match m.tile(head, (i0, i1), (j0, j1)) {
                        Tile::Empty => assert!(!pairs.iter().any(|&a| a), "{name}: empty tile"),
                        Tile::Full => assert!(pairs.iter().all(|&a| a), "{name}: full tile"),
                        Tile::Partial => {}
                    }
                    let mut row = vec![false; j1 - j0];
                    for i in i0..i1 {
                        m.row(head, i, j0, &mut row);
                        let want: Vec<bool> = (j0..j1).map(|j| m.allowed(head, i, j)).collect();
                        assert_eq!(row, want, "{name}: row {i} from {j0}");
                    }
                }
            }
        }
        let stats = m.explain(4, 64);
        let allowed = (0..4)
            .flat_map(|h| (0..tq).flat_map(move |i| (0..tk).map(move |j| (h, i, j))))
            .filter(|&(h, i, j)| m.allowed(h, i, j))
            .count() as u64;
        assert_eq!(stats.allowed, allowed, "{name}: explain's count");
        // The tiles it skips unseen must be those the tile rule calls empty.
        let mut classes = [0u64; 3];
        for head in 0..4 {
            for i0 in (0..tq).step_by(64) {
                for j0 in (0..tk).step_by(64) {
                    let tile = m.tile(head, (i0, (i0 + 64).min(tq)), (j0, (j0 + 64).min(tk)));
                    classes[tile as usize] += 1;
                }
            }
        }
        assert_eq!(
            [stats.empty, stats.partial, stats.full],
            classes,
            "{name}: tiles"
        );
    }
}

#[test]
fn a_window_skips_the_tiles_it_empties() {
    let m = or(
        band(256, 256),
        MaskSpec::Global {
            indices: (0..16).collect(),
        },
    )
    .resolve(&[1], 4096, 4096)
    .unwrap();
    let s = m.explain(1, 64);
    // 64 × 64 tiles; the band covers 9 tile diagonals, the global rows and columns one each.
    assert_eq!(s.full + s.partial + s.empty, 64 * 64);
    assert!(s.empty > 64 * 64 * 8 / 10, "{s:?}");
    // And the kernels visit only those: the global block and the band's blocks, either way.
    for along in [Along::Keys, Along::Queries] {
        assert_eq!(m.reach(0, along, (2048, 2112), 64), [(0, 1), (28, 37)]);
    }
}

#[test]
fn bad_masks_are_errors() {
    let q = Var::leaf(
        Tensor::new(data(2 * 10 * 4, 1, 1.0), &[2, 10, 4]).unwrap(),
        false,
    );
    let kind = |spec: MaskSpec| {
        scaled_dot_product_attention_structured(&q, &q, &q, &spec, 0.0, None)
            .map(|_| ())
            .unwrap_err()
            .kind
    };
    assert_eq!(
        kind(MaskSpec::Global { indices: vec![10] }),
        ErrorKind::Index
    );
    assert_eq!(
        kind(MaskSpec::BlockSparse {
            block: 0,
            window: 1,
            global: 0,
            random: 0,
            seed: 0
        }),
        ErrorKind::Value
    );
    assert_eq!(kind(padding(3, 10)), ErrorKind::Shape);
    assert_eq!(kind(padding(2, 9)), ErrorKind::Shape);
    let dense = Tensor::new(vec![0.0; 9 * 10], &[9, 10]).unwrap();
    assert_eq!(kind(MaskSpec::Dense(dense)), ErrorKind::Shape);
}

/// Every block that `reach` leaves out, for the range `from` of the other axis, must be an
/// empty tile by the tile rule (so that `explain` counts the same) and hold no allowed pair.
fn check_reach(
    name: &str,
    m: &StructuredMask,
    head: usize,
    along: Along,
    from: (usize, usize),
    width: usize,
) {
    let extent = match along {
        Along::Keys => m.tk,
        Along::Queries => m.tq,
    };
    let spans = m.reach(head, along, from, width);
    let what = format!("{name}: {along:?} from {from:?}, width {width}, head {head}");
    let count = extent.div_ceil(width);
    assert!(
        spans.windows(2).all(|w| w[0].1 < w[1].0)
            && spans.iter().all(|&(lo, hi)| lo < hi && hi <= count),
        "{what}: spans {spans:?} of {count}"
    );
    for b in (0..count).filter(|&b| !spans.iter().any(|&(lo, hi)| (lo..hi).contains(&b))) {
        let block = (b * width, ((b + 1) * width).min(extent));
        let (rows, cols) = match along {
            Along::Keys => (from, block),
            Along::Queries => (block, from),
        };
        assert_eq!(m.tile(head, rows, cols), Tile::Empty, "{what}: block {b}");
        let any = (rows.0..rows.1).any(|i| (cols.0..cols.1).any(|j| m.allowed(head, i, j)));
        assert!(!any, "{what}: block {b} holds an allowed pair");
    }
}

#[test]
fn reach_leaves_out_only_empty_tiles() {
    let sizes = [
        (1, 1),
        (3, 3),
        (17, 3),
        (3, 127),
        (127, 17),
        (150, 170),
        (1000, 1000),
    ];
    let mut draw = 0u64;
    let mut pick = |n: usize| {
        draw += 1;
        (crate::random::uniform(99, draw) * n as f32) as usize % n
    };
    for (tq, tk) in sizes {
        let small = tq * tk <= 150 * 170;
        for (name, spec) in specs(2, tq, tk) {
            let m = spec.resolve(&[2, 2], tq, tk).unwrap();
            let name = format!("{name}, L {tq} S {tk}");
            for head in [0, 3] {
                for width in [1, 5, 17, 64] {
                    if !small && width < 17 {
                        continue;
                    }
                    for (along, extent) in [(Along::Keys, tq), (Along::Queries, tk)] {
                        // Both ends of the axis, then random ranges up to a tile long.
                        for t in 0..if small { 12 } else { 3 } {
                            let lo = match t {
                                0 => 0,
                                1 => extent - 1,
                                _ => pick(extent),
                            };
                            let hi = (lo + 1 + pick(70)).min(extent);
                            check_reach(&name, &m, head, along, (lo, hi), width);
                        }
                    }
                }
            }
        }
    }
}
