//! Broker URLs: `stomp://[user:pass@]host[:port]`, `stomp+ssl://...` (STOMP over TLS) and
//! ActiveMQ-style `failover:(stomp://a:61613,stomp+ssl://b:61613)?option=value&...` lists.
//! Pure parsing and printing: no name resolution and no sockets.
//!
//! `tcp://` is accepted as a synonym of `stomp://`, and `ssl://` of `stomp+ssl://`, because
//! ActiveMQ users write failover lists with them. A TLS URL carries no TLS settings: the CA
//! and client certificate are client options ([`super::TlsOptions`]).
//!
//! Durations in failover options are milliseconds when bare (`10`, as ActiveMQ writes
//! them) or carry a unit (`10ms`, `2s`).

use super::error::ClientError;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The port a STOMP URL without one points at.
pub const DEFAULT_STOMP_PORT: u16 = 61613;

/// One broker address, with optional credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StompUrl {
    /// Host name or IP address; an IPv6 address is kept without its brackets.
    pub host: String,
    pub port: u16,
    /// Login from the URL's user part (percent-decoded).
    pub login: Option<String>,
    /// Passcode from the URL's user part (percent-decoded).
    pub passcode: Option<String>,
    /// `stomp+ssl://` (or `ssl://`): STOMP over TLS.
    pub tls: bool,
}

impl StompUrl {
    /// `host:port` as a socket address string, bracketing IPv6 literals.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `stomp+ssl` or `stomp`.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "stomp+ssl"
        } else {
            "stomp"
        }
    }
}

/// Prints the URL without the passcode, so it is safe in logs.
impl fmt::Display for StompUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = self.scheme();
        match &self.login {
            Some(login) => write!(f, "{scheme}://{login}@{}", self.address()),
            None => write!(f, "{scheme}://{}", self.address()),
        }
    }
}

impl FromStr for StompUrl {
    type Err = ClientError;
    fn from_str(s: &str) -> Result<StompUrl, ClientError> {
        parse_stomp(s).map_err(|reason| url_error(s, reason))
    }
}

/// How a failover client reconnects, with ActiveMQ's option names and defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverOptions {
    /// `randomize`: pick members in random order (default true).
    pub randomize: bool,
    /// `initialReconnectDelay`: wait before the first reconnect (default 10ms).
    pub initial_reconnect_delay: Duration,
    /// `maxReconnectDelay`: the longest wait between attempts (default 30s).
    pub max_reconnect_delay: Duration,
    /// `maxReconnectAttempts`: give up after this many attempts; `None` (written `-1`,
    /// the default) retries forever.
    pub max_reconnect_attempts: Option<u32>,
    /// `useExponentialBackOff`: grow the delay after each failed attempt (default true).
    pub use_exponential_back_off: bool,
    /// `backOffMultiplier`: how much the delay grows (default 2.0).
    pub back_off_multiplier: f64,
}

impl Default for FailoverOptions {
    fn default() -> FailoverOptions {
        FailoverOptions {
            randomize: true,
            initial_reconnect_delay: Duration::from_millis(10),
            max_reconnect_delay: Duration::from_secs(30),
            max_reconnect_attempts: None,
            use_exponential_back_off: true,
            back_off_multiplier: 2.0,
        }
    }
}

/// A list of brokers to try, with reconnect options.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverUrl {
    /// The members in the order written.
    pub members: Vec<StompUrl>,
    pub options: FailoverOptions,
}

impl FromStr for FailoverUrl {
    type Err = ClientError;
    fn from_str(s: &str) -> Result<FailoverUrl, ClientError> {
        parse_failover(s).map_err(|reason| url_error(s, reason))
    }
}

impl fmt::Display for FailoverUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("failover:(")?;
        for (i, m) in self.members.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{m}")?;
        }
        let o = &self.options;
        write!(
            f,
            ")?randomize={}&initialReconnectDelay={}&maxReconnectDelay={}&maxReconnectAttempts={}",
            o.randomize,
            o.initial_reconnect_delay.as_millis(),
            o.max_reconnect_delay.as_millis(),
            o.max_reconnect_attempts.map_or(-1, i64::from),
        )?;
        write!(f, "&useExponentialBackOff={}&backOffMultiplier={}", o.use_exponential_back_off, o.back_off_multiplier)
    }
}

