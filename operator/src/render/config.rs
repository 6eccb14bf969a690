//! Each member's `broker.yaml`, built from the broker crate's own config types, so the
//! operator cannot write a file the broker would not accept.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use duomq_broker::config::{
    ArbiterKind, BackupAck, BrokerConfig, ClientAuth, TlsConfig, DatabaseConfig, GroupingConfig, GroupingHandler,
    HaPolicy, HumanDuration, Member, NetworkConnector, PreferredRole, ReplicationMode, SslMode,
    StoreKind,
};

use crate::api::{self, HaMode};
use crate::names;
use crate::validate::{
    masterslave_uri, ConnectorModel, GroupModel, MemberModel, ValidatedBrokerGroup,
};

fn any_addr(port: i32) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, u16::try_from(port).unwrap_or(0)))
}

fn group_uri(v: &ValidatedBrokerGroup, g: &GroupModel) -> String {
    masterslave_uri(
        g.members.iter().map(|m| m.host.clone()),
        v.spec.ports.cluster,
    )
}

/// The network connectors of every member of `group` (only its live runs them): one per other
/// group of this BrokerGroup (never its own: a TTL-1 full mesh, every option at the
/// broker's default but `spec.network`'s exclusions), then the spec's connectors in spec
/// order, a connector to a BrokerGroup expanded to one per group of it.
pub fn group_connectors(v: &ValidatedBrokerGroup, group: &GroupModel) -> Vec<NetworkConnector> {
    let excluded = v
        .spec
        .network
        .as_ref()
        .map(|n| n.excluded_destinations.clone())
        .unwrap_or_default();
    v.groups
        .iter()
        .filter(|g| g.name != group.name)
        .map(|g| NetworkConnector {
            excluded_destinations: excluded.clone(),
            ..NetworkConnector::new(g.name.clone(), group_uri(v, g))
        })
        .chain(v.external_connectors.iter().map(external_connector))
        .collect()
}

fn external_connector(x: &ConnectorModel) -> NetworkConnector {
    let defaults = NetworkConnector::new(x.name.clone(), x.uri.clone());
    let s = &x.spec;
    NetworkConnector {
        duplex: s.duplex,
        network_ttl: u8::try_from(s.network_ttl).unwrap_or(defaults.network_ttl),
        dynamic_only: s.dynamic_only,
        decrease_network_consumer_priority: s.decrease_network_consumer_priority,
        excluded_destinations: s.excluded_destinations.clone(),
        statically_included_destinations: s.statically_included_destinations.clone(),
        prefetch_size: usize::try_from(s.prefetch_size).unwrap_or(defaults.prefetch_size),
        password_file: x.password.as_ref().map(|p| {
            PathBuf::from(names::NETWORK_SECRET_DIR)
                .join(names::connector_password_path(&p.spec_name))
        }),
        ..defaults
    }
}

