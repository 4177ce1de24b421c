//! The backward pass: reverse topological order over the graph reachable from the root,
//! summing the gradients that reach each value before passing them on.

use super::grad_mode::GradMode;
use super::var::Var;
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

    let _no_grad = GradMode::set(false);
    let order = topological_order(root);
    let mut grads: HashMap<usize, Tensor> = HashMap::new();
    grads.insert(root.id(), seed);
    for var in order {
        let Some(grad) = grads.remove(&var.id()) else {
            continue;
        };
        if var.is_leaf() {
            accumulate_leaf(&var, grad)?;
            continue;
        }
        let mut slot = var.0.node.lock().unwrap_or_else(|e| e.into_inner());
        let Some(node) = slot.as_ref() else {
            return Err(TfmError::autograd(
                OP,
                "trying to backward through the graph a second time; its saved values were freed by the first backward (pass retain_graph=True the first time)",
            ));
        };
        let input_grads = node.op.backward(&grad, &node.inputs)?;
        if input_grads.len() != node.inputs.len() {
            return Err(TfmError::internal(
                node.op.name(),
                "backward returned the wrong number of gradients",
            ));
        }
        for (input, g) in node.inputs.iter().zip(input_grads) {
            let Some(g) = g else { continue };
            if !input.requires_grad() {
                continue;
            }
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
        if !retain_graph {
            *slot = None;
        }
    }
    Ok(())
}

/// Every value reachable from `root` that requires grad, each before all of its inputs.
fn topological_order(root: &Var) -> Vec<Var> {
    let mut visited = HashSet::new();
    let mut post_order = Vec::new();
    // (var, inputs already expanded?) — an explicit stack, so deep graphs cannot overflow it.
    let mut stack = vec![(root.clone(), false)];
    while let Some((var, expanded)) = stack.pop() {
        if expanded {
            post_order.push(var);
            continue;
        }
        if !visited.insert(var.id()) {
            continue;
        }
        let inputs: Vec<Var> = match var
            .0
            .node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            Some(node) => node
                .inputs
                .iter()
                .filter(|v| v.requires_grad())
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        stack.push((var, true));
        for input in inputs {
            if !visited.contains(&input.id()) {
                stack.push((input, false));
            }
        }
    }
    post_order.reverse();
    post_order
}

fn accumulate_leaf(var: &Var, grad: Tensor) -> Result<()> {
    if !var.requires_grad() {
        return Ok(());
    }
    let mut slot = var.0.grad.lock().unwrap_or_else(|e| e.into_inner());
    match slot.as_mut() {
        Some(acc) => acc.add_assign(&grad)?,
        None => *slot = Some(grad),
    }
    Ok(())
}
