//! `spec.tls`: the certificates a BrokerGroup's brokers are given. With mode
//! OperatorManaged the operator keeps a CA per BrokerGroup (Secret `<name>-ca`, made once,
//! never replaced) and issues the member certificate (Secret `<name>-tls`) from it, naming
//! every member and client Service; it issues a new one when the old one expires within
//! `renewBefore`, no longer names every member (a scale-up), or is not from the CA. With
//! mode Secret the certificate comes from the named Secret (cert-manager's shape).
//!
//! [`prepare`] runs in the reconcile between dereference and validation: the only step
//! that makes keys (random) and reads the clock. What it returns is data; rendering turns
//! it into the Secrets, the mount and the pod-template checksum that rolls the members
//! onto a new certificate.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use duomq_broker::tls::pki::{Authority, Issued, Leaf};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::api::{self, TlsMode, TlsSpec};
use crate::names;
use crate::status::reason::{Reason, Transition};
use crate::validate::GroupModel;

/// The certificate material of a BrokerGroup with `spec.tls`, as found or made.
#[derive(Debug, Clone, PartialEq)]
pub struct Certificates {
    /// The Secret the pods mount: `<name>-tls` or `tls.secretName`.
    pub secret_name: String,
    /// `tls.crt`, `tls.key` and `ca.crt` as text.
    pub data: BTreeMap<String, String>,
    /// OperatorManaged: the CA's certificate and key, for the `<name>-ca` Secret.
    pub authority: Option<Issued>,
    /// Issued by this reconcile: the Event to publish (CertificateIssued or
    /// CertificateRenewed).
    pub issued: Option<Transition>,
    /// When the member certificate is due for renewal, unix seconds (OperatorManaged).
    pub renew_at: Option<i64>,
}

impl Certificates {
    /// A hash of the Secret's three keys: in the pod template, so a new certificate rolls
    /// the members onto it.
    pub fn checksum(&self) -> String {
        let mut digest = Sha256::new();
        for key in [names::TLS_CERT_KEY, names::TLS_KEY_KEY, names::TLS_CA_KEY] {
            let value = self.data.get(key).map(String::as_str).unwrap_or_default();
            digest.update((value.len() as u64).to_be_bytes());
            digest.update(value.as_bytes());
        }
        let hash = digest.finalize();
        hash.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }

    /// The CA certificates (PEM) the operator trusts when it dials the brokers' admin API.
    pub fn ca_pem(&self) -> Option<&str> {
        self.data.get(names::TLS_CA_KEY).map(String::as_str)
    }

    /// When the member certificate expires, unix seconds.
    pub fn not_after(&self) -> Option<i64> {
        self.data
            .get(names::TLS_CERT_KEY)
            .and_then(|pem| first_cert(pem))
            .and_then(|c| duomq_broker::tls::not_after(&c))
    }

    /// When the CA (the first certificate of `ca.crt`) expires, unix seconds.
    pub fn ca_not_after(&self) -> Option<i64> {
        self.ca_pem()
            .and_then(first_cert)
            .and_then(|c| duomq_broker::tls::not_after(&c))
    }
}

/// Why the certificates cannot be had: the reconcile reports it and applies nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateProblem {
    pub reason: Reason,
    pub message: String,
}

/// Every DNS name the member certificate must carry: each member's (`<pod>.<headless>.<ns>.svc`
/// and `.svc.cluster.local`) and each client Service's (`<svc>`, `<svc>.<ns>`, `.svc`,
/// `.svc.cluster.local`), sorted.
pub fn dns_names(bg: &str, namespace: &str, groups: &[GroupModel]) -> Vec<String> {
    let mut out = BTreeSet::new();
    for g in groups {
        for m in &g.members {
            out.insert(m.host.clone());
            out.insert(format!("{}.cluster.local", m.host));
        }
    }
    let services = std::iter::once(bg.to_string()).chain(groups.iter().map(|g| g.name.clone()));
    for svc in services {
        out.insert(svc.clone());
        out.insert(format!("{svc}.{namespace}"));
        out.insert(format!("{svc}.{namespace}.svc"));
        out.insert(format!("{svc}.{namespace}.svc.cluster.local"));
    }
    out.into_iter().collect()
}

/// A Go-style duration of `spec.tls` (`2160h`, `119m59s`), or `default`.
fn duration(text: Option<&str>, default: &str) -> Duration {
    let text = text.unwrap_or(default);
    humantime::parse_duration(text)
        .or_else(|_| humantime::parse_duration(default))
        .unwrap_or(Duration::from_secs(3600))
}

