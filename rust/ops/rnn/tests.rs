//! The recurrent op against a step-by-step f64 loop of PyTorch's equations (forward, with
//! lengths and both directions) and against finite differences of that loop (backward).

use super::*;
use crate::ops::test_support::*;

/// Sizes and data of one case: x, h0, c0, W_ih, W_hh, b_ih, b_hh (c0 empty for the GRU).
struct Case {
    cell: Cell,
    t: usize,
    b: usize,
    i: usize,
    h: usize,
    reverse: bool,
    lengths: Option<Vec<usize>>,
}

impl Case {
    fn shapes(&self) -> Vec<Vec<usize>> {
        let g = self.cell.gates() * self.h;
        let mut s = vec![vec![self.t, self.b, self.i], vec![self.b, self.h]];
        if self.cell == Cell::Lstm {
            s.push(vec![self.b, self.h]);
        }
        s.extend([vec![g, self.i], vec![g, self.h], vec![g], vec![g]]);
        s
    }

    fn data(&self, seed: u64) -> Vec<Vec<f32>> {
        self.shapes()
            .iter()
            .enumerate()
            .map(|(k, s)| rand_vec(seed + k as u64, s.iter().product(), -0.8, 0.8))
            .collect()
    }

    fn config(&self) -> RnnConfig {
        RnnConfig {
            cell: self.cell,
            reverse: self.reverse,
            lengths: self.lengths.clone(),
        }
    }

    /// The stacked result, step by step in f64.
    fn reference(&self, p: &[Vec<f64>]) -> Vec<f64> {
        let (t, b, i, h) = (self.t, self.b, self.i, self.h);
        let ns = self.cell.states();
        let (x, w_ih, w_hh, b_ih, b_hh) = (&p[0], &p[ns + 1], &p[ns + 2], &p[ns + 3], &p[ns + 4]);
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let mut y = vec![0.0; (t + ns) * b * h];
        for bi in 0..b {
            let mut hs: Vec<f64> = p[1][bi * h..][..h].to_vec();
            let mut cs: Vec<f64> = if ns == 2 {
                p[2][bi * h..][..h].to_vec()
            } else {
                vec![]
            };
            let len = self.lengths.as_ref().map_or(t, |l| l[bi]);
            for s in 0..len {
                let tt = if self.reverse { len - 1 - s } else { s };
                let xr = &x[(tt * b + bi) * i..][..i];
                let proj = |w: &[f64], bias: &[f64], v: &[f64], row: usize| {
                    bias[row]
                        + (0..v.len())
                            .map(|k| w[row * v.len() + k] * v[k])
                            .sum::<f64>()
                };
                let ax: Vec<f64> = (0..self.cell.gates() * h)
                    .map(|r| proj(w_ih, b_ih, xr, r))
                    .collect();
                let ah: Vec<f64> = (0..self.cell.gates() * h)
                    .map(|r| proj(w_hh, b_hh, &hs, r))
                    .collect();
                let a = |k: usize| ax[k] + ah[k];
                let next: Vec<f64> = match self.cell {
                    Cell::Lstm => (0..h)
                        .map(|j| {
                            let c = sig(a(h + j)) * cs[j] + sig(a(j)) * a(2 * h + j).tanh();
                            cs[j] = c;
                            sig(a(3 * h + j)) * c.tanh()
                        })
                        .collect(),
                    Cell::Gru => (0..h)
                        .map(|j| {
                            let (r, z) = (sig(a(j)), sig(a(h + j)));
                            let n = (ax[2 * h + j] + r * ah[2 * h + j]).tanh();
                            (1.0 - z) * n + z * hs[j]
                        })
                        .collect(),
                };
                hs = next;
                y[(tt * b + bi) * h..][..h].copy_from_slice(&hs);
            }
            y[(t * b + bi) * h..][..h].copy_from_slice(&hs);
            if ns == 2 {
                y[((t + 1) * b + bi) * h..][..h].copy_from_slice(&cs);
            }
        }
        y
    }

