//! The open platform's WeChat calls (issue #19) against the mock: each call's answer as wetoken
//! reads it, WeChat's errcodes for it, and no token in any error or `Debug`.

use std::time::Duration;

use serde_json::json;
use wetoken_core::wechat::{UpstreamError, WeChat};
use wetoken_core::{AppId, Secret};
use wetoken_mock::{Endpoint, Fault, MockComponent, MockConfig, MockWeChat};

use super::wechat_on;

const COMPONENT: &str = "wxcomponent0123456";
const COMPONENT_SECRET: &str = "componentsecret0123456789abcdef0";

/// A mock with one component, its pushes going nowhere (a push still makes the ticket the
/// newest), no timer; the client; the component's appid.
async fn platform() -> (MockWeChat, WeChat, AppId) {
    let config = MockConfig {
        verify_ticket_interval: None,
        ..MockConfig::default()
    };
    let mock = MockWeChat::start_with(config, ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    mock.add_component(MockComponent {
        appid: COMPONENT.into(),
        secret: COMPONENT_SECRET.into(),
        token: "pushToken42".into(),
        aes_key: "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C".into(),
        push_url: Some("http://127.0.0.1:9/event".into()),
    })
    .unwrap();
    let wechat = wechat_on(&mock);
    (mock, wechat, AppId::parse(COMPONENT).unwrap())
}

/// A fresh verify ticket pushed, and a component token fetched with it.
async fn component_token(mock: &MockWeChat, wechat: &WeChat, component: &AppId) -> String {
    let ticket = mock
        .push_verify_ticket(COMPONENT)
        .await
        .unwrap()
        .ticket
        .unwrap();
    let secret = Secret::new(COMPONENT_SECRET);
    wechat
        .component_token(component, &secret, &ticket)
        .await
        .unwrap()
        .value
}

fn errcode(result: Result<impl std::fmt::Debug, UpstreamError>) -> i64 {
    let error = result.unwrap_err();
    error
        .errcode()
        .unwrap_or_else(|| panic!("no errcode: {error}"))
}

#[tokio::test]
async fn the_authorization_flow_through_the_client() {
    let (mock, wechat, component) = platform().await;
    let secret = Secret::new(COMPONENT_SECRET);

    // No ticket pushed yet: 61006, and a wrong secret 40125.
    assert_eq!(
        errcode(
            wechat
                .component_token(&component, &secret, "ticket@@@none")
                .await
        ),
        61006
    );
    let ticket = mock
        .push_verify_ticket(COMPONENT)
        .await
        .unwrap()
        .ticket
        .unwrap();
    let wrong = Secret::new("not-the-secret");
    assert_eq!(
        errcode(wechat.component_token(&component, &wrong, &ticket).await),
        40125
    );
    let issued = wechat
        .component_token(&component, &secret, &ticket)
        .await
        .unwrap();
    assert_eq!(issued.expires_in, 7200);
    assert_eq!(
        Some(issued.value.as_str()),
        mock.current_component_token(COMPONENT).as_deref()
    );
    let token = issued.value;

    let pre_auth = wechat.pre_auth_code(&token, &component).await.unwrap();
    assert_eq!(pre_auth.expires_in, 1800);
    let pushed = mock
        .authorize(COMPONENT, None, Some(&pre_auth.value))
        .await
        .unwrap();
    let code = pushed.authorization_code.unwrap();
    let authorization = wechat.query_auth(&token, &component, &code).await.unwrap();
    assert_eq!(
        Some(authorization.authorizer_appid.as_str()),
        pushed.authorizer_appid.as_deref()
    );
    let authorizer = authorization.authorizer_appid.clone();
    assert_eq!(
        Some(authorization.token.value.as_str()),
        mock.current_authorizer_token(authorizer.as_str())
            .as_deref()
    );
    assert_eq!(authorization.token.expires_in, 7200);
    let refresh = authorization.refresh_token.clone().unwrap();
    assert_eq!(
        Some(refresh.expose()),
        mock.authorizer_refresh_token(authorizer.as_str())
            .as_deref()
    );
    assert_eq!(authorization.func_info, [1, 2, 15]);
    // A code is good once.
    assert_eq!(
        errcode(wechat.query_auth(&token, &component, &code).await),
        61009
    );

    let renewed = wechat
        .authorizer_token(&token, &component, &authorizer, &refresh)
        .await
        .unwrap();
    assert_ne!(renewed.token.value, authorization.token.value);
    assert_eq!(
        Some(renewed.token.value.as_str()),
        mock.current_authorizer_token(authorizer.as_str())
            .as_deref()
    );
    assert_eq!(renewed.token.expires_in, 7200);
    assert_eq!(renewed.refresh_token.as_ref(), Some(&refresh));
    assert_eq!(
        errcode(
            wechat
                .authorizer_token(
                    &token,
                    &component,
                    &authorizer,
                    &Secret::new("refreshtoken@@@x")
                )
                .await
        ),
        61023
    );

    let info = wechat
        .authorizer_info(&token, &component, &authorizer)
        .await
        .unwrap();
    assert!(!info.mini_program);
    assert_eq!(info.nick_name, Some(format!("mock {authorizer}")));

    // A bad component token: 40001, whichever call carries it.
    let bad = "not-a-component-token";
    assert_eq!(errcode(wechat.pre_auth_code(bad, &component).await), 40001);
    assert_eq!(
        errcode(
            wechat
                .authorizer_token(bad, &component, &authorizer, &refresh)
                .await
        ),
        40001
    );
    assert_eq!(
        errcode(wechat.authorizer_info(bad, &component, &authorizer).await),
        40001
    );
    assert_eq!(
        errcode(wechat.query_auth(bad, &component, "c").await),
        40001
    );

    // The customer withdraws: the refresh token gets 61023, the info 61003.
    mock.unauthorize(COMPONENT, authorizer.as_str())
        .await
        .unwrap();
    assert_eq!(
        errcode(
            wechat
                .authorizer_token(&token, &component, &authorizer, &refresh)
                .await
        ),
        61023
    );
    assert_eq!(
        errcode(
            wechat
                .authorizer_info(&token, &component, &authorizer)
                .await
        ),
        61003
    );
    assert_eq!(mock.calls(Endpoint::AuthorizerInfo), 3);
}

#[tokio::test]
async fn only_the_newest_ticket_and_only_for_twelve_hours() {
    let (mock, wechat, component) = platform().await;
    let secret = Secret::new(COMPONENT_SECRET);
    let older = mock.push_verify_ticket(COMPONENT).await.unwrap().ticket;
    let newest = mock.push_verify_ticket(COMPONENT).await.unwrap().ticket;
    let (older, newest) = (older.unwrap(), newest.unwrap());
    assert_eq!(
        errcode(wechat.component_token(&component, &secret, &older).await),
        61006
    );
    mock.advance(Duration::from_secs(12 * 3600));
    assert_eq!(
        errcode(wechat.component_token(&component, &secret, &newest).await),
        61005
    );
}

#[tokio::test]
async fn authorizer_info_tells_a_mini_program() {
    let (mock, wechat, component) = platform().await;
    let token = component_token(&mock, &wechat, &component).await;
    let mini = mock
        .authorize_as(COMPONENT, Some("wxmini0123456789"), None, true)
        .await
        .unwrap();
    assert_eq!(mini.authorizer_appid.as_deref(), Some("wxmini0123456789"));
    let appid = AppId::parse("wxmini0123456789").unwrap();
    let info = wechat
        .authorizer_info(&token, &component, &appid)
        .await
        .unwrap();
    assert!(info.mini_program);
    // An update keeps what the account is.
    mock.update_authorization(COMPONENT, appid.as_str())
        .await
        .unwrap();
    let info = wechat
        .authorizer_info(&token, &component, &appid)
        .await
        .unwrap();
    assert!(info.mini_program);
    // Unknown to the component: 61003.
    let stranger = AppId::parse("wxstranger000000").unwrap();
    assert_eq!(
        errcode(wechat.authorizer_info(&token, &component, &stranger).await),
        61003
    );
}

#[tokio::test]
async fn no_token_in_errors_or_debug() {
    let (mock, wechat, component) = platform().await;
    let token = component_token(&mock, &wechat, &component).await;
    let pushed = mock.authorize(COMPONENT, None, None).await.unwrap();
    let code = pushed.authorization_code.unwrap();
    let authorization = wechat.query_auth(&token, &component, &code).await.unwrap();
    let authorizer = authorization.authorizer_appid.clone();
    let refresh = authorization.refresh_token.clone().unwrap();
    let renewed = wechat
        .authorizer_token(&token, &component, &authorizer, &refresh)
        .await
        .unwrap();

    let secrets = [
        token.clone(),
        refresh.expose().to_owned(),
        authorization.token.value.clone(),
        renewed.token.value.clone(),
        COMPONENT_SECRET.to_owned(),
    ];
    let clean = |text: &str| {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{secret} in {text}");
        }
    };
    clean(&format!("{authorization:?}"));
    clean(&format!("{renewed:?}"));

    // The connection dropped (the request URL carries the component token), a redirect, and an
    // answer whose parts are of the wrong shape with a token in them.
    let faults = [
        Fault::Drop,
        Fault::Redirect("http://127.0.0.1:9".into()),
        Fault::Answer(
            json!({"authorization_info": {"authorizer_appid": token, "func_info": token}}),
        ),
        Fault::Answer(json!({"authorizer_info": {"nick_name": [token], "MiniProgramInfo": {}}})),
        Fault::Answer(
            json!({"authorizer_access_token": token, "expires_in": "7200",
                             "authorizer_refresh_token": refresh.expose()}),
        ),
    ];
    for endpoint in [
        Endpoint::PreAuthCode,
        Endpoint::QueryAuth,
        Endpoint::AuthorizerToken,
        Endpoint::AuthorizerInfo,
        Endpoint::ComponentToken,
    ] {
        for fault in &faults {
            mock.inject(endpoint, fault.clone(), 1);
            let error = match endpoint {
                Endpoint::PreAuthCode => wechat.pre_auth_code(&token, &component).await.err(),
                Endpoint::QueryAuth => wechat.query_auth(&token, &component, "c").await.err(),
                Endpoint::AuthorizerToken => wechat
                    .authorizer_token(&token, &component, &authorizer, &refresh)
                    .await
                    .err(),
                Endpoint::AuthorizerInfo => wechat
                    .authorizer_info(&token, &component, &authorizer)
                    .await
                    .err(),
                _ => wechat
                    .component_token(&component, &Secret::new(COMPONENT_SECRET), "t")
                    .await
                    .err(),
            };
            let error = error.unwrap_or_else(|| panic!("{endpoint:?} {fault:?} succeeded"));
            clean(&error.to_string());
            clean(&format!("{error:?}"));
            clean(&error.message());
        }
    }
}

