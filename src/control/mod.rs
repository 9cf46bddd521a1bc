//! Control port: command parser (pure).
