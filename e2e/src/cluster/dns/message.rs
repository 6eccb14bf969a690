//! The few DNS messages (RFC 1035) the cluster's server needs: read a query with one
//! question, write an answer with A records, an empty answer, NXDOMAIN or REFUSED. No I/O,
//! no compression on input (queries carry none), one name pointer on output.

use std::net::Ipv4Addr;

/// Record types the server tells apart.
pub const TYPE_A: u16 = 1;
pub const CLASS_IN: u16 = 1;

const HEADER_LEN: usize = 12;
/// Longest name on the wire (RFC 1035 2.3.4).
const MAX_NAME: usize = 255;

/// Response codes used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    NxDomain = 3,
    NotImp = 4,
    Refused = 5,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message shorter than a DNS header")]
    Short,
    #[error("not a query")]
    NotQuery,
    #[error("expected one question, got {0}")]
    Questions(u16),
    #[error("malformed question name")]
    BadName,
}

/// One question of a query, its name lower-cased without the final dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// Opcode and the recursion-desired bit, echoed in the answer.
    flags: u16,
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// The question as it was on the wire, echoed in the answer.
    question: Vec<u8>,
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// Reads a query. Its id is returned with the error when the header was readable, so a
/// FORMERR can still be answered.
pub fn parse_query(bytes: &[u8]) -> Result<Query, (Option<u16>, MessageError)> {
    if bytes.len() < HEADER_LEN {
        return Err((None, MessageError::Short));
    }
    let id = u16_at(bytes, 0).unwrap_or_default();
    let flags = u16_at(bytes, 2).unwrap_or_default();
    let fail = |e| Err((Some(id), e));
    if flags & 0x8000 != 0 {
        return fail(MessageError::NotQuery);
    }
    let questions = u16_at(bytes, 4).unwrap_or_default();
    if questions != 1 {
        return fail(MessageError::Questions(questions));
    }
    let mut at = HEADER_LEN;
    let mut labels = Vec::new();
    loop {
        let Some(&len) = bytes.get(at) else { return fail(MessageError::BadName) };
        at += 1;
        if len == 0 {
            break;
        }
        // A pointer (0xC0) or reserved label type: queries have no reason to use them.
        if len & 0xC0 != 0 || at + usize::from(len) > bytes.len() || at > MAX_NAME + HEADER_LEN {
            return fail(MessageError::BadName);
        }
        labels.push(String::from_utf8_lossy(&bytes[at..at + usize::from(len)]).to_ascii_lowercase());
        at += usize::from(len);
    }
    let (Some(qtype), Some(qclass)) = (u16_at(bytes, at), u16_at(bytes, at + 2)) else {
        return fail(MessageError::BadName);
    };
    Ok(Query {
        id,
        flags: flags & 0x7900,
        name: labels.join("."),
        qtype,
        qclass,
        question: bytes[HEADER_LEN..at + 4].to_vec(),
    })
}

/// The answer to `query`: `rcode`, and one A record per address (with `ttl` seconds).
pub fn answer(query: &Query, rcode: Rcode, addresses: &[Ipv4Addr], ttl: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + query.question.len() + addresses.len() * 16);
    out.extend(query.id.to_be_bytes());
    // QR, the query's opcode and RD, AA (this server is the authority for its names).
    out.extend((0x8000 | 0x0400 | query.flags | rcode as u16).to_be_bytes());
    out.extend(1u16.to_be_bytes());
    out.extend((addresses.len() as u16).to_be_bytes());
    out.extend([0, 0, 0, 0]);
    out.extend(&query.question);
    for ip in addresses {
        // The name: a pointer to the question's, right after the header.
        out.extend([0xC0, HEADER_LEN as u8]);
        out.extend(TYPE_A.to_be_bytes());
        out.extend(CLASS_IN.to_be_bytes());
        out.extend(ttl.to_be_bytes());
        out.extend(4u16.to_be_bytes());
        out.extend(ip.octets());
    }
    out
}

/// A bare error answer (no question) for a message that could not be read.
pub fn error_answer(id: u16, rcode: Rcode) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend(id.to_be_bytes());
    out.extend((0x8000 | rcode as u16).to_be_bytes());
    out.extend([0; 8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query as a resolver writes it, with an EDNS OPT record in the additional section.
    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend(label.as_bytes());
        }
        q.push(0);
        q.extend(qtype.to_be_bytes());
        q.extend(CLASS_IN.to_be_bytes());
        q.extend([0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        q
    }

    #[test]
    fn given_a_query_when_parsing_should_read_name_type_and_id() {
        let q = parse_query(&query("Pair-G0.default.svc.cluster.local", TYPE_A)).unwrap();
        assert_eq!((q.id, q.name.as_str(), q.qtype, q.qclass), (0x1234, "pair-g0.default.svc.cluster.local", TYPE_A, CLASS_IN));
    }

    #[test]
    fn given_addresses_when_answering_should_echo_the_question_and_add_a_records() {
        let bytes = query("pair-g0.default.svc", TYPE_A);
        let q = parse_query(&bytes).unwrap();
        let a = answer(&q, Rcode::NoError, &[Ipv4Addr::new(10, 1, 2, 3), Ipv4Addr::new(10, 1, 2, 4)], 1);
        assert_eq!(&a[..2], &[0x12, 0x34]);
        assert_eq!(u16_at(&a, 2), Some(0x8000 | 0x0400 | 0x0100), "QR, AA, RD echoed, NOERROR");
        assert_eq!((u16_at(&a, 4), u16_at(&a, 6)), (Some(1), Some(2)));
        let question_end = HEADER_LEN + q.question.len();
        assert_eq!(&a[HEADER_LEN..question_end], &bytes[HEADER_LEN..question_end]);
        let first = &a[question_end..question_end + 16];
        assert_eq!(first, &[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 10, 1, 2, 3]);
        assert_eq!(a.len(), question_end + 32);
    }

    #[test]
    fn given_no_such_name_when_answering_should_say_nxdomain_without_records() {
        let q = parse_query(&query("nothing.default.svc", 28)).unwrap();
        let a = answer(&q, Rcode::NxDomain, &[], 1);
        assert_eq!(u16_at(&a, 2).map(|f| f & 0xF), Some(3));
        assert_eq!(u16_at(&a, 6), Some(0));
    }

    #[test]
    fn given_bad_messages_when_parsing_should_say_why() {
        assert_eq!(parse_query(&[0; 5]), Err((None, MessageError::Short)));
        let mut response = query("a.b", TYPE_A);
        response[2] |= 0x80;
        assert_eq!(parse_query(&response), Err((Some(0x1234), MessageError::NotQuery)));
        let mut truncated = query("abc.def", TYPE_A);
        truncated.truncate(HEADER_LEN + 3);
        assert_eq!(parse_query(&truncated), Err((Some(0x1234), MessageError::BadName)));
        let mut pointer = query("abc", TYPE_A);
        pointer[HEADER_LEN] = 0xC0;
        assert_eq!(parse_query(&pointer), Err((Some(0x1234), MessageError::BadName)));
        assert_eq!(error_answer(7, Rcode::FormErr), vec![0, 7, 0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
}
