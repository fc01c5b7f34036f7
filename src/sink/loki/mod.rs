//! The Loki sink. (Stub: issue 5 fills it in.)
