//! The Loki sink: encoding a batch as a push body ([`encode()`]), Loki's wire
//! messages ([`push_proto`]), the HTTP client and one request ([`client`]),
//! Loki as the shipper's service with its counters ([`service`]), and the check
//! after a restart of what Loki already holds ([`replay`]). What to do with a
//! push's answer is decided in [`crate::sink::retry`].

pub mod client;
pub mod encode;
pub mod push_proto;
pub mod refusal;
pub mod replay;
pub mod service;
pub mod settle;

pub use client::{LokiClient, LokiClientError};
pub use encode::{encode, EncodeError, EncodedPush};
pub use service::{ship_settings, LokiCounters, LokiService};
