//! duomq-broker: a durable STOMP 1.2 message broker, the member of every duomq
//! BrokerGroup. Modules by concern: `stomp` (codec, pure), `journal` (durability),
//! `engine` (queues and consumers), `server` (connections), `admin` (HTTP contract and
//! endpoint), `client` (a Rust STOMP client), `config` (`broker.yaml`), `faults` (fault
//! injection for tests: cluster frames and journal fdatasyncs).

pub mod admin;
pub mod amqp;
pub mod client;
pub mod cluster;
pub mod config;
pub mod db;
pub mod engine;
pub mod faults;
pub mod grouping;
pub mod ha;
pub mod journal;
pub mod metrics;
pub mod network;
pub mod report;
pub mod runtime;
pub mod security;
pub mod selector;
pub mod server;
pub mod stomp;
pub mod tls;
