//! AMQP messages to the engine's messages (STOMP headers and a body) and back; the
//! mapping the README documents.
//!
//! Into the broker: the body is one or more `data` sections (their bytes, joined) or an
//! `amqp-value` string (its UTF-8); other bodies (maps, lists, sequences) are refused.
//! `header.durable` is `persistent`, `header.priority` is `priority`, `header.ttl` or
//! `properties.absolute-expiry-time` is `expires`; `properties.message-id` is STOMP's
//! `message-id` (the duplicate-detection id), `correlation-id`, `reply-to`, `subject`,
//! `content-type`, `group-id` (`JMSXGroupID`), `group-sequence` (`JMSXGroupSeq`) and
//! `creation-time` (`timestamp`) keep their names; each application property becomes a
//! header of its name with the value as text. A string body without a content type
//! gets `content-type: text/plain; charset=utf-8`, a data body without one
//! `application/octet-stream`, so STOMP consumers can tell them apart. The message
//! annotations `x-opt-delivery-delay` and `x-opt-delivery-time` (Qpid JMS's JMS 2 delivery
//! delay) become `AMQ_SCHEDULED_DELAY` and `AMQ_SCHEDULED_TIME`.
//!
//! Out to a client: the same in reverse; a body whose content type is text (or absent)
//! and which is valid UTF-8 goes as an `amqp-value` string (a JMS TextMessage), any other
//! as one `data` section. The stored `dedup-id` is `properties.message-id` (else the
//! broker's id, a ulong); `header.delivery-count` counts earlier deliveries and
//! `first-acquirer` is false for a redelivery.

use super::AmqpError;
use crate::engine::accept::Incoming;
use crate::engine::dedup;
use crate::engine::message::{
    now_millis, Delivery, EXPIRES_HEADER, GROUP_ID_HEADER, GROUP_SEQ_HEADER, PRIORITY_HEADER, SCHEDULED_DELAY_HEADER,
    SCHEDULED_TIME_HEADER,
};
use bytes::Bytes;
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Data, Header, Message, MessageId, Priority, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, OrderedMap, SimpleValue, Symbol, Timestamp, Value};

/// The body as the broker takes and sends it.
pub type AmqpMessage = Message<Body<Value>>;

const CONTENT_TYPE: &str = "content-type";
const CORRELATION_ID: &str = "correlation-id";
const REPLY_TO: &str = "reply-to";
const SUBJECT: &str = "subject";
const TIMESTAMP: &str = "timestamp";
const PERSISTENT: &str = "persistent";
const TEXT: &str = "text/plain; charset=utf-8";
const BINARY: &str = "application/octet-stream";
/// Qpid JMS's message annotations for JMS 2 delivery delay (the broker offers the
/// `DELAYED_DELIVERY` capability): when, in milliseconds since the epoch, or how long after
/// the send a message may be delivered.
const DELIVERY_TIME: &str = "x-opt-delivery-time";
const DELIVERY_DELAY: &str = "x-opt-delivery-delay";
/// Headers that go into an AMQP section of their own, never into application properties.
const MAPPED: [&str; 11] = [
    CONTENT_TYPE,
    CORRELATION_ID,
    REPLY_TO,
    SUBJECT,
    TIMESTAMP,
    PERSISTENT,
    PRIORITY_HEADER,
    EXPIRES_HEADER,
    GROUP_ID_HEADER,
    GROUP_SEQ_HEADER,
    dedup::STORED_HEADER,
];

