use serde_json::json;

use super::*;

fn refused(body: Value) -> Refusal {
    validate(&body).expect_err("refused")
}

fn missing(path: &str) -> Refusal {
    Refusal::Missing(path.into())
}

fn is_invalid_at(refusal: &Refusal, at: &str) -> bool {
    matches!(refusal, Refusal::Invalid { path, .. } if path == at)
}

#[test]
fn a_text_message_passes_and_type_defaults_to_text() {
    let ok = validate(&json!({"to": "+1 (555) 010-0000", "text": {"body": "hi"}})).unwrap();
    assert_eq!(ok.kind, MessageType::Text);
    assert_eq!(ok.to, "+1 (555) 010-0000");
}

#[test]
fn every_message_type_passes_in_its_minimal_form() {
    let bodies = [
        json!({"to": "15550100000", "type": "image", "image": {"link": "https://example.com/a.png", "caption": "c"}}),
        json!({"to": "15550100000", "type": "document", "document": {"id": "abc", "filename": "a.pdf"}}),
        json!({"to": "15550100000", "type": "audio", "audio": {"id": "abc"}}),
        json!({"to": "15550100000", "type": "video", "video": {"id": "abc"}}),
        json!({"to": "15550100000", "type": "sticker", "sticker": {"id": "abc"}}),
        json!({"to": "15550100000", "type": "template", "template": {"namespace": "ns", "name": "n", "language": {"policy": "deterministic", "code": "en"}, "components": [{"type": "body"}]}}),
        json!({"to": "15550100000", "type": "location", "location": {"longitude": -122.4, "latitude": 37.7, "name": "x"}}),
        json!({"to": "15550100000", "type": "contacts", "contacts": [{"name": {"formatted_name": "Ann"}, "phones": []}]}),
        json!({"to": "15550100000", "type": "interactive", "interactive": {"type": "button", "body": {"text": "?"}, "action": {"buttons": [{}]}}}),
        json!({"to": "15550100000", "type": "interactive", "interactive": {"type": "list", "body": {"text": "?"}, "action": {"button": "b", "sections": [{}]}}}),
    ];
    for body in bodies {
        assert!(validate(&body).is_ok(), "{body}");
    }
}

#[test]
fn a_body_that_is_not_an_object_is_invalid() {
    assert!(is_invalid_at(&refused(json!([1])), "body"));
}

#[test]
fn a_missing_recipient_is_1008_to() {
    assert_eq!(refused(json!({"text": {"body": "hi"}})), missing("to"));
}

#[test]
fn a_recipient_that_is_not_a_phone_number_is_invalid() {
    for to in [json!("abc"), json!("12"), json!(15550100000u64), json!("1".repeat(21))] {
        assert!(is_invalid_at(&refused(json!({"to": to, "text": {"body": "hi"}})), "to"));
    }
}

#[test]
fn an_unknown_type_is_invalid() {
    assert!(is_invalid_at(
        &refused(json!({"to": "15550100000", "type": "fax"})),
        "type"
    ));
}

#[test]
fn a_recipient_type_other_than_individual_is_invalid() {
    let body = json!({"to": "15550100000", "recipient_type": "group", "text": {"body": "hi"}});
    assert!(is_invalid_at(&refused(body), "recipient_type"));
}

#[test]
fn the_object_named_by_type_is_required() {
    assert_eq!(refused(json!({"to": "15550100000", "type": "image"})), missing("image"));
}

#[test]
fn an_object_of_another_type_is_an_unknown_parameter() {
    let body = json!({"to": "15550100000", "text": {"body": "hi"}, "image": {"id": "x"}});
    assert_eq!(refused(body), Refusal::Unknown("image".into()));
}

#[test]
fn an_unknown_key_inside_the_content_is_named_with_its_path() {
    let body = json!({"to": "15550100000", "text": {"body": "hi", "colour": "red"}});
    assert_eq!(refused(body), Refusal::Unknown("text.colour".into()));
}

#[test]
fn a_missing_text_body_is_1008_text_body() {
    assert_eq!(refused(json!({"to": "15550100000", "text": {}})), missing("text.body"));
}

#[test]
fn a_text_of_4096_characters_passes_and_4097_is_too_long() {
    let at_limit = "é".repeat(MAX_TEXT_CHARS);
    assert!(validate(&json!({"to": "15550100000", "text": {"body": at_limit}})).is_ok());
    let over = "é".repeat(MAX_TEXT_CHARS + 1);
    assert_eq!(
        refused(json!({"to": "15550100000", "text": {"body": over}})),
        Refusal::TooLong {
            path: "text.body".into(),
            max: MAX_TEXT_CHARS
        }
    );
}

