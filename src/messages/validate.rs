//! The On-Premises validation of `POST /v1/messages` (spec §7): every refusal names the field
//! path (`text.body`, `contacts[0].name.formatted_name`) and carries the On-Premises code
//! (1008 missing, 1009 bad value, 1001 too long, 1010 unknown parameter).

use serde_json::{Map, Value};

/// Longest text body, in characters.
pub const MAX_TEXT_CHARS: usize = 4096;
/// Longest media caption and interactive body text, in characters.
pub const MAX_CAPTION_CHARS: usize = 1024;

/// Why a message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}: missing")]
    Missing(String),
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
    #[error("{path}: longer than {max} characters")]
    TooLong { path: String, max: usize },
    #[error("{0}: unknown parameter")]
    Unknown(String),
}

/// The kinds of message of spec §7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Text,
    Image,
    Document,
    Audio,
    Video,
    Sticker,
    Template,
    Location,
    Contacts,
    Interactive,
}

impl MessageType {
    const ALL: [MessageType; 10] = [
        MessageType::Text,
        MessageType::Image,
        MessageType::Document,
        MessageType::Audio,
        MessageType::Video,
        MessageType::Sticker,
        MessageType::Template,
        MessageType::Location,
        MessageType::Contacts,
        MessageType::Interactive,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MessageType::Text => "text",
            MessageType::Image => "image",
            MessageType::Document => "document",
            MessageType::Audio => "audio",
            MessageType::Video => "video",
            MessageType::Sticker => "sticker",
            MessageType::Template => "template",
            MessageType::Location => "location",
            MessageType::Contacts => "contacts",
            MessageType::Interactive => "interactive",
        }
    }

    fn parse(name: &str) -> Option<MessageType> {
        MessageType::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// A message that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The recipient as given.
    pub to: String,
    pub kind: MessageType,
}

type Result<T> = std::result::Result<T, Refusal>;

/// Validates a parsed request body.
pub fn validate(body: &Value) -> Result<Outgoing> {
    let top = object(body, "body")?;
    let kind = match top.get("type") {
        // On-Premises sends text when `type` is left out.
        None => MessageType::Text,
        Some(v) => {
            let name = string(v, "type")?;
            MessageType::parse(name).ok_or_else(|| invalid("type", format!("unknown message type {name:?}")))?
        }
    };
    let allowed: &[&str] = match kind {
        MessageType::Text => &["to", "recipient_type", "type", "preview_url", "text"],
        _ => &["to", "recipient_type", "type", kind.name()],
    };
    only_keys(top, "", allowed)?;
    let to = recipient(required(top, "", "to")?)?;
    if let Some(v) = top.get("recipient_type")
        && string(v, "recipient_type")? != "individual"
    {
        return Err(invalid("recipient_type", "must be \"individual\""));
    }
    if let Some(v) = top.get("preview_url") {
        boolean(v, "preview_url")?;
    }
    let content = required(top, "", kind.name())?;
    match kind {
        MessageType::Text => text(content),
        MessageType::Image | MessageType::Video => media(content, kind.name(), &["caption"]),
        MessageType::Document => media(content, "document", &["caption", "filename"]),
        MessageType::Audio | MessageType::Sticker => media(content, kind.name(), &[]),
        MessageType::Template => template(content),
        MessageType::Location => location(content),
        MessageType::Contacts => contacts(content),
        MessageType::Interactive => interactive(content),
    }?;
    Ok(Outgoing { to, kind })
}

/// A phone number or WhatsApp id: digits, optionally with `+`, spaces, dashes and parentheses.
fn recipient(v: &Value) -> Result<String> {
    let to = string(v, "to")?;
    let digits = to.chars().filter(char::is_ascii_digit).count();
    let allowed = to
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '(' | ')'));
    if !allowed || !(5..=20).contains(&digits) {
        return Err(invalid("to", "must be a phone number (5 to 20 digits)"));
    }
    Ok(to.to_owned())
}

