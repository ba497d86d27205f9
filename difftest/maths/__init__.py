"""The mathematics: the GEMM layouts, exact tensors, the Lean definitions on rationals, the NF folds
(replay, kernels), the order-free bound and the comparison of a gradient with its bounds.
Imports no backend, campaign or report."""
