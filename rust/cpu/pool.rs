//! The thread pool that every op runs in. rayon's global pool cannot be resized, so tfm_rs keeps
//! its own and rebuilds it on `set_num_threads`; callers enter it with `install`.

use crate::error::{Result, TfmError};
use std::sync::{Arc, OnceLock, RwLock};

fn default_threads() -> usize {
    std::env::var("TFM_RS_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

fn build(threads: usize) -> Result<Arc<rayon::ThreadPool>> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("tfm-rs-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| TfmError::internal("set_num_threads", e.to_string()))
}

fn slot() -> &'static RwLock<Option<Arc<rayon::ThreadPool>>> {
    static POOL: OnceLock<RwLock<Option<Arc<rayon::ThreadPool>>>> = OnceLock::new();
    POOL.get_or_init(|| RwLock::new(None))
}

fn pool() -> Result<Arc<rayon::ThreadPool>> {
    if let Some(p) = slot().read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return Ok(Arc::clone(p));
    }
    let mut guard = slot().write().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        *guard = Some(build(default_threads())?);
    }
    Ok(Arc::clone(guard.as_ref().expect("pool was just built")))
}

/// Runs `f` inside the tfm_rs pool, so rayon work it spawns uses `num_threads()` threads.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> Result<R> {
    Ok(pool()?.install(f))
}

pub fn num_threads() -> usize {
    pool().map(|p| p.current_num_threads()).unwrap_or(1)
}

pub fn set_num_threads(threads: usize) -> Result<()> {
    if threads == 0 {
        return Err(TfmError::value(
            "set_num_threads",
            "the number of threads must be at least 1",
        ));
    }
    let new = build(threads)?;
    *slot().write().unwrap_or_else(|e| e.into_inner()) = Some(new);
    Ok(())
}
