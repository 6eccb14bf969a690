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
use sha2::Sha256;
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
    fn given_another_password_body_or_path_should_refuse() {
        let header = sign(b"s3cret", "POST", "/ha/switchover", BODY, NOW);
        assert_eq!(check(Some(&header), b"guess", BODY, NOW), Err(AuthError::Wrong));
        assert_eq!(check(Some(&header), b"s3cret", br#"{"to":"pair-g0-2"}"#, NOW), Err(AuthError::Wrong));
        assert_eq!(verify(b"s3cret", "POST", "/other", BODY, Some(&header), NOW), Err(AuthError::Wrong));
    }

    #[test]
    fn given_no_or_garbled_header_should_say_so() {
        assert_eq!(check(None, b"s3cret", BODY, NOW), Err(AuthError::Missing));
        assert_eq!(check(Some("nonsense"), b"s3cret", BODY, NOW), Err(AuthError::Malformed));
        assert_eq!(check(Some("12.zz"), b"s3cret", BODY, NOW), Err(AuthError::Malformed));
    }
}