    fn run(&self, vars: &[Var]) -> Var {
        let ns = self.cell.states();
        let w = RnnWeights {
            w_ih: &vars[ns + 1],
            w_hh: &vars[ns + 2],
            b_ih: Some(&vars[ns + 3]),
            b_hh: Some(&vars[ns + 4]),
        };
        rnn(&self.config(), &vars[0], &vars[1..=ns], &w).unwrap()
    }
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for cell in [Cell::Lstm, Cell::Gru] {
        for reverse in [false, true] {
            let c = |t, b, i, h, lengths| Case {
                cell,
                t,
                b,
                i,
                h,
                reverse,
                lengths,
            };
            out.push(c(1, 1, 1, 1, None));
            out.push(c(3, 3, 2, 3, Some(vec![3, 1, 0])));
            out.push(c(5, 3, 17, 17, Some(vec![2, 5, 4])));
            out.push(c(17, 2, 3, 3, None));
        }
    }
    out
}

#[test]
fn forward_matches_an_f64_loop() {
    for (k, case) in cases().iter().enumerate() {
        let data = case.data(10 * k as u64);
        let vars: Vec<Var> = data
            .iter()
            .zip(case.shapes())
            .map(|(d, s)| leaf(d.clone(), &s))
            .collect();
        let y = case.run(&vars);
        let want = case.reference(&data.iter().map(|d| to_f64(d)).collect::<Vec<_>>());
        assert_close(&format!("case {k}"), y.value().data(), &want, 1e-5, 2e-6);
    }
}

#[test]
fn backward_matches_finite_differences() {
    for (k, case) in cases().iter().enumerate().filter(|(_, c)| c.t * c.h <= 85) {
        let data = case.data(100 + 10 * k as u64);
        let vars: Vec<Var> = data
            .iter()
            .zip(case.shapes())
            .map(|(d, s)| leaf(d.clone(), &s))
            .collect();
        let y = case.run(&vars);
        let w = rand_vec(7, y.value().numel(), -1.0, 1.0);
        let got = grads(&y, &w, &vars.iter().collect::<Vec<_>>());
        let p64: Vec<Vec<f64>> = data.iter().map(|d| to_f64(d)).collect();
        let w64 = to_f64(&w);
        for (a, g) in got.iter().enumerate() {
            let want = finite_diff(&p64[a], 1e-6, |v| {
                let mut p = p64.clone();
                p[a] = v.to_vec();
                dot(&w64, &case.reference(&p))
            });
            assert_close(&format!("case {k} input {a}"), g, &want, 1e-3, 1e-4);
        }
    }
}

#[test]
fn padded_steps_leave_the_state_and_output_zeros() {
    for cell in [Cell::Lstm, Cell::Gru] {
        let full = Case {
            cell,
            t: 4,
            b: 2,
            i: 3,
            h: 5,
            reverse: false,
            lengths: None,
        };
        let padded = Case {
            lengths: Some(vec![4, 2]),
            ..full.clone_shape()
        };
        let data = full.data(3);
        let vars: Vec<Var> = data
            .iter()
            .zip(full.shapes())
            .map(|(d, s)| leaf(d.clone(), &s))
            .collect();
        let y = padded.run(&vars).value();
        // Sample 1 over its 2 steps alone: the same as a 2-step run of it.
        let short = Case {
            t: 2,
            b: 1,
            ..full.clone_shape()
        };
        let (b, h, i) = (2, 5, 3);
        let mut sdata = data.clone();
        sdata[0] = (0..2)
            .flat_map(|t| data[0][(t * b + 1) * i..][..i].to_vec())
            .collect();
        for s in 1..=cell.states() {
            sdata[s] = data[s][h..2 * h].to_vec();
        }
        let svars: Vec<Var> = sdata
            .iter()
            .zip(short.shapes())
            .map(|(d, s)| leaf(d.clone(), &s))
            .collect();
        let ys = short.run(&svars).value();
        let yd = y.data();
        for t in 0..2 {
            assert_eq!(&yd[(t * b + 1) * h..][..h], &ys.data()[t * h..][..h]);
        }
        for t in 2..4 {
            assert!(yd[(t * b + 1) * h..][..h].iter().all(|&v| v == 0.0));
        }
        for s in 0..cell.states() {
            assert_eq!(
                &yd[((4 + s) * b + 1) * h..][..h],
                &ys.data()[(2 + s) * h..][..h]
            );
        }
    }
}

