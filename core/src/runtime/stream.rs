//! The stream of text to the sink, with the held local draft and held remote text.

use std::cell::Cell;
use std::time::Instant;

use crate::types::{Event, EventSink, Tier};

/// Streams text to the sink and notes when the first token arrived. With a held draft
/// (`ChatRequest::hold_draft`, in the cascade) local text waits in `held` until the route is
/// settled.
pub(super) struct Stream<'a> {
    pub(super) sink: &'a dyn EventSink,
    pub(super) t0: Instant,
    pub(super) first_token: Cell<Option<f64>>,
    pub(super) held: std::cell::RefCell<Option<String>>,
    /// With a held draft, an escalation's remote text waits here until the remote answer is
    /// complete: if the call fails, the local answer is sent instead and the caller never saw
    /// a remote beginning it cannot take back.
    pub(super) held_remote: std::cell::RefCell<Option<String>>,
    /// The request offers tools: local text is held until settled, and only its content (not
    /// the call markup) is sent; the calls arrive in the response.
    pub(super) tools: bool,
}

impl Stream<'_> {
    pub(super) fn text(&self, text: &str, tier: Tier) {
        if text.is_empty() {
            return;
        }
        let slot = match tier {
            Tier::Local => &self.held,
            Tier::Remote => &self.held_remote,
        };
        if let Some(held) = slot.borrow_mut().as_mut() {
            held.push_str(text);
            return;
        }
        self.emit(text, tier);
    }

    /// Holds remote text from now on.
    pub(super) fn hold_remote(&self) {
        *self.held_remote.borrow_mut() = Some(String::new());
    }

    /// The remote answer stands: send its held text.
    fn release_remote(&self) {
        let held = self.held_remote.borrow_mut().take();
        if let Some(text) = held.filter(|t| !t.is_empty()) {
            self.emit(&text, Tier::Remote);
        }
    }

    /// The escalation gave no answer: its held remote text is dropped, and a caller that saw
    /// remote text (or the local draft abandoned at `Escalating`) is told that the local
    /// answer stands again.
    pub(super) fn fall_back(&self, detail: &str) {
        self.held_remote.borrow_mut().take();
        self.sink.on_event(Event::FallingBack {
            detail: detail.to_owned(),
        });
    }

    /// Holds local text from now on.
    pub(super) fn hold(&self) {
        *self.held.borrow_mut() = Some(String::new());
    }

    /// The route settled on the local answer: send what was held, and stop holding.
    pub(super) fn release(&self) {
        let held = self.held.borrow_mut().take();
        let held = if self.tools {
            held.map(|t| crate::tools::parse(&t, "").content)
        } else {
            held
        };
        if let Some(text) = held.filter(|t| !t.is_empty()) {
            self.emit(&text, Tier::Local);
        }
    }

    /// The remote tier answered: the held draft is never sent, the held remote text is.
    pub(super) fn discard(&self) {
        self.held.borrow_mut().take();
        self.release_remote();
    }

    fn emit(&self, text: &str, tier: Tier) {
        if self.first_token.get().is_none() {
            self.first_token
                .set(Some(self.t0.elapsed().as_secs_f64() * 1e3));
        }
        self.sink.on_event(Event::Token {
            text: text.to_owned(),
            tier,
        });
    }
}
