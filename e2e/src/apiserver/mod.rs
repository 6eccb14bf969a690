//! The local API server.
