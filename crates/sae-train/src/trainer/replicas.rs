//! Data-parallel training on several devices, as the official runs trained under
//! `nn.DataParallel` (see `docs/distributed.md`).
//!
//! The run's options fix the batch semantics (`num_gpus` contiguous chunks, each swapping and
//! reconstructing inside itself); the device list only decides where the chunks run. With N
//! devices, device `i` takes shard `i` of N equal shards of the batch (`num_gpus / N` whole
//! chunks), draws the whole batch's crops and noise from its own copy of the generators and
//! keeps its rows ([`ShardRandomness`]), computes its shard's losses, scaled so that their sum
//! over devices is the mean, and their gradients on its own thread. Then either
//!
//! - [`GradientSync::Gather`] (every backend): Burn's `GradientsParams::to_device` moves each
//!   replica's gradients to the first device, Burn's `GradientsAccumulator` sums them, one Adam
//!   update runs there and the updated networks are forked back to the other devices; or
//! - [`GradientSync::AllReduce`] (CUDA): parameters are marked with `Tensor::set_distributed`,
//!   Burn's `DistributedContext` averages every gradient across devices inside `backward()`
//!   (NCCL), and every replica applies the same Adam update to its own copy.
//!
//! Either way all replicas hold the same weights after every step, so the run trains what one
//! device with `--num-gpus N` trains, up to float summation order. Checkpoints and snapshots
//! come from the first device; the logged loss terms are the mean over the shards (each a mean
//! over its own images), which is the whole batch's mean.
//!
//! Under `AllReduce`, Burn keeps one communication server per backend in the process, so one
//! all-reduce run per process. The device list is not part of the run's options: a run
//! resumes on the same or another list.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::distributed::{DistributedConfig, DistributedContext, ReduceOperation};
use burn::tensor::{Device, Tensor, TensorData};
use sae_model::{
    DeviceError, DeviceSpec, Discriminator, Encoder, Generator, PatchDiscriminator,
    SwappingAutoencoder,
};
use sae_nn::PatchSampler;

use crate::adam::{Adam, GradientSource};
use crate::losses::{
    LossConfig, LossError, Losses, Nets, SeededRandomness, ShardRandomness, discriminator_losses,
    generator_losses, r1_losses,
};

/// How the replicas of a multi-device run agree on one update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradientSync {
    /// Gradients are moved to the first device and summed there (Burn's
    /// `GradientsParams::to_device` and `GradientsAccumulator`); one Adam update; the weights
    /// are forked back to the other devices. Works on every backend and mix of backends.
    Gather,
    /// Gradients are averaged across devices inside `backward()` by Burn's distributed
    /// all-reduce (`DistributedContext`, NCCL; CUDA only in Burn 0.22); every replica applies
    /// the same update. Untested: our machines cannot build the CUDA backend.
    AllReduce,
}

/// The devices a run trains on, in chunk order, and how their gradients are combined.
#[derive(Clone, Debug)]
pub struct TrainDevices {
    devices: Vec<Device>,
    sync: GradientSync,
}

impl TrainDevices {
    /// One device.
    pub fn single(device: Device) -> Self {
        Self {
            devices: vec![device],
            sync: GradientSync::Gather,
        }
    }

    /// Several devices of any backends, combined with [`GradientSync::Gather`] (the same device
    /// may appear more than once: `flex,flex` runs two CPU replicas); `None` for an empty list.
    pub fn new(devices: Vec<Device>) -> Option<Self> {
        (!devices.is_empty()).then_some(Self {
            devices,
            sync: GradientSync::Gather,
        })
    }

    /// Named devices: two or more CUDA devices and nothing else use
    /// [`GradientSync::AllReduce`] (each at most once: Burn's all-reduce keys its devices by
    /// id); anything else [`GradientSync::Gather`].
    ///
    /// # Errors
    /// [`DeviceError`] for an empty list or a CUDA device named twice.
    pub fn from_specs(specs: &[DeviceSpec]) -> Result<Self, DeviceError> {
        let list = || {
            let names: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
            names.join(",")
        };
        if specs.is_empty() {
            return Err(DeviceError {
                spec: list(),
                problem: "no device named".into(),
            });
        }
        let all_cuda = specs.iter().all(|s| matches!(s, DeviceSpec::Cuda(_)));
        let sync = if specs.len() > 1 && all_cuda {
            GradientSync::AllReduce
        } else {
            GradientSync::Gather
        };
        if sync == GradientSync::AllReduce
            && let Some((_, dup)) = specs
                .iter()
                .enumerate()
                .find(|(i, s)| specs[..*i].contains(s))
        {
            return Err(DeviceError {
                spec: list(),
                problem: format!("{dup} is named twice (one replica per CUDA device)"),
            });
        }
        Ok(Self {
            devices: specs.iter().map(|s| s.device()).collect(),
            sync,
        })
    }

