//! The webhook notifications the fake POSTs, in the shapes of Meta's "Status messages webhook
//! reference" and "Text messages webhook reference" (field `messages`):
//!
//! ```text
//! {"object": "whatsapp_business_account",
//!  "entry": [{"id": <WABA id>, "changes": [{"field": "messages", "value": {
//!     "messaging_product": "whatsapp",
//!     "metadata": {"display_phone_number", "phone_number_id"},
//!     "statuses": [{"id": <wamid>, "status", "timestamp", "recipient_id",
//!                   "conversation": {"id", "expiration_timestamp"?, "origin": {"type"}}?,
//!                   "pricing": {"billable", "pricing_model", "category"}?,
//!                   "biz_opaque_callback_data"?, "errors"?: [...]}]
//!     | "contacts": [{"profile": {"name"}, "wa_id"}],
//!       "messages": [{"from", "id", "timestamp", "type", <type>: {...}}]}}]}]}
//! ```
//!
//! As in Meta's examples, `sent` carries the conversation with its expiration and the pricing,
//! `delivered` the conversation without expiration and the pricing, `read` neither, and
//! `failed` an `errors` array instead. Timestamps are Unix seconds as strings.

use serde_json::{Value, json};

use super::graph_error::CloudError;

/// A conversation lasts this long after it is opened (Meta's 24-hour window).
pub const CONVERSATION_SECONDS: u64 = 24 * 3600;

/// A status of an outgoing message, as the notifications name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Sent,
    Delivered,
    Read,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Delivered => "delivered",
            Status::Read => "read",
            Status::Failed => "failed",
        }
    }

    pub fn parse(name: &str) -> Option<Status> {
        [Status::Sent, Status::Delivered, Status::Read, Status::Failed]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

/// The business the notifications are about.
#[derive(Debug, Clone)]
pub(crate) struct Business {
    pub waba_id: String,
    pub display_phone_number: String,
    pub phone_number_id: String,
}

/// A conversation as a status names it.
#[derive(Debug, Clone)]
pub(crate) struct Conversation {
    pub id: String,
    /// `service`, `utility`, `marketing` or `authentication`: the origin type and the pricing
    /// category.
    pub category: &'static str,
    pub expiration_timestamp: u64,
}

/// One status of one message.
pub(crate) struct StatusEvent<'a> {
    pub wamid: &'a str,
    pub status: Status,
    pub timestamp: u64,
    pub recipient_id: &'a str,
    pub conversation: &'a Conversation,
    pub biz_opaque_callback_data: Option<&'a str>,
    /// For [`Status::Failed`].
    pub error: Option<&'a CloudError>,
}

/// One message from a user to the business.
pub(crate) struct InboundEvent<'a> {
    pub from: &'a str,
    pub profile_name: &'a str,
    pub id: &'a str,
    pub timestamp: u64,
    pub message_type: &'a str,
    pub content: &'a Value,
}

pub(crate) fn status(business: &Business, event: &StatusEvent<'_>) -> Value {
    let mut status = json!({
        "id": event.wamid,
        "status": event.status.as_str(),
        "timestamp": event.timestamp.to_string(),
        "recipient_id": event.recipient_id,
    });
    let conversation = &event.conversation;
    match event.status {
        Status::Sent | Status::Delivered => {
            status["conversation"] = json!({"id": conversation.id, "origin": {"type": conversation.category}});
            if event.status == Status::Sent {
                status["conversation"]["expiration_timestamp"] = json!(conversation.expiration_timestamp.to_string());
            }
            status["pricing"] = json!({"billable": true, "pricing_model": "CBP", "category": conversation.category});
        }
        Status::Read => {}
        Status::Failed => {
            let error = event.error.cloned().unwrap_or_else(CloudError::undeliverable);
            status["errors"] = json!([error.notification_error()]);
        }
    }
    if let Some(opaque) = event.biz_opaque_callback_data {
        status["biz_opaque_callback_data"] = json!(opaque);
    }
    envelope(business, json!({"statuses": [status]}))
}

pub(crate) fn inbound(business: &Business, event: &InboundEvent<'_>) -> Value {
    let mut message = json!({
        "from": event.from,
        "id": event.id,
        "timestamp": event.timestamp.to_string(),
        "type": event.message_type,
    });
    message[event.message_type] = event.content.clone();
    envelope(
        business,
        json!({
            "contacts": [{"profile": {"name": event.profile_name}, "wa_id": event.from}],
            "messages": [message],
        }),
    )
}

/// Wraps a change's `statuses` or `contacts`/`messages` in the notification around them.
fn envelope(business: &Business, fields: Value) -> Value {
    let mut value = json!({
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": business.display_phone_number,
            "phone_number_id": business.phone_number_id,
        },
    });
    if let (Some(value), Value::Object(fields)) = (value.as_object_mut(), fields) {
        value.extend(fields);
    }
    json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": business.waba_id, "changes": [{"value": value, "field": "messages"}]}],
    })
}
