//! Configuration: the TOML schema of SPEC.md as typed structs with defaults.

use serde::{Deserialize, Serialize};

/// How a source's lines are parsed (`[[files]].format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Decide per line: a JSON object, `key=value` pairs, else text.
    #[default]
    Auto,
    Pino,
    Json,
    Logfmt,
    Text,
}
