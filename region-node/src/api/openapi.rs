//! The node's API contract: an OpenAPI 3.1 description generated (utoipa) from the handlers'
//! `#[utoipa::path]` attributes, the request body types they parse and the response shapes below,
//! served at `GET /openapi.json` (no authentication) and kept in the repository as
//! `region-node/openapi.json`. A test fails when the two differ; regenerate the file with
//! `UPDATE_OPENAPI=1 cargo test -p region-node --lib openapi`.
//!
//! The handlers build their answers as JSON values, so the response shapes here are descriptions,
//! not the types that serialize the answers: `tests/contract.rs` (schemathesis against a live node)
//! checks every response against them, and every object is closed (`additionalProperties: false`)
//! so a member added to an answer and not here fails it.

use super::{accounts, conflicts, health, monitors, replication, transactions, transfers};
use crate::problem::{Problem, TYPE_BASE, TYPES};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::LazyLock;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{Modify, OpenApi, PartialSchema, ToResponse, ToSchema};

/// The media type of every error.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The description, generated once.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ledger region node",
        description = "One region of the multi-region active-active ledger: accounts, transfers, the \
            conflicts this region detected, anti-entropy and operations. Every error is an RFC 9457 \
            `application/problem+json` whose `type` is one of `Problem.type`'s values. Write routes \
            answer only after the commit; a refused request changes nothing. Read-your-writes across \
            regions: every successful write answers with a `Ledger-Session` header (a signed token of \
            the version vectors the client wrote); a `/v1` request that sends it back is served only \
            once this region has applied what it names, else `503 session-not-caught-up` with \
            `Retry-After` after a bounded wait; an altered token is `400 invalid-session-token`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        accounts::open,
        accounts::get,
        accounts::entries,
        accounts::view,
        transfers::create,
        transfers::get,
        transfers::post_pending,
        transfers::void_pending,
        transactions::create,
        transactions::get,
        conflicts::list,
        conflicts::get,
        conflicts::resolve,
        replication::events,
        monitors::create,
        monitors::list,
        monitors::get,
        monitors::delete,
        monitors::deliveries,
        monitors::list_deliveries,
        monitors::retry,
        health::healthz,
        health::readyz,
        health::metrics,
        serve,
    ),
    components(
        schemas(Problem, Account, AccountAt, AtPoint, AccountOrAccountAt, EntriesPage, Entry, AccountView, Transfer,
            PendingTransfer, TransferOrPending, Transaction, TransactionLeg, ConflictsPage, Conflict, Resolved,
            ReplicationPage, ReplicationEvent, Readiness, NotReady, TaskState, Monitor, MonitorsPage,
            WebhookDelivery, WebhookAttempt, DeliveriesPage),
        responses(Unauthorized, Forbidden, PayloadTooLarge, UnsupportedMediaType, Unavailable, Internal),
    ),
    modifiers(&BearerScheme, &HeadersAreNeverNull),
    tags(
        (name = "accounts", description = "Open accounts and read their authoritative state, history and read model"),
        (name = "transfers", description = "Move money between two accounts of one currency"),
        (name = "transactions", description = "Move money along up to 16 legs at once, all or none"),
        (name = "conflicts", description = "Concurrent updates this region detected, and their resolution"),
        (name = "replication", description = "Anti-entropy between regions (`replication` scope only)"),
        (name = "monitors", description = "Balance monitors of this region and their signed webhooks: deliveries, \
            attempt logs, dead letters"),
        (name = "operations", description = "Liveness, readiness, metrics and this description (no authentication)"),
    ),
)]
pub struct ApiDoc;

/// The description as served and as kept in `region-node/openapi.json`: pretty-printed JSON with
/// every object's keys sorted (through `serde_json::Value`, whose maps are ordered), and a final
/// newline, so the file is stable and diffs well.
pub fn document() -> String {
    let value = serde_json::to_value(ApiDoc::openapi()).expect("the description serializes");
    let mut text = serde_json::to_string_pretty(&value).expect("a JSON value serializes");
    text.push('\n');
    text
}

static DOCUMENT: LazyLock<String> = LazyLock::new(document);

