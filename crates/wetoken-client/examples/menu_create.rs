//! The Go wetoken README's example in Rust: pull the token from wetoken and create a menu.
//!
//! Against the mock WeChat and a local server:
//!
//! ```sh
//! cargo run -p wetoken-mock -- --app wx9e02ddcc34513fd4:6acb2b999177524beba3d97d54df2de5 &
//! cargo run -p wetoken-server -- start --wechat-base-url http://127.0.0.1:9998 &
//! curl -s localhost:9999/wechat/app/create -d 'appid=wx9e02ddcc34513fd4&secret=6acb2b999177524beba3d97d54df2de5'
//! WECHAT_BASE_URL=http://127.0.0.1:9998 cargo run -p wetoken-client --example menu_create
//! ```
//!
//! `WETOKEN_TOKEN_URL` names the token route (default: the app above on 127.0.0.1:9999) and
//! `WECHAT_BASE_URL` WeChat's API root (default `https://api.weixin.qq.com`).

use std::process::ExitCode;

use serde_json::json;
use wetoken_client::{AccessToken, call};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let token_url = std::env::var("WETOKEN_TOKEN_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:9999/wx9e02ddcc34513fd4/wechat/token/get".into());
    let wechat =
        std::env::var("WECHAT_BASE_URL").unwrap_or_else(|_| "https://api.weixin.qq.com".into());
    let source = match AccessToken::by_url(&token_url) {
        Ok(source) => source,
        Err(e) => {
            eprintln!("menu_create: {e}");
            return ExitCode::FAILURE;
        }
    };
    let menu = json!({
        "button": [
            {"type": "view", "name": "搜索1", "url": "http://www.baidu.com"},
            {"type": "view", "name": "搜索2", "url": "http://www.baidu.com"},
            {"type": "view", "name": "搜索3", "url": "http://www.baidu.com"},
        ]
    });
    let http = reqwest::Client::new();
    // Retried once with a fresh token if WeChat rejects the one wetoken handed out.
    let result = call(&source, |token| {
        let request = http
            .post(format!("{wechat}/cgi-bin/menu/create"))
            .query(&[("access_token", token)])
            .json(&menu);
        async move { request.send().await?.json::<serde_json::Value>().await }
    })
    .await;
    match result {
        Ok(answer) => {
            println!("menu created: {answer}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("menu_create: {e}");
            ExitCode::FAILURE
        }
    }
}
