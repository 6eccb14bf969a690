//! Signing of admin writes (`POST /ha/switchover`) with the group's cluster password, so
//! only holders of the cluster credentials (the operator, an administrator with the
//! Secret) can move the live role. The password never crosses the wire: the caller sends
//! the time and an HMAC-SHA256, keyed with the password, over the time, the method, the
//! path and the exact body bytes. Pure functions; the operator imports them, so both
//! sides compute the same signature.
//!
//! A signature stays valid for [`MAX_SKEW`] either side of the broker's clock, so a
//! captured request can be replayed only within that window and only to repeat exactly
//! the same request (which a broker that already handed over refuses: it is no longer
//! live).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// The request header carrying `<unix seconds>.<hex HMAC>`.
pub const SIGNATURE_HEADER: &str = "x-duomq-signature";
/// How far the signer's clock may be from the broker's.
pub const MAX_SKEW_SECONDS: u64 = 300;
/// Separates these signatures from any other use of the cluster password.
const DOMAIN: &[u8] = b"duomq admin request v1";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing {SIGNATURE_HEADER} header: admin writes are signed with the cluster password")]
    Missing,
    #[error("malformed {SIGNATURE_HEADER} header: expected <unix seconds>.<hex HMAC-SHA256>")]
    Malformed,
    #[error("the signature's time is {skew} s away from the broker's clock (at most {MAX_SKEW_SECONDS} s)")]
    Expired { skew: u64 },
    #[error("wrong signature: not signed with this group's cluster password")]
    Wrong,
}

/// The header value for a request signed at `unix_seconds`.
pub fn sign(password: &[u8], method: &str, path: &str, body: &[u8], unix_seconds: u64) -> String {
    let mac = keyed(password, method, path, body, unix_seconds).finalize().into_bytes();
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    format!("{unix_seconds}.{hex}")
}

/// Checks a header value against the request and the broker's clock (`now`, unix seconds).
/// The MAC comparison takes the same time wherever the first differing byte is.
pub fn verify(password: &[u8], method: &str, path: &str, body: &[u8], header: Option<&str>, now: u64) -> Result<(), AuthError> {
    let header = header.ok_or(AuthError::Missing)?;
    let (time, hex) = header.trim().split_once('.').ok_or(AuthError::Malformed)?;
    let time: u64 = time.parse().map_err(|_| AuthError::Malformed)?;
    let claimed = decode_hex(hex).ok_or(AuthError::Malformed)?;
    let skew = now.abs_diff(time);
    if skew > MAX_SKEW_SECONDS {
        return Err(AuthError::Expired { skew });
    }
    keyed(password, method, path, body, time).verify_slice(&claimed).map_err(|_| AuthError::Wrong)
}

/// Seconds since the Unix epoch by this machine's clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Whether `a` and `b` are the same bytes, in a time that does not depend on where they
/// differ (nor, as both are hashed first, on their lengths): for passwords.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `Authorization` header value of HTTP Basic for `user` and `password` (RFC 7617).
pub fn basic_header(user: &str, password: &str) -> String {
    format!("Basic {}", base64_encode(format!("{user}:{password}").as_bytes()))
}

/// The user and password of an HTTP Basic `Authorization` header value; `None` when it is
/// not Basic or not valid base64 of `user:password`.
pub fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64_decode(encoded.trim())?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for (index, chunk) in text.chunks(4).enumerate() {
        let last = index == text.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk[..4 - pad].iter().enumerate() {
            let value = BASE64.iter().position(|b| b == c)? as u32;
            n |= value << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

fn keyed(password: &[u8], method: &str, path: &str, body: &[u8], unix_seconds: u64) -> HmacSha256 {
    // HMAC takes keys of any length (longer ones are hashed), so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(password).expect("HMAC accepts keys of any length");
    for field in [DOMAIN, &unix_seconds.to_be_bytes(), method.as_bytes(), path.as_bytes(), body] {
        mac.update(&(field.len() as u64).to_be_bytes());
        mac.update(field);
    }
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;
    const BODY: &[u8] = br#"{"to":"pair-g0-1"}"#;

    fn check(header: Option<&str>, password: &[u8], body: &[u8], now: u64) -> Result<(), AuthError> {
        verify(password, "POST", "/ha/switchover", body, header, now)
    }

    #[test]
    fn given_a_signed_request_should_accept_it_within_the_skew_and_refuse_it_past() {
        let header = sign(b"s3cret", "POST", "/ha/switchover", BODY, NOW);
        assert_eq!(check(Some(&header), b"s3cret", BODY, NOW), Ok(()));
        assert_eq!(check(Some(&header), b"s3cret", BODY, NOW - MAX_SKEW_SECONDS), Ok(()));
        assert_eq!(check(Some(&header), b"s3cret", BODY, NOW + MAX_SKEW_SECONDS + 1), Err(AuthError::Expired { skew: 301 }));
    }

    #[test]
    fn given_a_known_request_should_sign_it_as_the_bench_scripts_do() {
        // bench/lib/admin-status.py computes the same value: the wire format is pinned.
        let header = sign(b"s3cret", "GET", "/status", b"", 1_800_000_000);
        assert_eq!(header, "1800000000.8c802318c43ae57b64222b9103f41bec198bc8a07033ab0f8f2ad9544fff087a");
    }

    #[test]
    fn given_another_password_body_or_path_should_refuse() {
        let header = sign(b"s3cret", "POST", "/ha/switchover", BODY, NOW);
        assert_eq!(check(Some(&header), b"guess", BODY, NOW), Err(AuthError::Wrong));
        assert_eq!(check(Some(&header), b"s3cret", br#"{"to":"pair-g0-2"}"#, NOW), Err(AuthError::Wrong));
        assert_eq!(verify(b"s3cret", "POST", "/other", BODY, Some(&header), NOW), Err(AuthError::Wrong));
    }

    #[test]
    fn given_basic_credentials_should_round_trip_and_match_known_encodings() {
        // RFC 7617's example, and the three padding lengths.
        assert_eq!(basic_header("Aladdin", "open sesame"), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert_eq!(basic_header("a", "b"), "Basic YTpi");
        assert_eq!(basic_header("ab", "c:d"), "Basic YWI6Yzpk");
        assert_eq!(basic_header("ab", "cd"), "Basic YWI6Y2Q=");
        for (user, password) in [("ops", "s3cret"), ("a", ""), ("ünï", "pa:ss wörd"), ("x", "yz")] {
            let header = basic_header(user, password);
            assert_eq!(parse_basic(&header), Some((user.to_string(), password.to_string())), "{header}");
        }
        assert_eq!(parse_basic("bearer abc"), None);
        assert_eq!(parse_basic("Basic !!!!"), None);
        assert_eq!(parse_basic("Basic YTpi="), None, "not a multiple of four");
        assert_eq!(parse_basic("Basic bm9jb2xvbg=="), None, "no colon");
    }

    #[test]
    fn given_passwords_should_compare_equal_only_when_identical() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(!constant_time_eq(b"s3cret", b"S3cret"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn given_no_or_garbled_header_should_say_so() {
        assert_eq!(check(None, b"s3cret", BODY, NOW), Err(AuthError::Missing));
        assert_eq!(check(Some("nonsense"), b"s3cret", BODY, NOW), Err(AuthError::Malformed));
        assert_eq!(check(Some("12.zz"), b"s3cret", BODY, NOW), Err(AuthError::Malformed));
    }
}