    /// A comma-separated list of device names (`flex,flex`, `wgpu:0,wgpu:1`,
    /// `cuda:0,cuda:1,cuda:2,cuda:3`; see [`DeviceSpec`] and [`TrainDevices::from_specs`]).
    ///
    /// # Errors
    /// [`DeviceError`] naming the first bad name, or a CUDA device named twice.
    pub fn parse(list: &str) -> Result<Self, DeviceError> {
        let specs = list
            .split(',')
            .map(|s| s.trim().parse::<DeviceSpec>())
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_specs(&specs)
    }

    /// The devices, in chunk order.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// How gradients are combined.
    pub fn sync(&self) -> GradientSync {
        self.sync
    }

    /// The number of devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Always false: a device list holds at least one device.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The first device: where checkpoints, snapshots and (for `Gather`) the update happen.
    pub fn first(&self) -> &Device {
        &self.devices[0]
    }
}

impl From<Device> for TrainDevices {
    fn from(device: Device) -> Self {
        Self::single(device)
    }
}

impl From<&Device> for TrainDevices {
    fn from(device: &Device) -> Self {
        Self::single(device.clone())
    }
}

/// Which of a step's passes a replica runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    D,
    R1,
    G,
}

/// One device's copy of the networks and (used on the first device, and on every device under
/// `AllReduce`) of the optimizers.
pub(super) struct Replica {
    pub device: Device,
    pub e: Encoder,
    pub g: Generator,
    pub d: Discriminator,
    pub dpatch: PatchDiscriminator,
    pub opt_g: Adam,
    pub opt_d: Adam,
}

/// What one replica's pass gives back to the trainer's thread.
struct ReplicaOut {
    terms: Vec<(&'static str, f32)>,
    /// `Gather`: the trained networks' gradients on the first device (`[d, dpatch]` or `[g, e]`).
    grads: Option<[GradientsParams; 2]>,
    rnd: SeededRandomness,
}

/// A failed pass, or the summed terms of a successful one.
pub(super) enum PhaseResult {
    Done {
        terms: Vec<(&'static str, f32)>,
        rnd: SeededRandomness,
    },
    NonFinite {
        term: String,
        value: f32,
    },
}

/// Marks every float parameter for Burn's distributed all-reduce.
struct MarkDistributed;

impl ModuleMapper for MarkDistributed {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let id = param.id;
        param.map(|t| t.set_distributed(id))
    }
}

impl Replica {
    /// The first replica: the run's networks and optimizers on `device` (an autodiff device).
    pub fn main(device: Device, model: SwappingAutoencoder, opt_g: Adam, opt_d: Adam) -> Self {
        let SwappingAutoencoder { e, g, d, dpatch } = model;
        Replica {
            device,
            e,
            g,
            d: d.expect("the trainer checked both discriminators"),
            dpatch: dpatch.expect("the trainer checked both discriminators"),
            opt_g,
            opt_d,
        }
    }

    /// A copy of `self` on `device` (an autodiff device): the same weights and parameter ids,
    /// fresh autodiff leaves; the optimizer state moved along when the copy updates itself
    /// (`AllReduce`), empty otherwise (under `Gather` only the first device's is used).
    pub fn fork(&self, device: &Device, with_optimizers: bool) -> Replica {
        let opt = |o: &Adam| {
            if with_optimizers {
                o.to_device(device)
            } else {
                Adam::new(o.config().clone())
            }
        };
        Replica {
            device: device.clone(),
            e: self.e.clone().fork(device),
            g: self.g.clone().fork(device),
            d: self.d.clone().fork(device),
            dpatch: self.dpatch.clone().fork(device),
            opt_g: opt(&self.opt_g),
            opt_d: opt(&self.opt_d),
        }
    }

    fn mark_distributed(self) -> Replica {
        Replica {
            e: self.e.map(&mut MarkDistributed),
            g: self.g.map(&mut MarkDistributed),
            d: self.d.map(&mut MarkDistributed),
            dpatch: self.dpatch.map(&mut MarkDistributed),
            ..self
        }
    }