#[test]
fn an_empty_text_body_is_invalid() {
    assert!(is_invalid_at(
        &refused(json!({"to": "15550100000", "text": {"body": "  "}})),
        "text.body"
    ));
}

#[test]
fn preview_url_must_be_a_boolean() {
    let body = json!({"to": "15550100000", "preview_url": "yes", "text": {"body": "hi"}});
    assert!(is_invalid_at(&refused(body), "preview_url"));
}

#[test]
fn media_without_id_or_link_is_1008_id() {
    let body = json!({"to": "15550100000", "type": "video", "video": {"caption": "c"}});
    assert_eq!(refused(body), missing("video.id"));
}

#[test]
fn media_with_both_id_and_link_is_invalid() {
    let body = json!({"to": "15550100000", "type": "image", "image": {"id": "a", "link": "https://x.org/a"}});
    assert!(is_invalid_at(&refused(body), "image"));
}

#[test]
fn a_media_link_must_be_an_http_url() {
    for link in ["ftp://x.org/a", "not a url", "https://"] {
        let body = json!({"to": "15550100000", "type": "audio", "audio": {"link": link}});
        assert!(is_invalid_at(&refused(body), "audio.link"), "{link}");
    }
}

#[test]
fn a_caption_is_allowed_only_where_on_premises_allows_it() {
    let body = json!({"to": "15550100000", "type": "sticker", "sticker": {"id": "a", "caption": "c"}});
    assert_eq!(refused(body), Refusal::Unknown("sticker.caption".into()));
}

#[test]
fn a_template_needs_its_language_code() {
    let body =
        json!({"to": "15550100000", "type": "template", "template": {"namespace": "ns", "name": "n", "language": {}}});
    assert_eq!(refused(body), missing("template.language.code"));
}

#[test]
fn a_template_language_policy_is_deterministic_or_fallback() {
    let body = json!({"to": "15550100000", "type": "template", "template": {"namespace": "ns", "name": "n", "language": {"code": "en", "policy": "random"}}});
    assert!(is_invalid_at(&refused(body), "template.language.policy"));
}

#[test]
fn a_template_component_needs_a_type() {
    let body = json!({"to": "15550100000", "type": "template", "template": {"namespace": "ns", "name": "n", "language": {"code": "en"}, "components": [{"type": "header"}, {}]}});
    assert_eq!(refused(body), missing("template.components[1].type"));
}

#[test]
fn a_location_needs_coordinates_in_range() {
    let no_latitude = json!({"to": "15550100000", "type": "location", "location": {"longitude": 1.0}});
    assert_eq!(refused(no_latitude), missing("location.latitude"));
    let off_earth = json!({"to": "15550100000", "type": "location", "location": {"longitude": 181.0, "latitude": 0}});
    assert!(is_invalid_at(&refused(off_earth), "location.longitude"));
}

#[test]
fn contacts_must_be_a_non_empty_array() {
    let empty = json!({"to": "15550100000", "type": "contacts", "contacts": []});
    assert!(is_invalid_at(&refused(empty), "contacts"));
}

#[test]
fn each_contact_needs_a_formatted_name_named_by_its_index() {
    let body =
        json!({"to": "15550100000", "type": "contacts", "contacts": [{"name": {"formatted_name": "A"}}, {"name": {}}]});
    assert_eq!(refused(body), missing("contacts[1].name.formatted_name"));
}

#[test]
fn an_interactive_message_needs_a_known_type() {
    let body = json!({"to": "15550100000", "type": "interactive", "interactive": {"type": "carousel", "action": {}}});
    assert!(is_invalid_at(&refused(body), "interactive.type"));
}

#[test]
fn an_interactive_button_message_needs_one_to_three_buttons() {
    let body = json!({"to": "15550100000", "type": "interactive", "interactive": {"type": "button", "body": {"text": "?"}, "action": {"buttons": [{}, {}, {}, {}]}}});
    assert!(is_invalid_at(&refused(body), "interactive.action.buttons"));
}

#[test]
fn an_interactive_list_needs_a_body_text() {
    let body = json!({"to": "15550100000", "type": "interactive", "interactive": {"type": "list", "action": {"button": "b", "sections": [{}]}}});
    assert_eq!(refused(body), missing("interactive.body"));
}

#[test]
fn a_null_counts_as_missing() {
    assert_eq!(refused(json!({"to": null, "text": {"body": "hi"}})), missing("to"));
}