/// The API contract as OpenAPI 3.1 JSON: what this node serves, and the file kept in the repository.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    responses((status = 200, description = "This description", content_type = "application/json", body = Object)),
)]
pub(super) async fn serve() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT.as_str()).into_response()
}

/// `bearer`: the API key as `Authorization: Bearer <key>`. Its scopes (`read`, `write`,
/// `replication`, `reconcile`) are the role names each operation's security requirement lists.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An API key. Keys hold scopes: `read` (GET routes), `write` (everything that changes the \
                 ledger), `replication` (only `/v1/replication/`), `reconcile` (only \
                 `/v1/conflicts/{id}/resolve`); each operation's requirement names the scope it needs.",
            ))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// A header is present or absent, never null, but utoipa describes an optional header parameter
/// (`Option<String>`) as `string | null`: this makes every header parameter's type its non-null one.
struct HeadersAreNeverNull;

impl Modify for HeadersAreNeverNull {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let operations =
            openapi.paths.paths.values_mut().flat_map(|item| [&mut item.get, &mut item.post, &mut item.delete]);
        let parameters = operations.flatten().flat_map(|operation| operation.parameters.iter_mut().flatten());
        for parameter in parameters {
            if let RefOr::T(parameter) = parameter
                && parameter.parameter_in == ParameterIn::Header
                && let Some(RefOr::T(Schema::Object(schema))) = &mut parameter.schema
                && let SchemaType::Array(types) = &schema.schema_type
            {
                let types: Vec<Type> = types.iter().filter(|t| **t != Type::Null).cloned().collect();
                schema.schema_type = match types.as_slice() {
                    [one] => SchemaType::Type(one.clone()),
                    _ => SchemaType::Array(types),
                };
            }
        }
    }
}

impl PartialSchema for Problem {
    fn schema() -> RefOr<Schema> {
        let string = || ObjectBuilder::new().schema_type(SchemaType::new(Type::String));
        let types = TYPES.iter().map(|slug| format!("{TYPE_BASE}{slug}"));
        ObjectBuilder::new()
            .schema_type(SchemaType::new(Type::Object))
            .description(Some(
                "An RFC 9457 problem. Clients switch on `type`; `title` is the type's summary, `detail` \
                 what was wrong with this request.",
            ))
            .property("type", string().enum_values(Some(types)))
            .required("type")
            .property("title", string())
            .required("title")
            .property(
                "status",
                ObjectBuilder::new().schema_type(SchemaType::new(Type::Integer)).minimum(Some(400)).maximum(Some(599)),
            )
            .required("status")
            .property("detail", string())
            .required("detail")
            .additional_properties(Some(utoipa::openapi::schema::AdditionalProperties::FreeForm(false)))
            .into()
    }
}

impl ToSchema for Problem {
    fn name() -> std::borrow::Cow<'static, str> {
        "Problem".into()
    }
}

/// A reusable problem response: its component name, description and status-independent content.
macro_rules! problem_response {
    ($name:ident, $description:literal) => {
        #[doc = $description]
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<utoipa::openapi::response::Response>) {
                let content = ContentBuilder::new().schema(Some(Problem::schema_ref())).build();
                (
                    stringify!($name),
                    ResponseBuilder::new().description($description).content(PROBLEM_JSON, content).into(),
                )
            }
        }
    };
}

problem_response!(Unauthorized, "`unauthorized`: no `Authorization: Bearer` key, or an unknown or revoked one");
problem_response!(Forbidden, "`forbidden`: the key lacks the scope this route needs");
problem_response!(PayloadTooLarge, "`payload-too-large`: the body exceeds the node's `body_limit_bytes`");
problem_response!(UnsupportedMediaType, "`unsupported-media-type`: the body is not sent as `application/json`");
problem_response!(
    Unavailable,
    "`unavailable`: the database is unreachable, the write queue is full, the request timed out or the node is \
     shutting down; retry (a transfer with the same `Idempotency-Key`)"
);
problem_response!(
    Internal,
    "`internal`: a fault of the node; a transfer may or may not have been applied only if it carried no \
     `Idempotency-Key`, so retry with the same key"
);