/// The config of `member` of `group`.
pub fn build_broker_config(
    v: &ValidatedBrokerGroup,
    group: &GroupModel,
    member: &MemberModel,
) -> BrokerConfig {
    let spec = &v.spec;
    let mut c = BrokerConfig::default();
    c.node.id = member.pod.clone();
    c.stomp.listen = any_addr(spec.ports.stomp);
    c.admin.listen = any_addr(spec.ports.admin);
    if let Some(port) = v.amqp_port() {
        c.amqp.enabled = true;
        c.amqp.listen = any_addr(port);
    }
    c.storage.data_dir = PathBuf::from(names::DATA_DIR);
    if spec.users_secret.is_some() {
        c.auth.users_file = Some(PathBuf::from(names::USERS_SECRET_DIR).join(names::USERS_KEY));
    }

    let ha = &mut c.ha;
    ha.policy = match spec.ha.mode {
        HaMode::Replication => HaPolicy::Replication,
        // The database is a shared store too: whoever holds its lease is live.
        HaMode::SharedStore | HaMode::SharedDatabase => HaPolicy::SharedStore,
    };
    ha.group_name = group.name.clone();
    ha.role = if member.ordinal == 0 {
        PreferredRole::Primary
    } else {
        PreferredRole::Backup
    };
    // In a host-pair layout the live's place is a node, not an ordinal: whichever member the
    // scheduler put on the group's primary node is the primary.
    ha.primary_node = group.primary_node.clone();
    // Under the Lease arbiter the operator fails back itself (see `crate::plan`), so a
    // broker never takes the role back in the middle of a rolling upgrade.
    ha.allow_failback = spec.ha.allow_failback && spec.ha.arbiter != api::ArbiterSpec::Kubernetes;
    // Replication settings mean nothing to a shared store (the broker refuses them there).
    if spec.ha.mode == HaMode::Replication {
        ha.replication = match spec.ha.replication {
            api::ReplicationMode::Sync => ReplicationMode::Sync,
            api::ReplicationMode::Async => ReplicationMode::Async,
        };
        ha.backup_ack = match spec.ha.backup_ack {
            api::BackupAck::Written => BackupAck::Written,
            api::BackupAck::Synced => BackupAck::Synced,
        };
    }
    ha.cluster.listen = any_addr(spec.ports.cluster);
    ha.cluster.user = v.credentials.user.clone();
    ha.cluster.password_file =
        Some(PathBuf::from(names::CLUSTER_SECRET_DIR).join(names::CLUSTER_PASSWORD_KEY));
    ha.members = group
        .members
        .iter()
        .filter(|m| m.pod != member.pod)
        .map(|m| Member {
            name: m.pod.clone(),
            cluster: format!("{}:{}", m.host, spec.ports.cluster),
            stomp: format!("{}:{}", m.host, spec.ports.stomp),
            // Where a backup redirects AMQP clients while this member is live.
            amqp: v
                .amqp_port()
                .map(|port| format!("{}:{port}", m.host))
                .unwrap_or_default(),
        })
        .collect();
    // A shared store's arbiter is the store's own lock (or the database's lease).
    match (spec.ha.mode, spec.ha.arbiter) {
        (HaMode::SharedStore | HaMode::SharedDatabase, _) => {}
        // The group's Lease: the live holds it; a backup takes it only when it is free.
        (HaMode::Replication, api::ArbiterSpec::Kubernetes) => {
            ha.arbiter.kind = ArbiterKind::Kubernetes;
            ha.arbiter.lease.name = Some(names::lease(&group.name));
        }
        // Artemis-style quorum: the members of the other groups vote on whether a live is gone.
        (HaMode::Replication, api::ArbiterSpec::Quorum) => {
            ha.arbiter.kind = ArbiterKind::Quorum;
            ha.arbiter.voters = v
                .groups
                .iter()
                .filter(|g| g.name != group.name)
                .flat_map(|g| {
                    g.members
                        .iter()
                        .map(|m| format!("{}:{}", m.host, spec.ports.cluster))
                })
                .collect();
        }
    }

    if let Some(db) = spec.ha.database.as_ref().filter(|_| v.is_shared_database()) {
        c.storage.store = StoreKind::Database;
        database_config(&mut c.storage.database, db);
    }

    c.network.connectors = group_connectors(v, group);

    if let Some(tls) = &spec.tls {
        tls_config(&mut c.tls, tls, v.amqp_port().is_some());
    }
    if let Some(a) = &v.authorization {
        c.auth.roles = a.roles.clone();
        c.auth.anonymous_roles = a.anonymous_roles.clone();
        // Roles for clients without a login mean letting them in.
        c.auth.allow_anonymous = !a.anonymous_roles.is_empty();
        c.auth.permissions = a.permissions.clone();
        c.auth.certificate_users = a.certificate_users.clone();
        if let Some(admin) = &a.admin_roles {
            c.auth.admin_roles = admin.clone();
        }
    }

    c.address_settings = v.address_settings.clone();

    if let Some(grouping) = &spec.grouping {
        let local = usize::try_from(grouping.local_group)
            .ok()
            .and_then(|i| v.groups.get(i));
        if let Some(local) = local {
            c.grouping = GroupingConfig {
                handler: if local.name == group.name {
                    GroupingHandler::Local
                } else {
                    GroupingHandler::Remote
                },
                address: (local.name != group.name).then(|| group_uri(v, local)),
                timeout: parse_duration(&grouping.timeout).unwrap_or(c.grouping.timeout),
                group_timeout: parse_duration(&grouping.group_timeout)
                    .unwrap_or(c.grouping.group_timeout),
                reaper_period: parse_duration(&grouping.reaper_period)
                    .unwrap_or(c.grouping.reaper_period),
                max_groups: usize::try_from(grouping.max_groups)
                    .ok()
                    .filter(|n| *n >= 1)
                    .unwrap_or(c.grouping.max_groups),
            };
        }
    }
    c
}

