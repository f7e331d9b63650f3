//! A seeded, randomized model of the change feed's cache coherence (`docs/ARCHITECTURE.md`,
//! "Cache coherence"), checked under many interleavings.
//!
//! The model mirrors `Engine::fill`, `Slot::set`, `Slot::changed`, `Engine::poll_feed` and
//! `Engine::unchecked_for` step by step. A writer commits new values (each with the next change
//! number); one replica reads the row and installs what it read some steps later, polls the feed
//! and applies what it found some steps later, and serves from its slot whenever the feed or its
//! own read vouches for the value within `CHECK`. Reads and polls see the database as it was when
//! they began, which is the least a real query sees.
//!
//! Invariant: a value served at time T was still the stored one at T − `CHECK`: whatever replaced
//! it committed later than that. A model of `Slot::set` that trusts a value read before a change
//! the feed already reported breaks it within a few hundred schedules (`the_model_fails_without`).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CHECK: u64 = 100;

/// What a slot holds (`Held` and `checked_ms`).
#[derive(Default, Clone, Copy)]
struct Slot {
    value: Option<u64>,
    seen_seq: u64,
    changed_seq: u64,
    /// 0: untrusted.
    checked: u64,
}

impl Slot {
    fn set(&mut self, value: u64, read_at: u64, seen_seq: u64, guarded: bool) {
        self.value = Some(value);
        self.seen_seq = seen_seq;
        let trusted = !guarded || self.changed_seq <= seen_seq;
        self.checked = if trusted { read_at } else { 0 };
    }

    fn changed(&mut self, seq: u64) {
        self.changed_seq = self.changed_seq.max(seq);
        if seq > self.seen_seq {
            self.value = None;
            self.checked = 0;
        }
    }
}

/// A read or a poll begun and not yet applied.
enum Pending {
    Read { value: u64, at: u64, seq: u64 },
    Poll { changes: Vec<u64>, at: u64 },
}

/// Runs one schedule; `guarded` models `Slot::set` as written (false: without its check).
fn schedule(seed: u64, guarded: bool) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut now = 1u64;
    // The database: value i was committed (as change i) at commits[i - 1].
    let mut commits: Vec<u64> = Vec::new();
    let mut slot = Slot::default();
    let mut cursor = 0u64;
    let mut polled = 0u64;
    let mut pending: Vec<Pending> = Vec::new();
    for _ in 0..400 {
        now += rng.random_range(0..30);
        match rng.random_range(0..10) {
            0 => commits.push(now),
            1 | 2 => {
                // A read begins (`fill`): the stored value, with the feed's cursor then.
                pending.push(Pending::Read {
                    value: commits.len() as u64,
                    at: now,
                    seq: cursor,
                });
            }
            3 | 4 => {
                // A poll begins: the changes after the cursor committed so far.
                let changes = ((cursor + 1)..=commits.len() as u64).collect();
                pending.push(Pending::Poll { changes, at: now });
            }
            5 | 6 if !pending.is_empty() => {
                // Something begun earlier finishes (in any order).
                match pending.remove(rng.random_range(0..pending.len())) {
                    Pending::Read { value, at, seq } => slot.set(value, at, seq, guarded),
                    Pending::Poll { changes, at } => {
                        // A poll applies only what follows the cursor (an older poll may finish
                        // after a newer one), then vouches for its start.
                        for seq in changes {
                            if seq > cursor {
                                slot.changed(seq);
                                cursor = seq;
                            }
                        }
                        polled = polled.max(at);
                    }
                }
            }
            _ => {
                // A request: served from the slot if vouched for within CHECK.
                let Some(value) = slot.value else { continue };
                if slot.checked == 0 || now - slot.checked.max(polled) >= CHECK {
                    continue;
                }
                let replaced_at = commits.get(value as usize).copied();
                if let Some(replaced_at) = replaced_at
                    && replaced_at + CHECK <= now
                {
                    return Err(format!(
                        "seed {seed}: served value {value} at {now}; it was replaced at \
                         {replaced_at}, more than {CHECK} earlier"
                    ));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn a_replaced_value_is_never_served_past_the_bound() {
    for seed in 0..5_000 {
        schedule(seed, true).unwrap();
    }
}

#[test]
fn the_model_fails_without_the_check_in_set() {
    let broken = (0..5_000)
        .filter(|seed| schedule(*seed, false).is_err())
        .count();
    assert!(broken > 0, "the model cannot see the race it is meant to");
}