impl Problem {
    /// A reference to the `Problem` component.
    fn schema_ref() -> RefOr<Schema> {
        RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Problem"))
    }
}

/// An account's authoritative state (`GET /v1/accounts/{id}`, `POST /v1/accounts`).
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// The account id.
    #[schema(pattern = r"^[A-Za-z0-9_.:\-]{1,64}$")]
    pub id: String,
    /// ISO 4217 code, three uppercase letters.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    /// Minor units, within ±2^62: what is posted.
    pub balance: i64,
    /// Minor units reserved by pending transfers from this account.
    pub pending_debits: i64,
    /// Minor units promised to it by pending transfers.
    pub pending_credits: i64,
    /// `balance` less `pending_debits`: what a transfer or a new hold may spend.
    pub available: i64,
    /// Whether the balance may go below zero.
    pub allow_negative: bool,
    /// The client's metadata, as given at opening.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// For each region, its events on this account applied here.
    pub version_vector: BTreeMap<String, u64>,
    /// How many entries the account has.
    pub entries: i64,
    /// Frozen by an open account-definition conflict: transfers get `account-frozen`.
    pub frozen: bool,
    /// Money posted under another currency's definition, kept apart by currency.
    pub foreign_balances: BTreeMap<String, i64>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// RFC 3339; the last change.
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// An account at a point of its history (`GET /v1/accounts/{id}?at=`), as this region recorded it.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountAt {
    /// The account id.
    #[schema(pattern = r"^[A-Za-z0-9_.:\-]{1,64}$")]
    pub id: String,
    /// ISO 4217 code, three uppercase letters.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    /// The point asked for, as given: a time or an entry position.
    pub at: AtPoint,
    /// How many entries the account had then: the answer reflects exactly its first `entries`.
    pub entries: i64,
    /// Minor units: the balance after the last of those entries in the account's currency.
    pub balance: i64,
    /// The account's version vector after that entry (before any entry: after its opening).
    pub version_vector: BTreeMap<String, u64>,
    /// RFC 3339: when this region recorded that entry; null before any entry.
    #[schema(format = DateTime, required = true)]
    pub recorded_at: Option<String>,
}

/// A point of an account's history.
#[derive(ToSchema, serde::Deserialize)]
#[serde(untagged)]
pub enum AtPoint {
    /// An entry position.
    Position(i64),
    /// RFC 3339.
    #[schema(format = DateTime)]
    Time(String),
}

/// `GET /v1/accounts/{id}`: the account, or with `at` the account at that point.
#[derive(ToSchema, serde::Deserialize)]
#[serde(untagged)]
pub enum AccountOrAccountAt {
    /// Without `at`.
    Account(Account),
    /// With `at`.
    AccountAt(AccountAt),
}

/// A pending (two-phase) transfer with its status.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingTransfer {
    /// The pending transfer's id.
    pub id: uuid::Uuid,
    /// The account it debits when posted.
    pub from: String,
    /// The account it credits when posted.
    pub to: String,
    /// Minor units reserved.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The client's metadata, as given.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// The region that accepted it (and voids it at `expires_at`).
    pub origin_region: String,
    /// The client's idempotency key, if it sent one.
    #[schema(required = true)]
    pub idempotency_key: Option<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Always true: tells a pending transfer from a transfer.
    pub pending: bool,
    /// `pending`, `posted`, `voided` or `expired`.
    #[schema(pattern = "^(pending|posted|voided|expired)$")]
    pub status: String,
    /// Minor units posted (0 unless posted).
    pub posted_amount: i64,
    /// RFC 3339 deadline, if any.
    #[schema(format = DateTime, required = true)]
    pub expires_at: Option<String>,
    /// RFC 3339: when this region first saw it settled.
    #[schema(format = DateTime, required = true)]
    pub settled_at: Option<String>,
    /// The transfers its posts made (more than one only after a race between regions).
    pub posted_transfer_ids: Vec<uuid::Uuid>,
    /// Both accounts' version vectors after its last event.
    pub version_vectors: BTreeMap<String, BTreeMap<String, u64>>,
}

