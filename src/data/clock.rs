//! A process-wide monotonic millisecond clock, for the windows and ages kept in atomics
//! (failure windows, retry budgets, idle connections). Its own module so that `pool` and
//! `upstream` both use it without importing each other.

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the first call, on a monotonic clock (read on failure and idle paths,
/// not per request).
pub fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}
