//! Checks a send's body the way the Cloud API does, as far as a gateway can get it wrong: the
//! envelope (`messaging_product`, `recipient_type`, `to`, `type`, `context`,
//! `biz_opaque_callback_data`) and the object named by `type` (Meta's "Messages" reference of
//! `POST /{phone-number-id}/messages`). It does not judge content the network would (template
//! names, media ids, flow ids): those always pass.
//!
//! Codes: a missing envelope parameter is 100 (Invalid parameter), a missing field inside the
//! message object is 131008 (Required parameter is missing), a value of the wrong kind is 131009
//! (Parameter value is not valid). `details` names the field.

use serde_json::{Map, Value};

use super::graph_error::CloudError;

/// Most characters of a text message's body.
const MAX_TEXT_CHARS: usize = 4096;
/// Most characters of `biz_opaque_callback_data`.
const MAX_OPAQUE_CHARS: usize = 512;
/// Digits a phone number may have (E.164 allows 15; the API tolerates a little more).
const PHONE_DIGITS: std::ops::RangeInclusive<usize> = 5..=20;
/// Reply buttons an interactive `button` message may carry.
const MAX_REPLY_BUTTONS: usize = 3;

/// The message types the fake accepts, each sent under the key of its name.
pub const MESSAGE_TYPES: [&str; 11] = [
    "text",
    "image",
    "audio",
    "video",
    "document",
    "sticker",
    "template",
    "location",
    "contacts",
    "interactive",
    "reaction",
];

const INTERACTIVE_TYPES: [&str; 8] = [
    "button",
    "list",
    "cta_url",
    "flow",
    "product",
    "product_list",
    "catalog_message",
    "location_request_message",
];

/// A send that passed: what the answer and the notifications need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// `to` as given (the answer's `contacts[].input`).
    pub to: String,
    /// `to` as digits only (the answer's `contacts[].wa_id`, the statuses' `recipient_id`).
    pub wa_id: String,
    pub message_type: String,
    pub biz_opaque_callback_data: Option<String>,
}

type Checks = Result<(), CloudError>;

/// Checks a whole send body.
pub fn check_send(body: &Value) -> Result<Checked, CloudError> {
    let Some(envelope) = body.as_object() else {
        return Err(CloudError::invalid_parameter(
            "The parameter messaging_product is required.",
        ));
    };
    match envelope.get("messaging_product") {
        None => {
            return Err(CloudError::invalid_parameter(
                "The parameter messaging_product is required.",
            ));
        }
        Some(Value::String(p)) if p == "whatsapp" => {}
        Some(_) => {
            return Err(CloudError::invalid_parameter(
                "Param messaging_product must be one of {WHATSAPP}.",
            ));
        }
    }
    if let Some(kind) = envelope.get("recipient_type")
        && !matches!(kind.as_str(), Some("individual" | "group"))
    {
        return Err(value_invalid("recipient_type", "must be \"individual\" or \"group\""));
    }
    let to = match envelope.get("to") {
        None => return Err(CloudError::invalid_parameter("The parameter to is required.")),
        Some(to) => to.as_str().ok_or_else(|| value_invalid("to", "must be a string"))?,
    };
    let wa_id = phone_digits(to).ok_or_else(|| value_invalid("to", "is not a valid phone number"))?;
    let message_type = match envelope.get("type") {
        // The API's default type.
        None => "text",
        Some(t) => t
            .as_str()
            .filter(|t| MESSAGE_TYPES.contains(t))
            .ok_or_else(|| value_invalid("type", &format!("must be one of {}", MESSAGE_TYPES.join(", "))))?,
    };
    let Some(object) = envelope.get(message_type) else {
        return Err(CloudError::invalid_parameter(&format!(
            "The parameter {message_type} is required."
        )));
    };
    check_object(message_type, object)?;
    if let Some(context) = envelope.get("context") {
        required_str(context, "context", "message_id")?;
    }
    let opaque = match envelope.get("biz_opaque_callback_data") {
        None => None,
        Some(Value::String(s)) if s.chars().count() <= MAX_OPAQUE_CHARS => Some(s.clone()),
        Some(_) => {
            return Err(value_invalid(
                "biz_opaque_callback_data",
                &format!("must be a string of at most {MAX_OPAQUE_CHARS} characters"),
            ));
        }
    };
    Ok(Checked {
        to: to.to_string(),
        wa_id,
        message_type: message_type.to_string(),
        biz_opaque_callback_data: opaque,
    })
}

