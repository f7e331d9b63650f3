//! The quota guard's operator side (#14): `app quota` (WeChat's count next to wetoken's, and
//! `--clear`) and `--verify-secs`, against the mock WeChat on every database.

use wetoken_core::{AppId, WeChat, WeChatOptions};
use wetoken_mock::{Endpoint, MockWeChat};
use wetoken_testkit::TestDb;

use super::{APP, SECRET, fresh_database, run_cli};

/// A migrated database for one backend, and the CLI run against it.
struct Cli {
    database: TestDb,
}

impl Cli {
    /// `None` when the developer opted out of `backend`.
    async fn migrated(backend: &str, test: &str) -> Option<Cli> {
        let cli = Cli {
            database: fresh_database(backend, test).await?,
        };
        let (ok, _, err) = cli.run(&["migrate", "up"], "");
        assert!(ok, "{backend}: {err}");
        Some(cli)
    }

    /// Runs the CLI with `args`, then `--database-url`, and `input` on standard input (which
    /// is therefore not a terminal).
    fn run(&self, args: &[&str], input: &str) -> (bool, String, String) {
        let mut args = args.to_vec();
        args.extend(["--database-url", self.database.url.as_str()]);
        run_cli(None, &args, input, &[])
    }

    /// `app quota APPID` (and `extra`) against `mock`.
    fn quota(&self, mock: &MockWeChat, appid: &str, extra: &[&str]) -> (bool, String, String) {
        let url = mock.url();
        let mut args = vec!["app", "quota", appid, "--wechat-base-url", &url];
        args.extend(extra);
        self.run(&args, "")
    }

    fn show(&self, appid: &str) -> String {
        let (ok, out, err) = self.run(&["app", "show", appid], "");
        assert!(ok, "{err}");
        out
    }

