//! Room for encrypted secrets: `wechat_app_info.secret`, `token` and `aes_key` become `TEXT`.
//!
//! An encrypted value (`wtenc:v1:<key id>:<base64 of nonce, ciphertext and tag>`) is about
//! 4/3 of its plain text plus 60 characters, more than the Go schema's 255 and 128. SQLite does
//! not enforce a length, so only MySQL/MariaDB and PostgreSQL change.
//!
//! `down` refuses while any encrypted value is stored, on every backend: the old columns could
//! truncate it (non-strict MySQL does so silently), and an older wetoken would send it to WeChat
//! as if it were the secret.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WechatAppInfo {
    Table,
    Secret,
    Token,
    AesKey,
}

async fn alter(manager: &SchemaManager<'_>, columns: [ColumnDef; 3]) -> Result<(), DbErr> {
    if manager.get_database_backend() == DbBackend::Sqlite {
        return Ok(());
    }
    for column in columns {
        manager
            .alter_table(
                Table::alter()
                    .table(WechatAppInfo::Table)
                    .modify_column(column)
                    .to_owned(),
            )
            .await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use WechatAppInfo as A;
        alter(
            manager,
            [
                ColumnDef::new(A::Secret).text().not_null().to_owned(),
                ColumnDef::new(A::Token).text().null().to_owned(),
                ColumnDef::new(A::AesKey).text().null().to_owned(),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use WechatAppInfo as A;
        let sealed = crate::count(
            manager,
            "SELECT COUNT(*) AS n FROM wechat_app_info \
             WHERE secret LIKE 'wtenc:%' OR token LIKE 'wtenc:%' OR aes_key LIKE 'wtenc:%'",
        )
        .await?;
        if sealed > 0 {
            return Err(DbErr::Migration(format!(
                "{sealed} apps have encrypted secrets, which the old columns cannot hold and an \
                 older wetoken cannot read: this migration cannot be undone while they are stored"
            )));
        }
        alter(
            manager,
            [
                ColumnDef::new(A::Secret)
                    .string_len(255)
                    .not_null()
                    .to_owned(),
                ColumnDef::new(A::Token).string_len(128).null().to_owned(),
                ColumnDef::new(A::AesKey).string_len(128).null().to_owned(),
            ],
        )
        .await
    }
}
