//! The faults, and the seeded schedule that orders them. The schedule is pure (a seed gives the
//! same plan on every machine); injecting and healing act on the environment through ledgerctl's
//! `Stack` (processes) and Toxiproxy's API (the links between regions).

use ledgerctl::Manifest;
use ledgerctl::stack::{Component, Stack};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Nemesis {
    /// kill -9 of one region's node, then restart.
    KillNode,
    /// kill -9 of the replicator into one region, then restart.
    KillReplicator,
    /// kill -9 of one region's Kafka broker, then restart.
    KillKafka,
    /// PostgreSQL immediate stop (SIGQUIT: no checkpoint, crash recovery on start), then start.
    StopPostgres,
    /// Every link between two regions cut, both ways.
    Partition,
    /// Added latency with jitter on every link between two regions.
    Latency,
    /// Every link between two regions throttled to a trickle.
    Bandwidth,
    /// Connections between two regions reset by peer shortly after they open.
    Reset,
    /// A whole region killed (PostgreSQL, Kafka, node, replicator), then restored.
    RegionLoss,
}

/// Every nemesis, in the order `--nemesis all` lists them.
pub const ALL: [Nemesis; 9] = [
    Nemesis::KillNode,
    Nemesis::KillReplicator,
    Nemesis::KillKafka,
    Nemesis::StopPostgres,
    Nemesis::Partition,
    Nemesis::Latency,
    Nemesis::Bandwidth,
    Nemesis::Reset,
    Nemesis::RegionLoss,
];

impl Nemesis {
    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Nemesis::KillNode => "kill-node",
            Nemesis::KillReplicator => "kill-replicator",
            Nemesis::KillKafka => "kill-kafka",
            Nemesis::StopPostgres => "stop-postgres",
            Nemesis::Partition => "partition",
            Nemesis::Latency => "latency",
            Nemesis::Bandwidth => "bandwidth",
            Nemesis::Reset => "reset",
            Nemesis::RegionLoss => "region-loss",
        }
    }

    /// Whether it acts on the links between two regions (and needs Toxiproxy).
    pub fn is_network(self) -> bool {
        matches!(self, Nemesis::Partition | Nemesis::Latency | Nemesis::Bandwidth | Nemesis::Reset)
    }

    /// Parses a comma-separated list; `all` is every nemesis.
    pub fn parse_list(list: &str) -> Result<Vec<Nemesis>, String> {
        let mut out = Vec::new();
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            if word == "all" {
                out.extend(ALL);
                continue;
            }
            let n = ALL.into_iter().find(|n| n.name() == word).ok_or_else(|| {
                let names: Vec<&str> = ALL.iter().map(|n| n.name()).collect();
                format!("unknown nemesis {word:?}; known: all, {}", names.join(", "))
            })?;
            out.push(n);
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err("name at least one nemesis".into());
        }
        Ok(out)
    }
}

/// What a fault hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One region.
    Region(String),
    /// The links between two regions, both ways.
    Pair(String, String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Region(r) => f.write_str(r),
            Target::Pair(a, b) => write!(f, "{a}<->{b}"),
        }
    }
}

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// When to inject it, from the start of the load.
    pub at_ms: u64,
    /// How long to keep it before healing.
    pub hold_ms: u64,
    /// Which.
    pub nemesis: Nemesis,
    /// Where.
    pub target: Target,
}

/// Load before the first fault, so every region is busy when it comes.
pub const WARM_UP_MS: u64 = 3_000;
/// The longest a fault is held.
pub const HOLD_MS_MAX: u64 = 8_000;
/// The shortest.
pub const HOLD_MS_MIN: u64 = 2_000;