/// A client's message for `destination`, as the engine takes it.
pub fn incoming(destination: &str, message: AmqpMessage) -> Result<Incoming, AmqpError> {
    let mut headers: Vec<(String, String)> = Vec::new();
    let header = message.header.unwrap_or_default();
    let properties = message.properties.unwrap_or_default();
    let (body, text) = match message.body {
        // One section (what clients send) is taken as it is, not copied.
        Body::Data(sections) if sections.len() == 1 => {
            (sections.into_iter().next().map_or_else(Bytes::new, |d| Bytes::from(d.0.into_vec())), false)
        }
        Body::Data(sections) => {
            let mut all = Vec::with_capacity(sections.iter().map(|d| d.0.len()).sum());
            for section in sections {
                all.extend_from_slice(&section.0);
            }
            (Bytes::from(all), false)
        }
        Body::Value(AmqpValue(Value::String(s))) => (Bytes::from(s.into_bytes()), true),
        Body::Value(AmqpValue(Value::Binary(b))) => (Bytes::from(b.into_vec()), false),
        Body::Value(AmqpValue(Value::Null)) | Body::Empty => (Bytes::new(), true),
        Body::Value(_) => return Err(AmqpError::Body("an amqp-value other than a string or binary")),
        Body::Sequence(_) => return Err(AmqpError::Body("amqp-sequence sections")),
    };
    let content_type = properties.content_type.map(|s| s.0).unwrap_or_else(|| (if text { TEXT } else { BINARY }).to_string());
    headers.push((CONTENT_TYPE.to_string(), content_type));
    if let Some(id) = properties.correlation_id {
        headers.push((CORRELATION_ID.to_string(), id_text(&id)));
    }
    if let Some(to) = properties.reply_to {
        headers.push((REPLY_TO.to_string(), to));
    }
    if let Some(subject) = properties.subject {
        headers.push((SUBJECT.to_string(), subject));
    }
    if let Some(group) = properties.group_id {
        headers.push((GROUP_ID_HEADER.to_string(), group));
    }
    if let Some(seq) = properties.group_sequence {
        headers.push((GROUP_SEQ_HEADER.to_string(), seq.to_string()));
    }
    if let Some(created) = properties.creation_time {
        headers.push((TIMESTAMP.to_string(), created.milliseconds().to_string()));
    }
    let expires = match (properties.absolute_expiry_time, header.ttl) {
        (Some(at), _) if at.milliseconds() > 0 => Some(at.milliseconds() as u64),
        (_, Some(ttl)) if ttl > 0 => Some(now_millis() + u64::from(ttl)),
        _ => None,
    };
    if let Some(at) = expires {
        headers.push((EXPIRES_HEADER.to_string(), at.to_string()));
    }
    if header.priority.0 != Priority::default().0 {
        headers.push((PRIORITY_HEADER.to_string(), header.priority.0.min(9).to_string()));
    }
    if let Some(props) = message.application_properties {
        for (key, value) in props.0.into_inner() {
            // A section of its own carries these; a property of the same name would be read twice.
            if MAPPED.contains(&key.as_str()) || key == dedup::SEND_HEADER {
                continue;
            }
            if let Some(text) = simple_text(&value) {
                headers.push((key, text));
            }
        }
    }
    if let Some(annotations) = message.message_annotations {
        for (key, value) in annotations.0.into_inner() {
            let OwnedKey::Symbol(name) = key else { continue };
            let header = match name.as_str() {
                DELIVERY_TIME => SCHEDULED_TIME_HEADER,
                DELIVERY_DELAY => SCHEDULED_DELAY_HEADER,
                _ => continue,
            };
            if let Some(ms) = millis(&value).filter(|ms| *ms > 0) {
                headers.retain(|(k, _)| k != header);
                headers.push((header.to_string(), ms.to_string()));
            }
        }
    }
    Ok(Incoming {
        destination: destination.to_string(),
        headers,
        body,
        persistent: header.durable,
        dedup_id: properties.message_id.as_ref().map(id_text),
    })
}

/// A delivery as the AMQP message a client gets.
pub fn outgoing(delivery: &Delivery) -> AmqpMessage {
    let m = &delivery.entry.message;
    let get = |name: &str| m.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let content_type = get(CONTENT_TYPE);
    let text = content_type.is_none_or(|c| c.starts_with("text/"));
    let body = match std::str::from_utf8(&m.body) {
        Ok(s) if text => Body::Value(AmqpValue(Value::String(s.to_string()))),
        _ => Body::Data(vec![Data(Binary::from(m.body.to_vec()))].into()),
    };
    let header = Header {
        durable: m.persistent,
        priority: Priority(get(PRIORITY_HEADER).and_then(|p| p.parse().ok()).unwrap_or(Priority::default().0)),
        ttl: None,
        first_acquirer: !delivery.entry.redelivered,
        delivery_count: delivery.entry.deliveries.saturating_sub(1),
    };
    let mut properties = Properties {
        message_id: Some(match get(dedup::STORED_HEADER) {
            Some(id) => MessageId::String(id.to_string()),
            None => MessageId::Ulong(m.id.0),
        }),
        ..Properties::default()
    };
    // A text body says so by being an amqp-value string; other content types travel.
    properties.content_type = content_type.filter(|c| !(text && c.starts_with("text/plain"))).map(Symbol::from);
    properties.correlation_id = get(CORRELATION_ID).map(|c| MessageId::String(c.to_string()));
    properties.reply_to = get(REPLY_TO).map(str::to_string);
    properties.subject = get(SUBJECT).map(str::to_string);
    properties.group_id = get(GROUP_ID_HEADER).map(str::to_string);
    properties.group_sequence = get(GROUP_SEQ_HEADER).and_then(|s| s.parse().ok());
    properties.creation_time = get(TIMESTAMP).and_then(|t| t.parse().ok()).map(Timestamp::from_milliseconds);
    properties.absolute_expiry_time =
        get(EXPIRES_HEADER).and_then(|t| t.parse::<i64>().ok()).filter(|t| *t > 0).map(Timestamp::from_milliseconds);
    let mut application = OrderedMap::new();
    for (k, v) in &m.headers {
        if !MAPPED.contains(&k.as_str()) {
            application.insert(k.clone(), SimpleValue::String(v.clone()));
        }
    }
    Message {
        header: Some(header),
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(properties),
        application_properties: (!application.is_empty()).then_some(ApplicationProperties(application)),
        body,
        footer: None,
    }
}