/// `to` without `+`, spaces, dashes and parentheses, if what remains is a phone number.
fn phone_digits(to: &str) -> Option<String> {
    let digits: String = to
        .chars()
        .filter(|c| !matches!(c, '+' | ' ' | '-' | '(' | ')'))
        .collect();
    (PHONE_DIGITS.contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit())).then_some(digits)
}

fn check_object(message_type: &str, object: &Value) -> Checks {
    match message_type {
        "text" => text(object),
        "image" | "video" | "document" | "audio" | "sticker" => media(message_type, object),
        "template" => template(object),
        "location" => location(object),
        "contacts" => contacts(object),
        "interactive" => interactive(object),
        "reaction" => {
            required_str(object, "reaction", "message_id")?;
            // An empty emoji removes a reaction.
            string_field(object, "reaction", "emoji").map(|_| ())
        }
        _ => Err(value_invalid("type", "is not supported")),
    }
}

fn text(object: &Value) -> Checks {
    let body = required_str(object, "text", "body")?;
    if body.chars().count() > MAX_TEXT_CHARS {
        return Err(value_invalid(
            "text.body",
            &format!("is longer than {MAX_TEXT_CHARS} characters"),
        ));
    }
    match object.get("preview_url") {
        None | Some(Value::Bool(_)) => Ok(()),
        Some(_) => Err(value_invalid("text.preview_url", "must be a boolean")),
    }
}

fn media(kind: &str, object: &Value) -> Checks {
    let fields = as_object(object, kind)?;
    match (fields.get("id"), fields.get("link")) {
        (Some(_), Some(_)) => return Err(value_invalid(kind, "takes either id or link, not both")),
        (None, None) => {
            return Err(CloudError::required_parameter_missing(&format!(
                "{kind}: either id or link is required"
            )));
        }
        (Some(_), None) => {
            required_str(object, kind, "id")?;
        }
        (None, Some(_)) => {
            let link = required_str(object, kind, "link")?;
            if !(link.starts_with("https://") || link.starts_with("http://")) {
                return Err(value_invalid(&format!("{kind}.link"), "must be an http(s) URL"));
            }
        }
    }
    if fields.contains_key("caption") && !matches!(kind, "image" | "video" | "document") {
        return Err(value_invalid(
            &format!("{kind}.caption"),
            "is not supported for this type",
        ));
    }
    if fields.contains_key("filename") && kind != "document" {
        return Err(value_invalid(&format!("{kind}.filename"), "is only for documents"));
    }
    for optional in ["caption", "filename"] {
        if fields.contains_key(optional) {
            string_field(object, kind, optional)?;
        }
    }
    Ok(())
}

fn template(object: &Value) -> Checks {
    required_str(object, "template", "name")?;
    let language = object
        .get("language")
        .ok_or_else(|| CloudError::required_parameter_missing("template.language is required"))?;
    required_str(language, "template.language", "code")?;
    match object.get("components") {
        None | Some(Value::Array(_)) => Ok(()),
        Some(_) => Err(value_invalid("template.components", "must be an array")),
    }
}

fn location(object: &Value) -> Checks {
    for (name, limit) in [("latitude", 90.0), ("longitude", 180.0)] {
        let value = object
            .get(name)
            .ok_or_else(|| CloudError::required_parameter_missing(&format!("location.{name} is required")))?;
        match value.as_f64() {
            Some(v) if (-limit..=limit).contains(&v) => {}
            _ => return Err(value_invalid(&format!("location.{name}"), "must be a number in range")),
        }
    }
    for optional in ["name", "address"] {
        if object.get(optional).is_some() {
            string_field(object, "location", optional)?;
        }
    }
    Ok(())
}

fn contacts(object: &Value) -> Checks {
    let list = object
        .as_array()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| value_invalid("contacts", "must be a non-empty array"))?;
    for (i, contact) in list.iter().enumerate() {
        let name = contact
            .get("name")
            .ok_or_else(|| CloudError::required_parameter_missing(&format!("contacts[{i}].name is required")))?;
        required_str(name, &format!("contacts[{i}].name"), "formatted_name")?;
    }
    Ok(())
}

