//! The outbox: the deliveries that announce an event, written in the event's
//! transaction, and the push of their first attempts once it commits.

use std::time::Duration;

use sqlx::AnyConnection;

use crate::Engine;
use crate::db::events::EventRow;
use crate::db::webhook_deliveries::{self as deliveries, NewDeliveries};
use crate::db::webhook_endpoints as endpoints;
use crate::ids::{IdKind, new_id};
use crate::jobs::job::Job;
use crate::tasks::{self, Deliver};

/// Writes the deliveries that announce `event` (in its transaction): one to the job's own
/// webhook if it asked for this event type, one to each enabled endpoint of the account
/// that did. Returns their first attempts, to be dispatched once the transaction commits:
/// in the fast lane if the event goes to at most `fast_lane_max_fan_out` destinations and
/// the destination is not known to be failing, in the bulk lane otherwise.
pub(crate) async fn fan_out(
    conn: &mut AnyConnection,
    job: &Job,
    event: &EventRow,
    fast_lane_max_fan_out: usize,
) -> Result<Vec<Deliver>, sqlx::Error> {
    fan_out_for(
        conn,
        &job.account_id,
        job.webhook.as_ref(),
        event,
        fast_lane_max_fan_out,
    )
    .await
}

/// As [`fan_out`], for an event of the account itself (its money): only its endpoints
/// that subscribed to the event's type hear of it.
pub(crate) async fn fan_out_account(
    conn: &mut AnyConnection,
    account_id: &str,
    event: &EventRow,
    fast_lane_max_fan_out: usize,
) -> Result<Vec<Deliver>, sqlx::Error> {
    fan_out_for(conn, account_id, None, event, fast_lane_max_fan_out).await
}

async fn fan_out_for(
    conn: &mut AnyConnection,
    account_id: &str,
    own_hook: Option<&serde_json::Value>,
    event: &EventRow,
    fast_lane_max_fan_out: usize,
) -> Result<Vec<Deliver>, sqlx::Error> {
    // (endpoint, url, known to be failing)
    let mut targets: Vec<(Option<String>, String, bool)> = Vec::new();
    if let Some(hook) = own_hook {
        let wants = hook["events"]
            .as_array()
            .is_some_and(|list| list.iter().any(|e| e.as_str() == Some(&event.kind)));
        if let (true, Some(url)) = (wants, hook["url"].as_str()) {
            targets.push((None, url.to_owned(), false));
        }
    }
    for endpoint in endpoints::enabled_for_account(&mut *conn, account_id).await? {
        if endpoint.wants(&event.kind) {
            let failing = endpoint.failing_since.is_some();
            targets.push((Some(endpoint.id), endpoint.url, failing));
        }
    }
    let large = targets.len() > fast_lane_max_fan_out;
    let to: Vec<_> = targets
        .iter()
        .map(|(endpoint_id, url, failing)| {
            (
                new_id(IdKind::Delivery),
                endpoint_id.as_deref(),
                url.as_str(),
                *failing,
            )
        })
        .collect();
    deliveries::insert_all(
        &mut *conn,
        &NewDeliveries {
            account_id,
            // The event's subject: the job, or for an account's own event the account.
            job_id: &event.job_id,
            event_id: &event.id,
            event_type: &event.kind,
            now: event.created_at,
            to: to
                .iter()
                .map(|(id, endpoint_id, url, _)| (id.as_str(), *endpoint_id, *url))
                .collect(),
        },
    )
    .await?;
    Ok(to
        .into_iter()
        .map(|(id, _, url, failing)| Deliver::new(id, 0, account_id, url, large || failing))
        .collect())
}

/// Pushes the first attempts of deliveries just committed, best effort
/// ([`tasks::hand_off`]): a push that fails leaves the delivery due in SQL.
pub(crate) async fn dispatch(engine: &Engine, outbox: Vec<Deliver>) {
    tasks::hand_off_all(engine, &outbox, Duration::ZERO).await;
}