/// Either kind of URL `Client::connect` accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerUrl {
    Stomp(StompUrl),
    Failover(FailoverUrl),
}

impl BrokerUrl {
    /// The brokers to try, in order.
    pub fn members(&self) -> &[StompUrl] {
        match self {
            BrokerUrl::Stomp(u) => std::slice::from_ref(u),
            BrokerUrl::Failover(f) => &f.members,
        }
    }
}

impl FromStr for BrokerUrl {
    type Err = ClientError;
    fn from_str(s: &str) -> Result<BrokerUrl, ClientError> {
        if s.trim_start().starts_with("failover:") {
            s.parse().map(BrokerUrl::Failover)
        } else {
            s.parse().map(BrokerUrl::Stomp)
        }
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerUrl::Stomp(u) => u.fmt(f),
            BrokerUrl::Failover(u) => u.fmt(f),
        }
    }
}

fn url_error(url: &str, reason: String) -> ClientError {
    ClientError::Url { url: redact(url), reason }
}

/// The URL with any passcode replaced, so errors never echo a secret.
fn redact(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(start) = rest.find("://") {
        let (head, tail) = rest.split_at(start + 3);
        out.push_str(head);
        let end = tail.find([',', ')', '/', '?']).unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rsplit_once('@') {
            Some((user, host)) => match user.split_once(':') {
                Some((login, _)) => out.push_str(&format!("{login}:***@{host}")),
                None => out.push_str(authority),
            },
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn parse_stomp(s: &str) -> Result<StompUrl, String> {
    let s = s.trim();
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err("missing scheme; write stomp://host:port".into());
    };
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "stomp" | "tcp" => false,
        "stomp+ssl" | "ssl" => true,
        _ => return Err(format!("unsupported scheme {scheme:?}; use stomp:// or stomp+ssl://")),
    };
    if rest.contains('?') {
        return Err("a stomp:// URL takes no options; put them on a failover:(...) URL".into());
    }
    let authority = match rest.split_once('/') {
        Some((a, "")) => a,
        Some((_, path)) => return Err(format!("unexpected path \"/{path}\"; a broker URL is stomp://host:port")),
        None => rest,
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (login, passcode) = match userinfo {
        None => (None, None),
        Some(u) => {
            let (l, p) = match u.split_once(':') {
                Some((l, p)) => (l, Some(p)),
                None => (u, None),
            };
            if l.is_empty() {
                return Err("empty login before '@'".into());
            }
            (Some(percent_decode(l)?), p.map(percent_decode).transpose()?)
        }
    };
    let (host, port) = split_host_port(hostport)?;
    Ok(StompUrl { host, port, login, passcode, tls })
}

fn split_host_port(hostport: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return Err("unclosed '[' in IPv6 address".into());
        };
        match after {
            "" => (host, None),
            p => match p.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("unexpected {p:?} after IPv6 address")),
            },
        }
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    let port = match port {
        None => DEFAULT_STOMP_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("port {p:?} is not a number from 1 to 65535")),
            Ok(n) => n,
        },
    };
    Ok((host.to_string(), port))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(|| format!("incomplete percent escape in {s:?}"))?;
            let b = u8::from_str_radix(hex, 16).map_err(|_| format!("invalid percent escape %{hex}"))?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "credentials are not valid UTF-8 after percent-decoding".into())
}

