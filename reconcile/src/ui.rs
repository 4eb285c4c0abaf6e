//! The web UI for finance staff, server-rendered (maud), no script needed: the queue with filters
//! and counts, the case page (branches side by side, a timeline of which region saw what when,
//! proposals with their forms, the case's trail), the whole trail and CSV exports.
//!
//! Sessions live in an `HttpOnly; Secure; SameSite=Strict` cookie; every form carries the
//! session's CSRF token (the login form a double-submit token), and a form refused for any reason
//! is shown again with the reason and changes nothing. Browsers treat `http://127.0.0.1` as a
//! secure context, so `Secure` cookies work locally too.

use crate::AppState;
use crate::api::{allow, filter};
use crate::auth::{self, Principal, SESSION_COOKIE};
use crate::case::{Action, CaseState};
use crate::problem::Problem;
use crate::{export, input, store};
use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;
use std::collections::HashMap;

const LOGIN_COOKIE: &str = "reconcile_login";

/// The UI's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/cases") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/cases", get(queue))
        .route("/cases/{id}", get(case_page))
        .route("/cases/{id}/proposals", post(propose))
        .route("/proposals/{id}/approve", post(approve))
        .route("/proposals/{id}/reject", post(reject))
        .route("/audit", get(trail))
        .route("/export/cases.csv", get(export_cases))
        .route("/export/audit.csv", get(export_audit))
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn set_cookie(r: &mut Response, name: &str, value: &str, path: &str, max_age_s: i64) {
    let c = format!("{name}={value}; HttpOnly; Secure; SameSite=Strict; Path={path}; Max-Age={max_age_s}");
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Why a page is refused: not logged in (the login page) or a problem (a page saying it).
enum Refused {
    Login,
    Problem(Problem, Option<Principal>),
}

impl From<Problem> for Refused {
    fn from(p: Problem) -> Self {
        Refused::Problem(p, None)
    }
}

impl From<sqlx::Error> for Refused {
    fn from(e: sqlx::Error) -> Self {
        Refused::Problem(e.into(), None)
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Login => Redirect::to("/login").into_response(),
            Refused::Problem(p, who) => {
                let status = p.status;
                let body = layout(
                    "Refused",
                    who.as_ref(),
                    html! {
                        h1 { "Request refused" }
                        (error_box(&p))
                        p { a href="/cases" { "Back to the queue" } }
                    },
                );
                (status, body).into_response()
            }
        }
    }
}

async fn session(state: &AppState, headers: &HeaderMap) -> Result<Option<Principal>, sqlx::Error> {
    match cookie(headers, SESSION_COOKIE) {
        Some(token) => auth::session(&state.pool, &token).await,
        None => Ok(None),
    }
}

/// The session for a page: none sends the browser to the login page.
async fn viewer(state: &AppState, headers: &HeaderMap) -> Result<Principal, Refused> {
    session(state, headers).await?.ok_or(Refused::Login)
}