/// `tls:` from `spec.tls`: every listener on TLS with the mounted Secret's files
/// (`crate::render::pod`), which the broker reads again as the kubelet updates them. AMQP
/// (`amqp`: the listener is on) gets STOMP's client certificates, so it is never plaintext
/// or laxer beside the TLS STOMP port.
fn tls_config(c: &mut TlsConfig, tls: &api::TlsSpec, amqp: bool) {
    let dir = PathBuf::from(names::TLS_DIR);
    c.cert_file = Some(dir.join(names::TLS_CERT_KEY));
    c.key_file = Some(dir.join(names::TLS_KEY_KEY));
    c.ca_file = Some(dir.join(names::TLS_CA_KEY));
    let client_auth = match tls.client_auth {
        api::TlsClientAuth::None => ClientAuth::None,
        api::TlsClientAuth::Optional => ClientAuth::Optional,
        api::TlsClientAuth::Required => ClientAuth::Required,
    };
    c.stomp.enabled = true;
    c.stomp.client_auth = client_auth;
    if amqp {
        c.amqp.enabled = true;
        c.amqp.client_auth = client_auth;
    }
    c.cluster.enabled = true;
    c.admin.enabled = true;
}

/// `storage.database` from `spec.ha.database`: the URL and CA certificates from the
/// mounted Secrets (`crate::render::pod`), every other field at the broker's default unless
/// the spec sets it. Every group has the same database section: the tables are keyed by
/// `ha.groupName`.
fn database_config(c: &mut DatabaseConfig, db: &api::DatabaseSpec) {
    c.url_file = db
        .secret_ref
        .as_ref()
        .map(|r| PathBuf::from(names::DATABASE_SECRET_DIR).join(&r.key));
    c.ssl_mode = db.ssl_mode.map(|m| match m {
        api::DatabaseSslMode::Disable => SslMode::Disable,
        api::DatabaseSslMode::Prefer => SslMode::Prefer,
        api::DatabaseSslMode::Require => SslMode::Require,
        api::DatabaseSslMode::VerifyCa => SslMode::VerifyCa,
        api::DatabaseSslMode::VerifyFull => SslMode::VerifyFull,
    });
    c.ssl_root_cert = db
        .ca_secret_ref
        .as_ref()
        .map(|r| PathBuf::from(names::DATABASE_CA_DIR).join(&r.key));
    if let Some(prefix) = &db.table_prefix {
        c.table_prefix = prefix.clone();
    }
    if let Some(lease) = &db.lease {
        let l = &mut c.lease;
        l.duration = parse_duration(&lease.duration).unwrap_or(l.duration);
        l.renew_interval = parse_duration(&lease.renew_interval).unwrap_or(l.renew_interval);
        l.poll_interval = parse_duration(&lease.poll_interval).unwrap_or(l.poll_interval);
    }
}

/// A CRD duration (`5s`), read the way the broker reads its own config.
fn parse_duration(text: &str) -> Option<HumanDuration> {
    serde_yaml::from_value(serde_yaml::Value::String(text.to_string())).ok()
}

/// The YAML text of [`build_broker_config`], with a header saying where it comes from.
pub fn broker_yaml(config: &BrokerConfig) -> String {
    let body = serde_yaml::to_string(config).unwrap_or_default();
    format!("# Rendered by duomq-operator from the BrokerGroup; edits are overwritten.\n{body}")
}
