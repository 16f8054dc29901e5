"""Expert tags through fairseq's --fp16/--bf16 wrapper, so OMoE trains fp32 master weights.

With --bf16, or --fp16 --fp16-no-flatten-grads, fairseq's FP16Optimizer hands the optimizer
fp32 copies of the model's parameters (`build_fp32_params`), copying only fairseq's own
attributes (`expert`, `param_group`, ...). OMoE finds its expert weights by the tags the MoE
layer puts on them (`moe_expert_axis`, `moe_input`, `moe_layer`); `install_expert_tag_copy`
makes the copies carry them too. The optimizer then keeps statistics, projectors and AdamW
state in fp32 while the model computes in fp16/bf16. With flattened fp16 gradients (fairseq's
--fp16 default) it sees one flat tensor and says so.
"""

from fairseq.optim.fp16_optimizer import _FP16OptimizerMixin

from ..moe import EXPERT_AXIS_ATTR, EXPERT_INPUT_ATTR, EXPERT_LAYER_ATTR

TAGS = (EXPERT_AXIS_ATTR, EXPERT_INPUT_ATTR, EXPERT_LAYER_ATTR)


def install_expert_tag_copy() -> None:
    """Make fairseq's fp32 copies of the parameters keep the expert tags (idempotent).

    A process-wide replacement of `_FP16OptimizerMixin.build_fp32_params`, because fairseq
    builds the optimizer from these copies with no hook in between and OMoE never sees the
    model. Without it `--optimizer omoe --fp16 --fp16-no-flatten-grads` (and --bf16) stops
    with "found no expert weights" (tests/test_cli_precision.py,
    test_fp16_training_keeps_the_projector_maths_in_fp32)."""
    build = _FP16OptimizerMixin.build_fp32_params.__func__
    if getattr(build, "copies_expert_tags", False):
        return

    def build_fp32_params(cls, args, params, flatten=True):
        fp32_params = build(cls, args, params, flatten)
        if not flatten:  # one fp32 copy per parameter, in order
            for p, p32 in zip(params, fp32_params):
                for tag in TAGS:
                    if hasattr(p, tag):
                        setattr(p32, tag, getattr(p, tag))
        return fp32_params

    build_fp32_params.copies_expert_tags = True
    _FP16OptimizerMixin.build_fp32_params = classmethod(build_fp32_params)
