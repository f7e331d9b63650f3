//! A seal generation per app row (issue #17): `wechat_app_info.seal_generation`, a `BIGINT NOT
//! NULL DEFAULT 0`.
//!
//! Every encrypted value of a row (`secret`, `token`, `aes_key`, `pay_key`) in the `wtenc:v2`
//! form is bound to the row's generation, and every write of any of them moves the generation
//! on and encrypts all of them anew under it. So a ciphertext put back from an older version of
//! the row (a backup, a dump) no longer decrypts: the row has moved on from its generation.
//! `0` is a row from before this migration, whose values (plain or `wtenc:v1`) are read as
//! before until a server's start encrypts them anew.
//!
//! `down` refuses while any `wtenc:v2` value is stored: without the generation it is bound to,
//! no wetoken could decrypt it again.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const TABLE: &str = "wechat_app_info";
const COLUMN: &str = "seal_generation";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let column = ColumnDef::new(Alias::new(COLUMN))
            .big_integer()
            .not_null()
            .default(0)
            .to_owned();
        crate::add_column_if_missing(manager, TABLE, column).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if !manager.has_column(TABLE, COLUMN).await? {
            return Ok(());
        }
        let bound = crate::count(
            manager,
            "SELECT COUNT(*) AS n FROM wechat_app_info \
             WHERE secret LIKE 'wtenc:v2:%' OR token LIKE 'wtenc:v2:%' \
             OR aes_key LIKE 'wtenc:v2:%' OR pay_key LIKE 'wtenc:v2:%'",
        )
        .await?;
        if bound > 0 {
            return Err(DbErr::Migration(format!(
                "{bound} apps have secrets encrypted under their seal generation (wtenc:v2), \
                 which nothing could decrypt without it: this migration cannot be undone while \
                 they are stored"
            )));
        }
        crate::drop_column_if_present(manager, TABLE, COLUMN).await
    }
}