/// The session for a form: none is 401 (never a redirect that could swallow the post), a wrong or
/// missing CSRF token 403, a role without the power 403; all before anything changes.
async fn actor(
    state: &AppState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    action: Action,
) -> Result<Principal, Refused> {
    let Some(p) = session(state, headers).await? else {
        return Err(Refused::Problem(Problem::unauthorized("your session has ended; log in again"), None));
    };
    if !auth::csrf_matches(&p, form.get("csrf").map(String::as_str)) {
        return Err(Refused::Problem(Problem::csrf(), Some(p)));
    }
    allow(&p, action).map_err(|e| Refused::Problem(e, Some(p.clone())))?;
    Ok(p)
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#111}header{background:#123;color:#fff;padding:.5rem 1rem;display:flex;gap:1rem;align-items:center}
header a{color:#fff}main{padding:1rem}table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #bbb;padding:.25rem .5rem;text-align:left;vertical-align:top}
.error{background:#fee;border:2px solid #c00;padding:.5rem;margin:.5rem 0}.ok{background:#efe;border:1px solid #080;padding:.5rem}
a:focus,button:focus,input:focus,select:focus,textarea:focus{outline:3px solid #f90;outline-offset:2px}.skip{position:absolute;left:-999px}.skip:focus{left:1rem;top:1rem;background:#fff;color:#000}
form.inline{display:inline}label{display:block;margin:.25rem 0}fieldset{margin:.5rem 0}code{font-size:.85em}";

fn layout(title: &str, who: Option<&Principal>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · Reconcile" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    strong { "Ledger reconcile" }
                    @if let Some(p) = who {
                        nav aria-label="Main" {
                            a href="/cases" { "Queue" } " · "
                            a href="/audit" { "Audit trail" } " · "
                            a href="/export/cases.csv" { "Cases CSV" } " · "
                            a href="/export/audit.csv" { "Trail CSV" }
                        }
                        span { (p.username) " (" (p.role.as_str()) ")" }
                        form.inline method="post" action="/logout" {
                            (csrf_field(p))
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main id="main" { (body) }
            }
        }
    }
}

fn csrf_field(p: &Principal) -> Markup {
    html! { input type="hidden" name="csrf" value=(p.csrf.clone().unwrap_or_default()); }
}

fn error_box(p: &Problem) -> Markup {
    html! { div.error role="alert" id="error" { strong { (p.slug) } ": " (p.detail) } }
}

fn login_form(csrf: &str, error: Option<&Problem>) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            h1 { "Log in" }
            @if let Some(e) = error { (error_box(e)) }
            form method="post" action="/login" {
                input type="hidden" name="csrf" value=(csrf);
                label { "Username " input name="username" autocomplete="username" required autofocus; }
                label { "Password " input name="password" type="password" autocomplete="current-password" required; }
                button type="submit" { "Log in" }
            }
        },
    )
}

fn fresh_login(error: Option<&Problem>, status: StatusCode) -> Response {
    let token = hex::encode(rand::random::<[u8; 16]>());
    let mut r = (status, login_form(&token, error)).into_response();
    set_cookie(&mut r, LOGIN_COOKIE, &token, "/login", 3600);
    r
}

async fn login_page() -> Response {
    fresh_login(None, StatusCode::OK)
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let sent = form.get("csrf").cloned().unwrap_or_default();
    if sent.is_empty() || cookie(&headers, LOGIN_COOKIE).as_deref() != Some(sent.as_str()) {
        return fresh_login(Some(&Problem::csrf()), StatusCode::FORBIDDEN);
    }
    let (username, password) =
        (form.get("username").cloned().unwrap_or_default(), form.get("password").cloned().unwrap_or_default());
    let ttl = chrono::Duration::seconds(state.cfg.session_ttl_s as i64);
    let lockout = chrono::Duration::seconds(state.cfg.lockout_s as i64);
    match auth::login(&state.pool, username.trim(), &password, state.cfg.login_failures_max, lockout, ttl).await {
        Ok(session) => {
            let mut r = Redirect::to("/cases").into_response();
            set_cookie(&mut r, SESSION_COOKIE, &session.token, "/", state.cfg.session_ttl_s as i64);
            set_cookie(&mut r, LOGIN_COOKIE, "", "/login", 0);
            r
        }
        Err(p) => fresh_login(Some(&p), p.status),
    }
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, Refused> {
    actor(&state, &headers, &form, Action::Read).await?;
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        auth::logout(&state.pool, &token).await?;
    }
    let mut r = Redirect::to("/login").into_response();
    set_cookie(&mut r, SESSION_COOKIE, "", "/", 0);
    Ok(r)
}

fn selected(current: Option<&String>, value: &str) -> bool {
    current.is_some_and(|c| c == value)
}

