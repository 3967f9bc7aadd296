//! The Graph API error the Cloud API answers a refused request with, and the documented errors
//! the fake produces.
//!
//! Shape (Meta's "WhatsApp error codes" page, "Error response syntax", and the Graph API's
//! "Handling Errors" guide): `{"error": {"message", "type", "code", "error_subcode"?,
//! "error_data": {"messaging_product": "whatsapp", "details"}, "fbtrace_id"}}`. The same error
//! appears in a `failed` status notification as `{"code", "title", "message", "error_data":
//! {"details"}, "href"}` (the "Status messages webhook reference").

use serde_json::{Value, json};

/// Where the Cloud API's error codes are documented: the `href` of errors in notifications.
pub const ERROR_CODES_URL: &str = "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/";

/// The error types the Graph API names in `error.type`.
const OAUTH_EXCEPTION: &str = "OAuthException";
const GRAPH_METHOD_EXCEPTION: &str = "GraphMethodException";

/// One Cloud API error: what the HTTP answer carries, and what a `failed` status carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudError {
    /// The HTTP status of a synchronous answer (not part of a notification).
    pub http_status: u16,
    pub code: u32,
    pub subcode: Option<u32>,
    /// `error.type`: `OAuthException` for nearly every Cloud API error.
    pub kind: String,
    /// The code's title (Meta: do not build logic on it; `code` and `details` are what count).
    pub title: String,
    /// `error.message`: `(#code) title` for messaging errors.
    pub message: String,
    /// `error.error_data.details`: what exactly was wrong (names the field for a bad request).
    pub details: Option<String>,
}

impl CloudError {
    /// A messaging error as the Cloud API words them: `(#code) title`, type `OAuthException`.
    pub fn new(http_status: u16, code: u32, title: &str, details: Option<&str>) -> CloudError {
        CloudError {
            http_status,
            code,
            subcode: None,
            kind: OAUTH_EXCEPTION.to_string(),
            title: title.to_string(),
            message: format!("(#{code}) {title}"),
            details: details.map(str::to_string),
        }
    }

    /// 401, code 190: the bearer token is missing, malformed, expired or revoked.
    pub fn access_token_invalid() -> CloudError {
        CloudError {
            message: "Invalid OAuth access token - Cannot parse access token".to_string(),
            ..CloudError::new(401, 190, "Access token has expired", None)
        }
    }

    /// 400, code 100: a parameter is missing, unsupported or misspelled.
    pub fn invalid_parameter(details: &str) -> CloudError {
        CloudError::new(400, 100, "Invalid parameter", Some(details))
    }

    /// 400, code 131008: a required parameter of the message object is missing.
    pub fn required_parameter_missing(details: &str) -> CloudError {
        CloudError::new(400, 131008, "Required parameter is missing", Some(details))
    }

    /// 400, code 131009: a parameter has a value the API does not accept.
    pub fn parameter_value_invalid(details: &str) -> CloudError {
        CloudError::new(400, 131009, "Parameter value is not valid", Some(details))
    }

    /// 400, code 100, subcode 33: the path names an object (phone number id) that does not
    /// exist or that the token may not use.
    pub fn unknown_object(method: &str, id: &str) -> CloudError {
        CloudError {
            subcode: Some(33),
            kind: GRAPH_METHOD_EXCEPTION.to_string(),
            message: format!(
                "Unsupported {} request. Object with ID '{id}' does not exist, cannot be loaded due to missing \
                 permissions, or does not support this operation.",
                method.to_ascii_lowercase()
            ),
            ..CloudError::new(400, 100, "Invalid parameter", None)
        }
    }

    /// 400, code 2500: the path is not a Graph API path the fake knows.
    pub fn unknown_path(path: &str) -> CloudError {
        CloudError {
            message: format!("Unknown path components: {path}"),
            ..CloudError::new(400, 2500, "Unknown path components", None)
        }
    }

    /// 429, code 130429: the phone number's message throughput was reached; retry later.
    pub fn rate_limit_hit() -> CloudError {
        CloudError::new(
            429,
            130429,
            "Rate limit hit",
            Some("Cloud API message throughput has been reached."),
        )
    }

    /// 500, code 131000: the send failed for an unknown reason; retry later.
    pub fn something_went_wrong() -> CloudError {
        CloudError::new(
            500,
            131000,
            "Something went wrong",
            Some("Message failed to send because of an unknown error."),
        )
    }

    /// 503, code 131016: a service is temporarily unavailable; retry later.
    pub fn service_unavailable() -> CloudError {
        CloudError::new(
            503,
            131016,
            "Service unavailable",
            Some("A service is temporarily unavailable."),
        )
    }

    /// 400, code 131026: the message cannot be delivered to this recipient (not a WhatsApp
    /// user, terms not accepted, client too old). Also what a `failed` status carries.
    pub fn undeliverable() -> CloudError {
        CloudError::new(
            400,
            131026,
            "Message undeliverable",
            Some("Unable to deliver message. The recipient may not be a WhatsApp user."),
        )
    }

    /// The preset for a documented `code`, for the control API (`None` for other codes).
    pub fn for_code(code: u32) -> Option<CloudError> {
        Some(match code {
            100 => CloudError::invalid_parameter("scripted by the test"),
            190 => CloudError::access_token_invalid(),
            130429 => CloudError::rate_limit_hit(),
            131000 => CloudError::something_went_wrong(),
            131008 => CloudError::required_parameter_missing("scripted by the test"),
            131009 => CloudError::parameter_value_invalid("scripted by the test"),
            131016 => CloudError::service_unavailable(),
            131026 => CloudError::undeliverable(),
            _ => return None,
        })
    }

    /// The body of a synchronous error answer.
    pub fn envelope(&self, fbtrace_id: &str) -> Value {
        let mut error = json!({
            "message": self.message,
            "type": self.kind,
            "code": self.code,
            "fbtrace_id": fbtrace_id,
        });
        if let Some(subcode) = self.subcode {
            error["error_subcode"] = json!(subcode);
        }
        if let Some(details) = &self.details {
            error["error_data"] = json!({"messaging_product": "whatsapp", "details": details});
        }
        json!({ "error": error })
    }

    /// The entry of a `failed` status's `errors` array.
    pub fn notification_error(&self) -> Value {
        json!({
            "code": self.code,
            "title": self.title,
            "message": self.title,
            "error_data": {"details": self.details.as_deref().unwrap_or(&self.title)},
            "href": ERROR_CODES_URL,
        })
    }
}
