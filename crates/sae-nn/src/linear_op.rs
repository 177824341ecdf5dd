//! The autodiff side of our linear one-input operations (reflection padding, bilinear ×2): the
//! gradient of a linear map is its adjoint applied to the output gradient, and no state is kept.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, unary};
use burn::backend::{Autodiff, Backend, tensor::FloatTensor};

/// A backward node whose pass is `adjoint(dy, params)`.
#[derive(Debug)]
struct LinearBackward<B: Backend, P> {
    adjoint: fn(FloatTensor<B>, P) -> FloatTensor<B>,
    params: P,
}

impl<B: Backend, P: std::fmt::Debug + Send + 'static> Backward<B, 1> for LinearBackward<B, P> {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (adjoint, params) = (self.adjoint, self.params);
        unary::<B, _>(ops.parents, ops.node, grads, |g| adjoint(g, params));
    }
}

/// `forward(x, params)` on the inner backend, recorded so that the backward pass runs
/// `adjoint(dy, params)`: for operations that are linear in `x` (their adjoint is their
/// gradient), each once differentiable this way.
pub(crate) fn linear_unary<B: Backend, C: CheckpointStrategy, P>(
    x: FloatTensor<Autodiff<B, C>>,
    params: P,
    forward: fn(FloatTensor<B>, P) -> FloatTensor<B>,
    adjoint: fn(FloatTensor<B>, P) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>>
where
    P: Copy + std::fmt::Debug + Send + 'static,
{
    let (x, node) = x.into_parts();
    LinearBackward { adjoint, params }
        .prepare::<C>([node])
        .compute_bound()
        .stateless(forward(x, params))
}
