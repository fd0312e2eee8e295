//! The one lock policy: a poisoned mutex is taken over, not propagated.
//!
//! A panic while a lock is held is a bug (it is logged by the panic hook and the task ends);
//! every critical section here leaves its data consistent between statements, so the next
//! holder can go on. Propagating the poison instead would turn one bug into a room, a store or
//! the flusher that fails forever for everyone.

use std::sync::{Mutex, MutexGuard};

pub trait LockExt<T> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> LockExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|p| p.into_inner())
    }
}
