//! The contract between the server and `wetoken-client`: the real client against the real server.

use futures::future::join_all;
use wetoken_client::{AccessToken, Error, JsapiTicket};
use wetoken_mock::Endpoint;

use crate::harness::{TestDb, TestServer, mock_with, on_every_database, settings};

const APP: &str = "wxclient";

on_every_database!(client_reads_what_the_server_serves);

async fn client_reads_what_the_server_serves(db: &TestDb) {
    let mock = mock_with(&[APP]).await;
    let server = TestServer::start(settings(db, &mock)).await;
    server.add_app(APP).await;

    let source = AccessToken::by_url(&format!("{}/{APP}/wechat/token/get", server.url)).unwrap();
    assert!(source.expires_at().await.is_none());
    let tokens = join_all((0..100).map(|_| source.token())).await;
    let token = tokens[0].as_ref().unwrap().clone();
    assert!(tokens.iter().all(|t| t.as_ref().unwrap() == &token));
    assert_eq!(Some(token), mock.current_token(APP));
    assert!(source.expires_at().await.is_some());

    let ticket = JsapiTicket::by_url(&format!("{}/wx/{APP}/ticket/get", server.url)).unwrap();
    assert_eq!(
        ticket.ticket().await.ok(),
        mock.current_ticket(APP, "jsapi")
    );
    assert_eq!(mock.calls(Endpoint::Token), 1);

    let unknown =
        AccessToken::by_url(&format!("{}/wxnobody/wechat/token/get", server.url)).unwrap();
    match unknown.token().await {
        Err(Error::Refused { status: 404, body }) => assert_eq!(body.errcode, 90404),
        other => panic!("expected a 404 refusal, got {other:?}"),
    }
    server.stop().await;
}
