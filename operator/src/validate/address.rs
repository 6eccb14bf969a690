//! `spec.addressSettings` as the broker reads it: each entry becomes the broker's own
//! [`AddressSettingsEntry`], and the list is checked by the broker's own rules on the config
//! the operator renders, so an entry the brokers would refuse at start is reported in the
//! BrokerGroup's status (naming `spec.addressSettings[i]`) and never rolled out. Pure.

use duomq_broker::config::{
    AddressSettingsEntry, ByteSize, ConfigError, FullPolicy, HumanDuration,
};

use super::{InvalidSpec, ValidatedBrokerGroup};
use crate::api::{AddressFullPolicy, AddressSettingSpec};

/// The broker's entries for `spec.addressSettings`, in spec order.
pub fn entries(spec: &[AddressSettingSpec]) -> Result<Vec<AddressSettingsEntry>, InvalidSpec> {
    spec.iter()
        .enumerate()
        .map(|(i, s)| entry(s).map_err(|message| invalid(i, &message)))
        .collect()
}

/// The broker's checks of `addressSettings` on the config of one member (every member
/// gets the same list, with the same storage and memory settings).
pub fn check(v: &ValidatedBrokerGroup) -> Result<(), InvalidSpec> {
    let (Some(group), false) = (v.groups.first(), v.address_settings.is_empty()) else {
        return Ok(());
    };
    let Some(member) = group.members.first() else {
        return Ok(());
    };
    match crate::render::build_broker_config(v, group, member).address_settings_table() {
        Ok(_) => Ok(()),
        Err(ConfigError::AddressSettings { index, problem }) => {
            Err(invalid(index, &problem.to_string()))
        }
        Err(other) => Err(InvalidSpec::Rule {
            message: format!("spec.addressSettings: {other}"),
        }),
    }
}

fn invalid(index: usize, message: &str) -> InvalidSpec {
    InvalidSpec::Rule {
        message: format!(
            "spec.addressSettings[{index}]: {message}; nothing is applied until it is fixed"
        ),
    }
}

/// One entry; every field the spec leaves out stays unset, so it falls through to less
/// specific entries in the broker. Fields are set one by one: a field the broker adds
/// later stays unset rather than breaking the build.
fn entry(s: &AddressSettingSpec) -> Result<AddressSettingsEntry, String> {
    let mut e = AddressSettingsEntry {
        pattern: s.pattern.clone(),
        ..AddressSettingsEntry::default()
    };
    e.max_delivery_attempts = s
        .max_delivery_attempts
        .map(|n| {
            u32::try_from(n)
                .map_err(|_| format!("maxDeliveryAttempts must be 0 or more (it is {n})"))
        })
        .transpose()?;
    e.redelivery_delay = s
        .redelivery_delay
        .as_deref()
        .map(|d| duration("redeliveryDelay", d))
        .transpose()?;
    e.redelivery_multiplier = s.redelivery_multiplier;
    e.max_redelivery_delay = s
        .max_redelivery_delay
        .as_deref()
        .map(|d| duration("maxRedeliveryDelay", d))
        .transpose()?;
    e.dead_letter_address = s.dead_letter_address.clone();
    e.expiry_address = s.expiry_address.clone();
    e.max_size_bytes = s.max_size_bytes.as_deref().map(size).transpose()?;
    e.address_full_policy = s.address_full_policy.map(|p| match p {
        AddressFullPolicy::Page => FullPolicy::Page,
        AddressFullPolicy::Block => FullPolicy::Block,
        AddressFullPolicy::Fail => FullPolicy::Fail,
    });
    Ok(e)
}

/// A duration read the way the broker reads its own config.
fn duration(field: &str, text: &str) -> Result<HumanDuration, String> {
    serde_yaml::from_value(serde_yaml::Value::String(text.to_string()))
        .map_err(|e| format!("{field}: {e}"))
}

/// A Kubernetes quantity as a byte count.
fn size(text: &str) -> Result<ByteSize, String> {
    crate::quantity::bytes(text)
        .and_then(|b| u64::try_from(b).ok())
        .map(ByteSize)
        .ok_or_else(|| format!("maxSizeBytes {text:?} is not a whole number of bytes as a Kubernetes quantity such as 16Mi"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::parse_documents;
    use crate::validate::{validate, Dependencies};

    fn validated(settings: &str) -> Result<ValidatedBrokerGroup, InvalidSpec> {
        let text = format!("apiVersion: duomq.io/v1alpha1\nkind: BrokerGroup\nmetadata: {{name: orders}}\nspec:\n  addressSettings: {settings}\n");
        let bg = parse_documents(&text, "default").expect("parses").remove(0);
        validate(
            &bg,
            &Dependencies {
                new_password: "p".into(),
                ..Dependencies::default()
            },
        )
    }

    #[test]
    fn given_every_field_should_give_the_brokers_entry_with_sizes_and_durations_converted() {
        let v = validated(
            "[{match: '>', maxDeliveryAttempts: 6}, {match: /queue/orders.>, redeliveryDelay: 500ms, redeliveryMultiplier: 2, \
             maxRedeliveryDelay: 1m, deadLetterAddress: /queue/orders.DLQ, expiryAddress: /queue/orders.expired, maxSizeBytes: 16Mi, addressFullPolicy: fail}]",
        )
        .expect("valid");
        let all = AddressSettingsEntry {
            pattern: ">".into(),
            max_delivery_attempts: Some(6),
            ..AddressSettingsEntry::default()
        };
        let orders = AddressSettingsEntry {
            pattern: "/queue/orders.>".into(),
            redelivery_delay: Some(HumanDuration::millis(500)),
            redelivery_multiplier: Some(2.0),
            max_redelivery_delay: Some(HumanDuration::secs(60)),
            dead_letter_address: Some("/queue/orders.DLQ".into()),
            expiry_address: Some("/queue/orders.expired".into()),
            max_size_bytes: Some(ByteSize::mib(16)),
            address_full_policy: Some(FullPolicy::Fail),
            ..AddressSettingsEntry::default()
        };
        assert_eq!(v.address_settings, vec![all, orders]);
    }

    #[test]
    fn given_a_decimal_quantity_should_count_its_bytes() {
        let v = validated(
            "[{match: /queue/a, maxSizeBytes: 1G}, {match: /queue/b, maxSizeBytes: 1.5Mi}]",
        )
        .expect("valid");
        let sizes: Vec<Option<ByteSize>> = v
            .address_settings
            .iter()
            .map(|e| e.max_size_bytes)
            .collect();
        assert_eq!(
            sizes,
            vec![Some(ByteSize(1_000_000_000)), Some(ByteSize(3 << 19))]
        );
    }

    #[test]
    fn given_an_entry_only_the_broker_refuses_should_name_it_in_the_spec() {
        // The CEL pattern rule lets a word mixing a wildcard through; the broker does not.
        let err = validated("[{match: '>'}, {match: '/queue/orders*', maxDeliveryAttempts: 3}]")
            .expect_err("refused");
        let message = err.to_string();
        assert!(
            message.starts_with("spec.addressSettings[1]: match \"/queue/orders*\""),
            "{message}"
        );
        assert!(message.contains("mixes a wildcard"), "{message}");
        assert!(!err.retry(), "only a change of the spec can fix it");
    }

    #[test]
    fn given_no_entries_should_render_none() {
        assert!(validated("[]").expect("valid").address_settings.is_empty());
    }
}
