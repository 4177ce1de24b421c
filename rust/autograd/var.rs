//! `Var`: a tensor in the autograd graph.

use super::grad_mode::is_grad_enabled;
use crate::error::{Result, TfmError};
use crate::tensor::{shape_str, Device, Tensor};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// A callback run by `backward` on a leaf once its `.grad` holds every contribution of that
/// backward pass (PyTorch's post-accumulate-grad hook): data-parallel training starts
/// communicating a gradient at that point instead of after the whole backward.
pub type GradHook = Arc<dyn Fn(&Var) -> Result<()> + Send + Sync>;

static NEXT_HOOK_ID: AtomicU64 = AtomicU64::new(1);

/// The backward of one op: given the gradient of its output, the gradients of its inputs (in
/// the order of `Node::inputs`; `None` for an input that needs none). What the forward saved
/// for this lives in the implementing struct.
pub trait Backward: Send + Sync {
    fn name(&self) -> &'static str;
    fn backward(&self, grad_output: &Tensor, inputs: &[Var]) -> Result<Vec<Option<Tensor>>>;

    /// For an op of one input whose gradient is zero outside a part of it (a slice): adds that
    /// part into `acc`, the gradient of the input summed so far, instead of making a whole
    /// tensor of it for the engine to add. Whether it did; `false` (the default) makes the
    /// engine call [`Backward::backward`].
    fn add_into(&self, _grad_output: &Tensor, _acc: &mut Tensor) -> Result<bool> {
        Ok(false)
    }
}

pub struct Node {
    pub op: Box<dyn Backward>,
    pub inputs: Vec<Var>,
}

pub(super) struct VarInner {
    /// Behind a lock because optimizers update parameters in place.
    pub(super) value: RwLock<Tensor>,
    pub(super) requires_grad: AtomicBool,
    pub(super) grad: Mutex<Option<Tensor>>,
    /// `None` for leaves and, after a backward without `retain_graph`, for freed interior nodes.
    pub(super) node: Mutex<Option<Node>>,
    pub(super) is_leaf: bool,
    pub(super) op_name: Option<&'static str>,
    /// Post-accumulate-grad hooks (leaves only), with the ids that remove them.
    pub(super) hooks: Mutex<Vec<(u64, GradHook)>>,
}

#[derive(Clone)]
pub struct Var(pub(super) Arc<VarInner>);

impl Var {
    /// A leaf: a value the graph starts from (an input or a parameter).
    pub fn leaf(value: Tensor, requires_grad: bool) -> Var {
        Var(Arc::new(VarInner {
            value: RwLock::new(value),
            requires_grad: AtomicBool::new(requires_grad),
            grad: Mutex::new(None),
            node: Mutex::new(None),
            is_leaf: true,
            op_name: None,
            hooks: Mutex::new(Vec::new()),
        }))
    }

    /// A constant: a leaf that needs no gradient.
    pub fn constant(value: Tensor) -> Var {
        Var::leaf(value, false)
    }

    /// The result of an op. It joins the graph only when gradients are being recorded and some
    /// input needs a gradient; otherwise `op` (and what it saved) is dropped at once.
    pub fn from_op(value: Tensor, inputs: Vec<Var>, op: impl Backward + 'static) -> Var {
        let record = is_grad_enabled() && inputs.iter().any(|v| v.requires_grad());
        if !record {
            return Var::constant(value);
        }
        let op_name = op.name();
        Var(Arc::new(VarInner {
            value: RwLock::new(value),
            requires_grad: AtomicBool::new(true),
            grad: Mutex::new(None),
            node: Mutex::new(Some(Node {
                op: Box::new(op),
                inputs,
            })),
            is_leaf: false,
            op_name: Some(op_name),
            hooks: Mutex::new(Vec::new()),
        }))
    }

