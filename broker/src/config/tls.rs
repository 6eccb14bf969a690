//! `tls:`: certificates for the STOMP listener, the cluster port and the admin API, and
//! `auth:`'s authorization parts (roles, per-destination permissions, certificate users).
//! One certificate, key and CA serve all three listeners (as ActiveMQ's one
//! `sslContext`); each listener turns TLS on by itself. The files are read again every
//! `reloadInterval`: changed files serve new connections without a restart.

use super::units::HumanDuration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TlsConfig {
    /// This broker's certificate chain (PEM, leaf first).
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// The CA certificates (PEM) trusted for the other members' certificates on the
    /// cluster port and for client certificates on STOMP.
    pub ca_file: Option<PathBuf>,
    /// How often the files are checked; changed files are used by new connections.
    pub reload_interval: HumanDuration,
    /// The oldest protocol version accepted: `"1.2"` or `"1.3"`. Older ones never are.
    pub min_version: TlsVersion,
    pub stomp: ClientTlsConfig,
    /// The AMQP listener (`amqp.listen`, with `amqp.enabled`): `amqps://` only. Client
    /// certificates mapped by `auth.certificateUsers` log in with SASL EXTERNAL. Left out
    /// of a rendered file at its default, so rendered configs without AMQP stay the same
    /// (an operator's config hash, and so its members, are not rolled by it).
    #[serde(skip_serializing_if = "ClientTlsConfig::is_default")]
    pub amqp: ClientTlsConfig,
    pub cluster: ListenerTlsConfig,
    pub admin: ListenerTlsConfig,
}

impl Default for TlsConfig {
    fn default() -> TlsConfig {
        TlsConfig {
            cert_file: None,
            key_file: None,
            ca_file: None,
            reload_interval: HumanDuration::secs(10),
            min_version: TlsVersion::V1_2,
            stomp: ClientTlsConfig::default(),
            amqp: ClientTlsConfig::default(),
            cluster: ListenerTlsConfig::default(),
            admin: ListenerTlsConfig::default(),
        }
    }
}

impl TlsConfig {
    pub fn is_default(&self) -> bool {
        *self == TlsConfig::default()
    }

    /// Whether any listener speaks TLS.
    pub fn any_enabled(&self) -> bool {
        self.stomp.enabled || self.amqp.enabled || self.cluster.enabled || self.admin.enabled
    }

    /// Checks what types alone cannot; errors name the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.any_enabled() {
            if self.cert_file.is_none() {
                return Err(("tls.certFile", "is required when a listener has TLS enabled".into()));
            }
            if self.key_file.is_none() {
                return Err(("tls.keyFile", "is required when a listener has TLS enabled".into()));
            }
        }
        if self.cluster.enabled && self.ca_file.is_none() {
            return Err((
                "tls.caFile",
                "is required with tls.cluster.enabled: members prove themselves to each other with certificates from this CA (mutual TLS)".into(),
            ));
        }
        for (name, listener) in [("stomp", &self.stomp), ("amqp", &self.amqp)] {
            if listener.enabled && listener.client_auth != ClientAuth::None && self.ca_file.is_none() {
                return Err(("tls.caFile", format!("is required with tls.{name}.clientAuth optional or required: client certificates are checked against it")));
            }
            if !listener.enabled && listener.client_auth != ClientAuth::None {
                return Err((
                    if name == "stomp" { "tls.stomp.clientAuth" } else { "tls.amqp.clientAuth" },
                    format!("needs tls.{name}.enabled: true (client certificates travel in the TLS handshake)"),
                ));
            }
        }
        if self.reload_interval.get().is_zero() {
            return Err(("tls.reloadInterval", "must be longer than 0s".into()));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ClientTlsConfig {
    /// The listener speaks TLS only (`stomp+ssl://`, `amqps://`); no plaintext.
    pub enabled: bool,
    /// Client certificates: `none` (not asked for), `optional` (checked if sent; a valid
    /// one logs in as the user `auth.certificateUsers` maps it to) or `required`.
    pub client_auth: ClientAuth,
}

impl ClientTlsConfig {
    pub fn is_default(&self) -> bool {
        *self == ClientTlsConfig::default()
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ListenerTlsConfig {
    /// The listener speaks TLS only. On the cluster port this is mutual TLS: both ends
    /// present a certificate from `tls.caFile`, and the challenge–response still runs.
    pub enabled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ClientAuth {
    #[default]
    None,
    Optional,
    Required,
}

/// One entry of `auth.permissions`: who may do what on the destinations `match` names.
/// Patterns: `/queue/orders.>`, `/topic/prices.*`, `>` (everything); `.` separates words,
/// `*` is one word, `>` the rest (one or more words). The most specific matching entry
/// decides; with any entry configured, a destination no entry matches is denied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Permission {
    #[serde(rename = "match")]
    pub pattern: String,
    /// Roles that may SEND to these destinations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub send: Vec<String>,
    /// Roles that may SUBSCRIBE (consume) and ACK/NACK.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consume: Vec<String>,
    /// Roles that may SUBSCRIBE with `browser:true` (see without consuming).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub browse: Vec<String>,
    /// Roles that may create a destination the broker does not hold yet by a SEND or SUBSCRIBE.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub create: Vec<String>,
}

/// Role membership (Artemis' roles file): role name → user names.
pub type Roles = BTreeMap<String, Vec<String>>;