/// `POST /v1/transfers` and `GET /v1/transfers/{id}`: a transfer, or a pending one.
#[derive(ToSchema, serde::Deserialize)]
#[serde(untagged)]
pub enum TransferOrPending {
    /// A transfer (or a transaction's leg, or a post).
    Transfer(Transfer),
    /// A pending transfer.
    PendingTransfer(PendingTransfer),
}

/// A transaction as `POST /v1/transactions` and `GET /v1/transactions/{id}` answer it.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transaction {
    /// The transaction id.
    pub id: uuid::Uuid,
    /// Its legs, in order; each is also a transfer (`GET /v1/transfers/{id}`).
    pub legs: Vec<TransactionLeg>,
    /// The client's metadata, as given.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// The region that accepted it.
    pub origin_region: String,
    /// The client's idempotency key, if it sent one.
    #[schema(required = true)]
    pub idempotency_key: Option<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Each touched account's version vector after the transaction.
    pub version_vectors: BTreeMap<String, BTreeMap<String, u64>>,
}

/// One leg of a transaction.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionLeg {
    /// The leg's transfer id (derived from the transaction's id and the leg's position).
    pub id: uuid::Uuid,
    /// The debited account.
    pub from: String,
    /// The credited account.
    pub to: String,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
}

/// One entry of an account's history.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The entry's position in the account's history, from 1.
    pub seq: i64,
    /// The transfer that made it.
    pub transfer_id: uuid::Uuid,
    /// Signed minor units: negative for a debit.
    pub amount: i64,
    /// The balance after this entry.
    pub balance_after: i64,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// A page of an account's history.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntriesPage {
    /// The account.
    pub account_id: String,
    /// The entries after `after`, in order.
    pub entries: Vec<Entry>,
    /// The `after` of the next page, or null when this page is the last.
    #[schema(required = true)]
    pub next_after: Option<i64>,
}

/// The Kafka-fed read model of an account, and how far it is behind.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountView {
    /// The account.
    pub account_id: String,
    /// The view's balance.
    pub balance: i64,
    /// Entries the view applied.
    pub entries_applied: i64,
    /// Entries the authoritative state has that the view has not applied yet.
    pub entries_behind: i64,
    /// RFC 3339, or null before the view saw the account.
    #[schema(required = true, format = DateTime)]
    pub updated_at: Option<String>,
}

/// A transfer (`POST /v1/transfers`, its replays and `GET /v1/transfers/{id}`).
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    /// The transfer's id.
    pub id: uuid::Uuid,
    /// The debited account.
    pub from: String,
    /// The credited account.
    pub to: String,
    /// Minor units, 1 to 10^15.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: i64,
    /// Both accounts' currency.
    pub currency: String,
    /// The client's metadata.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// The region that accepted it.
    pub origin_region: String,
    /// The client's `Idempotency-Key`, or null.
    #[schema(required = true)]
    pub idempotency_key: Option<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Each account's version vector after the transfer, by account id.
    pub version_vectors: BTreeMap<String, BTreeMap<String, u64>>,
}

/// One conflict this region detected.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conflict {
    /// The same in every region that detects it.
    pub conflict_id: uuid::Uuid,
    /// `overdraft`, `concurrent-benign`, `duplicate-intent` or `account-definition`.
    #[schema(pattern = "^(overdraft|concurrent-benign|duplicate-intent|account-definition)$")]
    pub kind: String,
    /// The account (or, for `duplicate-intent`, the key's first account).
    pub account: String,
    /// The events involved, each described by what it did (`transfer` or `opening`) when known. An
    /// overdraft episode's are a page: the first 100 by event id in a list, a chosen page of
    /// `GET /v1/conflicts/{id}`; `event_count` says how many there are.
    #[schema(value_type = Vec<Object>)]
    pub events: Value,
    /// The `events_after` of the next page of events (`GET /v1/conflicts/{id}`), or null when
    /// `events` ends the list.
    #[schema(required = true, format = Uuid)]
    pub events_next: Option<String>,
    /// How many events the conflict counts.
    pub event_count: i64,
    /// For an overdraft, the joint past's version vector.
    #[schema(required = true, value_type = Option<Object>)]
    pub joint_vector: Value,
    /// For an overdraft, the joint past's balance.
    #[schema(required = true)]
    pub joint_balance: Option<i64>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub detected_at: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// `open` or `resolved`.
    #[schema(pattern = "^(open|resolved)$")]
    pub status: String,
    /// RFC 3339, or null while open.
    #[schema(required = true, format = DateTime)]
    pub resolved_at: Option<String>,
    /// The resolution finance applied, or null.
    #[schema(required = true, value_type = Option<Object>)]
    pub resolution: Value,
}