/// The faults of a run: the chosen nemeses in a seeded order, repeated while time remains, each
/// at a seeded target, held for a seeded time, with healthy gaps between them. Every chosen
/// nemesis comes at least once: when `duration` is too short for the usual holds, they shrink
/// (never below `HOLD_MS_MIN`, so the run then lasts longer than asked).
pub fn schedule(seed: u64, nemeses: &[Nemesis], regions: &[String], duration: Duration) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let duration_ms = duration.as_millis() as u64;
    let n = nemeses.len().max(1) as u64;
    // A slot per fault: its hold and a gap of half as long, to let the system recover visibly.
    let slot_ms = (duration_ms.saturating_sub(WARM_UP_MS) / n).clamp(HOLD_MS_MIN * 2, HOLD_MS_MAX * 3 / 2);
    let hold_max = slot_ms * 2 / 3;
    let mut order: Vec<Nemesis> = nemeses.to_vec();
    order.shuffle(&mut rng);
    let mut plan = Vec::new();
    let mut at = WARM_UP_MS;
    let mut round = 0;
    loop {
        for &nemesis in &order {
            let first_round = round == 0;
            if !first_round && at + slot_ms > duration_ms {
                return plan;
            }
            let hold_ms = rng.random_range((hold_max * 3 / 4).max(HOLD_MS_MIN)..=hold_max);
            let target = if nemesis.is_network() {
                let a = rng.random_range(0..regions.len());
                let mut b = rng.random_range(0..regions.len() - 1);
                if b >= a {
                    b += 1;
                }
                Target::Pair(regions[a].clone(), regions[b].clone())
            } else {
                Target::Region(regions[rng.random_range(0..regions.len())].clone())
            };
            plan.push(Planned { at_ms: at, hold_ms, nemesis, target });
            at += slot_ms;
        }
        round += 1;
        order.shuffle(&mut rng);
    }
}

/// Why a fault could not be injected or healed.
#[derive(Debug, thiserror::Error)]
pub enum NemesisError {
    /// ledgerctl could not stop or start a process.
    #[error("{0}")]
    Stack(#[from] ledgerctl::StackError),
    /// Toxiproxy refused or did not answer.
    #[error("toxiproxy: {0}")]
    Toxiproxy(String),
    /// The environment has no Toxiproxy, yet a network fault was asked for.
    #[error("the environment routes no links through Toxiproxy (start it with `ledgerctl up --toxiproxy`)")]
    NoToxiproxy,
}

/// Acts on one environment.
pub struct Injector {
    stack: Stack,
    manifest: Manifest,
    http: reqwest::Client,
}

const TOXIC: &str = "chaos";
/// Attempts at a network heal (`/reset`), each bounded by the client's 10 s timeout.
const RESET_ATTEMPTS_MAX: u32 = 6;
/// Pause between two attempts at a heal.
const RESET_RETRY_PAUSE: Duration = Duration::from_secs(1);

impl Injector {
    /// An injector for the environment `manifest` describes.
    pub fn new(manifest: Manifest) -> Result<Self, NemesisError> {
        let stack = Stack::new(ledgerctl::StackConfig::from_manifest(&manifest)?);
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("a client builds");
        Ok(Self { stack, manifest, http })
    }

    /// Injects `p`'s fault.
    pub async fn inject(&self, p: &Planned) -> Result<(), NemesisError> {
        use nix::sys::signal::Signal;
        match (&p.target, p.nemesis) {
            (Target::Region(r), Nemesis::KillNode) => drop(self.stack.stop(Component::Node, Some(r), true)?),
            (Target::Region(r), Nemesis::KillReplicator) => {
                drop(self.stack.stop(Component::Replicator, Some(r), true)?)
            }
            (Target::Region(r), Nemesis::KillKafka) => drop(self.stack.stop(Component::Kafka, Some(r), true)?),
            (Target::Region(r), Nemesis::StopPostgres) => {
                drop(self.stack.stop_with(Component::Postgres, Some(r), Signal::SIGQUIT)?)
            }
            (Target::Region(r), Nemesis::RegionLoss) => {
                for c in [Component::Replicator, Component::Node, Component::Kafka, Component::Postgres] {
                    self.stack.stop(c, Some(r), true)?;
                }
            }
            (Target::Pair(a, b), Nemesis::Partition) => {
                for name in self.links(a, b)? {
                    self.toxiproxy_post(&format!("/proxies/{name}"), serde_json::json!({"enabled": false})).await?;
                }
            }
            (Target::Pair(a, b), n) => {
                let (kind, attributes) = match n {
                    Nemesis::Latency => ("latency", serde_json::json!({"latency": 400, "jitter": 200})),
                    // KB/s: replication of a busy region needs far more, so it falls behind.
                    Nemesis::Bandwidth => ("bandwidth", serde_json::json!({"rate": 4})),
                    Nemesis::Reset => ("reset_peer", serde_json::json!({"timeout": 1000})),
                    other => unreachable!("{} is not a network fault", other.name()),
                };
                for name in self.links(a, b)? {
                    for stream in ["upstream", "downstream"] {
                        let toxic = serde_json::json!({
                            "name": format!("{TOXIC}-{stream}"), "type": kind, "stream": stream,
                            "toxicity": 1.0, "attributes": attributes,
                        });
                        self.toxiproxy_post(&format!("/proxies/{name}/toxics"), toxic).await?;
                    }
                }
            }
            (target, n) => unreachable!("{} planned against {target}", n.name()),
        }
        Ok(())
    }