    pub fn nets(&self) -> Nets<'_> {
        Nets {
            e: &self.e,
            g: &self.g,
            d: &self.d,
            dpatch: &self.dpatch,
        }
    }

    /// One Adam update of the phase's networks.
    fn apply<G: GradientSource>(&mut self, phase: Phase, grads: &G) {
        match phase {
            Phase::D | Phase::R1 => {
                self.opt_d.begin_step();
                self.d = self.opt_d.update("d", self.d.clone(), grads);
                self.dpatch = self.opt_d.update("dpatch", self.dpatch.clone(), grads);
            }
            Phase::G => {
                self.opt_g.begin_step();
                self.g = self.opt_g.update("g", self.g.clone(), grads);
                self.e = self.opt_g.update("e", self.e.clone(), grads);
            }
        }
    }
}

/// The replicas of a run: `[0]` on the first device, the rest on the others.
pub(super) struct Replicas {
    pub list: Vec<Replica>,
    sync: GradientSync,
    /// Keeps Burn's all-reduce servers up while the run trains (`AllReduce` only).
    _distributed: Option<DistributedContext>,
}

/// The whole batch's loss terms as host values.
fn values(losses: &Losses) -> Vec<(&'static str, f32)> {
    losses
        .terms
        .iter()
        .chain(&losses.metrics)
        .map(|(name, t)| (*name, scalar(t)))
        .collect()
}

fn scalar(t: &Tensor<1>) -> f32 {
    t.clone()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .ok()
        .and_then(|v| v.first().copied())
        .unwrap_or(f32::NAN)
}

/// Everything a pass reads that is the same on every device.
struct PassInput<'a> {
    phase: Phase,
    cfg: &'a LossConfig,
    sampler: &'a PatchSampler,
    shards: usize,
    sync: GradientSync,
    first: &'a Device,
    /// Raised by any replica whose terms are not finite: then no replica updates (under
    /// `AllReduce` no replica even runs backward, so none waits for the others' gradients).
    bad: &'a AtomicBool,
    barrier: &'a Rendezvous,
}

/// A barrier the trainer's thread can cancel (when a replica's thread cannot be started), so
/// that no replica waits for one that never comes.
struct Rendezvous {
    state: Mutex<(usize, bool)>,
    all_here: Condvar,
    parties: usize,
}

impl Rendezvous {
    fn new(parties: usize) -> Self {
        Self {
            state: Mutex::new((0, false)),
            all_here: Condvar::new(),
            parties,
        }
    }

    /// Waits until every party arrived (true) or the rendezvous was cancelled (false).
    fn wait(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 += 1;
        if s.0 >= self.parties {
            self.all_here.notify_all();
        }
        while s.0 < self.parties && !s.1 {
            s = self.all_here.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.0 >= self.parties
    }

    fn cancel(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.1 = true;
        self.all_here.notify_all();
    }
}

impl Replicas {
    /// Replicas of `main` on `devices` (the first of which `main` is on).
    pub fn new(main: Replica, devices: &TrainDevices) -> Replicas {
        let sync = if devices.len() > 1 {
            devices.sync()
        } else {
            GradientSync::Gather
        };
        let distributed = (sync == GradientSync::AllReduce).then(|| {
            DistributedContext::init(
                devices.devices().to_vec(),
                DistributedConfig {
                    all_reduce_op: ReduceOperation::Mean,
                },
            )
        });
        let mut list = vec![main];
        for device in &devices.devices()[1..] {
            let r = list[0].fork(&device.clone().autodiff(), sync == GradientSync::AllReduce);
            list.push(r);
        }
        if sync == GradientSync::AllReduce {
            list = list.into_iter().map(Replica::mark_distributed).collect();
        }
        Replicas {
            list,
            sync,
            _distributed: distributed,
        }
    }

    pub fn main(&self) -> &Replica {
        &self.list[0]
    }

