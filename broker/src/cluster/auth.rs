//! Mutual challenge–response with the cluster credentials. Each side proves it knows the
//! password by sending HMAC-SHA256, keyed with the password, over a transcript of the
//! handshake that includes the cluster user it was configured with, so a peer with another
//! user fails as one with another password does; neither crosses the wire. Pure functions: no I/O, no
//! frames, no decisions about who may connect.
//!
//! The transcript binds both fresh nonces (so a proof from an earlier session is
//! useless), both node ids, the group, the protocol version, the client's purpose and
//! both epochs (so nothing in `Hello` or `Challenge` can be altered in flight), and the
//! role of the prover (so the server's proof cannot be reflected back as a client's).
//! Every field is length-prefixed, so no two transcripts encode to the same bytes.
//!
//! What this does not do: it authenticates the handshake, not the frames that follow
//! (that is TLS's job), and because the server proves first, anyone who can reach the
//! cluster port obtains an HMAC to guess the password against offline. The cluster
//! password must therefore be long and random, which is how the operator generates it.

use super::frame::Purpose;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Separates these proofs from any other use of the same password.
const DOMAIN: &[u8] = b"duomq cluster handshake v1";

/// Who is proving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that connected and sent `Hello`.
    Client,
    /// The side that accepted and sent `Challenge`.
    Server,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

/// Everything both sides know once `Hello` and `Challenge` have been exchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transcript<'a> {
    pub version: u16,
    /// The cluster user (`ha.cluster.user`) of the side computing the proof; both must hold
    /// the same one.
    pub user: &'a str,
    pub group: &'a str,
    pub purpose: Purpose,
    pub client_node: &'a str,
    pub client_epoch: u64,
    pub client_nonce: &'a [u8; 32],
    pub server_node: &'a str,
    pub server_epoch: u64,
    pub server_nonce: &'a [u8; 32],
}

/// The proof that `role` knows `password`, for this transcript.
pub fn proof(password: &[u8], role: Role, transcript: &Transcript) -> [u8; 32] {
    keyed(password, role, transcript).finalize().into_bytes().into()
}

/// Whether `claimed` is the proof `role` would send for this transcript. The
/// comparison takes the same time wherever the first differing byte is.
pub fn verify(password: &[u8], role: Role, transcript: &Transcript, claimed: &[u8; 32]) -> bool {
    // `verify_slice` compares in constant time.
    keyed(password, role, transcript).verify_slice(claimed).is_ok()
}

/// 32 bytes from the operating system's random source, fresh for every handshake.
pub fn new_nonce() -> [u8; 32] {
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    nonce
}

fn keyed(password: &[u8], role: Role, t: &Transcript) -> HmacSha256 {
    // HMAC takes keys of any length (longer ones are hashed), so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(password).expect("HMAC accepts keys of any length");
    let mut field = |bytes: &[u8]| {
        mac.update(&(bytes.len() as u64).to_be_bytes());
        mac.update(bytes);
    };
    field(DOMAIN);
    field(role.as_str().as_bytes());
    field(&t.version.to_be_bytes());
    field(t.user.as_bytes());
    field(t.group.as_bytes());
    field(t.purpose.as_str().as_bytes());
    field(t.client_node.as_bytes());
    field(&t.client_epoch.to_be_bytes());
    field(t.client_nonce);
    field(t.server_node.as_bytes());
    field(&t.server_epoch.to_be_bytes());
    field(t.server_nonce);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_NONCE: [u8; 32] = [1; 32];
    const SERVER_NONCE: [u8; 32] = [2; 32];

    fn transcript() -> Transcript<'static> {
        Transcript {
            version: 1,
            user: "duomq-cluster",
            group: "orders",
            purpose: Purpose::Replicate,
            client_node: "orders-1",
            client_epoch: 3,
            client_nonce: &CLIENT_NONCE,
            server_node: "orders-0",
            server_epoch: 4,
            server_nonce: &SERVER_NONCE,
        }
    }

    #[test]
    fn given_the_same_password_when_verifying_a_proof_should_accept_it() {
        let p = proof(b"s3cret", Role::Client, &transcript());
        assert!(verify(b"s3cret", Role::Client, &transcript(), &p));
    }

    #[test]
    fn given_another_password_when_verifying_should_reject() {
        let p = proof(b"s3cret", Role::Client, &transcript());
        assert!(!verify(b"guess", Role::Client, &transcript(), &p));
    }

    #[test]
    fn given_a_server_proof_when_reflected_as_a_client_proof_should_reject() {
        let p = proof(b"s3cret", Role::Server, &transcript());
        assert!(!verify(b"s3cret", Role::Client, &transcript(), &p));
    }

    #[test]
    fn given_a_proof_when_any_transcript_field_changes_should_reject() {
        let p = proof(b"s3cret", Role::Client, &transcript());
        let other_nonce = [9u8; 32];
        let changed = [
            Transcript { version: 2, ..transcript() },
            Transcript { user: "someone-else", ..transcript() },
            Transcript { group: "payments", ..transcript() },
            Transcript { purpose: Purpose::Vote, ..transcript() },
            Transcript { client_node: "orders-2", ..transcript() },
            Transcript { client_epoch: 4, ..transcript() },
            Transcript { client_nonce: &other_nonce, ..transcript() },
            Transcript { server_node: "orders-9", ..transcript() },
            Transcript { server_epoch: 5, ..transcript() },
            Transcript { server_nonce: &other_nonce, ..transcript() },
        ];
        for t in &changed {
            assert!(!verify(b"s3cret", Role::Client, t, &p), "{t:?}");
        }
    }

    #[test]
    fn given_fields_that_concatenate_alike_when_proving_should_differ() {
        let a = Transcript { client_node: "ab", server_node: "c", ..transcript() };
        let b = Transcript { client_node: "a", server_node: "bc", ..transcript() };
        assert_ne!(proof(b"s3cret", Role::Client, &a), proof(b"s3cret", Role::Client, &b));
    }

    #[test]
    fn given_two_calls_when_making_nonces_should_differ() {
        assert_ne!(new_nonce(), new_nonce());
    }
}
