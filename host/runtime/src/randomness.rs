//! Randomness handed to guests (`random_get`, the component's `random-u64`): span and trace ids
//! on every request come from here. A `getrandom` system call per id was 3 % of the trace
//! filter's cost, so each worker thread keeps its own CSPRNG (ChaCha12), seeded from the OS on
//! first use. Unlike `rand::rng()`, a failure to get the seed (a sandbox denying `getrandom`) is
//! reported to the guest, not a panic in a host call; it is tried again on the next call.

use std::cell::RefCell;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

thread_local! {
    static RNG: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Fills `out` with cryptographically secure random bytes; false when the OS gave no seed.
pub(crate) fn fill(out: &mut [u8]) -> bool {
    RNG.with(|rng| {
        let mut rng = rng.borrow_mut();
        if rng.is_none() {
            *rng = StdRng::try_from_os_rng().ok();
        }
        rng.as_mut().map(|rng| rng.fill_bytes(out)).is_some()
    })
}
