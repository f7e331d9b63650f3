//! The open platform: components, verify-ticket pushes, the authorization flow and the
//! component endpoints.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use wetoken_mock::{Endpoint, Fault, MockComponent, MockConfig, MockWeChat, PushError, Pushed};
use wetoken_msgcrypt::{MsgCrypt, XmlFields, sorted_sha1_hex};

use crate::support::{assert_err, check, client, get, post};

const COMPONENT: &str = "wxcomponent0123456";
const COMPONENT_SECRET: &str = "componentsecret0123456789abcdef0";
const MSG_TOKEN: &str = "pushToken42";
const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

const COMPONENT_TOKEN: &str = "/cgi-bin/component/api_component_token";
const PRE_AUTH: &str = "/cgi-bin/component/api_create_preauthcode";
const QUERY_AUTH: &str = "/cgi-bin/component/api_query_auth";
const AUTHORIZER_TOKEN: &str = "/cgi-bin/component/api_authorizer_token";

/// One push as the receiver got it.
struct Received {
    query: HashMap<String, String>,
    body: String,
}

/// A tiny authorization-event URL: records every POST and answers `success` with the status
/// set in `status`.
struct Receiver {
    url: String,
    got: mpsc::UnboundedReceiver<Received>,
    status: Arc<AtomicU16>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let url = format!("http://{}/wechat/event", listener.local_addr().unwrap());
        let (tx, got) = mpsc::unbounded_channel();
        let status = Arc::new(AtomicU16::new(200));
        let answer_with = status.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                let answer_with = answer_with.clone();
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    let status = answer_with.load(Ordering::SeqCst);
                    async move {
                        assert_eq!(request.method(), hyper::Method::POST);
                        assert_eq!(request.uri().path(), "/wechat/event");
                        let query = form_urlencoded::parse(
                            request.uri().query().unwrap_or_default().as_bytes(),
                        )
                        .into_owned()
                        .collect();
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let body = String::from_utf8(body.to_vec()).unwrap();
                        let _ = tx.send(Received { query, body });
                        let mut response =
                            hyper::Response::new(Full::new(Bytes::from_static(b"success")));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Receiver { url, got, status }
    }

    /// The next push received, within 5 s.
    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(5), self.got.recv())
            .await
            .expect("a push within 5 s")
            .expect("the receiver runs")
    }

    /// Whether nothing more arrives within `wait`.
    async fn quiet_for(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.got.recv()).await.is_err()
    }
}

impl Received {
    /// Opens the push as a component would: checks both signatures, decrypts, and reads the
    /// inner XML.
    fn open(&self) -> XmlFields {
        let crypt = MsgCrypt::new(MSG_TOKEN, AES_KEY, COMPONENT).unwrap();
        let q = |name: &str| self.query.get(name).map(String::as_str).unwrap_or_default();
        assert_eq!(q("encrypt_type"), "aes");
        assert_eq!(
            q("signature"),
            sorted_sha1_hex(&[MSG_TOKEN, q("timestamp"), q("nonce")])
        );
        let envelope = XmlFields::parse(&self.body).unwrap();
        assert_eq!(envelope.get("AppId"), Some(COMPONENT), "{}", self.body);
        crypt
            .open_envelope(
                q("msg_signature"),
                q("timestamp"),
                q("nonce"),
                self.body.as_bytes(),
            )
            .expect("the push opens with the component's token and key")
    }
}

fn component(push_url: Option<&str>) -> MockComponent {
    MockComponent {
        appid: COMPONENT.to_owned(),
        secret: COMPONENT_SECRET.to_owned(),
        token: MSG_TOKEN.to_owned(),
        aes_key: AES_KEY.to_owned(),
        push_url: push_url.map(str::to_owned),
    }
}