fn parse_failover(s: &str) -> Result<FailoverUrl, String> {
    let s = s.trim();
    let Some(rest) = s.strip_prefix("failover:") else {
        return Err("expected failover:(stomp://host:port,...)".into());
    };
    if rest.contains("failover:") {
        return Err("failover URLs cannot be nested".into());
    }
    let (list, query) = match rest.strip_prefix('(') {
        Some(inner) => {
            let Some((list, after)) = inner.split_once(')') else {
                return Err("missing ')' after the member list".into());
            };
            let query = match after {
                "" => None,
                q => Some(
                    q.strip_prefix('?').ok_or_else(|| format!("unexpected {q:?} after ')'; options start with '?'"))?,
                ),
            };
            (list, query)
        }
        // ActiveMQ also accepts the unparenthesised form `failover:stomp://a,stomp://b`.
        None => match rest.split_once('?') {
            Some((list, q)) => (list, Some(q)),
            None => (rest, None),
        },
    };
    let mut members = Vec::new();
    for (i, member) in list.split(',').map(str::trim).enumerate() {
        if member.is_empty() {
            return Err(format!("member {} is empty", i + 1));
        }
        members.push(parse_stomp(member).map_err(|reason| format!("member {} ({}): {reason}", i + 1, redact(member)))?);
    }
    let mut options = FailoverOptions::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("option {pair:?} has no '=value'"));
        };
        apply_option(&mut options, key, value)?;
    }
    if options.initial_reconnect_delay > options.max_reconnect_delay {
        return Err("initialReconnectDelay is larger than maxReconnectDelay".into());
    }
    Ok(FailoverUrl { members, options })
}

