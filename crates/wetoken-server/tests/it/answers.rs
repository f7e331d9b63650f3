//! How errors are answered: on the credential routes, HTTP 200 with the errcode by default (as
//! the Go wetoken and WeChat answered, the only way the Go SDK reads an error), or the fitting
//! status with `http.credential_errors = "as_status"`; on the admin and operations routes, the
//! fitting status always. The body is the same either way.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::Value;
use wetoken_mock::{Endpoint, Fault};
use wetoken_server::CredentialErrors;

use crate::harness::{TestDb, TestServer, mock_with, on_every_database, settings};

const APP: &str = "wxanswers";

on_every_database!(errors_keep_their_body_and_the_group_picks_the_status);

/// One request and the answer it must get.
struct Case {
    what: &'static str,
    method: Method,
    path: String,
    body: Option<Vec<u8>>,
    /// The fitting status, and the errcode.
    status: u16,
    errcode: i64,
    /// Whether the route is a credential route, whose status the setting picks.
    credential: bool,
}

fn cases(cold: &str, halted: &str) -> Vec<Case> {
    let case = |what, method, path: String, status, errcode, credential| Case {
        what,
        method,
        path,
        body: None,
        status,
        errcode,
        credential,
    };
    let get = Method::GET;
    vec![
        case(
            "unknown app",
            get.clone(),
            "/wxnobody/wechat/token/get".into(),
            404,
            90404,
            true,
        ),
        case(
            "unknown app, /wx",
            get.clone(),
            "/wx/wxnobody/ticket/get".into(),
            404,
            90404,
            true,
        ),
        case(
            "a platform's token, not a platform",
            get.clone(),
            format!("/component/{APP}/token/get"),
            400,
            90400,
            true,
        ),
        case(
            "a platform's token, unknown",
            get.clone(),
            "/component/wxnobody/token/get".into(),
            404,
            90404,
            true,
        ),
        // A platform's other routes are not credential routes.
        case(
            "a platform's link, unknown",
            get.clone(),
            "/component/wxnobody/auth_url?redirect_uri=https://a.example/".into(),
            404,
            90404,
            false,
        ),
        case(
            "a platform's authorizers, unknown",
            get.clone(),
            "/component/wxnobody/authorizers".into(),
            404,
            90404,
            false,
        ),
        case(
            "malformed appid",
            get.clone(),
            "/not..an..appid/wechat/token/get".into(),
            400,
            90400,
            true,
        ),
        case(
            "unknown ticket type",
            get.clone(),
            format!("/{APP}/wechat/ticket/get?type=bogus"),
            400,
            90400,
            true,
        ),
        case(
            "refresh without a value",
            get.clone(),
            format!("/{APP}/wechat/token/refresh"),
            400,
            90400,
            true,
        ),
        case(
            "ticket refresh, /wx",
            get.clone(),
            format!("/wx/{APP}/ticket/refresh"),
            400,
            90400,
            true,
        ),
        case(
            "jssdk without url",
            get.clone(),
            format!("/{APP}/wechat/jssdk/config"),
            400,
            90400,
            true,
        ),
        case(
            "wrong method",
            Method::DELETE,
            format!("/{APP}/wechat/token/get"),
            405,
            90405,
            true,
        ),
        case(
            "no route under /wx",
            get.clone(),
            format!("/wx/{APP}/no/such"),
            404,
            90444,
            true,
        ),
        case(
            "WeChat unreachable",
            get.clone(),
            format!("/{cold}/wechat/token/get"),
            503,
            90503,
            true,
        ),
        case(
            "WeChat refused for good",
            get.clone(),
            format!("/wx/{halted}/token/get"),
            502,
            40013,
            true,
        ),
        Case {
            body: Some(vec![b'x'; 70 * 1024]),
            ..case(
                "body too large",
                Method::POST,
                format!("/{APP}/wechat/token/refresh"),
                413,
                90413,
                true,
            )
        },
        // Not credential routes: the status, always.
        case(
            "admin: unknown app",
            get.clone(),
            "/wechat/app/show?appid=wxnobody".into(),
            404,
            90404,
            false,
        ),
        case(
            "admin: bad input",
            get.clone(),
            "/wechat/app/show".into(),
            400,
            90400,
            false,
        ),
        case(
            "admin: no such action",
            get.clone(),
            "/wechat/app/nope".into(),
            404,
            90444,
            false,
        ),
        case(
            "admin: duplicate",
            get.clone(),
            format!("/wechat/app/create?appid={APP}&secret=s"),
            409,
            90409,
            false,
        ),
        case(
            "no route",
            get.clone(),
            "/nothing/here".into(),
            404,
            90444,
            false,
        ),
        case(
            "health by POST",
            Method::POST,
            "/health".into(),
            405,
            90405,
            false,
        ),
    ]
}

