//! The notification service end to end, with a real SMTP server (`micropay_tests::mail`): codes
//! by email, payments told to payer and payee on their channels, opt-outs and critical
//! messages, retries while the SMTP server is down, in-app messages, and no code in any log.

use std::time::{Duration, Instant};

use micropay_tests::bank::id;
use micropay_tests::mail::{Mail, MailServer};
use micropay_tests::{HostOptions, TestHost, User, error_code};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse 42 battery";

/// A host sending emails to the SMTP server at `smtp_url`, logging no secret.
async fn host_mailing_to(smtp_url: &str) -> TestHost {
    let options = HostOptions {
        dev_log_secrets: false,
        extra_args: vec!["--smtp-url".into(), smtp_url.into()],
        ..HostOptions::on_test_server()
    };
    TestHost::start_with(options).await
}

/// Signs up with a new email address: the user's id and the address.
async fn sign_up(host: &TestHost) -> (String, String) {
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let (status, body) =
        host.call("POST", "/v1/user/users", None, Some(json!({"email": email, "password": PASSWORD}))).await;
    assert_eq!(status, 201, "{body}");
    (body["user_id"].as_str().unwrap().to_string(), email)
}

/// The code in a verification email.
fn code_in(mail: &Mail) -> String {
    mail.code_after("Your MicroPay code is ")
}

/// Signs up, verifies the email with the code that arrives by mail, and logs in.
async fn mailed_user(host: &TestHost, mail: &MailServer) -> User {
    let (user_id, email) = sign_up(host).await;
    let code = code_in(&mail.wait_for(&email, "Your MicroPay code is").await);
    let (status, body) =
        host.call("POST", "/v1/user/verifications/email", None, Some(json!({"email": email, "code": code}))).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        host.call("POST", "/v1/user/sessions", None, Some(json!({"email": email, "password": PASSWORD}))).await;
    assert_eq!(status, 201, "{body}");
    User { user_id, email, password: PASSWORD.into(), token: body["token"].as_str().unwrap().to_string() }
}

/// The messages of `user_id` (an ops key's view), newest first.
async fn messages(host: &TestHost, ops: &str, user_id: &str) -> Vec<Value> {
    let (status, body) =
        host.call("GET", &format!("/v1/notification/messages?user_id={user_id}"), Some(ops), None).await;
    assert_eq!(status, 200, "{body}");
    body["messages"].as_array().unwrap().clone()
}

