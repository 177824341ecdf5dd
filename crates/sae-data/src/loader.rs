//! The multi-threaded, deterministic, resumable batch loader (official
//! `data/__init__.py::ConfigurableDataLoader`).

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use sae_model::image_io::ImageTensor;
use serde::{Deserialize, Serialize};

use super::DataError;
use super::dataset::Dataset;
use super::transform::{TrainTransform, below};

/// Domain tags of the seeds derived from the loader seed, so that the shuffles and the
/// per-sample draws are independent streams.
const PERMUTATION_DOMAIN: u64 = 0x5045_524d; // "PERM"
const SAMPLE_DOMAIN: u64 = 0x5341_4d50; // "SAMP"

/// Epoch permutations kept for the workers (they may straddle an epoch boundary).
const PERMUTATION_SLOTS: usize = 4;

/// SplitMix64's finaliser: a bijective 64-bit mix with full avalanche.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hashes a domain tag, a seed and two counters into one 64-bit seed (chained SplitMix64).
///
/// Fixed here rather than taken from a hashing crate so that seeds, and with them every
/// shuffle, crop and flip, stay the same across dependency updates.
pub(crate) fn mix(domain: u64, seed: u64, a: u64, b: u64) -> u64 {
    let h = splitmix64(domain ^ splitmix64(seed));
    let h = splitmix64(h ^ a);
    splitmix64(h ^ b.rotate_left(32))
}

/// The seed of the random choices (crop position, flip) for the sample at `position` of
/// `epoch`'s permutation, in a loader seeded with `seed`.
///
/// It depends on nothing else (not on the worker, nor on the order in which samples are
/// decoded), which is what makes the loader's output independent of its threads.
pub fn sample_seed(seed: u64, epoch: u64, position: u64) -> u64 {
    mix(SAMPLE_DOMAIN, seed, epoch, position)
}

/// The order of `n` images in `epoch`: a Fisher–Yates shuffle driven by Xoshiro256++ seeded
/// from `(seed, epoch)`.
pub(crate) fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<u32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(PERMUTATION_DOMAIN, seed, epoch, 0));
    // `n` fits u32: Loader::new checks it.
    let mut perm: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = below(&mut rng, i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    perm
}

/// Settings of a [`Loader`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderConfig {
    /// Images per batch (`--batch_size`); at least 1 and at most the dataset's size.
    pub batch_size: usize,
    /// Decoding threads. 0 decodes on the thread that calls [`Loader::next_batch`].
    pub workers: usize,
    /// How many batches' worth of decoded samples may wait in the queues ahead of the
    /// consumer (at least one sample per worker). Memory is about
    /// `prefetch · batch_size · 12 · H · W` bytes.
    pub prefetch: usize,
    /// The seed of the shuffles and of the per-sample crops and flips.
    pub seed: u64,
    /// The per-image transform.
    pub transform: TrainTransform,
}

/// Where a [`Loader`] stands: saved with a checkpoint, it lets a new loader continue exactly
/// where this one stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// The current epoch (pass over the dataset), from 0.
    pub epoch: u64,
    /// The next position in the epoch's permutation that has not been returned yet (below
    /// the dataset's size; a new loader also accepts the size itself, meaning the next
    /// epoch's start).
    pub cursor: u64,
    /// How many images were skipped as unreadable so far (each time one was met).
    pub skipped: u64,
}

/// One batch of transformed images.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `B·3·H·W` values in `[-1, 1]`, row-major `[B, 3, H, W]` (each image CHW, as
    /// [`ImageTensor`]).
    pub images: Vec<f32>,
    /// `[B, 3, H, W]`.
    pub shape: [usize; 4],
    /// The key of each image, in batch order.
    pub keys: Vec<String>,
    /// `(key, reason)` of each image skipped while filling this batch.
    pub skipped: Vec<(String, String)>,
}

/// One decoded (or failed) sample, as a worker hands it over.
struct Sample {
    seq: u64,
    key: String,
    result: Result<ImageTensor, String>,
}

/// What the workers share: the dataset, the transform and the epoch permutations.
struct Shared {
    dataset: Arc<dyn Dataset>,
    transform: TrainTransform,
    seed: u64,
    /// Dataset size (> 0).
    n: u64,
    /// Recent `(epoch, permutation)`s.
    permutations: Mutex<Vec<(u64, Arc<Vec<u32>>)>>,
}

