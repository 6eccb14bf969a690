//! Which addresses a cluster DNS name stands for, from Services and Pods as the API has
//! them (pure: the server passes the informers' state in).
//!
//! - `<svc>.<ns>.svc[.cluster.local]`: the Service's endpoints (ready pods, or all selected
//!   pods when it publishes not-ready addresses). There are no virtual IPs here, so a
//!   ClusterIP Service resolves like a headless one: to its pods' IPs, which is where the
//!   host-side proxy would send a connection too.
//! - `<hostname>.<svc>.<ns>.svc[.cluster.local]`: the endpoint of Service `<svc>` whose pod
//!   has that `hostname` and `subdomain: <svc>` (StatefulSet members of a headless Service).
//! - `<a-b-c-d>.<ns>.pod[.cluster.local]`: that address.
//!
//! Other names under the cluster domain do not exist; names outside it are not ours.

use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;

use crate::cluster::service::endpoints;

/// The cluster domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// What the cluster's DNS knows about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The name exists; these are its A records (possibly none, e.g. a Service without
    /// ready pods).
    Addresses(Vec<Ipv4Addr>),
    /// A name under the cluster domain that does not exist.
    NoSuchName,
    /// Not a cluster name: refused (the pods have no other resolver).
    NotOurs,
}

fn pod_ip(pod: &Pod) -> Option<Ipv4Addr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// Resolves `name` (lower case, no final dot).
pub fn resolve(name: &str, services: &[Arc<Service>], pods: &[Arc<Pod>]) -> Resolution {
    let short = name.strip_suffix(CLUSTER_DOMAIN).and_then(|n| n.strip_suffix('.')).unwrap_or(name);
    let labels: Vec<&str> = short.split('.').collect();
    match labels.as_slice() {
        [svc, ns, "svc"] => match find_service(services, ns, svc) {
            Some(service) => Resolution::Addresses(endpoints(service, pods).into_iter().filter_map(pod_ip).collect()),
            None => Resolution::NoSuchName,
        },
        [host, svc, ns, "svc"] => {
            let Some(service) = find_service(services, ns, svc) else {
                return Resolution::NoSuchName;
            };
            let member = endpoints(service, pods).into_iter().find(|p| {
                let spec = p.spec.as_ref();
                spec.and_then(|s| s.subdomain.as_deref()) == Some(*svc)
                    && spec.and_then(|s| s.hostname.clone()).unwrap_or_else(|| p.name_any()) == *host
            });
            match member.and_then(pod_ip) {
                Some(ip) => Resolution::Addresses(vec![ip]),
                None => Resolution::NoSuchName,
            }
        }
        [dashed, _ns, "pod"] => match dashed.replace('-', ".").parse() {
            Ok(ip) => Resolution::Addresses(vec![ip]),
            Err(_) => Resolution::NoSuchName,
        },
        _ if short != name || matches!(labels.last(), Some(&("svc" | "pod"))) || name == CLUSTER_DOMAIN => Resolution::NoSuchName,
        _ => Resolution::NotOurs,
    }
}

fn find_service<'a>(services: &'a [Arc<Service>], namespace: &str, name: &str) -> Option<&'a Service> {
    services.iter().map(|s| &**s).find(|s| s.namespace().as_deref() == Some(namespace) && s.name_any() == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::fixtures::map;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use rstest::rstest;

    fn pod(name: &str, role: &str, ready: bool, ip: &str) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some(map(&[("app", "mq"), ("role", role)])),
                ..Default::default()
            },
            spec: Some(PodSpec { hostname: Some(name.into()), subdomain: Some("mq-members".into()), ..Default::default() }),
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    fn service(name: &str, selector: &[(&str, &str)], headless: bool) -> Arc<Service> {
        Arc::new(Service {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("ns".into()), ..Default::default() },
            spec: Some(ServiceSpec {
                selector: Some(map(selector)),
                cluster_ip: headless.then(|| "None".into()),
                publish_not_ready_addresses: headless.then_some(true),
                ..Default::default()
            }),
            status: None,
        })
    }

    fn world() -> (Vec<Arc<Service>>, Vec<Arc<Pod>>) {
        let services = vec![service("mq", &[("app", "mq"), ("role", "live")], false), service("mq-members", &[("app", "mq")], true)];
        let pods = vec![pod("mq-0", "live", true, "10.9.0.10"), pod("mq-1", "backup", false, "10.9.0.11")];
        (services, pods)
    }

    fn ips(list: &[&str]) -> Resolution {
        Resolution::Addresses(list.iter().map(|ip| ip.parse().unwrap()).collect())
    }

    #[rstest]
    #[case::service_follows_its_ready_endpoint("mq.ns.svc", ips(&["10.9.0.10"]))]
    #[case::full_name("mq.ns.svc.cluster.local", ips(&["10.9.0.10"]))]
    #[case::headless_publishes_not_ready("mq-members.ns.svc.cluster.local", ips(&["10.9.0.10", "10.9.0.11"]))]
    #[case::headless_member("mq-1.mq-members.ns.svc.cluster.local", ips(&["10.9.0.11"]))]
    #[case::headless_member_short("mq-0.mq-members.ns.svc", ips(&["10.9.0.10"]))]
    #[case::member_of_a_service_not_its_subdomain("mq-0.mq.ns.svc", Resolution::NoSuchName)]
    #[case::unknown_member("mq-7.mq-members.ns.svc", Resolution::NoSuchName)]
    #[case::other_namespace("mq.default.svc.cluster.local", Resolution::NoSuchName)]
    #[case::pod_name("10-9-0-11.ns.pod.cluster.local", ips(&["10.9.0.11"]))]
    #[case::bad_pod_name("x-y.ns.pod", Resolution::NoSuchName)]
    #[case::search_path_miss("example.com.ns.svc.cluster.local", Resolution::NoSuchName)]
    #[case::the_domain("cluster.local", Resolution::NoSuchName)]
    #[case::outside("example.com", Resolution::NotOurs)]
    fn given_services_and_pods_when_resolving_should_answer_like_cluster_dns(#[case] name: &str, #[case] expected: Resolution) {
        let (services, pods) = world();
        assert_eq!(resolve(name, &services, &pods), expected);
    }

    #[test]
    fn given_no_ready_endpoint_when_resolving_a_service_should_exist_without_addresses() {
        let (services, mut pods) = world();
        pods.remove(0);
        assert_eq!(resolve("mq.ns.svc", &services, &pods), Resolution::Addresses(vec![]));
    }
}
