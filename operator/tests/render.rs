//! Rendering, from the user's side: every example in `manifests/examples/` renders to the
//! objects in `tests/snapshots/` (run with `UPDATE_SNAPSHOTS=1` to accept a change), twice
//! the same, and every member's broker.yaml is one the broker itself accepts.

use std::path::{Path, PathBuf};

use duomq_broker::config::BrokerConfig;
use duomq_operator::api::BrokerGroup;
use duomq_operator::render::{parse_documents, render, render_documents};
use duomq_operator::validate::{validate, Dependencies};
use k8s_openapi::api::apps::v1::StatefulSet;

const PASSWORD: &str = "snapshot-password";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("manifests/examples"))
        .expect("manifests/examples exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "expected the four examples, found {files:?}"
    );
    files
}

/// The example's BrokerGroups as the API server would hand them over: with a uid.
fn load(path: &Path) -> Vec<BrokerGroup> {
    let text = std::fs::read_to_string(path).expect("example readable");
    let mut groups = parse_documents(&text, "default").expect("example parses");
    for (i, g) in groups.iter_mut().enumerate() {
        g.metadata.uid = Some(format!("00000000-0000-4000-8000-{:012}", i + 1));
    }
    groups
}

#[test]
fn given_each_example_when_rendered_should_match_its_snapshot() {
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let mut stale = Vec::new();
    for path in examples() {
        let rendered = render_documents(&load(&path)).expect("example renders");
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("file name")
            .to_string();
        let snapshot = repo()
            .join("operator/tests/snapshots")
            .join(format!("{stem}.yaml"));
        if update {
            std::fs::write(&snapshot, &rendered).expect("snapshot written");
            continue;
        }
        let expected = std::fs::read_to_string(&snapshot).unwrap_or_default();
        if expected != rendered {
            stale.push(snapshot.display().to_string());
        }
    }
    assert!(stale.is_empty(), "rendered objects differ from snapshots {stale:?}; review with UPDATE_SNAPSHOTS=1 cargo test -p duomq-operator --test render, then git diff");
}

#[test]
fn given_an_unchanged_spec_when_rendered_twice_should_be_byte_identical() {
    for path in examples() {
        let groups = load(&path);
        assert_eq!(
            render_documents(&groups).unwrap(),
            render_documents(&groups).unwrap(),
            "{path:?}"
        );
    }
}

fn configs(groups: &[BrokerGroup]) -> Vec<(String, BrokerConfig)> {
    let targets: std::collections::BTreeMap<_, _> = groups
        .iter()
        .map(|g| (g.metadata.name.clone().unwrap(), g.spec.clone()))
        .collect();
    let mut out = Vec::new();
    for bg in groups {
        let deps = Dependencies {
            new_password: PASSWORD.into(),
            connector_targets: targets.clone(),
            ..Dependencies::default()
        };
        let v = validate(bg, &deps).expect("valid");
        for cm in render(&v).config_maps {
            for (key, text) in cm.data.unwrap_or_default() {
                let config: BrokerConfig = serde_yaml::from_str(&text)
                    .unwrap_or_else(|e| panic!("{key}: the broker rejects the rendered file: {e}"));
                config
                    .validate()
                    .unwrap_or_else(|e| panic!("{key}: the broker rejects the rendered file: {e}"));
                out.push((key, config));
            }
        }
    }
    out
}

#[test]
fn given_each_example_when_rendered_should_give_configs_the_broker_accepts() {
    for path in examples() {
        let all = configs(&load(&path));
        assert!(!all.is_empty(), "{path:?} renders no broker config");
    }
}

#[test]
fn given_two_groups_when_rendered_should_never_connect_a_broker_into_its_own_group() {
    let groups = load(&repo().join("manifests/examples/host-pairs.yaml"));
    for (key, config) in configs(&groups) {
        let own = &config.ha.group_name;
        assert!(
            !config.network.connectors.is_empty(),
            "{key}: expected a connector to the other group"
        );
        for c in &config.network.connectors {
            assert!(
                !c.uri.contains(&format!("{own}-members")),
                "{key}: connector {} points into its own group {own}",
                c.uri
            );
        }
        // the other group's members vote; the own group's do not
        assert!(
            config
                .ha
                .arbiter
                .voters
                .iter()
                .all(|v| !v.contains(&format!("{own}-members"))),
            "{key}: voters {:?}",
            config.ha.arbiter.voters
        );
    }
}

