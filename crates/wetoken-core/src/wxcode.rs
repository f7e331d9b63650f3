//! The Go wetoken's verification-code message (`/wx/{appid}/wxcode/send`): a login code sent to
//! a user of `wechat_user_info` as the official account's template message, with the template
//! the app's `wcode_template_id` names. The message is the Go server's, field for field, so the
//! template the team configured at WeChat keeps rendering it.

use chrono::Local;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use serde_json::json;

use crate::entity::user_info;
use crate::model::{AppId, AppKind, Kind};
use crate::wechat::UpstreamError;
use crate::{Engine, Error, Store};

/// What a verification-code message says.
#[derive(Debug, Clone, Copy)]
pub struct WxCode<'a> {
    /// The user's login name in `wechat_user_info`.
    pub user_name: &'a str,
    /// The system the user is logging in to, shown in the message.
    pub system_name: &'a str,
    /// The code.
    pub code: &'a str,
}

/// The longest any of the three fields may be.
const FIELD_MAX: usize = 64;

impl WxCode<'_> {
    fn check(&self) -> Result<(), Error> {
        for (name, value) in [
            ("user_name", self.user_name),
            ("system_name", self.system_name),
            ("code", self.code),
        ] {
            if value.is_empty() {
                return Err(Error::InvalidInput(format!("{name} is required")));
            }
            if value.chars().count() > FIELD_MAX || value.chars().any(char::is_control) {
                return Err(Error::InvalidInput(format!(
                    "{name} must be at most {FIELD_MAX} characters, without control characters"
                )));
            }
        }
        Ok(())
    }

    /// WeChat's body for the message to `openid` with `template_id`, as the Go server sent it.
    fn message(&self, openid: &str, template_id: &str) -> serde_json::Value {
        let sent = Local::now().format("%Y/%m/%d %H:%M:%S").to_string();
        json!({
            "touser": openid,
            "template_id": template_id,
            "data": {
                "first": { "value": format!("您正在登录[{}]", self.system_name) },
                "keyword1": { "value": self.code, "color": "#43CD80" },
                "keyword2": { "value": "5分钟" },
                "keyword3": { "value": sent },
                "remark": { "value": "若非本人操作请注意账户安全" },
            },
        })
    }
}

impl Store {
    /// The openid of `user_name` under `appid` in `wechat_user_info`: `None` when no such user
    /// exists, `Some("")` when the user has none.
    pub async fn user_openid(
        &self,
        appid: &AppId,
        user_name: &str,
    ) -> Result<Option<String>, Error> {
        Ok(user_info::Entity::find()
            .select_only()
            .column(user_info::Column::Openid)
            .filter(user_info::Column::Appid.eq(appid.as_str()))
            .filter(user_info::Column::UserName.eq(user_name))
            .into_tuple::<String>()
            .one(self.connection())
            .await?)
    }
}

impl Engine {
    /// Sends the verification-code message to `request.user_name` of `appid`; returns WeChat's
    /// `msgid`. When WeChat rejects the access token, the token is refreshed (as a passive
    /// refresh) and the message sent once more.
    pub async fn send_wxcode(&self, appid: &AppId, request: &WxCode<'_>) -> Result<i64, Error> {
        request.check()?;
        let app = self.store().known_app_info(appid).await?;
        if app.kind != AppKind::Mp {
            return Err(Error::InvalidInput(format!(
                "{appid} is a {} app: template messages are an official account's (kind mp)",
                app.kind.as_str()
            )));
        }
        let template = app.go.wcode_template_id.ok_or_else(|| {
            Error::InvalidInput(format!(
                "未配置微信验证码模板编号: app {appid} has no wcode_template_id; set it with \
                 /wechat/app/update"
            ))
        })?;
        let openid = self
            .store()
            .user_openid(appid, request.user_name)
            .await?
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "用户不存在: app {appid} has no user {:?} in wechat_user_info",
                    request.user_name
                ))
            })?;
        if openid.is_empty() {
            return Err(Error::InvalidInput(format!(
                "用户：{}未绑定公众号: the user has no openid",
                request.user_name
            )));
        }
        let message = request.message(&openid, &template);
        let token = self.get(appid, Kind::AccessToken).await?;
        let sent = match self.wechat().send_template(&token.value, &message).await {
            Err(e) if e.is_token_rejected() => {
                let token = self
                    .replace_rejected(appid, Kind::AccessToken, &token.value)
                    .await?;
                self.wechat().send_template(&token.value, &message).await
            }
            other => other,
        };
        sent.map_err(|e| match e {
            UpstreamError::Refused { errcode, errmsg } => Error::Refused {
                errcode,
                errmsg: format!("发送验证码失败:{errmsg}"),
            },
            other => Error::Unavailable(format!("发送验证码失败: {other}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_the_go_servers() {
        let request = WxCode {
            user_name: "alice",
            system_name: "mall",
            code: "482913",
        };
        let message = request.message("oABC", "TPL");
        assert_eq!(message["touser"], "oABC");
        assert_eq!(message["template_id"], "TPL");
        assert_eq!(message["data"]["first"]["value"], "您正在登录[mall]");
        assert_eq!(message["data"]["keyword1"]["value"], "482913");
        assert_eq!(message["data"]["keyword1"]["color"], "#43CD80");
        assert_eq!(message["data"]["keyword2"]["value"], "5分钟");
        assert_eq!(
            message["data"]["remark"]["value"],
            "若非本人操作请注意账户安全"
        );
        let sent = message["data"]["keyword3"]["value"].as_str().unwrap();
        assert!(
            chrono::NaiveDateTime::parse_from_str(sent, "%Y/%m/%d %H:%M:%S").is_ok(),
            "{sent}"
        );
    }

    #[test]
    fn fields_are_checked() {
        let ok = WxCode {
            user_name: "a",
            system_name: "b",
            code: "c",
        };
        assert!(ok.check().is_ok());
        assert!(WxCode { code: "", ..ok }.check().is_err());
        assert!(WxCode { code: "1\n2", ..ok }.check().is_err());
        let long = "x".repeat(65);
        assert!(
            WxCode {
                user_name: &long,
                ..ok
            }
            .check()
            .is_err()
        );
    }
}