/// A worker's last permutation, to avoid taking the shared lock for every sample.
type LocalPermutation = Option<(u64, Arc<Vec<u32>>)>;

impl Shared {
    fn permutation(&self, epoch: u64, local: &mut LocalPermutation) -> Arc<Vec<u32>> {
        if let Some((e, perm)) = local
            && *e == epoch
        {
            return Arc::clone(perm);
        }
        // A poisoned lock only means another thread panicked while holding it; the cached
        // permutations are still valid.
        let mut slots = self
            .permutations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let perm = match slots.iter().find(|(e, _)| *e == epoch) {
            Some((_, perm)) => Arc::clone(perm),
            None => {
                let perm = Arc::new(permutation(self.n as usize, self.seed, epoch));
                if slots.len() == PERMUTATION_SLOTS {
                    slots.remove(0);
                }
                slots.push((epoch, Arc::clone(&perm)));
                perm
            }
        };
        *local = Some((epoch, Arc::clone(&perm)));
        perm
    }

    /// Decodes and transforms sample `seq` (= `epoch · n + position`).
    fn produce(&self, seq: u64, local: &mut LocalPermutation) -> Sample {
        let (epoch, position) = (seq / self.n, seq % self.n);
        let index = self.permutation(epoch, local)[position as usize] as usize;
        // Decoders are third-party code fed untrusted bytes: a panic in one is turned into a
        // skip of that image rather than the end of the worker.
        let key = catch_unwind(AssertUnwindSafe(|| self.dataset.key(index)))
            .unwrap_or_else(|_| format!("#{index}"));
        let result = catch_unwind(AssertUnwindSafe(|| {
            let img = self.dataset.decode(index)?;
            let mut rng =
                Xoshiro256PlusPlus::seed_from_u64(sample_seed(self.seed, epoch, position));
            self.transform.apply(&img, &mut rng, &key)
        }));
        let result = match result {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(e.to_string()),
            Err(panic) => Err(format!("the decoder panicked: {}", panic_message(&*panic))),
        };
        Sample { seq, key, result }
    }
}

/// The text of a panic payload, when it has one.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Where samples come from.
enum Source {
    /// Decoded by the caller of `next_batch` (`workers == 0`).
    Inline(LocalPermutation),
    /// Worker `w` produces samples `start + w`, `start + w + W`, ... in order into its own
    /// bounded channel, and the consumer reads the channels round-robin; so samples arrive
    /// in order without a reordering buffer, and each worker runs at most its channel's
    /// capacity ahead.
    Threads {
        start: u64,
        receivers: Vec<Receiver<Sample>>,
        handles: Vec<JoinHandle<()>>,
    },
}

/// Loads shuffled, transformed batches forever, epoch after epoch (as the official
/// `ConfigurableDataLoader`: shuffle, `drop_last`, re-iterated at each epoch's end).
///
/// - **Order.** Epoch `e` visits the images in a permutation seeded by `(seed, e)`. Batches
///   take the next readable images in that order; an incomplete batch at an epoch's end is
///   dropped (`drop_last`), and the next batch starts the next epoch.
/// - **Determinism.** Each sample's crop and flip are drawn from [`sample_seed`]`(seed,
///   epoch, position)`, and samples are consumed in sequence order, so the batches depend
///   only on the dataset, the config (not `workers` or `prefetch`) and the starting state.
///   [`Loader::state`] after any batch, given to [`Loader::new`], continues with exactly the
///   batch that would have come next.
/// - **Bad data.** An image that cannot be read, decoded or transformed is skipped (a
///   warning on stderr, an entry in [`Batch::skipped`], a count in
///   [`LoaderState::skipped`]) and the batch is filled with the next images in order. If an
///   entire epoch yields fewer readable images than one batch, [`Loader::next_batch`] fails
///   with [`DataError::TooFewImages`] instead of looping forever.
/// - **Memory.** Besides the dataset's key list and one permutation per recent epoch
///   (4 bytes per image), only the bounded queues (see [`LoaderConfig::prefetch`]) and the
///   batch being built are held.
/// - **Threads.** Dropping the loader closes the queues and joins its workers (each finishes
///   at most the sample it is decoding).
pub struct Loader {
    shared: Arc<Shared>,
    batch_size: usize,
    /// The state after the last returned batch.
    state: LoaderState,
    /// The next sample to consume (`epoch · n + position`).
    next_seq: u64,
    source: Source,
}