#[test]
fn given_a_network_connector_to_another_broker_group_should_list_every_member_of_each_target_group()
{
    let groups = load(&repo().join("manifests/examples/network.yaml"));
    let orders: Vec<_> = configs(&groups)
        .into_iter()
        .filter(|(k, _)| k.starts_with("orders"))
        .collect();
    assert_eq!(orders.len(), 2);
    for (key, config) in orders {
        let uris: Vec<&str> = config
            .network
            .connectors
            .iter()
            .map(|c| c.uri.as_str())
            .collect();
        assert_eq!(
            uris,
            vec!["masterslave:(tcp://billing-g0-0.billing-g0-members.default.svc:61616,tcp://billing-g0-1.billing-g0-members.default.svc:61616)"],
            "{key}"
        );
    }
}

#[test]
fn given_a_host_pair_layout_should_cross_the_groups_over_the_two_nodes() {
    let groups = load(&repo().join("manifests/examples/host-pairs.yaml"));
    let all = configs(&groups);
    let primary = |group: &str| {
        all.iter()
            .find(|(k, _)| k.starts_with(group))
            .and_then(|(_, c)| c.ha.primary_node.clone())
    };
    assert_eq!(primary("crossed-g0").as_deref(), Some("node-a"));
    assert_eq!(primary("crossed-g1").as_deref(), Some("node-b"));
    let deps = Dependencies {
        new_password: PASSWORD.into(),
        ..Dependencies::default()
    };
    let v = validate(&groups[0], &deps).unwrap();
    for sts in render(&v).statefulsets {
        let sts: StatefulSet = sts;
        let affinity = sts.spec.unwrap().template.spec.unwrap().affinity.unwrap();
        let nodes = affinity
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms[0]
            .match_expressions
            .clone()
            .unwrap()[0]
            .values
            .clone()
            .unwrap();
        assert_eq!(nodes, vec!["node-a".to_string(), "node-b".to_string()]);
        assert!(affinity
            .pod_anti_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .is_some());
    }
}

#[test]
fn given_shared_store_should_mount_one_read_write_many_claim_per_group_and_no_claim_templates() {
    let groups = load(&repo().join("manifests/examples/shared-store.yaml"));
    let deps = Dependencies {
        new_password: PASSWORD.into(),
        ..Dependencies::default()
    };
    let r = render(&validate(&groups[0], &deps).unwrap());
    assert_eq!(r.claims.len(), 1);
    assert_eq!(
        r.claims[0].spec.as_ref().unwrap().access_modes.as_deref(),
        Some(&["ReadWriteMany".to_string()][..])
    );
    let spec = r.statefulsets[0].spec.as_ref().unwrap();
    assert!(spec.volume_claim_templates.is_none());
    let configs = configs(&groups);
    assert!(configs
        .iter()
        .all(|(_, c)| c.ha.policy == duomq_broker::config::HaPolicy::SharedStore));
}

/// A BrokerGroup `edge` with one group and these network connectors (YAML flow style).
fn edge(connectors: &str) -> BrokerGroup {
    let text = format!(
        "apiVersion: duomq.io/v1alpha1\nkind: BrokerGroup\nmetadata: {{name: edge, uid: 00000000-0000-4000-8000-000000000009}}\nspec: {{groups: 2, network: {{excludedDestinations: [/queue/local.>]}}, networkConnectors: {connectors}}}\n"
    );
    parse_documents(&text, "default").expect("parses").remove(0)
}

/// The config hash on the first group's pod template: a new one rolls the members.
fn pod_config_hash(bg: &BrokerGroup) -> String {
    rendered_statefulset(bg)
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .and_then(|a| a.get("duomq.io/config-hash").cloned())
        .expect("a config hash on the pod template")
}

fn rendered_statefulset(bg: &BrokerGroup) -> StatefulSet {
    let deps = Dependencies {
        new_password: PASSWORD.into(),
        ..Dependencies::default()
    };
    render(&validate(bg, &deps).expect("valid"))
        .statefulsets
        .remove(0)
}

