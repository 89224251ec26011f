//! The runtime's lifecycle and the handle of a started request.
//!
//! [`Lifecycle`] admits requests while the runtime is open and remembers each one's cancel
//! flag, so `close()` can cancel them all and wait until they have finished.
//! [`GenerationHandle`] cancels its request on `cancel()` or drop and gives its result.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crate::error::{Error, Result};
use crate::types::Response;

#[derive(Default)]
struct State {
    closed: bool,
    next: u64,
    /// Cancel flags of the requests in flight.
    active: Vec<(u64, Arc<AtomicBool>)>,
}

/// Admission of requests, and closing.
#[derive(Default)]
pub(super) struct Lifecycle {
    state: Mutex<State>,
    idle: Condvar,
}

/// A request in flight; dropping it (however the request ends) lets `close()` proceed.
pub(super) struct Ticket {
    lifecycle: Arc<Lifecycle>,
    id: u64,
}

impl Lifecycle {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn check_open(&self) -> Result<()> {
        if self.state().closed {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Admits a request whose cancel flag is `cancel`, unless the runtime is closed.
    pub(super) fn admit(self: &Arc<Self>, cancel: &Arc<AtomicBool>) -> Result<Ticket> {
        let mut s = self.state();
        if s.closed {
            return Err(Error::Closed);
        }
        s.next += 1;
        let id = s.next;
        s.active.push((id, Arc::clone(cancel)));
        Ok(Ticket {
            lifecycle: Arc::clone(self),
            id,
        })
    }

    /// Requests admitted and not yet ended.
    pub(super) fn in_flight(&self) -> u64 {
        self.state().active.len() as u64
    }

    /// Refuses new requests, cancels those in flight and waits until they have finished.
    pub(super) fn close(&self) {
        let mut s = self.state();
        s.closed = true;
        for (_, flag) in &s.active {
            flag.store(true, Ordering::SeqCst);
        }
        while !s.active.is_empty() {
            s = self.idle.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut s = self.lifecycle.state();
        s.active.retain(|(id, _)| *id != self.id);
        if s.active.is_empty() {
            self.lifecycle.idle.notify_all();
        }
    }
}

/// Where a started request's result lands.
#[derive(Default)]
pub(super) struct Outcome {
    result: Mutex<Option<Result<Response>>>,
    done: Condvar,
}

impl Outcome {
    pub(super) fn set(&self, result: Result<Response>) {
        *self.result.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
        self.done.notify_all();
    }
}

/// A running request. `cancel()` stops it within one token; dropping the handle cancels too
/// (the request still ends with its terminal event). `wait()` blocks until it has ended.
pub struct GenerationHandle {
    cancel: Arc<AtomicBool>,
    outcome: Arc<Outcome>,
}

impl GenerationHandle {
    pub(super) fn new() -> Self {
        Self {
            cancel: Arc::new(AtomicBool::new(false)),
            outcome: Arc::new(Outcome::default()),
        }
    }

    pub(super) fn cancel_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.cancel)
    }

    pub(super) fn outcome(&self) -> Arc<Outcome> {
        Arc::clone(&self.outcome)
    }

    /// Asks the request to stop; it finishes with `FinishReason::Cancelled`.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Whether the request has ended.
    pub fn is_finished(&self) -> bool {
        self.outcome
            .result
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Waits for the request to end and returns its result (the same on every call).
    pub fn wait(&self) -> Result<Response> {
        let mut r = self
            .outcome
            .result
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while r.is_none() {
            r = self
                .outcome
                .done
                .wait(r)
                .unwrap_or_else(PoisonError::into_inner);
        }
        r.clone().expect("set before the loop ends")
    }
}

impl Drop for GenerationHandle {
    fn drop(&mut self) {
        if !self.is_finished() {
            self.cancel();
        }
    }
}