    /// Heals `p`'s fault: restarts what was killed (waiting until it serves), restores the links.
    pub async fn heal(&self, p: &Planned) -> Result<(), NemesisError> {
        match (&p.target, p.nemesis) {
            (Target::Region(r), Nemesis::KillNode) => drop(self.stack.start(Component::Node, Some(r)).await?),
            (Target::Region(r), Nemesis::KillReplicator) => {
                drop(self.stack.start(Component::Replicator, Some(r)).await?)
            }
            (Target::Region(r), Nemesis::KillKafka) => drop(self.stack.start(Component::Kafka, Some(r)).await?),
            (Target::Region(r), Nemesis::StopPostgres) => drop(self.stack.start(Component::Postgres, Some(r)).await?),
            (Target::Region(r), Nemesis::RegionLoss) => {
                for c in [Component::Postgres, Component::Kafka, Component::Node, Component::Replicator] {
                    self.stack.start(c, Some(r)).await?;
                }
            }
            (Target::Pair(..), _) => self.heal_network().await?,
            (target, n) => unreachable!("{} planned against {target}", n.name()),
        }
        Ok(())
    }

    /// Restores everything: every link enabled without toxics, every process of every region
    /// running. Used at the end of a run, and safe to call at any time.
    pub async fn heal_all(&self) -> Result<(), NemesisError> {
        if self.manifest.toxiproxy_url.is_some() {
            self.heal_network().await?;
        }
        for c in [Component::Postgres, Component::Kafka, Component::Node, Component::Replicator] {
            self.stack.start(c, None).await?;
        }
        Ok(())
    }

    async fn heal_network(&self) -> Result<(), NemesisError> {
        // Enables every proxy and removes every toxic. Removing a toxic waits for the toxic's
        // lock, which a bandwidth or latency toxic holds while it drains a busy link (Toxiproxy
        // issues #412 and #558: the call hangs, or answers 503 after 25 s); a heal must not end
        // the run for that, and a reset is idempotent, so it is sent again.
        retried(RESET_ATTEMPTS_MAX, RESET_RETRY_PAUSE, || self.toxiproxy_post("/reset", serde_json::json!({}))).await
    }

    fn links(&self, a: &str, b: &str) -> Result<Vec<String>, NemesisError> {
        if self.manifest.toxiproxy_url.is_none() {
            return Err(NemesisError::NoToxiproxy);
        }
        Ok(self
            .manifest
            .links
            .iter()
            .filter(|l| (l.source == a && l.target == b) || (l.source == b && l.target == a))
            .map(|l| l.name.clone())
            .collect())
    }