    /// One pass (`phase`) over the batch `images` (`[b, c, h, w]`, host data) on every replica,
    /// then one update, the same on every replica. Returns the terms (each the mean over the
    /// batch) and the generators' state after the pass, or the first non-finite term (then
    /// nothing was updated).
    ///
    /// # Errors
    /// [`LossError`] for a batch the losses refuse.
    pub fn pass(
        &mut self,
        phase: Phase,
        images: &[f32],
        shape: [usize; 4],
        cfg: &LossConfig,
        sampler: &PatchSampler,
        rnd: &SeededRandomness,
    ) -> Result<PhaseResult, LossError> {
        let n = self.list.len();
        let [b, c, h, w] = shape;
        // Every replica checks this too; checking here first names the whole batch.
        cfg.check_batch(b)?;
        let per = b / n;
        let len = per * c * h * w;
        let mut local = cfg.clone();
        local.num_gpus = cfg.num_gpus / n;
        let first = self.list[0].device.clone();
        let bad = AtomicBool::new(false);
        let barrier = Rendezvous::new(n);
        let input = PassInput {
            phase,
            cfg: &local,
            sampler,
            shards: n,
            sync: self.sync,
            first: &first,
            bad: &bad,
            barrier: &barrier,
        };
        if images.len() != b * c * h * w {
            return Err(LossError::BatchData {
                values: images.len(),
                shape,
            });
        }
        // Everything a replica's thread gets is made before the first thread starts.
        let mut shards: Vec<(TensorData, ShardRandomness)> = (0..n)
            .map(|i| {
                let data = images[i * len..(i + 1) * len].to_vec();
                let data = TensorData::new(data, [per, c, h, w]);
                (data, ShardRandomness::new(rnd.clone(), i, n))
            })
            .collect();
        let outs: Vec<Result<ReplicaOut, LossError>> = if n == 1 {
            // One shard of one: the same draws as the whole batch's randomness.
            let (data, rnd) = shards.remove(0);
            vec![run(&mut self.list[0], &input, data, rnd)]
        } else {
            std::thread::scope(|s| {
                let mut handles = Vec::new();
                for (r, (data, rnd)) in self.list.iter_mut().zip(shards) {
                    let input = &input;
                    let spawned = std::thread::Builder::new()
                        .name("sae-replica".into())
                        .spawn_scoped(s, move || run(r, input, data, rnd));
                    match spawned {
                        Ok(h) => handles.push(h),
                        Err(e) => {
                            // The started replicas stop at the rendezvous instead of waiting.
                            input.barrier.cancel();
                            for h in handles {
                                let _ = h.join();
                            }
                            return vec![Err(LossError::Thread(e.to_string()))];
                        }
                    }
                }
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            })
        };
        let outs = outs.into_iter().collect::<Result<Vec<_>, _>>()?;
        let mut terms = outs[0].terms.clone();
        for out in &outs[1..] {
            for (t, (_, v)) in terms.iter_mut().zip(&out.terms) {
                t.1 += v;
            }
        }
        for t in &mut terms {
            t.1 /= n as f32;
        }
        if let Some((term, value)) = outs
            .iter()
            .flat_map(|o| &o.terms)
            .find(|(_, v)| !v.is_finite())
        {
            return Ok(PhaseResult::NonFinite {
                term: term.to_string(),
                value: *value,
            });
        }
        let rnd = outs[0].rnd.clone();
        // One device updated itself in its pass, as every device does under `AllReduce`.
        if n > 1 && self.sync == GradientSync::Gather {
            self.gather(phase, outs);
        }
        Ok(PhaseResult::Done { terms, rnd })
    }

    /// `Gather`: sums the replicas' gradients on the first device, updates there and forks the
    /// updated networks to the other devices.
    fn gather(&mut self, phase: Phase, outs: Vec<ReplicaOut>) {
        let shards = outs.into_iter().filter_map(|o| o.grads);
        let main = &self.list[0];
        let grads = match phase {
            Phase::D | Phase::R1 => sum_pair(&main.d, &main.dpatch, shards),
            Phase::G => sum_pair(&main.g, &main.e, shards),
        };
        self.list[0].apply(phase, &grads);
        let (head, rest) = self.list.split_at_mut(1);
        let main = &head[0];
        for r in rest {
            match phase {
                Phase::D | Phase::R1 => {
                    r.d = main.d.clone().fork(&r.device);
                    r.dpatch = main.dpatch.clone().fork(&r.device);
                }
                Phase::G => {
                    r.g = main.g.clone().fork(&r.device);
                    r.e = main.e.clone().fork(&r.device);
                }
            }
        }
    }
}

/// The sum over shards of the gradients of two networks (`[a, b]` per shard, already on the
/// first device), with Burn's `GradientsAccumulator`, as one `GradientsParams`.
fn sum_pair<A: Module, B: Module>(
    a: &A,
    b: &B,
    shards: impl Iterator<Item = [GradientsParams; 2]>,
) -> GradientsParams {
    let (mut acc_a, mut acc_b) = (
        GradientsAccumulator::<A>::new(),
        GradientsAccumulator::<B>::new(),
    );
    for [ga, gb] in shards {
        acc_a.accumulate(a, ga);
        acc_b.accumulate(b, gb);
    }
    let mut grads = acc_a.grads();
    merge(&mut grads, acc_b.grads(), b);
    grads
}

/// Moves the gradients of `module`'s parameters from `from` into `into`.
fn merge<M: Module>(into: &mut GradientsParams, mut from: GradientsParams, module: &M) {
    struct Move<'a> {
        into: &'a mut GradientsParams,
        from: &'a mut GradientsParams,
    }
    impl burn::module::ModuleVisitor for Move<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.from.remove::<D>(param.id) {
                self.into.register::<D>(param.id, g);
            }
        }
    }
    module.visit(&mut Move {
        into,
        from: &mut from,
    });
}