#[test]
fn given_every_connector_option_should_render_them_into_a_config_the_broker_accepts() {
    let bg = edge(
        "[{name: to-dc2, uri: 'static:(tcp://dc2-a:61616,tcp://dc2-b:61616)', duplex: true, networkTTL: 3, \
         decreaseNetworkConsumerPriority: false, excludedDestinations: [/queue/audit.>, '/topic/*.internal'], \
         staticallyIncludedDestinations: [/queue/orders], prefetchSize: 50, passwordSecret: {name: dc2-cluster}}, \
         {name: to-dc3, uri: 'tcp://dc3:61616', dynamicOnly: true}]",
    );
    let all = configs(std::slice::from_ref(&bg));
    let (key, config) = &all[0];
    let names: Vec<&str> = config
        .network
        .connectors
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        names,
        vec!["edge-g1", "to-dc2", "to-dc3"],
        "{key}: the mesh first, then the spec's"
    );
    let mesh = &config.network.connectors[0];
    assert_eq!(mesh.excluded_destinations, vec!["/queue/local.>"]);
    assert_eq!(
        (mesh.network_ttl, mesh.duplex, mesh.password_file.is_none()),
        (1, false, true),
        "{key}: the mesh is TTL 1 with this BrokerGroup's own password"
    );
    let dc2 = &config.network.connectors[1];
    assert!(dc2.duplex && dc2.network_ttl == 3 && !dc2.decrease_network_consumer_priority);
    assert_eq!(
        dc2.excluded_destinations,
        vec!["/queue/audit.>", "/topic/*.internal"]
    );
    assert_eq!(dc2.statically_included_destinations, vec!["/queue/orders"]);
    assert_eq!(dc2.prefetch_size, 50);
    assert_eq!(
        dc2.password_file.as_deref(),
        Some(Path::new("/etc/duomq/network/to-dc2/password"))
    );
    let dc3 = &config.network.connectors[2];
    assert!(dc3.dynamic_only && dc3.password_file.is_none() && dc3.conduit_subscriptions);

    let set = rendered_statefulset(&bg);
    let pod = set.spec.unwrap().template.spec.unwrap();
    let volume = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == "network-credentials")
        .expect("a volume with the connector passwords");
    let sources = volume.projected.unwrap().sources.unwrap_or_default();
    let secret = sources[0].secret.clone().unwrap();
    assert_eq!(secret.name, "dc2-cluster");
    let item = &secret.items.unwrap()[0];
    assert_eq!(
        (item.key.as_str(), item.path.as_str()),
        ("password", "to-dc2/password")
    );
    assert!(pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name == "network-credentials" && m.mount_path == "/etc/duomq/network"));
}

#[test]
fn given_a_connector_option_changed_should_change_the_pod_template_so_the_members_roll() {
    let hash = pod_config_hash;
    let before = edge("[{name: to-dc2, uri: 'tcp://dc2:61616'}]");
    let same = edge("[{name: to-dc2, uri: 'tcp://dc2:61616'}]");
    let changed =
        edge("[{name: to-dc2, uri: 'tcp://dc2:61616', excludedDestinations: [/queue/x]}]");
    assert_eq!(
        hash(&before),
        hash(&same),
        "an unchanged spec keeps its revision"
    );
    assert_ne!(
        hash(&before),
        hash(&changed),
        "a changed broker.yaml is a new revision"
    );
}

