//! The one way Pulse takes a `std::sync::Mutex`.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, also after a thread panicked while holding it. Every
/// value Pulse guards this way is updated in one step per critical section
/// (a counter, a state swap, a map insert), so a panic elsewhere leaves it
/// whole, and refusing it would turn one failed request into a dead role.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