    /// The current value (cheap: the storage is shared).
    pub fn value(&self) -> Tensor {
        self.0
            .value
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn shape(&self) -> Vec<usize> {
        self.0
            .value
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .shape()
            .to_vec()
    }

    pub fn device(&self) -> Device {
        self.0
            .value
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .device()
    }

    /// Replaces the value of a leaf in place (optimizer steps, `load_state_dict`, moving a
    /// parameter between devices).
    pub fn set_value(&self, value: Tensor) -> Result<()> {
        let mut slot = self.0.value.write().unwrap_or_else(|e| e.into_inner());
        if slot.shape() != value.shape() {
            return Err(TfmError::shape(
                "set_value",
                format!(
                    "cannot replace a value of shape {} by one of shape {}",
                    shape_str(slot.shape()),
                    shape_str(value.shape())
                ),
            ));
        }
        *slot = value;
        Ok(())
    }

    /// Runs `f` on the value's storage in place (copy-on-write if it is shared).
    pub fn update_value<R>(&self, f: impl FnOnce(&mut Tensor) -> R) -> R {
        let mut slot = self.0.value.write().unwrap_or_else(|e| e.into_inner());
        f(&mut slot)
    }

    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad.load(Ordering::Relaxed)
    }

    /// Turns gradient tracking on or off for a leaf (`Tensor.requires_grad_()`).
    pub fn set_requires_grad(&self, requires_grad: bool) -> Result<()> {
        if !self.is_leaf() {
            return Err(TfmError::autograd(
                "requires_grad_",
                "requires_grad can only be changed on leaf tensors; use detach() to get a leaf",
            ));
        }
        self.0.requires_grad.store(requires_grad, Ordering::Relaxed);
        Ok(())
    }

    pub fn is_leaf(&self) -> bool {
        self.0.is_leaf
    }

    /// Name of the op that produced this value, if it is in the graph.
    pub fn grad_fn_name(&self) -> Option<&'static str> {
        self.0.op_name
    }

    pub fn grad(&self) -> Option<Tensor> {
        self.0
            .grad
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_grad(&self, grad: Option<Tensor>) -> Result<()> {
        if let Some(g) = &grad {
            Device::common("grad", [self.device(), g.device()])?;
            let shape = self.shape();
            if g.shape() != shape.as_slice() {
                return Err(TfmError::shape(
                    "grad",
                    format!(
                        "assigned grad of shape {} to a tensor of shape {}",
                        shape_str(g.shape()),
                        shape_str(&shape)
                    ),
                ));
            }
        }
        *self.0.grad.lock().unwrap_or_else(|e| e.into_inner()) = grad;
        Ok(())
    }

    /// A new leaf sharing this value, outside the graph (`Tensor.detach()`).
    pub fn detach(&self) -> Var {
        Var::constant(self.value())
    }

    /// Whether both handles refer to the same variable.
    pub fn same_as(&self, other: &Var) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Registers `hook`, run by every later backward that reaches this leaf, right after the
    /// leaf's gradient is complete for that pass (never for a leaf the pass does not reach).
    /// Returns the id that [`Var::remove_hook`] takes. Leaves only, as in PyTorch.
    pub fn register_post_accumulate_grad_hook(&self, hook: GradHook) -> Result<u64> {
        if !self.is_leaf() {
            return Err(TfmError::autograd(
                "register_post_accumulate_grad_hook",
                "post-accumulate-grad hooks can only be registered on leaf tensors",
            ));
        }
        let id = NEXT_HOOK_ID.fetch_add(1, Ordering::Relaxed);
        self.0
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, hook));
        Ok(id)
    }

    /// Removes the hook `id` (a no-op if it is already gone).
    pub fn remove_hook(&self, id: u64) {
        self.0
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(h, _)| *h != id);
    }

    /// Runs the post-accumulate-grad hooks in registration order. The list is copied first, so a
    /// hook may add or remove hooks.
    pub(super) fn run_post_accumulate_grad_hooks(&self) -> Result<()> {
        let hooks: Vec<GradHook> = self
            .0
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, h)| h.clone())
            .collect();
        hooks.iter().try_for_each(|h| h(self))
    }

    /// Identity of the underlying node, for graph traversal.
    pub(super) fn id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }
}