/// A mock with [`COMPONENT`] pushing to a new receiver; no timer unless `config` has one.
async fn open_mock(config: MockConfig) -> (MockWeChat, Receiver) {
    let mock = MockWeChat::start_with(config, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    mock.add_component(component(Some(&receiver.url))).unwrap();
    (mock, receiver)
}

fn no_timer() -> MockConfig {
    MockConfig {
        verify_ticket_interval: None,
        ..MockConfig::default()
    }
}

async fn component_token_call(mock: &MockWeChat, ticket: &str) -> Value {
    let body = json!({
        "component_appid": COMPONENT,
        "component_appsecret": COMPONENT_SECRET,
        "component_verify_ticket": ticket,
    });
    post(mock, COMPONENT_TOKEN, &[], &body.to_string()).await
}

/// A component token, after pushing a ticket.
async fn component_token(mock: &MockWeChat, receiver: &mut Receiver) -> String {
    let pushed = mock.push_verify_ticket(COMPONENT).await.unwrap();
    receiver.next().await;
    let body = component_token_call(mock, pushed.ticket.as_deref().unwrap()).await;
    body["component_access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no component token in {body}"))
        .to_owned()
}

/// POSTs `body` to a component endpoint with `component_access_token`.
async fn with_component(mock: &MockWeChat, path: &str, token: &str, body: Value) -> Value {
    post(
        mock,
        path,
        &[("component_access_token", token)],
        &body.to_string(),
    )
    .await
}

async fn pre_auth_code(mock: &MockWeChat, token: &str) -> Value {
    with_component(mock, PRE_AUTH, token, json!({"component_appid": COMPONENT})).await
}

async fn query_auth(mock: &MockWeChat, token: &str, code: &str) -> Value {
    let body = json!({"component_appid": COMPONENT, "authorization_code": code});
    with_component(mock, QUERY_AUTH, token, body).await
}

async fn authorizer_token(
    mock: &MockWeChat,
    token: &str,
    authorizer: &str,
    refresh: &str,
) -> Value {
    let body = json!({
        "component_appid": COMPONENT,
        "authorizer_appid": authorizer,
        "authorizer_refresh_token": refresh,
    });
    with_component(mock, AUTHORIZER_TOKEN, token, body).await
}

