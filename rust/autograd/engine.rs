//! The backward pass: reverse topological order over the graph reachable from the root (a value
//! goes once all its consumers have passed their gradients on, so each leaf is finished, and its
//! post-accumulate-grad hooks run, as early as the graph allows), summing the gradients that
//! reach each value before passing them on.

use super::grad_mode::GradMode;
use super::var::Var;
use crate::cpu::pool::{self, PAR_MIN};
use crate::error::{Result, TfmError};
use crate::tensor::{shape_str, Device, Tensor};
use std::collections::{HashMap, HashSet};

/// Computes the gradient of `root` with respect to every leaf that requires one and adds it to
/// the leaf's `.grad`. `grad_output` is `d(loss)/d(root)`; it may be omitted only for a scalar
/// root, as in PyTorch. Without `retain_graph` the graph's saved values are freed on the way.
pub fn backward(root: &Var, grad_output: Option<Tensor>, retain_graph: bool) -> Result<()> {
    const OP: &str = "backward";
    if !root.requires_grad() {
        return Err(TfmError::autograd(
            OP,
            "the tensor does not require grad and has no grad_fn (was it computed under no_grad, or from inputs without requires_grad=True?)",
        ));
    }
    let root_shape = root.shape();
    let seed = match grad_output {
        Some(g) => {
            if g.shape() != root_shape.as_slice() {
                return Err(TfmError::shape(
                    OP,
                    format!(
                        "gradient of shape {} given for a tensor of shape {}",
                        shape_str(g.shape()),
                        shape_str(&root_shape)
                    ),
                ));
            }
            Device::common(OP, [root.device(), g.device()])?;
            g
        }
        None => {
            if root_shape.iter().product::<usize>() != 1 {
                return Err(TfmError::autograd(
                    OP,
                    format!("grad can be implicitly created only for scalar outputs, but the output has shape {}; pass gradient=", shape_str(&root_shape)),
                ));
            }
            Tensor::full_on(&root_shape, 1.0, root.device())?
        }
    };

    let (pending, largest) = consumer_counts(root);
    // The pass enters the thread pool once when some op in it will run in parallel, rather
    // than at each such op; a small graph stays on this thread.
    pool::parallel_if(largest >= PAR_MIN && pool::threads() > 1, move || {
        pass(root, seed, pending, retain_graph)
    })
}

/// The pass itself, from `seed`, the gradient of `root`.
fn pass(
    root: &Var,
    seed: Tensor,
    mut pending: HashMap<usize, usize>,
    retain_graph: bool,
) -> Result<()> {
    const OP: &str = "backward";
    let _no_grad = GradMode::set(false);
    let mut grads: HashMap<usize, Tensor> = HashMap::new();
    grads.insert(root.id(), seed);
    // A value is processed once every value computed from it has passed its gradient on (its
    // count of pending consumers is zero), so a leaf's gradient is complete — and its hooks run —
    // as soon as the last op that used it is done, not at the end of the pass. The ready values
    // form a stack: a finished op's inputs are taken next (its parameters first).
    let mut ready = vec![root.clone()];
    while let Some(var) = ready.pop() {
        let grad = grads.remove(&var.id());
        if var.is_leaf() {
            if let Some(grad) = grad {
                if accumulate_leaf(&var, grad)? {
                    var.run_post_accumulate_grad_hooks()?;
                }
            }
            continue;
        }
        let mut slot = var.0.node.lock().unwrap_or_else(|e| e.into_inner());
        let Some(node) = slot.as_ref() else {
            if grad.is_some() {
                return Err(TfmError::autograd(
                    OP,
                    "trying to backward through the graph a second time; its saved values were freed by the first backward (pass retain_graph=True the first time)",
                ));
            }
            continue;
        };
        // A slice of a value whose gradient has already begun adds into it in place.
        let added = match (&grad, node.inputs.as_slice()) {
            (Some(grad), [input]) if input.requires_grad() => match grads.get_mut(&input.id()) {
                Some(acc) => node.op.add_into(grad, acc)?,
                None => false,
            },
            _ => false,
        };
        // A value no gradient reached still releases its inputs.
        let input_grads = match &grad {
            _ if added => vec![None],
            Some(grad) => node.op.backward(grad, &node.inputs)?,
            None => vec![None; node.inputs.len()],
        };
        if input_grads.len() != node.inputs.len() {
            return Err(TfmError::internal(
                node.op.name(),
                "backward returned the wrong number of gradients",
            ));
        }
        for (input, g) in node.inputs.iter().zip(input_grads) {
            if !input.requires_grad() {
                continue;
            }
            if let Some(g) = g {
                let shape = input.shape();
                if g.shape() != shape.as_slice() {
                    return Err(TfmError::internal(
                        node.op.name(),
                        format!(
                            "backward produced a gradient of shape {} for an input of shape {}",
                            shape_str(g.shape()),
                            shape_str(&shape)
                        ),
                    ));
                }
                match grads.get_mut(&input.id()) {
                    Some(acc) => acc.add_assign(&g)?,
                    None => {
                        grads.insert(input.id(), g);
                    }
                }
            }
            let count = pending.entry(input.id()).or_insert(1);
            *count -= 1;
            if *count == 0 {
                ready.push(input.clone());
            }
        }
        if !retain_graph {
            *slot = None;
        }
    }
    Ok(())
}