fn interactive(object: &Value) -> Checks {
    let kind = required_str(object, "interactive", "type")?;
    if !INTERACTIVE_TYPES.contains(&kind) {
        return Err(value_invalid(
            "interactive.type",
            &format!("must be one of {}", INTERACTIVE_TYPES.join(", ")),
        ));
    }
    if kind != "product" {
        let body = object
            .get("body")
            .ok_or_else(|| CloudError::required_parameter_missing("interactive.body is required"))?;
        required_str(body, "interactive.body", "text")?;
    }
    let action = object
        .get("action")
        .ok_or_else(|| CloudError::required_parameter_missing("interactive.action is required"))?;
    as_object(action, "interactive.action")?;
    match kind {
        "button" => reply_buttons(action),
        "list" => {
            required_str(action, "interactive.action", "button")?;
            match action.get("sections").and_then(Value::as_array) {
                Some(sections) if !sections.is_empty() => Ok(()),
                _ => Err(value_invalid(
                    "interactive.action.sections",
                    "must be a non-empty array",
                )),
            }
        }
        "cta_url" => {
            expect_name(action, "cta_url")?;
            let parameters = required(action, "interactive.action", "parameters")?;
            required_str(parameters, "interactive.action.parameters", "display_text")?;
            required_str(parameters, "interactive.action.parameters", "url").map(|_| ())
        }
        "flow" => flow(action),
        _ => Ok(()),
    }
}

fn reply_buttons(action: &Value) -> Checks {
    let buttons = action
        .get("buttons")
        .and_then(Value::as_array)
        .filter(|b| (1..=MAX_REPLY_BUTTONS).contains(&b.len()))
        .ok_or_else(|| {
            value_invalid(
                "interactive.action.buttons",
                &format!("must hold 1 to {MAX_REPLY_BUTTONS} buttons"),
            )
        })?;
    for (i, button) in buttons.iter().enumerate() {
        let path = format!("interactive.action.buttons[{i}]");
        if required_str(button, &path, "type")? != "reply" {
            return Err(value_invalid(&format!("{path}.type"), "must be \"reply\""));
        }
        let reply = required(button, &path, "reply")?;
        required_str(reply, &format!("{path}.reply"), "id")?;
        required_str(reply, &format!("{path}.reply"), "title")?;
    }
    Ok(())
}

/// `interactive.type = "flow"` (Meta's "Sending a Flow"): `action.name = "flow"` and
/// `action.parameters` with `flow_message_version` "3", `flow_cta`, and `flow_id` or `flow_name`.
fn flow(action: &Value) -> Checks {
    const PATH: &str = "interactive.action.parameters";
    expect_name(action, "flow")?;
    let parameters = required(action, "interactive.action", "parameters")?;
    if required_str(parameters, PATH, "flow_message_version")? != "3" {
        return Err(value_invalid(&format!("{PATH}.flow_message_version"), "must be \"3\""));
    }
    required_str(parameters, PATH, "flow_cta")?;
    match (parameters.get("flow_id"), parameters.get("flow_name")) {
        (Some(_), Some(_)) => return Err(value_invalid(PATH, "takes flow_id or flow_name, not both")),
        (None, None) => {
            return Err(CloudError::required_parameter_missing(&format!(
                "{PATH}: flow_id or flow_name is required"
            )));
        }
        (Some(_), None) => required_str(parameters, PATH, "flow_id").map(|_| ())?,
        (None, Some(_)) => required_str(parameters, PATH, "flow_name").map(|_| ())?,
    }
    if let Some(action) = parameters.get("flow_action")
        && !matches!(action.as_str(), Some("navigate" | "data_exchange"))
    {
        return Err(value_invalid(
            &format!("{PATH}.flow_action"),
            "must be \"navigate\" or \"data_exchange\"",
        ));
    }
    if let Some(payload) = parameters.get("flow_action_payload") {
        required_str(payload, &format!("{PATH}.flow_action_payload"), "screen")?;
    }
    Ok(())
}

fn expect_name(action: &Value, name: &str) -> Checks {
    if required_str(action, "interactive.action", "name")? == name {
        Ok(())
    } else {
        Err(value_invalid("interactive.action.name", &format!("must be \"{name}\"")))
    }
}

fn as_object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, CloudError> {
    value
        .as_object()
        .ok_or_else(|| value_invalid(path, "must be an object"))
}

fn required<'a>(parent: &'a Value, path: &str, name: &str) -> Result<&'a Value, CloudError> {
    as_object(parent, path)?
        .get(name)
        .ok_or_else(|| CloudError::required_parameter_missing(&format!("{path}.{name} is required")))
}

