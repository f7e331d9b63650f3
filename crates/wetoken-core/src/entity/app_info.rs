//! `wechat_app_info`: one row per app.

use sea_orm::entity::prelude::*;

/// A row of `wechat_app_info`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "wechat_app_info")]
pub struct Model {
    /// The app's appid.
    #[sea_orm(primary_key, auto_increment = false)]
    pub appid: String,
    /// Its AppSecret.
    pub secret: String,
    /// Its message-push token.
    pub token: Option<String>,
    /// Its EncodingAESKey.
    pub aes_key: Option<String>,
    /// `mp`, `mini`, `work` or `component`.
    pub kind: String,
    /// `classic` or `stable`.
    pub token_mode: String,
    /// A WeCom app's corpid.
    pub corpid: Option<String>,
    /// A WeCom app's agentid.
    pub agentid: Option<String>,
    /// An authorizer's third-party platform (migration 000014); its `secret` is then the
    /// `authorizer_refresh_token`.
    pub component_appid: Option<String>,
    /// When an authorizer withdrew its authorization (migration 000014); NULL while authorized.
    pub revoked_at: Option<DateTimeUtc>,
    /// Upstream calls the operator expects to stay under per day.
    pub daily_budget: i32,
    /// The (China) day `calls_today` counts, `YYYYMMDD`.
    pub calls_day: Option<String>,
    /// Upstream calls made for the app on `calls_day`, by every replica.
    pub calls_today: i32,
    /// The out-of-band check interval in seconds; NULL takes the server's default, 0 turns it
    /// off (migration 000009).
    pub verify_secs: Option<i32>,
    /// The Go wetoken's WeChat Pay merchant id (`''` when unset, as the Go schema has it).
    pub mchid: String,
    /// The WeChat Pay key, sealed like the secret (`''` or NULL when unset).
    pub pay_key: Option<String>,
    /// The sub-merchant's appid (`''` when unset).
    pub sub_appid: String,
    /// The sub-merchant's merchant id (`''` when unset).
    pub sub_mchid: String,
    /// The domain authorised for web pages.
    pub wechat_host: Option<String>,
    /// The verification-code template id, for `/wx/{appid}/wxcode/send`.
    pub wcode_template_id: Option<String>,
    /// The generation every `wtenc:v2` value of the row is bound to; moved on by every write of
    /// any of them (migration 000013). 0: a row from before, whose values are plain or
    /// `wtenc:v1`.
    pub seal_generation: i64,
    /// When it was added.
    pub create_time: DateTimeUtc,
    /// When its settings last changed.
    pub update_time: DateTimeUtc,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
