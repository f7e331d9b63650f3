//! The open platform through the engine alone: a component's token needs a verify ticket, an
//! authorizer's token comes through its component's, with its refresh token kept, and a
//! withdrawal or an invalid refresh token stops it.

use std::time::Duration;

use wetoken_core::{AppId, AppKind, Error, Kind, NewApp, Secret};
use wetoken_mock::{Endpoint, Fault, MockComponent, MockConfig, MockWeChat};

use super::engine;

const COMPONENT: &str = "wxcomponent01";
const TOKEN: &str = "pushtoken";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

/// A mock that knows the component; its pushes go nowhere (the engine is handed what they
/// carry), and only on demand.
async fn mock(rotate_refresh_tokens: bool) -> MockWeChat {
    let config = MockConfig {
        verify_ticket_interval: None,
        rotate_refresh_tokens,
        ..MockConfig::default()
    };
    let mock = MockWeChat::start_with(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    mock.add_component(MockComponent {
        appid: COMPONENT.into(),
        secret: "componentsecret".into(),
        token: TOKEN.into(),
        aes_key: AES_KEY.into(),
        push_url: Some("http://127.0.0.1:9/nobody".into()),
    })
    .unwrap();
    mock
}

fn component_app() -> NewApp {
    NewApp {
        kind: AppKind::Component,
        token: Some(Secret::new(TOKEN)),
        aes_key: Some(Secret::new(AES_KEY)),
        ..NewApp::mp(
            AppId::parse(COMPONENT).unwrap(),
            Secret::new("componentsecret"),
        )
    }
}

fn id(s: &str) -> AppId {
    AppId::parse(s).unwrap()
}

#[tokio::test]
async fn a_component_token_waits_for_a_verify_ticket_and_never_calls_wechat_without_one() {
    let mock = mock(false).await;
    let engine = engine(&mock).await;
    engine.add_app(&component_app()).await.unwrap();
    let component = id(COMPONENT);

    let err = engine.get(&component, Kind::AccessToken).await.unwrap_err();
    assert!(matches!(err, Error::NoVerifyTicket(_)), "{err:?}");
    assert!(
        err.to_string().contains("/component/wxcomponent01/event"),
        "{err}"
    );
    // Read back from the recorded failure, still without WeChat.
    let again = engine.get(&component, Kind::AccessToken).await.unwrap_err();
    assert!(matches!(again, Error::NoVerifyTicket(_)), "{again:?}");
    assert_eq!(mock.calls(Endpoint::ComponentToken), 0);

    let pushed = mock.push_verify_ticket(COMPONENT).await.unwrap();
    let ticket = pushed.ticket.unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!(
        engine
            .accept_verify_ticket(&component, &ticket, now)
            .await
            .unwrap()
    );
    // An older push does not replace it.
    assert!(
        !engine
            .accept_verify_ticket(&component, "old", now - 600)
            .await
            .unwrap()
    );

    // The wait is lifted: the next ask fetches at once, and once.
    let token = engine.get(&component, Kind::AccessToken).await.unwrap();
    assert_eq!(
        Some(token.value.clone()),
        mock.current_component_token(COMPONENT)
    );
    for _ in 0..5 {
        engine.get(&component, Kind::AccessToken).await.unwrap();
    }
    assert_eq!(mock.calls(Endpoint::ComponentToken), 1);
}

/// A component with a ticket, and one authorizer it stored through an `authorized` push.
async fn authorized(mock: &MockWeChat, engine: &wetoken_core::Engine, authorizer: &str) -> AppId {
    let component = id(COMPONENT);
    if engine.store().app(&component).await.unwrap().is_none() {
        engine.add_app(&component_app()).await.unwrap();
        let ticket = mock
            .push_verify_ticket(COMPONENT)
            .await
            .unwrap()
            .ticket
            .unwrap();
        engine
            .accept_verify_ticket(&component, &ticket, chrono::Utc::now().timestamp())
            .await
            .unwrap();
    }
    let pushed = mock
        .authorize(COMPONENT, Some(authorizer), None)
        .await
        .unwrap();
    let code = pushed.authorization_code.unwrap();
    engine.authorized(&component, &code).await.unwrap()
}

#[tokio::test]
async fn an_authorized_account_is_served_through_its_component_and_renewed_with_its_refresh_token()
{
    let mock = mock(true).await;
    let engine = engine(&mock).await;
    let appid = authorized(&mock, &engine, "wxauthorizer01").await;
    let info = engine.store().app_info(&appid).await.unwrap().unwrap();
    assert_eq!(info.component, Some(id(COMPONENT)));
    assert_eq!(info.kind, AppKind::Mp);

    // The token api_query_auth gave is stored and served: no api_authorizer_token yet.
    let token = engine.get(&appid, Kind::AccessToken).await.unwrap();
    assert_eq!(
        Some(token.value.clone()),
        mock.current_authorizer_token("wxauthorizer01")
    );
    assert_eq!(mock.calls(Endpoint::AuthorizerToken), 0);
    // Tickets work as for any official account.
    let ticket = engine.get(&appid, Kind::JsapiTicket).await.unwrap();
    assert_eq!(
        Some(ticket.value.clone()),
        mock.current_ticket("wxauthorizer01", "jsapi")
    );

    // Renewals rotate the refresh token (this mock's stricter world): each one is kept, or the
    // second renewal would get 61023.
    for round in 1..=3 {
        let current = engine.get(&appid, Kind::AccessToken).await.unwrap();
        mock.invalidate_token(&current.value);
        let renewed = engine
            .refresh(&appid, Kind::AccessToken, &current.value)
            .await
            .unwrap();
        assert_eq!(mock.calls(Endpoint::AuthorizerToken), round);
        assert_eq!(
            Some(renewed.value.clone()),
            mock.current_authorizer_token("wxauthorizer01"),
            "round {round}"
        );
        let stored = engine.store().app(&appid).await.unwrap().unwrap();
        assert_eq!(
            Some(stored.secret.expose().to_owned()),
            mock.authorizer_refresh_token("wxauthorizer01"),
            "round {round}: the refresh token WeChat returned is the stored one"
        );
    }
}

#[tokio::test]
async fn an_invalid_refresh_token_halts_with_a_message_to_authorize_again() {
    let mock = mock(false).await;
    let engine = engine(&mock).await;
    let appid = authorized(&mock, &engine, "wxauthorizer02").await;
    let token = engine.get(&appid, Kind::AccessToken).await.unwrap();
    mock.inject(Endpoint::AuthorizerToken, Fault::ErrCode(61023), 1);
    mock.invalidate_token(&token.value);
    let err = engine
        .refresh(&appid, Kind::AccessToken, &token.value)
        .await
        .unwrap_err();
    let Error::Halted {
        errcode, message, ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(*errcode, Some(61023));
    assert!(message.contains("must authorize"), "{message}");
    // Halted: nothing more is asked of WeChat.
    let calls = mock.calls(Endpoint::AuthorizerToken);
    for _ in 0..3 {
        assert!(
            engine
                .refresh(&appid, Kind::AccessToken, &token.value)
                .await
                .is_err()
        );
    }
    assert_eq!(mock.calls(Endpoint::AuthorizerToken), calls);
}

#[tokio::test]
async fn a_withdrawn_authorization_stops_serving_until_the_account_authorizes_again() {
    let mock = mock(false).await;
    let engine = engine(&mock).await;
    let appid = authorized(&mock, &engine, "wxauthorizer03").await;
    engine.get(&appid, Kind::AccessToken).await.unwrap();

    assert!(engine.unauthorized(&id(COMPONENT), &appid).await.unwrap());
    let err = engine.get(&appid, Kind::AccessToken).await.unwrap_err();
    assert!(matches!(err, Error::Revoked { .. }), "{err:?}");
    assert!(
        !engine
            .unauthorized(&id("wxothercomponent"), &appid)
            .await
            .unwrap()
    );

    // Authorizing again serves it again.
    let again = authorized(&mock, &engine, "wxauthorizer03").await;
    let token = engine.get(&again, Kind::AccessToken).await.unwrap();
    assert_eq!(
        Some(token.value.clone()),
        mock.current_authorizer_token("wxauthorizer03")
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test]
async fn a_platform_with_authorizers_is_not_removed_and_an_authorizer_needs_a_platform() {
    let mock = mock(false).await;
    let engine = engine(&mock).await;
    let appid = authorized(&mock, &engine, "wxauthorizer04").await;
    let err = engine.delete_app(&id(COMPONENT)).await.unwrap_err();
    assert!(err.to_string().contains("remove them first"), "{err}");

    // An authorizer of a platform that is not stored, or of an app that is not one.
    for component in ["wxnosuchcomponent", "wxauthorizer04"] {
        let app = NewApp {
            component: Some(id(component)),
            ..NewApp::mp(id("wxorphan"), Secret::new("refreshtoken"))
        };
        let err = engine.add_app(&app).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    }
    // A platform without a usable EncodingAESKey.
    let bad = NewApp {
        aes_key: Some(Secret::new("tooshort")),
        ..NewApp::mp(id("wxbadcomponent"), Secret::new("s"))
    };
    let bad = NewApp {
        kind: AppKind::Component,
        token: Some(Secret::new(TOKEN)),
        ..bad
    };
    assert!(matches!(
        engine.add_app(&bad).await.unwrap_err(),
        Error::InvalidInput(_)
    ));

    engine.delete_app(&appid).await.unwrap();
    engine.delete_app(&id(COMPONENT)).await.unwrap();
}

/// A refresh token replaced while a refresh is in flight with the one before (an operator's
/// update, or the account authorizing again) is newer than what that refresh's answer brings
/// back: it stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_replaced_during_a_refresh_is_not_overwritten_by_its_answer() {
    let mock = mock(false).await;
    let engine = engine(&mock).await;
    let appid = authorized(&mock, &engine, "wxauthorizer05").await;
    let before = mock.authorizer_refresh_token("wxauthorizer05").unwrap();
    let token = engine.get(&appid, Kind::AccessToken).await.unwrap();
    mock.invalidate_token(&token.value);
    // WeChat acts at once (the same refresh token back) and answers a second later.
    mock.inject(
        Endpoint::AuthorizerToken,
        Fault::DelayAnswer(Duration::from_secs(1)),
        1,
    );
    let refresh = tokio::spawn({
        let (engine, appid, value) = (engine.clone(), appid.clone(), token.value.clone());
        async move { engine.refresh(&appid, Kind::AccessToken, &value).await }
    });
    while mock.calls(Endpoint::AuthorizerToken) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let newer = wetoken_core::AppUpdate {
        secret: Some(Secret::new("refreshtoken@@@set-meanwhile")),
        ..Default::default()
    };
    engine.update_app(&appid, &newer).await.unwrap();
    refresh.await.unwrap().unwrap();
    let stored = engine.store().app(&appid).await.unwrap().unwrap();
    assert_eq!(stored.secret.expose(), "refreshtoken@@@set-meanwhile");
    assert_ne!(stored.secret.expose(), before);
}

/// A withdrawal pushed while an earlier authorization's exchange is still under way is the
/// newer word: the exchange, finishing late, does not lift it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_authorization_does_not_lift_a_withdrawal_pushed_after_it_began() {
    let mock = mock(false).await;
    let (engine, clock) =
        super::engine_and_clock(&mock, wetoken_core::EngineConfig::default()).await;
    let appid = authorized(&mock, &engine, "wxauthorizer06").await;
    let code = mock
        .update_authorization(COMPONENT, "wxauthorizer06")
        .await
        .unwrap()
        .authorization_code
        .unwrap();
    // WeChat exchanges the code at once and answers a second later.
    mock.inject(
        Endpoint::QueryAuth,
        Fault::DelayAnswer(Duration::from_secs(1)),
        1,
    );
    let exchange = tokio::spawn({
        let engine = engine.clone();
        async move { engine.authorized(&id(COMPONENT), &code).await }
    });
    while mock.calls(Endpoint::QueryAuth) < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    clock.advance(Duration::from_secs(1));
    assert!(engine.unauthorized(&id(COMPONENT), &appid).await.unwrap());
    let err = exchange.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("withdrawal stands"), "{err}");
    let err = engine.get(&appid, Kind::AccessToken).await.unwrap_err();
    assert!(matches!(err, Error::Revoked { .. }), "{err:?}");
}

/// An exchange made with a component token WeChat has retired replaces it once and succeeds.
#[tokio::test]
async fn an_exchange_with_a_retired_component_token_replaces_it_and_succeeds() {
    let mock = mock(false).await;
    let engine = engine(&mock).await;
    authorized(&mock, &engine, "wxauthorizer07").await;
    let component = engine.get(&id(COMPONENT), Kind::AccessToken).await.unwrap();
    mock.invalidate_token(&component.value);
    let calls = mock.calls(Endpoint::ComponentToken);
    let appid = authorized(&mock, &engine, "wxauthorizer08").await;
    assert_eq!(mock.calls(Endpoint::ComponentToken), calls + 1);
    let token = engine.get(&appid, Kind::AccessToken).await.unwrap();
    assert_eq!(
        Some(token.value.clone()),
        mock.current_authorizer_token("wxauthorizer08")
    );
}