/// A required, non-empty string field.
fn required_str<'a>(parent: &'a Value, path: &str, name: &str) -> Result<&'a str, CloudError> {
    match required(parent, path, name)?.as_str() {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(value_invalid(&format!("{path}.{name}"), "must be a non-empty string")),
    }
}

/// A present field that must be a string (possibly empty).
fn string_field<'a>(parent: &'a Value, path: &str, name: &str) -> Result<&'a str, CloudError> {
    required(parent, path, name)?
        .as_str()
        .ok_or_else(|| value_invalid(&format!("{path}.{name}"), "must be a string"))
}

fn value_invalid(field: &str, what: &str) -> CloudError {
    CloudError::parameter_value_invalid(&format!("{field} {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn send(message_type: &str, object: Value) -> Value {
        json!({"messaging_product": "whatsapp", "to": "+1 (555) 010-0001", "type": message_type, message_type: object})
    }

    fn code_of(body: Value) -> (u32, String) {
        let error = check_send(&body).expect_err("refused");
        (error.code, error.details.unwrap_or_default())
    }

    #[test]
    fn every_documented_type_passes_in_its_minimal_form() {
        let flow = json!({"type": "flow", "body": {"text": "Book"}, "action": {"name": "flow", "parameters": {
            "flow_message_version": "3", "flow_cta": "Open", "flow_id": "1234",
            "flow_action": "navigate", "flow_action_payload": {"screen": "START"}}}});
        let cases = [
            send("text", json!({"body": "hi"})),
            send("image", json!({"link": "https://example.com/a.jpg", "caption": "c"})),
            send("audio", json!({"id": "m1"})),
            send("video", json!({"id": "m2"})),
            send("document", json!({"id": "m3", "filename": "a.pdf"})),
            send("sticker", json!({"id": "m4"})),
            send(
                "template",
                json!({"name": "hello_world", "language": {"code": "en_US"}}),
            ),
            send("location", json!({"latitude": 52.5, "longitude": 13.4})),
            send("contacts", json!([{"name": {"formatted_name": "Ann"}}])),
            send("interactive", flow),
            send("reaction", json!({"message_id": "wamid.X", "emoji": ""})),
        ];
        for body in cases {
            let checked = check_send(&body).unwrap_or_else(|e| panic!("{body}: {e:?}"));
            assert_eq!(checked.wa_id, "15550100001");
        }
    }

    #[test]
    fn envelope_faults_get_code_100_and_values_131009() {
        assert_eq!(code_of(json!({"to": "15550100001", "text": {"body": "x"}})).0, 100);
        assert_eq!(
            code_of(json!({"messaging_product": "sms", "to": "1555", "text": {}})).0,
            100
        );
        let no_to = json!({"messaging_product": "whatsapp", "text": {"body": "x"}});
        assert_eq!(code_of(no_to), (100, "The parameter to is required.".to_string()));
        let bad_to = json!({"messaging_product": "whatsapp", "to": "call me", "text": {"body": "x"}});
        assert_eq!(code_of(bad_to), (131009, "to is not a valid phone number".to_string()));
        let no_object = json!({"messaging_product": "whatsapp", "to": "15550100001", "type": "image"});
        assert_eq!(code_of(no_object).0, 100);
        let bad_type = json!({"messaging_product": "whatsapp", "to": "15550100001", "type": "fax", "fax": {}});
        assert_eq!(code_of(bad_type).0, 131009);
    }

    #[test]
    fn object_faults_name_the_field() {
        assert_eq!(
            code_of(send("text", json!({}))),
            (131008, "text.body is required".to_string())
        );
        assert_eq!(code_of(send("audio", json!({"id": "m", "caption": "c"}))).0, 131009);
        assert_eq!(code_of(send("image", json!({}))).0, 131008);
        assert_eq!(
            code_of(send("location", json!({"latitude": 91, "longitude": 0}))).0,
            131009
        );
        let wrong_version = json!({"type": "flow", "body": {"text": "b"}, "action": {"name": "flow",
            "parameters": {"flow_message_version": "2", "flow_cta": "c", "flow_id": "1"}}});
        assert_eq!(
            code_of(send("interactive", wrong_version)),
            (
                131009,
                "interactive.action.parameters.flow_message_version must be \"3\"".to_string()
            )
        );
    }
}
