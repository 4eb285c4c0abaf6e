//! The plain PostgreSQL ledger that `ledgerctl bench --baseline` compares the node with moves
//! money correctly, driven both ways, under concurrency and with every bad input a client could
//! send: a comparison with a ledger that loses money or overdraws would flatter it.

use ledgerctl::baseline::{Baseline, Driver, Outcome};
use ledgerctl::postgres::PgServer;
use ledgerctl::process::Lifetime;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const ACCOUNTS: usize = 20;
const FUNDED: usize = 10;
const FUNDING: i64 = 1_000;
const TRANSFERS: usize = 4_000;
const CLIENTS: usize = 32;

/// What the load asked for and got, by idempotency key.
#[derive(Default)]
struct Told {
    applied: BTreeSet<String>,
    refused: BTreeMap<String, usize>,
    replayed: usize,
}

async fn exercise(ledger: &Baseline, driver: Driver, prefix: &str) {
    let world = format!("{prefix}world");
    let accounts: Vec<String> = (0..ACCOUNTS).map(|i| format!("{prefix}{i}")).collect();
    ledger.open_account(&world, "USD", true).await.unwrap();
    for a in &accounts {
        ledger.open_account(a, "USD", false).await.unwrap();
    }
    let eur = format!("{prefix}eur");
    ledger.open_account(&eur, "EUR", false).await.unwrap();
    for (i, a) in accounts.iter().take(FUNDED).enumerate() {
        let outcome = ledger.transfer(driver, &format!("{prefix}fund-{i}"), &world, a, FUNDING, "USD").await.unwrap();
        assert_eq!(outcome, Outcome::Applied);
    }

    // Each input refused for its own reason, and nothing changed by any of them.
    let (a0, a1, a19) = (&accounts[0], &accounts[1], &accounts[19]);
    let refusals = [
        (a0.as_str(), a1.as_str(), 0, "USD", "invalid_amount"),
        (a0, a1, -5, "USD", "invalid_amount"),
        (a0, a1, i64::MIN, "USD", "invalid_amount"),
        (a0, a0, 1, "USD", "same_account"),
        (a0, "nobody", 1, "USD", "unknown_account"),
        (a0, a1, 1, "EUR", "currency_mismatch"),
        (a0, &eur, 1, "USD", "currency_mismatch"),
        (a19, a1, 1, "USD", "insufficient_funds"),
        (a0, a1, FUNDING + 1, "USD", "insufficient_funds"),
        (a0, a1, i64::MAX, "USD", "insufficient_funds"),
        // The world may go negative, but not past the 64-bit range.
        (&world, a0, i64::MAX, "USD", "overflow"),
    ];
    for (n, (from, to, amount, currency, why)) in refusals.into_iter().enumerate() {
        let got = ledger.transfer(driver, &format!("{prefix}bad-{n}"), from, to, amount, currency).await.unwrap();
        assert_eq!(got, Outcome::Refused(why.to_owned()), "{driver:?}: {from} -> {to} {amount} {currency}");
    }
    let before = ledger.audit(prefix).await.unwrap();
    assert_eq!(before.transfers, FUNDED as i64, "{driver:?}: refusals committed nothing: {before:?}");
    assert!(before.holds(), "{before:?}");

    // Concurrent random transfers, many of them more than the source holds, and replays of keys
    // already used (some while the first use may still be in flight).
    let told = Arc::new(std::sync::Mutex::new(Told::default()));
    let accounts = Arc::new(accounts);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let (ledger, told, accounts, prefix) = (ledger.clone(), told.clone(), accounts.clone(), prefix.to_owned());
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(c as u64);
            for i in 0..TRANSFERS / CLIENTS {
                let from = rng.random_range(0..ACCOUNTS);
                let to = (from + rng.random_range(1..ACCOUNTS)) % ACCOUNTS;
                let amount = rng.random_range(1..=400);
                let key = if i > 0 && rng.random_bool(0.05) {
                    format!("{prefix}c{}-{}", rng.random_range(0..CLIENTS), rng.random_range(0..i))
                } else {
                    format!("{prefix}c{c}-{i}")
                };
                let got = ledger.transfer(driver, &key, &accounts[from], &accounts[to], amount, "USD").await.unwrap();
                let mut told = told.lock().unwrap();
                match got {
                    Outcome::Applied => assert!(told.applied.insert(key.clone()), "{key} applied twice"),
                    Outcome::Replayed => told.replayed += 1,
                    Outcome::Refused(why) => *told.refused.entry(why).or_default() += 1,
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    let audit = ledger.audit(prefix).await.unwrap();
    let told = told.lock().unwrap();
    assert!(audit.holds(), "{driver:?}: {audit:?}");
    assert_eq!(audit.accounts, ACCOUNTS as i64 + 2);
    assert_eq!(audit.transfers, (FUNDED + told.applied.len()) as i64, "{driver:?}: every applied key, once");
    assert!(told.applied.len() > TRANSFERS / 4, "{driver:?}: money moved: {}", told.applied.len());
    assert!(told.refused.get("insufficient_funds").copied().unwrap_or(0) > 100, "{driver:?}: {:?}", told.refused);
    assert!(told.replayed > 50, "{driver:?}: replays were answered as such: {}", told.replayed);
    assert_eq!(told.refused.keys().collect::<Vec<_>>(), ["insufficient_funds"], "{driver:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_baseline_ledger_conserves_money_and_never_overdraws_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let pg = PgServer {
        bin_dir: ledgerctl::config::StackConfig::default_local().pg_bin_dir,
        data_dir: dir.path().join("pg"),
        port: ledgerctl::process::free_port(),
        log: dir.path().join("postgres.log"),
    };
    pg.init().unwrap();
    let mut child = pg.start(Lifetime::TiedToThisProcess).unwrap();
    pg.wait_ready(child.id()).await.unwrap();

    let url = ledgerctl::baseline::ensure_database(&pg.url("postgres")).await.unwrap();
    assert!(url.ends_with("/ledger_baseline"), "{url}");
    // A second call finds the database and keeps it.
    assert_eq!(ledgerctl::baseline::ensure_database(&pg.url("postgres")).await.unwrap(), url);
    let ledger = Baseline::connect(&url, 16).await.unwrap();
    // Preparing the schema again (a second bench on the same stack) keeps what is there.
    Baseline::connect(&url, 1).await.unwrap().close().await;
    exercise(&ledger, Driver::Plain, "plain-").await;
    exercise(&ledger, Driver::Plpgsql, "plpgsql-").await;
    ledger.close().await;
    let _ = child.kill();
    let _ = child.wait();
}