#[test]
fn given_shared_database_should_render_the_database_store_per_group_on_empty_dirs_with_the_secrets_read_only(
) {
    let groups = load(&repo().join("manifests/examples/shared-database.yaml"));
    let deps = Dependencies {
        new_password: PASSWORD.into(),
        ..Dependencies::default()
    };
    let r = render(&validate(&groups[0], &deps).unwrap());
    assert!(r.claims.is_empty(), "no shared volume");
    assert!(r.leases.is_empty(), "the database lease is the arbiter");
    for sts in &r.statefulsets {
        let spec = sts.spec.as_ref().unwrap();
        assert!(spec.volume_claim_templates.is_none(), "no journal volumes");
        let pod = spec.template.spec.as_ref().unwrap();
        let volumes = pod.volumes.clone().unwrap_or_default();
        let volume = |name: &str| {
            volumes
                .iter()
                .find(|v| v.name == name)
                .unwrap_or_else(|| panic!("no volume {name} in {volumes:?}"))
        };
        assert!(volume("data").empty_dir.is_some());
        let url = volume("database").secret.clone().unwrap();
        assert_eq!(url.secret_name.as_deref(), Some("orders-db-app"));
        assert_eq!(url.items.unwrap()[0].key, "uri");
        assert_eq!(url.optional, None, "a missing Secret keeps the pod waiting");
        let ca = volume("database-ca").secret.clone().unwrap();
        assert_eq!(ca.secret_name.as_deref(), Some("orders-db-ca"));
        let mounts = pod.containers[0].volume_mounts.clone().unwrap_or_default();
        for (name, path) in [
            ("database", "/etc/duomq/database"),
            ("database-ca", "/etc/duomq/database-ca"),
        ] {
            assert!(
                mounts
                    .iter()
                    .any(|m| m.name == name && m.mount_path == path && m.read_only == Some(true)),
                "{name} mounted read-only at {path}: {mounts:?}"
            );
        }
    }
    let mut group_names = std::collections::BTreeSet::new();
    for (key, c) in configs(&groups) {
        use duomq_broker::config::{HaPolicy, SslMode, StoreKind};
        assert_eq!(c.ha.policy, HaPolicy::SharedStore, "{key}");
        assert_eq!(c.storage.store, StoreKind::Database, "{key}");
        let db = &c.storage.database;
        assert_eq!(
            db.url_file.as_deref(),
            Some(Path::new("/etc/duomq/database/uri")),
            "{key}"
        );
        assert_eq!(db.url, None, "{key}: the URL never enters the ConfigMap");
        assert_eq!(db.ssl_mode, Some(SslMode::VerifyFull), "{key}");
        assert_eq!(
            db.ssl_root_cert.as_deref(),
            Some(Path::new("/etc/duomq/database-ca/ca.crt")),
            "{key}"
        );
        assert!(
            key.starts_with(&c.ha.group_name),
            "{key}: {}",
            c.ha.group_name
        );
        group_names.insert(c.ha.group_name.clone());
    }
    assert_eq!(
        group_names.into_iter().collect::<Vec<_>>(),
        vec!["jdbc-g0", "jdbc-g1"],
        "each group is its own master/slave group in the one database"
    );
}

#[test]
fn given_shared_database_options_should_render_lease_timing_and_table_prefix() {
    let text = "apiVersion: duomq.io/v1alpha1\nkind: BrokerGroup\nmetadata: {name: db, uid: 00000000-0000-4000-8000-000000000009}\n\
                spec: {ha: {mode: sharedDatabase, database: {secretRef: {name: pg-app, key: jdbc-uri}, sslMode: require, tablePrefix: orders_mq, \
                lease: {duration: 4s, renewInterval: 1s, pollInterval: 500ms}}}}\n";
    let bg = parse_documents(text, "default").expect("parses").remove(0);
    let all = configs(std::slice::from_ref(&bg));
    let (key, c) = &all[0];
    let db = &c.storage.database;
    assert_eq!(
        db.url_file.as_deref(),
        Some(Path::new("/etc/duomq/database/jdbc-uri")),
        "{key}"
    );
    assert_eq!(db.table_prefix, "orders_mq");
    assert_eq!(db.ssl_root_cert, None, "no CA Secret, no sslRootCert");
    assert_eq!(
        (
            db.lease.duration.get(),
            db.lease.renew_interval.get(),
            db.lease.poll_interval.get()
        ),
        (
            std::time::Duration::from_secs(4),
            std::time::Duration::from_secs(1),
            std::time::Duration::from_millis(500)
        )
    );
    let set = rendered_statefulset(&bg);
    let pod = set.spec.unwrap().template.spec.unwrap();
    assert!(
        !pod.volumes
            .unwrap_or_default()
            .iter()
            .any(|v| v.name == "database-ca"),
        "no CA volume without caSecretRef"
    );
}

