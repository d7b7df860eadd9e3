"""Formula-driven supervised pre-training of sources (``lmsrr-pretrain``) and the built-in weights.

Kept free of imports on purpose: :mod:`lmsrr.models.net` imports :mod:`lmsrr.pretrain.builtin`,
and the pre-training loop (:mod:`lmsrr.pretrain.train`) imports :mod:`lmsrr.models.source`; a
package ``__init__`` that pulled in the loop would make that an import circle.
"""