async fn queue(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Refused> {
    let p = viewer(&state, &headers).await?;
    let f = filter(&query, state.cfg.page_size).map_err(|e| Refused::Problem(e, Some(p.clone())))?;
    let (cases, next) = store::list(&state.pool, &f).await?;
    let counts = store::open_counts(&state.pool).await?;
    let regions: Vec<String> = state.cfg.regions.iter().map(|r| r.name.clone()).collect();
    let mut next_query = query.clone();
    if let Some(n) = &next {
        next_query.insert("cursor".into(), n.clone());
    }
    let next_href = format!(
        "/cases?{}",
        next_query.iter().map(|(k, v)| format!("{k}={}", crate::intake::encode(v))).collect::<Vec<_>>().join("&")
    );
    let body = html! {
        h1 { "Case queue" }
        section aria-labelledby="counts" {
            h2 id="counts" { "Open cases by kind and age" }
            table {
                thead { tr { th { "kind" } th { "< 1 hour" } th { "1 hour – 1 day" } th { "> 1 day" } } }
                tbody {
                    @for (kind, fresh, day, older) in &counts { tr { td { (kind) } td { (fresh) } td { (day) } td { (older) } } }
                    @if counts.is_empty() { tr { td colspan="4" { "No open cases." } } }
                }
            }
        }
        form method="get" action="/cases" id="filters" {
            fieldset {
                legend { "Filter" }
                label { "State "
                    select name="state" {
                        option value="" { "any (but superseded)" }
                        @for s in CaseState::ALL { option value=(s.as_str()) selected[selected(query.get("state"), s.as_str())] { (s.as_str()) } }
                    }
                }
                label { "Kind "
                    select name="kind" {
                        option value="" { "any" }
                        @for k in ["overdraft", "duplicate-intent", "account-definition", "concurrent-benign", "pending-settlement"] {
                            option value=(k) selected[selected(query.get("kind"), k)] { (k) }
                        }
                    }
                }
                label { "Account " input name="account" value=(query.get("account").cloned().unwrap_or_default()); }
                label { "Seen in region "
                    select name="region" {
                        option value="" { "any" }
                        @for r in &regions { option value=(r) selected[selected(query.get("region"), r)] { (r) } }
                    }
                }
                button type="submit" { "Apply filters" }
            }
        }
        table id="cases" {
            thead { tr { th { "case" } th { "state" } th { "kind" } th { "account" } th { "seen in" } th { "at risk" } th { "opened" } } }
            tbody {
                @for c in &cases {
                    tr {
                        td { a href={ "/cases/" (c["id"].as_str().unwrap_or("")) } { code { (c["id"].as_str().unwrap_or("")) } } }
                        td { (c["state"].as_str().unwrap_or("")) }
                        td { (c["kind"].as_str().unwrap_or("")) }
                        td { (c["accounts"][0].as_str().unwrap_or("")) }
                        td { (c["regions"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                        td { (c["amount_at_risk"]) }
                        td { (c["opened_at"].as_str().unwrap_or("")) }
                    }
                }
                @if cases.is_empty() { tr { td colspan="7" { "No cases match." } } }
            }
        }
        @if next.is_some() { p { a href=(next_href) { "Next page" } } }
    };
    Ok(layout("Queue", Some(&p), body).into_response())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The case page, with an optional error to show (a refused form) and its status.
async fn render_case(
    state: &AppState,
    p: &Principal,
    id: uuid::Uuid,
    error: Option<&Problem>,
) -> Result<Response, Refused> {
    let Some(c) = store::get(&state.pool, id).await? else {
        return Err(Refused::Problem(Problem::not_found(format!("no case {id}")), Some(p.clone())));
    };
    let branches: Vec<Value> = c["branches"].as_array().cloned().unwrap_or_default();
    let case_state = c["state"].as_str().unwrap_or("");
    let mut timeline: Vec<(String, String)> = Vec::new();
    for b in &branches {
        if let Some(at) = b["created_at"].as_str() {
            timeline.push((
                at.to_owned(),
                format!(
                    "{} accepted transfer {} ({} {} → {})",
                    s(&b["origin_region"]),
                    s(&b["id"]),
                    s(&b["amount"]),
                    s(&b["from"]),
                    s(&b["to"])
                ),
            ));
        }
    }
    for sight in c["sightings"].as_array().into_iter().flatten() {
        let at = sight["detected_at"].as_str().or(sight["first_seen_at"].as_str()).unwrap_or("");
        timeline.push((
            at.to_owned(),
            format!("{} detected the conflict (its status now: {})", s(&sight["region"]), s(&sight["status"])),
        ));
    }
    timeline.sort();
    let proposals: Vec<Value> = c["proposals"].as_array().cloned().unwrap_or_default();
    let status = error.map_or(StatusCode::OK, |e| e.status);
    let body = html! {
        h1 { "Case " code { (id) } }
        @if let Some(e) = error { (error_box(e)) }
        dl id="summary" {
            dt { "State" } dd id="case-state" { (case_state) }
            dt { "Kind" } dd { (s(&c["kind"])) }
            dt { "Account" } dd { (s(&c["accounts"][0])) }
            dt { "Amount at risk (minor units)" } dd { (s(&c["amount_at_risk"])) }
            @if let Some(before) = balance_before(&c, &branches) { dt { "Balance before the concurrent updates" } dd id="balance-before" { (before) } }
            dt { "Balance after them all (their joint past)" } dd id="balance-after" { (s(&c["conflict"]["joint_balance"])) }
            dt { "Events" } dd { (s(&c["conflict"]["event_count"])) }
            dt { "Seen in" } dd { (c["regions"].as_array().map(|r| r.iter().map(s).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
            dt { "Opened" } dd { (s(&c["opened_at"])) }
            @if !c["resolved_at"].is_null() { dt { "Resolved" } dd { (s(&c["resolved_at"])) } }
            @if !c["closed_reason"].is_null() { dt { "Closed by policy" } dd { (s(&c["closed_reason"])) } }
            @if !c["superseded_by"].is_null() { dt { "Superseded by" } dd { a href={ "/cases/" (s(&c["superseded_by"])) } { (s(&c["superseded_by"])) } } }
        }
        h2 { "Branches side by side" }
        @if branches.is_empty() { p { "The transfers are being fetched from the regions." } }
        @else {
            table id="branches" {
                tr { th { "" } @for b in &branches { th { code { (s(&b["id"])) } } } }
                tr { th { "accepted in" } @for b in &branches { td { (s(&b["region"])) } } }
                tr { th { "what" } @for b in &branches { td { @if b["kind"] == "opening" { "account opening" } @else { (s(&b["amount"])) " " (s(&b["currency"])) ": " (s(&b["from"])) " → " (s(&b["to"])) } } } }
                tr { th { "at" } @for b in &branches { td { (s(&b["created_at"])) } } }
                tr { th { "version vector" } @for b in &branches { td { code { (s(&b["vector"])) } } } }
                tr { th { "change to the account" } @for b in &branches { td { (balance_change(b, &s(&c["accounts"][0]))) } } }
            }
            // A case fetches at most `intake::BRANCHES_MAX`: say so rather than look complete.
            @if let Some(total) = c["conflict"]["event_count"].as_u64().filter(|t| *t > branches.len() as u64) {
                p id="branches-shown" {
                    "The first " (branches.len()) " of " (total) " events are shown, in event id order; every one is listed by "
                    code { "GET /v1/conflicts" } " in the regions that saw it."
                }
            }
        }
        h2 { "Timeline" }
        ol id="timeline" { @for (at, what) in &timeline { li { time { (at) } " — " (what) } } }
        h2 { "Proposals" }
        @if proposals.is_empty() { p { "None yet." } }
        @for pr in &proposals {
            section.proposal id={ "proposal-" (s(&pr["id"])) } {
                h3 { (s(&pr["action"])) " — " (s(&pr["state"])) }
                p { "Proposed by " (s(&pr["proposed_by"])) " at " (s(&pr["proposed_at"])) ": " (s(&pr["reason"])) }
                p { "Parameters: " code { (s(&pr["params"])) } }
                p { "Approvals: " (pr["approved_by"].as_array().map(|a| a.iter().map(s).collect::<Vec<_>>().join(", ")).unwrap_or_default()) " of " (s(&pr["approvals_needed"])) " needed" }
                @if !pr["rejection_reason"].is_null() { p { "Rejected by " (s(&pr["rejected_by"])) ": " (s(&pr["rejection_reason"])) } }
                @if !pr["failure"].is_null() { p.error { "A region refused: " (s(&pr["failure"])) } }
                @if !pr["transfer"].is_null() { p { "Compensating transfer " code { (s(&pr["transfer"]["id"])) } " posted in " (s(&pr["posting_region"])) } }
                @if pr["state"] == "proposed" && p.role.may(Action::Decide) {
                    form.inline method="post" action={ "/proposals/" (s(&pr["id"])) "/approve" } {
                        (csrf_field(p))
                        button type="submit" { "Approve" }
                    }
                    form method="post" action={ "/proposals/" (s(&pr["id"])) "/reject" } {
                        (csrf_field(p))
                        label { "Reason for rejecting " textarea name="reason" rows="2" cols="60" {} }
                        button type="submit" { "Reject" }
                    }
                }
            }
        }
        @if case_state == "open" && p.role.may(Action::Propose) {
            h2 { "Propose a resolution" }
            form method="post" action={ "/cases/" (id) "/proposals" } id="propose" {
                (csrf_field(p))
                label { "Action "
                    select name="action" {
                        @if c["kind"] == "account-definition" {
                            option value="define" { "define: choose the definition that stands and unfreeze" }
                        } @else {
                            option value="reverse" { "reverse one of the transfers" }
                            option value="adjust" { "adjust between named accounts" }
                        }
                        option value="accept" { "accept as is" }
                    }
                }
                @if c["kind"] == "account-definition" {
                    fieldset { legend { "Definition (define)" }
                        label { "Currency " input name="currency" size="4"; }
                        label { "Allow a negative balance "
                            select name="allow_negative" { option value="" { "—" } option value="false" { "no" } option value="true" { "yes" } }
                        }
                    }
                } @else {
                    fieldset { legend { "Transfer to reverse (reverse)" }
                        label { "Transfer "
                            select name="event_id" {
                                option value="" { "—" }
                                @for b in branches.iter().filter(|b| b["amount"].is_i64()) {
                                    option value=(s(&b["id"])) { (s(&b["region"])) ": " (s(&b["amount"])) " " (s(&b["from"])) " → " (s(&b["to"])) }
                                }
                            }
                        }
                    }
                    fieldset { legend { "Adjustment (adjust)" }
                        label { "From account " input name="from"; }
                        label { "To account " input name="to"; }
                        label { "Amount (minor units) " input name="amount" inputmode="numeric"; }
                        label { "Currency " input name="currency" size="4"; }
                    }
                }
                label { "Reason " textarea name="reason" rows="3" cols="60" required {} }
                button type="submit" { "Propose" }
            }
        }
        h2 { "Audit trail of this case" }
        (trail_table(c["audit"].as_array().map(Vec::as_slice).unwrap_or(&[])))
    };
    Ok((status, layout("Case", Some(p), body)).into_response())
}

/// The account's balance before an episode: its joint balance less every member's posting, when
/// every member is listed.
fn balance_before(c: &Value, branches: &[Value]) -> Option<i64> {
    let joint = c["conflict"]["joint_balance"].as_i64()?;
    if branches.is_empty() || branches.len() as i64 != c["conflict"]["event_count"].as_i64()? {
        return None;
    }
    let account = c["accounts"][0].as_str()?;
    branches.iter().try_fold(joint, |acc, b| {
        let amount = b["amount"].as_i64()?;
        match (b["from"].as_str(), b["to"].as_str()) {
            (Some(from), _) if from == account => acc.checked_add(amount),
            (_, Some(to)) if to == account => acc.checked_sub(amount),
            _ => Some(acc),
        }
    })
}

fn balance_change(b: &Value, account: &str) -> String {
    let amount = b["amount"].as_i64();
    match (amount, b["from"].as_str(), b["to"].as_str()) {
        (Some(a), Some(from), _) if from == account => format!("−{a}"),
        (Some(a), _, Some(to)) if to == account => format!("+{a}"),
        _ => String::new(),
    }
}

fn trail_table(entries: &[Value]) -> Markup {
    html! {
        table.trail {
            thead { tr { th { "#" } th { "at" } th { "who" } th { "what" } th { "why" } th { "before" } th { "after" } } }
            tbody {
                @for e in entries {
                    tr {
                        td { (s(&e["seq"])) } td { (s(&e["at"])) } td { (s(&e["actor"])) } td { (s(&e["action"])) }
                        td { (s(&e["reason"])) } td { code { (s(&e["before"])) } } td { code { (s(&e["after"])) } }
                    }
                }
            }
        }
    }
}

fn case_id(id: &str, p: &Principal) -> Result<uuid::Uuid, Refused> {
    id.parse().map_err(|_| Refused::Problem(Problem::not_found(format!("no case {id:?}")), Some(p.clone())))
}

async fn case_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refused> {
    let p = viewer(&state, &headers).await?;
    let id = case_id(&id, &p)?;
    render_case(&state, &p, id, None).await
}

async fn propose(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, Refused> {
    let p = actor(&state, &headers, &form, Action::Propose).await?;
    let id = case_id(&id, &p)?;
    let outcome = async {
        let mut form = form.clone();
        form.remove("csrf");
        let (resolution, reason) = input::proposal(&input::proposal_from_form(&form)?)?;
        store::propose(&state.pool, state.cfg.approval_threshold_minor, id, &p, &resolution, &reason).await
    }
    .await;
    match outcome {
        Ok(_) => Ok(Redirect::to(&format!("/cases/{id}")).into_response()),
        Err(e) => render_case(&state, &p, id, Some(&e)).await,
    }
}

async fn proposal_case(state: &AppState, id: &str, p: &Principal) -> Result<(uuid::Uuid, uuid::Uuid), Refused> {
    let not_found = || Refused::Problem(Problem::not_found(format!("no proposal {id:?}")), Some(p.clone()));
    let proposal: uuid::Uuid = id.parse().map_err(|_| not_found())?;
    let case: Option<uuid::Uuid> = sqlx::query_scalar("SELECT case_id FROM proposals WHERE id = $1")
        .bind(proposal)
        .fetch_optional(&state.pool)
        .await?;
    Ok((proposal, case.ok_or_else(not_found)?))
}

async fn approve(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, Refused> {
    let p = actor(&state, &headers, &form, Action::Decide).await?;
    let (proposal, case) = proposal_case(&state, &id, &p).await?;
    match store::approve(&state.pool, proposal, &p).await {
        Ok(_) => {
            state.wake.notify_one();
            Ok(Redirect::to(&format!("/cases/{case}")).into_response())
        }
        Err(e) => render_case(&state, &p, case, Some(&e)).await,
    }
}

async fn reject(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, Refused> {
    let p = actor(&state, &headers, &form, Action::Decide).await?;
    let (proposal, case) = proposal_case(&state, &id, &p).await?;
    let outcome = match input::reason(form.get("reason").map(String::as_str)) {
        Ok(reason) => store::reject(&state.pool, proposal, &p, &reason).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(_) => Ok(Redirect::to(&format!("/cases/{case}")).into_response()),
        Err(e) => render_case(&state, &p, case, Some(&e)).await,
    }
}

async fn trail(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Refused> {
    let p = viewer(&state, &headers).await?;
    let after = match query.get("after").map(|a| a.parse::<i64>()) {
        None => 0,
        Some(Ok(a)) if a >= 0 => a,
        Some(_) => return Err(Refused::Problem(Problem::invalid("after must be a non-negative integer"), Some(p))),
    };
    let (entries, next) = export::trail_page(&state.pool, after, 200).await?;
    let body = html! {
        h1 { "Audit trail" }
        p { "Every entry is chained by SHA-256 to the one before; " code { "ledgerctl audit verify" } " recomputes the chain." }
        (trail_table(&entries))
        @if let Some(n) = next { p { a href={ "/audit?after=" (n) } { "Next page" } } }
    };
    Ok(layout("Audit trail", Some(&p), body).into_response())
}

async fn export_cases(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, Refused> {
    viewer(&state, &headers).await?;
    Ok(export::csv_response("cases.csv", export::cases_csv(&state.pool).await?))
}

async fn export_audit(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, Refused> {
    viewer(&state, &headers).await?;
    Ok(export::csv_response("audit.csv", export::audit_csv(&state.pool).await?))
}