/// A delivery time or delay as Qpid JMS sends it (a long or a timestamp).
fn millis(value: &Value) -> Option<u64> {
    match value {
        Value::Long(n) => u64::try_from(*n).ok(),
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::Ulong(n) => Some(*n),
        Value::Uint(n) => Some(u64::from(*n)),
        Value::Timestamp(t) => u64::try_from(t.milliseconds()).ok(),
        _ => None,
    }
}

fn id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => format!("{u:?}"),
        MessageId::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

/// An application property's value as header text; binary, null and described values are left out.
fn simple_text(value: &SimpleValue) -> Option<String> {
    Some(match value {
        SimpleValue::Bool(b) => b.to_string(),
        SimpleValue::Ubyte(n) => n.to_string(),
        SimpleValue::Ushort(n) => n.to_string(),
        SimpleValue::Uint(n) => n.to_string(),
        SimpleValue::Ulong(n) => n.to_string(),
        SimpleValue::Byte(n) => n.to_string(),
        SimpleValue::Short(n) => n.to_string(),
        SimpleValue::Int(n) => n.to_string(),
        SimpleValue::Long(n) => n.to_string(),
        SimpleValue::Float(f) => f.to_string(),
        SimpleValue::Double(f) => f.to_string(),
        SimpleValue::Char(c) => c.to_string(),
        SimpleValue::Timestamp(t) => t.milliseconds().to_string(),
        SimpleValue::String(s) => s.clone(),
        SimpleValue::Symbol(s) => s.0.clone(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(incoming: &Incoming, name: &str) -> Option<String> {
        incoming.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn given_string_body_with_properties_should_map_to_stomp_headers() {
        let mut app = OrderedMap::new();
        app.insert("count".to_string(), SimpleValue::Int(3));
        app.insert("flag".to_string(), SimpleValue::Bool(true));
        app.insert("priority".to_string(), SimpleValue::String("shadowed".into()));
        let message = Message {
            header: Some(Header { durable: true, priority: Priority(8), ..Header::default() }),
            delivery_annotations: None,
            message_annotations: None,
            properties: Some(Properties {
                message_id: Some(MessageId::String("ID:1".into())),
                correlation_id: Some(MessageId::Ulong(7)),
                group_id: Some("g".into()),
                ..Properties::default()
            }),
            application_properties: Some(ApplicationProperties(app)),
            body: Body::Value(AmqpValue(Value::String("hi".into()))),
            footer: None,
        };
        let incoming = incoming("/queue/q", message).unwrap();
        assert!(incoming.persistent);
        assert_eq!(&incoming.body[..], b"hi");
        assert_eq!(incoming.dedup_id.as_deref(), Some("ID:1"));
        assert_eq!(header(&incoming, "content-type").as_deref(), Some(TEXT));
        assert_eq!(header(&incoming, "priority").as_deref(), Some("8"));
        assert_eq!(header(&incoming, "correlation-id").as_deref(), Some("7"));
        assert_eq!(header(&incoming, GROUP_ID_HEADER).as_deref(), Some("g"));
        assert_eq!(header(&incoming, "count").as_deref(), Some("3"));
        assert_eq!(header(&incoming, "flag").as_deref(), Some("true"));
        assert_eq!(incoming.headers.iter().filter(|(k, _)| k == "priority").count(), 1, "a property cannot shadow a mapped header");
    }

    #[test]
    fn given_data_sections_should_join_them_and_refuse_other_bodies() {
        let data = Body::Data(vec![Data(Binary::from(b"ab".to_vec())), Data(Binary::from(b"c".to_vec()))].into());
        let message = Message { header: None, delivery_annotations: None, message_annotations: None, properties: None, application_properties: None, body: data, footer: None };
        let incoming = incoming("/topic/t", message).unwrap();
        assert!(!incoming.persistent);
        assert_eq!(&incoming.body[..], b"abc");
        assert_eq!(header(&incoming, "content-type").as_deref(), Some(BINARY));
        let one = Body::Data(vec![Data(Binary::from(b"whole".to_vec()))].into());
        let message = Message { header: None, delivery_annotations: None, message_annotations: None, properties: None, application_properties: None, body: one, footer: None };
        assert_eq!(&super::incoming("/queue/q", message).unwrap().body[..], b"whole");
        let list = Message { header: None, delivery_annotations: None, message_annotations: None, properties: None, application_properties: None, body: Body::Value(AmqpValue(Value::List(vec![]))), footer: None };
        assert!(matches!(super::incoming("/queue/q", list), Err(AmqpError::Body(_))));
    }
}
