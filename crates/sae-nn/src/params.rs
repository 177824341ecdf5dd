//! Parameters by path: collect a module's parameters (and their gradients) under their dotted
//! paths, or load named tensors into a module with typed errors.
//!
//! A path is the chain of Rust field names (Vec elements by index), e.g. `conv1.act.bias`. The
//! layers name their fields after the official `state_dict` keys, so an official key maps to a
//! path by a small documented table (in `sae-model`), and reference fixtures name parameters by
//! path directly.

use std::collections::{BTreeMap, BTreeSet};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Gradients, Tensor, TensorData};
use thiserror::Error;

/// A problem loading named tensors into a module.
#[derive(Debug, Error, PartialEq)]
pub enum ParamError {
    /// The module has a parameter the tensors do not provide.
    #[error("missing parameter `{key}` (expected shape {expected:?})")]
    Missing {
        /// Parameter path.
        key: String,
        /// Shape the module expects.
        expected: Vec<usize>,
    },
    /// A tensor has another shape than the parameter.
    #[error("shape mismatch for `{key}`: the model expects {expected:?}, the file has {found:?}")]
    ShapeMismatch {
        /// Parameter path.
        key: String,
        /// Shape the module expects.
        expected: Vec<usize>,
        /// Shape of the provided tensor.
        found: Vec<usize>,
    },
    /// A provided tensor matches no parameter.
    #[error("unexpected tensor `{key}`: the model has no such parameter")]
    Unexpected {
        /// The tensor's name.
        key: String,
    },
}

/// One parameter's path, value and (if requested and present) gradient.
#[derive(Clone, Debug)]
pub struct NamedParam {
    /// Dotted path, e.g. `conv.weight`.
    pub path: String,
    /// Current value.
    pub value: TensorData,
    /// Gradient from the given [`Gradients`], if the parameter received one.
    pub grad: Option<TensorData>,
}

#[derive(Default)]
struct PathStack(Vec<String>);

impl PathStack {
    fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    fn exit(&mut self) {
        self.0.pop();
    }
    fn current(&self) -> String {
        self.0.join(".")
    }
}

struct Collector<'a> {
    path: PathStack,
    grads: Option<&'a Gradients>,
    out: Vec<NamedParam>,
}

impl ModuleVisitor for Collector<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        let grad = self
            .grads
            .and_then(|g| value.grad(g))
            .map(|g| g.into_data());
        self.out.push(NamedParam {
            path: self.path.current(),
            value: value.into_data(),
            grad,
        });
    }
}

/// Every float parameter of `module` in visiting order, with its gradient from `grads` when
/// given.
pub fn collect_params<M: Module>(module: &M, grads: Option<&Gradients>) -> Vec<NamedParam> {
    let mut collector = Collector {
        path: PathStack::default(),
        grads,
        out: Vec::new(),
    };
    module.visit(&mut collector);
    collector.out
}

struct ShapeCollector {
    path: PathStack,
    out: Vec<(String, Vec<usize>)>,
}

impl ModuleVisitor for ShapeCollector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.out
            .push((self.path.current(), param.lazy_shape().to_vec()));
    }
}

/// Every float parameter's path and shape, without initialising lazily-initialised parameters
/// (so a full-size model can be described without allocating its weights).
pub fn param_shapes<M: Module>(module: &M) -> Vec<(String, Vec<usize>)> {
    let mut collector = ShapeCollector {
        path: PathStack::default(),
        out: Vec::new(),
    };
    module.visit(&mut collector);
    collector.out
}

struct Loader<'a> {
    path: PathStack,
    tensors: &'a BTreeMap<String, TensorData>,
    used: BTreeSet<String>,
    errors: Vec<ParamError>,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let key = self.path.current();
        let expected = param.lazy_shape().to_vec();
        let Some(data) = self.tensors.get(&key) else {
            self.errors.push(ParamError::Missing { key, expected });
            return param;
        };
        self.used.insert(key.clone());
        if data.shape().to_vec() != expected {
            self.errors.push(ParamError::ShapeMismatch {
                key,
                expected,
                found: data.shape().to_vec(),
            });
            return param;
        }
        let data = data.clone();
        param.map(|t| {
            let require_grad = t.is_require_grad();
            Tensor::from_data(data, &t.device()).set_require_grad(require_grad)
        })
    }
}

/// Loads `tensors` (by parameter path) into `module`, keeping each parameter's id and
/// `require_grad` flag.
///
/// # Errors
/// Every missing parameter, shape mismatch and unused tensor, in that order; the first is
/// returned (all are checked before anything is returned, so the first error is stable).
pub fn load_params<M: Module>(
    module: M,
    tensors: &BTreeMap<String, TensorData>,
) -> Result<M, ParamError> {
    let mut loader = Loader {
        path: PathStack::default(),
        tensors,
        used: BTreeSet::new(),
        errors: Vec::new(),
    };
    let module = module.map(&mut loader);
    if let Some(err) = loader.errors.into_iter().next() {
        return Err(err);
    }
    if let Some(key) = tensors.keys().find(|k| !loader.used.contains(*k)) {
        return Err(ParamError::Unexpected { key: key.clone() });
    }
    Ok(module)
}
