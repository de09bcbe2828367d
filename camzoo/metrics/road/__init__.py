"""Protocol ``road``: Remove And Debias -- MoRF / LeRF curves with noisy linear imputation.

Source: Y. Rong, T. Leemann, V. Borisov, G. Kasneci, E. Kasneci, "A Consistent and Efficient
Evaluation Strategy for Attribution Methods", ICML 2022; authors' code
github.com/tleemann/road_evaluation (``road/imputations.py``: ``NoisyLinearImputer``;
``road/imputed_dataset.py``: ``ImputedDataset``; ``road/road.py``: ``run_road``;
``road/retraining.py``: ``road_eval``).

Per image ``x01`` in [0,1], map ``V`` and class ``c``, and per removal fraction ``p``
(default 10 %, 20 %, ..., 90 %):

- **order** (:mod:`.masks`): ``s = (V - min V) / (max V - min V + 1e-5) + tie_noise * N(0,1)``
  (the authors' ``rescale_channel`` and ``random_v``; one tie-breaking field per order and
  fraction, shared by all images); MoRF removes the ``floor(p*H*W)`` pixels with the highest
  ``s``, LeRF the ``floor(p*H*W)`` with the lowest;
- **imputation** (:mod:`.solver`; in [0,1] image space, before the normalization, as in the
  authors' code, whose datasets return unnormalized tensors and normalize after the
  imputation): every removed pixel ``i`` takes the weighted mean of its in-image 8 neighbours,
  weights 1/6 (direct) and 1/12 (diagonal), the neighbours' own values being imputed too --
  one sparse linear system over all removed pixels, per channel::

      d_i * u_i - sum_{j removed} w_ij u_j = sum_{k kept} w_ik x_k,   d_i = sum_{j in image} w_ij

  then ``+ noise * N(0,1)`` at the removed pixels (noise 0.01, the authors' default; one noise
  field per order and fraction, shared by all images, so a row does not depend on its batch);
- **score** (:mod:`.curves`), both from one forward of ``f(normalize(imputed))``: the
  accuracy, 1.0 where ``c`` is still its top-1 class (the paper's ROAD: the authors'
  ``run_road`` reports ``res_acc``, the fraction of imputed images still classified as their
  class, from ``road_eval``), and the softmax probability of ``c`` (pytorch-grad-cam's scale);
  curves ``[B, P]`` of each; the row values are the curve means ``ROAD-MoRF`` (lower is
  better), ``ROAD-LeRF`` (higher is better) and ``ROAD = (LeRF - MoRF) / 2``
  (pytorch-grad-cam's ``ROADCombined``) on the accuracy (keys ``road_acc_*``, the table's
  default) and ``ROAD-MoRF(p)`` ... on the probability (keys ``road_morf``, ``road_lerf``,
  ``road``; option ``scale`` says which the table shows).

The system matrix is the graph Laplacian of the removed pixels with Dirichlet values at the
kept ones: symmetric positive definite whenever a pixel is kept. It is solved batched over many
(image, fraction) systems by conjugate gradients preconditioned with a multigrid V-cycle
(:mod:`.operators`, :mod:`.multigrid`, :mod:`.solver`), in float32 inside a float64 iterative
refinement: pure torch, one code path on every device, no scipy.

Modules: :mod:`.masks` (removal masks, seeded fields), :mod:`.operators` (the system's
operators), :mod:`.multigrid` (transfers, Galerkin coarse operators, the V-cycle),
:mod:`.solver` (CG, float64 refinement, :func:`impute`), :mod:`.curves` (:func:`road_curves`,
:func:`road_scores`, the registered :class:`ROADProtocol`).
"""
