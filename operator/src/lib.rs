//! duomq-operator: the BrokerGroup API, validation, pure rendering, the controller and the
//! status it reports. The broker's config types and admin contract come from the broker crate.
pub mod api;
pub mod certificates;
pub mod controller;
pub mod leader;
pub mod names;
pub mod plan;
pub mod quantity;
pub mod render;
pub mod status;
pub mod validate;
