//! Where OTLP data enters the OTLP spool: the receivers' requests, and the
//! agent's own telemetry (host metrics, `exec` spans). One [`Intake`] per
//! relay, cloned by each producer; the spool stage ([`crate::spool::stage`])
//! ends once every clone is dropped.

use tokio::sync::{mpsc, oneshot};

use crate::record::{Ack, Batch, OtlpPayload, Owner};

/// Hands requests to the OTLP spool stage and waits until they are durable.
/// Cheap to clone.
#[derive(Clone)]
pub struct Intake {
    tx: mpsc::Sender<Batch<OtlpPayload>>,
}

impl Intake {
    pub fn new(tx: mpsc::Sender<Batch<OtlpPayload>>) -> Self {
        Self { tx }
    }

    /// Stores one request as `owner`'s ([`Owner`]: whose share of the spool it
    /// takes); `Ok` once it is in the spool and fsynced, else why not (the
    /// spool cannot append, or the agent is stopping).
    pub async fn store(&self, payload: OtlpPayload, owner: Owner) -> Result<(), String> {
        self.store_acked(payload, Ack::none(), owner).await
    }

    /// As [`Intake::store`]; `ack` is called too once the request is durable,
    /// even if this future was dropped by then.
    pub async fn store_acked(
        &self,
        payload: OtlpPayload,
        ack: Ack,
        owner: Owner,
    ) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        let batch = Batch {
            records: vec![payload],
            ack: Ack::replying(reply).and(ack),
            owner,
        };
        let stopping = || "the agent is stopping".to_string();
        match self.tx.send(batch).await {
            Ok(()) => answer.await.unwrap_or_else(|_| Err(stopping())),
            Err(_) => Err(stopping()),
        }
    }
}