/// `duomq-operator render` is offered for GitOps: its output holds no secret, and the
/// Secrets it leaves out (the generated cluster credentials) are named for the user.
#[test]
fn given_each_example_when_rendered_should_hold_no_secret_and_name_the_generated_one() {
    for path in examples() {
        let groups = load(&path);
        let rendered = render_documents(&groups).unwrap();
        assert!(!rendered.contains("kind: Secret"), "{path:?} renders a Secret");
        let generated = duomq_operator::render::generated_secrets(&groups);
        let unnamed = groups.iter().filter(|g| g.spec.ha.cluster_credentials_secret.is_none()).count();
        assert_eq!(generated.len(), unnamed, "{path:?}: {generated:?}");
        for secret in &generated {
            assert!(rendered.contains(secret.as_str()), "{path:?}: the pods mount {secret}, so the output names it");
        }
    }
}

#[test]
fn given_address_settings_should_give_every_member_the_list_resolved_by_the_broker_most_specific_first() {
    use duomq_broker::config::{DeadLetter, FullPolicy};
    use std::time::Duration;
    let all = configs(&load(&repo().join("manifests/examples/dead-letters.yaml")));
    assert_eq!(all.len(), 2, "a live and a backup");
    for (key, config) in &all {
        assert_eq!(config.address_settings, all[0].1.address_settings, "{key}: every member gets the same list");
        let table = config.address_settings_table().expect("the broker accepts it");
        let eu = table.resolve("/queue/orders.eu");
        assert_eq!((eu.max_delivery_attempts, eu.max_size_bytes, eu.full_policy), (5, 16 << 20, FullPolicy::Fail), "{key}");
        assert_eq!(eu.dead_letter, DeadLetter::Address("/queue/orders.DLQ".into()), "{key}");
        assert_eq!(eu.expiry_address.as_deref(), Some("/queue/orders.expired"), "{key}");
        assert_eq!(
            (1..=4).map(|n| eu.redelivery_delay_for(n)).collect::<Vec<_>>(),
            [500, 1000, 2000, 4000].map(Duration::from_millis),
            "{key}: 500ms doubling"
        );
        let us = table.resolve("/queue/orders.us");
        assert_eq!((us.max_size_bytes, us.full_policy), (64 << 20, FullPolicy::Block), "{key}");
        let audit = table.resolve("/queue/audit");
        assert_eq!((audit.max_delivery_attempts, audit.dead_letter_destination("/queue/audit")), (3, "/queue/DLQ.audit".to_string()), "{key}");
    }
}

#[test]
fn given_address_settings_changed_should_change_the_pod_template_so_the_members_roll() {
    let with = |settings: &str| {
        let text = format!("apiVersion: duomq.io/v1alpha1\nkind: BrokerGroup\nmetadata: {{name: dl, uid: 00000000-0000-4000-8000-000000000010}}\nspec: {{addressSettings: {settings}}}\n");
        pod_config_hash(&parse_documents(&text, "default").expect("parses").remove(0))
    };
    let before = with("[{match: /queue/orders.>, maxDeliveryAttempts: 3}]");
    assert_eq!(before, with("[{match: /queue/orders.>, maxDeliveryAttempts: 3}]"), "an unchanged spec keeps its revision");
    assert_ne!(before, with("[{match: /queue/orders.>, maxDeliveryAttempts: 4}]"), "a changed entry is a new revision");
    assert_ne!(before, with("[]"), "removing the list is a new revision");
}

/// A one-group pair `jms` with this spec added (YAML flow style, the braces' content).
fn pair_with(extra: &str) -> BrokerGroup {
    let text = format!("apiVersion: duomq.io/v1alpha1\nkind: BrokerGroup\nmetadata: {{name: jms, uid: 00000000-0000-4000-8000-000000000011}}\nspec: {{groups: 1, backupsPerGroup: 1{extra}}}\n");
    parse_documents(&text, "default").expect("parses").remove(0)
}

fn rendered(bg: &BrokerGroup) -> duomq_operator::render::Rendered {
    let deps = Dependencies { new_password: PASSWORD.into(), ..Dependencies::default() };
    render(&validate(bg, &deps).expect("valid"))
}

