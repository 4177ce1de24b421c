//! Reverse-mode automatic differentiation. A `Var` holds a value and, when it was produced by an
//! op while gradients are being recorded, a `Node` naming the op's backward and its inputs. The
//! graph is the tape: `backward` walks it in reverse topological order and accumulates
//! gradients into the leaves.

mod engine;
mod grad_mode;
mod var;

pub use engine::backward;
pub use grad_mode::{is_grad_enabled, set_grad_enabled, GradMode};
pub use var::{Backward, GradHook, Node, Var};