impl Loader {
    /// Starts loading `dataset` with `config` from `state` (`LoaderState::default()` for a
    /// fresh run), spawning `config.workers` threads.
    ///
    /// # Errors
    ///
    /// [`DataError::BadConfig`] for a zero batch size, a dataset smaller than one batch (or
    /// larger than 2³² images) or an invalid transform; [`DataError::BadState`] for a cursor
    /// beyond the dataset; [`DataError::Io`] if a thread cannot be spawned.
    pub fn new(
        dataset: Arc<dyn Dataset>,
        config: LoaderConfig,
        state: LoaderState,
    ) -> Result<Loader, DataError> {
        config.transform.validate()?;
        let n = dataset.len();
        if config.batch_size == 0 {
            return Err(DataError::BadConfig {
                reason: "batch_size must be at least 1".to_string(),
            });
        }
        if n < config.batch_size {
            return Err(DataError::BadConfig {
                reason: format!(
                    "{} holds {n} images, fewer than one batch of {} (batches are never \
                     partial)",
                    dataset.describe(),
                    config.batch_size
                ),
            });
        }
        if u32::try_from(n).is_err() {
            return Err(DataError::BadConfig {
                reason: format!("{} holds {n} images, more than 2^32", dataset.describe()),
            });
        }
        let n = n as u64;
        if state.cursor > n {
            return Err(DataError::BadState {
                state: format!("{state:?}"),
                reason: format!(
                    "the cursor is beyond the {n} images of {}",
                    dataset.describe()
                ),
            });
        }
        let next_seq = state
            .epoch
            .checked_mul(n)
            .and_then(|s| s.checked_add(state.cursor))
            .ok_or_else(|| DataError::BadState {
                state: format!("{state:?}"),
                reason: "the epoch is too large".to_string(),
            })?;
        let state = LoaderState {
            epoch: next_seq / n,
            cursor: next_seq % n,
            skipped: state.skipped,
        };
        let shared = Arc::new(Shared {
            dataset,
            transform: config.transform,
            seed: config.seed,
            n,
            permutations: Mutex::new(Vec::new()),
        });
        let source = if config.workers == 0 {
            Source::Inline(None)
        } else {
            let workers = config.workers;
            // Per-worker capacity so that all queues together hold about `prefetch` batches.
            let capacity = (config.prefetch * config.batch_size)
                .div_ceil(workers)
                .max(1);
            let mut receivers = Vec::with_capacity(workers);
            let mut handles = Vec::with_capacity(workers);
            for w in 0..workers {
                let (tx, rx) = sync_channel(capacity);
                let shared = Arc::clone(&shared);
                let first = next_seq + w as u64;
                let handle = std::thread::Builder::new()
                    .name(format!("sae-data-{w}"))
                    .spawn(move || worker(&shared, first, workers as u64, &tx))
                    .map_err(|source| DataError::Io {
                        path: PathBuf::from(format!("<data loader worker thread {w}>")),
                        source,
                    })?;
                receivers.push(rx);
                handles.push(handle);
            }
            Source::Threads {
                start: next_seq,
                receivers,
                handles,
            }
        };
        Ok(Loader {
            shared,
            batch_size: config.batch_size,
            state,
            next_seq,
            source,
        })
    }

    /// The state after the last returned batch (the starting state before the first).
    ///
    /// A [`Loader::new`] with it continues with exactly the next batch. After an error from
    /// [`Loader::next_batch`] it still describes the last good batch, so a new loader from it
    /// retries the failed one.
    pub fn state(&self) -> LoaderState {
        self.state.clone()
    }

    /// The next sample in sequence.
    fn fetch(&mut self, seq: u64) -> Result<Sample, DataError> {
        match &mut self.source {
            Source::Inline(local) => Ok(self.shared.produce(seq, local)),
            Source::Threads {
                start, receivers, ..
            } => {
                let w = ((seq - *start) % receivers.len() as u64) as usize;
                let sample = receivers[w]
                    .recv()
                    .map_err(|_| DataError::WorkerStopped { worker: w })?;
                debug_assert_eq!(sample.seq, seq, "worker {w} is out of sequence");
                Ok(sample)
            }
        }
    }