/// A page of conflicts.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConflictsPage {
    /// This node's region.
    pub region: String,
    /// The conflicts, in detection order.
    pub conflicts: Vec<Conflict>,
    /// The `after` of the next page, or null when this page is the last.
    #[schema(required = true)]
    pub next: Option<String>,
}

/// A conflict as resolved in this region.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolved {
    /// The conflict.
    pub conflict_id: uuid::Uuid,
    /// Its kind.
    pub kind: String,
    /// Its account.
    pub account: String,
    /// Always `resolved`.
    #[schema(pattern = "^resolved$")]
    pub status: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub resolved_at: String,
    /// The request's `case` and `definition`, as stored.
    #[schema(value_type = Object)]
    pub resolution: Value,
}

/// One stored event, for anti-entropy.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationEvent {
    /// Its position among this region's stored events.
    pub seq: i64,
    /// The event as stored (as received, unknown members kept).
    #[schema(value_type = Object)]
    pub event: Value,
}

/// A page of one origin's stored events.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationPage {
    /// In `seq` order.
    pub events: Vec<ReplicationEvent>,
    /// The `after` of the next request (the last `seq` returned, or the `after` given).
    pub next_after: i64,
}

/// One supervised background task.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskState {
    /// Its name (`publisher`, `consumer`, `remote-apply`, `anti-entropy`, `webhooks`).
    pub task: String,
    /// `running`, `restarting` or `stopped`.
    #[schema(pattern = "^(running|restarting|stopped)$")]
    pub state: String,
    /// How many times it was restarted.
    pub restarts: u64,
    /// Why it last ended early, or null.
    #[schema(required = true)]
    pub last_error: Option<String>,
}

/// The node is ready.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Readiness {
    /// True.
    pub ready: bool,
    /// `ok` or `unreachable`.
    pub postgresql: String,
    /// `ok` or `unreachable`.
    pub kafka: String,
    /// Every supervised task.
    pub tasks: Vec<TaskState>,
}

/// The node is not ready: an `unavailable` problem carrying the readiness members.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotReady {
    /// False.
    pub ready: bool,
    /// `ok` or `unreachable`.
    pub postgresql: String,
    /// `ok` or `unreachable`.
    pub kafka: String,
    /// Every supervised task.
    pub tasks: Vec<TaskState>,
    /// The `unavailable` problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The problem's title.
    pub title: String,
    /// 503.
    pub status: u16,
    /// What is not ready.
    pub detail: String,
}

/// A balance monitor (never with its secret).
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Monitor {
    /// The monitor's id.
    pub id: uuid::Uuid,
    /// The account watched.
    pub account: String,
    /// The condition, in canonical form (`available < 1000`).
    pub condition: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// `active` or `deleted`.
    #[schema(pattern = "^(active|deleted)$")]
    pub status: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// RFC 3339, or null while active.
    #[schema(required = true, format = DateTime)]
    pub deleted_at: Option<String>,
}

/// A page of monitors.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorsPage {
    /// Oldest first.
    pub monitors: Vec<Monitor>,
    /// The `after` of the next page, or null when this page is the last.
    #[schema(required = true)]
    pub next_after: Option<i64>,
}

/// One attempt to deliver a webhook.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookAttempt {
    /// From 1.
    pub attempt: i32,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub started_at: String,
    /// RFC 3339, or null while in flight.
    #[schema(required = true, format = DateTime)]
    pub finished_at: Option<String>,
    /// The target's HTTP status, or null when it did not answer.
    #[schema(required = true)]
    pub status_code: Option<i32>,
    /// Why there was no answer (timeout, refused, interrupted by a stop…), or null.
    #[schema(required = true)]
    pub error: Option<String>,
}

