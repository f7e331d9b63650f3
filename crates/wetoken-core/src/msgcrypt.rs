//! WeChat's message encryption (WXBizMsgCrypt): the `wetoken-msgcrypt` crate, re-exported, plus
//! [`ComponentPush`], which reads the open platform's pushes into the engine's types.
//!
//! The encryption lives in a crate of its own so that the mock WeChat can seal the pushes it
//! sends with the same code, without depending on the engine (whose tests depend on the mock).
//! Every path under `wetoken_core::msgcrypt` is as it was before the move.

pub use wetoken_msgcrypt::{
    Envelope, MAX_CODE, MAX_ENCRYPTED, MAX_MESSAGE, MAX_XML_NODES, MsgCrypt, MsgCryptError, Sealed,
    XmlFields, check_aes_key, check_token, random_nonce,
};

use crate::model::{AppId, Secret};

#[cfg(test)]
mod tests;

type Result<T, E = MsgCryptError> = std::result::Result<T, E>;

/// The element `name` as an appid, which must be present.
fn appid(fields: &XmlFields, name: &'static str) -> Result<AppId> {
    AppId::parse(fields.require(name)?).map_err(|_| MsgCryptError::BadField(name))
}

/// A push to a third-party platform's authorization-event URL, decrypted.
///
/// `component_appid` is the inner `AppId`; decryption already checked that the message was
/// encrypted for the crypt's receive id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentPush {
    /// `component_verify_ticket`, every ten minutes: the newest is the one to use.
    VerifyTicket {
        /// The platform.
        component_appid: AppId,
        /// When WeChat made it, in Unix seconds.
        create_time: i64,
        /// The ticket.
        ticket: Secret,
    },
    /// `authorized`: a customer authorized the platform.
    Authorized(Authorization),
    /// `updateauthorized`: a customer changed what the platform may do.
    UpdateAuthorized(Authorization),
    /// `unauthorized`: a customer withdrew the authorization.
    Unauthorized {
        /// The platform.
        component_appid: AppId,
        /// When, in Unix seconds.
        create_time: i64,
        /// The customer's account.
        authorizer_appid: AppId,
    },
    /// Any other `InfoType` (WeChat adds some): to be answered `success` and otherwise ignored.
    Other {
        /// The platform.
        component_appid: AppId,
        /// When, in Unix seconds.
        create_time: i64,
        /// The `InfoType`, as sent.
        info_type: String,
    },
}

/// An `authorized` or `updateauthorized` push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The platform.
    pub component_appid: AppId,
    /// When, in Unix seconds.
    pub create_time: i64,
    /// The customer's account.
    pub authorizer_appid: AppId,
    /// The code to exchange through `api_query_auth`.
    pub authorization_code: Secret,
    /// When the code expires, in Unix seconds.
    pub code_expires_at: i64,
    /// The pre-auth code the customer came with, when sent.
    pub pre_auth_code: Option<Secret>,
}

impl ComponentPush {
    /// Reads a decrypted push's fields.
    pub fn from_fields(fields: &XmlFields) -> Result<Self> {
        let component_appid = appid(fields, "AppId")?;
        let create_time = fields.integer("CreateTime")?;
        let info_type = fields.require("InfoType")?;
        let authorization = || -> Result<Authorization> {
            Ok(Authorization {
                component_appid: component_appid.clone(),
                create_time,
                authorizer_appid: appid(fields, "AuthorizerAppid")?,
                authorization_code: Secret::new(fields.code("AuthorizationCode")?),
                code_expires_at: fields.integer("AuthorizationCodeExpiredTime")?,
                pre_auth_code: match fields.get("PreAuthCode") {
                    Some(_) => Some(Secret::new(fields.code("PreAuthCode")?)),
                    None => None,
                },
            })
        };
        Ok(match info_type {
            "component_verify_ticket" => Self::VerifyTicket {
                ticket: Secret::new(fields.code("ComponentVerifyTicket")?),
                component_appid,
                create_time,
            },
            "authorized" => Self::Authorized(authorization()?),
            "updateauthorized" => Self::UpdateAuthorized(authorization()?),
            "unauthorized" => Self::Unauthorized {
                authorizer_appid: appid(fields, "AuthorizerAppid")?,
                component_appid,
                create_time,
            },
            other => Self::Other {
                info_type: crate::model::truncate_for_message(other),
                component_appid,
                create_time,
            },
        })
    }
}

/// The `msgcrypt` fuzz target's body (see `crate::fuzz`): the crypto half of
/// `wetoken_msgcrypt::fuzz`, then `data` read as an open-platform push.
pub(crate) fn fuzz(data: &[u8]) {
    wetoken_msgcrypt::fuzz(data);
    if let Ok(fields) = XmlFields::parse(&String::from_utf8_lossy(data)) {
        let _ = ComponentPush::from_fields(&fields);
    }
}
