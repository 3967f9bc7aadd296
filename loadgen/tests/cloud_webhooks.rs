//! The fake Cloud API's network side over real HTTP: status and inbound notifications POSTed to
//! a callback (the crate's webhook receiver), their signatures (checked here with an HMAC of our
//! own), order, retries, pause, repeats, failures, and the verification handshake.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use coreq_loadgen::cloud::{CloudConfig, CloudError, FakeCloud, RetryPolicy, Status, StatusDelays};
use coreq_loadgen::receiver::{Arrival, Receiver, ReceiverConfig, Reply, Request, always};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const WAIT: Duration = Duration::from_secs(10);
const APP_SECRET: &str = "test-app-secret";

fn config(retry_attempts: u32) -> CloudConfig {
    CloudConfig {
        app_secret: APP_SECRET.to_string(),
        status_delays: StatusDelays {
            sent: Duration::from_millis(5),
            delivered: Duration::from_millis(5),
            read: Duration::from_millis(5),
        },
        retry: RetryPolicy {
            max_attempts: retry_attempts,
            first_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            request_timeout: Duration::from_secs(5),
        },
        ..CloudConfig::default()
    }
}

/// A fake posting to a receiver answering with `receiver_says`.
async fn wired(receiver_says: coreq_loadgen::receiver::Behaviour, retry_attempts: u32) -> (FakeCloud, Receiver) {
    let receiver = Receiver::start(ReceiverConfig::http(receiver_says))
        .await
        .expect("receiver starts");
    let mut config = config(retry_attempts);
    config.callback_url = Some(receiver.url());
    (FakeCloud::start(config).await.expect("fake starts"), receiver)
}

