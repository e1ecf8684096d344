//! A value bound to the worker thread that made it, in store data that must be `Send`.

use std::ops::{Deref, DerefMut};

use fragile::Fragile;

/// `T` (an `Rc`, a map of `Rc`s) usable only on the thread that created it: WASI requires a
/// store's data to be `Send`, and a VM's store never leaves its worker, so this makes the data
/// `Send` and panics on any use (or drop) from another thread instead of racing.
///
/// Every host call reaches a stream through one of these, so the check is what it costs:
/// `fragile` compares a thread-local id, where `send_wrapper` cloned and dropped the
/// `thread::current()` handle (two atomic operations) on every access.
pub(crate) struct WorkerBound<T>(Fragile<T>);

impl<T> WorkerBound<T> {
    /// Binds `value` to the calling thread.
    pub(crate) fn new(value: T) -> Self {
        Self(Fragile::new(value))
    }
}

impl<T> Deref for WorkerBound<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.get()
    }
}

impl<T> DerefMut for WorkerBound<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn a_value_is_usable_on_its_thread_and_refused_on_another() {
        let mut bound = WorkerBound::new(Rc::new(5));
        assert_eq!(**bound, 5);
        *bound = Rc::new(6);
        assert_eq!(**bound, 6);
        let moved = std::thread::spawn(move || {
            let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| **bound));
            // Dropping it here would panic too: it goes back to its thread.
            (read.is_err(), bound)
        });
        let (refused, bound) = moved.join().expect("the thread returns");
        assert!(refused, "another thread cannot read it");
        assert_eq!(**bound, 6, "back on its thread it is usable again");
    }
}
