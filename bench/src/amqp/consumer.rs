//! One AMQP consumer: its own connection, session and receiving link from the address,
//! with `credit` link credit that fe2o3 tops up (back to `credit` each time half of it has
//! been used); every delivery is recorded ([`Recorder`]) and settled with the accepted
//! outcome as it is taken, until told to stop.

use super::Endpoint;
use crate::run::consumer::{ConsumerOutcome, Recorder};
use anyhow::Context;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::types::messaging::{AmqpValue, Body};
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::Receiver;
use std::borrow::Cow;
use tokio_util::sync::CancellationToken;

/// A consumer attached to its address, not yet taking messages.
pub struct Consumer {
    endpoint: Endpoint,
    receiver: Receiver,
}

/// Opens consumer `index`'s connection and attaches its receiving link to `address`.
pub async fn attach(url: &str, address: &str, credit: u32, index: u32) -> anyhow::Result<Consumer> {
    let name = format!("duomq-bench-consumer-{index}");
    let mut endpoint = Endpoint::open(url, &name).await?;
    let receiver = Receiver::builder()
        .name(name)
        .source(address)
        .credit_mode(CreditMode::Auto(credit))
        .attach(&mut endpoint.session)
        .await
        .with_context(|| format!("failed to attach a receiving link to {address:?}"))?;
    Ok(Consumer { endpoint, receiver })
}

impl Consumer {
    /// Takes and accepts deliveries until `stop`, or until the link fails; then closes the
    /// link and the connection.
    pub async fn consume(mut self, id: u32, mut recorder: Recorder, stop: CancellationToken) -> ConsumerOutcome {
        let result = self.take(&mut recorder, &stop).await;
        let error = result.err().map(|e| {
            tracing::error!(consumer = id, error = format!("{e:#}"), "consumer stopped early");
            format!("consumer {id}: {e:#}")
        });
        // Deliveries still unsettled go back to the queue with the link.
        super::closing("consumer", "close the receiving link", self.receiver.close()).await;
        self.endpoint.close("consumer").await;
        recorder.into_outcome(error)
    }

    async fn take(&mut self, recorder: &mut Recorder, stop: &CancellationToken) -> anyhow::Result<()> {
        loop {
            let delivery = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                d = self.receiver.recv::<Body<Value>>() => d.context("failed to receive")?,
            };
            let message = delivery.message();
            let redelivered = message.header.as_ref().is_some_and(|h| h.delivery_count > 0 || !h.first_acquirer);
            recorder.record(&body_bytes(&message.body), redelivered);
            self.receiver.accept(&delivery).await.context("failed to accept a delivery")?;
        }
    }
}

/// The bytes of a body: its data sections joined, or a string or binary amqp-value (what
/// a broker makes of a data body it converted); anything else is not ours, so empty.
fn body_bytes(body: &Body<Value>) -> Cow<'_, [u8]> {
    match body {
        Body::Data(sections) if sections.len() == 1 => Cow::Borrowed(&sections[0].0[..]),
        Body::Data(sections) => Cow::Owned(sections.iter().flat_map(|d| d.0.iter().copied()).collect()),
        Body::Value(AmqpValue(Value::String(s))) => Cow::Borrowed(s.as_bytes()),
        Body::Value(AmqpValue(Value::Binary(b))) => Cow::Borrowed(&b[..]),
        _ => Cow::Borrowed(&[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::messaging::Data;
    use fe2o3_amqp::types::primitives::Binary;

    #[test]
    fn given_data_string_or_binary_body_should_read_its_bytes_and_nothing_from_others() {
        let one = Body::Data(vec![Data(Binary::from(b"1:2:3:..".to_vec()))].into());
        assert_eq!(&body_bytes(&one)[..], b"1:2:3:..");
        let two = Body::Data(vec![Data(Binary::from(b"1:2".to_vec())), Data(Binary::from(b":3:".to_vec()))].into());
        assert_eq!(&body_bytes(&two)[..], b"1:2:3:");
        let text: Body<Value> = Body::Value(AmqpValue(Value::String("0:7:99:".into())));
        assert_eq!(&body_bytes(&text)[..], b"0:7:99:");
        let binary: Body<Value> = Body::Value(AmqpValue(Value::Binary(Binary::from(b"x".to_vec()))));
        assert_eq!(&body_bytes(&binary)[..], b"x");
        let list: Body<Value> = Body::Value(AmqpValue(Value::List(vec![])));
        assert!(body_bytes(&list).is_empty());
    }
}
