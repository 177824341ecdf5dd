//! Adam exactly as PyTorch's `torch.optim.Adam` (single-tensor path), keyed by parameter path
//! so that its state is saved and restored with the checkpoint, independent of Burn's random
//! `ParamId`s.
//!
//! Burn's own Adam differs in the default `eps` (1e-5) and keys its state by `ParamId`, which a
//! model rebuilt from a checkpoint does not keep; owning the ~40 lines also pins the exact
//! order of floating-point operations to PyTorch's, which the one-step parity test checks. The
//! step itself is one backend operation (`adam_op`): one pass per parameter on Flex.
//!
//! As with the PyTorch 1.x the official code ran on (`zero_grad()` zeroes the gradients rather
//! than dropping them), every parameter of an optimizer takes every step: a parameter without a
//! gradient in a step (the biases in the R1 step) steps with a zero gradient.

use std::collections::BTreeMap;

use burn::config::Config;
use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Gradients, Tensor, TensorData};

use crate::adam_op::{AdamScalars, adam_step};

/// Where [`Adam::update`] reads each parameter's gradient: the autodiff [`Gradients`] of one
/// backward pass, or Burn's [`GradientsParams`] keyed by `ParamId` (the gradients of several
/// data-parallel replicas, moved to one device and summed by Burn's `GradientsAccumulator`).
pub trait GradientSource {
    /// The gradient of `param`, on the inner (non-autodiff) backend, if it has one.
    fn grad_of<const D: usize>(&self, param: &Param<Tensor<D>>) -> Option<Tensor<D>>;
}

impl GradientSource for Gradients {
    fn grad_of<const D: usize>(&self, param: &Param<Tensor<D>>) -> Option<Tensor<D>> {
        param.val().grad(self)
    }
}

impl GradientSource for GradientsParams {
    fn grad_of<const D: usize>(&self, param: &Param<Tensor<D>>) -> Option<Tensor<D>> {
        self.get::<D>(param.id)
    }
}

/// Adam's hyper-parameters (the official E+G values by default, from
/// `optimizers/swapping_autoencoder_optimizer.py`).
#[derive(Config, Debug, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    #[config(default = 0.002)]
    pub lr: f64,
    /// First-moment decay.
    #[config(default = 0.0)]
    pub beta1: f64,
    /// Second-moment decay.
    #[config(default = 0.99)]
    pub beta2: f64,
    /// Denominator epsilon (PyTorch's default; Burn's is 1e-5).
    #[config(default = 1e-8)]
    pub eps: f64,
}

impl AdamConfig {
    /// The lazy-regularisation correction of StyleGAN2 (as in the official
    /// `SwappingAutoencoderOptimizer`) for an optimizer that also takes an R1 step every `every`
    /// steps: `lr·c`, `betas^c` with `c = every/(every+1)`.
    pub fn lazy(&self, every: usize) -> AdamConfig {
        let c = every as f64 / (every as f64 + 1.0);
        AdamConfig {
            lr: self.lr * c,
            beta1: self.beta1.powf(c),
            beta2: self.beta2.powf(c),
            eps: self.eps,
        }
    }
}

/// Adam's per-parameter state, flattened to 1-D.
#[derive(Clone, Debug)]
struct Moments {
    m: Tensor<1>,
    v: Tensor<1>,
}

/// An Adam optimizer over one or more modules; parameters are identified by `prefix.path`.
#[derive(Clone, Debug)]
pub struct Adam {
    config: AdamConfig,
    step: u64,
    state: BTreeMap<String, Moments>,
}

/// An optimizer state that does not fit the model it is loaded for.
#[derive(Debug, thiserror::Error)]
pub enum AdamStateError {
    /// A moment tensor is missing or has the wrong number of elements.
    #[error("optimizer state for `{key}`: {problem}")]
    Mismatch {
        /// The parameter path.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

struct StepMapper<'a, G> {
    path: Vec<String>,
    grads: &'a G,
    state: &'a mut BTreeMap<String, Moments>,
    config: &'a AdamConfig,
    step_size: f64,
    bias_correction2_sqrt: f64,
}

impl<G: GradientSource> ModuleMapper for StepMapper<'_, G> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let key = self.path.join(".");
        let grad = self.grads.grad_of(&param);
        let value = param.val();
        // A parameter marked for CUDA's all-reduce stays marked on the updated value.
        let distributed = value.is_distributed();
        let id = param.id;
        let dims = value.dims();
        let n: usize = dims.iter().product();
        let grad = grad.map(|g| g.reshape([n]));
        let p = value.inner().reshape([n]);
        let device = p.device();
        let grad = grad.unwrap_or_else(|| Tensor::zeros([n], &device));
        let Moments { m, v } = self.state.remove(&key).unwrap_or_else(|| Moments {
            m: Tensor::zeros([n], &device),
            v: Tensor::zeros([n], &device),
        });
        let c = self.config;
        // torch: exp_avg.lerp_(g, 1 − β1); exp_avg_sq.mul_(β2).addcmul_(g, g, 1 − β2);
        // denom = sqrt(exp_avg_sq)/sqrt(bc2) + eps; p.addcdiv_(exp_avg, denom, −lr/bc1).
        // One operation (one pass on Flex); the order of the f32 operations is in `adam_op`.
        let (p, m, v) = adam_step(
            p,
            grad,
            m,
            v,
            AdamScalars {
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                step_size: self.step_size,
                bias_correction2_sqrt: self.bias_correction2_sqrt,
            },
        );
        self.state.insert(key, Moments { m, v });
        param.map(|_| {
            let p = Tensor::from_inner(p.reshape(dims)).require_grad();
            if distributed {
                p.set_distributed(id)
            } else {
                p
            }
        })
    }
}

