"""``gapeval infer``: five diffusion SR model families behind one tiled, georeferenced, resumable pipeline.

Modules: :mod:`~gapeval.infer.tiling` (the tiler), :mod:`~gapeval.infer.pipeline` (read/tile/batch/seed/write),
:mod:`~gapeval.infer.registry` (the adapters and what they expect), :mod:`~gapeval.infer.checkpoints`
(local/hub checkpoints, strict loading), :mod:`~gapeval.infer.ldm_keys` (CompVis LDM -> diffusers key maps) and
one module per adapter: ``ldsr_s2``, ``ldm_sr``, ``sd_upscaler``, ``resshift`` (+ ``swin_unet``), ``sr3``
(+ ``train``, shared with ``resshift``).
"""