fn text(v: &Value) -> Result<()> {
    let obj = object(v, "text")?;
    only_keys(obj, "text", &["body"])?;
    let body = string(required(obj, "text", "body")?, "text.body")?;
    bounded_text(body, "text.body", MAX_TEXT_CHARS)
}

fn media(v: &Value, kind: &str, extra: &[&str]) -> Result<()> {
    let obj = object(v, kind)?;
    let mut allowed = vec!["id", "link"];
    allowed.extend_from_slice(extra);
    only_keys(obj, kind, &allowed)?;
    match (obj.get("id"), obj.get("link")) {
        (None, None) => return Err(Refusal::Missing(format!("{kind}.id"))),
        (Some(_), Some(_)) => return Err(invalid(kind, "give exactly one of id and link")),
        (Some(id), None) => {
            non_empty(string(id, &format!("{kind}.id"))?, &format!("{kind}.id"))?;
        }
        (None, Some(link)) => http_url(string(link, &format!("{kind}.link"))?, &format!("{kind}.link"))?,
    }
    if let Some(caption) = obj.get("caption") {
        let path = format!("{kind}.caption");
        bounded_text(string(caption, &path)?, &path, MAX_CAPTION_CHARS)?;
    }
    if let Some(filename) = obj.get("filename") {
        let path = format!("{kind}.filename");
        non_empty(string(filename, &path)?, &path)?;
    }
    Ok(())
}

fn template(v: &Value) -> Result<()> {
    let obj = object(v, "template")?;
    only_keys(obj, "template", &["namespace", "name", "language", "components"])?;
    for field in ["namespace", "name"] {
        let path = format!("template.{field}");
        non_empty(string(required(obj, "template", field)?, &path)?, &path)?;
    }
    let language = object(required(obj, "template", "language")?, "template.language")?;
    only_keys(language, "template.language", &["policy", "code"])?;
    non_empty(
        string(
            required(language, "template.language", "code")?,
            "template.language.code",
        )?,
        "template.language.code",
    )?;
    if let Some(policy) = language.get("policy")
        && !matches!(
            string(policy, "template.language.policy")?,
            "deterministic" | "fallback"
        )
    {
        return Err(invalid(
            "template.language.policy",
            "must be \"deterministic\" or \"fallback\"",
        ));
    }
    if let Some(components) = obj.get("components") {
        for (i, component) in array(components, "template.components")?.iter().enumerate() {
            let path = format!("template.components[{i}]");
            let component = object(component, &path)?;
            non_empty(
                string(required(component, &path, "type")?, &format!("{path}.type"))?,
                &format!("{path}.type"),
            )?;
        }
    }
    Ok(())
}

fn location(v: &Value) -> Result<()> {
    let obj = object(v, "location")?;
    only_keys(obj, "location", &["longitude", "latitude", "name", "address"])?;
    for (field, limit) in [("latitude", 90.0), ("longitude", 180.0)] {
        let path = format!("location.{field}");
        let value = required(obj, "location", field)?
            .as_f64()
            .ok_or_else(|| invalid(&path, "must be a number"))?;
        if !(-limit..=limit).contains(&value) {
            return Err(invalid(&path, format!("must be between -{limit} and {limit}")));
        }
    }
    for field in ["name", "address"] {
        if let Some(v) = obj.get(field) {
            string(v, &format!("location.{field}"))?;
        }
    }
    Ok(())
}

fn contacts(v: &Value) -> Result<()> {
    let list = array(v, "contacts")?;
    if list.is_empty() {
        return Err(invalid("contacts", "must hold at least one contact"));
    }
    for (i, contact) in list.iter().enumerate() {
        let path = format!("contacts[{i}]");
        let obj = object(contact, &path)?;
        only_keys(
            obj,
            &path,
            &["addresses", "birthday", "emails", "name", "org", "phones", "urls"],
        )?;
        let name = object(required(obj, &path, "name")?, &format!("{path}.name"))?;
        let formatted = format!("{path}.name.formatted_name");
        non_empty(
            string(required(name, &format!("{path}.name"), "formatted_name")?, &formatted)?,
            &formatted,
        )?;
        for field in ["addresses", "emails", "phones", "urls"] {
            if let Some(v) = obj.get(field) {
                array(v, &format!("{path}.{field}"))?;
            }
        }
        if let Some(v) = obj.get("birthday") {
            string(v, &format!("{path}.birthday"))?;
        }
        if let Some(v) = obj.get("org") {
            object(v, &format!("{path}.org"))?;
        }
    }
    Ok(())
}