    /// The next batch of `batch_size` images, `[B, 3, H, W]`.
    ///
    /// # Errors
    ///
    /// [`DataError::SizeMismatch`] if an image's transformed size differs from the batch's
    /// (possible only without a crop), [`DataError::TooFewImages`] if a whole epoch has fewer
    /// readable images than one batch, [`DataError::WorkerStopped`] if a worker died.
    pub fn next_batch(&mut self) -> Result<Batch, DataError> {
        let n = self.shared.n;
        let b = self.batch_size;
        let mut images: Vec<f32> = Vec::new();
        let mut keys = Vec::with_capacity(b);
        let mut skipped = Vec::new();
        let mut size: Option<(usize, usize)> = None;
        // Whether this batch's filling covers its epoch from the first position, so that an
        // epoch end without a full batch proves the dataset can never fill one.
        let mut whole_epoch = self.next_seq.is_multiple_of(n);
        loop {
            let seq = self.next_seq;
            let sample = self.fetch(seq)?;
            self.next_seq += 1;
            match sample.result {
                Ok(t) => {
                    let (height, width) = *size.get_or_insert((t.height, t.width));
                    if (t.height, t.width) != (height, width) {
                        return Err(DataError::SizeMismatch {
                            key: sample.key,
                            height,
                            width,
                            got_height: t.height,
                            got_width: t.width,
                        });
                    }
                    if images.is_empty() {
                        images.reserve_exact(b * t.data.len());
                    }
                    images.extend_from_slice(&t.data);
                    keys.push(sample.key);
                }
                Err(reason) => {
                    eprintln!("warning: skipped image {}: {reason}", sample.key);
                    skipped.push((sample.key, reason));
                }
            }
            if keys.len() == b {
                let (height, width) = size.unwrap_or((0, 0));
                self.state = LoaderState {
                    epoch: self.next_seq / n,
                    cursor: self.next_seq % n,
                    skipped: self.state.skipped + skipped.len() as u64,
                };
                return Ok(Batch {
                    images,
                    shape: [b, 3, height, width],
                    keys,
                    skipped,
                });
            }
            if self.next_seq.is_multiple_of(n) {
                // The epoch ended with an incomplete batch: drop it (`drop_last`).
                if whole_epoch {
                    let last_failure = skipped
                        .last()
                        .map(|(key, reason)| format!("{key}: {reason}"))
                        .unwrap_or_else(|| "none".to_string());
                    return Err(DataError::TooFewImages {
                        dataset: self.shared.dataset.describe(),
                        epoch: seq / n,
                        readable: keys.len(),
                        total: n as usize,
                        batch_size: b,
                        last_failure,
                    });
                }
                images.clear();
                keys.clear();
                size = None;
                whole_epoch = true;
            }
        }
    }
}

/// A worker's loop: samples `first`, `first + stride`, ... until the consumer goes away.
fn worker(shared: &Shared, first: u64, stride: u64, tx: &SyncSender<Sample>) {
    let mut local = None;
    let mut seq = first;
    loop {
        let sample = shared.produce(seq, &mut local);
        if tx.send(sample).is_err() {
            // The loader was dropped: its receivers are gone.
            return;
        }
        seq += stride;
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        if let Source::Threads {
            receivers, handles, ..
        } = &mut self.source
        {
            // Closing the queues first makes every blocked or finishing `send` fail, so each
            // worker returns after at most its current sample.
            receivers.clear();
            for handle in handles.drain(..) {
                let _ = handle.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_seeded_permutations() {
        let p = permutation(100, 1, 0);
        let mut sorted = p.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<u32>>());
        assert_eq!(p, permutation(100, 1, 0));
        assert_ne!(p, permutation(100, 1, 1));
        assert_ne!(p, permutation(100, 2, 0));
        assert_eq!(permutation(1, 5, 5), vec![0]);
        assert!(permutation(0, 5, 5).is_empty());
    }

    #[test]
    fn sample_seeds_differ_per_coordinate() {
        let s = sample_seed(1, 2, 3);
        assert_ne!(s, sample_seed(1, 3, 2));
        assert_ne!(s, sample_seed(2, 2, 3));
        assert_ne!(s, sample_seed(1, 2, 4));
        assert_eq!(s, sample_seed(1, 2, 3));
    }
}
