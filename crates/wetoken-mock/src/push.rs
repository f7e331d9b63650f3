//! The open platform's pushes, sent as WeChat sends them: a POST of the encrypted envelope to the
//! component's push URL, and the timer that pushes verify tickets.

use std::time::Duration;

use tokio::sync::watch;

use crate::{Pushed, Shared, lock};

/// How long a push waits for the receiver (WeChat gives it 5 s).
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of the receiver's answer a [`Pushed`] keeps.
const ANSWER_LIMIT: usize = 1024;
/// How often the timer looks for due pushes: at most this…
const TICK: Duration = Duration::from_secs(1);
/// …and at least this, whatever the interval.
const MIN_TICK: Duration = Duration::from_millis(10);

/// A push sealed under the world's lock, to be sent without it: a [`Pushed`] not sent yet.
pub(crate) type Prepared = Pushed;

/// The client pushes are sent with: no proxy, no redirects followed, WeChat's time limit.
pub(crate) fn client() -> std::io::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(PUSH_TIMEOUT)
        .build()
        .map_err(std::io::Error::other)
}

/// POSTs `prepared` and records what the receiver answered.
pub(crate) async fn deliver(client: &reqwest::Client, prepared: Prepared) -> Pushed {
    let mut pushed = prepared;
    let sent = client
        .post(&pushed.url)
        .query(&pushed.query)
        .header("content-type", "text/xml")
        .body(pushed.body.clone())
        .send()
        .await;
    match sent {
        Ok(response) => {
            pushed.status = Some(response.status().as_u16());
            match response.text().await {
                Ok(mut text) => {
                    if text.len() > ANSWER_LIMIT {
                        let mut end = ANSWER_LIMIT;
                        while !text.is_char_boundary(end) {
                            end -= 1;
                        }
                        text.truncate(end);
                    }
                    pushed.answer = Some(text);
                }
                Err(error) => pushed.error = Some(chain(error)),
            }
        }
        Err(error) => pushed.error = Some(chain(error)),
    }
    tracing::debug!(
        info_type = pushed.info_type,
        component = pushed.component_appid,
        status = ?pushed.status,
        error = ?pushed.error,
        "mock WeChat pushed"
    );
    pushed
}

/// The error and its causes, `: `-separated (reqwest's own says only "error sending request"),
/// without the URL.
fn chain(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Pushes every component's verify ticket when it is due, until `stop`.
pub(crate) async fn timer(world: Shared, mut stop: watch::Receiver<bool>) {
    let wake = lock(&world).timer_wake.clone();
    loop {
        let (tick, idle) = {
            let w = lock(&world);
            (w.ticket_tick(TICK).max(MIN_TICK), !w.has_push_url())
        };
        // A mock without a component to push to has no timer running: nothing wakes it but a
        // registration (a permit stored by `notify_one` is not lost), so tests with a paused
        // tokio clock see no extra timer.
        let pause = async {
            if idle {
                wake.notified().await;
            } else {
                tokio::time::sleep(tick).await;
            }
        };
        tokio::select! {
            () = pause => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let (client, due) = {
            let mut w = lock(&world);
            (w.client.clone(), w.due_tickets())
        };
        for prepared in due {
            deliver(&client, prepared).await;
        }
    }
}