#[tokio::test]
async fn a_malformed_authorization_is_refused() {
    let (mock, wechat, component) = platform().await;
    let token = component_token(&mock, &wechat, &component).await;
    let answer = |appid: &str| {
        Fault::Answer(json!({"authorization_info": {
            "authorizer_appid": appid, "authorizer_access_token": "TOKEN", "expires_in": 7200,
            "authorizer_refresh_token": "", "func_info": []}}))
    };
    for bad in ["wx bad", "", "wx/../x"] {
        mock.inject(Endpoint::QueryAuth, answer(bad), 1);
        let error = wechat
            .query_auth(&token, &component, "c")
            .await
            .unwrap_err();
        assert!(
            matches!(error, UpstreamError::Malformed(_)),
            "{bad:?}: {error}"
        );
    }
    // A good one with an empty refresh token: none.
    mock.inject(Endpoint::QueryAuth, answer("wxgood"), 1);
    let authorization = wechat.query_auth(&token, &component, "c").await.unwrap();
    assert_eq!(authorization.authorizer_appid.as_str(), "wxgood");
    assert!(authorization.refresh_token.is_none());
    assert!(authorization.func_info.is_empty());
    // No refresh token in an authorizer token's answer: none, and the token still comes.
    mock.inject(
        Endpoint::AuthorizerToken,
        Fault::Answer(json!({"authorizer_access_token": "TOKEN2", "expires_in": 7200})),
        1,
    );
    let appid = AppId::parse("wxgood").unwrap();
    let issued = wechat
        .authorizer_token(&token, &component, &appid, &Secret::new("r"))
        .await
        .unwrap();
    assert_eq!(issued.token.value, "TOKEN2");
    assert!(issued.refresh_token.is_none());
}
