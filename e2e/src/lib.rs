//! duomq's end-to-end tier: a local Kubernetes control plane that kubectl, kube-rs and the
//! operator talk to (an API server, and controllers that run pods as Docker containers), and
//! helpers the scenario tests in `tests/` share.
pub mod apiserver;
pub mod cluster;
pub mod env;
pub mod forward;
