//! Engines: the tiers that actually produce text.

pub mod local;
pub mod remote;