/// One replica's pass: losses on its shard, the barrier, then (all terms finite everywhere)
/// backward and either its gradients for the gather or its own update. An error or a panic
/// before the barrier still meets it (raising `bad`), so no other replica waits forever.
fn run(
    r: &mut Replica,
    input: &PassInput<'_>,
    data: TensorData,
    mut rnd: ShardRandomness,
) -> Result<ReplicaOut, LossError> {
    let computed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let real = Tensor::<4>::from_data(data, &r.device);
        let (cfg, sampler) = (input.cfg, input.sampler);
        let losses = match input.phase {
            Phase::D => discriminator_losses(r.nets(), real, cfg, sampler, &mut rnd),
            Phase::R1 => r1_losses(r.nets(), real, cfg, sampler, &mut rnd),
            Phase::G => generator_losses(r.nets(), real, cfg, sampler, &mut rnd),
        }?;
        let terms = values(&losses);
        Ok((losses, terms))
    }));
    let (losses, terms) = match computed {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            input.bad.store(true, Ordering::SeqCst);
            input.barrier.wait();
            return Err(e);
        }
        Err(panic) => {
            input.bad.store(true, Ordering::SeqCst);
            input.barrier.wait();
            std::panic::resume_unwind(panic)
        }
    };
    if terms.iter().any(|(_, v)| !v.is_finite()) {
        input.bad.store(true, Ordering::SeqCst);
    }
    let all_here = input.barrier.wait();
    let rnd = rnd.into_inner();
    if !all_here || input.bad.load(Ordering::SeqCst) {
        return Ok(ReplicaOut {
            terms,
            grads: None,
            rnd,
        });
    }
    let mut total = losses.total();
    if input.sync == GradientSync::Gather && input.shards > 1 {
        // The step's loss is the mean over chunks; each shard's terms are means over its own
        // images, so the sum over shards of 1/N of each is the whole batch's mean.
        total = total * (1.0 / input.shards as f64);
    }
    if input.sync == GradientSync::AllReduce {
        // Past this point every replica waits inside backward for every other replica's
        // gradients; one that fails (a device out of memory) would leave the others waiting
        // forever, so a failure here ends the process with the reason instead of a hang.
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let grads = total.backward();
            r.apply(input.phase, &grads);
        }));
        if done.is_err() {
            eprintln!(
                "error: a replica failed during the all-reduce backward pass; the other devices \
                 cannot finish the step. Stopping (resume from the last checkpoint)."
            );
            std::process::abort();
        }
        return Ok(ReplicaOut {
            terms,
            grads: None,
            rnd,
        });
    }
    let mut grads = total.backward();
    let first = input.first;
    // `Gather`: one device updates itself; several hand their gradients to the first device.
    let grads = match input.phase {
        _ if input.shards == 1 => {
            r.apply(input.phase, &grads);
            None
        }
        Phase::D | Phase::R1 => Some([
            GradientsParams::from_module(&mut grads, &r.d).to_device(first, &r.d),
            GradientsParams::from_module(&mut grads, &r.dpatch).to_device(first, &r.dpatch),
        ]),
        Phase::G => Some([
            GradientsParams::from_module(&mut grads, &r.g).to_device(first, &r.g),
            GradientsParams::from_module(&mut grads, &r.e).to_device(first, &r.e),
        ]),
    };
    Ok(ReplicaOut { terms, grads, rnd })
}
