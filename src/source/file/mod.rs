//! The file tailer. (Stub: issue 4 fills it in.)

use std::path::PathBuf;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::FileConfig;
use crate::record::SourceBatch;

/// What the tailer needs from the configuration.
#[derive(Clone, Debug)]
pub struct TailSettings {
    pub files: Vec<FileConfig>,
    /// Checkpoints (`positions.json`) live here.
    pub state_dir: PathBuf,
}

/// Why the tailer could not run at all (per-file problems are logged, not fatal).
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("the file tailer is not built yet")]
    NotBuilt,
}

/// Tails every configured file until `cancel` fires, sending batches on `tx`; a
/// batch's ack advances the checkpoint. Returns once all read data has been handed
/// on and the checkpoints of acknowledged batches are written.
pub async fn run(
    _settings: TailSettings,
    _tx: mpsc::Sender<SourceBatch>,
    _cancel: CancellationToken,
) -> Result<(), TailError> {
    Err(TailError::NotBuilt)
}