/// Waits up to 30 s for a message of `user_id` that `wanted` accepts.
async fn wait_for_message(host: &TestHost, ops: &str, user_id: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let all = messages(host, ops, user_id).await;
        if let Some(found) = all.iter().find(|message| wanted(message)) {
            return found.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no such message of {user_id}: {all:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sign_up_emails_the_code_which_verifies_and_no_log_or_audit_record_holds_it() {
    let mail = MailServer::start();
    let host = host_mailing_to(&mail.url()).await;
    let ops = host.admin_key("ops");

    let (user_id, email) = sign_up(&host).await;
    let received = mail.wait_for(&email, "Your MicroPay code is").await;
    assert!(received.data.contains("Subject: Your MicroPay code"), "{}", received.data);
    assert!(received.data.contains("Message-ID: <"), "{}", received.data);
    let code = code_in(&received);
    assert!(code.chars().all(|c| c.is_ascii_digit()) && code.len() == 6, "{code}");
    let (status, body) =
        host.call("POST", "/v1/user/verifications/email", None, Some(json!({"email": email, "code": code}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ACTIVE");

    // Once sent, the message keeps no trace of the code.
    let sent = wait_for_message(&host, &ops, &user_id, |m| m["notification_type"] == "verification_code").await;
    assert_eq!(sent["status"], "SENT", "{sent}");
    assert_eq!(sent["channel"], "EMAIL");
    assert_eq!(sent["destination"], email.as_str());
    assert!(!sent.to_string().contains(&code), "{sent}");

    // The audit trail records the event with its secret redacted.
    let mut audit = host.admin_db("audit").await;
    let started = Instant::now();
    let recorded: String = loop {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT new_values::text FROM audit_logs WHERE event_type = 'user.code_issued' AND user_id = $1::uuid",
        )
        .bind(&user_id)
        .fetch_optional(&mut audit)
        .await
        .unwrap();
        if let Some(found) = found {
            break found;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no audit record of the code's event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(recorded.contains("[redacted]") && !recorded.contains(&code), "{recorded}");
    assert!(!host.log_text().contains(&code), "the code reached the host's log");
}

#[tokio::test]
async fn a_payment_is_told_to_payer_and_payee_on_their_channels_and_security_messages_ignore_opt_outs() {
    let mail = MailServer::start();
    let host = host_mailing_to(&mail.url()).await;
    let (ops, platform) = (host.admin_key("ops"), host.admin_key("platform"));
    let payer = mailed_user(&host, &mail).await;
    let payee = mailed_user(&host, &mail).await;

    // The payee wants no email.
    let (status, body) = host
        .call(
            "PATCH",
            "/v1/user/me/preferences",
            Some(&payee.token),
            Some(json!({"email_notifications_enabled": false})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let open = |user: &User| {
        let token = user.token.clone();
        let host = &host;
        async move {
            let body = json!({"account_type": "PRIMARY", "currency": "USD"});
            let (status, account) = host.call("POST", "/v1/account/accounts", Some(&token), Some(body)).await;
            assert_eq!(status, 201, "{account}");
            account
        }
    };
    let (from, to) = (open(&payer).await, open(&payee).await);
    let deposit = json!({"account_id": id(&from), "amount": "100.00", "currency": "USD"});
    let (status, body) = host.call("POST", "/v1/transaction/deposits", Some(&platform), Some(deposit)).await;
    assert_eq!(status, 201, "{body}");

    let payment = json!({
        "payer_account_id": id(&from), "payee_account_id": id(&to), "amount": "25.50", "currency": "USD",
        "description": "dinner <b>&</b> drinks",
    });
    let key = uuid::Uuid::new_v4().to_string();
    let started = Instant::now();
    let paid = loop {
        let (status, _, body) = host
            .call_with(
                "POST",
                "/v1/payment/payments",
                Some(&payer.token),
                &[("idempotency-key", &key), ("prefer", "wait=10")],
                Some(payment.clone()),
            )
            .await;
        // The deposit may not be in the balance yet: the same key again, once it is.
        if status == 422 && error_code(&body) == "insufficient_funds" && started.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert!(status == 201 || status == 200, "{status} {body}");
        break body;
    };
    let payment_id = paid["payment_id"].as_str().unwrap().to_string();

    // The payer: by email (the HTML escapes the description) and in the app.
    let sent = mail.wait_for(&payer.email, "You sent 25.5000 USD").await;
    assert!(sent.text().contains(&payment_id), "{}", sent.data);
    assert!(sent.text().contains("dinner &lt;b&gt;&amp;&lt;&#x2f;b&gt; drinks"), "{}", sent.data);
    // The payee: in the app and by push (kept in the outbox: no push provider here), not by email.
    let received = wait_for_message(&host, &ops, &payee.user_id, |m| {
        m["notification_type"] == "payment_received" && m["channel"] == "IN_APP"
    })
    .await;
    assert_eq!(received["status"], "DELIVERED", "{received}");
    wait_for_message(&host, &ops, &payee.user_id, |m| {
        m["notification_type"] == "payment_received" && m["channel"] == "PUSH" && m["status"] == "SENT"
    })
    .await;
    let (status, inbox) = host.call("GET", "/v1/notification/notifications", Some(&payee.token), None).await;
    assert_eq!(status, 200, "{inbox}");
    let shown = &inbox["notifications"][0];
    assert_eq!(shown["notification_type"], "payment_received", "{inbox}");
    assert!(shown["message"].as_str().unwrap().contains("You received 25.5000 USD"), "{shown}");
    let emails = messages(&host, &ops, &payee.user_id).await;
    assert!(
        !emails.iter().any(|m| m["notification_type"] == "payment_received" && m["channel"] == "EMAIL"),
        "an opted-out channel was used: {emails:#?}"
    );

    // A security message reaches the payee's email all the same.
    let change = json!({"current_password": PASSWORD, "new_password": "another horse 43 staple"});
    let (status, body) = host.call("POST", "/v1/user/me/password", Some(&payee.token), Some(change)).await;
    assert_eq!(status, 204, "{body}");
    mail.wait_for(&payee.email, "Your MicroPay password was changed").await;
}

#[tokio::test]
async fn while_the_smtp_server_is_down_emails_are_retried_then_failed_or_sent_once_it_is_back() {
    let port = MailServer::free_port();
    let host = host_mailing_to(&MailServer::url_of(port)).await;
    let ops = host.admin_key("ops");

    // A short retry window: three attempts.
    let fast = json!({"max_attempts": 3, "retry_base_ms": 100, "retry_max_ms": 200});
    let (status, body) = host.call("PATCH", "/v1/notification/settings", Some(&ops), Some(fast)).await;
    assert_eq!(status, 200, "{body}");
    let (gave_up, _) = sign_up(&host).await;
    let failed = wait_for_message(&host, &ops, &gave_up, |m| m["status"] == "FAILED").await;
    assert_eq!(failed["retry_count"], 3, "{failed}");
    assert!(failed["failure_reason"].as_str().unwrap().contains("gave up after 3 attempts"), "{failed}");
    assert!(!failed.to_string().contains("Your MicroPay code is"), "a failed code message keeps no text: {failed}");

    // A long one: the server comes back within it.
    let patient = json!({"max_attempts": 50, "retry_base_ms": 200, "retry_max_ms": 500});
    let (status, body) = host.call("PATCH", "/v1/notification/settings", Some(&ops), Some(patient)).await;
    assert_eq!(status, 200, "{body}");
    let (waiting, email) = sign_up(&host).await;
    wait_for_message(&host, &ops, &waiting, |m| m["status"] == "PENDING" && m["retry_count"].as_i64() >= Some(2)).await;
    let mail = MailServer::start_on(port);
    let arrived = mail.wait_for(&email, "Your MicroPay code is").await;
    assert_eq!(arrived.to, vec![email.clone()]);
    let sent = wait_for_message(&host, &ops, &waiting, |m| m["status"] == "SENT").await;
    assert!(sent["retry_count"].as_i64().unwrap() >= 2, "{sent}");
    // The one given up stays failed, the one sent is sent once.
    assert_eq!(messages(&host, &ops, &gave_up).await[0]["status"], "FAILED");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(mail.to(&email).len(), 1, "sent more than once");
}

#[tokio::test]
async fn users_read_only_their_own_in_app_notifications() {
    let mail = MailServer::start();
    let host = host_mailing_to(&mail.url()).await;
    let owner = mailed_user(&host, &mail).await;
    let other = mailed_user(&host, &mail).await;

    // Webhooks to this machine: the host refuses to post to a private address, named or not.
    let named = json!({"url": "http://localhost:9/hook"});
    let (status, named) = host.call("POST", "/v1/notification/webhooks", Some(&owner.token), Some(named)).await;
    assert_eq!(status, 201, "{named}");
    let hook = json!({"url": "http://127.0.0.1:9/hook"});
    let (status, endpoint) = host.call("POST", "/v1/notification/webhooks", Some(&owner.token), Some(hook)).await;
    assert_eq!(status, 201, "{endpoint}");
    let endpoint_path = format!("/v1/notification/webhooks/{}", endpoint["endpoint_id"].as_str().unwrap());
    let (status, body) = host.call("DELETE", &endpoint_path, Some(&other.token), None).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"), "another user removed the endpoint: {body}");

    let change = json!({"current_password": PASSWORD, "new_password": "another horse 43 staple"});
    let (status, body) = host.call("POST", "/v1/user/me/password", Some(&owner.token), Some(change)).await;
    assert_eq!(status, 204, "{body}");
    let ops = host.admin_key("ops");
    let done_for = |endpoint: &Value| {
        let endpoint_id = endpoint["endpoint_id"].clone();
        move |m: &Value| m["destination"] == endpoint_id && m["status"] != "PENDING"
    };
    let refused = wait_for_message(&host, &ops, &owner.user_id, done_for(&endpoint)).await;
    assert_eq!(refused["status"], "FAILED", "{refused}");
    assert!(refused["failure_reason"].as_str().unwrap().contains("127.0.0.1 is not a public address"), "{refused}");
    let refused = wait_for_message(&host, &ops, &owner.user_id, done_for(&named)).await;
    assert_eq!(refused["status"], "FAILED", "{refused}");
    assert!(refused["failure_reason"].as_str().unwrap().contains("is not a public address"), "{refused}");
    let started = Instant::now();
    let notification = loop {
        let (status, inbox) = host.call("GET", "/v1/notification/notifications", Some(&owner.token), None).await;
        assert_eq!(status, 200, "{inbox}");
        if let Some(found) = inbox["notifications"].as_array().unwrap().first() {
            break found.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no in-app notification");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(notification["notification_type"], "password_changed");
    assert!(notification["read_at"].is_null());
    let path = format!("/v1/notification/notifications/{}/read", notification["notification_id"].as_str().unwrap());

    // Another user neither sees it nor marks it.
    let (status, inbox) = host.call("GET", "/v1/notification/notifications", Some(&other.token), None).await;
    assert_eq!(status, 200);
    assert!(inbox["notifications"].as_array().unwrap().is_empty(), "{inbox}");
    let (status, body) = host.call("POST", &path, Some(&other.token), None).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"), "{body}");
    // Nor does anyone without a session, nor a user reach the ops' view.
    assert_eq!(host.call("GET", "/v1/notification/notifications", None, None).await.0, 401);
    let (status, _) = host.call("GET", "/v1/notification/messages", Some(&owner.token), None).await;
    assert_eq!(status, 403);

    let (status, read) = host.call("POST", &path, Some(&owner.token), None).await;
    assert_eq!(status, 200, "{read}");
    assert!(read["read_at"].is_string(), "{read}");
    let (status, unread) =
        host.call("GET", "/v1/notification/notifications?unread=true", Some(&owner.token), None).await;
    assert_eq!(status, 200);
    assert!(unread["notifications"].as_array().unwrap().is_empty(), "{unread}");
}

#[tokio::test]
async fn without_smtp_emails_are_kept_in_the_outbox_for_ops_and_previews_render_the_next_message() {
    let options = HostOptions { dev_log_secrets: false, ..HostOptions::on_test_server() };
    let host = TestHost::start_with(options).await;
    let (ops, risk) = (host.admin_key("ops"), host.admin_key("risk"));
    let (user_id, email) = sign_up(&host).await;
    wait_for_message(&host, &ops, &user_id, |m| m["status"] == "SENT").await;

    let (ok, printed) = host.command(&ops, &["notifications", "outbox", "--to", &email]);
    assert!(ok, "{printed}");
    assert!(printed.contains("Your MicroPay code is"), "{printed}");
    let (ok, printed) = host.command(&risk, &["notifications", "outbox"]);
    assert!(!ok && printed.contains("403"), "a risk key read the outbox: {printed}");

    let preview = json!({"variables": {"code": "123456", "expires_at": "soon", "purpose": "VERIFY_EMAIL"}});
    let path = "/v1/notification/templates/verification_code/preview";
    let (status, rendered) = host.call("POST", path, Some(&ops), Some(preview.clone())).await;
    assert_eq!(status, 200, "{rendered}");
    assert_eq!(rendered["component"], "templates");
    assert!(rendered["text"].as_str().unwrap().contains("123456"), "{rendered}");
    assert!(rendered["version"].as_i64().unwrap() >= 1);
    let (status, body) = host.call("POST", path, Some(&ops), Some(json!({"variables": {}}))).await;
    assert_eq!((status, error_code(&body)), (422, "render_failed"), "{body}");
    let (status, _) = host.call("POST", path, Some(&risk), Some(preview)).await;
    assert_eq!(status, 403);
}

/// Sign-ups made under load: the user's id, the email, and whether the deploy had answered.
type SignUps = std::sync::Arc<std::sync::Mutex<Vec<(String, String, bool)>>>;

#[tokio::test]
async fn a_template_deployed_under_load_renders_from_the_next_message_on_and_a_broken_one_falls_back() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let mail = MailServer::start();
    let host = host_mailing_to(&mail.url()).await;
    let ops = host.admin_key("ops");
    let components = micropay_tests::root().join("target/components");

    // Four clients sign up again and again: every sign-up sends a code by email.
    let deployed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let signed_up: SignUps = Arc::default();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (http, url) = (host.http.clone(), host.url("/v1/user/users"));
            let (deployed, stop, signed_up) = (deployed.clone(), stop.clone(), signed_up.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    // Sent after the deploy answered: the new version's to render.
                    let after = deployed.load(Ordering::SeqCst);
                    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
                    let answer = http.post(&url).json(&json!({"email": email, "password": PASSWORD})).send().await;
                    let answer = answer.expect("sign-up sent");
                    assert_eq!(answer.status().as_u16(), 201, "a sign-up failed during the swap");
                    let body: Value = answer.json().await.unwrap();
                    let user_id = body["user_id"].as_str().unwrap().to_string();
                    signed_up.lock().unwrap().push((user_id, email, after));
                }
            })
        })
        .collect();
    let count = |signed_up: &SignUps| signed_up.lock().unwrap().len();
    while count(&signed_up) < 4 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = components.join("templates_second.wasm");
    let (ok, printed) = host.command(&ops, &["deploy", second.to_str().unwrap(), "--name", "templates"]);
    assert!(ok, "{printed}");
    deployed.store(true, Ordering::SeqCst);
    let before = count(&signed_up);
    while count(&signed_up) < before + 8 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }

    // Every message was delivered; those asked for after the deploy by the new version.
    let everyone = signed_up.lock().unwrap().clone();
    for (user_id, email, after) in &everyone {
        let received = mail.wait_for(email, "Your MicroPay code is").await;
        let message = wait_for_message(&host, &ops, user_id, |m| m["status"] != "PENDING").await;
        assert_eq!(message["status"], "SENT", "{message}");
        if *after {
            assert!(received.text().contains("second build"), "{}", received.data);
            assert_eq!(message["template_version"], 2, "{message}");
        }
    }

    // A version that renders nothing: the messages still go out, rendered by the one before.
    let broken = components.join("broken_templates.wasm");
    let (ok, printed) = host.command(&ops, &["deploy", broken.to_str().unwrap(), "--name", "templates"]);
    assert!(ok, "{printed}");
    let (user_id, email) = sign_up(&host).await;
    let received = mail.wait_for(&email, "Your MicroPay code is").await;
    assert!(received.text().contains("second build"), "{}", received.data);
    let message = wait_for_message(&host, &ops, &user_id, |m| m["status"] == "SENT").await;
    assert_eq!(message["template_version"], 2, "{message}");
    let fell_back =
        r#"micropay_template_renders_total{component="templates",template="verification_code",result="FellBack"}"#;
    assert!(host.metric(fell_back).await >= 1.0, "no fallback counted");
    let (ok, printed) = host.command(&ops, &["rollback", "templates"]);
    assert!(ok, "{printed}");
}

#[tokio::test]
async fn a_webhook_is_signed_with_its_endpoints_secret_and_a_tampered_one_does_not_verify() {
    use hmac::{Hmac, Mac};

    // A real HTTP receiver.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(axum::http::HeaderMap, String)>();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let tx = tx.clone();
            async move {
                tx.send((headers, body)).ok();
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, receiver).await.ok() });

    let mail = MailServer::start();
    let options = HostOptions {
        dev_log_secrets: false,
        extra_args: vec!["--smtp-url".into(), mail.url(), "--webhooks-to-private-addresses".into()],
        ..HostOptions::on_test_server()
    };
    let host = TestHost::start_with(options).await;
    let ops = host.admin_key("ops");
    let user = mailed_user(&host, &mail).await;
    let hook = json!({"url": format!("http://{address}/hook")});
    let (status, endpoint) = host.call("POST", "/v1/notification/webhooks", Some(&user.token), Some(hook)).await;
    assert_eq!(status, 201, "{endpoint}");
    let secret = endpoint["secret"].as_str().unwrap().to_string();
    let (status, listed) = host.call("GET", "/v1/notification/webhooks", Some(&user.token), None).await;
    assert_eq!(status, 200);
    assert!(!listed.to_string().contains(&secret), "a listing shows the secret: {listed}");

    let change = json!({"current_password": PASSWORD, "new_password": "another horse 43 staple"});
    let (status, body) = host.call("POST", "/v1/user/me/password", Some(&user.token), Some(change)).await;
    assert_eq!(status, 204, "{body}");
    let (headers, body) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.unwrap().unwrap();
    let posted: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(posted["type"], "password_changed", "{posted}");
    assert_eq!(headers["micropay-webhook-id"].to_str().unwrap(), posted["id"].as_str().unwrap());

    // The receiver's check: HMAC-SHA256 of "<t>.<body>" with the shared secret.
    let signature = headers["micropay-signature"].to_str().unwrap().to_string();
    let (t, v1) = signature.split_once(',').unwrap();
    let (t, v1) = (t.strip_prefix("t=").unwrap(), v1.strip_prefix("v1=").unwrap());
    let verifies = |secret: &str, body: &str| {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.{body}").as_bytes());
        mac.verify_slice(&hex::decode(v1).unwrap()).is_ok()
    };
    assert!(verifies(&secret, &body), "the signature does not verify: {signature}");
    assert!(!verifies(&secret, &body.replace("password_changed", "payment_received")), "a tampered body verifies");
    assert!(!verifies("whsec_someone_else", &body), "another secret verifies");
    let age = chrono::Utc::now().timestamp() - t.parse::<i64>().unwrap();
    assert!((0..60).contains(&age), "the timestamp is {age} s old");

    let delivered =
        wait_for_message(&host, &ops, &user.user_id, |m| m["channel"] == "WEBHOOK" && m["status"] != "PENDING").await;
    assert_eq!(delivered["status"], "DELIVERED", "{delivered}");
}

#[tokio::test]
async fn a_forgotten_password_is_reset_with_the_code_sent_by_email() {
    let mail = MailServer::start();
    let host = host_mailing_to(&mail.url()).await;
    let user = mailed_user(&host, &mail).await;

    // The same answer for an address no account has.
    for email in [user.email.as_str(), "nobody-here@example.com"] {
        let (status, body) = host.call("POST", "/v1/user/password-resets", None, Some(json!({"email": email}))).await;
        assert_eq!(status, 202, "{body}");
    }
    let code = code_in(&mail.wait_for(&user.email, "choose a new password").await);
    let new_password = "a brand new 44 password";
    let confirm = |code: &str, password: &str| json!({"email": user.email, "code": code, "new_password": password});
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (status, body) =
        host.call("POST", "/v1/user/password-resets/confirm", None, Some(confirm(wrong, new_password))).await;
    assert_eq!((status, error_code(&body)), (422, "invalid_code"), "{body}");
    let (status, body) =
        host.call("POST", "/v1/user/password-resets/confirm", None, Some(confirm(&code, "short"))).await;
    assert_eq!(status, 422, "a weak password was taken: {body}");
    let (status, body) =
        host.call("POST", "/v1/user/password-resets/confirm", None, Some(confirm(&code, new_password))).await;
    assert_eq!(status, 204, "{body}");
    let (status, body) =
        host.call("POST", "/v1/user/password-resets/confirm", None, Some(confirm(&code, new_password))).await;
    assert_eq!((status, error_code(&body)), (422, "invalid_code"), "a code worked twice: {body}");

    // Every session ended; the new password works, the old one does not.
    assert_eq!(host.call("GET", "/v1/user/me", Some(&user.token), None).await.0, 401);
    let log_in = |password: &str| json!({"email": user.email, "password": password});
    assert_eq!(host.call("POST", "/v1/user/sessions", None, Some(log_in(PASSWORD))).await.0, 401);
    let (status, body) = host.call("POST", "/v1/user/sessions", None, Some(log_in(new_password))).await;
    assert_eq!(status, 201, "{body}");
    mail.wait_for(&user.email, "Your MicroPay password was changed").await;
    assert!(!host.log_text().contains(&code), "the reset code reached the host's log");
}

#[tokio::test]
async fn a_login_from_a_new_device_is_told_by_email_once_and_never_for_the_first_device() {
    let mail = MailServer::start();
    let host = host_mailing_to(&mail.url()).await;
    let user = mailed_user(&host, &mail).await; // logged in once, from no named device
    let log_in = |device: Option<&str>| {
        let device_info = device.map(|id| json!({"device_id": id, "os": "ios"}));
        json!({"email": user.email, "password": PASSWORD, "device_info": device_info})
    };
    for device in [None, Some("phone-2"), Some("phone-2"), Some("tablet-3")] {
        let (status, body) = host.call("POST", "/v1/user/sessions", None, Some(log_in(device))).await;
        assert_eq!(status, 201, "{body}");
    }
    mail.wait_for(&user.email, "logged in to from a device it had not seen before").await;

    // Once for each new device (tablet-3's comes after phone-2's second login), never for the
    // first one nor a device seen before; in the app too.
    let ops = host.admin_key("ops");
    let told = |all: &[Value], channel: &str| {
        all.iter().filter(|m| m["notification_type"] == "new_device_login" && m["channel"] == channel).count()
    };
    let started = Instant::now();
    let all = loop {
        let all = messages(&host, &ops, &user.user_id).await;
        if told(&all, "IN_APP") == 2 {
            break all;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "not told of both devices: {all:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((told(&all, "IN_APP"), told(&all, "EMAIL")), (2, 2), "{all:#?}");
}

#[tokio::test]
async fn sending_and_rendering_are_grants_the_notification_component_is_refused_without() {
    let host = TestHost::start().await;
    let platform = host.admin_key("platform");
    let component = micropay_tests::root().join("target/components/notification.wasm");
    let policy = std::fs::read_to_string(micropay_tests::root().join("policies/notification.toml")).unwrap();
    let copy = policy.replace("name = \"notification\"", "name = \"notification_copy\"");
    for (section, import) in [
        ("[messaging]\nchannels = [\"email\", \"sms\", \"push\", \"webhook\"]", "messaging"),
        ("[plugins]\nhost = [\"template\"]", "templates"),
    ] {
        let ungranted = copy.replace(section, "");
        assert!(ungranted.contains("notification_copy") && !ungranted.contains(section), "{ungranted}");
        let path = host.options.data_dir.join(format!("notification_without_{import}.toml"));
        std::fs::write(&path, ungranted).unwrap();
        let (ok, printed) =
            host.command(&platform, &["deploy", component.to_str().unwrap(), "--policy", &path.display().to_string()]);
        assert!(!ok && printed.contains("imports_not_granted") && printed.contains(import), "{import}: {printed}");
    }
    let (status, _) = host.call("GET", "/v1/notification_copy/templates", Some(&platform), None).await;
    assert_eq!(status, 404, "a refused component is served");
}