fn apply_option(o: &mut FailoverOptions, key: &str, value: &str) -> Result<(), String> {
    let bad = |expected: &str| format!("option {key}={value:?}: expected {expected}");
    match key {
        "randomize" => o.randomize = parse_bool(value).ok_or_else(|| bad("true or false"))?,
        "initialReconnectDelay" => {
            o.initial_reconnect_delay = parse_delay(value).ok_or_else(|| bad("a duration like 10ms"))?
        }
        "maxReconnectDelay" => o.max_reconnect_delay = parse_delay(value).ok_or_else(|| bad("a duration like 30s"))?,
        "maxReconnectAttempts" => {
            let n: i64 = value.parse().map_err(|_| bad("a whole number, -1 for unlimited"))?;
            o.max_reconnect_attempts = match n {
                -1 => None,
                n => Some(u32::try_from(n).map_err(|_| bad("a whole number, -1 for unlimited"))?),
            };
        }
        "useExponentialBackOff" => {
            o.use_exponential_back_off = parse_bool(value).ok_or_else(|| bad("true or false"))?
        }
        "backOffMultiplier" => {
            o.back_off_multiplier =
                value.parse::<f64>().ok().filter(|m| *m >= 1.0).ok_or_else(|| bad("a number of at least 1"))?;
        }
        other => {
            return Err(format!(
                "unknown option {other:?} (known: randomize, initialReconnectDelay, maxReconnectDelay, \
                 maxReconnectAttempts, useExponentialBackOff, backOffMultiplier)"
            ))
        }
    }
    Ok(())
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Bare numbers are milliseconds, as in ActiveMQ; otherwise a number with a unit.
fn parse_delay(s: &str) -> Option<Duration> {
    if let Ok(ms) = s.parse::<u64>() {
        return Some(Duration::from_millis(ms));
    }
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = s[..split].parse().ok()?;
    match &s[split..] {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" | "min" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn reason(r: Result<impl fmt::Debug, ClientError>) -> String {
        match r {
            Err(ClientError::Url { reason, .. }) => reason,
            other => panic!("expected a URL error, got {other:?}"),
        }
    }

    #[rstest]
    #[case("stomp://127.0.0.1:61613", "127.0.0.1", 61613)]
    #[case("stomp://broker", "broker", DEFAULT_STOMP_PORT)]
    #[case("stomp://broker:1234/", "broker", 1234)]
    #[case("tcp://broker:1234", "broker", 1234)]
    #[case("STOMP://broker:1", "broker", 1)]
    #[case("stomp://[::1]:9000", "::1", 9000)]
    #[case("stomp://[::1]", "::1", DEFAULT_STOMP_PORT)]
    fn given_stomp_url_when_parsed_should_yield_host_and_port(
        #[case] url: &str,
        #[case] host: &str,
        #[case] port: u16,
    ) {
        let u: StompUrl = url.parse().unwrap();
        assert_eq!((u.host.as_str(), u.port, u.login, u.passcode, u.tls), (host, port, None, None, false));
    }

    #[rstest]
    #[case("stomp+ssl://broker:61614", "broker", 61614, "stomp+ssl://broker:61614")]
    #[case("ssl://broker", "broker", DEFAULT_STOMP_PORT, "stomp+ssl://broker:61613")]
    #[case("STOMP+SSL://[::1]:2", "::1", 2, "stomp+ssl://[::1]:2")]
    #[case("stomp+ssl://app:secret@h:3", "h", 3, "stomp+ssl://app@h:3")]
    fn given_tls_url_when_parsed_should_mark_it_tls_and_print_its_scheme(
        #[case] url: &str,
        #[case] host: &str,
        #[case] port: u16,
        #[case] shown: &str,
    ) {
        let u: StompUrl = url.parse().unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), (host, port, true));
        assert_eq!(u.to_string(), shown);
        assert!(u.to_string().parse::<StompUrl>().unwrap().tls);
    }

    #[test]
    fn given_failover_url_mixing_tls_and_plain_when_parsed_should_keep_each_members_scheme() {
        let f: FailoverUrl = "failover:(stomp+ssl://a:1,stomp://b:2,ssl://c:3)?randomize=false".parse().unwrap();
        let tls: Vec<bool> = f.members.iter().map(|m| m.tls).collect();
        assert_eq!(tls, [true, false, true]);
        let shown = f.to_string();
        assert!(shown.starts_with("failover:(stomp+ssl://a:1,stomp://b:2,stomp+ssl://c:3)?"), "{shown}");
        assert_eq!(shown.parse::<FailoverUrl>().unwrap(), f);
    }

    #[test]
    fn given_credentials_when_parsed_should_percent_decode_them() {
        let u: StompUrl = "stomp://app%40team:p%3Ass@host:61614".parse().unwrap();
        assert_eq!(u.login.as_deref(), Some("app@team"));
        assert_eq!(u.passcode.as_deref(), Some("p:ss"));
        assert_eq!(u.address(), "host:61614");
    }

    #[test]
    fn given_login_without_passcode_when_parsed_should_leave_passcode_empty() {
        let u: StompUrl = "stomp://guest@host".parse().unwrap();
        assert_eq!((u.login.as_deref(), u.passcode), (Some("guest"), None));
    }

    #[test]
    fn given_url_with_passcode_when_displayed_should_hide_it() {
        let u: StompUrl = "stomp://app:secret@host:1".parse().unwrap();
        assert_eq!(u.to_string(), "stomp://app@host:1");
        let ipv6: StompUrl = "stomp://[::1]:2".parse().unwrap();
        assert_eq!(ipv6.to_string(), "stomp://[::1]:2");
    }

    #[rstest]
    #[case("127.0.0.1:61613", "missing scheme")]
    #[case("http://host:80", "unsupported scheme")]
    #[case("https://host:61614", "stomp+ssl://")]
    #[case("stomp://", "missing host")]
    #[case("stomp://:61613", "missing host")]
    #[case("stomp://host:", "not a number")]
    #[case("stomp://host:0", "not a number")]
    #[case("stomp://host:70000", "not a number")]
    #[case("stomp://host:abc", "not a number")]
    #[case("stomp://host/queue", "unexpected path")]
    #[case("stomp://host?x=1", "takes no options")]
    #[case("stomp://[::1", "unclosed")]
    #[case("stomp://:pw@host", "empty login")]
    #[case("stomp://u:%zz@host", "invalid percent escape")]
    fn given_bad_stomp_url_when_parsed_should_name_the_problem(#[case] url: &str, #[case] expected: &str) {
        let r = reason(url.parse::<StompUrl>());
        assert!(r.contains(expected), "{url}: {r}");
    }

    #[test]
    fn given_bad_url_with_passcode_when_reported_should_not_echo_the_passcode() {
        let Err(ClientError::Url { url, .. }) = "stomp://app:secret@host:x".parse::<StompUrl>() else {
            panic!("expected a URL error");
        };
        assert_eq!(url, "stomp://app:***@host:x");
        let Err(e) = "failover:(stomp://a:pw@h:1,stomp://b:pw2@h:x)".parse::<FailoverUrl>() else {
            panic!("expected a URL error");
        };
        assert!(!e.to_string().contains("pw"), "{e}");
    }

    #[test]
    fn given_failover_url_with_options_when_parsed_should_keep_members_in_order() {
        let f: FailoverUrl =
            "failover:(stomp://a:61613,stomp://u:p@b:61614)?randomize=false&initialReconnectDelay=10ms\
             &maxReconnectDelay=2s&maxReconnectAttempts=-1"
                .parse()
                .unwrap();
        let addrs: Vec<String> = f.members.iter().map(StompUrl::address).collect();
        assert_eq!(addrs, ["a:61613", "b:61614"]);
        assert_eq!(f.members[1].login.as_deref(), Some("u"));
        assert_eq!(
            f.options,
            FailoverOptions {
                randomize: false,
                initial_reconnect_delay: Duration::from_millis(10),
                max_reconnect_delay: Duration::from_secs(2),
                max_reconnect_attempts: None,
                ..FailoverOptions::default()
            }
        );
    }

    #[rstest]
    #[case("failover:(stomp://a)", FailoverOptions::default())]
    #[case("failover:stomp://a,stomp://b", FailoverOptions::default())]
    #[case("failover:(stomp://a)?initialReconnectDelay=250", FailoverOptions { initial_reconnect_delay: Duration::from_millis(250), ..FailoverOptions::default() })]
    #[case("failover:(stomp://a)?maxReconnectAttempts=5&useExponentialBackOff=false", FailoverOptions { max_reconnect_attempts: Some(5), use_exponential_back_off: false, ..FailoverOptions::default() })]
    #[case("failover:(stomp://a)?backOffMultiplier=1.5&maxReconnectDelay=1m", FailoverOptions { back_off_multiplier: 1.5, max_reconnect_delay: Duration::from_secs(60), ..FailoverOptions::default() })]
    fn given_failover_options_when_parsed_should_apply_them(#[case] url: &str, #[case] expected: FailoverOptions) {
        assert_eq!(url.parse::<FailoverUrl>().unwrap().options, expected);
    }

    #[rstest]
    #[case("failover:()", "member 1 is empty")]
    #[case("failover:(stomp://a,)", "member 2 is empty")]
    #[case("failover:(stomp://a", "missing ')'")]
    #[case("failover:(stomp://a)x=1", "options start with '?'")]
    #[case("failover:(stomp://a,http://b)", "member 2 (http://b): unsupported scheme")]
    #[case("failover:(failover:(stomp://a))", "cannot be nested")]
    #[case("failover:(stomp://a)?randomize=maybe", "option randomize=\"maybe\": expected true or false")]
    #[case("failover:(stomp://a)?maxReconnectAttempts=-2", "expected a whole number")]
    #[case("failover:(stomp://a)?initialReconnectDelay=soon", "expected a duration")]
    #[case("failover:(stomp://a)?initialReconnectDelay=5s&maxReconnectDelay=1s", "larger than maxReconnectDelay")]
    #[case("failover:(stomp://a)?backOffMultiplier=0.5", "at least 1")]
    #[case("failover:(stomp://a)?timeout=5", "unknown option \"timeout\"")]
    #[case("failover:(stomp://a)?randomize", "has no '=value'")]
    fn given_bad_failover_url_when_parsed_should_name_the_problem(#[case] url: &str, #[case] expected: &str) {
        let r = reason(url.parse::<FailoverUrl>());
        assert!(r.contains(expected), "{url}: {r}");
    }

    #[test]
    fn given_either_kind_when_parsed_as_broker_url_should_pick_the_variant() {
        let single: BrokerUrl = "stomp://a:1".parse().unwrap();
        assert!(matches!(single, BrokerUrl::Stomp(_)));
        assert_eq!(single.members().len(), 1);
        let list: BrokerUrl = "failover:(stomp://a:1,stomp://b:2)".parse().unwrap();
        assert_eq!(list.members().len(), 2);
    }

    #[test]
    fn given_failover_url_when_displayed_should_parse_back_to_the_same_value() {
        let f: FailoverUrl =
            "failover:(stomp://a:1,stomp://b:2)?randomize=false&maxReconnectAttempts=3&backOffMultiplier=1.5"
                .parse()
                .unwrap();
        assert_eq!(f.to_string().parse::<FailoverUrl>().unwrap(), f);
    }
}
