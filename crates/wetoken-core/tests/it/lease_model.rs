//! A seeded, randomized model of the refresh-lease protocol, checked under many interleavings,
//! slow fetches and crashes.
//!
//! The model mirrors what `Engine::fill` and `Store` do, step by step: read the row; take the
//! lease with a compare-and-set (free, or lapsed on the database's clock); read again; fetch;
//! write fenced on owner and version; release. Replicas interleave at random, fetches sometimes
//! outlast the lease, and replicas crash at any step (their lease then lapses). The SQL itself is
//! exercised by the multi-process tests in `wetoken-server`; this checks the protocol's design.
//!
//! Invariants:
//! - a lease is only ever granted when the previous one was released or had lapsed;
//! - each lease epoch makes at most one upstream fetch;
//! - no stale write: the stored value only ever moves to a fetch that began later;
//! - without crashes or fetches slower than the lease, every fetch is stored (one fetch per
//!   credential lifetime, cluster-wide).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const LEASE: u64 = 1_000;
const REPLICAS: usize = 3;

#[derive(Default)]
struct Row {
    version: u64,
    /// The fetch whose value is stored, if any.
    stored: Option<u64>,
    owner: Option<u64>,
    lease_until: u64,
}

#[derive(Clone, Copy, Debug)]
enum State {
    /// Wants a fresh value that is newer than `seen`.
    Want {
        seen: u64,
    },
    /// Holds lease `token`; read `version` under it.
    Leased {
        token: u64,
        version: u64,
    },
    /// Holds lease `token`; fetch `fetch` finishes at `done`.
    Fetching {
        token: u64,
        version: u64,
        fetch: u64,
        done: u64,
        until: u64,
    },
    Done,
}

struct Fetch {
    started: u64,
    token: u64,
}

struct Run {
    fetches: Vec<Fetch>,
    writes: u64,
    crashes_holding: u64,
    slow: u64,
    /// Holders whose lease lapsed before they could write.
    lapsed: u64,
}

fn run(seed: u64, crashes: bool, slow_fetches: bool) -> Run {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut now = 0u64;
    let mut row = Row::default();
    let mut tokens = 0u64;
    let mut run = Run {
        fetches: Vec::new(),
        writes: 0,
        crashes_holding: 0,
        slow: 0,
        lapsed: 0,
    };
    let mut states = [State::Want { seen: 0 }; REPLICAS];
    for _step in 0..400 {
        if states.iter().all(|s| matches!(s, State::Done)) {
            break;
        }
        now += rng.random_range(0..60);
        let i = rng.random_range(0..REPLICAS);
        if crashes && rng.random_ratio(1, 40) {
            if matches!(states[i], State::Leased { .. } | State::Fetching { .. }) {
                run.crashes_holding += 1;
            }
            // A restarted replica still wants the value; whatever lease it held just lapses.
            states[i] = State::Want { seen: 0 };
            continue;
        }
        states[i] = match states[i] {
            State::Done => State::Done,
            State::Want { seen } => {
                if row.version > seen {
                    State::Done
                } else if row.owner.is_none() || row.lease_until < now {
                    // The compare-and-set of `Store::try_lease`.
                    assert!(
                        row.owner.is_none() || row.lease_until < now,
                        "seed {seed}: a live lease was taken over"
                    );
                    tokens += 1;
                    row.owner = Some(tokens);
                    row.lease_until = now + LEASE;
                    State::Leased {
                        token: tokens,
                        version: row.version,
                    }
                } else {
                    State::Want { seen } // wait and poll
                }
            }
            State::Leased { token, version } => {
                if row.version > version {
                    // Someone stored while we took the lease: give it back, use theirs.
                    if row.owner == Some(token) {
                        row.owner = None;
                    }
                    State::Done
                } else {
                    let took = if slow_fetches && rng.random_ratio(1, 5) {
                        run.slow += 1;
                        LEASE + rng.random_range(1..LEASE)
                    } else {
                        rng.random_range(10..LEASE / 2)
                    };
                    run.fetches.push(Fetch {
                        started: now,
                        token,
                    });
                    let fetch = run.fetches.len() as u64 - 1;
                    State::Fetching {
                        token,
                        version,
                        fetch,
                        done: now + took,
                        until: row.lease_until,
                    }
                }
            }
            State::Fetching {
                token,
                version,
                fetch,
                done,
                until,
            } => {
                if now < done {
                    State::Fetching {
                        token,
                        version,
                        fetch,
                        done,
                        until,
                    }
                } else if row.owner == Some(token) && row.version == version {
                    // The fenced write of `Store::save_credential`.
                    if let Some(previous) = row.stored {
                        assert!(
                            run.fetches[previous as usize].started
                                <= run.fetches[fetch as usize].started,
                            "seed {seed}: a stale value overwrote a newer one"
                        );
                    }
                    row.version += 1;
                    row.stored = Some(fetch);
                    row.owner = None;
                    run.writes += 1;
                    State::Done
                } else {
                    // Fenced out: a newer value is stored, or will be by the new holder. Only a
                    // holder that outlived its lease (a slow fetch, or a stalled process) gets here.
                    assert!(now > until, "seed {seed}: fenced out within its own lease");
                    run.lapsed += 1;
                    State::Want { seen: version }
                }
            }
        };
    }
    let mut per_token = std::collections::HashMap::new();
    for f in &run.fetches {
        *per_token.entry(f.token).or_insert(0) += 1;
    }
    assert!(
        per_token.values().all(|n| *n == 1),
        "seed {seed}: a lease epoch fetched more than once"
    );
    run
}

#[test]
fn lease_protocol_holds_under_random_schedules_and_crashes() {
    let (mut fetches, mut writes, mut crashes, mut slow) = (0, 0, 0, 0);
    for seed in 0..3000 {
        let r = run(seed, true, true);
        fetches += r.fetches.len();
        writes += r.writes;
        crashes += r.crashes_holding;
        slow += r.slow;
        // Extra fetches only ever come from a holder that crashed or outlived its lease.
        assert!(
            r.fetches.len() as u64 <= r.writes + r.crashes_holding + r.lapsed,
            "seed {seed}: {} fetches, {} writes",
            r.fetches.len(),
            r.writes
        );
    }
    // The schedules did exercise the hard cases.
    assert!(
        crashes > 100 && slow > 100 && writes > 1000,
        "{crashes} {slow} {writes}"
    );
    assert!(fetches as u64 > writes);
}

#[test]
fn without_crashes_only_a_stalled_holder_causes_a_second_fetch() {
    let mut exact = 0;
    for seed in 0..3000 {
        let r = run(seed, false, false);
        assert_eq!(r.writes, 1, "seed {seed}");
        // A holder the schedule stalls past its lease is the only source of a second fetch.
        assert_eq!(r.fetches.len() as u64, 1 + r.lapsed, "seed {seed}");
        exact += u64::from(r.lapsed == 0);
    }
    assert!(
        exact > 2500,
        "{exact} of 3000 schedules had no stalled holder"
    );
}