/// A customer authorizes (push received) and the code is exchanged: (authorizer appid, its
/// access token, its refresh token).
async fn authorized(
    mock: &MockWeChat,
    receiver: &mut Receiver,
    token: &str,
) -> (String, String, String) {
    let pushed = mock.authorize(COMPONENT, None, None).await.unwrap();
    receiver.next().await;
    let body = query_auth(mock, token, pushed.authorization_code.as_deref().unwrap()).await;
    let info = &body["authorization_info"];
    (
        info["authorizer_appid"].as_str().unwrap().to_owned(),
        info["authorizer_access_token"].as_str().unwrap().to_owned(),
        info["authorizer_refresh_token"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

#[tokio::test]
async fn a_verify_ticket_push_opens_with_the_components_key_and_carries_the_ticket() {
    let (mock, mut receiver) = open_mock(no_timer()).await;
    let pushed = mock.push_verify_ticket(COMPONENT).await.unwrap();
    assert_eq!(pushed.status, Some(200), "{pushed:?}");
    assert_eq!(pushed.answer.as_deref(), Some("success"));
    assert_eq!(pushed.info_type, "component_verify_ticket");
    let ticket = pushed.ticket.clone().unwrap();
    assert!(ticket.starts_with("ticket@@@"), "{ticket}");
    assert_eq!(mock.current_verify_ticket(COMPONENT), Some(ticket.clone()));

    let received = receiver.next().await;
    let fields = received.open();
    assert_eq!(fields.get("AppId"), Some(COMPONENT));
    assert_eq!(fields.get("InfoType"), Some("component_verify_ticket"));
    assert_eq!(fields.get("ComponentVerifyTicket"), Some(ticket.as_str()));
    let created = fields.integer("CreateTime").unwrap();
    let timestamp: i64 = received.query["timestamp"].parse().unwrap();
    assert_eq!(created, timestamp);
    // What was sent is what the push reports, so a test can replay it.
    assert_eq!(received.body, pushed.body);
    for (name, value) in &pushed.query {
        assert_eq!(received.query.get(name), Some(value), "{name}");
    }
    assert_eq!(
        pushed.param("msg_signature"),
        received.query.get("msg_signature").map(String::as_str)
    );

    assert_eq!(pushed.url, receiver.url);
    // The same push again, byte for byte: a replay, for the receiver to refuse.
    let replayed = mock.resend(&pushed).await;
    assert_eq!(replayed.status, Some(200));
    let again = receiver.next().await;
    assert_eq!(
        (&again.query, &again.body),
        (&received.query, &received.body)
    );
    assert_eq!(mock.current_verify_ticket(COMPONENT), Some(ticket.clone()));

    // Another receiver's key, or another component's appid, cannot open it.
    let other_key = MsgCrypt::new(MSG_TOKEN, &AES_KEY.replace('j', "k"), COMPONENT).unwrap();
    let q = |n: &str| received.query[n].clone();
    assert!(
        other_key
            .open_envelope(
                &q("msg_signature"),
                &q("timestamp"),
                &q("nonce"),
                received.body.as_bytes()
            )
            .is_err()
    );
    // Pushes never count as calls.
    for endpoint in Endpoint::ALL {
        assert_eq!(mock.calls(endpoint), 0, "{endpoint:?}");
    }
}

#[tokio::test]
async fn the_component_token_needs_the_newest_ticket_pushed() {
    let (mock, mut receiver) = open_mock(no_timer()).await;
    // Before any push there is no ticket to give.
    assert_err(
        &component_token_call(&mock, "ticket@@@made-up").await,
        61006,
    );

    let first = mock.push_verify_ticket(COMPONENT).await.unwrap();
    receiver.next().await;
    let first = first.ticket.unwrap();
    let body = component_token_call(&mock, &first).await;
    assert!(body.get("errcode").is_none(), "{body}");
    assert_eq!(body["expires_in"], 7200);
    let token = body["component_access_token"].as_str().unwrap();
    assert!((136..=160).contains(&token.len()), "{token}");
    assert_eq!(
        mock.current_component_token(COMPONENT).as_deref(),
        Some(token)
    );

    let second = mock.push_verify_ticket(COMPONENT).await.unwrap();
    receiver.next().await;
    let second = second.ticket.unwrap();
    assert_ne!(first, second);
    assert_err(&component_token_call(&mock, &first).await, 61006);
    assert_err(&component_token_call(&mock, "").await, 61006);
    assert!(
        component_token_call(&mock, &second)
            .await
            .get("component_access_token")
            .is_some()
    );
    // Twelve hours after its push the newest ticket is expired.
    mock.advance(Duration::from_secs(12 * 3600));
    assert_err(&component_token_call(&mock, &second).await, 61005);
    assert_eq!(mock.calls(Endpoint::ComponentToken), 6);
    assert_eq!(mock.quota_used(COMPONENT, Endpoint::ComponentToken), 2);
}

#[tokio::test]
async fn the_component_token_call_checks_appid_secret_body_and_method() {
    let (mock, mut receiver) = open_mock(no_timer()).await;
    let ticket = mock.push_verify_ticket(COMPONENT).await.unwrap().ticket;
    receiver.next().await;
    let ticket = ticket.unwrap();
    let cases = [
        (
            json!({"component_appsecret": COMPONENT_SECRET, "component_verify_ticket": ticket}),
            41002,
        ),
        (
            json!({"component_appid": COMPONENT, "component_verify_ticket": ticket}),
            41004,
        ),
        (
            json!({"component_appid": "wxnosuchcomponent", "component_appsecret": COMPONENT_SECRET, "component_verify_ticket": ticket}),
            40013,
        ),
        (
            json!({"component_appid": COMPONENT, "component_appsecret": "wrong", "component_verify_ticket": ticket}),
            40125,
        ),
        (json!({"component_appid": 7}), 47001),
    ];
    for (body, errcode) in cases {
        assert_err(
            &post(&mock, COMPONENT_TOKEN, &[], &body.to_string()).await,
            errcode,
        );
    }
    assert_err(&post(&mock, COMPONENT_TOKEN, &[], "not json").await, 47001);
    assert_err(&get(&mock, COMPONENT_TOKEN, &[]).await, 43002);
    assert_eq!(mock.quota_used(COMPONENT, Endpoint::ComponentToken), 0);
}

#[tokio::test]
async fn a_superseded_component_token_lives_five_minutes_and_counts_one_call_per_fetch() {
    let (mock, mut receiver) = open_mock(no_timer()).await;
    let first = component_token(&mock, &mut receiver).await;
    let second = component_token(&mock, &mut receiver).await;
    assert_ne!(first, second);
    assert_eq!(mock.calls(Endpoint::ComponentToken), 2);
    mock.advance(Duration::from_secs(299));
    assert!(
        pre_auth_code(&mock, &first)
            .await
            .get("pre_auth_code")
            .is_some()
    );
    mock.advance(Duration::from_secs(2));
    assert_err(&pre_auth_code(&mock, &first).await, 42001);
    assert!(
        pre_auth_code(&mock, &second)
            .await
            .get("pre_auth_code")
            .is_some()
    );
    // A third fetch ends the first at once.
    let _third = component_token(&mock, &mut receiver).await;
    assert_err(&pre_auth_code(&mock, &first).await, 40001);
    assert!(
        pre_auth_code(&mock, &second)
            .await
            .get("pre_auth_code")
            .is_some()
    );
    // And every token expires at the end of its lifetime.
    mock.advance(Duration::from_secs(7200));
    assert_err(&pre_auth_code(&mock, &second).await, 42001);
    assert_eq!(mock.calls(Endpoint::PreAuthCode), 6);
}

#[tokio::test]
async fn component_calls_need_a_component_token_for_the_component_named() {
    let (mock, mut receiver) = open_mock(no_timer()).await;
    let token = component_token(&mock, &mut receiver).await;
    let body = pre_auth_code(&mock, &token).await;
    assert!(body.get("errcode").is_none(), "{body}");
    assert_eq!(body["expires_in"], 1800);
    assert!(
        body["pre_auth_code"]
            .as_str()
            .unwrap()
            .starts_with("preauthcode@@@")
    );

    assert_err(
        &post(
            &mock,
            PRE_AUTH,
            &[],
            &json!({"component_appid": COMPONENT}).to_string(),
        )
        .await,
        41001,
    );
    assert_err(&pre_auth_code(&mock, "not-a-token").await, 40001);
    assert_err(
        &with_component(
            &mock,
            PRE_AUTH,
            &token,
            json!({"component_appid": "wxother"}),
        )
        .await,
        40013,
    );
    assert_err(
        &with_component(&mock, PRE_AUTH, &token, json!({})).await,
        41002,
    );
    assert_err(
        &post(
            &mock,
            PRE_AUTH,
            &[("component_access_token", &token)],
            "<xml/>",
        )
        .await,
        47001,
    );
    // An official account's token is not a component token, nor the reverse.
    mock.add_app("wxofficial0000001", "secret");
    let official = get(
        &mock,
        "/cgi-bin/token",
        &[
            ("grant_type", "client_credential"),
            ("appid", "wxofficial0000001"),
            ("secret", "secret"),
        ],
    )
    .await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_err(&pre_auth_code(&mock, &official).await, 40001);
    assert_eq!(check(&mock, &token).await, 40001);
}

#[tokio::test]
async fn a_customer_authorizes_and_the_code_is_exchanged_once() {
    let (mock, mut receiver) = open_mock(no_timer()).await;
    let token = component_token(&mock, &mut receiver).await;
    let pre_auth = pre_auth_code(&mock, &token).await["pre_auth_code"]
        .as_str()
        .unwrap()
        .to_owned();
    let pushed = mock
        .authorize(COMPONENT, Some("wxcustomer000001"), Some(&pre_auth))
        .await
        .unwrap();
    assert_eq!(pushed.status, Some(200));
    assert_eq!(pushed.info_type, "authorized");
    assert_eq!(pushed.authorizer_appid.as_deref(), Some("wxcustomer000001"));
    let code = pushed.authorization_code.clone().unwrap();
    let fields = receiver.next().await.open();
    assert_eq!(fields.get("InfoType"), Some("authorized"));
    assert_eq!(fields.get("AuthorizerAppid"), Some("wxcustomer000001"));
    assert_eq!(fields.get("AuthorizationCode"), Some(code.as_str()));
    assert_eq!(fields.get("PreAuthCode"), Some(pre_auth.as_str()));
    let created = fields.integer("CreateTime").unwrap();
    let expires = fields.integer("AuthorizationCodeExpiredTime").unwrap();
    assert!(expires > created, "{created} {expires}");
    // The pre-auth code was used up.
    assert_eq!(
        mock.authorize(COMPONENT, None, Some(&pre_auth)).await,
        Err(PushError::BadPreAuthCode)
    );

    let body = query_auth(&mock, &token, &code).await;
    assert!(body.get("errcode").is_none(), "{body}");
    let info = &body["authorization_info"];
    assert_eq!(info["authorizer_appid"], "wxcustomer000001");
    assert_eq!(info["expires_in"], 7200);
    assert!(info["func_info"].as_array().is_some_and(|f| !f.is_empty()));
    let access = info["authorizer_access_token"].as_str().unwrap();
    let refresh = info["authorizer_refresh_token"].as_str().unwrap();
    assert_eq!(
        mock.current_authorizer_token("wxcustomer000001").as_deref(),
        Some(access)
    );
    assert_eq!(
        mock.authorizer_refresh_token("wxcustomer000001").as_deref(),
        Some(refresh)
    );

    // The authorizer token is an official account's token: tickets and checks take it.
    assert_eq!(check(&mock, access).await, 0);
    let ticket = get(
        &mock,
        "/cgi-bin/ticket/getticket",
        &[("access_token", access), ("type", "jsapi")],
    )
    .await;
    assert_eq!(ticket["errcode"], 0, "{ticket}");
    assert_eq!(
        mock.current_ticket("wxcustomer000001", "jsapi").as_deref(),
        ticket["ticket"].as_str()
    );

    // The code works once.
    assert_err(&query_auth(&mock, &token, &code).await, 61009);
    assert_err(
        &query_auth(&mock, &token, "queryauthcode@@@made-up").await,
        61009,
    );
    assert_eq!(mock.calls(Endpoint::QueryAuth), 3);
}

#[tokio::test]
async fn an_authorization_code_expires_after_an_hour() {
    let (mock, mut receiver) = open_mock(no_timer()).await;
    let pushed = mock.authorize(COMPONENT, None, None).await.unwrap();
    receiver.next().await;
    mock.advance(Duration::from_secs(3600));
    let token = component_token(&mock, &mut receiver).await;
    let code = pushed.authorization_code.unwrap();
    assert_err(&query_auth(&mock, &token, &code).await, 61010);
}

#[tokio::test]
async fn the_refresh_token_renews_the_authorizer_token_until_61023() {
    let (mock, mut receiver) = open_mock(no_timer()).await;
    let token = component_token(&mock, &mut receiver).await;
    let (authorizer, first, refresh) = authorized(&mock, &mut receiver, &token).await;

    let body = authorizer_token(&mock, &token, &authorizer, &refresh).await;
    assert!(body.get("errcode").is_none(), "{body}");
    assert_eq!(body["expires_in"], 7200);
    let second = body["authorizer_access_token"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    // WeChat's refresh token is long-lived: the same one comes back.
    assert_eq!(body["authorizer_refresh_token"], refresh.as_str());
    assert_eq!(mock.calls(Endpoint::AuthorizerToken), 1);
    assert_eq!(mock.quota_used(&authorizer, Endpoint::AuthorizerToken), 1);

    // The superseded authorizer token lives five more minutes, like any token.
    mock.advance(Duration::from_secs(299));
    assert_eq!(check(&mock, &first).await, 0);
    mock.advance(Duration::from_secs(2));
    assert_eq!(check(&mock, &first).await, 42001);
    assert_eq!(check(&mock, &second).await, 0);

    // A wrong refresh token, another component's authorizer, an unknown one: 61023.
    assert_err(
        &authorizer_token(&mock, &token, &authorizer, "refreshtoken@@@wrong").await,
        61023,
    );
    assert_err(
        &authorizer_token(&mock, &token, &authorizer, "").await,
        61023,
    );
    assert_err(
        &authorizer_token(&mock, &token, "wxnobody", &refresh).await,
        61023,
    );
    assert_err(
        &with_component(
            &mock,
            AUTHORIZER_TOKEN,
            &token,
            json!({"component_appid": COMPONENT, "authorizer_refresh_token": refresh}),
        )
        .await,
        41002,
    );
    // Refusals are not counted against the quota.
    assert_eq!(mock.quota_used(&authorizer, Endpoint::AuthorizerToken), 1);
}

#[tokio::test]
async fn unauthorized_ends_the_tokens_and_the_refresh_token_at_once() {
    let (mock, mut receiver) = open_mock(no_timer()).await;
    let token = component_token(&mock, &mut receiver).await;
    let (authorizer, access, refresh) = authorized(&mock, &mut receiver, &token).await;
    // A code pending when the customer withdraws dies with the authorization.
    let update = mock
        .update_authorization(COMPONENT, &authorizer)
        .await
        .unwrap();
    let fields = receiver.next().await.open();
    assert_eq!(fields.get("InfoType"), Some("updateauthorized"));
    assert_eq!(
        fields.get("AuthorizationCode"),
        update.authorization_code.as_deref()
    );
    assert_eq!(
        mock.authorizer_refresh_token(&authorizer).as_deref(),
        Some(refresh.as_str())
    );

    let pushed = mock.unauthorize(COMPONENT, &authorizer).await.unwrap();
    assert_eq!(pushed.status, Some(200));
    let fields = receiver.next().await.open();
    assert_eq!(fields.get("InfoType"), Some("unauthorized"));
    assert_eq!(fields.get("AuthorizerAppid"), Some(authorizer.as_str()));
    assert_eq!(check(&mock, &access).await, 40001);
    assert_err(
        &authorizer_token(&mock, &token, &authorizer, &refresh).await,
        61023,
    );
    assert_err(
        &query_auth(&mock, &token, update.authorization_code.as_deref().unwrap()).await,
        61009,
    );
    assert_eq!(mock.current_authorizer_token(&authorizer), None);
    assert_eq!(mock.authorizer_refresh_token(&authorizer), None);
    // Withdrawn twice, or updated after: refused without a push.
    assert_eq!(
        mock.unauthorize(COMPONENT, &authorizer).await,
        Err(PushError::BadAuthorizer)
    );
    assert_eq!(
        mock.update_authorization(COMPONENT, &authorizer).await,
        Err(PushError::BadAuthorizer)
    );
    assert!(receiver.quiet_for(Duration::from_millis(200)).await);

    // Authorizing again gives a new refresh token.
    let again = mock
        .authorize(COMPONENT, Some(&authorizer), None)
        .await
        .unwrap();
    receiver.next().await;
    let body = query_auth(&mock, &token, again.authorization_code.as_deref().unwrap()).await;
    let renewed = body["authorization_info"]["authorizer_refresh_token"]
        .as_str()
        .unwrap();
    assert_ne!(renewed, refresh);
    assert!(
        authorizer_token(&mock, &token, &authorizer, renewed)
            .await
            .get("authorizer_access_token")
            .is_some()
    );
}

#[tokio::test]
async fn with_rotating_refresh_tokens_only_the_newest_works() {
    let (mock, mut receiver) = open_mock(MockConfig {
        rotate_refresh_tokens: true,
        ..no_timer()
    })
    .await;
    let token = component_token(&mock, &mut receiver).await;
    let (authorizer, _, first) = authorized(&mock, &mut receiver, &token).await;
    let body = authorizer_token(&mock, &token, &authorizer, &first).await;
    let second = body["authorizer_refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(second, first);
    assert_err(
        &authorizer_token(&mock, &token, &authorizer, &first).await,
        61023,
    );
    assert!(
        authorizer_token(&mock, &token, &authorizer, &second)
            .await
            .get("authorizer_access_token")
            .is_some()
    );
}

#[tokio::test]
async fn the_timer_pushes_a_ticket_every_interval_of_mock_time() {
    // The default interval, ten minutes, reached by moving the mock clock.
    let mock = MockWeChat::start().await.unwrap();
    let mut receiver = Receiver::start().await;
    // The timer idles while no component has a push URL; registering one wakes it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    mock.add_component(component(Some(&receiver.url))).unwrap();
    assert!(
        receiver.quiet_for(Duration::from_millis(1500)).await,
        "nothing is due yet"
    );
    mock.advance(Duration::from_secs(600));
    let fields = receiver.next().await.open();
    assert_eq!(fields.get("InfoType"), Some("component_verify_ticket"));
    let ticket = fields.get("ComponentVerifyTicket").unwrap().to_owned();
    assert_eq!(mock.current_verify_ticket(COMPONENT), Some(ticket.clone()));
    assert!(
        component_token_call(&mock, &ticket)
            .await
            .get("component_access_token")
            .is_some()
    );
    assert!(
        receiver.quiet_for(Duration::from_millis(1500)).await,
        "one push per interval"
    );
    mock.advance(Duration::from_secs(600));
    let next = receiver.next().await.open();
    assert_ne!(next.get("ComponentVerifyTicket"), Some(ticket.as_str()));
}

#[tokio::test]
async fn without_a_push_url_nothing_is_pushed() {
    let mock = MockWeChat::start().await.unwrap();
    mock.add_component(component(None)).unwrap();
    assert_eq!(
        mock.push_verify_ticket(COMPONENT).await,
        Err(PushError::NoPushUrl)
    );
    assert_eq!(
        mock.authorize(COMPONENT, None, None).await,
        Err(PushError::NoPushUrl)
    );
    assert_eq!(mock.current_verify_ticket(COMPONENT), None);
    assert_eq!(
        mock.push_verify_ticket("wxunknowncomponent").await,
        Err(PushError::UnknownComponent)
    );
    // A key WXBizMsgCrypt would refuse is refused when the component is added.
    let mut bad = component(None);
    bad.aes_key = "short".to_owned();
    assert!(mock.add_component(bad).is_err());
}

#[tokio::test]
async fn the_receivers_answer_is_reported_whatever_it_is() {
    let (mock, mut receiver) = open_mock(no_timer()).await;
    receiver.status.store(500, Ordering::SeqCst);
    let pushed = mock.push_verify_ticket(COMPONENT).await.unwrap();
    receiver.next().await;
    assert_eq!(pushed.status, Some(500));
    // The ticket was issued all the same, as WeChat's would be.
    assert_eq!(mock.current_verify_ticket(COMPONENT), pushed.ticket);

    // Nobody listening: no status, and a reason.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/gone", closed.local_addr().unwrap());
    drop(closed);
    mock.add_component(component(Some(&url))).unwrap();
    let pushed: Pushed = mock.push_verify_ticket(COMPONENT).await.unwrap();
    assert_eq!(pushed.status, None);
    assert!(pushed.error.is_some(), "{pushed:?}");
}

#[tokio::test]
async fn faults_apply_to_the_component_endpoints() {
    let (mock, mut receiver) = open_mock(no_timer()).await;
    let ticket = mock
        .push_verify_ticket(COMPONENT)
        .await
        .unwrap()
        .ticket
        .unwrap();
    receiver.next().await;
    mock.inject(Endpoint::ComponentToken, Fault::ErrCode(-1), 1);
    mock.inject(Endpoint::ComponentToken, Fault::ErrCode(45009), 1);
    assert_err(&component_token_call(&mock, &ticket).await, -1);
    assert_err(&component_token_call(&mock, &ticket).await, 45009);
    mock.inject(
        Endpoint::ComponentToken,
        Fault::Delay(Duration::from_millis(300)),
        1,
    );
    let started = std::time::Instant::now();
    let token = component_token_call(&mock, &ticket).await["component_access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(started.elapsed() >= Duration::from_millis(300));
    mock.inject(Endpoint::AuthorizerToken, Fault::ErrCode(61023), 1);
    assert_err(
        &authorizer_token(&mock, &token, "wxany", "any").await,
        61023,
    );
    mock.inject(Endpoint::QueryAuth, Fault::HttpStatus(502), 1);
    let response = client()
        .post(format!("{}{QUERY_AUTH}", mock.url()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    mock.inject(
        Endpoint::PreAuthCode,
        Fault::Answer(json!({"pre_auth_code": 1})),
        1,
    );
    assert_eq!(
        pre_auth_code(&mock, &token).await,
        json!({"pre_auth_code": 1})
    );
    assert_eq!(mock.calls(Endpoint::ComponentToken), 3);
    assert_eq!(mock.calls(Endpoint::AuthorizerToken), 1);
    assert_eq!(mock.calls(Endpoint::QueryAuth), 1);
    assert_eq!(mock.calls(Endpoint::PreAuthCode), 1);
}

#[tokio::test]
async fn control_routes_register_components_and_push_on_demand() {
    let mock = MockWeChat::start_with(no_timer(), SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let mut receiver = Receiver::start().await;
    let control = |route: &'static str, body: Value| {
        let url = format!("{}/mock/{route}", mock.url());
        async move {
            let response = client().post(url).json(&body).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let registered = control(
        "components",
        json!({
            "component_appid": COMPONENT,
            "component_appsecret": COMPONENT_SECRET,
            "token": MSG_TOKEN,
            "encoding_aes_key": AES_KEY,
            "push_url": receiver.url,
        }),
    )
    .await;
    assert_eq!(registered, (200, json!({"errcode": 0, "errmsg": "ok"})));

    let (status, pushed) = control(
        "push/component_verify_ticket",
        json!({"component_appid": COMPONENT}),
    )
    .await;
    assert_eq!(status, 200, "{pushed}");
    assert_eq!(pushed["status"], 200);
    assert_eq!(pushed["answer"], "success");
    let fields = receiver.next().await.open();
    assert_eq!(
        fields.get("ComponentVerifyTicket"),
        pushed["ticket"].as_str()
    );

    let (_, authorized) = control(
        "push/authorized",
        json!({"component_appid": COMPONENT, "authorizer_appid": "wxcustomer000002"}),
    )
    .await;
    assert_eq!(authorized["authorizer_appid"], "wxcustomer000002");
    assert_eq!(authorized["status"], 200);
    let fields = receiver.next().await.open();
    assert_eq!(
        fields.get("AuthorizationCode"),
        authorized["authorization_code"].as_str()
    );

    let (_, updated) = control(
        "push/updateauthorized",
        json!({"component_appid": COMPONENT, "authorizer_appid": "wxcustomer000002"}),
    )
    .await;
    assert_eq!(updated["info_type"], "updateauthorized");
    receiver.next().await;
    let (_, withdrawn) = control(
        "push/unauthorized",
        json!({"component_appid": COMPONENT, "authorizer_appid": "wxcustomer000002"}),
    )
    .await;
    assert_eq!(withdrawn["info_type"], "unauthorized");
    assert_eq!(
        receiver.next().await.open().get("InfoType"),
        Some("unauthorized")
    );

    // Bad requests are 400 with a reason, and push nothing.
    for (route, body) in [
        ("push/unauthorized", json!({"component_appid": COMPONENT})),
        (
            "push/component_verify_ticket",
            json!({"component_appid": "wxnosuch"}),
        ),
        ("push/component_verify_ticket", json!({})),
        (
            "components",
            json!({"component_appid": COMPONENT, "component_appsecret": "s", "token": "t", "encoding_aes_key": "short"}),
        ),
    ] {
        let (status, body) = control(route, body).await;
        assert_eq!(status, 400, "{route}: {body}");
        assert_eq!(body["errcode"], 400);
        assert!(!body["errmsg"].as_str().unwrap().contains("::"), "{body}");
    }
    assert!(receiver.quiet_for(Duration::from_millis(200)).await);

    let calls: Value = client()
        .get(format!("{}/mock/calls", mock.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for name in [
        "component_token",
        "create_preauthcode",
        "query_auth",
        "authorizer_token",
    ] {
        assert_eq!(calls[name], 0, "{calls}");
    }
}

#[tokio::test]
async fn component_and_authorizer_tokens_are_held_to_the_daily_quota() {
    let (mock, mut receiver) = open_mock(MockConfig {
        token_daily_limit: 1,
        ..no_timer()
    })
    .await;
    let token = component_token(&mock, &mut receiver).await;
    let ticket = mock.current_verify_ticket(COMPONENT).unwrap();
    assert_err(&component_token_call(&mock, &ticket).await, 45009);
    let (authorizer, _, refresh) = authorized(&mock, &mut receiver, &token).await;
    let renew = || authorizer_token(&mock, &token, &authorizer, &refresh);
    assert!(renew().await.get("authorizer_access_token").is_some());
    assert_err(&renew().await, 45009);
    assert_eq!(mock.quota_used(&authorizer, Endpoint::AuthorizerToken), 1);
    assert_eq!(mock.quota_used(COMPONENT, Endpoint::ComponentToken), 1);
    // A mock day later, both may fetch again.
    mock.advance(Duration::from_secs(86_400));
    let token = component_token(&mock, &mut receiver).await;
    let body = authorizer_token(&mock, &token, &authorizer, &refresh).await;
    assert!(body.get("authorizer_access_token").is_some(), "{body}");
}
