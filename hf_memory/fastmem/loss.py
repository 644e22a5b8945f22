"""FastMem's training loss, NLL + λ·KL to the step-0 distribution, with its gradient written in one pass."""

from __future__ import annotations

import torch


class MemorizationLoss(torch.autograd.Function):
    """Σ_i w_i·(NLL_i + λ·KL(p_ref,i ‖ p_i)) over selected positions, with d/dlogits = w·((1+λ)·p − λ·p_ref − onehot)
    computed in the forward: a few passes over the (positions × vocabulary) logits instead of autograd's many.

    With `ref_probs=None` (the first step) p_ref is p itself: the KL and its gradient are zero, and the probabilities
    and their negative entropy are returned for the later steps.

    Call it as `MemorizationLoss.apply(logits, targets, weights, kl_weight, ref_probs, ref_neg_entropy)`; only
    `logits` receives a gradient.
    """

    @staticmethod
    def forward(
        ctx,
        logits: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor,
        kl_weight: float,
        ref_probs: torch.Tensor | None,
        ref_neg_entropy: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Compute the loss and, in the same passes, its gradient with respect to `logits` (saved for `backward`).

        Args:
            ctx: The autograd context (given by `apply`).
            logits: (positions, vocabulary) logits at the memorized positions; float16 and bfloat16 are computed in
                float32.
            targets: (positions,) token ids that each position should predict.
            weights: (positions,) weight of each position in the sum, e.g. 1 / (memorized tokens of its prompt).
            kl_weight: λ, the weight of the KL term; 0 leaves the plain weighted NLL.
            ref_probs: (positions, vocabulary) reference probabilities p_ref from the first step, or None on the
                first step (p_ref is then the current p).
            ref_neg_entropy: (positions,) Σ_v p_ref·log p_ref, as returned with `ref_probs`; None on the first step.

        Returns:
            `(loss, nll, kl, ref_probs, ref_neg_entropy)`: the scalar weighted loss, the per-position NLL and KL
            (unweighted), and the reference probabilities and negative entropy to pass to the later steps. Only
            `loss` is differentiable.
        """
        ctx.set_materialize_grads(False)  # no zero-filled (positions × vocabulary) grads for the side outputs
        ctx.input_dtype = logits.dtype
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        top = logits.amax(dim=-1, keepdim=True)
        grad = torch.sub(logits, top).exp_()
        total = grad.sum(dim=-1)
        lse = top[:, 0] + total.log()
        grad.div_(total[:, None])  # the probabilities p
        nll = lse - logits.gather(1, targets[:, None])[:, 0]
        if ref_probs is None:
            ref_probs = grad.clone()
            ref_neg_entropy = torch.einsum("nv,nv->n", ref_probs, logits) - lse
            kl = torch.zeros_like(nll)
        else:
            kl = ref_neg_entropy - torch.einsum("nv,nv->n", ref_probs, logits) + lse
        if kl_weight:
            grad.mul_(1 + kl_weight).sub_(ref_probs, alpha=kl_weight)
        grad[torch.arange(len(targets), device=grad.device), targets] -= 1
        grad.mul_(weights[:, None])
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(nll, kl, ref_probs, ref_neg_entropy)
        loss = (weights * (nll + kl_weight * kl)).sum()
        return loss, nll, kl, ref_probs, ref_neg_entropy

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, *_: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        """Scale the gradient saved by `forward` by the incoming one; it works in place, so call it once per graph.

        Args:
            ctx: The autograd context holding the saved gradient.
            grad_loss: The gradient of the final objective with respect to `loss` (a scalar tensor).
            *_: The gradients of the non-differentiable outputs (None); ignored.

        Returns:
            The gradient with respect to `logits` in their original dtype, then None for the five other inputs.
        """
        (grad,) = ctx.saved_tensors
        grad = grad.mul_(grad_loss).to(ctx.input_dtype)  # the graph is used once: scale in place
        return grad, None, None, None, None, None
