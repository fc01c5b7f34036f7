//! The Loki sink: encoding a batch as a push body ([`encode()`]), Loki's wire
//! messages ([`push_proto`]), one request ([`service`]), the loop ([`sink`]), and
//! the check after a restart of what Loki already holds ([`replay`]). What to do
//! with a push's answer is decided in [`crate::sink::retry`].

pub mod encode;
pub mod push_proto;
pub mod refusal;
pub mod replay;
pub mod service;
pub mod settle;
pub mod sink;

pub use encode::{encode, EncodeError, EncodedPush};
pub use service::{LokiClient, LokiClientError};
