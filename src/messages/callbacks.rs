//! The callbacks the message side produces, in the On-Premises payload shapes: timestamps are
//! Unix seconds as strings, `recipient_id` and `wa_id` are the bare digits of the number.

use coreq_storage::UnixMillis;
use serde_json::{Value, json};

use super::{Inbound, StatusEvent};

/// `{"statuses":[{"id","recipient_id","status","timestamp"}]}`, with `errors` on `failed`.
pub fn status(event: &StatusEvent, recipient: &str) -> Vec<u8> {
    let mut status = json!({
        "id": event.id,
        "recipient_id": digits(recipient),
        "status": event.status.as_str(),
        "timestamp": seconds(event.at),
    });
    if let Some(errors) = &event.errors {
        status["errors"] = errors.clone();
    }
    json!({ "statuses": [status] }).to_string().into_bytes()
}

/// `{"contacts":[{"profile":{"name"},"wa_id"}],"messages":[{"from","id","timestamp","type","text"}]}`.
pub fn inbound(id: &str, inbound: &Inbound, at: UnixMillis) -> Vec<u8> {
    let wa_id = digits(&inbound.from);
    let mut contact = json!({ "wa_id": wa_id });
    if let Some(name) = &inbound.name {
        contact["profile"] = json!({ "name": name });
    }
    json!({
        "contacts": [contact],
        "messages": [{
            "from": wa_id,
            "id": id,
            "timestamp": seconds(at),
            "type": "text",
            "text": { "body": inbound.text },
        }],
    })
    .to_string()
    .into_bytes()
}

/// `{"services":[{"message":{"gc":{"messages_deleted":N,"status":"complete"}}}]}`.
pub fn gc_complete(messages_deleted: u64) -> Vec<u8> {
    json!({ "services": [{ "message": { "gc": { "messages_deleted": messages_deleted, "status": "complete" } } }] })
        .to_string()
        .into_bytes()
}

fn digits(number: &str) -> String {
    number.chars().filter(char::is_ascii_digit).collect()
}

fn seconds(at: UnixMillis) -> Value {
    Value::String((at / 1000).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Status;

    fn parsed(body: Vec<u8>) -> Value {
        serde_json::from_slice(&body).unwrap()
    }

    #[test]
    fn a_status_callback_has_the_on_premises_shape() {
        let event = StatusEvent {
            id: "abc".into(),
            status: Status::Delivered,
            at: 1_700_000_000_999,
            errors: None,
        };
        assert_eq!(
            parsed(status(&event, "+1 (555) 123-4567")),
            json!({"statuses":[{"id":"abc","recipient_id":"15551234567","status":"delivered","timestamp":"1700000000"}]})
        );
    }

    #[test]
    fn a_failed_status_carries_its_errors() {
        let event = StatusEvent {
            id: "abc".into(),
            status: Status::Failed,
            at: 0,
            errors: Some(json!([{"code":1013,"title":"User is not valid"}])),
        };
        let body = parsed(status(&event, "1"));
        assert_eq!(body["statuses"][0]["errors"][0]["code"], 1013);
    }

    #[test]
    fn an_inbound_callback_has_contacts_and_messages() {
        let message = Inbound {
            from: "+16315551234".into(),
            name: Some("Kerry".into()),
            text: "hi".into(),
        };
        assert_eq!(
            parsed(inbound("id1", &message, 1_518_694_235_000)),
            json!({
                "contacts":[{"profile":{"name":"Kerry"},"wa_id":"16315551234"}],
                "messages":[{"from":"16315551234","id":"id1","timestamp":"1518694235","type":"text","text":{"body":"hi"}}]
            })
        );
    }

    #[test]
    fn the_gc_completion_callback_counts_what_was_deleted() {
        assert_eq!(
            parsed(gc_complete(3)),
            json!({"services":[{"message":{"gc":{"messages_deleted":3,"status":"complete"}}}]})
        );
    }
}
