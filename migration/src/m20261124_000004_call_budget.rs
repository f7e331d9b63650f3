//! Upstream calls per app per day, against a daily budget.
//!
//! `calls_day` (China date, `YYYYMMDD`, WeChat's day) and `calls_today` count the calls every
//! replica made to WeChat for the app that day; `daily_budget` is what the operator expects to
//! stay under (WeChat's token quota is 2000 a day for a typical official account).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WechatAppInfo {
    DailyBudget,
    CallsDay,
    CallsToday,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use WechatAppInfo as A;
        for column in [
            ColumnDef::new(A::DailyBudget)
                .integer()
                .not_null()
                .default(2000)
                .to_owned(),
            ColumnDef::new(A::CallsDay).string_len(8).null().to_owned(),
            ColumnDef::new(A::CallsToday)
                .integer()
                .not_null()
                .default(0)
                .to_owned(),
        ] {
            crate::add_column_if_missing(manager, "wechat_app_info", column).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in ["calls_today", "calls_day", "daily_budget"] {
            crate::drop_column_if_present(manager, "wechat_app_info", column).await?;
        }
        Ok(())
    }
}
