//! Whether ops record the graph. Thread-local, as in PyTorch; `GradMode::set` restores the
//! previous mode when dropped, so a worker thread can adopt the caller's mode for one call.

use std::cell::Cell;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(true) };
}

pub fn is_grad_enabled() -> bool {
    ENABLED.with(|e| e.get())
}

/// Sets this thread's mode until changed again; returns the previous one.
pub fn set_grad_enabled(enabled: bool) -> bool {
    ENABLED.with(|e| e.replace(enabled))
}

/// Sets the grad mode of this thread until the guard is dropped.
#[must_use = "the mode reverts when the guard is dropped"]
pub struct GradMode {
    previous: bool,
}

impl GradMode {
    pub fn set(enabled: bool) -> GradMode {
        let previous = ENABLED.with(|e| e.replace(enabled));
        GradMode { previous }
    }
}

impl Drop for GradMode {
    fn drop(&mut self) {
        ENABLED.with(|e| e.set(self.previous));
    }
}