    async fn drop_db(self) {
        self.database.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_quota_shows_both_counts_and_clear_resets_both() {
    for backend in ["sqlite", "mysql", "postgres"] {
        let test = "app_quota_shows_both_counts_and_clear_resets_both";
        let Some(cli) = Cli::migrated(backend, test).await else {
            continue;
        };
        let mock = MockWeChat::start().await.unwrap();
        mock.add_app(APP, SECRET);
        let wechat = mock.url();
        assert!(cli.run(&["app", "add", APP], &format!("{SECRET}\n")).0);
        assert!(cli.run(&["app", "add", "wx_idle"], "idle-secret\n").0);
        let (ok, _, err) = cli.run(
            &[
                "app",
                "add",
                "--kind",
                "work",
                "--corpid",
                "ww1",
                "--agentid",
                "1",
            ],
            "work-secret\n",
        );
        assert!(ok, "{err}");

        // Nothing stored yet: a clear error, and no token fetched to get one.
        let (ok, _, err) = cli.quota(&mock, APP, &[]);
        assert!(!ok, "{backend}");
        assert!(
            err.contains(&format!("no valid access token of {APP} is stored"))
                && err.contains("never fetches one")
                && err.contains("start a wetoken server"),
            "{backend}: {err}"
        );
        let (ok, _, err) = cli.quota(&mock, "wx_unknown", &[]);
        assert!(!ok && err.contains("unknown app wx_unknown"), "{err}");
        let (ok, _, err) = cli.quota(&mock, "ww1.1", &[]);
        assert!(!ok && err.contains("WeCom has no API"), "{err}");
        let (ok, _, err) = cli.quota(&mock, "bad/appid", &[]);
        assert!(!ok && err.contains("malformed appid"), "{err}");
        assert_eq!(mock.calls(Endpoint::Token), 0);
        assert_eq!(mock.calls(Endpoint::QuotaGet), 0);

        // A token and a ticket fetched as a server would: WeChat and wetoken each count one token
        // fetch (the ticket has a quota of its own).
        for what in ["token", "ticket"] {
            let (ok, _, err) = cli.run(&[what, "get", APP, "--wechat-base-url", &wechat], "");
            assert!(ok, "{backend}: {err}");
        }
        let token = mock.current_token(APP).unwrap();
        let (ok, out, err) = cli.quota(&mock, APP, &[]);
        assert!(ok, "{backend}: {err}");
        assert_eq!(
            out,
            format!(
                "{APP} /cgi-bin/token today:\n  WeChat:  1 used of 2000, 1999 left\n  wetoken: 1 token fetches of a daily budget of 2000\n"
            )
        );
        assert_eq!(mock.calls(Endpoint::Token), 1, "asking fetched nothing");
        assert_eq!(mock.current_token(APP).unwrap(), token);
        assert_eq!(mock.calls(Endpoint::QuotaGet), 1);
        // The other app has no token of its own stored, whatever APP has.
        let (ok, _, err) = cli.quota(&mock, "wx_idle", &[]);
        assert!(
            !ok && err.contains("no valid access token of wx_idle"),
            "{err}"
        );

        // --clear needs a confirmation: not a terminal here, so --yes.
        let (ok, _, err) = cli.quota(&mock, APP, &["--clear"]);
        assert!(!ok, "{backend}");
        assert!(
            err.contains("--yes") && err.contains("10 clears WeChat allows a month"),
            "{err}"
        );
        let (ok, _, err) = cli.quota(&mock, APP, &["--yes"]);
        assert!(!ok && err.contains("--clear"), "--yes alone: {err}");
        assert_eq!(mock.calls(Endpoint::ClearQuota), 0);
        assert_eq!(mock.token_fetches(APP), 1);
        assert!(cli.show(APP).contains("fetches today: 1 of 2000"));

        let (ok, out, err) = cli.quota(&mock, APP, &["--clear", "--yes"]);
        assert!(ok, "{backend}: {err}");
        assert!(
            out.contains("cleared: WeChat's counts of")
                && out.contains("one of the 10 clears WeChat allows a month"),
            "{out}"
        );
        assert!(
            out.ends_with("  WeChat:  0 used of 2000, 2000 left\n  wetoken: 0 token fetches of a daily budget of 2000\n"),
            "the counts after the clear: {out}"
        );
        assert_eq!(mock.calls(Endpoint::ClearQuota), 1);
        assert_eq!(mock.token_fetches(APP), 0);
        assert!(cli.show(APP).contains("fetches today: 0 of 2000"));
        assert_eq!(mock.calls(Endpoint::Token), 1);

        // The month's other nine clears go elsewhere; the 11th is refused and says why,
        // and wetoken's count stays as it was.
        let client = WeChat::new(&WeChatOptions::with_base_urls(&wechat, &wechat, None)).unwrap();
        for _ in 0..9 {
            client
                .clear_quota(&token, &AppId::parse(APP).unwrap())
                .await
                .unwrap();
        }
        let card = format!("ticket get {APP} --type wx_card --wechat-base-url {wechat}");
        let (ok, _, err) = cli.run(&card.split(' ').collect::<Vec<_>>(), "");
        assert!(ok, "{err}");
        let (ok, out, err) = cli.quota(&mock, APP, &["--clear", "--yes"]);
        assert!(!ok, "{backend}: {out}");
        assert!(
            err.contains("clearing WeChat's counts")
                && err.contains("48006")
                && err.contains("the clears WeChat allows this month are spent")
                && err.contains("nothing was cleared"),
            "{backend}: {err}"
        );
        // The card ticket is not a token fetch: the count is still the cleared one.
        // The card ticket is not a token fetch: the count is still the cleared one.
        assert!(cli.show(APP).contains("fetches today: 0 of 2000"));

        // A token WeChat no longer takes (replaced outside wetoken): said so, nothing fetched.
        mock.invalidate_token(&token);
        let (ok, _, err) = cli.quota(&mock, APP, &[]);
        assert!(
            !ok && err.contains("40001") && err.contains("no longer accepts the stored token"),
            "{err}"
        );
        assert_eq!(mock.calls(Endpoint::Token), 1);

        mock.shutdown().await;
        cli.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_secs_is_set_shown_changed_and_bounded() {
    for backend in ["sqlite", "mysql", "postgres"] {
        let Some(cli) =
            Cli::migrated(backend, "verify_secs_is_set_shown_changed_and_bounded").await
        else {
            continue;
        };
        let (ok, _, err) = cli.run(&["app", "add", APP, "--verify-secs", "600"], "s\n");
        assert!(ok, "{backend}: {err}");
        assert!(cli.run(&["app", "add", "wx_default"], "s\n").0);
        assert!(cli.show(APP).contains("verify every: 600s"), "{backend}");
        assert!(cli.show("wx_default").contains("verify every: default"));
        let (ok, list, _) = cli.run(&["app", "list"], "");
        assert!(ok && list.contains("VERIFY"), "{list}");
        // VERIFY, then COMPONENT (`-` for an app of its own).
        let line = |appid: &str| {
            list.lines()
                .find(|l| l.starts_with(appid))
                .unwrap_or_else(|| panic!("{appid} in {list}"))
                .to_owned()
        };
        assert!(line(APP).ends_with(" 600s  -"), "{list}");
        assert!(line("wx_default").ends_with(" default  -"), "{list}");

        let (ok, out, err) = cli.run(&["app", "update", APP, "--verify-secs", "0"], "");
        assert!(ok && out.contains("updated"), "{err}");
        assert!(cli.show(APP).contains("verify every: off"));
        let (ok, _, err) = cli.run(
            &["app", "update", "wx_default", "--verify-secs", "86400"],
            "",
        );
        assert!(ok, "{err}");
        assert!(cli.show("wx_default").contains("verify every: 86400s"));

        // Out of range or not a number: refused with the range, and nothing changes.
        for bad in [
            "--verify-secs=-1",
            "--verify-secs=86401",
            "--verify-secs=10m",
        ] {
            let (ok, _, err) = cli.run(&["app", "add", "wx_bad", bad], "s\n");
            assert!(!ok, "{bad}");
            assert!(
                err.contains("verify_secs must be a whole number of seconds from 0"),
                "{bad}: {err}"
            );
            let (ok, _, err) = cli.run(&["app", "update", APP, bad], "");
            assert!(!ok && err.contains("verify_secs must be"), "{bad}: {err}");
        }
        let (ok, _, err) = cli.run(&["app", "show", "wx_bad"], "");
        assert!(!ok && err.contains("unknown app"), "{err}");
        assert!(cli.show(APP).contains("verify every: off"));
        let (ok, _, err) = cli.run(&["app", "update", APP], "");
        assert!(!ok && err.contains("--verify-secs"), "{err}");
        cli.drop_db().await;
    }
}
