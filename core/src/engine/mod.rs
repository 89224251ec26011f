//! Engines: the tiers that actually produce text.

pub mod local;
