//! `wechat_user_info`: the Go wetoken's users, whose openids `/wx/{appid}/wxcode/send` sends
//! verification codes to.

use sea_orm::entity::prelude::*;

/// A row of `wechat_user_info`. wetoken reads the columns it needs; the Go schema's `status` is a
/// `TINYINT(1)`, which some drivers take for a boolean, so whole rows are not loaded.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "wechat_user_info")]
pub struct Model {
    /// The user's number.
    #[sea_orm(primary_key)]
    pub user_id: i64,
    /// The app the user follows.
    pub appid: String,
    /// The user's openid under that app.
    pub openid: String,
    /// The user's unionid, if known.
    pub unionid: Option<String>,
    /// The user's login name, unique.
    pub user_name: String,
    /// The nickname.
    pub nick_name: Option<String>,
    /// The avatar's URL.
    pub head_url: Option<String>,
    /// A phone number.
    pub phone: Option<String>,
    /// An e-mail address.
    pub email: Option<String>,
    /// 0 enabled, 1 disabled, 2 locked.
    pub status: i16,
    /// When the row was made.
    pub create_time: DateTimeUtc,
    /// When it last changed.
    pub update_time: DateTimeUtc,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