fn interactive(v: &Value) -> Result<()> {
    let obj = object(v, "interactive")?;
    only_keys(obj, "interactive", &["type", "header", "body", "footer", "action"])?;
    let kind = string(required(obj, "interactive", "type")?, "interactive.type")?;
    if !matches!(kind, "list" | "button" | "product" | "product_list") {
        return Err(invalid(
            "interactive.type",
            "must be one of list, button, product, product_list",
        ));
    }
    let action = object(required(obj, "interactive", "action")?, "interactive.action")?;
    if matches!(kind, "list" | "button") {
        let body = object(required(obj, "interactive", "body")?, "interactive.body")?;
        let text = string(required(body, "interactive.body", "text")?, "interactive.body.text")?;
        bounded_text(text, "interactive.body.text", MAX_CAPTION_CHARS)?;
    }
    match kind {
        "button" => {
            let buttons = array(
                required(action, "interactive.action", "buttons")?,
                "interactive.action.buttons",
            )?;
            if !(1..=3).contains(&buttons.len()) {
                return Err(invalid("interactive.action.buttons", "must hold 1 to 3 buttons"));
            }
        }
        "list" => {
            string(
                required(action, "interactive.action", "button")?,
                "interactive.action.button",
            )?;
            let sections = array(
                required(action, "interactive.action", "sections")?,
                "interactive.action.sections",
            )?;
            if !(1..=10).contains(&sections.len()) {
                return Err(invalid("interactive.action.sections", "must hold 1 to 10 sections"));
            }
        }
        _ => {}
    }
    for field in ["header", "footer"] {
        if let Some(v) = obj.get(field) {
            object(v, &format!("interactive.{field}"))?;
        }
    }
    Ok(())
}

// ---- field helpers -----------------------------------------------------------------------------

fn invalid(path: impl Into<String>, problem: impl Into<String>) -> Refusal {
    Refusal::Invalid {
        path: path.into(),
        problem: problem.into(),
    }
}

fn join(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_owned()
    } else {
        format!("{parent}.{field}")
    }
}

fn required<'a>(obj: &'a Map<String, Value>, parent: &str, field: &str) -> Result<&'a Value> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(Refusal::Missing(join(parent, field))),
        Some(v) => Ok(v),
    }
}

fn only_keys(obj: &Map<String, Value>, parent: &str, allowed: &[&str]) -> Result<()> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(Refusal::Unknown(join(parent, unknown))),
        None => Ok(()),
    }
}

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| invalid(path, "must be an object"))
}

fn array<'a>(v: &'a Value, path: &str) -> Result<&'a Vec<Value>> {
    v.as_array().ok_or_else(|| invalid(path, "must be an array"))
}

fn string<'a>(v: &'a Value, path: &str) -> Result<&'a str> {
    v.as_str().ok_or_else(|| invalid(path, "must be a string"))
}

fn boolean(v: &Value, path: &str) -> Result<bool> {
    v.as_bool().ok_or_else(|| invalid(path, "must be true or false"))
}

fn non_empty(s: &str, path: &str) -> Result<()> {
    if s.trim().is_empty() {
        return Err(invalid(path, "must not be empty"));
    }
    Ok(())
}

fn bounded_text(s: &str, path: &str, max: usize) -> Result<()> {
    non_empty(s, path)?;
    if s.chars().count() > max {
        return Err(Refusal::TooLong {
            path: path.to_owned(),
            max,
        });
    }
    Ok(())
}

fn http_url(s: &str, path: &str) -> Result<()> {
    match url::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(invalid(path, "must be an http or https URL")),
    }
}

#[cfg(test)]
mod tests;
