//! The fuzz corpus of request frames (`fuzz/corpus/request_frame`: real client traffic,
//! plus every input that once crashed a decoder), replayed against a real broker together
//! with deterministic mutations of each. `scripts/fuzz.sh` fuzzes the decoders alone;
//! this reaches the request handlers behind them: every frame gets an answer or a closed
//! connection, no handler panics, and the broker keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use strata_e2e::{RawClient, Strata, assert_serving};

/// Mutated copies sent per corpus input, besides the input itself.
const MUTATIONS: usize = 40;

/// A xorshift generator: the same mutations on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// `frame` with a few bytes past the request header prefix changed: flipped bits,
/// boundary values written over 4 bytes (lengths, counts, ids), a cut tail or a
/// repeated chunk.
fn mutate(frame: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = frame.to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = out.len();
        if len <= 8 {
            break;
        }
        let at = 8 + rng.below(len - 8);
        match rng.below(4) {
            0 => out[at] ^= 1 << rng.below(8),
            1 => {
                let v: i32 = [0, -1, 1, i32::MAX, i32::MIN, 0x7fff, 0x10000][rng.below(7)];
                for (i, b) in v.to_be_bytes().into_iter().enumerate() {
                    if let Some(x) = out.get_mut(at + i) {
                        *x = b;
                    }
                }
            }
            2 => out.truncate(at),
            _ => {
                let end = (at + 1 + rng.below(32)).min(len);
                let chunk = out[at..end].to_vec();
                out.splice(at..at, chunk);
            }
        }
    }
    out
}

#[test]
fn corpus_frames_and_mutations_of_them_never_take_the_broker_down() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/request_frame");
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    inputs.sort();
    assert!(
        inputs.len() >= 20,
        "{} corpus inputs in {dir:?}",
        inputs.len()
    );

    let s = Strata::start();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut answered, mut closed) = (0, 0);
    for input in &inputs {
        for round in 0..=MUTATIONS {
            let frame = if round == 0 {
                input.clone()
            } else {
                mutate(input, &mut rng)
            };
            let mut c = RawClient::connect(s.kafka);
            // Requests that legitimately wait (a JoinGroup, a long-polling Fetch) are not
            // waited for: the broker must survive them whatever they do after.
            c.set_read_timeout(Duration::from_millis(300));
            let mut sized = (frame.len() as i32).to_be_bytes().to_vec();
            sized.extend_from_slice(&frame);
            c.send_raw(&sized).unwrap();
            match c.read_frame() {
                Ok(_) => answered += 1,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => closed += 1,
                Err(_) => {}
            }
        }
    }
    let sent = inputs.len() * (MUTATIONS + 1);
    eprintln!("{sent} frames: {answered} answered, {closed} closed");
    // The unmutated real requests are mostly answered, the mutated ones often refused.
    assert!(
        answered >= inputs.len() / 2,
        "{answered} of {sent} answered"
    );
    assert!(
        closed > 0,
        "no mutated frame was refused ({answered} of {sent} answered)"
    );

    std::thread::sleep(Duration::from_millis(500));
    assert_serving(s.kafka);
    let log = s.log();
    assert!(
        !log.contains("panicked"),
        "a handler panicked:\n{}",
        s.log_tail()
    );
    assert!(s.wait_ready(Duration::from_secs(10)), "{}", s.log_tail());
}
