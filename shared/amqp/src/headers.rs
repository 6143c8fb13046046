//! Header tables: fleet's string pairs to AMQP field tables and back, and the attempt count.

use fleet_core::{BrokerError, Headers};
use fleet_protocol::deadletter::headers::ATTEMPT;
use lapin::types::{AMQPValue, FieldTable};

use crate::error::short;

/// Set by quorum queues on every redelivery (absent on the first delivery).
pub(crate) const DELIVERY_COUNT: &str = "x-delivery-count";

/// fleet's string headers as an AMQP field table of long strings.
pub(crate) fn to_table(headers: &Headers) -> Result<FieldTable, BrokerError> {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(
            short("header name", k)?,
            AMQPValue::LongString(v.as_str().into()),
        );
    }
    Ok(table)
}

/// Added (as by the memory broker) when the broker's `x-delivery-limit` dead-lettered a message.
pub(crate) const BACKSTOP: &str = "x-backstop";

/// The scalar headers as strings; nested values (`x-death`) are left out, but a message
/// whose latest death was the quorum delivery limit gains `x-backstop: delivery-limit`.
pub(crate) fn to_strings(table: Option<&FieldTable>) -> Headers {
    let Some(table) = table else {
        return Vec::new();
    };
    let mut out: Headers = table
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), scalar(v)?)))
        .collect();
    if latest_death_reason(table).as_deref() == Some("delivery_limit") {
        out.push((BACKSTOP.into(), "delivery-limit".into()));
    }
    out
}

/// `reason` of the newest `x-death` entry (RabbitMQ keeps them newest first).
fn latest_death_reason(table: &FieldTable) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = table.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(latest) = deaths.as_slice().first()? else {
        return None;
    };
    scalar(latest.inner().get("reason")?)
}

fn scalar(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => s.to_string(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        AMQPValue::Timestamp(t) => t.to_string(),
        other => integer(other)?.to_string(),
    })
}

fn integer(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.trim().parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
        _ => None,
    }
}

/// A non-negative count header (integer or string); absent or malformed counts as 0.
fn count(table: Option<&FieldTable>, name: &str) -> u32 {
    table
        .and_then(|t| t.inner().get(name))
        .and_then(integer)
        .map_or(0, |n| u32::try_from(n.max(0)).unwrap_or(u32::MAX))
}

/// DESIGN §4: `fleet-attempt` of the copy + quorum `x-delivery-count` + 1.
pub(crate) fn attempt(table: Option<&FieldTable>) -> u32 {
    count(table, ATTEMPT)
        .saturating_add(count(table, DELIVERY_COUNT))
        .saturating_add(1)
}

/// Headers for a republished copy: the original ones without broker-set `x-*` headers
/// (a stale `x-delivery-count` would be counted twice), plus `extra`, with `fleet-attempt`
/// set to the attempts made so far.
pub(crate) fn copy_for_republish(
    original: Option<&FieldTable>,
    extra: &Headers,
    attempts_made: u32,
) -> Result<FieldTable, BrokerError> {
    let mut table = FieldTable::default();
    if let Some(original) = original {
        for (k, v) in original {
            if !k.as_str().starts_with("x-") {
                table.insert(k.clone(), v.clone());
            }
        }
    }
    for (k, v) in extra {
        table.insert(
            short("header name", k)?,
            AMQPValue::LongString(v.as_str().into()),
        );
    }
    table.insert(
        ATTEMPT.into(),
        AMQPValue::LongString(attempts_made.to_string().into()),
    );
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    #[test]
    fn attempt_counts_header_and_delivery_count() {
        assert_eq!(attempt(None), 1);
        let t = table(&[(DELIVERY_COUNT, AMQPValue::LongLongInt(2))]);
        assert_eq!(attempt(Some(&t)), 3);
        let t = table(&[
            (ATTEMPT, AMQPValue::LongString("2".into())),
            (DELIVERY_COUNT, AMQPValue::LongInt(1)),
        ]);
        assert_eq!(attempt(Some(&t)), 4);
        let t = table(&[(ATTEMPT, AMQPValue::ShortShortUInt(5))]);
        assert_eq!(attempt(Some(&t)), 6);
        let t = table(&[(ATTEMPT, AMQPValue::LongString("junk".into()))]);
        assert_eq!(attempt(Some(&t)), 1);
    }

    #[test]
    fn delivery_limit_death_is_marked_as_backstop() {
        let death = |reason: &str| {
            AMQPValue::FieldTable(table(&[("reason", AMQPValue::LongString(reason.into()))]))
        };
        let t = table(&[(
            "x-death",
            AMQPValue::FieldArray(vec![death("delivery_limit"), death("expired")].into()),
        )]);
        assert!(to_strings(Some(&t)).contains(&(BACKSTOP.into(), "delivery-limit".into())));
        let t = table(&[(
            "x-death",
            AMQPValue::FieldArray(vec![death("expired")].into()),
        )]);
        assert!(to_strings(Some(&t)).is_empty());
    }

    #[test]
    fn republish_copy_drops_broker_headers() {
        let t = table(&[
            ("keep", AMQPValue::LongString("v".into())),
            (DELIVERY_COUNT, AMQPValue::LongLongInt(3)),
            ("x-death", AMQPValue::FieldArray(Default::default())),
        ]);
        let copy = copy_for_republish(Some(&t), &vec![("fleet-reason".into(), "poison".into())], 4)
            .unwrap();
        let strings = to_strings(Some(&copy));
        assert!(strings.contains(&("keep".into(), "v".into())));
        assert!(strings.contains(&("fleet-reason".into(), "poison".into())));
        assert!(strings.contains(&(ATTEMPT.into(), "4".into())));
        assert!(!copy.contains_key(DELIVERY_COUNT) && !copy.contains_key("x-death"));
        assert_eq!(attempt(Some(&copy)), 5);
    }
}