/// For every value reachable from `root` that requires grad, the number of uses of it by other
/// such values (an op that takes it twice counts twice).
fn consumer_counts(root: &Var) -> (HashMap<usize, usize>, usize) {
    let mut counts: HashMap<usize, usize> = HashMap::new();
    let mut largest = 0;
    let mut visited = HashSet::new();
    visited.insert(root.id());
    // An explicit stack, so deep graphs cannot overflow the call stack.
    let mut stack = vec![root.clone()];
    while let Some(var) = stack.pop() {
        let slot = var.0.node.lock().unwrap_or_else(|e| e.into_inner());
        let Some(node) = slot.as_ref() else { continue };
        largest = largest.max(var.shape().iter().product());
        for input in node.inputs.iter().filter(|v| v.requires_grad()) {
            *counts.entry(input.id()).or_insert(0) += 1;
            if visited.insert(input.id()) {
                stack.push(input.clone());
            }
        }
    }
    (counts, largest)
}

/// Adds `grad` to the leaf's `.grad`; whether it did (a leaf may have stopped requiring grad).
fn accumulate_leaf(var: &Var, grad: Tensor) -> Result<bool> {
    if !var.requires_grad() {
        return Ok(false);
    }
    let mut slot = var.0.grad.lock().unwrap_or_else(|e| e.into_inner());
    match slot.as_mut() {
        Some(acc) => acc.add_assign(&grad)?,
        None => *slot = Some(grad),
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::elementwise::{add, mul};
    use crate::ops::reduce::sum;
    use std::sync::{Arc, Mutex};

    /// Each hook runs once per backward, after the leaf's gradient has all its contributions,
    /// and in the order the pass finishes the leaves; an unreached leaf's hook does not run.
    #[test]
    fn post_accumulate_grad_hooks_see_complete_gradients() {
        let a = Var::leaf(Tensor::new(vec![1.0, 2.0], &[2]).unwrap(), true);
        let b = Var::leaf(Tensor::new(vec![3.0, 4.0], &[2]).unwrap(), true);
        let unused = Var::leaf(Tensor::new(vec![0.0], &[1]).unwrap(), true);
        type Seen = Vec<(&'static str, Vec<f32>)>;
        let seen: Arc<Mutex<Seen>> = Arc::default();
        for (name, v) in [("a", &a), ("b", &b), ("unused", &unused)] {
            let seen = seen.clone();
            v.register_post_accumulate_grad_hook(Arc::new(move |v: &Var| {
                let g = v.grad().unwrap().to_vec()?;
                seen.lock().unwrap().push((name, g));
                Ok(())
            }))
            .unwrap();
        }
        // y = sum(a*b + a): a's gradient arrives from two ops (b + 1), b's from one (a).
        let y = sum(&add(&mul(&a, &b).unwrap(), &a).unwrap(), &[], false).unwrap();
        backward(&y, None, false).unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        let a_seen = seen.iter().find(|(n, _)| *n == "a").unwrap();
        assert_eq!(a_seen.1, vec![4.0, 5.0]);
        let b_seen = seen.iter().find(|(n, _)| *n == "b").unwrap();
        assert_eq!(b_seen.1, vec![1.0, 2.0]);
    }

    /// Gradients of overlapping, strided and inner-dimension slices of one value, which the
    /// slices after the first add into the summed gradient in place, against a float64 sum; the
    /// full-tensor gradient that arrives too (shared storage) must not be changed by them. Big
    /// enough for the parallel scatter path.
    #[test]
    fn slices_of_one_value_add_their_gradients_in_place() {
        use crate::ops::shape::slice;
        let (rows, cols) = (301, 257);
        let xs: Vec<f32> = (0..rows * cols)
            .map(|i| (i % 17) as f32 * 0.25 - 2.0)
            .collect();
        let x = Var::leaf(Tensor::new(xs.clone(), &[rows, cols]).unwrap(), true);
        let z = mul(&x, &x).unwrap();
        let parts = [
            slice(&z, 0, 0, 200, 1).unwrap(),
            slice(&z, 0, 100, 301, 3).unwrap(),
            slice(&z, 1, 5, 250, 2).unwrap(),
            z.clone(),
        ];
        let weights = [1.0f32, 2.0, 4.0, 8.0];
        let mut y: Option<Var> = None;
        for (p, w) in parts.iter().zip(weights) {
            let scale = Var::leaf(Tensor::full_on(&p.shape(), w, Device::Cpu).unwrap(), false);
            let term = sum(&mul(p, &scale).unwrap(), &[], false).unwrap();
            y = Some(match y {
                Some(y) => add(&y, &term).unwrap(),
                None => term,
            });
        }
        backward(&y.unwrap(), None, false).unwrap();
        let got = x.grad().unwrap().to_vec().unwrap();
        for i in 0..rows {
            for j in 0..cols {
                let mut dz = 8.0f64;
                if i < 200 {
                    dz += 1.0;
                }
                if i >= 100 && (i - 100) % 3 == 0 {
                    dz += 2.0;
                }
                if (5..250).contains(&j) && (j - 5) % 2 == 0 {
                    dz += 4.0;
                }
                let want = 2.0 * xs[i * cols + j] as f64 * dz;
                assert_eq!(got[i * cols + j] as f64, want, "({i}, {j})");
            }
        }
    }

    /// A pass over small values runs on the caller's thread; one with a value large enough for
    /// an op to split runs in the thread pool (seen from a leaf's hook).
    #[test]
    fn only_a_pass_over_large_values_enters_the_thread_pool() {
        let thread_of_pass = |n: usize| {
            let a = Var::leaf(Tensor::full_on(&[n], 0.5, Device::Cpu).unwrap(), true);
            let name: Arc<Mutex<Option<String>>> = Arc::default();
            let seen = name.clone();
            a.register_post_accumulate_grad_hook(Arc::new(move |_: &Var| {
                *seen.lock().unwrap() = std::thread::current().name().map(String::from);
                Ok(())
            }))
            .unwrap();
            backward(
                &sum(&mul(&a, &a).unwrap(), &[], false).unwrap(),
                None,
                false,
            )
            .unwrap();
            assert_eq!(a.grad().unwrap().to_vec().unwrap(), vec![1.0; n]);
            let name = name.lock().unwrap().clone();
            name.unwrap_or_default()
        };
        let here = std::thread::current()
            .name()
            .map(String::from)
            .unwrap_or_default();
        assert_eq!(thread_of_pass(7), here);
        if pool::threads() > 1 {
            assert!(thread_of_pass(PAR_MIN).starts_with("tfm-rs-"));
        } else {
            eprintln!("skipping the large pass: the thread pool has one thread");
        }
    }

    #[test]
    fn hooks_are_removable_and_errors_stop_the_backward() {
        let a = Var::leaf(Tensor::new(vec![1.0], &[1]).unwrap(), true);
        let id = a
            .register_post_accumulate_grad_hook(Arc::new(|_: &Var| {
                Err(TfmError::autograd("hook", "refused"))
            }))
            .unwrap();
        let y = sum(&mul(&a, &a).unwrap(), &[], false).unwrap();
        assert!(backward(&y, None, false).is_err());
        a.remove_hook(id);
        let y = sum(&mul(&a, &a).unwrap(), &[], false).unwrap();
        backward(&y, None, false).unwrap();
        let y = sum(&mul(&a, &a).unwrap(), &[], false).unwrap();
        assert!(y
            .register_post_accumulate_grad_hook(Arc::new(|_: &Var| Ok(())))
            .is_err());
    }
}
