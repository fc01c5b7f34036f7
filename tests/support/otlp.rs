//! A fake OTLP collector (filled in below).
