//! The circuit breaker: after repeated failures the remote tier is skipped for a cool-down.

use std::time::{Duration, Instant};

use super::RemoteEngine;
use crate::error::RemoteError;

#[derive(Debug, Default)]
pub(super) struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

/// Consecutive failed requests (after retries) that open the breaker, and its cool-down.
const BREAKER_FAILURES: u32 = 3;
const BREAKER_COOLDOWN: Duration = Duration::from_secs(30);

impl RemoteEngine {
    /// `Err` while the breaker is open.
    pub fn check_available(&self) -> Result<(), RemoteError> {
        let b = self.breaker.lock().expect("breaker lock");
        match b.open_until {
            Some(t) if t > Instant::now() => Err(RemoteError::CircuitOpen {
                seconds: (t - Instant::now()).as_secs_f64(),
                failures: b.failures,
            }),
            _ => Ok(()),
        }
    }

    pub(super) fn record(&self, ok: bool) {
        let mut b = self.breaker.lock().expect("breaker lock");
        if ok {
            *b = Breaker::default();
        } else {
            b.failures += 1;
            if b.failures >= BREAKER_FAILURES {
                b.open_until = Some(Instant::now() + BREAKER_COOLDOWN);
                log::warn!(
                    "remote tier failed {} times in a row; skipping it for {BREAKER_COOLDOWN:?}",
                    b.failures
                );
            }
        }
    }
}
