//! Request parameters: the query string overlaid by a form or JSON body, read within the body
//! limit, with the Go wetoken's camelCase names folded onto ours, and the typed fields the
//! handlers ask for (required and optional values, secrets, the daily budget, the Go fields).

use std::collections::HashMap;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http_body_util::{BodyExt, Limited};
use wetoken_core::{
    AppFilter, AppKind, AppUpdate, CredentialState, Cursor, GoFields, Secret, page_limit,
};

use super::RequestBody;
use super::error::ApiError;
use wetoken_settings::HttpSettings;

/// A request's body, at most `limit` bytes: a larger `Content-Length` is refused before
/// anything is read, and a body that grows past it while read.
pub(super) async fn read_body<B: RequestBody>(
    parts: &http::request::Parts,
    body: B,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge(limit));
    }
    Ok(Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::BodyTooLarge(limit)
            } else {
                ApiError::BadRequest("could not read the request body".into())
            }
        })?
        .to_bytes())
}

/// A request's parameters: the query string, overlaid by a form or JSON body.
/// Parameters a route does not use are ignored.
#[derive(Default)]
pub(super) struct Params(HashMap<String, String>);

impl Params {
    pub(super) async fn read<B: RequestBody>(
        parts: &http::request::Parts,
        body: B,
        limits: &HttpSettings,
    ) -> Result<Self, ApiError> {
        let is_json = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
        let body = read_body(parts, body, limits.body_limit_bytes).await?;
        Self::parse(parts.uri.query(), &body, is_json)
    }

    /// The parameters of a query string and a body already read: what [`Params::read`] does once
    /// it has the body. Never panics, whatever the input (`fuzz/` and a property test check).
    pub(super) fn parse(query: Option<&str>, body: &[u8], is_json: bool) -> Result<Self, ApiError> {
        let mut map: HashMap<String, String> = query
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let blank = body.iter().all(u8::is_ascii_whitespace);
        if !blank && is_json {
            let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
                .map_err(|e| {
                ApiError::BadRequest(format!("request body is not a JSON object: {e}"))
            })?;
            for (key, value) in object {
                let text = match value {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Null => continue,
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => {
                        return Err(ApiError::BadRequest(format!(
                            "field {key:?} must be a string"
                        )));
                    }
                };
                map.insert(key, text);
            }
        } else if !blank {
            map.extend(form_urlencoded::parse(body).into_owned());
        }
        for (go, ours) in GoFields::GO_NAMES {
            let Some(value) = map.remove(go) else {
                continue;
            };
            match map.get(ours) {
                Some(other) if *other != value => {
                    return Err(ApiError::BadRequest(format!(
                        "{ours} and {go} name the same field and disagree: give one"
                    )));
                }
                _ => {
                    map.insert(ours.to_owned(), value);
                }
            }
        }
        Ok(Self(map))
    }

    /// The same parameters with `name` set to `value`, whatever the request gave.
    pub(super) fn with(mut self, name: &str, value: &str) -> Self {
        self.0.insert(name.to_owned(), value.to_owned());
        self
    }

    pub(super) fn optional(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub(super) fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.optional(name)
            .ok_or_else(|| ApiError::BadRequest(format!("{name} is required")))
    }

    /// `daily_budget`: a whole number of upstream calls a day.
    pub(super) fn budget(&self) -> Result<Option<i32>, ApiError> {
        Ok(self
            .optional("daily_budget")
            .map(AppUpdate::budget)
            .transpose()?)
    }

    /// `verify_secs`: how often the app's token is checked with WeChat, in seconds (0: never).
    pub(super) fn verify_secs(&self) -> Result<Option<i32>, ApiError> {
        Ok(self
            .optional("verify_secs")
            .map(AppUpdate::verify_interval)
            .transpose()?)
    }

    /// The Go wetoken's app fields that are not secrets.
    pub(super) fn go_fields(&self) -> Result<GoFields, ApiError> {
        let field = |name| {
            self.optional(name)
                .map(|v| GoFields::check(name, v))
                .transpose()
        };
        Ok(GoFields {
            mchid: field("mchid")?,
            sub_appid: field("sub_appid")?,
            sub_mchid: field("sub_mchid")?,
            wechat_host: field("wechat_host")?,
            wcode_template_id: field("wcode_template_id")?,
        })
    }

    /// A secret-like field: at most `max` characters, no control characters.
    /// What a listing asks for: `state`, `kind` and `prefix` filters, the `cursor` a page
    /// handed out, and `limit` (1 to 1000, 100 by default).
    pub(super) fn listing(&self) -> Result<Listing, ApiError> {
        // An empty value is no filter: what the status page's form sends for "any".
        let given = |name| self.optional(name).filter(|v| !v.is_empty());
        let filter = AppFilter {
            state: given("state").map(CredentialState::parse).transpose()?,
            kind: given("kind").map(AppKind::parse).transpose()?,
            prefix: given("prefix").map(AppFilter::prefix).transpose()?,
            worst_first: false,
        };
        Ok(Listing {
            filter,
            after: given("cursor").map(Cursor::decode).transpose()?,
            limit: page_limit(given("limit"))?,
        })
    }

    pub(super) fn secret(&self, name: &str, max: usize) -> Result<Option<Secret>, ApiError> {
        Ok(self
            .optional(name)
            .map(|v| Secret::checked(name, v, max))
            .transpose()?)
    }
}

/// A listing's page request, checked.
#[derive(Debug, Clone, Default)]
pub(crate) struct Listing {
    pub filter: AppFilter,
    pub after: Option<Cursor>,
    pub limit: u64,
}

impl Listing {
    /// The query string of the same listing from `cursor` on (or from the start), for links.
    pub(crate) fn query(&self, cursor: Option<&Cursor>) -> String {
        let mut parts = Vec::new();
        if let Some(state) = self.filter.state {
            parts.push(format!("state={}", state.name()));
        }
        if let Some(kind) = self.filter.kind {
            parts.push(format!("kind={}", kind.as_str()));
        }
        if let Some(prefix) = &self.filter.prefix {
            parts.push(format!("prefix={prefix}"));
        }
        if self.limit != wetoken_core::PAGE_DEFAULT {
            parts.push(format!("limit={}", self.limit));
        }
        if let Some(cursor) = cursor {
            parts.push(format!("cursor={}", cursor.encode()));
        }
        parts.join("&")
    }
}
