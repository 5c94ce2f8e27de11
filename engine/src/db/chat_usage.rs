//! Chat usage: one row per chat completion request, written in batches by the usage
//! writer (`chat::usage`), never on a request's path.

use sqlx::{Any, Executor};

/// One chat request's usage, as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ChatUsage {
    /// The completion's id (`chatcmpl-…`), as the client saw it.
    pub id: String,
    pub created_at: i64,
    pub account_id: String,
    pub key_id: String,
    /// The catalog model that served the request (or, if none did, the first asked for).
    pub model: String,
    /// The provider that served it (or the last one tried; empty if none was).
    pub provider: String,
    /// 1 for a streamed request.
    pub stream: i64,
    /// `completed`, `failed` or `cancelled` (the client left first).
    pub status: String,
    pub error_code: Option<String>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// At list price, in millionths of a dollar.
    pub cost_micros: i64,
    pub latency_ms: i64,
    /// Until the first token reached the client (streams).
    pub first_token_ms: Option<i64>,
    /// Providers tried.
    pub attempts: i64,
}

/// An account's chat usage, newest first.
pub async fn for_account<'e>(
    db: impl Executor<'e, Database = Any>,
    account_id: &str,
    limit: i64,
) -> Result<Vec<ChatUsage>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, created_at, account_id, key_id, model, provider, stream, status, \
         error_code, prompt_tokens, completion_tokens, cost_micros, latency_ms, \
         first_token_ms, attempts FROM chat_usage WHERE account_id = $1 \
         ORDER BY created_at DESC, id DESC LIMIT $2",
    )
    .bind(account_id)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Stores one request's record; a record stored already is left as it is (false).
pub async fn insert<'e>(
    db: impl Executor<'e, Database = Any>,
    r: &ChatUsage,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO chat_usage (id, created_at, account_id, key_id, model, provider, \
         stream, status, error_code, prompt_tokens, completion_tokens, cost_micros, \
         latency_ms, first_token_ms, attempts) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&r.id)
    .bind(r.created_at)
    .bind(&r.account_id)
    .bind(&r.key_id)
    .bind(&r.model)
    .bind(&r.provider)
    .bind(r.stream)
    .bind(&r.status)
    .bind(&r.error_code)
    .bind(r.prompt_tokens)
    .bind(r.completion_tokens)
    .bind(r.cost_micros)
    .bind(r.latency_ms)
    .bind(r.first_token_ms)
    .bind(r.attempts)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}
