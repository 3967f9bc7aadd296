//! Application settings (spec §4): the typed model, its defaults, and validation of a PATCH.
//! No HTTP here; `api/settings.rs` carries requests to [`Settings`].
//!
//! A PATCH is validated whole against the current settings and produces the complete new
//! settings, which are then written as one durable record: either every field of the patch
//! applies or none does. Patches are serialized (one writer of the settings key at a time).

use coreq_storage::Store;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The storage key holding the settings document.
/// The store key the settings live under.
pub const KEY: &str = "application";
const AUTO_DOWNLOAD_KINDS: [&str; 6] = ["audio", "document", "voice", "video", "image", "sticker"];
const MAX_CONCURRENT_REQUESTS: [u64; 4] = [6, 12, 18, 24];
const LOG_LEVELS: [&str; 4] = ["info", "warning", "error", "fatal"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSettings {
    pub callback_persist: bool,
    pub callback_backoff_delay_ms: u64,
    pub max_callback_backoff_delay_ms: u64,
    pub gc_messages: bool,
    pub gc_media: bool,
    pub heartbeat_interval: u64,
    pub unhealthy_interval: u64,
    pub auto_download: Vec<String>,
    pub notify_user_change_number: bool,
    pub show_security_notifications: bool,
    pub skip_referral_media_download: bool,
    pub axolotl_context_striping_disabled: bool,
    pub webhook_url: Option<String>,
    pub max_concurrent_requests: u64,
    pub notify_sent: bool,
    pub notify_delivered: bool,
    pub notify_read: bool,
    /// Write-only: never returned, shown as `****` when set.
    pub signing_secret: Option<String>,
    pub verbose_logging: bool,
    pub log_level: String,
    pub db_garbagecollector_enable: Option<bool>,
    pub webhook_payload_conversation_pricingmodel_disabled: Option<bool>,
    /// The registered number, if any; read-only through the API.
    pub wa_id: Option<String>,
}

impl Default for AppSettings {
    fn default() -> Self {
        AppSettings {
            callback_persist: true,
            callback_backoff_delay_ms: 3000,
            max_callback_backoff_delay_ms: 900_000,
            gc_messages: true,
            gc_media: false,
            heartbeat_interval: 5,
            unhealthy_interval: 30,
            auto_download: Vec::new(),
            notify_user_change_number: false,
            show_security_notifications: false,
            skip_referral_media_download: false,
            axolotl_context_striping_disabled: false,
            webhook_url: None,
            max_concurrent_requests: 6,
            notify_sent: true,
            notify_delivered: true,
            notify_read: true,
            signing_secret: None,
            verbose_logging: false,
            log_level: "info".into(),
            db_garbagecollector_enable: None,
            webhook_payload_conversation_pricingmodel_disabled: None,
            wa_id: None,
        }
    }
}

/// Why a patch was refused, with the field's path (`webhooks.url`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// 1009: wrong type or value.
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    /// 1010: no such field.
    #[error("{0}: unknown parameter")]
    Unknown(String),
}

fn invalid(field: &str, problem: impl Into<String>) -> PatchError {
    PatchError::Invalid {
        field: field.to_owned(),
        problem: problem.into(),
    }
}

fn boolean(field: &str, v: &Value) -> Result<bool, PatchError> {
    v.as_bool().ok_or_else(|| invalid(field, "must be true or false"))
}

/// A positive integer given as a number or, where `strings` allows, a decimal string.
fn positive(field: &str, v: &Value, strings: bool) -> Result<u64, PatchError> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) if strings && !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        _ => None,
    };
    match n {
        Some(n) if n >= 1 => Ok(n),
        _ => Err(invalid(
            field,
            if strings {
                "must be a positive integer (number or decimal string)"
            } else {
                "must be a positive integer"
            },
        )),
    }
}

fn object<'a>(field: &str, v: &'a Value) -> Result<&'a Map<String, Value>, PatchError> {
    v.as_object().ok_or_else(|| invalid(field, "must be an object"))
}

impl AppSettings {
    /// The settings with `patch` applied, or the first problem found. `allow_http` permits
    /// `http://` webhook URLs (development only).
    pub fn patched(&self, patch: &Map<String, Value>, allow_http: bool) -> Result<AppSettings, PatchError> {
        let mut next = self.clone();
        for (name, v) in patch {
            next.set(name, v, allow_http)?;
        }
        if next.callback_backoff_delay_ms > next.max_callback_backoff_delay_ms {
            return Err(invalid(
                "callback_backoff_delay_ms",
                "must not exceed max_callback_backoff_delay_ms",
            ));
        }
        if next.unhealthy_interval <= next.heartbeat_interval {
            return Err(invalid("unhealthy_interval", "must be greater than heartbeat_interval"));
        }
        if let (Some(Value::Bool(alias)), Some(Value::Bool(sent))) = (
            patch.get("sent_status"),
            patch
                .get("webhooks")
                .and_then(|w| w.get("message"))
                .and_then(|m| m.get("sent")),
        ) && alias != sent
        {
            return Err(invalid("sent_status", "contradicts webhooks.message.sent"));
        }
        Ok(next)
    }