    async fn toxiproxy_post(&self, path: &str, body: serde_json::Value) -> Result<(), NemesisError> {
        let base = self.manifest.toxiproxy_url.as_deref().ok_or(NemesisError::NoToxiproxy)?;
        let r = self
            .http
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .map_err(|e| NemesisError::Toxiproxy(format!("{path}: {e}")))?;
        if !r.status().is_success() {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            return Err(NemesisError::Toxiproxy(format!("{path}: {status}: {text}")));
        }
        Ok(())
    }
}

/// `send` until it succeeds or fails for a reason other than Toxiproxy's answer, at most
/// `attempts_max` times, `pause` apart; the last answer is returned.
async fn retried<F, Fut>(attempts_max: u32, pause: Duration, mut send: F) -> Result<(), NemesisError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), NemesisError>>,
{
    let mut attempt = 1;
    loop {
        match send().await {
            Err(NemesisError::Toxiproxy(_)) if attempt < attempts_max => {
                attempt += 1;
                tokio::time::sleep(pause).await;
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A heal that Toxiproxy refuses `failures` times: taken while attempts remain, and the
    /// refusal reported once `RESET_ATTEMPTS_MAX` are spent, after exactly that many.
    #[tokio::test]
    async fn a_heal_is_sent_again_up_to_the_attempt_limit_and_no_further() {
        for failures in 0..=RESET_ATTEMPTS_MAX + 1 {
            let sent = AtomicU32::new(0);
            let result = retried(RESET_ATTEMPTS_MAX, Duration::ZERO, || async {
                let n = sent.fetch_add(1, Ordering::SeqCst);
                if n < failures { Err(NemesisError::Toxiproxy(format!("/reset: attempt {n}"))) } else { Ok(()) }
            })
            .await;
            let sent = sent.load(Ordering::SeqCst);
            if failures < RESET_ATTEMPTS_MAX {
                assert!(result.is_ok(), "{failures} refusals: {result:?}");
                assert_eq!(sent, failures + 1);
            } else {
                let Err(NemesisError::Toxiproxy(last)) = result else { panic!("{failures} refusals: {result:?}") };
                assert_eq!(last, format!("/reset: attempt {}", RESET_ATTEMPTS_MAX - 1), "the last refusal is reported");
                assert_eq!(sent, RESET_ATTEMPTS_MAX, "{failures} refusals");
            }
        }
    }

    #[tokio::test]
    async fn a_heal_without_toxiproxy_is_not_sent_again() {
        let sent = AtomicU32::new(0);
        let result = retried(RESET_ATTEMPTS_MAX, Duration::ZERO, || async {
            sent.fetch_add(1, Ordering::SeqCst);
            Err(NemesisError::NoToxiproxy)
        })
        .await;
        assert!(matches!(result, Err(NemesisError::NoToxiproxy)));
        assert_eq!(sent.load(Ordering::SeqCst), 1);
    }

    fn regions() -> Vec<String> {
        ["us-east", "eu-west", "ap-south"].map(String::from).to_vec()
    }

    #[test]
    fn every_chosen_nemesis_comes_at_least_once_even_when_time_is_short() {
        for seed in 0..200 {
            for secs in [10, 60, 600] {
                let plan = schedule(seed, &ALL, &regions(), Duration::from_secs(secs));
                for n in ALL {
                    assert!(plan.iter().any(|p| p.nemesis == n), "seed {seed} {secs}s: no {}", n.name());
                }
                for w in plan.windows(2) {
                    assert!(w[0].at_ms + w[0].hold_ms < w[1].at_ms, "faults never overlap: {w:?}");
                }
                for p in &plan {
                    assert!((HOLD_MS_MIN..=HOLD_MS_MAX).contains(&p.hold_ms), "{p:?}");
                    match &p.target {
                        Target::Pair(a, b) => assert!(a != b && p.nemesis.is_network()),
                        Target::Region(_) => assert!(!p.nemesis.is_network()),
                    }
                }
                if secs == 600 {
                    assert!(plan.len() > ALL.len(), "a long run repeats faults");
                    assert!(plan.last().unwrap().at_ms + plan.last().unwrap().hold_ms <= 600_000);
                }
            }
        }
    }

    #[test]
    fn a_seed_gives_one_schedule_and_seeds_differ() {
        let a = schedule(7, &ALL, &regions(), Duration::from_secs(60));
        assert_eq!(a, schedule(7, &ALL, &regions(), Duration::from_secs(60)));
        assert_ne!(a, schedule(8, &ALL, &regions(), Duration::from_secs(60)));
    }

    #[test]
    fn nemesis_lists_parse_and_unknown_names_are_refused() {
        assert_eq!(Nemesis::parse_list("all").unwrap(), ALL.to_vec());
        assert_eq!(
            Nemesis::parse_list("partition, kill-node,partition").unwrap(),
            vec![Nemesis::KillNode, Nemesis::Partition]
        );
        assert!(Nemesis::parse_list("flood").unwrap_err().contains("unknown nemesis"));
        assert!(Nemesis::parse_list("").is_err());
    }
}
