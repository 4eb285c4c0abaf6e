//! Deleting published outbox rows once they are `outbox_retention_ms` old. Nothing reads a
//! published row but the benchmark's lag report and an operator's inquiry (the events stay in
//! `ledger_events` and in Kafka), and without this the table grew by a row per committed batch for
//! ever.
//!
//! The leading publisher knows what it published and when, so it needs no index on
//! `published_at`: it notes, now and then, the largest id published so far ([`Marks`]); a note
//! `retention` old says that every published row up to its id is at least that old. Those rows
//! go in statements of at most `rows_max` each, one per publish round, so pruning a backlog never
//! holds the publisher up for long. A row below such an id that was still unpublished is left
//! alone (`published_at IS NOT NULL`) and goes with a later note.

use sqlx::PgPool;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Notes kept per retention period: rows are deleted at most `retention / MARKS` later than due.
const MARKS: u32 = 60;

/// When each id was the largest published: at most `MARKS + 1` notes.
#[derive(Debug)]
pub(crate) struct Marks {
    retention: Duration,
    marks: VecDeque<(Instant, i64)>,
}

impl Marks {
    pub(crate) fn new(retention: Duration) -> Self {
        Self { retention, marks: VecDeque::with_capacity(MARKS as usize + 1) }
    }

    /// Notes that every row up to `published_up_to` was published by `now`; returns the largest
    /// id whose note is now `retention` old, if one became so.
    pub(crate) fn observe(&mut self, now: Instant, published_up_to: i64) -> Option<i64> {
        let every = self.retention / MARKS;
        let due = match self.marks.back() {
            None => published_up_to > 0,
            Some(&(at, id)) => published_up_to > id && now.saturating_duration_since(at) >= every,
        };
        if due {
            self.marks.push_back((now, published_up_to));
        }
        let mut ripe = None;
        while let Some(&(at, id)) = self.marks.front() {
            if now.saturating_duration_since(at) < self.retention {
                break;
            }
            ripe = Some(id);
            self.marks.pop_front();
        }
        ripe
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.marks.len()
    }
}

/// Deletes at most `rows_max` published rows with ids up to `up_to`, oldest first; returns how
/// many it deleted (fewer than `rows_max`: none is left).
pub async fn prune(pool: &PgPool, up_to: i64, rows_max: i64) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query(
        "DELETE FROM outbox WHERE id IN (
             SELECT id FROM outbox WHERE id <= $1 AND published_at IS NOT NULL ORDER BY id LIMIT $2)",
    )
    .bind(up_to)
    .bind(rows_max)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::{MARKS, Marks};
    use std::time::{Duration, Instant};

    #[test]
    fn a_note_ripens_after_the_retention_and_the_notes_stay_bounded() {
        let retention = Duration::from_secs(60);
        let mut marks = Marks::new(retention);
        let start = Instant::now();
        assert_eq!(marks.observe(start, 0), None, "nothing published, nothing noted");
        assert_eq!(marks.observe(start, 10), None);
        // A round every 10 ms for two retention periods, publishing one more row each time.
        let mut ripe = Vec::new();
        for i in 1..=12_000u64 {
            let now = start + Duration::from_millis(10 * i);
            if let Some(id) = marks.observe(now, 10 + i as i64) {
                // What ripens was published a retention period ago, not later.
                let published_at = start + Duration::from_millis(10 * (id as u64 - 10));
                assert!(now.duration_since(published_at) >= retention, "id {id} at {i}");
                assert!(now.duration_since(published_at) <= retention + retention / MARKS + Duration::from_millis(10));
                ripe.push(id);
            }
            assert!(marks.len() <= MARKS as usize + 1, "{} notes", marks.len());
        }
        assert!(ripe.windows(2).all(|w| w[0] < w[1]), "ids ripen in order");
        assert!(*ripe.last().unwrap() >= 10 + 6_000 - 100, "the first period's rows all ripened: {ripe:?}");
    }

    #[test]
    fn an_idle_publisher_notes_nothing_new_and_still_ripens_the_old() {
        let mut marks = Marks::new(Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(marks.observe(start, 5), None);
        assert_eq!(marks.observe(start + Duration::from_millis(500), 5), None);
        assert_eq!(marks.observe(start + Duration::from_millis(1_000), 5), Some(5));
        assert_eq!(marks.observe(start + Duration::from_secs(5), 5), None, "noted once, ripened once");
    }

    #[test]
    fn a_zero_retention_ripens_at_once() {
        let mut marks = Marks::new(Duration::ZERO);
        let now = Instant::now();
        assert_eq!(marks.observe(now, 3), Some(3));
        assert_eq!(marks.observe(now, 7), Some(7));
    }
}
