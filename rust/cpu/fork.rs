//! Keeping process-wide state usable in a child made by `fork`.
//!
//! `fork` copies only the calling thread. In the child the thread pool's workers do not exist (a
//! job handed to them waits forever), and a lock that another thread held at that moment stays
//! held for good. So each module with such state registers handlers here, through
//! `pthread_atfork`: `prepare` runs in the forking thread just before the fork (take the locks, so
//! no other thread is inside them), `parent` and `child` just after, in each process (release
//! them; the child also drops what died with the other threads). The handlers run on the same
//! thread, so a lock guard taken in `prepare` can wait in a thread-local for `parent`/`child`.
//!
//! Handlers must not panic: they are called from C, where an unwind aborts the process.

/// A fork handler: a plain function called by the C library around `fork`.
pub type Handler = extern "C" fn();

#[cfg(unix)]
extern "C" {
    fn pthread_atfork(
        prepare: Option<Handler>,
        parent: Option<Handler>,
        child: Option<Handler>,
    ) -> i32;
}

/// Registers fork handlers for the life of the process. `prepare` handlers run in the reverse
/// order of registration, `parent` and `child` handlers in the order; a module registers once,
/// before it creates state that a fork could strand. A no-op where there is no `fork`.
pub fn on_fork(prepare: Option<Handler>, parent: Option<Handler>, child: Option<Handler>) {
    #[cfg(unix)]
    // SAFETY: the handlers are `'static` functions that never unwind; pthread_atfork only
    // stores the pointers (it fails only with ENOMEM, leaving the process as before: forks then
    // go unhandled, as they did without it).
    unsafe {
        pthread_atfork(prepare, parent, child);
    }
    #[cfg(not(unix))]
    let _ = (prepare, parent, child);
}
