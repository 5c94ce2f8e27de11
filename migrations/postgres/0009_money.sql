-- Money: every account's balance and caps, every key's caps and rate limits, the spend
-- of each UTC day and month, the holds on money of requests in flight, and the ledger of
-- every change to money. Amounts are integer millionths of a dollar ("micros").
--
-- An account is 'prepaid' (requests must be covered by balance - reserved) or
-- 'unlimited' (no balance check). Accounts from before money existed were made by
-- `keys create` and so are unlimited, as `keys create` makes them.
ALTER TABLE accounts ADD COLUMN mode TEXT NOT NULL DEFAULT 'unlimited';
ALTER TABLE accounts ADD COLUMN balance_micros BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN reserved_micros BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN daily_limit_micros BIGINT;
ALTER TABLE accounts ADD COLUMN monthly_limit_micros BIGINT;
-- account.balance_low is sent when available money falls below this (once, re-armed by
-- a top-up that lifts it above again).
ALTER TABLE accounts ADD COLUMN low_balance_micros BIGINT;
ALTER TABLE accounts ADD COLUMN low_balance_alerted BIGINT NOT NULL DEFAULT 0;
-- The volume tier comes from the spend of the last 30 days, recomputed every few hours.
ALTER TABLE accounts ADD COLUMN rolling_30d_micros BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN tier_recomputed_at BIGINT;

ALTER TABLE api_keys ADD COLUMN daily_limit_micros BIGINT;
ALTER TABLE api_keys ADD COLUMN monthly_limit_micros BIGINT;
ALTER TABLE api_keys ADD COLUMN requests_per_minute BIGINT;
ALTER TABLE api_keys ADD COLUMN max_concurrent_jobs BIGINT;
-- Jobs of this key not yet ended: raised with the job's hold, lowered with its settlement
-- or release, in the same transactions, so it cannot drift.
ALTER TABLE api_keys ADD COLUMN jobs_in_flight BIGINT NOT NULL DEFAULT 0;

-- Spent and held money per (account or key) per UTC day and month; a cap holds when
-- spent + reserved + the new hold stays within it. starts_at: Unix ms of the period start.
CREATE TABLE spend_windows (
    scope           TEXT NOT NULL,
    owner_id        TEXT NOT NULL,
    period          TEXT NOT NULL,
    starts_at       BIGINT NOT NULL,
    spent_micros    BIGINT NOT NULL,
    reserved_micros BIGINT NOT NULL,
    -- When key.spend_cap_reached was sent for this window (once per window).
    alerted_at      BIGINT,
    PRIMARY KEY (scope, owner_id, period, starts_at)
);

-- Money held for one request in flight: a job (id = the job's id) or a chat completion
-- (id = its chatcmpl id). held → settled | released, each exactly once.
CREATE TABLE reservations (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL,
    key_id          TEXT NOT NULL,
    kind            TEXT NOT NULL,
    model           TEXT NOT NULL,
    amount_micros   BIGINT NOT NULL,
    markup_bp       BIGINT NOT NULL,
    day_starts_at   BIGINT NOT NULL,
    month_starts_at BIGINT NOT NULL,
    state           TEXT NOT NULL,
    settled_micros  BIGINT,
    created_at      BIGINT NOT NULL,
    -- A chat hold whose process died is released by the reaper after this.
    expires_at      BIGINT,
    ended_at        BIGINT,
    -- Which shared counters this hold took from (only those that guard something: the
    -- balance of a prepaid account, windows with a cap, a key's jobs in flight with a
    -- limit): 1 balance, 2 account day, 4 account month, 8 key day, 16 key month, 32 the
    -- key's jobs in flight. Its end gives back to those, and only those.
    held_mask       BIGINT NOT NULL
);
CREATE INDEX reservations_held ON reservations (state, expires_at);

-- Append-only: every change to an account's balance or reserved money, with who and why.
-- The sums of balance_delta and reserved_delta are the account's balance and reserved.
CREATE TABLE ledger (
    id                    TEXT PRIMARY KEY,
    account_id            TEXT NOT NULL,
    key_id                TEXT,
    kind                  TEXT NOT NULL,
    balance_delta_micros  BIGINT NOT NULL,
    reserved_delta_micros BIGINT NOT NULL,
    reservation_id        TEXT,
    model                 TEXT,
    units                 BIGINT,
    actor                 TEXT NOT NULL,
    note                  TEXT,
    idempotency_key       TEXT,
    request_hash          TEXT,
    created_at            BIGINT NOT NULL
);
CREATE INDEX ledger_by_account_time ON ledger (account_id, created_at);
CREATE INDEX ledger_by_time ON ledger (created_at);
CREATE UNIQUE INDEX ledger_idempotency ON ledger (account_id, idempotency_key);