impl Adam {
    /// A fresh optimizer (step 0, zero moments created on first use).
    pub fn new(config: AdamConfig) -> Self {
        Self {
            config,
            step: 0,
            state: BTreeMap::new(),
        }
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Starts a step: advances the step counter. Then call [`Adam::update`] once per module.
    pub fn begin_step(&mut self) {
        self.step += 1;
    }

    /// Updates every parameter of `module` (state keys `prefix.path`) with its gradient in
    /// `grads` (zero where it has none), at the step started by [`Adam::begin_step`].
    pub fn update<M: Module, G: GradientSource>(
        &mut self,
        prefix: &str,
        module: M,
        grads: &G,
    ) -> M {
        assert!(self.step > 0, "Adam::update before Adam::begin_step");
        let t = self.step as i32;
        let c = &self.config;
        let mut mapper = StepMapper {
            path: vec![prefix.to_string()],
            grads,
            state: &mut self.state,
            config: c,
            step_size: c.lr / (1.0 - c.beta1.powi(t)),
            bias_correction2_sqrt: (1.0 - c.beta2.powi(t)).sqrt(),
        };
        module.map(&mut mapper)
    }

    /// The same optimizer with its state on `device` (a data-parallel replica's copy).
    pub fn to_device(&self, device: &Device) -> Adam {
        let state = self
            .state
            .iter()
            .map(|(k, mo)| {
                let moved = Moments {
                    m: mo.m.clone().to_device(device),
                    v: mo.v.clone().to_device(device),
                };
                (k.clone(), moved)
            })
            .collect();
        Adam {
            config: self.config.clone(),
            step: self.step,
            state,
        }
    }

    /// The state as named host tensors: `m.<key>` and `v.<key>`, each flattened.
    pub fn state_tensors(&self) -> BTreeMap<String, TensorData> {
        let mut out = BTreeMap::new();
        for (key, mo) in &self.state {
            out.insert(format!("m.{key}"), mo.m.clone().into_data());
            out.insert(format!("v.{key}"), mo.v.clone().into_data());
        }
        out
    }

    /// Restores an optimizer from [`Adam::state_tensors`] and its step count.
    ///
    /// # Errors
    /// [`AdamStateError::Mismatch`] if a key has an `m` without a `v` (or the reverse) or the
    /// two differ in length.
    pub fn from_state(
        config: AdamConfig,
        step: u64,
        tensors: &BTreeMap<String, TensorData>,
        device: &Device,
    ) -> Result<Self, AdamStateError> {
        let mut state = BTreeMap::new();
        for (name, m) in tensors {
            let Some(key) = name.strip_prefix("m.") else {
                continue;
            };
            let v = tensors
                .get(&format!("v.{key}"))
                .ok_or_else(|| AdamStateError::Mismatch {
                    key: key.to_string(),
                    problem: "has a first moment but no second moment".into(),
                })?;
            if m.num_elements() != v.num_elements() {
                return Err(AdamStateError::Mismatch {
                    key: key.to_string(),
                    problem: format!(
                        "moments of {} and {} elements",
                        m.num_elements(),
                        v.num_elements()
                    ),
                });
            }
            let flat = |d: &TensorData| {
                let n = d.num_elements();
                Tensor::<1>::from_data(d.clone(), device).reshape([n])
            };
            state.insert(
                key.to_string(),
                Moments {
                    m: flat(m),
                    v: flat(v),
                },
            );
        }
        if let Some(name) = tensors
            .keys()
            .filter_map(|n| n.strip_prefix("v."))
            .find(|k| !state.contains_key(*k))
        {
            return Err(AdamStateError::Mismatch {
                key: name.to_string(),
                problem: "has a second moment but no first moment".into(),
            });
        }
        Ok(Self {
            config,
            step,
            state,
        })
    }

    /// Checks that the state covers exactly the parameters `expected` (`(key, elements)`), so a
    /// checkpoint of another configuration is refused before training resumes.
    ///
    /// # Errors
    /// [`AdamStateError::Mismatch`] naming the first key that is missing, extra or of another
    /// size. An empty state (an optimizer that never stepped) is accepted.
    pub fn check_covers(&self, expected: &[(String, usize)]) -> Result<(), AdamStateError> {
        if self.state.is_empty() {
            return Ok(());
        }
        for (key, n) in expected {
            match self.state.get(key) {
                None => {
                    return Err(AdamStateError::Mismatch {
                        key: key.clone(),
                        problem: "missing".into(),
                    });
                }
                Some(mo) if mo.m.dims()[0] != *n => {
                    return Err(AdamStateError::Mismatch {
                        key: key.clone(),
                        problem: format!("{} elements, the model has {n}", mo.m.dims()[0]),
                    });
                }
                Some(_) => {}
            }
        }
        if let Some(key) = self
            .state
            .keys()
            .find(|k| !expected.iter().any(|(e, _)| e == *k))
        {
            return Err(AdamStateError::Mismatch {
                key: key.clone(),
                problem: "not a parameter of this model".into(),
            });
        }
        Ok(())
    }
}
