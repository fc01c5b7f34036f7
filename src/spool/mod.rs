//! The durable buffer (spool). (Stub: issue 5 fills it in.)
