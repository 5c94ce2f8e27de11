//! Server-wide settings shared by every process, such as the file-link signing key.

use super::Db;

impl Db {
    /// The value of `name`, creating it with `make()` if absent. Concurrent first starts
    /// agree on one value: the insert is conditional and everyone reads back the winner.
    pub async fn setting_or_init(
        &self,
        name: &str,
        make: impl FnOnce() -> String,
    ) -> Result<String, sqlx::Error> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(make())
        .execute(self.pool())
        .await?;
        sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_one(self.pool())
            .await
    }
}