impl Case {
    fn clone_shape(&self) -> Case {
        Case {
            lengths: self.lengths.clone(),
            ..*self
        }
    }
}

/// Also where, on 2 threads, one share of the batch runs every step (its gate gradients written
/// straight into their rows) and the other is ragged (through the step buffers), while on one
/// thread the whole batch is ragged.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let ragged_tail: Vec<usize> = (0..33).map(|bi| if bi < 28 { 6 } else { bi % 6 }).collect();
    for (cell, lengths) in [
        (Cell::Lstm, None),
        (Cell::Lstm, Some(ragged_tail.clone())),
        (Cell::Gru, Some(ragged_tail)),
    ] {
        same_bits_on_1_and_2_threads(Case {
            cell,
            t: 6,
            b: 33,
            i: 40,
            h: 130,
            reverse: true,
            lengths,
        });
    }
}

/// The stacked result and the gradients of every input, for one fixed set of data.
fn outputs(case: &Case) -> Vec<Vec<f32>> {
    let vars: Vec<Var> = case
        .data(5)
        .into_iter()
        .zip(case.shapes())
        .map(|(d, s)| leaf(d, &s))
        .collect();
    let y = case.run(&vars);
    let w = rand_vec(9, y.value().numel(), -1.0, 1.0);
    let mut out = vec![y.value().data().to_vec()];
    out.extend(grads(&y, &w, &vars.iter().collect::<Vec<_>>()));
    out
}

fn same_bits_on_1_and_2_threads(case: Case) {
    let run = || outputs(&case);
    assert_eq!(with_threads(1, run), with_threads(2, run));
}

/// The step kernels (gate arithmetic, forward and backward) compute the same bits on every
/// instruction-set path (the GEMMs, on the process-wide path, are shared).
#[test]
fn step_kernels_agree_across_isa_paths() {
    for case in cases() {
        let mut first: Option<Vec<Vec<f32>>> = None;
        crate::cpu::simd::for_each_isa(|isa| {
            let out = outputs(&case);
            match &first {
                None => first = Some(out),
                Some(f) => assert!(*f == out, "{:?} on {}: bits differ", case.cell, isa.name()),
            }
        });
    }
}

#[test]
fn bad_input_is_an_error() {
    let case = Case {
        cell: Cell::Gru,
        t: 2,
        b: 1,
        i: 3,
        h: 2,
        reverse: false,
        lengths: None,
    };
    let data = case.data(1);
    let mut vars: Vec<Var> = data
        .iter()
        .zip(case.shapes())
        .map(|(d, s)| leaf(d.clone(), &s))
        .collect();
    let long = RnnConfig {
        lengths: Some(vec![3]),
        ..case.config()
    };
    let w = RnnWeights {
        w_ih: &vars[2],
        w_hh: &vars[3],
        b_ih: None,
        b_hh: None,
    };
    assert!(rnn(&long, &vars[0], &vars[1..2], &w).is_err());
    vars[0] = leaf(vec![0.0; 4], &[2, 1, 2]);
    let w = RnnWeights {
        w_ih: &vars[2],
        w_hh: &vars[3],
        b_ih: None,
        b_hh: None,
    };
    let e = rnn(&case.config(), &vars[0], &vars[1..2], &w)
        .err()
        .unwrap();
    assert!(e.to_string().contains("does not fit weight_ih"), "{e}");
    assert!(Cell::parse("rnn_tanh").is_err());
}
