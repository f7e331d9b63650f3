//! The JSON log line (`--log-format json`): tracing-subscriber's (`timestamp`, `level`, `fields`,
//! `target`, `span`, `spans`), with two changes for log collectors:
//!
//! - `appid` is a top-level field whenever the line is about one app: the event's own, else the
//!   innermost span's that has one (a refresh's lines carry it only in their `refresh` span);
//! - a field logged as a list (`?vec`) is a JSON array, not the string of its `Debug` text.

use std::fmt;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter of `--log-format json`.
pub(crate) struct JsonLines(pub(crate) Format<Json>);

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let Ok(Value::Object(mut object)) = serde_json::from_str::<Value>(&line) else {
            return writer.write_str(&line);
        };
        let mut lists = Lists::default();
        event.record(&mut lists);
        if let Some(Value::Object(fields)) = object.get_mut("fields") {
            for (name, list) in lists.0 {
                fields.insert(name.to_owned(), list);
            }
        }
        if let Some(appid) = appid(&object) {
            object.insert("appid".into(), appid);
        }
        writeln!(writer, "{}", Value::Object(object))
    }
}

/// The line's appid: the event's field, else the innermost span's.
fn appid(line: &serde_json::Map<String, Value>) -> Option<Value> {
    let own = line.get("fields").and_then(|f| f.get("appid"));
    let spans = line.get("spans").and_then(Value::as_array);
    own.or_else(|| spans?.iter().rev().find_map(|span| span.get("appid")))
        .cloned()
}

/// The event's fields logged by `Debug` whose text is a list: `Vec<String>`'s `["a", "b"]`,
/// which is JSON. A value that only looks like one when given as a string (`field = text`) is
/// recorded as a string, never here, so a string from outside (WeChat's errmsg) stays a string.
#[derive(Default)]
struct Lists(Vec<(&'static str, Value)>);

impl Visit for Lists {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            return;
        }
        let text = format!("{value:?}");
        if text.starts_with('[')
            && let Ok(list @ Value::Array(_)) = serde_json::from_str(&text)
        {
            self.0.push((field.name(), list));
        }
    }
}
