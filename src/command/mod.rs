//! The commands that are clients of the daemon or of the system, each in a
//! room of its own (what `run` starts lives beside the stages).

pub mod status;