/// Every Service's ports as `name:port`, by Service name.
fn service_ports(r: &duomq_operator::render::Rendered) -> Vec<(String, Vec<String>)> {
    r.services
        .iter()
        .map(|s| {
            let ports = s.spec.iter().flat_map(|sp| sp.ports.iter().flatten()).map(|p| format!("{}:{}", p.name.as_deref().unwrap_or_default(), p.port)).collect();
            (s.metadata.name.clone().unwrap_or_default(), ports)
        })
        .collect()
}

#[test]
fn given_amqp_enabled_should_listen_on_its_port_carry_it_beside_stomp_and_give_backups_the_live_to_redirect_to() {
    let bg = pair_with(", amqp: {enabled: true}, ports: {amqp: 5673}");
    for (key, config) in configs(std::slice::from_ref(&bg)) {
        assert!(config.amqp.enabled, "{key}");
        assert_eq!(config.amqp.listen.to_string(), "0.0.0.0:5673", "{key}");
        assert!(!config.tls.any_enabled(), "{key}: no spec.tls, plaintext AMQP as STOMP");
        assert_eq!(config.ha.members.len(), 1, "{key}");
        for m in &config.ha.members {
            let (stomp_host, _) = m.stomp.rsplit_once(':').expect("host:port");
            assert_eq!(m.amqp, format!("{stomp_host}:5673"), "{key}: the AMQP address is the member's stable name, as its STOMP address");
            assert_eq!(m.amqp, format!("{}.jms-g0-members.default.svc:5673", m.name), "{key}");
        }
    }
    let r = rendered(&bg);
    assert_eq!(
        service_ports(&r),
        vec![
            ("jms-g0-members".to_string(), ["stomp:61613", "amqp:5673", "cluster:61616", "admin:8161"].map(String::from).to_vec()),
            ("jms-g0".to_string(), ["stomp:61613", "amqp:5673"].map(String::from).to_vec()),
            ("jms".to_string(), ["stomp:61613", "amqp:5673"].map(String::from).to_vec()),
        ]
    );
    let pod = r.statefulsets[0].spec.clone().unwrap().template.spec.unwrap();
    let ports: Vec<String> = pod.containers[0].ports.iter().flatten().map(|p| format!("{}:{}", p.name.as_deref().unwrap_or_default(), p.container_port)).collect();
    assert_eq!(ports, ["stomp:61613", "amqp:5673", "cluster:61616", "admin:8161"]);
}

#[test]
fn given_amqp_absent_or_disabled_should_render_nothing_of_it() {
    let without = render_documents(&[pair_with("")]).unwrap();
    assert_eq!(render_documents(&[pair_with(", amqp: {enabled: false}")]).unwrap(), without, "enabled: false is no AMQP");
    assert_eq!(render_documents(&[pair_with(", ports: {amqp: 61613}")]).unwrap(), without, "an unused AMQP port changes nothing, even one that is taken");
    assert!(!without.contains("amqp"), "no AMQP listener, port or member address without spec.amqp");
}

#[test]
fn given_amqp_with_tls_should_serve_amqps_only_with_the_client_certificates_of_stomp() {
    use duomq_broker::config::ClientAuth;
    for (client_auth, expected) in [("None", ClientAuth::None), ("Optional", ClientAuth::Optional), ("Required", ClientAuth::Required)] {
        let bg = pair_with(&format!(", amqp: {{enabled: true}}, tls: {{mode: OperatorManaged, clientAuth: {client_auth}}}"));
        for (key, config) in configs(std::slice::from_ref(&bg)) {
            let tls = &config.tls;
            assert!(config.amqp.enabled && tls.amqp.enabled, "{key}: AMQP is never plaintext beside the TLS STOMP port");
            assert_eq!((tls.amqp.client_auth, tls.stomp.client_auth), (expected, expected), "{key}");
        }
    }
    let without = pair_with(", tls: {mode: OperatorManaged, clientAuth: Required}");
    for (key, config) in configs(std::slice::from_ref(&without)) {
        assert!(!config.amqp.enabled && !config.tls.amqp.enabled && config.tls.stomp.enabled, "{key}: no AMQP, no amqps");
    }
}
