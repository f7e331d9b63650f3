//! The quota guard's operator side (#14): `--verify-secs`, on every database.

use wetoken_testkit::TestDb;

use super::{APP, fresh_database, run_cli};

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
        run_cli(&args, input, &[])
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
        let line = |appid: &str| {
            list.lines()
                .find(|l| l.starts_with(appid))
                .unwrap_or_else(|| panic!("{appid} in {list}"))
                .to_owned()
        };
        assert!(line(APP).ends_with(" 600s"), "{list}");
        assert!(line("wx_default").ends_with(" default"), "{list}");

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