/// One firing of a monitor, and its delivery.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookDelivery {
    /// The `Ledger-Webhook-Id` every attempt carries: receivers dedupe by it.
    pub delivery_id: uuid::Uuid,
    /// The monitor that fired.
    pub monitor_id: uuid::Uuid,
    /// The event whose posting made the condition true.
    pub event_id: uuid::Uuid,
    /// The account.
    pub account: String,
    /// The monitor's condition when it fired.
    pub condition: String,
    /// The balance after the posting.
    pub balance_after: i64,
    /// RFC 3339: when the event happened (in its origin region).
    #[schema(format = DateTime)]
    pub occurred_at: String,
    /// `pending`, `delivered` or `dead`.
    #[schema(pattern = "^(pending|delivered|dead)$")]
    pub state: String,
    /// Attempts made so far.
    pub attempts: i32,
    /// RFC 3339: when a pending delivery is tried next, else null.
    #[schema(required = true, format = DateTime)]
    pub next_attempt_at: Option<String>,
    /// RFC 3339, or null until delivered.
    #[schema(required = true, format = DateTime)]
    pub delivered_at: Option<String>,
    /// RFC 3339: when the monitor fired here.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The latest attempts (at most 50), oldest first.
    pub attempt_log: Vec<WebhookAttempt>,
}

/// A page of webhook deliveries.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesPage {
    /// Oldest first.
    pub deliveries: Vec<WebhookDelivery>,
    /// The `after` of the next page, or null when this page is the last.
    #[schema(required = true)]
    pub next_after: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

    /// The kept file is the generated description; `UPDATE_OPENAPI=1` rewrites it instead.
    #[test]
    fn openapi_json_is_the_generated_description() {
        let generated = document();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(FILE, &generated).expect("region-node/openapi.json is writable");
            return;
        }
        let kept = std::fs::read_to_string(FILE).unwrap_or_default();
        assert!(
            kept == generated,
            "region-node/openapi.json differs from the description the node serves; regenerate it with \
             `UPDATE_OPENAPI=1 cargo test -p region-node --lib openapi` and review the diff"
        );
    }

    /// The routes the router registers, as (method, path), read from `api/mod.rs`.
    fn registered_routes() -> BTreeSet<(String, String)> {
        let source = include_str!("mod.rs");
        source
            .split(".route(\"")
            .skip(1)
            .map(|call| {
                let (path, rest) = call.split_once('"').expect("a route's path is a string literal");
                let method = rest.trim_start_matches(", ").split('(').next().expect("a method router");
                (method.to_owned(), path.to_owned())
            })
            .collect()
    }

    #[test]
    fn every_route_is_described_and_every_description_is_routed() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let described: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| item.as_object().unwrap().keys().map(|m| (m.clone(), path.clone())))
            .collect();
        assert_eq!(described, registered_routes());
    }

    #[test]
    fn problem_type_enumerates_every_problem_type() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let types = doc["components"]["schemas"]["Problem"]["properties"]["type"]["enum"].as_array().unwrap();
        let slugs: Vec<&str> = types.iter().map(|t| t.as_str().unwrap().strip_prefix(TYPE_BASE).unwrap()).collect();
        assert_eq!(slugs, TYPES);
    }

    #[test]
    fn documented_bounds_are_the_code_bounds() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let max = ledger_core::AMOUNT_MAX;
        assert_eq!(schemas["TransferRequest"]["properties"]["amount"]["maximum"], max);
        assert_eq!(schemas["Transfer"]["properties"]["amount"]["maximum"], max);
        let account_pattern = format!("^[A-Za-z0-9_.:\\-]{{1,{}}}$", ledger_core::ids::ACCOUNT_ID_LEN_MAX);
        assert_eq!(schemas["OpenAccountRequest"]["properties"]["id"]["pattern"], account_pattern.as_str());
        assert_eq!(schemas["Account"]["properties"]["id"]["pattern"], account_pattern.as_str());
    }
}