    fn set(&mut self, name: &str, v: &Value, allow_http: bool) -> Result<(), PatchError> {
        match name {
            "callback_persist" => self.callback_persist = boolean(name, v)?,
            "callback_backoff_delay_ms" => self.callback_backoff_delay_ms = positive(name, v, true)?,
            "max_callback_backoff_delay_ms" => self.max_callback_backoff_delay_ms = positive(name, v, true)?,
            "heartbeat_interval" => self.heartbeat_interval = positive(name, v, false)?,
            "unhealthy_interval" => self.unhealthy_interval = positive(name, v, false)?,
            "notify_user_change_number" => self.notify_user_change_number = boolean(name, v)?,
            "show_security_notifications" => self.show_security_notifications = boolean(name, v)?,
            "skip_referral_media_download" => self.skip_referral_media_download = boolean(name, v)?,
            "axolotl_context_striping_disabled" => self.axolotl_context_striping_disabled = boolean(name, v)?,
            "verbose_logging" => self.verbose_logging = boolean(name, v)?,
            "sent_status" => self.notify_sent = boolean(name, v)?,
            "db_garbagecollector_enable" => self.db_garbagecollector_enable = Some(boolean(name, v)?),
            "webhook_payload_conversation_pricingmodel_disabled" => {
                self.webhook_payload_conversation_pricingmodel_disabled = Some(boolean(name, v)?)
            }
            "log_level" => match v.as_str() {
                Some(level) if LOG_LEVELS.contains(&level) => self.log_level = level.to_owned(),
                _ => return Err(invalid(name, "must be one of info, warning, error, fatal")),
            },
            "pass_through" => {
                if boolean(name, v)? {
                    return Err(invalid(name, "cannot be enabled"));
                }
            }
            "wa_id" => return Err(invalid(name, "is read-only")),
            "garbagecollector_enable" => {
                for (sub, v) in object(name, v)? {
                    match sub.as_str() {
                        "messages" => self.gc_messages = boolean("garbagecollector_enable.messages", v)?,
                        "media" => self.gc_media = boolean("garbagecollector_enable.media", v)?,
                        other => return Err(PatchError::Unknown(format!("garbagecollector_enable.{other}"))),
                    }
                }
            }
            "media" => {
                for (sub, v) in object(name, v)? {
                    match sub.as_str() {
                        "auto_download" => self.auto_download = auto_download(v)?,
                        other => return Err(PatchError::Unknown(format!("media.{other}"))),
                    }
                }
            }
            "webhooks" => self.set_webhooks(object(name, v)?, allow_http)?,
            other => return Err(PatchError::Unknown(other.to_owned())),
        }
        Ok(())
    }

    fn set_webhooks(&mut self, webhooks: &Map<String, Value>, allow_http: bool) -> Result<(), PatchError> {
        for (sub, v) in webhooks {
            match sub.as_str() {
                "url" => self.webhook_url = webhook_url(v, allow_http)?,
                "max_concurrent_requests" => match v.as_u64() {
                    Some(n) if MAX_CONCURRENT_REQUESTS.contains(&n) => self.max_concurrent_requests = n,
                    _ => {
                        return Err(invalid(
                            "webhooks.max_concurrent_requests",
                            "must be one of 6, 12, 18, 24",
                        ));
                    }
                },
                "signing_secret" => match v.as_str() {
                    Some("") => self.signing_secret = None,
                    Some(s) if s.len() <= 256 => self.signing_secret = Some(s.to_owned()),
                    _ => {
                        return Err(invalid(
                            "webhooks.signing_secret",
                            "must be a string of at most 256 bytes",
                        ));
                    }
                },
                "message" => {
                    for (kind, v) in object("webhooks.message", v)? {
                        let field = format!("webhooks.message.{kind}");
                        let flag = match kind.as_str() {
                            "sent" => &mut self.notify_sent,
                            "delivered" => &mut self.notify_delivered,
                            "read" => &mut self.notify_read,
                            _ => return Err(PatchError::Unknown(field)),
                        };
                        *flag = boolean(&field, v)?;
                    }
                }
                other => return Err(PatchError::Unknown(format!("webhooks.{other}"))),
            }
        }
        Ok(())
    }