async fn errors_keep_their_body_and_the_group_picks_the_status(db: &TestDb) {
    // Each mode has its own unreachable and halted app: their failure is recorded in the
    // shared database.
    let apps = [APP, "wxcold0", "wxhalt0", "wxcold1", "wxhalt1"];
    let mock = mock_with(&apps).await;
    let mut answers: BTreeMap<&str, Vec<(u16, Value)>> = BTreeMap::new();
    for (i, mode) in [CredentialErrors::InBody, CredentialErrors::AsStatus]
        .into_iter()
        .enumerate()
    {
        let mut s = settings(db, &mock);
        s.http.credential_errors = mode;
        let server = TestServer::start(s).await;
        let (cold, halted) = (format!("wxcold{i}"), format!("wxhalt{i}"));
        if i == 0 {
            server.add_app(APP).await;
        }
        server.add_app(&cold).await;
        server.add_app(&halted).await;
        mock.inject(Endpoint::Token, Fault::Drop, 1);
        let (status, body) = server.get(&format!("/{cold}/wechat/token/get")).await;
        assert_eq!(body["errcode"], 90503, "{body}");
        let cold_status = status;
        mock.inject(Endpoint::Token, Fault::ErrCode(40013), 1);
        server.get(&format!("/{halted}/wechat/token/get")).await;

        for case in cases(&cold, &halted) {
            let mut request = server
                .http
                .request(case.method.clone(), format!("{}{}", server.url, case.path));
            if let Some(body) = case.body.clone() {
                request = request.body(body);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let closes = response
                .headers()
                .get("connection")
                .is_some_and(|v| v == "close");
            let text = response.text().await.unwrap();
            let body: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {text}", case.what));
            let sent = if case.credential && mode == CredentialErrors::InBody {
                200
            } else {
                case.status
            };
            assert_eq!(status, sent, "{:?} {}: {body}", mode, case.what);
            assert_eq!(
                body["errcode"], case.errcode,
                "{:?} {}: {body}",
                mode, case.what
            );
            assert!(
                !body["errmsg"].as_str().unwrap_or_default().is_empty(),
                "{}: {body}",
                case.what
            );
            if case.status == 413 {
                assert!(
                    closes,
                    "{mode:?}: a 413 closes the connection, whatever its status"
                );
            }
            answers.entry(case.what).or_default().push((status, body));
        }
        // The first request to the cold app answered like the cases.
        assert_eq!(cold_status, if i == 0 { 200 } else { 503 });
        // Successes are what they were.
        let (status, body) = server.get(&format!("/{APP}/wechat/token/get")).await;
        assert_eq!((status, body["errcode"].as_i64()), (200, Some(0)), "{body}");
        server.stop().await;
    }
    // The same body in both modes.
    for (what, both) in answers {
        let [(_, in_body), (_, as_status)] = both.as_slice() else {
            panic!("{what}: {both:?}");
        };
        if what.starts_with("WeChat") {
            // Another app each time; the same errcode, checked above.
            continue;
        }
        assert_eq!(in_body, as_status, "{what}");
    }
}