fn first_cert(pem: &str) -> Option<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()
}

/// The DNS names of a PEM certificate.
fn san_dns_names(pem: &str) -> Option<BTreeSet<String>> {
    let der = first_cert(pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let sans = cert.subject_alternative_name().ok()??;
    Some(
        sans.value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
    )
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What the reconcile read: the text data of `<name>-ca` and of the certificate Secret
/// (`<name>-tls`, or `tls.secretName`), `None` when they do not exist.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Found {
    pub ca_secret: Option<BTreeMap<String, String>>,
    pub tls_secret: Option<BTreeMap<String, String>>,
}

/// The certificates of BrokerGroup `bg` (its `groups`, draining ones included) as of `now`:
/// reused when good, made when missing or due. `Ok(None)` without `spec.tls`.
pub fn prepare(
    bg: &str,
    namespace: &str,
    tls: Option<&TlsSpec>,
    groups: &[GroupModel],
    found: &Found,
    now: SystemTime,
) -> Result<Option<Certificates>, CertificateProblem> {
    let Some(tls) = tls else { return Ok(None) };
    match tls.mode {
        TlsMode::Secret => {
            let name = tls.secret_name.clone().unwrap_or_default();
            secret_mode(&name, found.tls_secret.as_ref()).map(Some)
        }
        TlsMode::OperatorManaged => operator_managed(bg, namespace, tls, groups, found, now).map(Some),
    }
}

fn secret_mode(
    name: &str,
    data: Option<&BTreeMap<String, String>>,
) -> Result<Certificates, CertificateProblem> {
    let problem = |message: String| CertificateProblem {
        reason: Reason::TlsSecretInvalid,
        message,
    };
    let data = data.ok_or_else(|| {
        problem(format!("tls.secretName {name}: the Secret does not exist; create it with tls.crt, tls.key and ca.crt (a cert-manager Certificate with secretName {name} writes them); nothing is rendered until it exists"))
    })?;
    for key in [names::TLS_CERT_KEY, names::TLS_KEY_KEY, names::TLS_CA_KEY] {
        let value = data.get(key).map(|v| v.trim()).unwrap_or_default();
        if value.is_empty() {
            return Err(problem(format!("tls.secretName {name}: the Secret has no {key}; it needs tls.crt, tls.key and ca.crt (with cert-manager, an Issuer that sets ca.crt: a CA or self-signed issuer)")));
        }
    }
    if first_cert(&data[names::TLS_CERT_KEY]).is_none() || first_cert(&data[names::TLS_CA_KEY]).is_none() {
        return Err(problem(format!("tls.secretName {name}: tls.crt or ca.crt holds no PEM certificate")));
    }
    Ok(Certificates {
        secret_name: name.to_string(),
        data: data
            .iter()
            .filter(|(k, _)| [names::TLS_CERT_KEY, names::TLS_KEY_KEY, names::TLS_CA_KEY].contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        authority: None,
        issued: None,
        renew_at: None,
    })
}

fn operator_managed(
    bg: &str,
    namespace: &str,
    tls: &TlsSpec,
    groups: &[GroupModel],
    found: &Found,
    now: SystemTime,
) -> Result<Certificates, CertificateProblem> {
    let ca_name = names::ca_secret(bg);
    let authority = match &found.ca_secret {
        // A CA that exists is never replaced: the members and every client trust it.
        Some(data) => {
            let cert = data.get(names::TLS_CERT_KEY).cloned().unwrap_or_default();
            let key = data.get(names::TLS_KEY_KEY).cloned().unwrap_or_default();
            Authority::from_pem(&cert, &key).map_err(|e| CertificateProblem {
                reason: Reason::TlsSecretInvalid,
                message: format!("CA Secret {ca_name} does not hold a CA certificate and key in tls.crt and tls.key ({e}); the operator never replaces a CA: restore it, or delete the Secret for a new CA (every client must then trust the new one)"),
            })?
        }
        None => Authority::generate(
            &format!("duomq {namespace}/{bg} CA"),
            duration(tls.ca_duration.as_deref(), api::DEFAULT_CA_DURATION),
        )
        .map_err(|e| CertificateProblem {
            reason: Reason::TlsSecretInvalid,
            message: format!("failed to make the CA: {e}"),
        })?,
    };
    let ca_pem = authority.pem().cert_pem.clone();
    let wanted = dns_names(bg, namespace, groups);
    let lifetime = duration(tls.certificate_duration.as_deref(), api::DEFAULT_CERTIFICATE_DURATION);
    let renew_before = duration(tls.renew_before.as_deref(), api::DEFAULT_RENEW_BEFORE);
    let renew_before_secs = i64::try_from(renew_before.as_secs()).unwrap_or(i64::MAX);
    let now_unix = unix(now);

    let existing = found.tls_secret.as_ref().filter(|d| {
        [names::TLS_CERT_KEY, names::TLS_KEY_KEY, names::TLS_CA_KEY]
            .iter()
            .all(|k| d.get(*k).is_some_and(|v| !v.trim().is_empty()))
    });
    // Why the certificate in the Secret cannot stay, or None when it can.
    let why_new = match existing {
        None => Some(None),
        Some(data) => {
            let cert = &data[names::TLS_CERT_KEY];
            let not_after = first_cert(cert).and_then(|c| duomq_broker::tls::not_after(&c));
            let names_held = san_dns_names(cert).unwrap_or_default();
            let missing: Vec<&String> = wanted.iter().filter(|n| !names_held.contains(*n)).collect();
            if data[names::TLS_CA_KEY].trim() != ca_pem.trim() {
                Some(Some(format!("its ca.crt is not the CA in {ca_name}")))
            } else if let Some(first) = missing.first() {
                Some(Some(format!("it does not name {} ({first} and {} more): members were added", missing.len(), missing.len() - 1)))
            } else {
                match not_after {
                    None => Some(Some("its tls.crt holds no readable certificate".to_string())),
                    Some(end) if end - now_unix <= renew_before_secs => Some(Some(format!(
                        "it expires at {} ({}), within renewBefore {}",
                        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(u64::try_from(end).unwrap_or(0))),
                        if end <= now_unix { "expired".to_string() } else { format!("in {}s", end - now_unix) },
                        tls.renew_before.as_deref().unwrap_or(api::DEFAULT_RENEW_BEFORE)
                    ))),
                    Some(_) => None,
                }
            }
        }
    };
    let secret_name = names::tls_secret(bg);
    let (data, issued) = match why_new {
        None => (existing.cloned().unwrap_or_default(), None),
        Some(renewal) => {
            let mut leaf = Leaf::new(bg, lifetime);
            leaf.not_before = now - Duration::from_secs(300);
            leaf.not_after = now + lifetime;
            for name in &wanted {
                leaf = leaf.dns(name.clone());
            }
            let member = authority.issue(&leaf).map_err(|e| CertificateProblem {
                reason: Reason::TlsSecretInvalid,
                message: format!("failed to issue the member certificate: {e}"),
            })?;
            let until = humantime::format_rfc3339_seconds(now + lifetime);
            let transition = match renewal {
                None => Transition::new(
                    Reason::CertificateIssued,
                    format!("issued the member certificate in {secret_name} from the CA in {ca_name}, valid until {until}, for {} names", wanted.len()),
                ),
                Some(why) => Transition::new(
                    Reason::CertificateRenewed,
                    format!("renewed the member certificate in {secret_name} because {why}; the new one is valid until {until}; the members restart onto it one by one"),
                ),
            };
            let data = BTreeMap::from([
                (names::TLS_CERT_KEY.to_string(), member.cert_pem),
                (names::TLS_KEY_KEY.to_string(), member.key_pem),
                (names::TLS_CA_KEY.to_string(), ca_pem.clone()),
            ]);
            (data, Some(transition))
        }
    };
    let mut out = Certificates {
        secret_name,
        data,
        authority: Some(authority.pem().clone()),
        issued,
        renew_at: None,
    };
    out.renew_at = out.not_after().map(|end| end - renew_before_secs);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::group_models;

    const HOUR: Duration = Duration::from_secs(3600);

    fn spec() -> TlsSpec {
        TlsSpec {
            mode: TlsMode::OperatorManaged,
            secret_name: None,
            certificate_duration: Some("2h".into()),
            renew_before: Some("1h".into()),
            ca_duration: None,
            client_auth: api::TlsClientAuth::None,
        }
    }

    fn groups(count: i32) -> Vec<GroupModel> {
        let bg: crate::api::BrokerGroupSpec =
            serde_json::from_value(serde_json::json!({"groups": count})).expect("a spec");
        group_models("pair", "ns", &bg)
    }

    fn found(c: &Certificates) -> Found {
        let ca = c.authority.clone().expect("a CA");
        Found {
            ca_secret: Some(BTreeMap::from([
                (names::TLS_CERT_KEY.to_string(), ca.cert_pem),
                (names::TLS_KEY_KEY.to_string(), ca.key_pem),
            ])),
            tls_secret: Some(c.data.clone()),
        }
    }

    #[test]
    fn given_nothing_should_make_a_ca_and_a_certificate_naming_members_and_services() {
        let now = SystemTime::now();
        let made = prepare("pair", "ns", Some(&spec()), &groups(1), &Found::default(), now)
            .expect("made")
            .expect("tls");
        assert_eq!(made.issued.as_ref().map(|t| t.reason), Some(Reason::CertificateIssued));
        let names = san_dns_names(&made.data[names::TLS_CERT_KEY]).expect("names");
        for n in [
            "pair-g0-0.pair-g0-members.ns.svc",
            "pair-g0-1.pair-g0-members.ns.svc.cluster.local",
            "pair",
            "pair.ns.svc",
            "pair-g0.ns.svc.cluster.local",
        ] {
            assert!(names.contains(n), "{n} in {names:?}");
        }
        let end = made.not_after().expect("not after");
        assert!((end - unix(now + 2 * HOUR)).abs() <= 1, "valid for certificateDuration");
        assert_eq!(made.renew_at, Some(end - 3600));
    }

    #[test]
    fn given_a_good_certificate_should_reuse_it_and_its_ca() {
        let now = SystemTime::now();
        let first = prepare("pair", "ns", Some(&spec()), &groups(1), &Found::default(), now)
            .expect("made")
            .expect("tls");
        let again = prepare("pair", "ns", Some(&spec()), &groups(1), &found(&first), now + HOUR / 2)
            .expect("reused")
            .expect("tls");
        assert_eq!(again.issued, None);
        assert_eq!(again.data, first.data);
        assert_eq!(again.checksum(), first.checksum());
    }

    #[test]
    fn given_a_certificate_within_renew_before_or_missing_names_should_issue_from_the_same_ca() {
        let now = SystemTime::now();
        let first = prepare("pair", "ns", Some(&spec()), &groups(1), &Found::default(), now)
            .expect("made")
            .expect("tls");
        let later = prepare("pair", "ns", Some(&spec()), &groups(1), &found(&first), now + HOUR + HOUR / 60)
            .expect("renewed")
            .expect("tls");
        let why = later.issued.clone().expect("renewed");
        assert_eq!(why.reason, Reason::CertificateRenewed);
        assert!(why.note.contains("within renewBefore 1h"), "{}", why.note);
        assert_ne!(later.checksum(), first.checksum());
        assert_eq!(later.data[names::TLS_CA_KEY], first.data[names::TLS_CA_KEY], "same CA");

        let grown = prepare("pair", "ns", Some(&spec()), &groups(2), &found(&first), now)
            .expect("renewed")
            .expect("tls");
        let why = grown.issued.expect("renewed for the new members");
        assert!(why.note.contains("does not name"), "{}", why.note);
    }

    #[test]
    fn given_secret_mode_should_use_the_secret_or_say_what_is_missing() {
        let tls = TlsSpec {
            mode: TlsMode::Secret,
            secret_name: Some("mine".into()),
            ..spec()
        };
        let missing = prepare("pair", "ns", Some(&tls), &groups(1), &Found::default(), SystemTime::now());
        assert!(
            missing.as_ref().is_err_and(|p| p.message.contains("mine: the Secret does not exist")),
            "{missing:?}"
        );
        let made = prepare("pair", "ns", Some(&spec()), &groups(1), &Found::default(), SystemTime::now())
            .expect("made")
            .expect("tls");
        let mut data = made.data.clone();
        data.remove(names::TLS_CA_KEY);
        let found = Found { ca_secret: None, tls_secret: Some(data) };
        let no_ca = prepare("pair", "ns", Some(&tls), &groups(1), &found, SystemTime::now());
        assert!(no_ca.as_ref().is_err_and(|p| p.message.contains("has no ca.crt")), "{no_ca:?}");
        let found = Found { ca_secret: None, tls_secret: Some(made.data.clone()) };
        let used = prepare("pair", "ns", Some(&tls), &groups(1), &found, SystemTime::now())
            .expect("used")
            .expect("tls");
        assert_eq!((used.secret_name.as_str(), used.issued, used.authority), ("mine", None, None));
    }
}