    /// The GET representation: every field with its value; the signing secret masked.
    pub fn to_json(&self) -> Value {
        let mut webhooks = json!({
            "max_concurrent_requests": self.max_concurrent_requests,
            "message": { "sent": self.notify_sent, "delivered": self.notify_delivered, "read": self.notify_read },
        });
        if let Some(url) = &self.webhook_url {
            webhooks["url"] = json!(url);
        }
        if self.signing_secret.is_some() {
            webhooks["signing_secret"] = json!("****");
        }
        let mut out = json!({
            "callback_persist": self.callback_persist,
            "callback_backoff_delay_ms": self.callback_backoff_delay_ms,
            "max_callback_backoff_delay_ms": self.max_callback_backoff_delay_ms,
            "garbagecollector_enable": { "messages": self.gc_messages, "media": self.gc_media },
            "heartbeat_interval": self.heartbeat_interval,
            "unhealthy_interval": self.unhealthy_interval,
            "media": { "auto_download": self.auto_download },
            "notify_user_change_number": self.notify_user_change_number,
            "show_security_notifications": self.show_security_notifications,
            "skip_referral_media_download": self.skip_referral_media_download,
            "axolotl_context_striping_disabled": self.axolotl_context_striping_disabled,
            "webhooks": webhooks,
            "sent_status": self.notify_sent,
            "verbose_logging": self.verbose_logging,
            "log_level": self.log_level,
            "pass_through": false,
        });
        if let Some(v) = self.db_garbagecollector_enable {
            out["db_garbagecollector_enable"] = json!(v);
        }
        if let Some(v) = self.webhook_payload_conversation_pricingmodel_disabled {
            out["webhook_payload_conversation_pricingmodel_disabled"] = json!(v);
        }
        if let Some(wa_id) = &self.wa_id {
            out["wa_id"] = json!(wa_id);
        }
        out
    }
}

fn auto_download(v: &Value) -> Result<Vec<String>, PatchError> {
    let field = "media.auto_download";
    let items = v.as_array().ok_or_else(|| invalid(field, "must be an array"))?;
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let kind = item.as_str().filter(|k| AUTO_DOWNLOAD_KINDS.contains(k));
        let Some(kind) = kind else {
            return Err(invalid(
                field,
                "values must be audio, document, voice, video, image or sticker",
            ));
        };
        if out.iter().any(|k| k == kind) {
            return Err(invalid(field, format!("{kind} is repeated")));
        }
        out.push(kind.to_owned());
    }
    Ok(out)
}

/// An absolute `https://` URL (or `http://` when allowed), kept verbatim with its query
/// string (the shared secret). An empty string removes the webhook.
fn webhook_url(v: &Value, allow_http: bool) -> Result<Option<String>, PatchError> {
    let field = "webhooks.url";
    let s = v.as_str().ok_or_else(|| invalid(field, "must be a string"))?;
    if s.is_empty() {
        return Ok(None);
    }
    let parsed = url::Url::parse(s).map_err(|e| invalid(field, format!("not an absolute URL: {e}")))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => return Err(invalid(field, "must be https:// (http:// needs --allow-http-webhooks)")),
        _ => return Err(invalid(field, "must be https://")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid(field, "has no host"));
    }
    Ok(Some(s.to_owned()))
}

/// The settings, stored durably, with serialized writers. Parts of the service that follow a
/// setting live (logging now, the dispatcher later) [`subscribe`](Settings::subscribe).
pub struct Settings {
    store: Store,
    writer: tokio::sync::Mutex<()>,
    allow_http_webhooks: bool,
    changes: tokio::sync::watch::Sender<AppSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Patch(#[from] PatchError),
    #[error(transparent)]
    Storage(#[from] coreq_storage::StorageError),
    #[error("stored settings do not decode: {0}")]
    Corrupt(String),
}

impl Settings {
    /// The settings service over `store`, starting from what it holds.
    pub fn open(store: Store, allow_http_webhooks: bool) -> Result<Settings, SettingsError> {
        let current = stored(&store)?;
        Ok(Settings {
            store,
            writer: tokio::sync::Mutex::new(()),
            allow_http_webhooks,
            changes: tokio::sync::watch::Sender::new(current),
        })
    }

    pub fn current(&self) -> Result<AppSettings, SettingsError> {
        stored(&self.store)
    }

    /// The current settings now, and every later change once it is durable.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<AppSettings> {
        self.changes.subscribe()
    }

    async fn write(&self, settings: &AppSettings) -> Result<(), SettingsError> {
        let bytes = serde_json::to_vec(settings).map_err(|e| SettingsError::Corrupt(e.to_string()))?;
        self.store.put_settings(vec![(KEY.to_owned(), Some(bytes))]).await?;
        self.changes.send_replace(settings.clone());
        Ok(())
    }

    /// Validates `patch` whole and applies it durably; returns the new settings.
    pub async fn patch(&self, patch: &Map<String, Value>) -> Result<AppSettings, SettingsError> {
        let _one_writer = self.writer.lock().await;
        let next = self.current()?.patched(patch, self.allow_http_webhooks)?;
        self.write(&next).await?;
        Ok(next)
    }

    /// Restores every default (the registered number is kept: it is not a setting).
    pub async fn reset(&self) -> Result<AppSettings, SettingsError> {
        let _one_writer = self.writer.lock().await;
        let next = AppSettings {
            wa_id: self.current()?.wa_id,
            ..AppSettings::default()
        };
        self.write(&next).await?;
        Ok(next)
    }
}

fn stored(store: &Store) -> Result<AppSettings, SettingsError> {
    match store.setting(KEY)? {
        None => Ok(AppSettings::default()),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| SettingsError::Corrupt(e.to_string())),
    }
}