/// Sends a text to `to` through the fake's HTTP endpoint; its wamid.
async fn send(cloud: &FakeCloud, to: &str, extra: Value) -> String {
    let mut body = json!({"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "hi"}});
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .post(cloud.messages_url())
        .bearer_auth(cloud.access_token())
        .header("Content-Type", "application/json")
        .body((body).to_string())
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response
        .bytes()
        .await
        .map(|b| serde_json::from_slice::<Value>(&b))
        .expect("body")
        .expect("JSON");
    answer["messages"][0]["id"].as_str().expect("wamid").to_string()
}

/// Our own check of `X-Hub-Signature-256`: HMAC-SHA256 of the raw body with the app secret.
fn assert_signed(arrival: &Arrival) {
    let mut mac = Hmac::<Sha256>::new_from_slice(APP_SECRET.as_bytes()).expect("any key length");
    mac.update(&arrival.body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(arrival.header("x-hub-signature-256"), Some(expected.as_str()));
    assert_eq!(arrival.header("content-type"), Some("application/json"));
}

fn json_of(arrival: &Arrival) -> Value {
    serde_json::from_slice(&arrival.body).expect("notification is JSON")
}

/// `entry[0].changes[0].value` after checking the envelope around it.
fn change_value(notification: &Value, cloud: &FakeCloud) -> Value {
    assert_eq!(notification["object"], "whatsapp_business_account");
    assert_eq!(notification["entry"][0]["id"], cloud.waba_id());
    let change = &notification["entry"][0]["changes"][0];
    assert_eq!(change["field"], "messages");
    let value = change["value"].clone();
    assert_eq!(value["messaging_product"], "whatsapp");
    assert_eq!(value["metadata"]["phone_number_id"], cloud.phone_number_id());
    assert_eq!(value["metadata"]["display_phone_number"], cloud.display_phone_number());
    value
}

fn status_of(arrival: &Arrival, cloud: &FakeCloud) -> Value {
    change_value(&json_of(arrival), cloud)["statuses"][0].clone()
}

#[tokio::test]
async fn statuses_arrive_signed_and_in_order_sent_delivered_read() {
    let (cloud, receiver) = wired(always(200), 3).await;
    let wamid = send(&cloud, "15550100001", json!({"biz_opaque_callback_data": "onprem-1"})).await;
    assert!(receiver.wait_for_count(3, WAIT).await);
    let arrivals = receiver.arrivals();
    let statuses: Vec<Value> = arrivals.iter().map(|a| status_of(a, &cloud)).collect();
    let names: Vec<&str> = statuses.iter().filter_map(|s| s["status"].as_str()).collect();
    assert_eq!(names, ["sent", "delivered", "read"]);
    for (arrival, status) in arrivals.iter().zip(&statuses) {
        assert_signed(arrival);
        assert_eq!(status["id"], wamid.as_str());
        assert_eq!(status["recipient_id"], "15550100001");
        assert_eq!(status["biz_opaque_callback_data"], "onprem-1");
        assert!(
            status["timestamp"].as_str().is_some_and(|t| t.parse::<u64>().is_ok()),
            "{status}"
        );
    }
    let (sent, delivered, read) = (&statuses[0], &statuses[1], &statuses[2]);
    assert!(sent["conversation"]["id"].is_string(), "{sent}");
    assert_eq!(sent["conversation"]["origin"]["type"], "service");
    assert!(sent["conversation"]["expiration_timestamp"].is_string(), "{sent}");
    assert_eq!(
        sent["pricing"],
        json!({"billable": true, "pricing_model": "CBP", "category": "service"})
    );
    assert_eq!(delivered["conversation"]["id"], sent["conversation"]["id"]);
    assert!(delivered["pricing"].is_object(), "{delivered}");
    assert!(
        read.get("conversation").is_none() && read.get("pricing").is_none(),
        "{read}"
    );
    assert!(cloud.wait_for_delivered(3, WAIT).await);
    assert_eq!(cloud.deliveries().len(), 3);
}

#[tokio::test]
async fn a_notification_not_answered_200_is_retried_with_the_same_bytes() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let flaky = Arc::new(move |_: &Request| match counter.fetch_add(1, Ordering::SeqCst) {
        0 => Reply::Status(500),
        1 => Reply::Status(204),
        _ => Reply::Status(200),
    });
    let (cloud, receiver) = wired(flaky, 5).await;
    cloud.set_automatic_statuses(false);
    let wamid = send(&cloud, "15550100001", json!({})).await;
    assert!(cloud.emit_status(&wamid, Status::Delivered));
    assert!(receiver.wait_for_count(3, WAIT).await);
    let arrivals = receiver.arrivals();
    assert!(
        arrivals.iter().all(|a| a.body == arrivals[0].body),
        "same bytes each time"
    );
    assert!(
        arrivals
            .iter()
            .all(|a| a.header("x-hub-signature-256") == arrivals[0].header("x-hub-signature-256"))
    );
    assert!(cloud.wait_for_delivered(1, WAIT).await);
    let delivery = &cloud.deliveries()[0];
    assert_eq!((delivery.outcome.attempts, delivery.outcome.delivered), (3, true));
    assert_eq!(status_of(&arrivals[2], &cloud)["status"], "delivered");
}

#[tokio::test]
async fn retries_stop_after_the_configured_attempts() {
    let (cloud, receiver) = wired(always(503), 3).await;
    cloud.set_automatic_statuses(false);
    let wamid = send(&cloud, "15550100001", json!({})).await;
    cloud.emit_status(&wamid, Status::Sent);
    let mut counts = cloud.delivery_counts();
    for _ in 0..200 {
        if counts.gave_up == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        counts = cloud.delivery_counts();
    }
    assert_eq!((counts.gave_up, counts.delivered), (1, 0));
    assert_eq!(receiver.count(), 3);
    assert_eq!(cloud.deliveries()[0].outcome.last_status, 503);
}

#[tokio::test]
async fn a_paused_network_holds_notifications_until_resumed_then_sends_them_in_order() {
    let (cloud, receiver) = wired(always(200), 3).await;
    cloud.pause_network();
    let first = send(&cloud, "15550100001", json!({})).await;
    let second = send(&cloud, "15550100002", json!({})).await;
    assert_eq!(cloud.notifications_pending(), 6);
    // Every status is due after 15 ms; none may go out while paused.
    assert!(!receiver.wait_for_count(1, Duration::from_millis(300)).await);
    cloud.resume_network();
    assert!(receiver.wait_for_count(6, WAIT).await);
    let order: Vec<(String, String)> = receiver
        .arrivals()
        .iter()
        .map(|a| status_of(a, &cloud))
        .map(|s| {
            (
                s["id"].as_str().unwrap_or("").to_string(),
                s["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for wamid in [&first, &second] {
        let mine: Vec<&str> = order
            .iter()
            .filter(|(id, _)| id == wamid)
            .map(|(_, s)| s.as_str())
            .collect();
        assert_eq!(mine, ["sent", "delivered", "read"], "{order:?}");
    }
}

#[tokio::test]
async fn repeat_posts_each_notification_again_for_de_duplication_tests() {
    let (cloud, receiver) = wired(always(200), 3).await;
    cloud.set_automatic_statuses(false);
    cloud.set_repeat(2);
    let wamid = send(&cloud, "15550100001", json!({})).await;
    cloud.emit_status(&wamid, Status::Read);
    assert!(cloud.wait_for_delivered(3, WAIT).await);
    let arrivals = receiver.arrivals();
    assert_eq!(arrivals.len(), 3);
    assert!(arrivals.iter().all(|a| a.body == arrivals[0].body));
    let repeats: Vec<u32> = cloud.deliveries().iter().map(|d| d.repeat).collect();
    assert_eq!(repeats, [0, 1, 2]);
}

#[tokio::test]
async fn an_unreachable_recipient_gets_a_failed_status_with_errors() {
    let (cloud, receiver) = wired(always(200), 3).await;
    cloud.set_unreachable("15550100404", Some(CloudError::undeliverable()));
    let wamid = send(&cloud, "15550100404", json!({})).await;
    assert!(cloud.wait_for_delivered(1, WAIT).await);
    assert_eq!(cloud.notifications_pending(), 0, "failed is the only status");
    let status = status_of(&receiver.arrivals()[0], &cloud);
    assert_eq!(status["status"], "failed");
    assert_eq!(status["id"], wamid.as_str());
    let error = &status["errors"][0];
    assert_eq!(error["code"], 131026);
    assert!(error["title"].is_string() && error["message"].is_string(), "{error}");
    assert!(error["error_data"]["details"].is_string(), "{error}");
    assert!(
        error["href"].as_str().is_some_and(|h| h.starts_with("https://")),
        "{error}"
    );
    // A test can also fail one message by hand, with any documented error.
    assert!(cloud.emit_failed(&wamid, CloudError::something_went_wrong()));
    assert!(receiver.wait_for_count(2, WAIT).await);
    assert_eq!(status_of(&receiver.arrivals()[1], &cloud)["errors"][0]["code"], 131000);
    assert!(!cloud.emit_status("wamid.unknown", Status::Read));
}

#[tokio::test]
async fn an_injected_user_message_arrives_as_contacts_and_messages() {
    let (cloud, receiver) = wired(always(200), 3).await;
    let id = cloud.inject_text("15550100077", "Kerry Fisher", "where is my order?");
    assert!(receiver.wait_for_count(1, WAIT).await);
    let arrival = &receiver.arrivals()[0];
    assert_signed(arrival);
    let value = change_value(&json_of(arrival), &cloud);
    assert_eq!(
        value["contacts"],
        json!([{"profile": {"name": "Kerry Fisher"}, "wa_id": "15550100077"}])
    );
    let message = &value["messages"][0];
    assert_eq!(message["from"], "15550100077");
    assert_eq!(message["id"], id.as_str());
    assert_eq!(message["type"], "text");
    assert_eq!(message["text"], json!({"body": "where is my order?"}));
    assert!(message["timestamp"].as_str().is_some_and(|t| t.parse::<u64>().is_ok()));
}

#[tokio::test]
async fn the_handshake_passes_only_when_the_challenge_is_echoed() {
    let echo = Arc::new(|r: &Request| {
        let query = r.path_and_query.split_once('?').map_or("", |(_, q)| q);
        let param = |name: &str| query.split('&').find_map(|p| p.strip_prefix(name)?.strip_prefix('='));
        match (param("hub.mode"), param("hub.verify_token"), param("hub.challenge")) {
            (Some("subscribe"), Some("secret%20token" | "secret+token"), Some(challenge)) => {
                Reply::Body(200, challenge.to_string())
            }
            _ => Reply::Status(403),
        }
    });
    let (cloud, receiver) = wired(echo, 1).await;
    let passed = cloud
        .verify_callback(&receiver.url(), "secret token")
        .await
        .expect("URL parses");
    assert!(passed.verified, "{passed:?}");
    assert_eq!((passed.status, passed.body.as_str()), (200, passed.challenge.as_str()));
    assert_eq!(receiver.arrivals()[0].method, "GET");

    let refused = cloud
        .verify_callback(&receiver.url(), "wrong")
        .await
        .expect("URL parses");
    assert!(!refused.verified);
    assert_eq!(refused.status, 403);
    // Answering 200 without the challenge is not enough either.
    receiver.set_behaviour(always(200));
    assert!(
        !cloud
            .verify_callback(&receiver.url(), "secret token")
            .await
            .expect("parses")
            .verified
    );
}
