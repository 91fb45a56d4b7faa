"""fairseq criterion ``autoassist_label_smoothed_cross_entropy``: per-sentence losses for the
Assistant, and the loss fairseq's label-smoothed criterion returns.

In training it computes the label-smoothed loss per token (``reduce=False``), sums it per
sentence, reports each sentence's per-token mean keyed by ``sample["id"]`` to the task's engine
(the per-token mean: long sentences are not "informative" just for being long; their length is
among the Assistant's features), and returns the sum of per-sentence losses, weighted by
``mean(P)/P_i`` only with ``--aa-reweight``. With every weight 1 that sum is exactly the stock
criterion's loss; validation and generation are the stock criterion's, untouched.
"""

from __future__ import annotations

import numpy as np
import torch
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
    label_smoothed_nll_loss,
)


def per_sentence_label_smoothed(lprobs: torch.Tensor, target: torch.Tensor, epsilon: float,
                                padding_idx: int) -> tuple[torch.Tensor, torch.Tensor,
                                                           torch.Tensor]:
    """Label-smoothed loss and NLL per sentence, and each sentence's target token count.

    ``lprobs`` is ``B x T x V`` log-probabilities, ``target`` ``B x T`` (padding ignored).
    """
    bsz, length = target.shape
    loss, nll = label_smoothed_nll_loss(lprobs.reshape(bsz * length, -1), target.reshape(-1),
                                        epsilon, ignore_index=padding_idx, reduce=False)
    tokens = target.ne(padding_idx).sum(dim=1)
    return loss.view(bsz, length).sum(dim=1), nll.view(bsz, length).sum(dim=1), tokens


@register_criterion("autoassist_label_smoothed_cross_entropy",
                    dataclass=LabelSmoothedCrossEntropyCriterionConfig)
class AutoAssistLabelSmoothedCrossEntropy(LabelSmoothedCrossEntropyCriterion):
    """``label_smoothed_cross_entropy`` that feeds the Assistant while training."""

    def forward(self, model, sample, reduce=True):
        report = getattr(self.task, "report_losses", None)
        if not (model.training and reduce and report is not None):
            return super().forward(model, sample, reduce=reduce)
        net_output = model(**sample["net_input"])
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        target = model.get_targets(sample, net_output)
        if self.ignore_prefix_size > 0:
            lprobs = lprobs[:, self.ignore_prefix_size:, :].contiguous()
            target = target[:, self.ignore_prefix_size:].contiguous()
        loss_i, nll_i, tokens = per_sentence_label_smoothed(lprobs, target, self.eps,
                                                            self.padding_idx)
        ids = sample["id"].detach().cpu().numpy().astype(np.int64)
        per_token = loss_i / tokens.clamp(min=1).to(loss_i.dtype)
        weights = report(per_token, ids)
        loss = loss_i.sum() if weights is None else (loss_i * weights).sum()
        nll_loss = nll_i.sum()
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            logging_output["n_correct"] = int(n_correct.item())
            logging_output["total"] = int(total.item())
        return loss, sample_size, logging_output
