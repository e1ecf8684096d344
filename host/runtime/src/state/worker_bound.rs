//! A value bound to the worker thread that made it, in store data that must be `Send`.
#![allow(unsafe_code, reason = "the Send impl and the value's manual drop, each fenced by the thread check")]

use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};

/// Ids handed to threads as they first touch a [`WorkerBound`]; never reused.
static NEXT_THREAD: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static THREAD: u64 = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

/// This thread's id (a thread-local read once it has one).
fn current_thread() -> u64 {
    THREAD.with(|id| *id)
}

/// `T` (an `Rc`, a map of `Rc`s) usable only on the thread that created it: WASI requires a
/// store's data to be `Send`, and a VM's store never leaves its worker, so this makes the data
/// `Send` and panics on any use from another thread instead of racing.
///
/// Every host call reaches a stream through one of these, so the check is what it costs: a
/// thread-local id, where `send_wrapper` (and `fragile`) compare `thread::current().id()`,
/// which clones and drops the thread's handle (two atomic operations) on every access.
/// Dropped on another thread, the value is leaked (a panic if the thread is not already
/// unwinding, as `send_wrapper` does): its destructor must not run there.
pub(crate) struct WorkerBound<T> {
    value: ManuallyDrop<T>,
    thread: u64,
}

// SAFETY: the value is reached only through `deref`, `deref_mut` and `drop`, each of which
// checks that it runs on the thread that created the value (and panics, or leaks it, if not);
// moving the wrapper to another thread moves nothing that thread can use.
unsafe impl<T> Send for WorkerBound<T> {}

impl<T> WorkerBound<T> {
    /// Binds `value` to the calling thread.
    pub(crate) fn new(value: T) -> Self {
        Self { value: ManuallyDrop::new(value), thread: current_thread() }
    }

    #[inline]
    #[track_caller]
    fn check(&self) {
        if self.thread != current_thread() {
            panic!("a worker-bound value was used on another thread than its worker's");
        }
    }
}

impl<T> Deref for WorkerBound<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        self.check();
        &self.value
    }
}

impl<T> DerefMut for WorkerBound<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        self.check();
        &mut self.value
    }
}

impl<T> Drop for WorkerBound<T> {
    fn drop(&mut self) {
        if self.thread == current_thread() {
            // SAFETY: dropped once, here, on its own thread; `value` is not used afterwards.
            unsafe { ManuallyDrop::drop(&mut self.value) };
        } else if !std::thread::panicking() {
            panic!("a worker-bound value was dropped on another thread than its worker's");
        }
        // Else: leaked, as a second panic while unwinding would abort the process.
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

    #[test]
    fn dropped_on_another_thread_it_panics_and_while_unwinding_it_is_leaked() {
        let value = Rc::new(1);
        let bound = WorkerBound::new(Rc::clone(&value));
        let dropped = std::thread::spawn(move || drop(bound)).join();
        assert!(dropped.is_err(), "a plain drop elsewhere panics");
        let bound = WorkerBound::new(Rc::clone(&value));
        let unwinding = std::thread::spawn(move || {
            let _held = bound;
            panic!("unwinding with the value held");
        })
        .join();
        assert!(unwinding.is_err(), "one panic, not an abort");
        assert_eq!(Rc::strong_count(&value), 3, "neither destructor ran off its thread");
    }
}
