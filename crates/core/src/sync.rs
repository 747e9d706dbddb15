//! Locks that survive a panicked holder.
//!
//! A thread that panics while it holds a `std::sync` lock poisons it. Every lock in this
//! workspace guards state that stays consistent between statements (a map, a counter, a
//! queue), so the rest of the process goes on with it rather than panicking in turn: this
//! is the one place that decision is made.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// [`Mutex::lock`] that takes the guard of a poisoned lock too.
pub trait LockExt<T: ?Sized> {
    /// Locks, recovering from poisoning.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> LockExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// [`RwLock::read`] and [`RwLock::write`] that take the guard of a poisoned lock too.
pub trait RwLockExt<T: ?Sized> {
    /// Read-locks, recovering from poisoning.
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    /// Write-locks, recovering from poisoning.
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockExt<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_poisoned_lock_still_gives_its_value() {
        let m = Arc::new(Mutex::new(1));
        let rw = Arc::new(RwLock::new(2));
        let (m2, rw2) = (m.clone(), rw.clone());
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            let _w = rw2.write().unwrap();
            panic!("poison both");
        })
        .join();
        assert!(m.is_poisoned() && rw.is_poisoned());
        *m.locked() += 1;
        assert_eq!(*m.locked(), 2);
        *rw.write_locked() += 1;
        assert_eq!(*rw.read_locked(), 3);
    }
}
